//! The engine's steps on Proxmox, each ending in a known state:
//! - `request_clone`: find a VMID, send the clone (with the ownership marker
//!   in its description); a VMID race or a VMID tied to a failure (orphaned
//!   volumes, a held lock) is retried on another VMID invisibly, and a clone
//!   request whose answer was lost is found by its marker before anything is
//!   sent again;
//! - provisioning (background): wait for the clone, tag and configure, start,
//!   wait for the agent's address, rename; on any failure log the reason,
//!   tell the breaker what it says, and clean up (see `deletion`).
//!
//! Adoption, deletion and power actions have their own modules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engine::{Engine, choose_addresses};
use super::failure::{ProvisionError, Step, Verdict};
use super::ip_pool::Lease;
use super::naming::InstanceId;
use super::placement::Placed;
use super::registry::{Phase, Removal};
use super::slots::Slot;
use super::vmid_claim::VmidClaim;
use super::{InstanceState, address::Addresses};
use crate::pve::{CloneRequest, ConfigUpdate, Error as PveError, ErrorKind, Upid, Vmid};
use crate::telemetry::ProvisionPhase;

/// VMIDs one instance may go through (races, orphaned volumes, held locks)
/// before its creation fails.
const VMID_ATTEMPTS: u32 = 5;
/// Times one clone request is sent while PVE is briefly unavailable.
const CLONE_REQUEST_ATTEMPTS: u32 = 5;

/// How Proxmox took a clone request.
enum Accepted {
    /// It answered with the clone task.
    Task(Upid),
    /// The answer was lost, but the new VM carries this instance's marker:
    /// the clone runs, its task is not known.
    Found { node: String },
}

/// Allocates a VMID and sends the clone request; `Ok` once Proxmox accepted
/// it. `probe` marks the one instance the open breaker lets through.
pub(crate) async fn request_clone(engine: Arc<Engine>, probe: bool) -> Result<(), ProvisionError> {
    let result = request_clone_on_some_vmid(&engine, probe, VMID_ATTEMPTS).await;
    if let Err(err) = &result {
        record_failure(&engine, err, None, probe);
    }
    result
}

async fn request_clone_on_some_vmid(
    engine: &Arc<Engine>,
    probe: bool,
    mut vmid_attempts: u32,
) -> Result<(), ProvisionError> {
    loop {
        vmid_attempts = vmid_attempts.saturating_sub(1);
        let (id, placed) = reserve_instance(engine).await?;
        // The clone task runs on its source's node, whatever the target.
        let Some(slot) = engine.clone_slots.try_acquire(&engine.clone_source(&placed.node).node) else {
            // Runner sees it creating at once; the clone request waits its turn.
            tracing::info!(instance = %id, vmid = %id.vmid, node = placed.node, "instance creating: waiting for a clone slot (max_parallel_clones)");
            spawn_queued_clone(engine, id, placed, probe, vmid_attempts);
            return Ok(());
        };
        match clone_instance(engine, &id, &placed, slot, probe, vmid_attempts).await {
            Ok(()) => return Ok(()),
            Err(CloneFailed::Retry(err)) if vmid_attempts > 0 => {
                tracing::debug!(error = %err, "trying the clone again on another VMID or node");
            }
            Err(CloneFailed::Retry(err) | CloneFailed::GiveUp(err)) => return Err(err),
        }
    }
}

/// A VMID, the instance on it placed and tracked as creating on its node,
/// and its static lease when the group hands out addresses.
async fn reserve_instance(engine: &Arc<Engine>) -> Result<(InstanceId, Placed), ProvisionError> {
    let claim = allocate_vmid(engine).await?;
    let vmid = claim.vmid;
    let id = InstanceId::generate(vmid);
    let placed = engine.placement.place(vmid, &engine.copies.unready()).map_err(ProvisionError::NoRoom)?;
    engine.registry.track_creating(id.clone(), &placed.node);
    // Tracked now, so the VMID reads as taken without the claim.
    drop(claim);
    if let Some(network) = &engine.config.static_network
        && let Err(err) = super::lease::allocate(engine, network, &id).await
    {
        engine.registry.forget(&id);
        engine.placement.release(placed.ticket);
        super::lease::release_unused(engine, &id);
        return Err(err);
    }
    Ok((id, placed))
}

/// Why a clone request of a reserved instance failed.
enum CloneFailed {
    /// Another VMID or node may work (a race, a VMID tied to leftovers, a node-specific failure).
    Retry(ProvisionError),
    GiveUp(ProvisionError),
}

/// Sends the clone of a reserved instance holding its clone slot; once
/// accepted, provisioning continues in the background with the slot. A
/// failed request forgets the instance and frees its lease.
async fn clone_instance(
    engine: &Arc<Engine>,
    id: &InstanceId,
    placed: &Placed,
    slot: Slot,
    probe: bool,
    vmid_attempts: u32,
) -> Result<(), CloneFailed> {
    let vmid = id.vmid;
    let node = placed.node.as_str();
    let asked = Instant::now();
    let err = match send_clone(engine, id, node, placed.storage.as_deref()).await {
        Ok(accepted) => {
            engine.metrics.phase_done(ProvisionPhase::CloneRequest, asked.elapsed());
            let source = engine.clone_source(node);
            tracing::info!(instance = %id, vmid = %vmid, node, source = %source.vmid, clone = if source.linked { "linked" } else { "full" }, "instance creating: clone accepted");
            spawn_provisioning(engine, id.clone(), accepted, slot, probe, vmid_attempts);
            return Ok(());
        }
        Err(err) => err,
    };
    drop(slot);
    engine.registry.forget(id);
    engine.placement.release(placed.ticket);
    // No VM carries it: the address is free again at once.
    super::lease::release_unused(engine, id);
    match err.verdict(Some(vmid)) {
        Verdict::VmidTied(vmid) => {
            quarantine(engine, vmid, &err);
            return Err(CloneFailed::Retry(err));
        }
        // /cluster/nextid reserves nothing: someone took the id.
        _ if matches!(&err, ProvisionError::Pve { error, .. } if error.is_already_exists()) => {
            tracing::debug!(vmid = %vmid, "VMID taken meanwhile; trying another");
            return Err(CloneFailed::Retry(err));
        }
        _ => {}
    }
    // Another target node may still take it (this one is offline, full,
    // or misconfigured); permission problems are the same everywhere.
    let node_specific = match &err {
        ProvisionError::Pve { error, .. } => {
            !matches!(error.kind(), ErrorKind::PermissionDenied { .. } | ErrorKind::Unauthorized { .. })
        }
        _ => false,
    };
    if node_specific && engine.config.target_nodes.len() > 1 {
        tracing::warn!(node, error = %err, "could not clone to node {node}; trying another target node");
        engine.placement.penalise(node);
        return Err(CloneFailed::Retry(err));
    }
    Err(CloneFailed::GiveUp(err))
}

/// An instance whose clone waits for a slot: it is requested once one is
/// free, unless Runner removed the instance meanwhile or the group shuts
/// down. It holds no other slot while it waits.
fn spawn_queued_clone(engine: &Arc<Engine>, id: InstanceId, placed: Placed, probe: bool, vmid_attempts: u32) {
    let (queued, span_id) = (engine.clone(), id.clone());
    let work = async move {
        let engine = queued;
        let source_node = engine.clone_source(&placed.node).node;
        let Some(slot) = engine.clone_slots.acquire(&source_node, &engine.cancel).await else { return };
        if engine.registry.phase_of(&id) != Some(Phase::Creating) {
            tracing::debug!(instance = %id, "removal was requested while the clone waited; not cloning");
            engine.placement.release(placed.ticket);
            super::lease::release_unused(&engine, &id);
            return;
        }
        let err = match clone_instance(&engine, &id, &placed, slot, probe, vmid_attempts).await {
            Ok(()) => return,
            Err(CloneFailed::Retry(err)) if vmid_attempts > 0 => {
                tracing::debug!(error = %err, "trying the clone again on another VMID or node");
                let again: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send + '_>> =
                    Box::pin(request_clone_on_some_vmid(&engine, probe, vmid_attempts));
                match again.await {
                    Ok(()) => return,
                    Err(err) => err,
                }
            }
            Err(CloneFailed::Retry(err) | CloneFailed::GiveUp(err)) => err,
        };
        record_failure(&engine, &err, None, probe);
        tracing::warn!(instance = %id, vmid = %id.vmid, reason = %err, "could not provision instance: its clone request failed");
    };
    engine.spawn_traced(Some(&span_id), span_id.vmid, work);
}

/// Sends the clone request for `id`, again while PVE is briefly
/// unavailable. A request whose answer was lost may have reached PVE: before
/// giving up, and when a repeat finds the VMID taken, the VM's marker tells
/// whether the clone is ours, so it never becomes a VM nobody owns.
async fn send_clone(
    engine: &Engine,
    id: &InstanceId,
    node: &str,
    storage: Option<&str>,
) -> Result<Accepted, ProvisionError> {
    let source = engine.clone_source(node);
    let from_template = source.vmid == engine.config.template_id;
    let request = CloneRequest {
        // A copy was made of the snapshot already (and templates have none).
        snapshot: if from_template { engine.config.sizing.clone_snapshot.clone() } else { None },
        bandwidth_limit_kib: engine.config.sizing.clone_bwlimit_kib,
        new_vmid: Some(id.vmid),
        name: Some(engine.config.instance_name_creating.clone()),
        // The lease rides in the marker: no VM ever exists without it.
        description: Some(
            engine.naming.description_with_lease(id, &super::lease::held(engine, id).unwrap_or_default()),
        ),
        pool: Some(engine.config.pool.clone()),
        full: Some(!source.linked),
        storage: if source.linked {
            None
        } else {
            storage.map(str::to_string).or_else(|| engine.config.storage.clone())
        },
        target_node: (node != source.node).then(|| node.to_string()),
    };
    let mut maybe_sent = false;
    let mut delay = Duration::from_millis(500);
    for attempt in 1..=CLONE_REQUEST_ATTEMPTS {
        let error = match engine.pve.clone_vm(&source.node, source.vmid, &request).await {
            Ok(upid) => return Ok(Accepted::Task(upid)),
            Err(error) => error,
        };
        let lost_answer = maybe_sent && (error.is_already_exists() || error.is_retryable());
        if lost_answer && let Ok(CloneTarget::Ours { node, .. }) = settled_clone_target(engine, id, node).await {
            tracing::info!(instance = %id, vmid = %id.vmid, "the clone request's answer was lost, but the clone is under way");
            return Ok(Accepted::Found { node });
        }
        if error.is_retryable() && attempt < CLONE_REQUEST_ATTEMPTS {
            maybe_sent = true;
            tracing::debug!(instance = %id, error = %error, "clone request failed; sending it again");
            tokio::time::sleep(delay).await;
            delay *= 2;
            continue;
        }
        return Err(ProvisionError::pve(Step::CloneRequest, error));
    }
    unreachable!("the last attempt returns")
}

/// What the VMID of `id` holds, as far as `id`'s clone is concerned.
enum CloneTarget {
    /// A VM carrying `id`'s marker, on `node`.
    Ours { node: String, config: BTreeMap<String, String> },
    /// A clone under way whose owner does not show yet: qemu-server's
    /// temporary config (`lock: clone`, no name, none of the description
    /// asked for, written only once the first disk is copied), or a VMID
    /// that is taken but unreadable to a pool-scoped token (a clone joins
    /// the pool at its end). Waiting tells; a foreign VM outside the pool
    /// looks the same, so every wait for it is bounded.
    InFlight,
    /// No VM with that VMID, or one that is not `id`'s.
    NotOurs,
}

/// Where the VMID of `id` is looked for: the template's node while a clone
/// runs, the target node after it.
async fn find_own_clone(engine: &Engine, id: &InstanceId, target: &str) -> Result<CloneTarget, PveError> {
    let mut nodes = vec![engine.template_node.as_str()];
    if target != engine.template_node {
        nodes.push(target);
    }
    for node in nodes {
        match engine.pve.vm_config(node, id.vmid).await {
            Ok(config) => {
                let marker = config.get("description").map(String::as_str).unwrap_or_default();
                if engine.naming.owner_of_description(marker).as_ref() == Some(id) {
                    return Ok(CloneTarget::Ours { node: node.to_string(), config });
                }
                let temporary = config.get("lock").is_some_and(|lock| lock == "clone")
                    && !config.contains_key("name")
                    && marker.trim() == "qmclone temporary file";
                return Ok(if temporary { CloneTarget::InFlight } else { CloneTarget::NotOurs });
            }
            Err(err) if absent_from_pool(&err, id.vmid) => continue,
            Err(err) => return Err(err),
        }
    }
    // Unreadable everywhere: nextid still tells whether the VMID is taken.
    match engine.pve.next_vmid(Some(id.vmid)).await {
        Ok(_) => Ok(CloneTarget::NotOurs),
        Err(err) if err.is_already_exists() => Ok(CloneTarget::InFlight),
        Err(err) => Err(err),
    }
}

/// [`find_own_clone`] after a lost answer: a clone still copying its first
/// disk is waited for (up to `clone_timeout`) until it shows whose it is.
async fn settled_clone_target(engine: &Engine, id: &InstanceId, target: &str) -> Result<CloneTarget, PveError> {
    let deadline = Instant::now() + engine.config.clone_timeout;
    let mut pause = Duration::from_millis(500);
    loop {
        let sighting = retry_locked(|| find_own_clone(engine, id, target)).await?;
        if !matches!(sighting, CloneTarget::InFlight) || Instant::now() + pause > deadline {
            return Ok(sighting);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(3));
    }
}

/// Reading a VM that is not there: 404, or, with privileges granted on the
/// pool only, 403 on `/vms/<vmid>` (PVE checks the privilege before it
/// looks for the VM, and a VM that does not exist is in no pool).
pub(crate) fn absent_from_pool(err: &PveError, vmid: Vmid) -> bool {
    let vm_path = format!("/vms/{vmid}");
    err.is_not_found() || matches!(err.kind(), ErrorKind::PermissionDenied { path: Some(path), .. } if *path == vm_path)
}

/// Quarantines a VMID tied to a failure, logging it once.
fn quarantine(engine: &Engine, vmid: Vmid, err: &ProvisionError) {
    let fresh = engine.quarantine_vmid(vmid, &err.to_string());
    if fresh {
        engine.metrics.vmid_quarantined();
        tracing::warn!(
            vmid = %vmid,
            error = %err,
            "VMID {vmid} is unusable for now (volumes or a lock of that VMID are in the way); skipping it for 30 minutes. \
             If volumes of VMID {vmid} are left over from a crashed clone and no VM {vmid} exists, remove them, \
             e.g. `pvesm list <storage> --vmid {vmid}` then `pvesm free <volume>`"
        );
    }
}

/// Tells the breaker what a failure of provisioning says about the cluster.
fn record_failure(engine: &Engine, err: &ProvisionError, vmid: Option<Vmid>, probe: bool) {
    if let Some(step) = err.step() {
        engine.metrics.failure(step.label(), err.reason_label());
    }
    match err.verdict(vmid) {
        Verdict::Counts { cause } => {
            if let Some((wait, why)) = engine.count_failure(cause, &err.to_string()) {
                let now = Instant::now();
                let until =
                    crate::telemetry::snapshot::format_unix(crate::telemetry::snapshot::unix_seconds(now + wait, now));
                tracing::warn!(
                    wait_s = wait.as_secs(),
                    until,
                    "{why}; set failure_backoff / failure_backoff_max to change the wait"
                );
            }
        }
        Verdict::VmidTied(vmid) => quarantine(engine, vmid, err),
        Verdict::Neutral if probe => engine.probe_undecided(),
        Verdict::Neutral => {}
    }
}

/// A VMID that was free a moment ago, is not quarantined and is claimed by
/// no other request of this process (PVE reserves nothing; the clone request
/// settles a race with another client).
async fn allocate_vmid(engine: &Engine) -> Result<VmidClaim<'_>, ProvisionError> {
    // Each lock is taken and released on its own (claims, then registry and quarantine).
    let taken = |vmid: Vmid| engine.registry.tracks_vmid(vmid) || engine.is_quarantined(vmid);
    let pve_error = |error| ProvisionError::pve(Step::AllocateVmid, error);
    match engine.config.vmid_range {
        None => {
            // PVE's lowest free VMID; above it, requests under way at once
            // claim one each, and PVE is asked about that one.
            let lowest = engine.pve.next_vmid(None).await.map_err(pve_error)?;
            let mut from = lowest;
            for _ in 0..64 {
                let claim = engine.vmid_claims.claim_from(from, taken);
                if claim.vmid == lowest {
                    return Ok(claim);
                }
                match engine.pve.next_vmid(Some(claim.vmid)).await {
                    Ok(_) => return Ok(claim),
                    Err(err) if err.is_already_exists() => from = Vmid(claim.vmid.0 + 1),
                    Err(err) => return Err(pve_error(err)),
                }
            }
            Err(ProvisionError::NoFreeVmid { range: String::new() })
        }
        Some((first, last)) => {
            let size = last.0 - first.0 + 1;
            for _ in 0..size {
                let candidate = engine.next_in_range(first, last);
                let Some(claim) = engine.vmid_claims.claim(candidate) else { continue };
                if taken(candidate) {
                    continue;
                }
                match engine.pve.next_vmid(Some(candidate)).await {
                    Ok(_) => return Ok(claim),
                    Err(err) if err.is_already_exists() => continue,
                    Err(err) => return Err(pve_error(err)),
                }
            }
            Err(ProvisionError::NoFreeVmid { range: format!(" in vmid_range {first}-{last}") })
        }
    }
}

fn spawn_provisioning(
    engine: &Arc<Engine>,
    id: InstanceId,
    accepted: Accepted,
    clone_slot: Slot,
    probe: bool,
    vmid_attempts: u32,
) {
    let started = Instant::now();
    let work = provision(engine.clone(), id.clone(), accepted, clone_slot, started, probe, vmid_attempts);
    engine.spawn_traced(Some(&id), id.vmid, work);
}

/// Clone → configure → start → address → rename. Failures are logged with
/// the reason, told to the breaker, and cleaned up; a clone that failed for
/// its VMID is made again on another VMID.
async fn provision(
    engine: Arc<Engine>,
    id: InstanceId,
    accepted: Accepted,
    clone_slot: Slot,
    started: Instant,
    probe: bool,
    vmid_attempts: u32,
) {
    match provision_steps(&engine, &id, accepted, clone_slot).await {
        Ok(addresses) => {
            // None: removal was requested meanwhile.
            let Some(node) = engine.registry.provisioned(&id, addresses.clone()) else { return };
            engine.metrics.provisioned();
            engine.metrics.phase_done(ProvisionPhase::Total, started.elapsed());
            let resumed = engine.provisioning_succeeded();
            if resumed {
                tracing::info!(instance = %id, "scale-up resumes: an instance became ready");
            }
            tracing::info!(
                instance = %id,
                vmid = %id.vmid,
                node,
                address = %addresses.internal.or(addresses.external).map(|ip| ip.to_string()).unwrap_or_default(),
                duration_ms = started.elapsed().as_millis() as u64,
                "instance running"
            );
        }
        Err(err) => {
            // Runner removed it while it was being created: the deletion
            // under way ends it, and nothing failed (no warning, no backoff).
            let removal_requested = engine.registry.phase_of(&id).is_none_or(|phase| phase == Phase::Deleting);
            let verdict = err.verdict(Some(id.vmid));
            let clone_failed = err.step() == Some(Step::Clone) && !matches!(verdict, Verdict::VmidTied(_));
            if removal_requested {
                if clone_failed {
                    // The deletion under way (or the next Update) removes the holder.
                    hold_vmid_for_cleanup(&engine, &id).await;
                }
                tracing::debug!(instance = %id, vmid = %id.vmid, error = %err, "provisioning stopped: removal was requested");
                record_failure(&engine, &ProvisionError::RemovalRequested, None, probe);
                return;
            }
            record_failure(&engine, &err, Some(id.vmid), probe);
            let reason = err.to_string();
            let retry_elsewhere = matches!(verdict, Verdict::VmidTied(_)) && vmid_attempts > 0;
            if retry_elsewhere {
                tracing::info!(instance = %id, vmid = %id.vmid, "instance creating again on another VMID");
            } else {
                tracing::warn!(instance = %id, vmid = %id.vmid, reason, "could not provision instance; removing it");
            }
            let proceed = engine.registry.begin_removal(&id) == Removal::Started;
            if retry_elsewhere {
                // The replacement takes its own clone slot; Runner sees this
                // instance go and the replacement come.
                let retry_engine = engine.clone();
                engine.spawn_traced(Some(&id), id.vmid, async move {
                    if let Err(err) = request_clone_on_some_vmid(&retry_engine, probe, vmid_attempts).await {
                        record_failure(&retry_engine, &err, None, probe);
                        tracing::warn!(error = %err, "could not create a replacement instance");
                    }
                });
            }
            if proceed {
                if clone_failed {
                    hold_vmid_for_cleanup(&engine, &id).await;
                }
                super::deletion::delete(engine, id, reason).await;
            }
        }
    }
}

/// After a clone of ours failed, PVE removes the new config, but a node
/// crash mid-copy can leave the new VMID's volumes behind, where nextid
/// offers the VMID again and every later clone to it collides. An empty VM
/// with this instance's marker on the VMID lets the deletion that follows
/// (with `destroy-unreferenced-disks`) free them, with no privilege beyond
/// the pool's `VM.Allocate`. A VMID someone else took meanwhile is left alone.
async fn hold_vmid_for_cleanup(engine: &Engine, id: &InstanceId) {
    // The failed clone's volumes are on the instance's node (its local
    // storage, when it cloned a template copy or onto a local target
    // storage), and `destroy-unreferenced-disks` frees only the storages of
    // the node the holder is on.
    let node = engine.registry.node_of(id).unwrap_or_else(|| engine.template_node.clone());
    match engine.pve.vm_config(&node, id.vmid).await {
        Err(err) if absent_from_pool(&err, id.vmid) => {}
        // The VM exists (the deletion handles it), or PVE cannot say.
        _ => return,
    }
    let request = crate::pve::EmptyVmRequest {
        vmid: id.vmid,
        name: Some(engine.config.instance_name_removing.clone()),
        description: Some(engine.naming.description(id)),
        pool: Some(engine.config.pool.clone()),
    };
    // A create whose answer was lost may have made the holder already: a
    // repeat then finds the VMID taken, and the marker tells.
    let mut sent = false;
    let created = retry_locked(|| {
        let was_sent = std::mem::replace(&mut sent, true);
        let request = &request;
        let node = &node;
        async move {
            match engine.pve.create_empty_vm(node, request).await {
                Ok(upid) => engine.pve.wait_task(&upid, Duration::from_secs(60)).await.map(|_| ()),
                Err(err) if was_sent && err.is_already_exists() => match find_own_clone(engine, id, node).await {
                    Ok(CloneTarget::Ours { .. }) => Ok(()),
                    Ok(CloneTarget::InFlight | CloneTarget::NotOurs) => Err(err),
                    Err(check) => Err(check),
                },
                Err(err) => Err(err),
            }
        }
    })
    .await;
    match created {
        Ok(()) => {
            tracing::debug!(instance = %id, vmid = %id.vmid, "holding VMID {} to free what the failed clone left", id.vmid);
            engine.registry.moved(id, node);
        }
        Err(err) if err.is_already_exists() => {}
        Err(err) => {
            let reason = ProvisionError::pve(Step::Clone, err);
            quarantine(engine, id.vmid, &reason);
        }
    }
}

async fn provision_steps(
    engine: &Engine,
    id: &InstanceId,
    accepted: Accepted,
    clone_slot: Slot,
) -> Result<Addresses, ProvisionError> {
    let pve = &engine.pve;
    let vmid = id.vmid;
    let clone_error = |error| ProvisionError::pve(Step::Clone, error);
    let configure_error = |error| ProvisionError::pve(Step::Configure, error);
    let start_error = |error| ProvisionError::pve(Step::Start, error);
    let metrics = &engine.metrics;
    let mut phase_started = Instant::now();
    let mut phase_done = |phase: ProvisionPhase| {
        metrics.phase_done(phase, phase_started.elapsed());
        phase_started = Instant::now();
    };
    match accepted {
        Accepted::Task(upid) => {
            pve.wait_task(&upid, engine.config.clone_timeout).await.map_err(clone_error)?;
        }
        Accepted::Found { node } => wait_for_clone_without_task(engine, id, &node).await?,
    }
    // The clone task is over: the next clone may go, whatever happens here.
    drop(clone_slot);
    phase_done(ProvisionPhase::CloneTask);
    let node = engine.registry.node_of(id).ok_or(ProvisionError::RemovalRequested)?;
    let config = retry_locked(|| pve.vm_config(&node, vmid)).await.map_err(configure_error)?;

    // Before the tags carry it: the lease is known free, or moved to a free one.
    let lease = match &engine.config.static_network {
        Some(network) => Some(super::lease::confirm(engine, network, id, &node).await?),
        None => None,
    };
    let mut update = ConfigUpdate { tags: Some(engine.tags_for(id, InstanceState::Creating)), ..Default::default() };
    if let Some(key) = &engine.key {
        update.ciuser = Some(engine.config.cloud_init_user.clone());
        update.ssh_public_keys = Some(format!("{}\n", key.public_openssh));
        if !config.contains_key("ipconfig0") {
            update.ipconfig0 = Some("ip=dhcp,ip6=auto".into());
        }
    }
    if let Some(password) = &engine.password {
        update.ciuser = Some(engine.generated_user());
        update.cipassword = Some(password.clone());
        if !config.contains_key("ipconfig0") {
            update.ipconfig0 = Some("ip=dhcp,ip6=auto".into());
        }
    }
    if let (Some(network), Some(lease)) = (&engine.config.static_network, &lease) {
        update.ipconfig0 = Some(network.ipconfig(lease));
    }
    if !engine.config.nameservers.is_empty() {
        let servers: Vec<String> = engine.config.nameservers.iter().map(ToString::to_string).collect();
        update.nameserver = Some(servers.join(" "));
    }
    update.searchdomain = engine.config.searchdomain.clone();
    update.memory_mib = engine.config.sizing.memory_mib;
    update.cores = engine.config.sizing.cores;
    update_own_config(engine, id, &node, &update).await.map_err(|err| err.during(Step::Configure))?;
    if let Some(growth) = disk_growth(engine) {
        grow_disk(engine, &node, vmid, &growth, &config).await?;
    }
    phase_done(ProvisionPhase::Configure);

    // Held until the guest answers: booting is what loads the node.
    let start_slot = engine.start_slots.acquire(&node, &engine.cancel).await.ok_or(ProvisionError::ShuttingDown)?;
    // Removed meanwhile: its VMID may already be another VM's.
    if engine.registry.phase_of(id) != Some(Phase::Creating) {
        return Err(ProvisionError::RemovalRequested);
    }
    let deadline = Instant::now() + engine.config.boot_timeout;
    let start = retry_locked(|| pve.start_vm(&node, vmid)).await.map_err(start_error)?;
    match pve.wait_task(&start, engine.config.boot_timeout).await {
        Ok(_) => {}
        // A repeated start whose first request did reach PVE.
        Err(err) if already_running(&err) => {}
        Err(err) => return Err(start_error(err)),
    }
    phase_done(ProvisionPhase::Start);

    let net0 = config.get("net0").map(String::as_str);
    let addresses = match lease {
        Some(lease) if !engine.config.agent_required => {
            let addresses = engine.lease_addresses(&lease);
            wait_for_port(engine, &addresses, deadline).await?;
            addresses
        }
        Some(lease) => {
            wait_for_address(engine, &node, vmid, net0, deadline, Some(&lease)).await?;
            engine.lease_addresses(&lease)
        }
        None => wait_for_address(engine, &node, vmid, net0, deadline, None).await?,
    };
    drop(start_slot);
    let rename = engine.label_for(id, InstanceState::Running);
    match update_own_config(engine, id, &node, &rename).await {
        Ok(()) => {}
        Err(OwnWriteError::NotOurs) => return Err(ProvisionError::RemovalRequested),
        Err(OwnWriteError::Pve(err)) => {
            tracing::warn!(vmid = %vmid, error = %err, "could not rename the VM; it is running anyway");
        }
    }
    Ok(addresses)
}

/// Why a write to an instance's own VM did not happen.
#[derive(Debug)]
pub(crate) enum OwnWriteError {
    /// The VM on the VMID no longer carries this instance's marker (it was
    /// removed meanwhile, and the VMID may be another VM's now).
    NotOurs,
    Pve(PveError),
}

impl OwnWriteError {
    /// As a provisioning failure of `step`.
    pub(crate) fn during(self, step: Step) -> ProvisionError {
        match self {
            Self::NotOurs => ProvisionError::RemovalRequested,
            Self::Pve(error) => ProvisionError::pve(step, error),
        }
    }
}

/// Times a guarded write reads again after losing to another write.
const OWN_WRITE_ATTEMPTS: u32 = 5;

/// Writes `update` to `id`'s VM only while it is that instance's VM: the
/// config is read, its marker checked, and the write carries the config's
/// digest, so PVE refuses it if the VM changed in between. A provisioning
/// task that outlives its instance (removed while it was being created, its
/// VMID then handed to a new VM) never writes onto the new VM. A write that
/// lost to another one (the digest moved on) reads again.
pub(crate) async fn update_own_config(
    engine: &Engine,
    id: &InstanceId,
    node: &str,
    update: &ConfigUpdate,
) -> Result<(), OwnWriteError> {
    for attempt in 1..=OWN_WRITE_ATTEMPTS {
        let config = match retry_locked(|| engine.pve.vm_config(node, id.vmid)).await {
            Ok(config) => config,
            Err(err) if absent_from_pool(&err, id.vmid) => return Err(OwnWriteError::NotOurs),
            Err(err) => return Err(OwnWriteError::Pve(err)),
        };
        let marker = config.get("description").map(String::as_str).unwrap_or_default();
        if engine.naming.owner_of_description(marker).as_ref() != Some(id) {
            return Err(OwnWriteError::NotOurs);
        }
        let guarded = ConfigUpdate { digest: config.get("digest").cloned(), ..update.clone() };
        match retry_locked(|| engine.pve.update_vm_config(node, id.vmid, &guarded)).await {
            Ok(()) => return Ok(()),
            Err(err) if is_stale_digest(&err) && attempt < OWN_WRITE_ATTEMPTS => continue,
            Err(err) if absent_from_pool(&err, id.vmid) => return Err(OwnWriteError::NotOurs),
            Err(err) => return Err(OwnWriteError::Pve(err)),
        }
    }
    unreachable!("the last attempt returns")
}

/// PVE's answer to a config write whose `digest` no longer matches.
fn is_stale_digest(err: &PveError) -> bool {
    err.to_string().contains("detected modified configuration")
}

/// The disk every instance gets grown, and to what: `vm_disk_mb` (to that
/// many MiB) or Phenix66's `instance_autoresize_*` (to or by a size).
fn disk_growth(engine: &Engine) -> Option<super::config::DiskResize> {
    let disk = engine.grown_disk.clone()?;
    match (&engine.config.autoresize, engine.config.sizing.disk_mib) {
        (Some(resize), _) => Some(super::config::DiskResize { disk, size: resize.size.clone() }),
        (None, Some(mib)) => Some(super::config::DiskResize { disk, size: format!("{mib}M") }),
        (None, None) => None,
    }
}

/// Grows the disk before the first start: `+N` grows by N; an absolute
/// size only grows (a disk already that large or larger is left as it is,
/// logged once for the instance: PVE never shrinks). Init made sure it is
/// never the cloud-init drive.
async fn grow_disk(
    engine: &Engine,
    node: &str,
    vmid: Vmid,
    resize: &super::config::DiskResize,
    config: &BTreeMap<String, String>,
) -> Result<(), ProvisionError> {
    let resize_error = |error| ProvisionError::pve(Step::Resize, error);
    let current_text =
        config.get(&resize.disk).and_then(|value| value.split(',').find_map(|part| part.strip_prefix("size=")));
    let current = current_text.and_then(size_in_bytes);
    if let (Some(current), Some(wanted)) = (current, size_in_bytes(&resize.size))
        && !resize.size.starts_with('+')
        && wanted <= current
    {
        tracing::info!(
            vmid = %vmid,
            disk = resize.disk,
            size = current_text.unwrap_or_default(),
            wanted = resize.size,
            "the disk is already as large as asked or larger; leaving it as it is (disks are never shrunk)"
        );
        return Ok(());
    }
    let task =
        retry_locked(|| engine.pve.resize_disk(node, vmid, &resize.disk, &resize.size)).await.map_err(resize_error)?;
    if let Some(task) = task {
        engine.pve.wait_task(&task, engine.config.clone_timeout).await.map_err(resize_error)?;
    }
    Ok(())
}

/// PVE's size notation (`8G`, `512M`, `1.5T`, bytes) in bytes.
pub(crate) fn size_in_bytes(text: &str) -> Option<u64> {
    let text = text.trim().trim_start_matches('+');
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let factor: u64 = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    Some((value * factor as f64) as u64)
}

fn already_running(err: &PveError) -> bool {
    matches!(err.kind(), ErrorKind::TaskFailed { exit_status, .. } if exit_status.contains("already running"))
}

/// Waits for a clone whose task is not known: the new VM's config carries
/// `lock: clone` until the clone ends; a failed clone removes the config.
async fn wait_for_clone_without_task(engine: &Engine, id: &InstanceId, node: &str) -> Result<(), ProvisionError> {
    let deadline = Instant::now() + engine.config.clone_timeout;
    let mut pause = Duration::from_millis(500);
    loop {
        match find_own_clone(engine, id, node).await {
            // The marker's read tells whether the clone still holds its lock.
            Ok(CloneTarget::Ours { node: found, config }) => {
                if config.get("lock").map(String::as_str) != Some("clone") {
                    engine.registry.moved(id, found);
                    return Ok(());
                }
            }
            // Still copying its first disk (this clone was seen with our
            // marker before, or its lost answer was waited for already).
            Ok(CloneTarget::InFlight) => {}
            Ok(CloneTarget::NotOurs) => {
                let message = format!(
                    "the clone of VM {} to {} ended without the new VM: it failed",
                    engine.config.template_id, id.vmid
                );
                let error = PveError::new(
                    format!("clone VM {} to {}", engine.config.template_id, id.vmid),
                    ErrorKind::NotFound { message },
                );
                return Err(ProvisionError::pve(Step::Clone, error));
            }
            Err(err) if err.is_retryable() => {}
            Err(err) => return Err(ProvisionError::pve(Step::Clone, err)),
        }
        if Instant::now() + pause > deadline {
            let error = PveError::new(
                format!("clone VM {} to {}", engine.config.template_id, id.vmid),
                ErrorKind::Transient {
                    message: format!("still running after clone_timeout ({} s)", engine.config.clone_timeout.as_secs()),
                },
            );
            return Err(ProvisionError::pve(Step::Clone, error));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(3));
    }
}

/// Polls the guest agent until it reports an address of the wanted family,
/// or, with a static lease, the leased address (cloud-init applied it).
pub(super) async fn wait_for_address(
    engine: &Engine,
    node: &str,
    vmid: Vmid,
    net0: Option<&str>,
    deadline: Instant,
    lease: Option<&Lease>,
) -> Result<Addresses, ProvisionError> {
    let started = Instant::now();
    // When the agent first answered: boot-to-agent and address are measured apart.
    let mut agent_answered: Option<Instant> = None;
    let mut pause = Duration::from_millis(500);
    loop {
        let (last, api_unavailable) = match engine.pve.guest_interfaces(node, vmid).await {
            Ok(interfaces) => {
                let answered = *agent_answered.get_or_insert_with(|| {
                    engine.metrics.phase_done(ProvisionPhase::BootToAgent, started.elapsed());
                    Instant::now()
                });
                let addresses = match lease {
                    Some(lease) => reports_lease(&interfaces, lease).then(|| engine.lease_addresses(lease)),
                    None => Some(choose_addresses(&engine.config, &interfaces, net0)),
                };
                if let Some(addresses) = addresses.filter(|a| !a.is_empty()) {
                    engine.metrics.phase_done(ProvisionPhase::Address, answered.elapsed());
                    return Ok(addresses);
                }
                let message = match lease {
                    Some(lease) => format!(
                        "the guest agent does not report the static address {} (cloud-init did not apply ipconfig0 yet)",
                        lease.addresses().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                    None => format!(
                        "the guest agent reports no {:?} address on net0 or {}",
                        engine.config.instance_network_protocol, engine.config.instance_network_interface
                    ),
                };
                (message, false)
            }
            Err(err) if matches!(err.kind(), ErrorKind::PermissionDenied { .. }) => {
                return Err(ProvisionError::pve(Step::Boot, err));
            }
            Err(err) => (err.to_string(), err.is_retryable()),
        };
        if Instant::now() + pause > deadline {
            return Err(ProvisionError::NoAddress { waited_secs: started.elapsed().as_secs(), last, api_unavailable });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(3));
    }
}

/// Whether the agent reports every leased address on some interface.
pub(super) fn reports_lease(interfaces: &[crate::pve::GuestInterface], lease: &Lease) -> bool {
    lease.addresses().all(|ip| interfaces.iter().any(|i| i.addresses.iter().any(|(address, _)| *address == ip)))
}

/// Without the agent: waits until the connector's port accepts a TCP
/// connection from this host.
async fn wait_for_port(engine: &Engine, addresses: &Addresses, deadline: Instant) -> Result<(), ProvisionError> {
    let started = Instant::now();
    let Some(address) = engine.connector_address(addresses) else {
        return Err(ProvisionError::NoAddress {
            waited_secs: 0,
            last: "the lease has no address".into(),
            api_unavailable: false,
        });
    };
    let mut pause = Duration::from_millis(250);
    loop {
        let attempt =
            tokio::time::timeout(super::engine::PORT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await;
        let last = match attempt {
            Ok(Ok(_)) => {
                engine.metrics.phase_done(ProvisionPhase::Address, started.elapsed());
                return Ok(());
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no answer".to_string(),
        };
        if Instant::now() + pause > deadline {
            return Err(ProvisionError::PortClosed { address, waited_secs: started.elapsed().as_secs(), last });
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
pub(super) async fn retry_locked<T, F, Fut>(mut call: F) -> Result<T, PveError>
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
