//! Shared by the engine tests: a simulator with the default cluster plus two
//! VMs in the pool that are not ours (a stranger's VM, and a hand-made copy
//! of one of our instances carrying our tags and a marker for another VMID),
//! a credentials file, and a plugin_config pointing at it all.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, Error as GroupError, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::VmView;
use fleeting_plugin_proxmox::sim::config::{AclSpec, NodeSpec, StorageSpec, VmSpec, defaults};
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, SimHandle, Simulator};

/// A VM in the pool that belongs to someone else.
pub const STRANGER_VMID: u32 = 150;
/// A copy of an instance made by hand: our tags, a marker naming VM 120.
pub const COPY_VMID: u32 = 151;

pub struct Setup {
    pub sim: SimHandle,
    pub dir: tempfile::TempDir,
    pub config: serde_json::Value,
    /// The template and the foreign VMs as they were at the start.
    pub untouchable: Vec<VmView>,
}

impl Setup {
    /// Fails when the template or a foreign VM changed in any way.
    pub fn assert_untouched(&self) {
        let admin = self.sim.admin();
        for before in &self.untouchable {
            let after = admin.vm(before.vmid);
            assert_eq!(after.as_ref(), Some(before), "VM {} must never be modified", before.vmid);
        }
    }

    /// VMs of the pool other than the template and the foreign ones.
    pub fn leftovers(&self) -> Vec<u32> {
        let inventory = self.sim.admin().inventory();
        inventory
            .vms
            .iter()
            .filter(|vm| !vm.template && vm.vmid != STRANGER_VMID && vm.vmid != COPY_VMID)
            .map(|vm| vm.vmid)
            .collect()
    }

    pub fn assert_no_leaks(&self) {
        self.assert_no_leaks_except(&[]);
    }

    /// Only `expected` remain of the group's VMs, and no orphaned disks.
    pub fn assert_no_leaks_except(&self, expected: &[u32]) {
        assert_eq!(self.leftovers(), expected, "leaked VMs");
        let orphans = self.sim.admin().inventory().orphaned_disks;
        assert!(orphans.is_empty(), "orphaned disks: {orphans:?}");
    }

    /// Writes a credentials file and points the config at it.
    pub fn use_credentials(&mut self, credentials: serde_json::Value) {
        let path = self.dir.path().join("credentials.json");
        std::fs::write(&path, credentials.to_string()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        self.config["credentials_file_path"] = path.to_string_lossy().into_owned().into();
    }
}

fn foreign_vm(vmid: u32, extra: &[(&str, &str)]) -> VmSpec {
    let mut config: std::collections::BTreeMap<String, String> =
        [("name", "not-ours"), ("net0", "virtio,bridge=vmbr0"), ("agent", "enabled=1"), ("ostype", "l26")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    config.insert("scsi0".into(), format!("local-lvm:vm-{vmid}-disk-0,size=4G"));
    for (key, value) in extra {
        config.insert(key.to_string(), value.to_string());
    }
    VmSpec { vmid, node: "pve1".into(), pool: Some(defaults::POOL.into()), config, ..VmSpec::default() }
}

/// Adds node `name` (16 CPUs, 128 GiB) to the scenario.
pub fn add_node(scenario: &mut Scenario, name: &str, subnet_octet: u8) {
    scenario.nodes.push(NodeSpec {
        name: name.into(),
        subnet: format!("10.10.{subnet_octet}.0/24"),
        subnet6: format!("fd00:10:10:{subnet_octet}::/64"),
        ..Default::default()
    });
}

/// Moves the template's disks to `ceph`, a shared RBD storage the plugin's
/// token may use, so clones can go to every node.
pub fn share_template_storage(scenario: &mut Scenario) {
    scenario.storages.push(StorageSpec {
        id: "ceph".into(),
        kind: "rbd".into(),
        shared: Some(true),
        ..StorageSpec::default()
    });
    let template = scenario.vms.iter_mut().find(|vm| vm.vmid == defaults::TEMPLATE_VMID).unwrap();
    template.config.insert("scsi0".into(), "ceph:base-9000-disk-0,size=8G".into());
    template.config.insert("ide2".into(), "ceph:vm-9000-cloudinit,media=cdrom".into());
    scenario.acl.push(AclSpec {
        path: "/storage/ceph".into(),
        roles: vec!["PVEDatastoreUser".into()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        ..AclSpec::default()
    });
}

/// The default cluster, fast: 50 simulated seconds per real second.
pub fn fast_scenario() -> Scenario {
    let mut scenario = Scenario { time_scale: 50.0, ..Scenario::default() };
    scenario.timings.resources_staleness = 0.5;
    scenario.timings.unauthorized_delay = 0.0;
    scenario
}

pub async fn setup(mut scenario: Scenario) -> Setup {
    scenario.vms.push(foreign_vm(STRANGER_VMID, &[("description", "build server, hands off")]));
    scenario.vms.push(foreign_vm(
        COPY_VMID,
        &[
            ("description", "fleeting-plugin-proxmox: group=fleeting instance=120-abcdef\nCopied by hand."),
            ("tags", "fleeting;fleeting-fleeting;fi-abcdef"),
        ],
    ));
    let sim = Simulator::start(SimConfig::new(scenario)).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let admin = sim.admin();
    let untouchable =
        [defaults::TEMPLATE_VMID, STRANGER_VMID, COPY_VMID].iter().map(|vmid| admin.vm(*vmid).unwrap()).collect();
    let config = serde_json::json!({
        "url": sim.base_url(),
        "tls_fingerprint": sim.fingerprint(),
        "pool": defaults::POOL,
        "template_id": defaults::TEMPLATE_VMID,
        "max_instances": 10,
        "boot_timeout": "60s",
        "clone_timeout": "60s",
    });
    let mut setup = Setup { sim, dir, config, untouchable };
    setup
        .use_credentials(serde_json::json!({ "token_id": defaults::TOKEN_ID, "token_secret": defaults::TOKEN_SECRET }));
    setup
}

pub async fn states(group: &ProxmoxGroup) -> Vec<(String, InstanceState)> {
    group.update().await.unwrap()
}

pub async fn wait_until(
    group: &ProxmoxGroup,
    what: &str,
    done: impl Fn(&[(String, InstanceState)]) -> bool,
) -> Vec<(String, InstanceState)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let current = states(group).await;
        if done(&current) {
            return current;
        }
        assert!(Instant::now() < deadline, "{what}: not reached; last Update: {current:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Increases to `count` instances and waits until all of them run.
pub async fn scale_to(group: &ProxmoxGroup, count: usize) {
    let mut current = states(group).await.len();
    // A VM found with our tags counts toward max_instances until its check
    // ends (the hand-made copy COPY_VMID turns out an impostor): Runner asks
    // again for what max_instances refused, and so does this, for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count > current {
        let answer = group.increase((count - current) as u32).await.unwrap();
        current += answer.succeeded as usize;
        let only_max_instances = answer.failures.iter().all(|f| matches!(f, GroupError::MaxInstances { .. }));
        assert!(
            current == count || (only_max_instances && Instant::now() < deadline),
            "{current} of {count} accepted: {:?}",
            answer.failures
        );
        if current < count {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    wait_until(group, &format!("{count} running"), all_running(count)).await;
}

/// Removes every instance and waits until none is left.
pub async fn drain(group: &ProxmoxGroup) {
    let ids: Vec<String> = states(group).await.into_iter().map(|(id, _)| id).collect();
    group.decrease(ids).await.unwrap();
    wait_until(group, "drained", |s| s.is_empty()).await;
}

pub fn all_running(count: usize) -> impl Fn(&[(String, InstanceState)]) -> bool {
    move |s| s.len() == count && s.iter().all(|(_, st)| *st == InstanceState::Running)
}

pub fn static_credentials() -> ConnectorSettings {
    ConnectorSettings { username: "runner".into(), use_static_credentials: true, ..ConnectorSettings::default() }
}

pub fn vmid_of(id: &str) -> u32 {
    id.split('-').next().unwrap().parse().unwrap()
}
