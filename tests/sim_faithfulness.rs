//! Issue 14, faithfulness: the requests the competitors' plugins make that
//! the simulator refuses, each pinned to what a real PVE answers (the raw
//! schema in `pve-*-apidoc.json` and qemu-server's behaviour), so that the
//! benchmark report can call them the competitor's and say why; and the
//! counters that tell those refusals from the injected faults.

#[path = "sim/common.rs"]
mod common;

use common::*;
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::pve::{CloneRequest, Vmid};
use fleeting_plugin_proxmox::sim::FaultRule;
use serde_json::Value;

async fn get(sim: &fleeting_plugin_proxmox::sim::SimHandle, path: &str) -> reqwest::Response {
    raw_client()
        .get(format!("{}{path}", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .expect("the request is answered")
}

async fn clone_into_pool(sim: &fleeting_plugin_proxmox::sim::SimHandle, newid: u32) -> reqwest::Response {
    raw_client()
        .post(format!("{}/nodes/pve1/qemu/9000/clone", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("newid", newid.to_string().as_str()), ("name", "fleeting-creating"), ("pool", "ci"), ("full", "0")])
        .send()
        .await
        .expect("the request is answered")
}

/// go-proxmox's first request carries no credentials (it logs in lazily).
/// pveproxy answers any request without a ticket or token with 401 `No
/// ticket` and an empty body (PVE::APIServer::AnyEvent, auth before the
/// formatter).
#[tokio::test]
async fn a_real_pve_answers_a_request_without_credentials_with_401_no_ticket() {
    let sim = start(fast_scenario()).await;
    let response = raw_client().get(format!("{}/pools/ci", sim.api_url())).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "No ticket");
    assert_eq!(response.text().await.unwrap(), "");
}

/// `GET /cluster/status` checks `["perm", "/", ["Sys.Audit"]]` (the schema
/// of every release 7.0–9.1). The roles the seed's README asks for (on the
/// pool, storage, network and node) do not grant it on `/`.
#[tokio::test]
async fn a_real_pve_answers_cluster_status_without_sys_audit_on_root_with_403() {
    let sim = start(fast_scenario()).await;
    let response = get(&sim, "/cluster/status").await;
    assert_eq!(response.status(), 403);
    assert_eq!(reason(&response), "Permission check failed (/, Sys.Audit)");
}

/// qemu-server adds a clone to the pool given with `pool=` only when the
/// clone task ends. Until then a user whose rights come from the pool has
/// no `VM.Audit` on `/vms/<newid>`, so reading its configuration is refused;
/// once the task ends it is a pool member and the read succeeds.
#[tokio::test]
async fn a_real_pve_answers_the_config_of_a_clone_in_flight_with_403_until_it_joins_the_pool() {
    let mut scenario = fast_scenario();
    scenario.timings.clone_linked = 100.0; // 2 s real: the clone is surely still running below
    let sim = start(scenario).await;
    let response = clone_into_pool(&sim, 150).await;
    assert_eq!(response.status(), 200, "{}", reason(&response));
    let upid = response.json::<Value>().await.unwrap()["data"].as_str().expect("a UPID").to_string();

    let response = get(&sim, "/nodes/pve1/qemu/150/config").await;
    assert_eq!(response.status(), 403);
    assert_eq!(reason(&response), "Permission check failed (/vms/150, VM.Audit)");

    wait(&token_client(&sim), &upid.parse().expect("the UPID parses")).await.expect("the clone ends well");
    let response = get(&sim, "/nodes/pve1/qemu/150/config").await;
    assert_eq!(response.status(), 200, "{}", reason(&response));
}

/// What a clone's config is while it runs, read by root: qemu-server's
/// clone worker first writes `# qmclone temporary file` + `lock: clone`
/// (read back, the comment is the description), and the name, the
/// description asked for and the disks only after the first disk is copied
/// (`write_config` after each disk; `lock` goes at the end).
#[tokio::test]
async fn a_real_pve_shows_a_clone_as_its_temporary_config_until_the_first_disk_is_copied() {
    let mut scenario = fast_scenario();
    scenario.timings.clone_linked = 200.0; // two disks, 2 s real each
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let request = CloneRequest {
        new_vmid: Some(Vmid(152)),
        name: Some("fleeting-creating".into()),
        description: Some("ours".into()),
        pool: Some("ci".into()),
        ..Default::default()
    };
    let upid = pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap();
    let root = root_client(&sim);
    // The worker writes the temporary config right after it starts.
    let deadline = Instant::now() + Duration::from_secs(1);
    let config = loop {
        match root.vm_config("pve1", Vmid(152)).await {
            Ok(config) => break config,
            Err(err) => assert!(Instant::now() < deadline, "no config: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let expected: Vec<(&str, &str)> = vec![("description", " qmclone temporary file\n"), ("lock", "clone")];
    let shown: Vec<(&str, &str)> =
        config.iter().filter(|(k, _)| k.as_str() != "digest").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(shown, expected);

    let deadline = Instant::now() + Duration::from_secs(10);
    let config = loop {
        let config = root.vm_config("pve1", Vmid(152)).await.unwrap();
        if config.contains_key("name") {
            break config;
        }
        assert!(Instant::now() < deadline, "the name never came: {config:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(config.get("description").map(String::as_str), Some("ours"));
    assert_eq!(config.get("lock").map(String::as_str), Some("clone"), "the copy goes on");
    assert!(config.contains_key("scsi0"), "{config:?}");
    wait(&pve, &upid).await.expect("the clone ends well");
    let config = root.vm_config("pve1", Vmid(152)).await.unwrap();
    assert_eq!(config.get("lock"), None);
}

/// A second clone onto a VMID whose clone is still running: qemu-server's
/// clone refuses a new VMID whose configuration file exists (the running
/// clone wrote it, with `lock: clone`), a plain `die`, so 500 with the
/// message.
#[tokio::test]
async fn a_real_pve_answers_a_second_clone_onto_a_vmid_in_use_with_500_config_file_exists() {
    let mut scenario = fast_scenario();
    scenario.timings.clone_linked = 100.0;
    let sim = start(scenario).await;
    assert_eq!(clone_into_pool(&sim, 151).await.status(), 200);
    let response = clone_into_pool(&sim, 151).await;
    assert_eq!(response.status(), 500);
    assert_eq!(reason(&response), "unable to create VM 151: config file already exists");
}

/// A guest-agent call on a VM that is not running: qemu-server's agent
/// calls `die "VM $vmid is not running\n"` (500) before asking the agent.
#[tokio::test]
async fn a_real_pve_answers_the_agent_of_a_stopped_vm_with_500_not_running() {
    let sim = start(fast_scenario()).await;
    let response = clone_into_pool(&sim, 152).await;
    let upid = response.json::<Value>().await.unwrap()["data"].as_str().expect("a UPID").to_string();
    wait(&token_client(&sim), &upid.parse().expect("the UPID parses")).await.expect("the clone ends well");
    let response = get(&sim, "/nodes/pve1/qemu/152/agent/get-osinfo").await;
    assert_eq!(response.status(), 500);
    assert_eq!(reason(&response), "VM 152 is not running");
}

/// A destroyed VM leaves its pool, and pveproxy checks the schema's
/// permission (`["perm", "/vms/{vmid}", ["VM.GuestAgent.Audit",
/// "VM.GuestAgent.Unrestricted"], "any", 1]` in 9.x) before the handler
/// looks for the VM: a user whose rights come from the pool gets 403, the
/// privileges joined with `|` as `check_any` writes them.
#[tokio::test]
async fn a_real_pve_answers_the_agent_of_a_deleted_vm_with_403_not_does_not_exist() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let response = clone_into_pool(&sim, 153).await;
    let upid = response.json::<Value>().await.unwrap()["data"].as_str().expect("a UPID").to_string();
    wait(&pve, &upid.parse().expect("the UPID parses")).await.expect("the clone ends well");
    let response = raw_client()
        .delete(format!("{}/nodes/pve1/qemu/153", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", reason(&response));
    let upid = response.json::<Value>().await.unwrap()["data"].as_str().expect("a UPID").to_string();
    wait(&pve, &upid.parse().expect("the UPID parses")).await.expect("the deletion ends well");
    let response = get(&sim, "/nodes/pve1/qemu/153/agent/network-get-interfaces").await;
    assert_eq!(response.status(), 403);
    assert_eq!(reason(&response), "Permission check failed (/vms/153, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)");
}

/// What the benchmark report reads: the simulator's own answers and the
/// reasons of its refusals per operation, with the injected faults apart.
#[tokio::test]
async fn refusals_are_counted_per_operation_apart_from_injected_faults() {
    let sim = start(fast_scenario()).await;
    let admin = sim.admin();
    admin.add_fault(FaultRule {
        error_rate: 1.0,
        status: 503,
        remaining: Some(1),
        ..FaultRule::for_operation("get_version")
    });
    assert_eq!(get(&sim, "/version").await.status(), 503);
    assert_eq!(get(&sim, "/version").await.status(), 200);
    assert_eq!(get(&sim, "/cluster/status").await.status(), 403);
    assert_eq!(get(&sim, "/nodes/pve1/qemu/9000/nothing").await.status(), 501);

    let counters = admin.counters();
    assert_eq!(counters.operation("get_version"), 2);
    assert_eq!(counters.answers_by_operation["get_version"], [(200, 1)].into());
    assert!(!counters.refusals.contains_key("get_version"), "an injected fault is no refusal");
    assert_eq!(
        counters.refusals["get_cluster_status"],
        [("403 Permission check failed (/, Sys.Audit)".to_string(), 1)].into()
    );
    assert_eq!(
        counters.refusals["unknown"],
        [("501 Method 'GET /nodes/pve1/qemu/N/nothing' not implemented".to_string(), 1)].into()
    );
}
