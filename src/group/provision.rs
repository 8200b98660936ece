//! The engine's steps on Proxmox, each ending in a known state:
//! - `request_clone`: find a VMID, send the clone (with the ownership marker
//!   in its description), retry a VMID race invisibly;
//! - provisioning (background): wait for the clone, tag and configure, start,
//!   wait for the agent's address, rename; on any failure log the reason and
//!   clean up;
//! - deletion (background): re-check ownership, stop, delete with `purge` and
//!   `destroy-unreferenced-disks`, retry locks, not-found counts as done;
//! - adoption (background): a VM found after a restart is adopted when it
//!   is ready, cleaned up when it is half-provisioned.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Engine, Phase, Tracked, choose_addresses};
use super::naming::InstanceId;
use super::{Partial, address::Addresses};
use crate::pve::{CloneRequest, ConfigUpdate, Error as PveError, ErrorKind, Upid, VmResource, Vmid};

/// Clone attempts per instance before giving up (VMID races, held locks).
const CLONE_ATTEMPTS: u32 = 5;

/// Allocates a VMID and sends the clone request; `Ok` once Proxmox accepted it.
pub(crate) async fn request_clone(engine: Arc<Engine>) -> Result<(), String> {
    let _slot = engine.clone_slots.acquire().await.map_err(|_| "the plugin is shutting down".to_string())?;
    let mut last_error = String::new();
    for attempt in 0..CLONE_ATTEMPTS {
        let vmid = allocate_vmid(&engine).await?;
        let id = InstanceId::generate(vmid);
        let node = engine.pick_node();
        engine.instances.lock().unwrap().insert(
            id.clone(),
            Tracked {
                node: node.clone(),
                phase: Phase::Creating,
                addresses: Addresses::default(),
                missing_since: None,
            },
        );
        let request = CloneRequest {
            new_vmid: Some(vmid),
            name: Some(engine.config.instance_name_creating.clone()),
            description: Some(engine.naming.description(&id)),
            pool: Some(engine.config.pool.clone()),
            full: Some(!engine.linked),
            storage: if engine.linked { None } else { engine.config.storage.clone() },
            target_node: (node != engine.template_node).then(|| node.clone()),
        };
        match engine.pve.clone_vm(&engine.template_node, engine.config.template_id, &request).await {
            Ok(upid) => {
                tracing::info!(instance = %id, vmid = %vmid, node, clone = if engine.linked { "linked" } else { "full" }, "instance creating: clone accepted");
                let started = Instant::now();
                let task_engine = engine.clone();
                let cancel = engine.cancel.clone();
                engine.background.spawn(async move {
                    tokio::select! {
                        () = provision(task_engine, id, upid, started) => {}
                        () = cancel.cancelled() => {}
                    }
                });
                return Ok(());
            }
            Err(err) => {
                engine.instances.lock().unwrap().remove(&id);
                last_error = err.to_string();
                if err.is_already_exists() {
                    // /cluster/nextid reserves nothing: someone took the id.
                    tracing::debug!(vmid = %vmid, "VMID taken meanwhile; trying another");
                    continue;
                }
                if err.is_retryable() && attempt + 1 < CLONE_ATTEMPTS {
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt + 1))).await;
                    continue;
                }
                // Another target node may still take it (this one is offline,
                // full, or misconfigured); permission problems are the same everywhere.
                let node_specific =
                    !matches!(err.kind(), ErrorKind::PermissionDenied { .. } | ErrorKind::Unauthorized { .. });
                if node_specific && engine.config.target_nodes.len() > 1 && attempt + 1 < CLONE_ATTEMPTS {
                    tracing::warn!(node, error = %err, "could not clone to node {node}; trying another target node");
                    engine.penalise_node(&node);
                    continue;
                }
                // An outage says nothing about the template: backing off
                // for it would only delay the recovery after it.
                if !err.is_retryable() {
                    engine.limiter.lock().unwrap().failure(&last_error, Instant::now());
                }
                return Err(last_error);
            }
        }
    }
    Err(format!("could not clone template {} after {CLONE_ATTEMPTS} attempts: {last_error}", engine.config.template_id))
}

/// A VMID that was free a moment ago (PVE reserves nothing; the clone
/// request settles any race).
async fn allocate_vmid(engine: &Engine) -> Result<Vmid, String> {
    let taken = |vmid: Vmid| engine.instances.lock().unwrap().keys().any(|id| id.vmid == vmid);
    match engine.config.vmid_range {
        None => {
            let mut candidate = engine.pve.next_vmid(None).await.map_err(|err| err.to_string())?;
            for _ in 0..64 {
                if !taken(candidate) {
                    return Ok(candidate);
                }
                candidate = Vmid(candidate.0 + 1);
                match engine.pve.next_vmid(Some(candidate)).await {
                    Ok(free) => candidate = free,
                    Err(err) if err.is_already_exists() => continue,
                    Err(err) => return Err(err.to_string()),
                }
            }
            Err("could not find a free VMID".into())
        }
        Some((first, last)) => {
            let size = last.0 - first.0 + 1;
            for _ in 0..size {
                let candidate = {
                    let mut cursor = engine.range_cursor.lock().unwrap();
                    let candidate = Vmid(*cursor);
                    *cursor = if *cursor >= last.0 { first.0 } else { *cursor + 1 };
                    candidate
                };
                if taken(candidate) {
                    continue;
                }
                match engine.pve.next_vmid(Some(candidate)).await {
                    Ok(free) => return Ok(free),
                    Err(err) if err.is_already_exists() => continue,
                    Err(err) => return Err(err.to_string()),
                }
            }
            Err(format!(
                "could not find a free VMID in vmid_range {first}-{last}; widen the range or lower max_instances"
            ))
        }
    }
}

/// Clone → configure → start → address → rename. Failures are logged with
/// the reason, counted by the limiter, and cleaned up.
async fn provision(engine: Arc<Engine>, id: InstanceId, clone_task: Upid, started: Instant) {
    match provision_steps(&engine, &id, &clone_task).await {
        Ok(addresses) => {
            let node = {
                let mut instances = engine.instances.lock().unwrap();
                let Some(tracked) = instances.get_mut(&id) else { return };
                if tracked.phase != Phase::Creating {
                    return; // removal was requested meanwhile
                }
                tracked.phase = Phase::Running;
                tracked.addresses = addresses.clone();
                tracked.node.clone()
            };
            engine.limiter.lock().unwrap().success();
            tracing::info!(
                instance = %id,
                vmid = %id.vmid,
                node,
                address = %addresses.internal.or(addresses.external).map(|ip| ip.to_string()).unwrap_or_default(),
                duration_ms = started.elapsed().as_millis() as u64,
                "instance running"
            );
        }
        Err(reason) => {
            // Runner removed it while it was being created: the deletion
            // under way ends it, and nothing failed (no warning, no backoff).
            let removal_requested =
                engine.instances.lock().unwrap().get(&id).is_none_or(|t| t.phase == Phase::Deleting);
            if removal_requested {
                tracing::debug!(instance = %id, vmid = %id.vmid, reason, "provisioning stopped: removal was requested");
                return;
            }
            tracing::warn!(instance = %id, vmid = %id.vmid, reason, "could not provision instance; removing it");
            engine.limiter.lock().unwrap().failure(&reason, Instant::now());
            let proceed = {
                let mut instances = engine.instances.lock().unwrap();
                match instances.get_mut(&id) {
                    Some(tracked) if tracked.phase != Phase::Deleting => {
                        tracked.phase = Phase::Deleting;
                        true
                    }
                    _ => false,
                }
            };
            if proceed {
                delete(engine, id, reason).await;
            }
        }
    }
}

async fn provision_steps(engine: &Engine, id: &InstanceId, clone_task: &Upid) -> Result<Addresses, String> {
    let pve = &engine.pve;
    let vmid = id.vmid;
    pve.wait_task(clone_task, engine.config.clone_timeout).await.map_err(|err| err.to_string())?;
    let node = engine.instances.lock().unwrap().get(id).map(|t| t.node.clone()).ok_or("removed while cloning")?;
    let config = pve.vm_config(&node, vmid).await.map_err(|err| err.to_string())?;

    let mut update = ConfigUpdate { tags: Some(engine.naming.tags(id, &engine.config.tags)), ..Default::default() };
    if let Some(key) = &engine.key {
        update.ciuser = Some(engine.config.cloud_init_user.clone());
        update.ssh_public_keys = Some(format!("{}\n", key.public_openssh));
        if !config.contains_key("ipconfig0") {
            update.ipconfig0 = Some("ip=dhcp,ip6=auto".into());
        }
    }
    retry_locked(|| pve.update_vm_config(&node, vmid, &update)).await.map_err(|err| err.to_string())?;

    let deadline = Instant::now() + engine.config.boot_timeout;
    let start = retry_locked(|| pve.start_vm(&node, vmid)).await.map_err(|err| err.to_string())?;
    pve.wait_task(&start, engine.config.boot_timeout).await.map_err(|err| err.to_string())?;

    let addresses = wait_for_address(engine, &node, vmid, config.get("net0").map(String::as_str), deadline).await?;
    let rename = ConfigUpdate { name: Some(engine.config.instance_name_running.clone()), ..Default::default() };
    if let Err(err) = retry_locked(|| pve.update_vm_config(&node, vmid, &rename)).await {
        tracing::warn!(vmid = %vmid, error = %err, "could not rename the VM; it is running anyway");
    }
    Ok(addresses)
}

/// Polls the guest agent until it reports an address of the wanted family.
async fn wait_for_address(
    engine: &Engine,
    node: &str,
    vmid: Vmid,
    net0: Option<&str>,
    deadline: Instant,
) -> Result<Addresses, String> {
    let mut pause = Duration::from_millis(500);
    loop {
        let last = match engine.pve.guest_interfaces(node, vmid).await {
            Ok(interfaces) => {
                let addresses = choose_addresses(engine, &interfaces, net0);
                if !addresses.is_empty() {
                    return Ok(addresses);
                }
                format!(
                    "the guest agent reports no {:?} address on net0 or {}",
                    engine.config.instance_network_protocol, engine.config.instance_network_interface
                )
            }
            Err(err) if matches!(err.kind(), ErrorKind::PermissionDenied { .. }) => return Err(err.to_string()),
            Err(err) => err.to_string(),
        };
        if Instant::now() + pause > deadline {
            return Err(format!(
                "no address within boot_timeout ({} s): {last}; check that qemu-guest-agent runs in the template and the network hands out addresses",
                engine.config.boot_timeout.as_secs()
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(3));
    }
}

/// How long a step keeps retrying while the VM is locked or PVE is
/// unavailable (long enough to ride out a pveproxy restart or a short outage).
const RETRY_WINDOW: Duration = Duration::from_secs(90);

/// Retries a call while the VM is locked or PVE is briefly unavailable;
/// permanent errors return at once.
async fn retry_locked<T, F, Fut>(mut call: F) -> Result<T, PveError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, PveError>>,
{
    let deadline = Instant::now() + RETRY_WINDOW;
    let mut delay = Duration::from_millis(300);
    loop {
        match call().await {
            Err(err) if err.is_retryable() && Instant::now() + delay < deadline => {
                tracing::debug!(error = %err, "retrying in {} ms", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Starts a deletion in the background.
pub(crate) fn spawn_deletion(engine: Arc<Engine>, id: InstanceId, reason: String) {
    let task_engine = engine.clone();
    let cancel = engine.cancel.clone();
    engine.background.spawn(async move {
        tokio::select! {
            () = delete(task_engine, id, reason) => {}
            () = cancel.cancelled() => {}
        }
    });
}

/// Removes one of the group's VMs. Ownership is re-checked first: a VM whose
/// description does not carry this instance's marker is never touched.
async fn delete(engine: Arc<Engine>, id: InstanceId, reason: String) {
    let Ok(_slot) = engine.delete_slots.acquire().await else { return };
    let started = Instant::now();
    let deadline = started + engine.config.delete_timeout;
    let pve = &engine.pve;
    let mut delay = Duration::from_millis(500);
    loop {
        let node = engine.instances.lock().unwrap().get(&id).map(|t| t.node.clone());
        let Some(node) = node else {
            // Update forgot it after its VM had left the listing: done.
            tracing::info!(instance = %id, vmid = %id.vmid, reason, duration_ms = started.elapsed().as_millis() as u64, confirmed_by = "listing", "instance deleted");
            return;
        };
        let attempt = async {
            let config = match pve.vm_config(&node, id.vmid).await {
                Ok(config) => config,
                Err(err) if err.is_not_found() => return Ok(true),
                Err(err) => return Err(err),
            };
            let marker = config.get("description").map(String::as_str).unwrap_or_default();
            if engine.naming.owner_of_description(marker).as_ref() != Some(&id) {
                return Ok(false);
            }
            let _ = pve
                .update_vm_config(
                    &node,
                    id.vmid,
                    &ConfigUpdate { name: Some(engine.config.instance_name_removing.clone()), ..Default::default() },
                )
                .await;
            let status = pve.vm_status(&node, id.vmid).await?;
            if status.status != "stopped" {
                let stop = pve.stop_vm(&node, id.vmid, Some(Duration::from_secs(30))).await?;
                pve.wait_task(&stop, Duration::from_secs(60)).await?;
            }
            let destroy = pve.delete_vm(&node, id.vmid).await?;
            pve.wait_task(&destroy, engine.config.delete_timeout).await?;
            Ok::<bool, PveError>(true)
        };
        match attempt.await {
            Ok(true) => {
                tracing::info!(
                    instance = %id, vmid = %id.vmid, node, reason,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "instance deleted"
                );
                return;
            }
            Ok(false) => {
                tracing::error!(instance = %id, vmid = %id.vmid, "VM {} no longer carries this instance's marker; not deleting it", id.vmid);
                engine.instances.lock().unwrap().remove(&id);
                return;
            }
            Err(err) if err.is_not_found() => {
                tracing::info!(instance = %id, vmid = %id.vmid, node, reason, duration_ms = started.elapsed().as_millis() as u64, "instance deleted");
                return;
            }
            Err(err) => {
                if Instant::now() + delay > deadline {
                    tracing::error!(instance = %id, vmid = %id.vmid, error = %err, "could not delete instance within delete_timeout; Runner will ask again");
                    // Back to a state Runner can ask to remove again.
                    if let Some(tracked) = engine.instances.lock().unwrap().get_mut(&id) {
                        tracked.phase = Phase::Running;
                    }
                    return;
                }
                tracing::debug!(instance = %id, error = %err, "deletion failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A VM of the group found without the engine knowing it (after a restart):
/// ready ones are adopted, half-provisioned ones removed.
pub(crate) fn spawn_adoption(engine: Arc<Engine>, id: InstanceId, vm: VmResource) {
    let task_engine = engine.clone();
    let cancel = engine.cancel.clone();
    engine.background.spawn(async move {
        tokio::select! {
            () = adopt(task_engine, id, vm) => {}
            () = cancel.cancelled() => {}
        }
    });
}

/// Why a found instance is not adopted.
enum NotAdopted {
    /// PVE could not be asked (its answer says nothing about the VM); decide later.
    Undecided(PveError),
    /// Ours but not ready: remove it.
    Leftover(String),
}
use NotAdopted::{Leftover, Undecided};

async fn adopt(engine: Arc<Engine>, id: InstanceId, vm: VmResource) {
    let pve = &engine.pve;
    let verdict = async {
        // A transient error says nothing about the VM: never remove a
        // possibly healthy instance because the API hiccuped.
        let config = match retry_locked(|| pve.vm_config(&vm.node, id.vmid)).await {
            Ok(config) => config,
            Err(err) => return Err(Undecided(err)),
        };
        let marker = config.get("description").map(String::as_str).unwrap_or_default();
        if engine.naming.owner_of_description(marker).as_ref() != Some(&id) {
            return Ok(None);
        }
        // Renamed for removal before the restart: finish the removal (only
        // when the removal name is distinct; seed configs may use one name).
        let names = &engine.config;
        let removal_name_distinct = names.instance_name_removing != names.instance_name_running
            && names.instance_name_removing != names.instance_name_creating;
        if removal_name_distinct && config.get("name") == Some(&names.instance_name_removing) {
            return Err(Leftover("its removal was under way before the restart".to_string()));
        }
        let status = retry_locked(|| pve.vm_status(&vm.node, id.vmid)).await.map_err(Undecided)?;
        if status.status != "running" || status.lock.is_some() {
            return Err(Leftover(format!("found {} after a restart, not ready", status.status)));
        }
        // Ready means answering with an address now; one still booting was
        // half-provisioned when the plugin stopped, and is removed.
        let addresses = match retry_locked(|| pve.guest_interfaces(&vm.node, id.vmid)).await {
            Ok(interfaces) => choose_addresses(&engine, &interfaces, config.get("net0").map(String::as_str)),
            Err(err) if err.is_retryable() => return Err(Undecided(err)),
            Err(err) => return Err(Leftover(format!("half-provisioned after a restart: {err}"))),
        };
        if addresses.is_empty() {
            return Err(Leftover("half-provisioned after a restart: the guest agent reports no address yet".into()));
        }
        // Killed before its rename: the name tells the state, as for any instance.
        if config.get("name") != Some(&engine.config.instance_name_running) {
            let rename = ConfigUpdate { name: Some(engine.config.instance_name_running.clone()), ..Default::default() };
            if let Err(err) = retry_locked(|| pve.update_vm_config(&vm.node, id.vmid, &rename)).await {
                tracing::warn!(vmid = %id.vmid, error = %err, "could not rename the adopted VM; it is running anyway");
            }
        }
        Ok(Some(addresses))
    };
    match verdict.await {
        Ok(Some(addresses)) => {
            if let Some(tracked) = engine.instances.lock().unwrap().get_mut(&id) {
                if tracked.phase == Phase::Adopting {
                    tracked.phase = Phase::Running;
                    tracked.addresses = addresses;
                }
            }
            tracing::info!(instance = %id, vmid = %id.vmid, node = vm.node, "instance running: adopted after a restart");
        }
        Ok(None) => {
            tracing::warn!(instance = %id, vmid = %id.vmid, "VM {} carries this group's tags but not its marker; ignoring it", id.vmid);
            engine.instances.lock().unwrap().remove(&id);
            engine.impostors.lock().unwrap().insert(id);
        }
        Err(Undecided(err)) => {
            // Forget it; the next Update finds it again and retries.
            if err.is_retryable() || err.is_not_found() {
                tracing::debug!(instance = %id, error = %err, "could not check a found instance yet");
            } else {
                tracing::warn!(instance = %id, error = %err, "could not check a found instance; leaving it alone");
            }
            let mut instances = engine.instances.lock().unwrap();
            if instances.get(&id).is_some_and(|t| t.phase == Phase::Adopting) {
                instances.remove(&id);
            }
        }
        Err(Leftover(reason)) => {
            let proceed = match engine.instances.lock().unwrap().get_mut(&id) {
                Some(tracked) if tracked.phase == Phase::Adopting => {
                    tracked.phase = Phase::Deleting;
                    true
                }
                _ => false,
            };
            if proceed {
                tracing::info!(instance = %id, vmid = %id.vmid, reason, "removing a leftover instance");
                delete(engine, id, reason).await;
            }
        }
    }
}

/// An untagged VM in the pool: ours if its description says so (a crash
/// between clone and tagging), then removed; otherwise remembered as foreign.
pub(crate) fn spawn_untagged_check(engine: Arc<Engine>, vm: VmResource) {
    let task_engine = engine.clone();
    let cancel = engine.cancel.clone();
    engine.background.spawn(async move {
        tokio::select! {
            () = check_untagged(task_engine, vm) => {}
            () = cancel.cancelled() => {}
        }
    });
}

async fn check_untagged(engine: Arc<Engine>, vm: VmResource) {
    let Ok(config) = engine.pve.vm_config(&vm.node, vm.vmid).await else { return };
    let marker = config.get("description").map(String::as_str).unwrap_or_default();
    match engine.naming.owner_of_description(marker) {
        Some(id) if id.vmid == vm.vmid => {
            let fresh = engine.instances.lock().unwrap().insert(
                id.clone(),
                Tracked {
                    node: vm.node.clone(),
                    phase: Phase::Deleting,
                    addresses: Addresses::default(),
                    missing_since: None,
                },
            );
            if fresh.is_none() {
                tracing::info!(instance = %id, vmid = %vm.vmid, "removing a half-provisioned instance left by an earlier run");
                delete(engine, id, "half-provisioned by an earlier run".into()).await;
            }
        }
        _ => {
            engine.foreign.lock().unwrap().insert(vm.vmid);
        }
    }
}

/// Suspend (`true`) or resume running instances with Proxmox's own calls.
pub(crate) async fn power(engine: &Arc<Engine>, ids: Vec<String>, suspend: bool) -> Partial<Vec<String>> {
    let verb = if suspend { "suspend" } else { "resume" };
    let (from, during, to) = if suspend {
        (Phase::Running, Phase::Suspending, Phase::Suspended)
    } else {
        (Phase::Suspended, Phase::Resuming, Phase::Running)
    };
    let mut partial: Partial<Vec<String>> = Partial::default();
    for text in ids {
        let Ok(id) = text.parse::<InstanceId>() else {
            partial.failures.push(format!("could not {verb} instance {text}: it is not an instance of this plugin"));
            continue;
        };
        let node = {
            let mut instances = engine.instances.lock().unwrap();
            match instances.get_mut(&id) {
                Some(tracked) if tracked.phase == from => {
                    tracked.phase = during.clone();
                    tracked.node.clone()
                }
                Some(tracked) => {
                    partial.failures.push(format!("could not {verb} instance {text}: it is {:?}", tracked.phase));
                    continue;
                }
                None => {
                    partial.failures.push(format!("could not {verb} instance {text}: this group does not own it"));
                    continue;
                }
            }
        };
        let result = if suspend {
            engine.pve.suspend_vm(&node, id.vmid).await
        } else {
            engine.pve.resume_vm(&node, id.vmid).await
        };
        match result {
            Ok(upid) => {
                partial.succeeded.push(text);
                let task_engine = engine.clone();
                let to = to.clone();
                let from = from.clone();
                engine.background.spawn(async move {
                    let ok = task_engine.pve.wait_task(&upid, Duration::from_secs(120)).await.is_ok();
                    let mut instances = task_engine.instances.lock().unwrap();
                    if let Some(tracked) = instances.get_mut(&id) {
                        // Addresses are not kept across suspend/resume.
                        tracked.addresses =
                            if ok && to == Phase::Running { tracked.addresses.clone() } else { Addresses::default() };
                        tracked.phase = if ok { to } else { from };
                    }
                });
            }
            Err(err) => {
                if let Some(tracked) = engine.instances.lock().unwrap().get_mut(&id) {
                    tracked.phase = from.clone();
                }
                partial.failures.push(err.to_string());
            }
        }
    }
    partial
}
