//! Inventory views, in the form "a real PVE answers this request like
//! this": `/cluster/resources` lagging for status/name/template but not for
//! lock/tags, offline nodes, the pools API before and after 8.1, and a
//! cluster of 2,000 VMs in one pool.

#[path = "sim/common.rs"]
mod common;

use std::time::Duration;

use common::*;
use fleeting_plugin_proxmox::pve::{CloneRequest, ConfigUpdate, ErrorKind, Vmid};
use fleeting_plugin_proxmox::sim::Scenario;
use fleeting_plugin_proxmox::sim::config::{PoolSpec, VmSpec};
use serde_json::Value;

#[tokio::test]
async fn resources_lag_for_status_name_template_but_not_lock_and_tags() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 1.0;
    scenario.timings.resources_staleness = 1.5;
    scenario.timings.clone_linked = 0.1;
    scenario.timings.start = 0.1;
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let find = |vms: Vec<fleeting_plugin_proxmox::pve::VmResource>| {
        vms.into_iter().find(|vm| vm.vmid == Vmid(250)).expect("VM 250 is listed")
    };

    let request = CloneRequest { new_vmid: Some(Vmid(250)), pool: Some("ci".into()), ..Default::default() };
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    let fresh = find(pve.cluster_vms().await.unwrap());
    assert_eq!(fresh.status.as_deref(), Some("unknown"), "pvestatd has not seen the new guest yet");
    assert_eq!(fresh.name, None);
    assert_eq!(fresh.tags, ["ci", "template"], "tags come from the config");
    assert_eq!(fresh.pool.as_deref(), Some("ci"));

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let settled = find(pve.cluster_vms().await.unwrap());
    assert_eq!(settled.status.as_deref(), Some("stopped"));
    assert_eq!(settled.name.as_deref(), Some("Copy-of-VM-debian-12-ci"));

    let update =
        ConfigUpdate { name: Some("runner-250".into()), tags: Some(vec!["busy".into()]), ..Default::default() };
    pve.update_vm_config("pve1", Vmid(250), &update).await.unwrap();
    wait(&pve, &pve.start_vm("pve1", Vmid(250)).await.unwrap()).await.unwrap();
    sim.admin().set_config_lock(250, Some("backup")).unwrap();
    let lagging = find(pve.cluster_vms().await.unwrap());
    assert_eq!(lagging.status.as_deref(), Some("stopped"), "status lags");
    assert_eq!(lagging.name.as_deref(), Some("Copy-of-VM-debian-12-ci"), "name lags");
    assert_eq!(lagging.tags, ["busy"], "tags are current");
    assert_eq!(lagging.lock.as_deref(), Some("backup"), "lock is current");
    assert_eq!(pve.vm_status("pve1", Vmid(250)).await.unwrap().status, "running", "status/current is current");

    tokio::time::sleep(Duration::from_millis(1600)).await;
    let caught_up = find(pve.cluster_vms().await.unwrap());
    assert_eq!(caught_up.status.as_deref(), Some("running"));
    assert_eq!(caught_up.name.as_deref(), Some("runner-250"));
}

#[tokio::test]
async fn an_offline_node_is_unknown_and_unreachable() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    sim.admin().set_node_online("pve1", false).unwrap();
    let template = pve.cluster_vms().await.unwrap().into_iter().find(|vm| vm.vmid == Vmid(9000)).unwrap();
    assert_eq!(template.status.as_deref(), Some("unknown"));
    let err = pve.vm_status("pve1", Vmid(9000)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transient { .. }), "{err}");
    assert!(err.to_string().contains("No route to host"), "{err}");
    let nodes: Value = raw_client()
        .get(format!("{}/nodes", sim.api_url()))
        .header("Authorization", token_header())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let pve1 = nodes["data"].as_array().unwrap().iter().find(|n| n["node"] == "pve1").unwrap();
    assert_eq!(pve1["status"], "offline");
    sim.admin().set_node_online("pve1", true).unwrap();
    assert_eq!(pve.vm_status("pve1", Vmid(9000)).await.unwrap().status, "stopped");
}

#[tokio::test]
async fn pools_answer_with_the_api_of_the_release() {
    let mut scenario = fast_scenario();
    scenario.pools.push(PoolSpec {
        id: "other".into(),
        comment: Some("runners \"A\"".into()),
        storages: vec!["local-lvm".into()],
    });
    scenario.pools.push(PoolSpec { id: "bare".into(), ..Default::default() });
    let sim = start(scenario.clone()).await;
    let root = root_client(&sim);
    let members = root.pool_members("ci").await.unwrap();
    assert_eq!(members.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["qemu/9000"]);
    assert_eq!(members[0].vmid, Some(Vmid(9000)));

    // 8.1+: PUT /pools moves a VM only with allow-move.
    let (cookie, csrf) = root_ticket(&sim).await;
    let put = |form: &'static [(&'static str, &'static str)]| {
        raw_client()
            .put(format!("{}/pools", sim.api_url()))
            .header("Cookie", &cookie)
            .header("CSRFPreventionToken", &csrf)
            .form(form)
            .send()
    };
    let response = put(&[("poolid", "other"), ("vms", "9000")]).await.unwrap();
    assert_eq!(reason(&response), "VM 9000 belongs already to pool 'ci' and 'allow-move' is not set");
    assert_eq!(put(&[("poolid", "other"), ("vms", "9000"), ("allow-move", "1")]).await.unwrap().status(), 200);
    assert_eq!(sim.admin().vm(9000).unwrap().pool.as_deref(), Some("other"));
    assert!(root.pool_members("ci").await.unwrap().is_empty());

    // The pool object around its members: `comment` (absent when unset),
    // `members` (guests, then each storage per node), and `poolid` in the
    // 8.1+ query form; `type` filters the members.
    let get = |query: &'static str| {
        let url = format!("{}/{query}", sim.api_url());
        let request = raw_client().get(url).header("Cookie", &cookie);
        async move { request.send().await.unwrap().json::<Value>().await.unwrap()["data"].clone() }
    };
    let queried = get("pools?poolid=other").await;
    let pool = &queried[0];
    assert_eq!(pool["poolid"], "other");
    assert_eq!(pool["comment"], "runners \"A\"");
    let ids: Vec<&str> = pool["members"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["qemu/9000", "storage/pve1/local-lvm", "storage/pve2/local-lvm"]);
    assert_eq!(pool["members"][0]["pool"], "other");
    assert_eq!(pool["members"][1]["shared"], 0);
    let by_path = get("pools/other").await;
    assert_eq!(by_path["comment"], pool["comment"]);
    assert_eq!(by_path["members"].as_array().unwrap().len(), 3);
    assert!(by_path.get("poolid").is_none(), "the per-id form names no pool: {by_path}");
    let storages = get("pools/other?type=storage").await;
    assert_eq!(storages["members"].as_array().unwrap().len(), 2);
    let empty = get("pools?poolid=bare&type=qemu").await;
    assert!(empty[0].get("comment").is_none(), "an unset comment is left out: {empty}");
    assert_eq!(empty[0]["members"], serde_json::json!([]));

    // 8.0: only the per-id forms exist.
    scenario.pve_version = "8.0.4".into();
    let old = start(scenario).await;
    let root = root_client(&old);
    assert_eq!(root.pool_members("ci").await.unwrap()[0].id, "qemu/9000", "the client falls back to /pools/{{poolid}}");
    let (cookie, csrf) = root_ticket(&old).await;
    let response =
        raw_client().get(format!("{}/pools?poolid=ci", old.api_url())).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), 400);
    let response = raw_client()
        .put(format!("{}/pools", old.api_url()))
        .header("Cookie", &cookie)
        .header("CSRFPreventionToken", &csrf)
        .form(&[("poolid", "ci"), ("vms", "9000")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 501);
    assert_eq!(reason(&response), "Method 'PUT /pools' not implemented");
}

/// A real PVE filters `/cluster/resources` per caller on every call; the
/// simulator keeps serialised answers, which must never leak across callers
/// or outlive a change.
#[tokio::test]
async fn kept_answers_stay_per_caller_and_follow_changes() {
    let mut scenario = fast_scenario();
    let mut outside = scenario.vms[0].clone();
    outside.vmid = 700;
    outside.template = false;
    outside.pool = None;
    outside.config.insert("scsi0".into(), "local-lvm:vm-700-disk-0,size=8G".into());
    outside.config.insert("ide2".into(), "local-lvm:vm-700-cloudinit,media=cdrom".into());
    outside.config.remove("net0");
    scenario.vms.push(outside);
    let sim = start(scenario).await;
    let (token, root) = (token_client(&sim), root_client(&sim));
    let vmids =
        |vms: Vec<fleeting_plugin_proxmox::pve::VmResource>| vms.into_iter().map(|vm| vm.vmid.0).collect::<Vec<_>>();

    let before = sim.admin().counters();
    for _ in 0..3 {
        assert_eq!(vmids(token.cluster_vms().await.unwrap()), [9000], "the pool's token sees its pool only");
        assert_eq!(vmids(root.cluster_vms().await.unwrap()), [700, 9000], "root sees everything");
    }
    let after = sim.admin().counters();
    assert_eq!(after.resources_answers_built - before.resources_answers_built, 2, "one answer per caller");
    assert_eq!(after.resources_answers_reused - before.resources_answers_reused, 4, "then kept");

    sim.admin().set_config_lock(9000, Some("backup")).unwrap();
    let template = token.cluster_vms().await.unwrap().into_iter().find(|vm| vm.vmid == Vmid(9000)).unwrap();
    assert_eq!(template.lock.as_deref(), Some("backup"), "a change shows at once");
}

/// The default cluster plus `count` stopped VMs in pool `ci`.
pub fn many_vms(count: u32) -> Scenario {
    let mut scenario = fast_scenario();
    let template = scenario.vms[0].clone();
    for index in 0..count {
        let vmid = 10_000 + index;
        let mut config = template.config.clone();
        config.insert("name".into(), format!("runner-{vmid}"));
        config.insert("scsi0".into(), format!("local-lvm:vm-{vmid}-disk-0,size=8G"));
        config.insert("ide2".into(), format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom"));
        config.remove("net0");
        config.insert("net0".into(), "virtio,bridge=vmbr0".into());
        scenario.vms.push(VmSpec {
            vmid,
            node: if index % 2 == 0 { "pve1" } else { "pve2" }.into(),
            pool: Some("ci".into()),
            config,
            running: index % 3 == 0,
            ..VmSpec::default()
        });
    }
    scenario
}

#[tokio::test]
async fn two_thousand_vms_in_one_pool() {
    let sim = start(many_vms(2000)).await;
    let pve = token_client(&sim);
    let vms = pve.cluster_vms().await.unwrap();
    assert_eq!(vms.len(), 2001);
    assert!(vms.iter().all(|vm| vm.pool.as_deref() == Some("ci")));
    let running = vms.iter().filter(|vm| vm.status.as_deref() == Some("running")).count();
    assert_eq!(running, 667);
    let macs: std::collections::BTreeSet<String> =
        sim.admin().inventory().vms.iter().map(|vm| vm.config["net0"].clone()).collect();
    assert_eq!(macs.len(), 2001, "every NIC has its own MAC");
    assert_eq!(pve.next_vmid(None).await.unwrap(), Vmid(100));
}
