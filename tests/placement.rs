//! Placement on a three-node cluster with the template on shared storage
//! (pve1, pve2, pve3; 16 CPUs and 128 GiB each), pve2 already loaded by
//! three running VMs that are not ours (96 GiB and 8 cores each, half busy). Every
//! policy places as documented, a reserve keeps the loaded node out, an
//! offline node is skipped, and when nothing fits Increase says what binds
//! without sending a clone.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeMap;

use engine_setup::*;
use fleeting_plugin_proxmox::group::InstanceGroup;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::sim::config::{AclSpec, VmSpec, defaults};

const NODES: [&str; 3] = ["pve1", "pve2", "pve3"];
/// The VMs that load pve2 (outside the pool).
const LOAD: [u32; 3] = [700, 701, 702];

async fn three_nodes(settings: serde_json::Value) -> Setup {
    three_nodes_seen(settings, false).await
}

/// `audit_all`: the token may audit every VM (PVEAuditor on /vms), so
/// allocation limits count the VMs outside the pool too.
async fn three_nodes_seen(settings: serde_json::Value, audit_all: bool) -> Setup {
    let mut scenario = fast_scenario();
    add_node(&mut scenario, "pve3", 30);
    share_template_storage(&mut scenario);
    if audit_all {
        scenario.acl.push(AclSpec {
            path: "/vms".into(),
            roles: vec!["PVEAuditor".into()],
            users: vec![defaults::USER.into()],
            tokens: vec![defaults::TOKEN_ID.into()],
            ..AclSpec::default()
        });
    }
    for vmid in LOAD {
        let config = [("name", "database"), ("memory", "98304"), ("cores", "8"), ("net0", "virtio,bridge=vmbr0")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // Busy databases: half of their cores.
        let load = Some(0.5);
        scenario.vms.push(VmSpec {
            vmid,
            node: "pve2".into(),
            running: true,
            config,
            cpu_load: load,
            ..VmSpec::default()
        });
    }
    let mut setup = setup(scenario).await;
    setup.config["target_nodes"] = serde_json::json!(NODES);
    setup.config["max_instances"] = 40.into();
    setup.config["max_parallel_clones"] = 8.into();
    for (key, value) in settings.as_object().unwrap() {
        setup.config[key] = value.clone();
    }
    setup
}

/// Our instances per node, from the simulator.
fn per_node(setup: &Setup) -> BTreeMap<String, usize> {
    let mut counts: BTreeMap<String, usize> = NODES.iter().map(|n| (n.to_string(), 0)).collect();
    let inventory = setup.sim.admin().inventory();
    for vm in inventory.vms.iter().filter(|vm| !vm.template && vm.vmid >= 100 && vm.vmid < 700) {
        if vm.vmid == STRANGER_VMID || vm.vmid == COPY_VMID {
            continue;
        }
        *counts.get_mut(&vm.node).unwrap() += 1;
    }
    counts
}

fn counts(setup: &Setup) -> (usize, usize, usize) {
    let counts = per_node(setup);
    (counts["pve1"], counts["pve2"], counts["pve3"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_policy_places_as_documented() {
    // (scheduler, instances per node after one Increase of 6)
    let cases = [
        // The loaded node has the least memory (16 GiB) and CPU (3.7 cores) free.
        ("balanced", (3, 0, 3)),
        ("most_free_ram", (3, 0, 3)),
        ("most_free_cpu", (3, 0, 3)),
        // Load does not matter to these two.
        ("round_robin", (2, 2, 2)),
        ("spread", (2, 2, 2)),
    ];
    for (scheduler, expected) in cases {
        let setup = three_nodes(serde_json::json!({ "scheduler": scheduler })).await;
        let group = ProxmoxGroup::new();
        group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
        scale_to(&group, 6).await;
        assert_eq!(counts(&setup), expected, "{scheduler}");
        drain(&group).await;
        setup.assert_no_leaks_except(&LOAD);
        setup.assert_untouched();
        group.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_to_30_and_back_keeps_the_loaded_node_under_its_reserve() {
    // pve2 uses 16 GiB (host) + 3 × 32 GiB: 16 GiB free, below the 20 % (25.6 GiB) reserve.
    let setup = three_nodes(serde_json::json!({ "node_reserve_memory_percent": 20 })).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    scale_to(&group, 10).await;
    scale_to(&group, 30).await;
    let (pve1, pve2, pve3) = counts(&setup);
    assert_eq!(pve2, 0, "the loaded node keeps its reserve");
    assert_eq!(pve1 + pve3, 30);
    assert!(pve1.abs_diff(pve3) <= 2, "the others share the load: {pve1} and {pve3}");
    drain(&group).await;
    setup.assert_no_leaks_except(&LOAD);
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_is_skipped_without_a_failed_clone() {
    let setup = three_nodes(serde_json::json!({ "scheduler": "round_robin" })).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    setup.sim.admin().set_node_online("pve3", false).unwrap();
    states(&group).await; // the listing shows pve3 offline
    let answer = group.increase(4).await.unwrap();
    assert_eq!(answer.succeeded, 4, "{:?}", answer.failures);
    wait_until(&group, "4 running", all_running(4)).await;
    assert_eq!(counts(&setup), (2, 2, 0));
    let failed = setup.sim.admin().tasks().iter().filter(|task| task.exit_status.as_deref() != Some("OK")).count();
    assert_eq!(failed, 0, "no clone was tried on the offline node");
    drain(&group).await;
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_no_node_fits_increase_names_what_binds_and_clones_nothing() {
    // 100 % of vCPUs: 16 per node, 2 per instance, pve2 has 24 committed
    // already (seen because the token may audit all VMs).
    let settings = serde_json::json!({
        "node_cpu_allocation_limit_percent": 100,
        "node_policies": [{ "nodes": ["pve3"], "cpu_allocation_limit_percent": 50 }],
    });
    let setup = three_nodes_seen(settings, true).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    // pve1: 8 fit; pve3 (its own policy): 4; pve2: none.
    let answer = group.increase(15).await.unwrap();
    assert_eq!(answer.succeeded, 12, "{:?}", answer.failures);
    assert_eq!(answer.failures.len(), 1, "one shortfall for the batch: {:?}", answer.failures);
    let message = answer.failures[0].to_string();
    assert!(message.starts_with("could not create 3 instances: no node can take another instance"), "{message}");
    assert!(message.contains("pve2: vCPU allocation limit 100% (24 of 16 committed, 2 needed)"), "{message}");
    assert!(message.contains("pve3: vCPU allocation limit 50% (8 of 8 committed, 2 needed)"), "{message}");
    wait_until(&group, "12 running", all_running(12)).await;
    assert_eq!(counts(&setup), (8, 0, 4));
    let clones = setup.sim.admin().tasks().iter().filter(|task| task.task_type == "qmclone").count();
    assert_eq!(clones, 12, "no clone request for what could not be placed");
    drain(&group).await;
    setup.assert_no_leaks_except(&LOAD);
    group.shutdown().await.unwrap();
}
