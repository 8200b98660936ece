//! Offline migration (`POST …/migrate`) and conversion to a template
//! (`POST …/template`): what a per-node copy of a template on local storage
//! goes through. Modelled on qemu-server's `migrate_vm` and `template` API
//! handlers, `PVE::QemuMigrate` (prepare, phase 1, phase 3 cleanup) and
//! pve-guest-common's `AbstractMigrate::migrate`, and pve-storage's
//! `storage_migrate` and `create_base`.

use std::collections::BTreeMap;

use super::Call;
use super::qemu::{CONFIG_LOCK_TIMEOUT, locked};
use crate::sim::cluster::{Cluster, owner_of};
use crate::sim::faults::TaskFailure;
use crate::sim::simulator::TaskContext;
use crate::sim::vm;
use crate::sim::wire::{ApiError, Reply};

/// `PVE::JSONSchema::parse_idmap` of a `storage-pair-list`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StorageMap {
    /// `1`: every storage maps to itself.
    pub identity: bool,
    /// A single id: every storage without an entry maps to it.
    pub default: Option<String>,
    /// `source:target` pairs.
    pub entries: BTreeMap<String, String>,
}

impl StorageMap {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut map = Self::default();
        for entry in text.split([',', ';', ' ', '\t', '\n', '\0']).filter(|e| !e.is_empty()) {
            if entry == "1" {
                map.identity = true;
            } else if let Some((source, target)) =
                entry.split_once(':').filter(|(s, t)| !s.is_empty() && !t.is_empty() && !t.contains(':'))
            {
                for id in [source, target] {
                    if !is_storage_id(id) {
                        return Err(format!(
                            "entry '{entry}' contains invalid ID - storage ID '{id}' contains illegal characters"
                        ));
                    }
                }
                if map.entries.contains_key(source) {
                    return Err(format!("duplicate mapping for source '{source}'"));
                }
                map.entries.insert(source.to_string(), target.to_string());
            } else {
                if !is_storage_id(entry) {
                    return Err(format!(
                        "entry '{entry}' contains invalid ID - storage ID '{entry}' contains illegal characters"
                    ));
                }
                if map.default.is_some() {
                    return Err("default target ID can only be provided once".into());
                }
                map.default = Some(entry.to_string());
            }
        }
        if map.identity && (map.default.is_some() || !map.entries.is_empty()) {
            return Err("identity mapping cannot be combined with other mappings".into());
        }
        Ok(map)
    }

    /// `PVE::JSONSchema::map_id`: the entry, else the default, else itself.
    pub fn map<'a>(&'a self, source: &'a str) -> &'a str {
        self.entries.get(source).or(self.default.as_ref()).map_or(source, String::as_str)
    }
}

/// pve-common's `pve-storage-id` format.
fn is_storage_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// `storage_check_enabled($storage, $node)`.
fn check_storage_on(cluster: &Cluster, storage: &str, node: &str) -> Result<(), String> {
    let store = cluster.storages.get(storage).ok_or_else(|| format!("storage '{storage}' does not exist"))?;
    if !store.available_on(node) {
        return Err(format!("storage '{storage}' is not available on node '{node}'"));
    }
    Ok(())
}

fn has_images(cluster: &Cluster, storage: &str) -> bool {
    cluster.storages.get(storage).is_some_and(|s| s.content.split(',').any(|c| c == "images"))
}

/// The content type pve-storage's `parse_volname` gives a volume.
fn content_type(volid: &str) -> &'static str {
    if volid.contains(":iso/") { "iso" } else { "images" }
}

/// The volumes of every drive (`foreach_volume`: no `unusedN`), ISO images
/// and the cloud-init drive included.
fn drive_volumes(config: &BTreeMap<String, String>) -> Vec<(String, String)> {
    config
        .iter()
        .filter(|(k, _)| vm::is_disk_key(k) && !k.starts_with("unused"))
        .filter_map(|(k, v)| vm::disk_volume(v).map(|volid| (k.clone(), volid)))
        .collect()
}

/// `PVE::QemuServer::check_storage_availability`: every drive's storage on
/// the target node, with the drive's content type.
fn check_storage_availability(
    cluster: &Cluster,
    config: &BTreeMap<String, String>,
    target: &str,
) -> Result<(), String> {
    for (_, volid) in drive_volumes(config) {
        let storage = volid.split(':').next().unwrap_or_default();
        check_storage_on(cluster, storage, target)?;
        let kind = content_type(&volid);
        if !cluster.storages.get(storage).is_some_and(|s| s.content.split(',').any(|c| c == kind)) {
            return Err(format!("{volid}: content type '{kind}' is not available on storage '{storage}'"));
        }
    }
    Ok(())
}

/// `POST /nodes/{node}/qemu/{vmid}/migrate`, offline only. The checks of
/// qemu-server's `migrate_vm` before it forks (their order and words), then
/// a `qmigrate` worker on the source node (`hamigrate` for an HA-managed VM,
/// which asks the HA stack; it then runs `qmigrate` as root@pam).
pub fn migrate(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    let target = call.params.text("target").unwrap_or_default();
    let release = (shared.version.major, shared.version.minor);
    if target == node {
        return Err(ApiError::parameter("target", "target is local node."));
    }
    if !cluster.nodes.contains_key(&target) {
        return Err(ApiError::internal(format!("no such cluster node '{target}'")));
    }
    for root_only in ["force", "migration_type", "migration_network"] {
        if call.params.has(root_only) && call.params.flag(root_only) != Some(false) && !caller.is_root() {
            return Err(ApiError::parameter(root_only, "Only root may use this option."));
        }
    }
    let guest = cluster.vm_on(&node, vmid)?;
    let ha_managed = guest.ha_managed;
    if let Some(lock) = guest.lock() {
        return Err(ApiError::internal(locked(lock)));
    }
    if guest.is_running() {
        if call.params.flag("online") != Some(true) {
            return Err(ApiError::internal("can't migrate running VM without --online"));
        }
        return Err(ApiError::not_implemented(
            "POST",
            "/nodes/{node}/qemu/{vmid}/migrate with online (live migration)",
        ));
    }
    let storage_map = match call.params.text("targetstorage") {
        Some(text) => {
            let map = StorageMap::parse(&text)
                .map_err(|err| ApiError::parameter("targetstorage", format!("failed to parse storage map: {err}\n")))?;
            if !map.identity && !caller.is_root() {
                cluster.require(&caller, &format!("/vms/{vmid}"), &["VM.Config.Disk"], false)?;
            }
            // `check_storage_access_migrate` for every target storage.
            let targets: Vec<String> = map.entries.values().chain(map.default.iter()).cloned().collect();
            for storage in targets {
                check_storage_on(&cluster, &storage, &target).map_err(ApiError::internal)?;
                if !caller.is_root() {
                    cluster.require(&caller, &format!("/storage/{storage}"), &["Datastore.AllocateSpace"], false)?;
                }
                if !has_images(&cluster, &storage) {
                    let message = format!("storage '{storage}' does not support vm images");
                    // qemu-server 7.1 (`migrate: factor out storage checks`) made it a plain error.
                    return Err(if release < (7, 1) {
                        ApiError::parameter("targetstorage", message)
                    } else {
                        ApiError::internal(message)
                    });
                }
            }
            if map.identity {
                check_storage_availability(&cluster, &guest.config, &target).map_err(ApiError::internal)?;
            }
            map
        }
        None => {
            check_storage_availability(&cluster, &guest.config, &target).map_err(ApiError::internal)?;
            StorageMap::default()
        }
    };
    let plan = MigratePlan {
        vmid,
        source: node.clone(),
        target: target.clone(),
        storage_map,
        duration: shared.timings.migrate,
        failure: call.task_failure.clone(),
        base_import_works: release >= (8, 2),
    };
    let upid = if ha_managed {
        shared.spawn_task(
            &mut cluster,
            &node,
            "hamigrate",
            &vmid.to_string(),
            caller.id(),
            move |mut task| async move {
                task.log(format!("Requesting HA migration for VM {vmid} to node {target}"));
                task.sleep(0.5).await?;
                let shared = task.shared.clone();
                let mut cluster = shared.cluster();
                let source = plan.source.clone();
                shared.spawn_task(&mut cluster, &source, "qmigrate", &vmid.to_string(), "root@pam", move |task| {
                    run_migration(task, plan)
                });
                Ok(())
            },
        )
    } else {
        shared.spawn_task(&mut cluster, &node, "qmigrate", &vmid.to_string(), caller.id(), move |task| {
            run_migration(task, plan)
        })
    };
    Ok(Reply::data(&upid))
}

struct MigratePlan {
    vmid: u32,
    source: String,
    target: String,
    storage_map: StorageMap,
    duration: f64,
    failure: Option<TaskFailure>,
    /// pve-storage 8.2.0 (`fix #1611`) imports `base-` volumes into LVM-thin.
    base_import_works: bool,
}

/// One local volume to copy: its drive, where it goes, and under which name.
struct LocalVolume {
    volid: String,
    target_storage: String,
    cloudinit: bool,
    size: u64,
}

fn duration_text(seconds: f64) -> String {
    let seconds = seconds.max(0.0) as u64;
    format!("{:02}:{:02}:{:02}", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

/// `AbstractMigrate::migrate` under the config flock: prepare, phase 1
/// (lock `migrate`, scan and copy local volumes), phase 3 cleanup (new
/// volume ids, config moved, source copies freed, lock cleared). Any error
/// before the config moved: `migration aborted`, the VM stays where it was.
async fn run_migration(mut task: TaskContext, plan: MigratePlan) -> Result<(), String> {
    // `guest_migration_lock`, then `lock_config` for the whole migration.
    task.flock(plan.vmid, true, CONFIG_LOCK_TIMEOUT).await?;
    let started = task.shared.clock.now();
    let result = migration_body(&mut task, &plan).await;
    let shared = task.shared.clone();
    let elapsed = duration_text(shared.clock.now() - started);
    {
        let mut cluster = shared.cluster();
        cluster.release_flock(plan.vmid, true);
        match result {
            Ok(()) => {
                cluster.tasks.log(&task.upid, format!("migration finished successfully (duration {elapsed})"));
                Ok(())
            }
            Err(err) => {
                cluster.tasks.log(&task.upid, format!("ERROR: migration aborted (duration {elapsed}): {err}"));
                Err("migration aborted".to_string())
            }
        }
    }
}

async fn migration_body(task: &mut TaskContext, plan: &MigratePlan) -> Result<(), String> {
    let shared = task.shared.clone();
    let vmid = plan.vmid;
    // prepare
    let locals = {
        let cluster = shared.cluster();
        let guest = cluster.vms.get(&vmid).filter(|g| g.node == plan.source).ok_or_else(|| {
            format!("Configuration file 'nodes/{}/qemu-server/{vmid}.conf' does not exist", plan.source)
        })?;
        if let Some(lock) = guest.lock() {
            return Err(locked(lock));
        }
        if guest.is_running() {
            return Err("can't migrate running VM without --online".into());
        }
        for (_, volid) in drive_volumes(&guest.config) {
            let storage = volid.split(':').next().unwrap_or_default();
            let shared_storage = cluster.storages.get(storage).is_some_and(|s| s.shared);
            let target_storage = if shared_storage { storage } else { plan.storage_map.map(storage) };
            // `target_storage_check_available`
            check_storage_on(&cluster, target_storage, &plan.target)?;
            let kind = content_type(&volid);
            if !cluster.storages.get(target_storage).is_some_and(|s| s.content.split(',').any(|c| c == kind)) {
                return Err(format!("{volid}: content type '{kind}' is not available on storage '{target_storage}'"));
            }
        }
        // The ssh connection test (`/bin/true` on the target).
        if !cluster.nodes.get(&plan.target).is_some_and(|n| n.online) {
            return Err("Can't connect to destination address using public key".into());
        }
        drop(cluster);
        // phase 1
        let mut cluster = shared.cluster();
        let ip = cluster.nodes.get(&plan.target).map(|n| n.ip.to_string()).unwrap_or_default();
        cluster.tasks.log(&task.upid, format!("starting migration of VM {vmid} to node '{}' ({ip})", plan.target));
        let Some(guest) = cluster.vms.get_mut(&vmid) else { return Err(format!("VM {vmid} does not exist")) };
        guest.config.insert("lock".into(), "migrate".into());
        let now = shared.clock.now();
        cluster.touch(vmid, now);
        scan_local_volumes(&mut cluster, &task.upid, plan)
    };
    let locals = match locals {
        Ok(locals) => locals,
        Err(err) => {
            phase1_cleanup(task, plan, &[]);
            return Err(err);
        }
    };
    // Copying takes the migration's time; the config stays on the source.
    let mut copied: Vec<String> = Vec::new();
    let copy = async {
        if !locals.is_empty() {
            task.log("copying local disk images");
        }
        task.sleep(plan.duration).await?;
        let mut cluster = shared.cluster();
        if let Some(failure) = &plan.failure {
            let message = failure.message.clone().unwrap_or_else(|| match locals.first() {
                Some(volume) => format!(
                    "storage migration for '{}' to storage '{}' failed - command 'pvesm import' failed: exit code 255",
                    volume.volid, volume.target_storage,
                ),
                None => "Can't connect to destination address using public key".into(),
            });
            return Err(message);
        }
        let mut volume_map = BTreeMap::new();
        for volume in &locals {
            let new_volid = storage_migrate(&mut cluster, plan, volume).map_err(|err| {
                format!(
                    "storage migration for '{}' to storage '{}' failed - {err}",
                    volume.volid, volume.target_storage
                )
            })?;
            copied.push(new_volid.clone());
            cluster.tasks.log(&task.upid, format!("volume '{}' is '{new_volid}' on the target", volume.volid));
            volume_map.insert(volume.volid.clone(), new_volid);
        }
        Ok::<_, String>(volume_map)
    }
    .await;
    let volume_map = match copy {
        Ok(map) => map,
        Err(err) => {
            phase1_cleanup(task, plan, &copied);
            return Err(err);
        }
    };
    // phase 3 cleanup: new volume ids, the config moves, local copies freed, unlock.
    let mut cluster = shared.cluster();
    let now = shared.clock.now();
    if let Some(guest) = cluster.vms.get_mut(&vmid) {
        for value in guest.config.values_mut() {
            let Some(volid) = vm::disk_volume(value) else { continue };
            if let Some(new_volid) = volume_map.get(&volid) {
                *value = value.replacen(&volid, new_volid, 1);
            }
        }
        guest.node = plan.target.clone();
    }
    for volume in &locals {
        cluster.remove_volume(&volume.volid, &plan.source);
    }
    if let Some(guest) = cluster.vms.get_mut(&vmid) {
        guest.config.remove("lock");
    }
    cluster.touch(vmid, now);
    Ok(())
}

/// `phase1_cleanup`: the `migrate` lock goes, volumes already copied to
/// the target are freed.
fn phase1_cleanup(task: &TaskContext, plan: &MigratePlan, copied: &[String]) {
    let shared = task.shared.clone();
    let mut cluster = shared.cluster();
    cluster.tasks.log(&task.upid, "aborting phase 1 - cleanup resources");
    for volid in copied {
        cluster.remove_volume(volid, &plan.target);
    }
    if let Some(guest) = cluster.vms.get_mut(&plan.vmid)
        && guest.lock() == Some("migrate")
    {
        guest.config.remove("lock");
    }
    cluster.touch(plan.vmid, shared.clock.now());
}

/// `scan_local_volumes`: every volume of the config (drives, `unusedN`) on a
/// local storage is copied; what cannot be copied is logged as a warning
/// and aborts with `can't migrate VM - check log`.
fn scan_local_volumes(cluster: &mut Cluster, upid: &str, plan: &MigratePlan) -> Result<Vec<LocalVolume>, String> {
    let guest = cluster.vms.get(&plan.vmid).ok_or_else(|| format!("VM {} does not exist", plan.vmid))?;
    let mut locals = Vec::new();
    let mut errors: Vec<(String, String)> = Vec::new();
    for (key, value) in guest.config.iter().filter(|(k, _)| vm::is_disk_key(k)) {
        let Some(volid) = vm::disk_volume(value) else { continue };
        let storage = volid.split(':').next().unwrap_or_default();
        let Some(store) = cluster.storages.get(storage) else { continue };
        if store.shared {
            continue;
        }
        let cloudinit = value.contains("cloudinit");
        if vm::is_cdrom(value) {
            errors.push((volid, "local cdrom image".into()));
            continue;
        }
        let volname = volid.split_once(':').map_or("", |(_, name)| name);
        if !cloudinit && owner_of(volname) != Some(plan.vmid) {
            let owner = owner_of(volname).unwrap_or(0);
            errors.push((volid, format!("owned by other VM (owner = VM {owner})")));
            continue;
        }
        if cluster.base_user(&volid, &plan.source).is_some() {
            errors.push((volid, "referenced by linked clone(s)".into()));
            continue;
        }
        let size = cluster.volume(&volid, &plan.source).map_or(0, |v| v.size);
        let target_storage = plan.storage_map.map(storage).to_string();
        let what = if key.starts_with("unused") { " (unused)" } else { "" };
        if cloudinit {
            cluster.tasks.log(upid, format!("found generated disk '{volid}' (in current VM config)"));
        } else {
            cluster.tasks.log(upid, format!("found local disk '{volid}'{what}"));
        }
        locals.push(LocalVolume { volid, target_storage, cloudinit, size });
    }
    for (volid, problem) in &errors {
        cluster.tasks.warn(upid, format!("can't migrate local disk '{volid}': {problem}"));
    }
    if !errors.is_empty() {
        return Err("Problem found while scanning volumes - can't migrate VM - check log".into());
    }
    for volume in &locals {
        let storage = volume.volid.split(':').next().unwrap_or_default();
        let kind = cluster.storages.get(storage).map(|s| s.kind.clone()).unwrap_or_default();
        if !matches!(kind.as_str(), "dir" | "btrfs" | "zfspool" | "lvmthin" | "lvm") {
            return Err(format!(
                "Problem found while scanning volumes - can't migrate '{}' - storage type '{kind}' not supported",
                volume.volid
            ));
        }
        let volname = volume.volid.split_once(':').map_or("", |(_, name)| name);
        let leaf = volname.rsplit('/').next().unwrap_or(volname);
        let parent = volname.strip_suffix(leaf).unwrap_or_default().trim_end_matches('/');
        if let Some(base) = parent.rsplit_once('/').map(|(base, _)| base).filter(|b| b.contains("base-")) {
            return Err(format!(
                "Problem found while scanning volumes - can't migrate '{}' as it's a clone of '{}'",
                volume.volid,
                base.rsplit('/').next().unwrap_or(base)
            ));
        }
    }
    Ok(locals)
}

/// pve-storage's `storage_migrate` of one volume onto the target node: the
/// same name on a storage of the same type (the storage's path form for a
/// directory), renamed to the next free disk name if taken there (never for
/// the cloud-init drive, which keeps its name).
fn storage_migrate(cluster: &mut Cluster, plan: &MigratePlan, volume: &LocalVolume) -> Result<String, String> {
    let (source_storage, volname) = volume.volid.split_once(':').unwrap_or_default();
    let source_kind = cluster.storages.get(source_storage).map(|s| s.kind.clone()).unwrap_or_default();
    let target = cluster
        .storages
        .get(&volume.target_storage)
        .cloned()
        .ok_or_else(|| format!("storage '{}' does not exist", volume.target_storage))?;
    let leaf = volname.rsplit('/').next().unwrap_or(volname);
    let is_base = leaf.starts_with("base-");
    let file_target = matches!(target.kind.as_str(), "dir" | "nfs" | "cifs" | "btrfs" | "cephfs");
    let mut target_name = if source_kind == target.kind {
        volname.to_string()
    } else {
        // `volname_for_storage`: raw images keep their name, a directory adds `<vmid>/` and the format.
        let stem = leaf.trim_end_matches(".qcow2").trim_end_matches(".raw");
        let format = if leaf.ends_with(".qcow2") { "qcow2" } else { "raw" };
        if file_target { format!("{}/{stem}.{format}", plan.vmid) } else { stem.to_string() }
    };
    if is_base && target.kind == "lvmthin" && !plan.base_import_works {
        let wanted = target_name.rsplit('/').next().unwrap_or(&target_name).to_string();
        return Err(format!(
            "command 'pvesm import {}:{target_name} raw+size - -with-snapshots 0 -allow-rename 1' failed: illegal name '{wanted}' - should be 'vm-{}-*'",
            volume.target_storage, plan.vmid
        ));
    }
    let taken = cluster.volume(&format!("{}:{target_name}", volume.target_storage), &plan.target).is_some();
    if taken {
        if volume.cloudinit {
            let leaf = target_name.rsplit('/').next().unwrap_or(&target_name).to_string();
            return Err(format!("volume '{}:{leaf}' already exists", volume.target_storage));
        }
        let free = cluster
            .free_disk_name(&volume.target_storage, plan.vmid, None, &plan.target)
            .ok_or_else(|| format!("storage '{}' does not exist", volume.target_storage))?;
        // A base volume is imported under a free `vm-` name, then made a base again.
        target_name = if is_base { to_base_name(&free) } else { free };
    }
    // A copy (`pvesm export | import`) depends on no base: an LVM-thin linked
    // clone (whose name does not tell its base) arrives as a full volume.
    cluster.create_volume(&volume.target_storage, target_name, plan.vmid, volume.size, None, &plan.target)
}

/// pve-storage's `create_base` name: the leaf's `vm-` becomes `base-`.
fn to_base_name(volname: &str) -> String {
    let leaf = volname.rsplit('/').next().unwrap_or(volname);
    let prefix = &volname[..volname.len() - leaf.len()];
    match leaf.strip_prefix("vm-") {
        Some(rest) => format!("{prefix}base-{rest}"),
        None => volname.to_string(),
    }
}

/// `POST /nodes/{node}/qemu/{vmid}/template`: qemu-server's checks
/// (`VM.Allocate` on the VM is the schema's), then `template: 1` and each
/// disk made a base volume (`template_create`, pve-storage `create_base`:
/// `vm-N-disk-M` → `base-N-disk-M`; CD-ROMs and the cloud-init drive stay,
/// storages without the `template` feature keep the name). PVE 7.0 did it
/// under the lock in the request, wrote `template: 1` there, started the
/// worker and answered `null`; since qemu-server 7.0-15 (PVE 7.1) the
/// worker does everything and its UPID is the answer.
pub fn template(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?.clone();
    let shared = call.shared;
    let mut cluster = shared.cluster();
    let node = call.node();
    let vmid = call.vmid();
    let disk = call.params.text("disk");
    cluster.vm_on(&node, vmid)?;
    check_template(&cluster, vmid, disk.as_deref()).map_err(ApiError::internal)?;
    let duration = shared.timings.template;
    let failure = call.task_failure.clone();
    let in_request = (shared.version.major, shared.version.minor) < (7, 1);
    if in_request {
        if !cluster.try_flock(vmid, true) {
            return Err(ApiError::internal(format!(
                "can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout"
            )));
        }
        if let Some(guest) = cluster.vms.get_mut(&vmid) {
            guest.config.insert("template".into(), "1".into());
        }
        cluster.touch(vmid, shared.clock.now());
        cluster.release_flock(vmid, true);
    }
    let upid = shared.spawn_task(
        &mut cluster,
        &node,
        "qmtemplate",
        &vmid.to_string(),
        caller.id(),
        move |mut task| async move {
            if !in_request {
                task.flock(vmid, true, CONFIG_LOCK_TIMEOUT).await?;
            }
            let result = template_body(&mut task, vmid, disk, duration, failure, in_request).await;
            if !in_request {
                task.shared.cluster().release_flock(vmid, true);
            }
            result
        },
    );
    if in_request { Ok(Reply::null()) } else { Ok(Reply::data(&upid)) }
}

/// The template call's `load_and_check`.
fn check_template(cluster: &Cluster, vmid: u32, disk: Option<&str>) -> Result<(), String> {
    let guest = cluster.vms.get(&vmid).ok_or_else(|| format!("VM {vmid} does not exist"))?;
    if let Some(lock) = guest.lock() {
        return Err(locked(lock));
    }
    if !guest.snapshots.is_empty() {
        return Err("unable to create template, because VM contains snapshots".into());
    }
    if guest.is_template() && disk.is_none() {
        return Err("you can't convert a template to a template".into());
    }
    if guest.is_running() {
        return Err("you can't convert a VM to template if VM is running".into());
    }
    Ok(())
}

async fn template_body(
    task: &mut TaskContext,
    vmid: u32,
    disk: Option<String>,
    duration: f64,
    failure: Option<TaskFailure>,
    checked: bool,
) -> Result<(), String> {
    let shared = task.shared.clone();
    if !checked {
        let mut cluster = shared.cluster();
        check_template(&cluster, vmid, disk.as_deref())?;
        if let Some(guest) = cluster.vms.get_mut(&vmid) {
            guest.config.insert("template".into(), "1".into());
        }
        cluster.touch(vmid, shared.clock.now());
    }
    task.sleep(duration).await?;
    let mut cluster = shared.cluster();
    let guest = cluster.vms.get(&vmid).ok_or_else(|| format!("VM {vmid} does not exist"))?;
    let node = guest.node.clone();
    let disks: Vec<(String, String, String)> = guest
        .config
        .iter()
        .filter(|(k, v)| vm::is_disk_key(k) && !k.starts_with("unused") && !vm::is_cdrom(v) && !v.contains("cloudinit"))
        .filter(|(k, _)| disk.as_ref().is_none_or(|d| d == *k))
        .filter_map(|(k, v)| vm::disk_volume(v).map(|volid| (k.clone(), v.clone(), volid)))
        .collect();
    for (key, value, volid) in disks {
        let (storage, volname) = volid.split_once(':').unwrap_or_default();
        let Some(store) = cluster.storages.get(storage).cloned() else { continue };
        // `volume_has_feature('template')`: the storages that hold base volumes.
        if !store.supports_linked_clone() {
            continue;
        }
        let leaf = volname.rsplit('/').next().unwrap_or(volname);
        if leaf.starts_with("base-") {
            return Err("create_base not possible with base image".into());
        }
        if let Some(failure) = &failure {
            return Err(failure.message.clone().unwrap_or_else(|| {
                format!(
                    "lvrename 'pve/{leaf}' => 'pve/{}' error:   Logical volume pve/{leaf} in use.",
                    to_base_name(leaf)
                )
            }));
        }
        let new_name = to_base_name(volname);
        let Some(mut volume) = cluster.remove_volume(&volid, &node) else { continue };
        let new_volid = format!("{storage}:{new_name}");
        volume.volid = new_volid.clone();
        cluster.volumes.insert((volume.node.clone(), new_volid.clone()), volume);
        if store.kind == "lvmthin" {
            let new_leaf = new_name.rsplit('/').next().unwrap_or(&new_name).to_string();
            cluster.tasks.log(&task.upid, format!("  Renamed \"{leaf}\" to \"{new_leaf}\" in volume group \"pve\""));
            cluster.tasks.log(&task.upid, format!("  Logical volume pve/{new_leaf} changed."));
        }
        if let Some(guest) = cluster.vms.get_mut(&vmid) {
            guest.config.insert(key, value.replacen(&volid, &new_volid, 1));
        }
    }
    cluster.touch(vmid, shared.clock.now());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_maps_parse_like_parse_idmap() {
        let map = StorageMap::parse("local-lvm").unwrap();
        assert_eq!(map.map("local-lvm"), "local-lvm");
        assert_eq!(map.map("other"), "local-lvm");
        let map = StorageMap::parse("1").unwrap();
        assert!(map.identity);
        assert_eq!(map.map("x"), "x");
        let map = StorageMap::parse("a:b,c:d,e").unwrap();
        assert_eq!((map.map("a"), map.map("c"), map.map("z")), ("b", "d", "e"));
        assert!(StorageMap::parse("1,a").unwrap_err().contains("identity mapping cannot be combined"));
        assert!(StorageMap::parse("a,b").unwrap_err().contains("default target ID can only be provided once"));
        assert!(StorageMap::parse("a:b,a:c").unwrap_err().contains("duplicate mapping for source 'a'"));
    }

    #[test]
    fn base_names_follow_create_base() {
        assert_eq!(to_base_name("vm-105-disk-0"), "base-105-disk-0");
        assert_eq!(to_base_name("105/vm-105-disk-1.qcow2"), "105/base-105-disk-1.qcow2");
        assert_eq!(duration_text(3725.0), "01:02:05");
    }
}
