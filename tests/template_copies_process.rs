//! Template copies with the real plugin binary, killed with SIGKILL in the
//! middle of making them: once while a copy's clone runs, once while its
//! migration runs. Each time, the next start deletes what the cut-short
//! staging left (after PVE's task ends) and makes the copy again; at the
//! end every node has exactly one complete copy, nothing else carries a
//! copy marker, no disk is orphaned, and the VMs that are not ours are as
//! they were.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::sim::config::{NodeSpec, defaults};
use fleeting_plugin_proxmox::sim::{Admin, VmView};

use reliability::Login;
use reliability::process::PluginProcess;

const TIME_SCALE: f64 = 10.0;

fn copies(admin: &Admin) -> Vec<VmView> {
    admin
        .inventory()
        .vms
        .into_iter()
        .filter(|vm| vm.config.get("description").is_some_and(|d| d.contains("template-copy-of=")))
        .collect()
}

/// Waits until a copy of the group is under `lock` (its clone or its
/// migration is running).
async fn wait_for_lock(admin: &Admin, lock: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(vm) = copies(admin).into_iter().find(|vm| vm.lock.as_deref() == Some(lock)) {
            return vm.vmid;
        }
        assert!(Instant::now() < deadline, "no copy locked for {lock} within 60 s: {:#?}", copies(admin));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_staging_leaves_no_half_made_copy_after_the_next_start() {
    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.resources_staleness = 0.5;
    scenario.nodes.push(NodeSpec {
        name: "pve3".into(),
        subnet: "10.10.30.0/24".into(),
        subnet6: "fd00:10:10:30::/64".into(),
        ..NodeSpec::default()
    });
    // Long enough copies for a kill to land inside each step.
    scenario.timings.clone_full = 20.0;
    scenario.timings.migrate = 20.0;
    let sim = reliability::start_sim(scenario, reliability::seed("template_copies_process")).await;
    let admin = sim.admin();
    let protected = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, 6);
    config["target_nodes"] = serde_json::json!(["pve1", "pve2", "pve3"]);
    config["template_check_interval"] = "10s".into();

    let mut stderr = String::new();
    let mut cut_short = Vec::new();
    for lock in ["clone", "migrate"] {
        let mut plugin = PluginProcess::start(dir.path(), "debug").await;
        plugin.init(&config, true).await.expect("Init");
        cut_short.push(wait_for_lock(&admin, lock).await);
        stderr.push_str(&plugin.kill9());
    }

    let mut plugin = PluginProcess::start(dir.path(), "debug").await;
    plugin.init(&config, true).await.expect("Init after kill -9");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let found = copies(&admin);
        let complete: Vec<&VmView> = found.iter().filter(|vm| vm.template && vm.lock.is_none()).collect();
        let on_nodes: Vec<&str> = complete.iter().map(|vm| vm.node.as_str()).collect();
        let done = found.len() == 2 && on_nodes.contains(&"pve2") && on_nodes.contains(&"pve3");
        if done && admin.inventory().running_tasks == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the copies were not settled within 120 s: {found:#?}\n{}{}",
            stderr,
            plugin.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for vmid in &cut_short {
        assert!(admin.vm(*vmid).is_none(), "the copy {vmid} cut short by kill -9 is gone");
    }
    let orphans = admin.inventory().orphaned_disks;
    assert!(orphans.is_empty(), "orphaned disks: {orphans:?}");
    let template = admin.vm(defaults::TEMPLATE_VMID).unwrap();
    assert!(template.template && template.lock.is_none());
    reliability::assert_protected_untouched(&admin, &protected, &[]);
    plugin.shutdown().await.expect("Shutdown");
}
