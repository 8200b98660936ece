//! Three nodes, each with its own local-lvm, the template on pve1's: pve2
//! and pve3 cannot clone it (Proxmox clones to another node only from
//! shared storage), so each gets a copy of the template (full clone on
//! pve1, offline migration, conversion into a template there). Instances
//! of pve2 and pve3 are linked clones of their node's copy; a changed
//! template makes new copies while running instances keep theirs, and the
//! old copies go once no instance uses them.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine_setup::*;
use fleeting_plugin_proxmox::group::InstanceGroup;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::sim::FaultRule;
use fleeting_plugin_proxmox::sim::VmView;
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::telemetry::{StatusDocument, TemplateCopyState};

const NODES: [&str; 3] = ["pve1", "pve2", "pve3"];

async fn three_local_nodes(settings: serde_json::Value) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut scenario = fast_scenario();
    add_node(&mut scenario, "pve3", 30);
    let mut setup = setup(scenario).await;
    setup.config["target_nodes"] = serde_json::json!(NODES);
    setup.config["max_instances"] = 30.into();
    setup.config["max_parallel_clones"] = 8.into();
    setup.config["scheduler"] = "spread".into();
    for (key, value) in settings.as_object().unwrap() {
        setup.config[key] = value.clone();
    }
    setup
}

/// The group's template copies in the simulator, complete or not.
fn copies(setup: &Setup) -> Vec<VmView> {
    let inventory = setup.sim.admin().inventory();
    inventory
        .vms
        .into_iter()
        .filter(|vm| vm.config.get("description").is_some_and(|d| d.contains("template-copy-of=9000")))
        .collect()
}

/// How long after a copy is complete in PVE the plugin has seen so: the
/// task-status backoff's ceiling (2 s) and a margin for a loaded machine.
const COPY_NOTICED_WITHIN: Duration = Duration::from_secs(4);

/// Waits until pve2 and pve3 each have one complete copy and nothing else
/// carries a copy marker, and the plugin can have noticed; returns node →
/// copy VMID.
async fn wait_for_copies(setup: &Setup, not: &[u32]) -> BTreeMap<String, u32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let found = copies(setup);
        let complete: BTreeMap<String, u32> = found
            .iter()
            .filter(|vm| vm.template && vm.lock.is_none() && !not.contains(&vm.vmid))
            .map(|vm| (vm.node.clone(), vm.vmid))
            .collect();
        if complete.len() == 2 && complete.contains_key("pve2") && complete.contains_key("pve3") {
            // The plugin learns a copy is complete when it next polls the
            // copy's last task (polls back off to 2 s apart); until then it
            // rightly clones on the template's node.
            tokio::time::sleep(COPY_NOTICED_WITHIN).await;
            return complete;
        }
        assert!(Instant::now() < deadline, "no copies on pve2 and pve3 within 60 s: {found:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each node's template copy, as the running plugin's `/status` says.
async fn copy_states(metrics: std::net::SocketAddr) -> BTreeMap<String, TemplateCopyState> {
    let status: StatusDocument = reqwest::get(format!("http://{metrics}/status")).await.unwrap().json().await.unwrap();
    status.fleet.template_copies.into_iter().map(|copy| (copy.node.clone(), copy)).collect()
}

/// Our instances per node.
fn per_node(setup: &Setup) -> BTreeMap<String, Vec<VmView>> {
    let mut nodes: BTreeMap<String, Vec<VmView>> = NODES.iter().map(|node| (node.to_string(), Vec::new())).collect();
    for vm in setup.sim.admin().inventory().vms {
        let instance = vm.config.get("description").is_some_and(|d| d.contains(" instance="));
        if instance && !vm.template && vm.vmid != COPY_VMID {
            nodes.get_mut(&vm.node).unwrap().push(vm);
        }
    }
    nodes
}

/// The template volume a linked clone's system disk is based on
/// (`base-9901-disk-0`), as the storage holds it; `None` for a full clone.
fn base_of(setup: &Setup, vm: &VmView) -> Option<String> {
    let disk = vm.config.get("scsi0").cloned().unwrap_or_default();
    let volid = disk.split(',').next().unwrap_or_default().to_string();
    let volume = setup.sim.admin().volumes_of(vm.vmid).into_iter().find(|v| v.volid == volid)?;
    let base = volume.base?;
    let name = base.split_once(':').map_or(base.as_str(), |(_, name)| name);
    Some(name.split('/').next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_storage_on_three_nodes_scales_0_30_0_from_a_copy_per_node() {
    let setup = three_local_nodes(serde_json::json!({})).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let made = wait_for_copies(&setup, &[]).await;
    for (node, vmid) in &made {
        let copy = setup.sim.admin().vm(*vmid).unwrap();
        assert_eq!(copy.pool.as_deref(), Some(defaults::POOL), "a copy is in the pool");
        assert!(copy.config["scsi0"].starts_with(&format!("local-lvm:base-{vmid}-disk-0")), "{node}: {copy:?}");
    }
    assert!(states(&group).await.is_empty(), "a copy is never an instance");

    scale_to(&group, 30).await;
    let nodes = per_node(&setup);
    for node in NODES {
        assert_eq!(nodes[node].len(), 10, "spread puts 10 on {node}");
    }
    for vm in &nodes["pve1"] {
        assert_eq!(base_of(&setup, vm).as_deref(), Some("base-9000-disk-0"), "pve1 clones the template itself");
    }
    for node in ["pve2", "pve3"] {
        for vm in &nodes[node] {
            let expected = format!("base-{}-disk-0", made[node]);
            assert_eq!(base_of(&setup, vm), Some(expected), "{node} clones its copy (linked)");
        }
    }
    // Copies change nothing for Update: one request, whatever the layout.
    let admin = setup.sim.admin();
    admin.reset_counters();
    for _ in 0..5 {
        group.update().await.unwrap();
    }
    let counters = admin.counters();
    assert_eq!(counters.requests_total, 5, "one request per Update: {:?}", counters.by_operation);
    drain(&group).await;
    assert_eq!(wait_for_copies(&setup, &[]).await, made, "the copies stay for the next scale-up");
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_template_rolls_the_copies_without_touching_running_instances() {
    let setup = three_local_nodes(serde_json::json!({ "template_check_interval": "10s" })).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let old = wait_for_copies(&setup, &[]).await;
    scale_to(&group, 6).await;
    let running_before: Vec<VmView> = per_node(&setup).into_values().flatten().collect();

    // The admin updates the template (a new image, a bumped marker).
    setup
        .sim
        .admin()
        .edit_config(defaults::TEMPLATE_VMID, &[("description", Some("Debian 12\ntemplate-version=2"))])
        .unwrap();
    let old_vmids: Vec<u32> = old.values().copied().collect();
    let new = wait_for_copies(&setup, &old_vmids).await;
    assert!(new.values().all(|vmid| !old_vmids.contains(vmid)));
    // Linked clones of the old copies still run: the old copies stay.
    for vmid in &old_vmids {
        assert!(setup.sim.admin().vm(*vmid).is_some(), "copy {vmid} is still used by linked clones");
    }
    let ids: Vec<String> = states(&group).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), 6, "no instance was removed");
    for before in &running_before {
        let now = setup.sim.admin().vm(before.vmid).unwrap();
        assert_eq!(now.status, "running");
        assert_eq!(now.config.get("scsi0"), before.config.get("scsi0"), "a running instance keeps its disks");
    }

    // New instances come from the new copies; the old copies go with their last instance.
    group.decrease(ids).await.unwrap();
    wait_until(&group, "drained", |s| s.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while old_vmids.iter().any(|vmid| setup.sim.admin().vm(*vmid).is_some()) {
        assert!(Instant::now() < deadline, "the old copies were not deleted: {:#?}", copies(&setup));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    scale_to(&group, 6).await;
    for node in ["pve2", "pve3"] {
        for vm in &per_node(&setup)[node] {
            let expected = format!("base-{}-disk-0", new[node]);
            assert_eq!(base_of(&setup, vm), Some(expected), "{node} clones its new copy");
        }
    }
    drain(&group).await;
    assert_eq!(copies(&setup).len(), 2, "only the current copies remain");
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_made_under_an_earlier_template_name_prefix_serve_after_it_changed() {
    let setup = three_local_nodes(serde_json::json!({})).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let made = wait_for_copies(&setup, &[]).await;
    group.shutdown().await.unwrap();

    // The admin renames the copies to come; the ones made stay current.
    let mut config = setup.config.clone();
    config["template_name_prefix"] = "ci-base".into();
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap();
    scale_to(&group, 6).await;
    for node in ["pve2", "pve3"] {
        let instances = &per_node(&setup)[node];
        assert!(!instances.is_empty(), "spread puts instances on {node}");
        for vm in instances {
            let expected = format!("base-{}-disk-0", made[node]);
            assert_eq!(base_of(&setup, vm), Some(expected), "{node} clones the copy made before the rename");
        }
    }
    let vmids: Vec<u32> = copies(&setup).iter().map(|vm| vm.vmid).collect();
    assert_eq!(vmids.len(), 2, "no second copy was made, none was hidden: {vmids:?}");
    drain(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_gets_its_copy_when_it_is_back_and_the_others_serve_meanwhile() {
    let mut scenario = fast_scenario();
    add_node(&mut scenario, "pve3", 30);
    let mut setup = setup(scenario).await;
    setup.config["target_nodes"] = serde_json::json!(NODES);
    setup.config["scheduler"] = "spread".into();
    setup.config["template_check_interval"] = "10s".into();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    setup.config["metrics_listen"] = metrics.to_string().into();
    setup.sim.admin().set_node_online("pve3", false).unwrap();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    scale_to(&group, 4).await;
    let nodes = per_node(&setup);
    assert_eq!(nodes["pve3"].len(), 0, "the offline node takes nothing");
    assert_eq!(nodes["pve1"].len() + nodes["pve2"].len(), 4);
    // The admin sees which node has no copy, and why.
    let states = copy_states(metrics).await;
    assert_eq!(states["pve2"].state, "current", "{states:?}");
    assert_ne!(states["pve3"].state, "current", "{states:?}");
    let exposition = reqwest::get(format!("http://{metrics}/metrics")).await.unwrap().text().await.unwrap();
    let series: Vec<&str> =
        exposition.lines().filter(|line| line.starts_with("fleeting_proxmox_template_copies{")).collect();
    assert_eq!(series.len(), 2, "one state per node: {series:?}");
    assert!(
        series.iter().any(|line| line.contains(r#"node="pve2""#) && line.contains(r#"state="current""#)),
        "{series:?}"
    );
    drain(&group).await;
    setup.sim.admin().set_node_online("pve3", true).unwrap();
    // Its staging failed while it was offline; the keeper tries again.
    let made = wait_for_copies(&setup, &[]).await;
    let states = copy_states(metrics).await;
    assert_eq!(states["pve3"].state, "current", "{states:?}");
    assert_eq!(states["pve3"].vmid, Some(made["pve3"]));
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_mode_off_refuses_nodes_that_cannot_clone_the_template() {
    let setup = three_local_nodes(serde_json::json!({ "template_stage_mode": "off" })).await;
    let group = ProxmoxGroup::new();
    let err = group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap_err().to_string();
    assert!(err.contains("template_stage_mode"), "{err}");
    assert!(err.contains("local-lvm"), "{err}");
    assert!(copies(&setup).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_clone_left_on_another_nodes_local_storage_is_reclaimed() {
    // Every instance on pve2 (its copy's node): the volumes a crashed clone
    // leaves are on pve2's local-lvm, which only a holder on pve2 frees.
    let setup = three_local_nodes(serde_json::json!({ "target_nodes": ["pve2"] })).await;
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !copies(&setup).iter().any(|vm| vm.template && vm.node == "pve2" && vm.lock.is_none()) {
        assert!(Instant::now() < deadline, "no copy on pve2: {:#?}", copies(&setup));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The engine learns of the copy when its conversion task ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let placed = group.increase(1).await.unwrap();
        if placed.succeeded == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "pve2 never took a clone: {:?}", placed.failures);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until(&group, "one running", all_running(1)).await;
    drain(&group).await;
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        leave_orphans: true,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
    });
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    wait_until(&group, "the failed instance removed", |s| s.is_empty()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !admin.inventory().orphaned_disks.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the failed clone's volumes are freed: {:?}",
            admin.inventory().orphaned_disks
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    scale_to(&group, 2).await;
    assert_eq!(per_node(&setup)["pve2"].len(), 2);
    drain(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_template_per_node_serves_its_node_and_no_copy_is_made() {
    let mut scenario = fast_scenario();
    // The admin keeps template 9001 on pve2's own local-lvm.
    let mut own = scenario.vms.iter().find(|vm| vm.vmid == defaults::TEMPLATE_VMID).unwrap().clone();
    own.vmid = 9001;
    own.node = "pve2".into();
    own.config.insert("scsi0".into(), "local-lvm:base-9001-disk-0,iothread=1,size=8G".into());
    own.config.insert("ide2".into(), "local-lvm:vm-9001-cloudinit,media=cdrom".into());
    own.config.insert("net0".into(), "virtio=BC:24:11:90:00:01,bridge=vmbr0,firewall=1".into());
    scenario.vms.push(own);
    let mut setup = setup(scenario).await;
    setup.untouchable.push(setup.sim.admin().vm(9001).unwrap());
    setup.config["template_vmids"] = serde_json::json!([defaults::TEMPLATE_VMID, 9001]);
    setup.config["scheduler"] = "spread".into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    scale_to(&group, 4).await;
    let nodes = per_node(&setup);
    assert_eq!((nodes["pve1"].len(), nodes["pve2"].len()), (2, 2), "the templates' nodes are the default targets");
    for vm in &nodes["pve2"] {
        assert_eq!(base_of(&setup, vm).as_deref(), Some("base-9001-disk-0"), "pve2 clones its own template");
    }
    assert!(copies(&setup).is_empty(), "no copy is made for a node with its own template");
    drain(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();

    // Two templates on one node are refused, naming both.
    setup.config["template_vmids"] = serde_json::json!([9001, defaults::TEMPLATE_VMID, 9001]);
    let err = ProxmoxGroup::new()
        .init(setup.config.to_string().as_bytes(), static_credentials())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("`template_vmids` names 9001 twice"), "{err}");
}
