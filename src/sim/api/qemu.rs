//! QEMU guests: list, config (read, sync and async update, cloud-init),
//! clone, status, power actions, destroy, guest agent.
//!
//! Each handler does in the request what qemu-server checks before forking
//! its worker (errors come back as the HTTP answer), and the rest in a
//! worker task (errors end the task).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::Call;
use crate::pve::api::types;
use crate::pve::lenient::{PveBool, PveInt, PveNumber};
use crate::sim::access::Caller;
use crate::sim::agent;
use crate::sim::cluster::Cluster;
use crate::sim::faults::TaskFailure;
use crate::sim::schema::{ConfigValueKind, Params};
use crate::sim::simulator::{Shared, TaskContext};
use crate::sim::vm::{self, Power, Vm};
use crate::sim::wire::{ApiError, Reply};

/// `lock_config`'s default flock timeout (clone uses the shorter configured one).
pub(super) const CONFIG_LOCK_TIMEOUT: f64 = 10.0;

pub(super) fn locked(lock: &str) -> String {
    format!("VM is locked ({lock})")
}

/// `skiplock` is for root@pam only.
fn check_skiplock(call: &Call<'_>) -> Result<bool, ApiError> {
    let skiplock = call.params.flag("skiplock") == Some(true);
    if skiplock && !call.caller()?.is_root() {
        return Err(ApiError::parameter("skiplock", "Only root may use this option."));
    }
    Ok(skiplock)
}

/// A stable pid for a running VM's QEMU process.
fn qemu_pid(guest: &Vm) -> i64 {
    match guest.power {
        Power::Running { since, .. } => 1000 + (since as i64 % 900_000) + i64::from(guest.vmid % 1000),
        Power::Stopped => 0,
    }
}

pub fn list(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let node = call.node();
    let full = call.params.flag("full") == Some(true);
    let now = call.shared.clock.now();
    let items: Vec<types::GetNodesNodeQemuResponseDataItem> = cluster
        .vms
        .values()
        .filter(|g| g.node == node && cluster.privileges(caller, &format!("/vms/{}", g.vmid)).contains("VM.Audit"))
        .map(|guest| {
            let running = guest.is_running();
            types::GetNodesNodeQemuResponseDataItem {
                vmid: Some(PveInt(i64::from(guest.vmid))),
                name: Some(guest.display_name()),
                status: Some(guest.status().into()),
                qmpstatus: full.then(|| guest.qmp_status().to_string()),
                cpus: Some(PveNumber(guest.cpus() as f64)),
                maxmem: Some(PveInt(guest.max_memory() as i64)),
                maxdisk: Some(PveInt(guest.max_disk() as i64)),
                uptime: Some(PveInt(guest.uptime(now) as i64)),
                pid: running.then(|| PveInt(qemu_pid(guest))),
                lock: guest.lock().map(str::to_string),
                tags: guest.config.get("tags").filter(|t| !t.is_empty()).cloned(),
                template: guest.is_template().then_some(PveBool(true)),
                cpu: Some(PveNumber(if running { 0.0125 } else { 0.0 })),
                mem: Some(PveInt(if running { (guest.max_memory() / 3) as i64 } else { 0 })),
                netin: Some(PveInt(0)),
                netout: Some(PveInt(0)),
                diskread: Some(PveInt(0)),
                diskwrite: Some(PveInt(0)),
                running_machine: (full && running).then(|| "pc-i440fx-9.2+pve1".to_string()),
                running_qemu: (full && running).then(|| "9.2.0".to_string()),
                ..Default::default()
            }
        })
        .collect();
    Ok(Reply::data(&items))
}

/// The config digest clients send back for optimistic locking.
fn digest(config: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in config {
        hasher.update(key.as_bytes());
        hasher.update(b": ");
        hasher.update(value.as_bytes());
        hasher.update(b"\n");
    }
    hex::encode(hasher.finalize())[..40].to_string()
}

/// The config as PVE returns it: booleans and integers as numbers,
/// `number` options (`cpulimit`) still strings, `cipassword` masked.
pub fn config(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let guest = cluster.vm_on(&call.node(), call.vmid())?;
    let (config, snaptime) = match call.params.get("snapshot") {
        None => (&guest.config, None),
        Some(name) => {
            let snapshot = guest
                .snapshots
                .get(name)
                .ok_or_else(|| ApiError::internal(format!("snapshot '{name}' does not exist")))?;
            (&snapshot.config, Some(snapshot.snaptime))
        }
    };
    let api = &call.shared.api;
    let numeric_memory = (call.shared.version.major, call.shared.version.minor) < (8, 1);
    let mut map = Map::new();
    if let Some(snaptime) = snaptime {
        map.insert("snaptime".into(), json!(snaptime));
    }
    for (key, value) in config {
        let typed = match (key.as_str(), api.config_value_kind(key)) {
            ("cipassword", _) => json!("**********"),
            ("memory", _) if numeric_memory => value.parse::<i64>().map_or_else(|_| json!(value), |n| json!(n)),
            (_, ConfigValueKind::Boolean | ConfigValueKind::Integer) => {
                value.parse::<i64>().map_or_else(|_| json!(value), |n| json!(n))
            }
            _ => json!(value),
        };
        map.insert(key.clone(), typed);
    }
    map.insert("digest".into(), json!(digest(config)));
    Ok(Reply::data(&map))
}

/// `GET …/snapshot`: every snapshot, then `current` ("You are here!").
pub fn snapshots(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let guest = cluster.vm_on(&call.node(), call.vmid())?;
    let mut list: Vec<Value> = guest
        .snapshots
        .iter()
        .map(|(name, snapshot)| {
            json!({ "name": name, "snaptime": snapshot.snaptime, "vmstate": 0, "description": snapshot.description })
        })
        .collect();
    list.push(json!({
        "name": "current",
        "digest": digest(&guest.config),
        "running": i64::from(guest.is_running()),
        "description": "You are here!",
    }));
    Ok(Reply::data(&list))
}

const NOT_CONFIG_KEYS: &[&str] = &["node", "vmid", "digest", "delete", "revert", "skiplock", "background_delay"];

/// The privileges a config key needs (`check_vm_modify_config_perm`), or
/// `None` for root-only keys (`lock`, `args`, anything unknown).
fn key_privileges(key: &str, value: Option<&str>) -> Option<(&'static [&'static str], bool)> {
    const OPTIONS: &[&str] = &["VM.Config.Options"];
    const CLOUDINIT: &[&str] = &["VM.Config.Cloudinit", "VM.Config.Network"];
    const NETWORK: &[&str] = &["VM.Config.Network"];
    const CPU: &[&str] = &["VM.Config.CPU"];
    const MEMORY: &[&str] = &["VM.Config.Memory"];
    const DISK: &[&str] = &["VM.Config.Disk"];
    const CDROM: &[&str] = &["VM.Config.CDROM"];
    const HWTYPE: &[&str] = &["VM.Config.HWType"];
    let indexed =
        |prefix: &str| key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let rule = match key {
        "name" | "description" | "agent" | "onboot" | "protection" | "template" | "tags" | "startup" | "boot"
        | "bootdisk" | "hotplug" | "localtime" | "freeze" | "tablet" | "ostype" | "reboot" | "autostart" | "tdf"
        | "migrate_speed" | "migrate_downtime" | "vmstatestorage" | "spice_enhancements" | "kvm" | "acpi"
        | "smbios1" | "vmgenid" | "meta" => (OPTIONS, false),
        "ciuser" | "cipassword" | "sshkeys" | "nameserver" | "searchdomain" | "citype" | "ciupgrade" | "cicustom" => {
            (CLOUDINIT, true)
        }
        _ if indexed("ipconfig") => (CLOUDINIT, true),
        _ if indexed("net") => (NETWORK, false),
        "cores" | "sockets" | "cpu" | "cpulimit" | "cpuunits" | "vcpus" | "numa" | "affinity" => (CPU, false),
        _ if indexed("numa") => (CPU, false),
        "memory" | "balloon" | "shares" | "hugepages" | "keephugepages" => (MEMORY, false),
        _ if vm::is_disk_key(key) => {
            if value.is_some_and(vm::is_cdrom) {
                (CDROM, false)
            } else {
                (DISK, false)
            }
        }
        "scsihw" | "vga" | "machine" | "bios" | "keyboard" | "audio0" | "rng0" | "watchdog" => (HWTYPE, false),
        _ if indexed("serial") || indexed("usb") || indexed("hostpci") || indexed("parallel") => (HWTYPE, false),
        _ => return None,
    };
    Some(rule)
}

/// Per-key permission checks of a config update, in the request.
fn check_config_permissions(call: &Call<'_>, cluster: &Cluster, caller: &Caller) -> Result<(), ApiError> {
    let vmid = call.vmid();
    let path = format!("/vms/{vmid}");
    let deleted = split_list(call.params.get("delete"));
    let current = cluster.vms.get(&vmid);
    let mut keys: Vec<(String, Option<String>)> = call
        .params
        .iter()
        .filter(|(k, _)| !NOT_CONFIG_KEYS.contains(k))
        .map(|(k, v)| (k.to_string(), Some(v.to_string())))
        .collect();
    keys.extend(deleted.into_iter().map(|k| {
        let old = current.and_then(|g| g.config.get(&k).cloned());
        (k, old)
    }));
    for (key, value) in &keys {
        match key_privileges(key, value.as_deref()) {
            Some((privileges, any)) => {
                if !caller.is_root() {
                    cluster.require(caller, &path, privileges, any)?;
                }
            }
            None if caller.is_root() => {}
            None => return Err(ApiError::internal(format!("only root can set '{key}' config"))),
        }
        if key.starts_with("net")
            && call.shared.version.requires_sdn_use()
            && !caller.is_root()
            && let Some(bridge) = value.as_deref().and_then(vm::net_bridge)
        {
            cluster.require(caller, &format!("/sdn/zones/localnetwork/{bridge}"), &["SDN.Use"], false)?;
        }
    }
    Ok(())
}

fn split_list(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// Applies an update to the config: deletions (disks become `unusedN`,
/// cloud-init drives and `unusedN` are removed with their volume), then
/// new values (tags normalised, NICs get a MAC, `storage:size` allocates).
fn apply_config(cluster: &mut Cluster, vmid: u32, params: &Params) -> Result<(), String> {
    let Some(guest) = cluster.vms.get(&vmid) else { return Err(format!("VM {vmid} does not exist")) };
    let node = guest.node.clone();
    let mut config = guest.config.clone();
    let mut remove_volumes = Vec::new();
    for key in split_list(params.get("delete")) {
        let Some(old) = config.remove(&key) else { continue };
        if !vm::is_disk_key(&key) || vm::is_cdrom(&old) {
            continue;
        }
        let Some(volid) = vm::disk_volume(&old) else { continue };
        if key.starts_with("unused") || old.contains("cloudinit") {
            remove_volumes.push(volid);
        } else if let Some(index) = (0..256).find(|n| !config.contains_key(&format!("unused{n}"))) {
            config.insert(format!("unused{index}"), volid);
        }
    }
    for (key, value) in params.iter().filter(|(k, _)| !NOT_CONFIG_KEYS.contains(k)) {
        let mut value = value.to_string();
        if key == "tags" {
            value = vm::normalize_tags(&value);
        } else if key.starts_with("net") && !key.starts_with("netw") && vm::net_mac(&value).is_none() {
            let mac = cluster.new_mac();
            value = vm::net_with_mac(&value, &mac);
        } else if vm::is_disk_key(key)
            && let Some(allocated) = allocate_disk(cluster, vmid, &node, &value)?
        {
            value = allocated;
        }
        config.insert(key.to_string(), value);
    }
    for volid in remove_volumes {
        cluster.remove_volume(&volid, &node);
    }
    if let Some(guest) = cluster.vms.get_mut(&vmid) {
        guest.config = config;
    }
    Ok(())
}

/// `local-lvm:4` (GiB) and `local-lvm:cloudinit` allocate a new volume;
/// returns the value that references it.
fn allocate_disk(cluster: &mut Cluster, vmid: u32, node: &str, value: &str) -> Result<Option<String>, String> {
    let first = value.split(',').next().unwrap_or_default();
    let rest: Vec<&str> = value.split(',').skip(1).collect();
    let Some((storage, spec)) = first.split_once(':') else { return Ok(None) };
    if !cluster.storages.contains_key(storage) {
        return Ok(None);
    }
    if spec == "cloudinit" {
        let name = cluster.cloudinit_volume_name(storage, vmid).unwrap_or_default();
        let volid = cluster.create_volume(storage, name, vmid, 4 << 20, None, node)?;
        return Ok(Some(format!("{volid},media=cdrom")));
    }
    let Ok(gib) = spec.parse::<f64>() else { return Ok(None) };
    let name = cluster.free_disk_name(storage, vmid, None, node).ok_or("no free disk name")?;
    let volid = cluster.create_volume(storage, name, vmid, (gib * (1u64 << 30) as f64) as u64, None, node)?;
    let mut parts = vec![volid];
    parts.extend(rest.iter().map(|s| s.to_string()));
    parts.push(format!("size={gib}G"));
    Ok(Some(parts.join(",")))
}

pub fn update_config(call: &Call<'_>, asynchronous: bool) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let skiplock = check_skiplock(call)?;
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    cluster.vm_on(&node, vmid)?;
    check_config_permissions(call, &cluster, &caller)?;
    let expected_digest = call.params.text("digest");
    let check_state = move |cluster: &Cluster| -> Result<(), String> {
        let Some(guest) = cluster.vms.get(&vmid) else {
            return Err(format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"));
        };
        if let Some(lock) = guest.lock().filter(|_| !skiplock) {
            return Err(locked(lock));
        }
        if expected_digest.as_ref().is_some_and(|d| *d != digest(&guest.config)) {
            return Err("detected modified configuration - file changed by other user? Try again.".into());
        }
        Ok(())
    };
    let params = call.params.clone();
    if !asynchronous {
        check_state(&cluster).map_err(ApiError::internal)?;
        apply_config(&mut cluster, vmid, &params).map_err(ApiError::internal)?;
        cluster.touch(vmid, shared.clock.now());
        return Ok(Reply::null());
    }
    let duration = shared.timings.config;
    let upid = shared.spawn_task(
        &mut cluster,
        &call.node(),
        "qmconfig",
        &vmid.to_string(),
        caller.id(),
        move |mut task: TaskContext| async move {
            task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            let result = async {
                task.sleep(duration).await?;
                let shared = task.shared.clone();
                let mut cluster = shared.cluster();
                check_state(&cluster)?;
                apply_config(&mut cluster, vmid, &params)?;
                cluster.touch(vmid, shared.clock.now());
                Ok(())
            }
            .await;
            task.shared.cluster().release_flock(vmid, true);
            result
        },
    );
    Ok(Reply::data(&upid))
}

pub fn regenerate_cloudinit(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    cluster.vm_on(&call.node(), call.vmid())?;
    Ok(Reply::null())
}

struct PlannedDisk {
    key: String,
    value: String,
    source_volid: String,
    storage: String,
    cloudinit: bool,
}

struct ClonePlan {
    source: u32,
    newid: u32,
    node: String,
    target: String,
    full: bool,
    name: String,
    description: Option<String>,
    pool: Option<String>,
    source_running: bool,
    /// Cloned from this snapshot's configuration instead of the current one.
    snapname: Option<String>,
    disks: Vec<PlannedDisk>,
}

/// What qemu-server checks before forking the clone worker.
fn plan_clone(call: &Call<'_>, cluster: &Cluster, caller: &Caller) -> Result<ClonePlan, ApiError> {
    let params = &call.params;
    let node = call.node();
    let source = call.vmid();
    let newid = params.int("newid").and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
    let guest = cluster.vm_on(&node, source)?;
    if let Some(lock) = guest.lock() {
        return Err(ApiError::internal(locked(lock)));
    }
    let snapname = params.text("snapname");
    let source_config = match &snapname {
        None => &guest.config,
        Some(name) => {
            &guest
                .snapshots
                .get(name)
                .ok_or_else(|| ApiError::internal(format!("snapshot '{name}' does not exist")))?
                .config
        }
    };
    let full = params.flag("full").unwrap_or(!guest.is_template());
    if !full && params.has("storage") {
        return Err(ApiError::internal("parameter 'storage' not allowed for linked clones"));
    }
    if !full && params.has("format") {
        return Err(ApiError::internal("parameter 'format' not allowed for linked clones"));
    }
    let target = params.text("target").unwrap_or_else(|| node.clone());
    let target_node = cluster.node(&target)?;
    if !target_node.online {
        return Err(ApiError::internal(format!("target node '{target}' is not online")));
    }
    if let Some(existing) = cluster.vms.get(&newid) {
        return Err(ApiError::internal(if existing.node == node {
            format!("unable to create VM {newid}: config file already exists")
        } else {
            format!("VM {newid} already exists on node '{}'", existing.node)
        }));
    }
    if let Some(pool) = params.get("pool")
        && !cluster.pools.contains_key(pool)
    {
        return Err(ApiError::internal(format!("pool '{pool}' does not exist")));
    }
    let target_storage = params.text("storage");
    if let Some(storage) = &target_storage {
        let store = cluster
            .storages
            .get(storage)
            .ok_or_else(|| ApiError::internal(format!("storage '{storage}' does not exist")))?;
        // qemu-server `clone_vm`: `storage_check_enabled` on this node and on
        // the target, images content, and a clone to another node only onto
        // shared storage.
        for on in [&node, &target] {
            if !store.available_on(on) {
                return Err(ApiError::internal(format!("storage '{storage}' is not available on node '{on}'")));
            }
        }
        if !store.content.split(',').any(|c| c == "images") {
            return Err(ApiError::parameter("storage", format!("storage '{storage}' does not support vm images")));
        }
        if target != node && !store.shared {
            return Err(ApiError::internal(format!("can't clone to non-shared storage '{storage}'")));
        }
    }
    // `check_storage_access_clone`: any drive on a non-shared storage, CD-ROM
    // images (an ISO on `local`) and the cloud-init drive included, makes
    // the VM local (unusedN are not drives).
    let shared_vm = source_config
        .iter()
        .filter(|(k, _)| vm::is_disk_key(k) && !k.starts_with("unused"))
        .filter_map(|(_, v)| vm::disk_volume(v))
        .all(|volid| {
            let storage = volid.split(':').next().unwrap_or_default();
            cluster.storages.get(storage).is_none_or(|s| s.shared)
        });
    let mut disks = Vec::new();
    for (key, value) in
        source_config.iter().filter(|(k, v)| vm::is_disk_key(k) && !k.starts_with("unused") && !vm::is_cdrom(v))
    {
        let Some(volid) = vm::disk_volume(value) else { continue };
        let Some((storage_id, _)) = volid.split_once(':') else { continue };
        let storage = cluster
            .storages
            .get(storage_id)
            .ok_or_else(|| ApiError::internal(format!("storage '{storage_id}' does not exist")))?;
        let cloudinit = value.contains("cloudinit");
        if snapname.is_some() && !cloudinit {
            let linked = !full;
            if !storage.copies_from_snapshot(linked, &volid) {
                let kind = if linked { "Linked" } else { "Full" };
                return Err(ApiError::internal(format!(
                    "{kind} clone feature is not supported for a snapshot of '{volid}' ({key})"
                )));
            }
        } else {
            let linkable = guest.is_template() && storage.supports_linked_clone();
            if !(full || cloudinit || linkable) {
                return Err(ApiError::internal(format!("Linked clone feature is not supported for '{volid}' ({key})")));
            }
        }
        let storage = if full {
            target_storage.clone().unwrap_or_else(|| storage_id.to_string())
        } else {
            storage_id.to_string()
        };
        disks.push(PlannedDisk { key: key.clone(), value: value.clone(), source_volid: volid, storage, cloudinit });
    }
    if !caller.is_root() {
        let storages: BTreeSet<&str> = disks.iter().map(|d| d.storage.as_str()).collect();
        for storage in storages {
            cluster.require(caller, &format!("/storage/{storage}"), &["Datastore.AllocateSpace"], false)?;
        }
        if call.shared.version.requires_sdn_use() {
            for (_, value) in source_config.iter().filter(|(k, _)| k.starts_with("net")) {
                if let Some(bridge) = vm::net_bridge(value) {
                    cluster.require(caller, &format!("/sdn/zones/localnetwork/{bridge}"), &["SDN.Use"], false)?;
                }
            }
        }
    }
    if target != node && !shared_vm {
        return Err(ApiError::internal(format!("can't clone VM to node '{target}' (VM uses local storage)")));
    }
    Ok(ClonePlan {
        source,
        newid,
        node,
        target,
        full,
        name: params.text("name").unwrap_or_else(|| format!("Copy-of-VM-{}", guest.display_name())),
        description: params.text("description"),
        pool: params.text("pool"),
        source_running: guest.is_running(),
        snapname,
        disks,
    })
}

/// What qemu-server writes as the new VM's config before it copies the
/// first disk (`# qmclone temporary file` + `lock: clone`), as PVE reads it
/// back: the comment becomes the description. The name, the description
/// asked for and the disks appear only once the first disk is copied.
const CLONE_TEMPORARY_DESCRIPTION: &str = " qmclone temporary file\n";

/// A clone under way: its volumes and the config it gets after its first disk.
struct Materialized {
    volumes: Vec<String>,
    config: BTreeMap<String, String>,
}

/// Creates the new VM with qemu-server's temporary config and its volumes.
/// The outer error ends the task as is (the VMID was taken meanwhile); the
/// inner one is a failed disk copy, reported as `clone failed: …` after
/// cleanup.
fn materialize_clone(
    cluster: &mut Cluster,
    plan: &ClonePlan,
    now: f64,
) -> Result<Result<Materialized, String>, String> {
    if cluster.vms.contains_key(&plan.newid) {
        return Err(format!("unable to create VM {}: config file already exists", plan.newid));
    }
    let source = cluster.vm_on(&plan.node, plan.source).map_err(|e| e.message)?;
    let source_config = match &plan.snapname {
        Some(name) => source.snapshots.get(name).map_or(&source.config, |snapshot| &snapshot.config),
        None => &source.config,
    };
    let mut config: BTreeMap<String, String> = source_config
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "template" | "lock" | "parent" | "vmstate" | "snaptime" | "snapstate")
                && !k.starts_with("unused")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let agent_spec = source.agent.clone();
    let mut created = Vec::new();
    for disk in &plan.disks {
        let size = cluster.volume(&disk.source_volid, &plan.node).map_or(4 << 20, |v| v.size);
        let linked = !plan.full && !disk.cloudinit;
        let base =
            linked.then(|| disk.source_volid.split_once(':').map_or(String::new(), |(_, name)| name.to_string()));
        let name = if disk.cloudinit {
            cluster.cloudinit_volume_name(&disk.storage, plan.newid)
        } else {
            cluster.free_disk_name(&disk.storage, plan.newid, base.as_deref(), &plan.target)
        };
        // The task runs on the source node; a clone to another node is only
        // allowed onto shared storage, so `target` is where local volumes go.
        let result = name.ok_or_else(|| format!("storage '{}' does not exist", disk.storage)).and_then(|name| {
            cluster.create_volume(
                &disk.storage,
                name,
                plan.newid,
                size,
                linked.then(|| disk.source_volid.clone()),
                &plan.target,
            )
        });
        match result {
            Ok(volid) => {
                let options: Vec<&str> = disk.value.split(',').skip(1).collect();
                let value = std::iter::once(volid.as_str()).chain(options).collect::<Vec<_>>().join(",");
                config.insert(disk.key.clone(), value);
                created.push(volid);
            }
            Err(message) => {
                for volid in &created {
                    cluster.remove_volume(volid, &plan.target);
                }
                return Ok(Err(message));
            }
        }
    }
    let net_keys: Vec<String> = config.keys().filter(|k| k.starts_with("net")).cloned().collect();
    for key in net_keys {
        let mac = cluster.new_mac();
        if let Some(value) = config.get(&key).cloned() {
            config.insert(key, vm::net_with_mac(&value, &mac));
        }
    }
    config.insert("name".into(), plan.name.clone());
    if let Some(description) = &plan.description {
        config.insert("description".into(), description.clone());
    }
    config.insert("lock".into(), "clone".into());
    let temporary = BTreeMap::from([
        ("lock".to_string(), "clone".to_string()),
        ("description".to_string(), CLONE_TEMPORARY_DESCRIPTION.to_string()),
    ]);
    let mut guest = Vm::new(plan.newid, plan.node.clone(), temporary, now);
    guest.agent = agent_spec;
    cluster.vms.insert(plan.newid, guest);
    Ok(Ok(Materialized { volumes: created, config }))
}

pub fn clone(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let plan = plan_clone(call, &cluster, &caller)?;
    let failure = call.task_failure.clone();
    let duration = if plan.full { shared.timings.clone_full } else { shared.timings.clone_linked };
    let lock_timeout = shared.timings.lock_timeout;
    let node = plan.node.clone();
    let newid = plan.newid;
    let upid = shared.spawn_task(&mut cluster, &node, "qmclone", &plan.source.to_string(), caller.id(), move |task| {
        run_clone(task, plan, duration, lock_timeout, failure)
    });
    cluster.tasks.set_creates(&upid, newid);
    Ok(Reply::data(&upid))
}

async fn run_clone(
    mut task: TaskContext,
    plan: ClonePlan,
    duration: f64,
    lock_timeout: f64,
    failure: Option<TaskFailure>,
) -> Result<(), String> {
    for disk in &plan.disks {
        let kind = if plan.full || disk.cloudinit { "full" } else { "linked" };
        task.log(format!("create {kind} clone of drive {} ({})", disk.key, disk.source_volid));
    }
    // The source stays locked for the whole copy: shared by parallel clones
    // of a stopped source, exclusive for a running one.
    task.flock(plan.source, plan.source_running, lock_timeout).await?;
    let result = clone_body(&mut task, &plan, duration, lock_timeout, failure).await;
    task.shared.cluster().release_flock(plan.source, plan.source_running);
    result
}

async fn clone_body(
    task: &mut TaskContext,
    plan: &ClonePlan,
    duration: f64,
    lock_timeout: f64,
    failure: Option<TaskFailure>,
) -> Result<(), String> {
    let shared = task.shared.clone();
    // The new VMID is flocked only while its config is created; from then
    // on `lock: clone` in the config keeps others off.
    task.flock(plan.newid, true, lock_timeout).await?;
    let created = {
        let mut cluster = shared.cluster();
        let created = materialize_clone(&mut cluster, plan, shared.clock.now());
        cluster.release_flock(plan.newid, true);
        if created.is_ok() {
            cluster.touch(plan.newid, shared.clock.now());
        }
        created?
    };
    let (created, outcome) = match created {
        Err(message) => (Vec::new(), Err((message, false, false))),
        Ok(materialized) => {
            let outcome = copy_disks(task, plan, materialized.config, duration, failure).await;
            (materialized.volumes, outcome)
        }
    };
    let mut cluster = shared.cluster();
    match outcome {
        Ok(()) => {
            if let Some(guest) = cluster.vms.get_mut(&plan.newid) {
                guest.config.remove("lock");
                guest.node = plan.target.clone();
            }
            if let Some(pool) = &plan.pool
                && let Err(err) = cluster.join_pool(plan.newid, pool)
            {
                cluster.tasks.log(&task.upid, format!("WARN: {}", err.message));
            }
            cluster.touch(plan.newid, shared.clock.now());
            Ok(())
        }
        Err((message, leave_orphans, config_exists)) => {
            if config_exists {
                if !leave_orphans {
                    for volid in &created {
                        cluster.remove_volume(volid, &plan.target);
                    }
                }
                cluster.vms.remove(&plan.newid);
            }
            Err(format!("clone failed: {}", message.trim_start_matches("clone failed: ")))
        }
    }
}

/// The copy itself, disk by disk in key order as qemu-server does, each
/// taking an equal share of `duration`. After the first disk, the config
/// qemu-server writes carries the name, the description and the disks (still
/// with `lock: clone`). The error: (message, leave the disks behind, the
/// new config exists).
async fn copy_disks(
    task: &mut TaskContext,
    plan: &ClonePlan,
    config: BTreeMap<String, String>,
    duration: f64,
    failure: Option<TaskFailure>,
) -> Result<(), (String, bool, bool)> {
    let disks = plan.disks.len().max(1) as f64;
    task.sleep(duration / disks).await.map_err(|message| (message, false, true))?;
    if let Some(guest) = task.shared.cluster().vms.get_mut(&plan.newid) {
        guest.config = config;
    }
    task.sleep(duration - duration / disks).await.map_err(|message| (message, false, true))?;
    match failure {
        Some(failure) => Err((
            failure.message.unwrap_or_else(|| "command 'qemu-img convert' failed: exit code 1".into()),
            failure.leave_orphans,
            true,
        )),
        None => Ok(()),
    }
}

pub fn status(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let guest = cluster.vm_on(&call.node(), call.vmid())?;
    let now = call.shared.clock.now();
    let running = guest.is_running();
    let mut ha = Map::new();
    ha.insert("managed".into(), json!(u8::from(guest.ha_managed)));
    if guest.ha_managed {
        ha.insert("state".into(), json!(if running { "started" } else { "stopped" }));
    }
    Ok(Reply::data(&types::GetNodesNodeQemuVmidStatusCurrentResponseData {
        vmid: Some(PveInt(i64::from(guest.vmid))),
        name: Some(guest.display_name()),
        status: Some(guest.status().into()),
        qmpstatus: Some(guest.qmp_status().into()),
        cpus: Some(PveNumber(guest.cpus() as f64)),
        maxmem: Some(PveInt(guest.max_memory() as i64)),
        mem: Some(PveInt(if running { (guest.max_memory() / 3) as i64 } else { 0 })),
        maxdisk: Some(PveInt(guest.max_disk() as i64)),
        uptime: Some(PveInt(guest.uptime(now) as i64)),
        pid: running.then(|| PveInt(qemu_pid(guest))),
        agent: guest.agent_enabled().then_some(PveBool(true)),
        lock: guest.lock().map(str::to_string),
        tags: guest.config.get("tags").filter(|t| !t.is_empty()).cloned(),
        template: guest.is_template().then_some(PveBool(true)),
        ha,
        cpu: Some(PveNumber(if running { 0.0125 } else { 0.0 })),
        netin: Some(PveInt(0)),
        netout: Some(PveInt(0)),
        diskread: Some(PveInt(0)),
        diskwrite: Some(PveInt(0)),
        running_machine: running.then(|| "pc-i440fx-9.2+pve1".to_string()),
        running_qemu: running.then(|| "9.2.0".to_string()),
        ..Default::default()
    }))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Start,
    Stop,
    Shutdown,
    Reboot,
    Suspend,
    Resume,
}

impl PowerAction {
    fn task_type(self) -> &'static str {
        match self {
            Self::Start => "qmstart",
            Self::Stop => "qmstop",
            Self::Shutdown => "qmshutdown",
            Self::Reboot => "qmreboot",
            Self::Suspend => "qmsuspend",
            Self::Resume => "qmresume",
        }
    }
}

pub fn power(call: &Call<'_>, action: PowerAction) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let skiplock = check_skiplock(call)?;
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    let guest = cluster.vm_on(&node, vmid)?;
    let force_stop = call.params.flag("forceStop") == Some(true);
    if action == PowerAction::Shutdown && matches!(guest.power, Power::Running { paused: true, .. }) && !force_stop {
        return Err(ApiError::internal("VM is paused - cannot shutdown"));
    }
    let timeout = call.params.int("timeout").map(|t| t as f64);
    let failure = call.task_failure.clone();
    let timings = shared.timings.clone();
    let upid = shared.spawn_task(
        &mut cluster,
        &node,
        action.task_type(),
        &vmid.to_string(),
        caller.id(),
        move |mut task| async move {
            task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            let result = power_body(&mut task, vmid, action, skiplock, force_stop, timeout, &timings, failure).await;
            task.shared.cluster().release_flock(vmid, true);
            result
        },
    );
    Ok(Reply::data(&upid))
}

#[allow(clippy::too_many_arguments)]
async fn power_body(
    task: &mut TaskContext,
    vmid: u32,
    action: PowerAction,
    skiplock: bool,
    force_stop: bool,
    timeout: Option<f64>,
    timings: &crate::sim::config::Timings,
    failure: Option<TaskFailure>,
) -> Result<(), String> {
    let shared = task.shared.clone();
    let current = |shared: &Shared| -> Result<(Power, bool, Option<String>), String> {
        let cluster = shared.cluster();
        let guest = cluster.vms.get(&vmid).ok_or_else(|| format!("VM {vmid} does not exist"))?;
        Ok((guest.power, guest.is_template(), guest.lock().map(str::to_string)))
    };
    let (power, template, lock) = current(&shared)?;
    if let Some(lock) = lock.filter(|_| !skiplock) {
        return Err(locked(&lock));
    }
    let running = matches!(power, Power::Running { .. });
    let duration = match action {
        PowerAction::Start => {
            if template {
                return Err("you can't start a vm if it's a template".into());
            }
            if running {
                return Err(format!("VM {vmid} already running"));
            }
            timings.start
        }
        PowerAction::Stop => timings.stop,
        PowerAction::Shutdown => match timeout {
            Some(limit) if timings.shutdown > limit && running => {
                task.sleep(limit).await?;
                if !force_stop {
                    return Err("VM quit/powerdown failed - got timeout".into());
                }
                task.warn("VM quit/powerdown failed - terminating now with SIGTERM");
                timings.stop
            }
            _ => timings.shutdown,
        },
        PowerAction::Reboot | PowerAction::Suspend if !running => return Err(format!("VM {vmid} not running")),
        PowerAction::Reboot => timings.shutdown + timings.start,
        PowerAction::Suspend => 0.2,
        PowerAction::Resume if !running => return Err(format!("VM {vmid} not running")),
        PowerAction::Resume => 0.2,
    };
    if running || action == PowerAction::Start {
        task.sleep(duration).await?;
    }
    if let Some(failure) = failure {
        let default = match action {
            PowerAction::Start => "start failed: QEMU exited with code 1",
            _ => "VM quit/powerdown failed",
        };
        return Err(failure.message.unwrap_or_else(|| default.into()));
    }
    let now = shared.clock.now();
    let mut cluster = shared.cluster();
    let Some(guest) = cluster.vms.get_mut(&vmid) else { return Err(format!("VM {vmid} does not exist")) };
    match action {
        PowerAction::Start | PowerAction::Reboot => guest.power = Power::Running { since: now, paused: false },
        PowerAction::Stop | PowerAction::Shutdown => guest.power = Power::Stopped,
        PowerAction::Suspend => {
            if let Power::Running { since, .. } = guest.power {
                guest.power = Power::Running { since, paused: true };
            }
        }
        PowerAction::Resume => {
            if let Power::Running { since, .. } = guest.power {
                guest.power = Power::Running { since, paused: false };
            }
        }
    }
    if matches!(action, PowerAction::Start | PowerAction::Reboot) {
        cluster.assign_lease(vmid);
    }
    cluster.touch(vmid, now);
    Ok(())
}

pub fn destroy(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let skiplock = check_skiplock(call)?;
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    let guest = cluster.vm_on(&node, vmid)?;
    let purge = call.params.flag("purge") == Some(true);
    let unreferenced = call.params.flag("destroy-unreferenced-disks") == Some(true);
    if guest.ha_managed && !purge {
        return Err(ApiError::internal(format!(
            "unable to remove VM {vmid} - used in HA resources and purge parameter not set."
        )));
    }
    if guest.config.get("protection").is_some_and(|p| p == "1") {
        return Err(ApiError::internal(format!("can't remove VM {vmid} - protection mode enabled")));
    }
    if guest.is_running() {
        return Err(ApiError::internal(format!("VM {vmid} is running - destroy failed")));
    }
    let failure = call.task_failure.clone();
    let duration = shared.timings.delete;
    let upid = shared.spawn_task(
        &mut cluster,
        &node,
        "qmdestroy",
        &vmid.to_string(),
        caller.id(),
        move |mut task| async move {
            task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            let result = destroy_body(&mut task, vmid, skiplock, purge, unreferenced, duration, failure).await;
            task.shared.cluster().release_flock(vmid, true);
            result
        },
    );
    Ok(Reply::data(&upid))
}

async fn destroy_body(
    task: &mut TaskContext,
    vmid: u32,
    skiplock: bool,
    purge: bool,
    unreferenced: bool,
    duration: f64,
    failure: Option<TaskFailure>,
) -> Result<(), String> {
    let shared = task.shared.clone();
    {
        let mut cluster = shared.cluster();
        let guest = cluster.vms.get_mut(&vmid).ok_or_else(|| format!("VM {vmid} does not exist"))?;
        if guest.is_running() {
            return Err(format!("VM {vmid} is running - destroy failed"));
        }
        if let Some(lock) = guest.lock().filter(|_| !skiplock) {
            return Err(locked(lock));
        }
        guest.config.insert("lock".into(), "destroyed".into());
    }
    let slept = task.sleep(duration).await;
    let mut cluster = shared.cluster();
    let outcome = slept.and_then(|()| match failure {
        Some(failure) => Err(failure.message.unwrap_or_else(|| {
            format!("lvremove 'pve/vm-{vmid}-disk-0' error:   Logical volume pve/vm-{vmid}-disk-0 in use.")
        })),
        None => cluster.destroy(vmid, unreferenced, purge),
    });
    match outcome {
        Ok(lines) => {
            for line in lines {
                cluster.tasks.log(&task.upid, line);
            }
            Ok(())
        }
        Err(message) => {
            // The simulator lifts the `destroyed` lock so a retry can work.
            if let Some(guest) = cluster.vms.get_mut(&vmid) {
                guest.config.remove("lock");
            }
            Err(message)
        }
    }
}

fn with_agent(call: &Call<'_>, answer: impl FnOnce(&Cluster, &Vm) -> Value) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let guest = cluster.vm_on(&call.node(), call.vmid())?;
    agent::check_available(guest, call.shared.clock.now(), &call.shared.timings)?;
    Ok(Reply::data(&answer(&cluster, guest)))
}

pub fn agent_ping(call: &Call<'_>) -> Result<Reply, ApiError> {
    with_agent(call, |_, _| json!({ "result": {} }))
}

pub fn agent_interfaces(call: &Call<'_>) -> Result<Reply, ApiError> {
    with_agent(call, agent::network_interfaces)
}

pub fn agent_os_info(call: &Call<'_>) -> Result<Reply, ApiError> {
    with_agent(call, |_, _| agent::os_info())
}

/// `POST /nodes/{node}/qemu` for a VM without new disks. In the request, as
/// qemu-server does before forking: `VM.Allocate` on the VM or on the pool
/// it joins, the privilege of every key, the pool exists, the VMID is free.
/// The `qmcreate` worker writes the config under the VMID's lock and adds
/// the VM to its pool. Allocating disks (`storage:size`) or restoring
/// (`archive`) is outside what the simulator models: 501.
pub fn create(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    cluster.node(&node)?;
    let pool = call.params.text("pool");
    const NOT_CREATE_KEYS: &[&str] = &["node", "vmid", "pool", "start", "unique", "live-restore", "force"];
    let keys: Vec<(String, String)> = call
        .params
        .iter()
        .filter(|(k, _)| !NOT_CREATE_KEYS.contains(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    if call.params.has("archive") || keys.iter().any(|(k, v)| vm::is_disk_key(k) && !vm::is_cdrom(v)) {
        return Err(ApiError::not_implemented("POST", "/nodes/{node}/qemu with disks or an archive"));
    }
    if !caller.is_root() {
        // check_vm_perm: the VM's path, or the pool it is created in.
        let require = |privileges: &[&str], any: bool| {
            cluster.require(&caller, &format!("/vms/{vmid}"), privileges, any).or_else(|err| match &pool {
                Some(pool) => cluster.require(&caller, &format!("/pool/{pool}"), privileges, any),
                None => Err(err),
            })
        };
        require(&["VM.Allocate"], false)?;
        for (key, value) in &keys {
            match key_privileges(key, Some(value)) {
                Some((privileges, any)) => require(privileges, any)?,
                None => return Err(ApiError::internal(format!("only root can set '{key}' config"))),
            }
        }
    }
    if let Some(pool) = &pool
        && !cluster.pools.contains_key(pool)
    {
        return Err(ApiError::internal(format!("pool '{pool}' does not exist")));
    }
    if let Some(existing) = cluster.vms.get(&vmid) {
        return Err(ApiError::internal(if existing.node == node {
            format!("unable to create VM {vmid}: config file already exists")
        } else {
            format!("VM {vmid} already exists on node '{}'", existing.node)
        }));
    }
    let mut config: BTreeMap<String, String> = keys.into_iter().collect();
    let net_keys: Vec<String> = config.keys().filter(|k| k.starts_with("net")).cloned().collect();
    for key in net_keys {
        let mac = cluster.new_mac();
        if let Some(value) = config.get(&key).cloned() {
            config.insert(key, vm::net_with_mac(&value, &mac));
        }
    }
    if let Some(tags) = config.get("tags").cloned() {
        config.insert("tags".into(), vm::normalize_tags(&tags));
    }
    let duration = shared.timings.config;
    let task_node = node.clone();
    let upid = shared.spawn_task(
        &mut cluster,
        &node,
        "qmcreate",
        &vmid.to_string(),
        caller.id(),
        move |mut task| async move {
            task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            let result = async {
                task.sleep(duration).await?;
                let shared = task.shared.clone();
                let mut cluster = shared.cluster();
                if cluster.vms.contains_key(&vmid) {
                    return Err(format!("unable to create VM {vmid}: config file already exists"));
                }
                let now = shared.clock.now();
                cluster.vms.insert(vmid, Vm::new(vmid, task_node, config, now));
                if let Some(pool) = &pool {
                    cluster.join_pool(vmid, pool).map_err(|err| err.message)?;
                }
                cluster.touch(vmid, now);
                Ok(())
            }
            .await;
            task.shared.cluster().release_flock(vmid, true);
            result
        },
    );
    Ok(Reply::data(&upid))
}

/// `PUT …/resize`: grows a disk (`+10G` by, `32G` to). qemu-server refuses
/// CD-ROMs (the cloud-init drive is one), a bad size, and shrinking; an
/// equal size is a no-op. The storage needs `Datastore.AllocateSpace`.
/// PVE 7.x resizes in the request (null), 8.0+ in a `qmresize` worker.
pub fn resize(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let skiplock = check_skiplock(call)?;
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    let disk = call.params.text("disk").unwrap_or_default();
    let size_text = call.params.text("size").unwrap_or_default();
    let guest = cluster.vm_on(&node, vmid)?;
    if let Some(lock) = guest.lock().filter(|_| !skiplock) {
        return Err(ApiError::internal(locked(lock)));
    }
    if call.params.text("digest").is_some_and(|d| d != digest(&guest.config)) {
        return Err(ApiError::internal("detected modified configuration - file changed by other user? Try again."));
    }
    let value =
        guest.config.get(&disk).cloned().ok_or_else(|| ApiError::internal(format!("disk '{disk}' does not exist")))?;
    if vm::property(&value, "media").is_some_and(|m| m == "cdrom") {
        return Err(ApiError::internal("you can't resize a cdrom"));
    }
    let volid = vm::disk_volume(&value).ok_or_else(|| ApiError::internal(format!("disk '{disk}' has no volume")))?;
    let storage = volid.split(':').next().unwrap_or_default().to_string();
    if !caller.is_root() {
        cluster.require(&caller, &format!("/storage/{storage}"), &["Datastore.AllocateSpace"], false)?;
    }
    let (grow, amount) = match size_text.strip_prefix('+') {
        Some(rest) => (true, rest),
        None => (false, size_text.as_str()),
    };
    let valid = {
        let digits = amount.trim_end_matches(['K', 'M', 'G', 'T']);
        !digits.is_empty() && amount.len() - digits.len() <= 1 && digits.parse::<f64>().is_ok()
    };
    let amount = vm::parse_size(amount).filter(|_| valid).ok_or_else(|| ApiError::internal("invalid size string"))?;
    let current = cluster
        .volume(&volid, &node)
        .map(|v| v.size)
        .or_else(|| vm::property(&value, "size").as_deref().and_then(vm::parse_size))
        .unwrap_or(0);
    let new_size = if grow { current + amount } else { amount };
    if new_size < current {
        return Err(ApiError::internal("shrinking disks is not supported"));
    }
    let volume_node = node.clone();
    let apply = move |cluster: &mut Cluster| {
        if new_size == current {
            return;
        }
        if let Some(volume) = cluster.volume_mut(&volid, &volume_node) {
            volume.size = new_size;
        }
        if let Some(guest) = cluster.vms.get_mut(&vmid)
            && let Some(value) = guest.config.get(&disk).cloned()
        {
            let mut parts: Vec<String> =
                value.split(',').filter(|part| !part.starts_with("size=")).map(str::to_string).collect();
            parts.push(format!("size={}", format_size(new_size)));
            guest.config.insert(disk.clone(), parts.join(","));
        }
    };
    if shared.version.major < 8 {
        apply(&mut cluster);
        cluster.touch(vmid, shared.clock.now());
        return Ok(Reply::null());
    }
    let duration = shared.timings.config;
    let upid = shared.spawn_task(
        &mut cluster,
        &node,
        "qmresize",
        &vmid.to_string(),
        caller.id(),
        move |mut task| async move {
            task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            let result = task.sleep(duration).await;
            {
                let shared = task.shared.clone();
                let mut cluster = shared.cluster();
                if result.is_ok() {
                    apply(&mut cluster);
                    cluster.touch(vmid, shared.clock.now());
                }
                cluster.release_flock(vmid, true);
            }
            result
        },
    );
    Ok(Reply::data(&upid))
}

/// PVE's size notation: the largest unit that divides the size.
fn format_size(bytes: u64) -> String {
    for (unit, factor) in [("T", 1u64 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return format!("{}{unit}", bytes / factor);
        }
    }
    bytes.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keys_need_pve_privileges() {
        assert_eq!(key_privileges("name", None), Some((&["VM.Config.Options"][..], false)));
        assert_eq!(key_privileges("ipconfig0", None), Some((&["VM.Config.Cloudinit", "VM.Config.Network"][..], true)));
        assert_eq!(key_privileges("net3", None), Some((&["VM.Config.Network"][..], false)));
        assert_eq!(
            key_privileges("ide2", Some("local:iso/x.iso,media=cdrom")),
            Some((&["VM.Config.CDROM"][..], false))
        );
        assert_eq!(key_privileges("scsi0", Some("local-lvm:vm-1-disk-0")), Some((&["VM.Config.Disk"][..], false)));
        assert_eq!(key_privileges("lock", None), None);
        assert_eq!(key_privileges("args", None), None);
    }

    #[test]
    fn digests_change_with_the_config() {
        let mut config = BTreeMap::from([("name".to_string(), "a".to_string())]);
        let first = digest(&config);
        assert_eq!(first.len(), 40);
        config.insert("name".into(), "b".into());
        assert_ne!(digest(&config), first);
    }
}
