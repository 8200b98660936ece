//! Switching from the seed plugin (LukasK32 / Phenix66) leaves nothing
//! behind: the VMs it left in the pool under this config's instance names
//! are deleted (creating, removing) or adopted (running, when Runner brings
//! the credentials the seed handed out), and nothing else is touched: not
//! the template, not a VM with those names in another pool, not a foreign VM
//! in the pool, not another group's instance.

#[path = "sim/common.rs"]
mod sim_common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::{PoolSpec, VmSpec, defaults};
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, SimHandle, Simulator, VmView};

const SEED_CREATING: u32 = 200;
const SEED_RUNNING: u32 = 201;
const SEED_REMOVING: u32 = 202;
const OTHER_POOL: u32 = 210;
const FOREIGN: u32 = 211;
const OTHER_GROUP: u32 = 212;

fn vm(vmid: u32, name: &str, pool: &str, running: bool, extra: &[(&str, &str)]) -> VmSpec {
    let mut config: BTreeMap<String, String> = [
        ("name", name.to_string()),
        ("net0", "virtio,bridge=vmbr0".to_string()),
        ("agent", "enabled=1".to_string()),
        ("ostype", "l26".to_string()),
        ("scsi0", format!("local-lvm:vm-{vmid}-disk-0,size=8G")),
        ("ide2", format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in extra {
        config.insert(key.to_string(), value.to_string());
    }
    VmSpec { vmid, node: "pve1".into(), pool: Some(pool.into()), running, config, ..VmSpec::default() }
}

/// What the seed leaves (creating after a crash, running, removing before its
/// collector ran) and the decoys that must survive.
async fn cluster() -> SimHandle {
    let mut scenario = Scenario { time_scale: 50.0, ..Scenario::default() };
    scenario.timings.resources_staleness = 0.5;
    scenario.pools.push(PoolSpec { id: "other".into(), ..PoolSpec::default() });
    scenario.vms.extend([
        vm(SEED_CREATING, "fleeting-creating", defaults::POOL, false, &[]),
        vm(SEED_RUNNING, "fleeting-running", defaults::POOL, true, &[]),
        vm(SEED_REMOVING, "fleeting-removing", defaults::POOL, true, &[("tags", "ci-old")]),
        vm(OTHER_POOL, "fleeting-running", "other", true, &[]),
        vm(FOREIGN, "build-server", defaults::POOL, true, &[]),
        vm(
            OTHER_GROUP,
            "fleeting-running",
            defaults::POOL,
            true,
            &[
                ("tags", "fleeting;fleeting-runner-b;fi-abcdef"),
                ("description", "fleeting-plugin-proxmox: group=runner-b instance=212-abcdef"),
            ],
        ),
    ]);
    Simulator::start(SimConfig::new(scenario)).await.unwrap()
}

/// The seed's documented settings, with a password credentials file.
fn seed_config(sim: &SimHandle, dir: &std::path::Path) -> serde_json::Value {
    let credentials = dir.join("credentials.json");
    std::fs::write(
        &credentials,
        serde_json::json!({"realm": "pve", "username": "fleeting", "password": defaults::USER_PASSWORD}).to_string(),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    serde_json::json!({
        "url": sim.base_url(),
        "insecure_skip_tls_verify": true,
        "credentials_file_path": credentials.to_string_lossy(),
        "pool": defaults::POOL,
        "storage": "",
        "template_id": defaults::TEMPLATE_VMID,
        "max_instances": 5,
        "instance_network_interface": "",
    })
}

/// Runner's own username and key, as the seed's users have them.
fn runner_credentials() -> ConnectorSettings {
    ConnectorSettings {
        username: "ubuntu".into(),
        key: b"-----BEGIN OPENSSH PRIVATE KEY-----\nrunner's own\n-----END OPENSSH PRIVATE KEY-----\n".to_vec(),
        ..ConnectorSettings::default()
    }
}

fn snapshot(sim: &SimHandle, vmids: &[u32]) -> Vec<VmView> {
    vmids.iter().map(|vmid| sim.admin().vm(*vmid).unwrap()).collect()
}

async fn wait_for(
    group: &ProxmoxGroup,
    sim: &SimHandle,
    what: &str,
    done: impl Fn(&[(String, InstanceState)], &SimHandle) -> bool,
) -> Vec<(String, InstanceState)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = group.update().await.unwrap();
        if done(&states, sim) {
            return states;
        }
        assert!(Instant::now() < deadline, "{what}: not reached; Update: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_leftovers_are_finished_and_nothing_else_is_touched() {
    let sim = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let decoys = [defaults::TEMPLATE_VMID, OTHER_POOL, FOREIGN, OTHER_GROUP];
    let before = snapshot(&sim, &decoys);
    let config = seed_config(&sim, dir.path());
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), runner_credentials()).await.unwrap();

    // A few Updates later: the half-created and half-removed VMs are gone,
    // the running one serves as an instance.
    let states = wait_for(&group, &sim, "the seed's leftovers finished", |states, sim| {
        let admin = sim.admin();
        admin.vm(SEED_CREATING).is_none()
            && admin.vm(SEED_REMOVING).is_none()
            && states.len() == 1
            && states[0].1 == InstanceState::Running
    })
    .await;
    let (adopted, _) = &states[0];
    assert!(adopted.starts_with(&format!("{SEED_RUNNING}-")), "{adopted}");
    let connect = group.connect_info(adopted).await.unwrap();
    assert_eq!(connect.connector.username, "ubuntu", "Runner's username, unchanged");
    assert_eq!(connect.connector.key, runner_credentials().key, "Runner's key, byte for byte");
    assert!(!connect.internal_addr.is_empty());
    let running = sim.admin().vm(SEED_RUNNING).unwrap();
    assert!(running.tags.iter().any(|t| t == "fleeting-fleeting"), "{:?}", running.tags);
    assert_eq!(snapshot(&sim, &decoys), before, "the decoys are unchanged");
    assert!(sim.admin().inventory().orphaned_disks.is_empty(), "the seed's disks went with its VMs");

    // Runner removes the adopted one like any other instance.
    group.decrease(vec![adopted.clone()]).await.unwrap();
    wait_for(&group, &sim, "the adopted VM removed", |states, sim| {
        states.is_empty() && sim.admin().vm(SEED_RUNNING).is_none()
    })
    .await;
    assert_eq!(snapshot(&sim, &decoys), before, "the decoys are unchanged");
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_takeover_can_be_switched_off() {
    let sim = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let everything = [SEED_CREATING, SEED_RUNNING, SEED_REMOVING, OTHER_POOL, FOREIGN, OTHER_GROUP];
    let before = snapshot(&sim, &everything);
    let mut config = seed_config(&sim, dir.path());
    config["take_over_seed_instances"] = false.into();
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), runner_credentials()).await.unwrap();
    for _ in 0..10 {
        assert!(group.update().await.unwrap().is_empty());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(snapshot(&sim, &everything), before, "nothing is touched");
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_runners_credentials_the_seeds_running_vms_are_replaced() {
    // The seed handed out Runner's credentials; a plugin that generates its
    // own key cannot use the seed's VMs, so they are deleted, not adopted.
    let sim = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let config = seed_config(&sim, dir.path());
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    wait_for(&group, &sim, "every seed VM deleted", |states, sim| {
        let admin = sim.admin();
        states.is_empty() && [SEED_CREATING, SEED_RUNNING, SEED_REMOVING].iter().all(|vmid| admin.vm(*vmid).is_none())
    })
    .await;
    assert!(
        sim.admin().vm(OTHER_POOL).is_some()
            && sim.admin().vm(FOREIGN).is_some()
            && sim.admin().vm(OTHER_GROUP).is_some()
    );
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_the_seed_left_running_is_taken_over_once_it_ends() {
    use fleeting_plugin_proxmox::pve::{CloneRequest, Vmid};
    // The seed died while its clone to VM 230 still ran: at Init the VM is
    // locked and not yet in the pool; it is finished once the clone ends.
    let mut scenario = Scenario { time_scale: 50.0, ..Scenario::default() };
    scenario.timings.resources_staleness = 0.5;
    scenario.timings.clone_linked = 150.0; // three real seconds
    let sim = Simulator::start(SimConfig::new(scenario)).await.unwrap();
    let root = sim_common::root_client(&sim);
    let request = CloneRequest {
        new_vmid: Some(Vmid(230)),
        name: Some("fleeting-creating".into()),
        pool: Some(defaults::POOL.into()),
        ..Default::default()
    };
    root.clone_vm("pve1", Vmid(defaults::TEMPLATE_VMID), &request).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let group = ProxmoxGroup::new();
    group.init(seed_config(&sim, dir.path()).to_string().as_bytes(), runner_credentials()).await.unwrap();
    assert!(sim.admin().vm(230).is_some_and(|vm| vm.lock.as_deref() == Some("clone")), "still cloning at Init");
    wait_for(&group, &sim, "the seed's clone deleted once it ended", |states, sim| {
        states.is_empty() && sim.admin().vm(230).is_none()
    })
    .await;
    assert!(sim.admin().inventory().orphaned_disks.is_empty());
    group.shutdown().await.unwrap();
}
