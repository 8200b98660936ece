//! Shared pieces of the fault-tolerance suite (tests/chaos_soak.rs,
//! tests/crash_recovery.rs, tests/bad_input.rs, tests/secrets_in_logs.rs):
//! the profile and seed, a simulated cluster with VMs the plugin must never
//! touch, a log capture, and the invariants every run ends with.
//!
//! Each test file includes this with `#[path]`; not every file uses every
//! piece.
#![allow(dead_code)]

pub mod logs;
pub mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use fleeting_plugin_proxmox::group::naming::{InstanceId, Naming};
use fleeting_plugin_proxmox::pve::Vmid;
use fleeting_plugin_proxmox::sim::config::{VmSpec, defaults};
use fleeting_plugin_proxmox::sim::{Admin, Scenario, SimConfig, SimHandle, Simulator, VmView, VolumeView};

use logs::LogLine;

/// `RELIABILITY_PROFILE=long` runs the numbers the suite is specified with
/// (200 chaos cycles, 50 crashes); anything else is the short CI profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Short,
    Long,
}

impl Profile {
    pub fn from_env() -> Self {
        match std::env::var("RELIABILITY_PROFILE").as_deref() {
            Ok("long") => Self::Long,
            _ => Self::Short,
        }
    }

    /// `short` or `long`, and a number overridable by `env` (e.g.
    /// `RELIABILITY_CYCLES=500`).
    pub fn pick(self, short: u32, long: u32, env: &str) -> u32 {
        if let Some(value) = std::env::var(env).ok().and_then(|v| v.parse().ok()) {
            return value;
        }
        match self {
            Self::Short => short,
            Self::Long => long,
        }
    }
}

/// `RELIABILITY_SEED` replays a run; otherwise a fresh seed, printed so a
/// failure can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("RELIABILITY_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("{test}: seed {seed} (replay with RELIABILITY_SEED={seed})");
    seed
}

/// A VM of someone else in the plugin's pool: stopped, untagged.
pub const FOREIGN_VMID: u32 = 500;
/// Another runner's instance in the same pool (group `other`): tagged and
/// described exactly like ours, but for another group. Running.
pub const OTHER_GROUP_VMID: u32 = 501;

/// The VMs the plugin must never modify.
pub fn protected_vmids() -> Vec<u32> {
    vec![defaults::TEMPLATE_VMID, FOREIGN_VMID, OTHER_GROUP_VMID]
}

/// The default cluster plus the two VMs the plugin does not own, in its pool.
pub fn scenario_with_foreign_vms(time_scale: f64) -> Scenario {
    let mut scenario = Scenario { time_scale, ..Scenario::default() };
    scenario.timings.unauthorized_delay = 0.0;
    let config = |pairs: &[(&str, String)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    };
    scenario.vms.push(VmSpec {
        vmid: FOREIGN_VMID,
        node: "pve1".into(),
        pool: Some(defaults::POOL.into()),
        config: config(&[
            ("name", "database".into()),
            // Looks like ours to a careless reader, but carries no marker.
            ("description", "fleeting test box, do not delete".into()),
            ("scsi0", format!("local-lvm:vm-{FOREIGN_VMID}-disk-0,size=4G")),
            ("net0", "virtio,bridge=vmbr0".into()),
            ("agent", "enabled=1".into()),
        ]),
        ..VmSpec::default()
    });
    let other = Naming::new("other");
    let other_id = InstanceId::generate(Vmid(OTHER_GROUP_VMID));
    scenario.vms.push(VmSpec {
        vmid: OTHER_GROUP_VMID,
        node: "pve1".into(),
        running: true,
        pool: Some(defaults::POOL.into()),
        config: config(&[
            ("name", "fleeting-running".into()),
            ("description", other.description(&other_id)),
            ("tags", other.tags(&other_id, &[]).join(";")),
            ("scsi0", format!("local-lvm:vm-{OTHER_GROUP_VMID}-disk-0,size=4G")),
            ("net0", "virtio,bridge=vmbr0".into()),
            ("agent", "enabled=1".into()),
        ]),
        ..VmSpec::default()
    });
    scenario
}

pub async fn start_sim(scenario: Scenario, seed: u64) -> SimHandle {
    Simulator::start(SimConfig::new(scenario).with_seed(seed)).await.expect("could not start the simulator")
}

/// How the plugin logs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    Token,
    /// `tfa@pve` with password and TOTP secret: tickets, CSRF tokens, TOTP codes.
    TicketWithTotp,
}

/// A credentials file (mode 0600) in `dir`.
pub fn write_credentials(dir: &Path, login: Login) -> PathBuf {
    let path = dir.join(match login {
        Login::Token => "pve-token.json",
        Login::TicketWithTotp => "pve-totp.json",
    });
    let body = match login {
        Login::Token => serde_json::json!({ "token_id": defaults::TOKEN_ID, "token_secret": defaults::TOKEN_SECRET }),
        Login::TicketWithTotp => serde_json::json!({
            "username": defaults::TFA_USER,
            "password": defaults::TFA_PASSWORD,
            "totp_secret": defaults::TFA_TOTP_SECRET,
        }),
    };
    std::fs::write(&path, body.to_string()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// A `plugin_config` for the simulator, pinned to its certificate.
pub fn plugin_config(sim: &SimHandle, credentials: &Path, max_instances: u32) -> serde_json::Value {
    serde_json::json!({
        "url": sim.base_url(),
        "tls_fingerprint": sim.fingerprint(),
        "credentials_file_path": credentials,
        "pool": defaults::POOL,
        "template_id": defaults::TEMPLATE_VMID,
        "max_instances": max_instances,
        "request_timeout": "5s",
    })
}

/// The protected VMs as the simulator holds them, to compare after a run.
pub fn snapshot_protected(admin: &Admin) -> BTreeMap<u32, VmView> {
    protected_vmids().into_iter().map(|vmid| (vmid, admin.vm(vmid).expect("protected VM exists"))).collect()
}

/// The end state every run must reach once drained: nothing of ours left,
/// no orphaned disk, the protected VMs exactly as before and never written
/// to (neither by request nor by task).
pub fn assert_clean_end(admin: &Admin, before: &BTreeMap<u32, VmView>, logs: &[LogLine]) -> CleanEnd {
    let inventory = admin.inventory();
    let protected = protected_vmids();
    let leaked: Vec<String> = inventory
        .vms
        .iter()
        .filter(|vm| !protected.contains(&vm.vmid))
        .map(|vm| format!("{} ({:?}, {}, lock {:?}, tags {:?})", vm.vmid, vm.name, vm.status, vm.lock, vm.tags))
        .collect();
    assert!(leaked.is_empty(), "leaked VMs: {leaked:?}");
    let (orphaned, unattributable) = orphaned_disks_split(admin);
    assert!(orphaned.is_empty(), "orphaned disks: {orphaned:?}");
    assert_protected_untouched(admin, before, logs);
    CleanEnd { vms: inventory.vms.len(), unattributable_volumes: unattributable.len() }
}

pub struct CleanEnd {
    pub vms: usize,
    /// Volumes left by a failed clone whose request's answer was lost (see
    /// [`vmids_of_unseen_failed_clones`]); allowed, and reported.
    pub unattributable_volumes: usize,
}

/// The orphaned volumes: first those the plugin must free, then those of
/// [`vmids_of_unseen_failed_clones`], which it must leave alone.
pub fn orphaned_disks_split(admin: &Admin) -> (Vec<VolumeView>, Vec<VolumeView>) {
    let unseen = vmids_of_unseen_failed_clones(admin);
    admin.inventory().orphaned_disks.into_iter().partition(|volume| !unseen.contains(&volume.vmid))
}

/// The VMIDs a failed clone left volumes on while the plugin never learnt
/// that the clone ran: the request's answer was lost after PVE started the
/// task. Volumes of such a VMID look, to the plugin, like volumes some
/// earlier crash left, which it must not free (it quarantines the VMID and
/// tells the admin instead); every other leftover is the plugin's to free.
pub fn vmids_of_unseen_failed_clones(admin: &Admin) -> BTreeSet<u32> {
    admin
        .tasks()
        .into_iter()
        .filter(|task| {
            task.task_type == "qmclone"
                && task.answer_lost
                && !task.running
                && task.exit_status.as_deref() != Some("OK")
        })
        .filter_map(|task| task.creates)
        .collect()
}

/// The protected VMs are as they were, and no write request or task ever
/// named them (the template only as the source of clones).
pub fn assert_protected_untouched(admin: &Admin, before: &BTreeMap<u32, VmView>, logs: &[LogLine]) {
    for (vmid, view) in before {
        let now = admin.vm(*vmid).unwrap_or_else(|| panic!("protected VM {vmid} is gone"));
        // The other group's VM runs; its agent's availability is the simulator's business.
        assert_eq!(&now, view, "protected VM {vmid} changed");
    }
    let writes = logs::writes_to(logs, &protected_vmids());
    assert!(writes.is_empty(), "write requests to protected VMs: {writes:?}");
    let tasks: Vec<String> = admin
        .tasks()
        .into_iter()
        .filter(|task| protected_vmids().iter().any(|vmid| task.id == vmid.to_string()))
        .filter(|task| !(task.task_type == "qmclone" && task.id == defaults::TEMPLATE_VMID.to_string()))
        .map(|task| format!("{} {} {}", task.task_type, task.id, task.upid))
        .collect();
    assert!(tasks.is_empty(), "tasks on protected VMs: {tasks:?}");
}

/// The VMIDs of the instances the simulator holds besides the protected ones.
pub fn instance_vms(admin: &Admin) -> Vec<VmView> {
    let protected = protected_vmids();
    admin.inventory().vms.into_iter().filter(|vm| !protected.contains(&vm.vmid)).collect()
}
