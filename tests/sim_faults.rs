//! Fault injection and observability: error answers, latency, dropped
//! connections, failing tasks, held locks, an unreachable API, request
//! counters, and the HTTP admin API under `/_sim/`.

#[path = "sim/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use fleeting_plugin_proxmox::pve::{CloneRequest, ErrorKind, PveClient, RetryPolicy, Vmid};
use fleeting_plugin_proxmox::sim::FaultRule;
use serde_json::{Value, json};

fn into_pool(vmid: u32) -> CloneRequest {
    CloneRequest { new_vmid: Some(Vmid(vmid)), pool: Some("ci".into()), ..Default::default() }
}

fn failed_task(err: &fleeting_plugin_proxmox::pve::Error) -> String {
    match err.kind() {
        ErrorKind::TaskFailed { exit_status, .. } => exit_status.clone(),
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[tokio::test]
async fn error_answers_count_and_expire() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    admin.add_fault(FaultRule {
        error_rate: 1.0,
        status: 503,
        remaining: Some(2),
        ..FaultRule::for_operation("get_version")
    });
    let response = raw_client()
        .get(format!("{}/version", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert_eq!(reason(&response), "Service Unavailable");
    assert_eq!(
        raw_client()
            .get(format!("{}/nodes", sim.api_url()))
            .header("Authorization", token_header())
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // The project's client retries reads on 503: the second fault, then success.
    admin.reset_counters();
    let mut config = client_config(
        &sim,
        token(
            fleeting_plugin_proxmox::sim::config::defaults::TOKEN_ID,
            fleeting_plugin_proxmox::sim::config::defaults::TOKEN_SECRET,
        ),
    );
    config.retry =
        RetryPolicy { max_attempts: 4, initial_delay: Duration::from_millis(5), max_delay: Duration::from_millis(10) };
    let pve = PveClient::new(config).unwrap();
    assert_eq!(pve.version().await.unwrap().to_string(), "9.1.3");
    let counters = admin.counters();
    assert_eq!(counters.operation("get_version"), 2);
    assert_eq!(counters.injected_errors, 1);
    assert_eq!(counters.by_status.get(&503), Some(&1));
    assert!(admin.faults().is_empty(), "the rule expired");
}

#[tokio::test]
async fn latency_is_added_on_the_simulated_clock() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 2.0;
    let sim = start(scenario).await;
    sim.admin().add_fault(FaultRule { latency_ms: 600, ..FaultRule::for_operation("get_cluster_resources") });
    let pve = token_client(&sim);
    let started = Instant::now();
    pve.cluster_vms().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300), "600 simulated ms at twice the speed");
}

#[tokio::test]
async fn dropped_connections_reach_the_client_as_transport_errors() {
    let sim = start(fast_scenario()).await;
    sim.admin().add_fault(FaultRule { drop_rate: 1.0, ..FaultRule::for_operation("get_cluster_resources") });
    let err = raw_client()
        .get(format!("{}/cluster/resources", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap_err();
    assert!(err.is_request() || err.is_connect() || err.is_body(), "{err}");
    let err = token_client(&sim).cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transient { .. }), "{err}");
    assert_eq!(sim.admin().counters().dropped_connections, 2);
}

#[tokio::test]
async fn a_lost_answer_still_runs_the_task_and_the_admin_view_says_so() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    admin.add_fault(FaultRule {
        lost_answer_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
    });
    let pve = token_client(&sim);
    let err = pve.clone_vm("pve1", Vmid(9000), &into_pool(201)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transient { .. }), "{err}");
    let answered = pve.clone_vm("pve1", Vmid(9000), &into_pool(202)).await.unwrap();
    let clones: Vec<_> = admin.tasks().into_iter().filter(|task| task.task_type == "qmclone").collect();
    let lost = clones.iter().find(|task| task.creates == Some(201)).expect("PVE ran the clone whose answer was lost");
    assert!(lost.answer_lost);
    assert_eq!(lost.id, "9000", "the UPID names the source, as PVE's does");
    let seen = clones.iter().find(|task| task.creates == Some(202)).unwrap();
    assert!(!seen.answer_lost);
    assert_eq!(seen.upid, answered.to_string());
    assert_eq!(admin.counters().lost_answers, 1);
}

#[tokio::test]
async fn start_and_delete_tasks_fail_on_demand() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    let pve = token_client(&sim);
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(200)).await.unwrap()).await.unwrap();
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_status_start")
    });
    let err = wait(&pve, &pve.start_vm("pve1", Vmid(200)).await.unwrap()).await.unwrap_err();
    assert_eq!(failed_task(&err), "start failed: QEMU exited with code 1");
    assert_eq!(admin.vm(200).unwrap().status, "stopped");

    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        task_error: Some("storage is busy".into()),
        remaining: Some(1),
        ..FaultRule::for_operation("delete_nodes_node_qemu_vmid")
    });
    let err = wait(&pve, &pve.delete_vm("pve1", Vmid(200)).await.unwrap()).await.unwrap_err();
    assert_eq!(failed_task(&err), "storage is busy");
    let survivor = admin.vm(200).expect("a failed destroy keeps the VM");
    assert_eq!(survivor.lock, None, "and lets a retry try again");
    wait(&pve, &pve.delete_vm("pve1", Vmid(200)).await.unwrap()).await.unwrap();
    assert!(admin.vm(200).is_none());
    let counters = admin.counters();
    assert_eq!(counters.tasks_failed, 2);
    assert_eq!(counters.tasks_started["qmdestroy"], 2);
}

#[tokio::test]
async fn held_locks_make_clones_and_power_actions_wait_and_fail() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    let pve = token_client(&sim);
    admin.hold_lock(9000, true).unwrap();
    let err = wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(210)).await.unwrap()).await.unwrap_err();
    assert_eq!(failed_task(&err), "can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout");
    admin.hold_lock(9000, false).unwrap();
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(210)).await.unwrap()).await.unwrap();

    admin.set_config_lock(9000, Some("backup")).unwrap();
    let err = pve.clone_vm("pve1", Vmid(9000), &into_pool(211)).await.unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert!(err.to_string().contains("VM is locked (backup)"), "{err}");
    admin.set_config_lock(210, Some("backup")).unwrap();
    let err = wait(&pve, &pve.start_vm("pve1", Vmid(210)).await.unwrap()).await.unwrap_err();
    assert_eq!(failed_task(&err), "VM is locked (backup)");
}

#[tokio::test]
async fn an_unreachable_api_refuses_connections_for_a_while() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 1.0;
    let sim = start(scenario).await;
    let http = raw_client();
    let url = format!("{}/version", sim.api_url());
    sim.admin().make_unreachable(0.5);
    assert!(http.get(&url).header("Authorization", token_header()).send().await.is_err());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(http.get(&url).header("Authorization", token_header()).send().await.unwrap().status(), 200);
    assert!(sim.admin().counters().refused_connections >= 1);
}

#[tokio::test]
async fn counters_and_inventory_prove_api_cost_and_no_leaks() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    let pve = token_client(&sim);
    admin.reset_counters();
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(220)).await.unwrap();
    wait(&pve, &upid).await.unwrap();
    wait(&pve, &pve.delete_vm("pve1", Vmid(220)).await.unwrap()).await.unwrap();
    let counters = admin.counters();
    assert_eq!(counters.operation("post_nodes_node_qemu_vmid_clone"), 1);
    assert_eq!(counters.operation("delete_nodes_node_qemu_vmid"), 1);
    assert!(counters.operation("get_nodes_node_tasks_upid_status") >= 2);
    assert_eq!(counters.requests_total, counters.by_operation.values().sum::<u64>());
    assert_eq!(counters.requests_total, counters.by_status.values().sum::<u64>());
    let inventory = admin.inventory();
    assert_eq!(inventory.vms.iter().map(|vm| vm.vmid).collect::<Vec<_>>(), [9000], "no leaked VM");
    assert!(inventory.orphaned_disks.is_empty());
    assert_eq!(inventory.pools["ci"], [9000]);
    assert_eq!(inventory.running_tasks, 0);
}

#[tokio::test]
async fn the_http_admin_api_mirrors_the_in_process_one() {
    let sim = start(fast_scenario()).await;
    let http = raw_client();
    let admin = |path: &str| format!("{}/_sim/{path}", sim.base_url());

    let created: Value = http
        .post(admin("faults"))
        .json(&json!({ "operation": "get_nodes", "error_rate": 1.0, "status": 500, "message": "boom" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_u64().unwrap();
    let response =
        http.get(format!("{}/nodes", sim.api_url())).header("Authorization", token_header()).send().await.unwrap();
    assert_eq!((response.status().as_u16(), reason(&response)), (500, "boom".to_string()));
    let faults: Value = http.get(admin("faults")).send().await.unwrap().json().await.unwrap();
    assert_eq!(faults[0]["id"], id);
    assert_eq!(faults[0]["operation"], "get_nodes");
    assert_eq!(http.delete(admin(&format!("faults/{id}"))).send().await.unwrap().status(), 200);
    assert_eq!(http.delete(admin(&format!("faults/{id}"))).send().await.unwrap().status(), 404);

    assert_eq!(
        http.post(admin("vms/9000/lock"))
            .json(&json!({ "lock": "backup", "flock": true }))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let vm: Value = http.get(admin("vms/9000")).send().await.unwrap().json().await.unwrap();
    assert_eq!(vm["lock"], "backup");
    assert_eq!(http.delete(admin("vms/9000/lock")).send().await.unwrap().status(), 200);
    assert_eq!(sim.admin().vm(9000).unwrap().lock, None);

    assert_eq!(http.post(admin("nodes/pve2")).json(&json!({ "online": false })).send().await.unwrap().status(), 200);
    let inventory: Value = http.get(admin("inventory")).send().await.unwrap().json().await.unwrap();
    assert_eq!(inventory["nodes"][1], json!({ "name": "pve2", "online": false }));
    let orphan: Value = http
        .post(admin("orphans"))
        .json(&json!({ "storage": "local-lvm", "vmid": 777 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orphan["volid"], "local-lvm:vm-777-disk-0");
    let inventory: Value = http.get(admin("inventory")).send().await.unwrap().json().await.unwrap();
    assert_eq!(inventory["orphaned_disks"][0]["vmid"], 777);
    assert_eq!(
        http.post(admin("vms/9000/agent")).json(&json!({ "state": "never-up" })).send().await.unwrap().status(),
        200
    );

    let counters: Value = http.get(admin("counters")).send().await.unwrap().json().await.unwrap();
    assert_eq!(counters["by_operation"]["get_nodes"], 1);
    assert_eq!(counters["injected_errors"], 1);
    assert_eq!(http.post(admin("counters/reset")).send().await.unwrap().status(), 200);
    let tasks: Value = http.get(admin("tasks")).send().await.unwrap().json().await.unwrap();
    assert_eq!(tasks, json!([]));

    let response = http.post(admin("faults")).json(&json!({ "operation": "x", "error_rat": 1 })).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("error_rat"), "{body}");
    assert_eq!(http.get(admin("nothing")).send().await.unwrap().status(), 404);
    assert_eq!(
        http.post(admin("vms/12345/agent")).json(&json!({ "state": "killed" })).send().await.unwrap().status(),
        404
    );

    assert_eq!(http.post(admin("unreachable")).json(&json!({ "seconds": 100 })).send().await.unwrap().status(), 200);
    assert!(http.get(admin("counters")).send().await.is_err(), "the admin API goes down with the rest");
}
