//! The Proxmox instance group under faults, against the simulator: an agent
//! that never comes up, held locks on delete, a 30 s API outage, a missing
//! privilege, a crash mid-provision, other address families, target nodes.
//! Every test also proves that the template and the foreign VMs in the pool
//! were left alone.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use engine_setup::*;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::FaultRule;
use fleeting_plugin_proxmox::sim::config::{AclSpec, StorageSpec, defaults};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_that_never_comes_up_is_cleaned_up_at_its_deadline() {
    let mut scenario = fast_scenario();
    // A broken image: clones inherit an agent that never answers.
    scenario.vms[0].agent.never_up = true;
    let mut setup = setup(scenario).await;
    setup.config["boot_timeout"] = "4s".into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let started = Instant::now();
    assert_eq!(group.increase(5).await.unwrap().succeeded, 5);
    let creating = states(&group).await;
    assert!(creating.iter().all(|(_, s)| *s == InstanceState::Creating), "{creating:?}");
    wait_until(&group, "all removed after boot_timeout", |s| s.is_empty()).await;
    assert!(started.elapsed() >= Duration::from_secs(4), "removed before its deadline: {:?}", started.elapsed());
    setup.assert_no_leaks();
    // Five failures of one cause: the next scale-up waits and says why.
    let blocked = group.increase(1).await.unwrap();
    assert_eq!(blocked.succeeded, 0);
    assert!(blocked.failures[0].to_string().contains("boot_timeout"), "{:?}", blocked.failures);
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_vm_is_deleted_once_the_lock_is_released() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    let (id, _) = &running[0];
    let vmid = vmid_of(id);
    let admin = setup.sim.admin();
    // A backup holds the VM: stop and destroy answer "VM is locked (backup)".
    admin.set_config_lock(vmid, Some("backup")).unwrap();
    admin.reset_counters();
    assert_eq!(group.decrease(vec![id.clone()]).await.unwrap().succeeded, std::slice::from_ref(id));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(admin.vm(vmid).is_some(), "deleted through a lock");
    let refused = admin.counters().by_status.get(&500).copied().unwrap_or(0);
    assert!(refused >= 2, "the locked deletion was retried: {:?}", admin.counters().by_status);
    assert_eq!(states(&group).await, [(id.clone(), InstanceState::Deleting)]);
    admin.set_config_lock(vmid, None).unwrap();
    wait_until(&group, "deleted after the lock", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_api_outage_are_survived() {
    let mut scenario = fast_scenario();
    // Slow enough that the outage hits instances in every step.
    scenario.timings.boot = 100.0;
    let setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(2).await.unwrap();
    wait_until(&group, "2 running", all_running(2)).await;
    assert_eq!(group.increase(3).await.unwrap().succeeded, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let admin = setup.sim.admin();
    let outage = Duration::from_secs(30);
    admin.make_unreachable(outage.as_secs_f64() * 50.0);
    let went_down = Instant::now();
    // Runner keeps calling Update; each fails with a clear error meanwhile.
    let err = group.update().await.unwrap_err().to_string();
    assert!(err.contains("could not list the cluster's resources"), "{err}");
    while went_down.elapsed() < outage {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let _ = group.update().await;
    }
    // After it: the instances in flight finish, nothing is lost or doubled.
    let running = wait_until(&group, "5 running after the outage", all_running(5)).await;
    assert_eq!(setup.leftovers().len(), 5, "exactly the five instances exist: {:?}", setup.leftovers());
    let ids = running.into_iter().map(|(id, _)| id).collect();
    group.decrease(ids).await.unwrap();
    wait_until(&group, "all removed", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_privilege_names_the_privilege_and_the_path() {
    let mut scenario = fast_scenario();
    // PVEVMAdmin without VM.Clone.
    let role: Vec<String> = [
        "VM.Allocate",
        "VM.Audit",
        "VM.Config.CDROM",
        "VM.Config.CPU",
        "VM.Config.Cloudinit",
        "VM.Config.Disk",
        "VM.Config.HWType",
        "VM.Config.Memory",
        "VM.Config.Network",
        "VM.Config.Options",
        "VM.PowerMgmt",
        "VM.GuestAgent.Audit",
    ]
    .iter()
    .map(|p| p.to_string())
    .collect();
    scenario.roles.insert("FleetingNoClone".into(), role);
    let acl = scenario.acl.iter_mut().find(|acl| acl.path == "/pool/ci").unwrap();
    acl.roles = vec!["FleetingNoClone".into(), "PVEPoolUser".into()];
    let setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let admin = setup.sim.admin();
    admin.reset_counters();
    let answer = group.increase(1).await.unwrap();
    assert_eq!(answer.succeeded, 0);
    let message = answer.failures[0].to_string();
    assert!(message.contains("VM.Clone") && message.contains("/vms/9000"), "{message}");
    // Permanent: surfaced at once, not retried.
    let clones = admin.counters().by_operation.get("post_nodes_node_qemu_vmid_clone").copied().unwrap_or(0);
    assert_eq!(clones, 1, "a permission error is not retried");
    assert!(states(&group).await.is_empty());
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_adopts_ready_instances_and_removes_half_provisioned_ones() {
    let mut scenario = fast_scenario();
    scenario.timings.boot = 150.0; // 3 s of real time from start to agent
    let setup = setup(scenario).await;
    let admin = setup.sim.admin();
    let first = ProxmoxGroup::new();
    first.init(setup.config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    first.increase(2).await.unwrap();
    let ready = wait_until(&first, "2 running", all_running(2)).await;
    first.increase(2).await.unwrap();
    // Crash once the two new clones exist but have not booted yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let booting = admin
            .inventory()
            .vms
            .iter()
            .filter(|vm| vm.status == "running" && !vm.agent_running && vm.lock.is_none())
            .count();
        if booting == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "the new instances never reached boot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.shutdown().await.unwrap(); // background work stops as in a crash; nothing is deleted
    drop(first);
    assert_eq!(setup.leftovers().len(), 4);

    let second = ProxmoxGroup::new();
    second.init(setup.config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    let found = second.update().await.unwrap();
    // Found VMs are verified before Runner sees them.
    assert!(found.is_empty(), "nothing is reported before it is verified: {found:?}");
    // Without another Update: leftovers go, ready ones stay.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready_vmids: Vec<u32> = ready.iter().map(|(id, _)| vmid_of(id)).collect();
    while setup.leftovers() != ready_vmids {
        assert!(Instant::now() < deadline, "leftovers not removed: {:?}", setup.leftovers());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = wait_until(&second, "ready ones adopted", all_running(2)).await;
    assert_eq!(after, ready, "the ready instances are adopted with their ids");
    assert!(second.connect_info(&ready[0].0).await.is_ok(), "an adopted instance can be connected to");
    setup.assert_no_leaks_except(&ready_vmids);
    setup.assert_untouched();
    second.shutdown().await.unwrap();
}

async fn address_of(protocol: &str) -> IpAddr {
    let mut setup = setup(fast_scenario()).await;
    setup.config["instance_network_protocol"] = protocol.into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    let info = group.connect_info(&running[0].0).await.unwrap();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
    info.internal_addr.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_any_pick_addresses_of_that_family() {
    assert!(address_of("ipv4").await.is_ipv4());
    let v6 = address_of("ipv6").await;
    assert!(v6.is_ipv6() && !v6.to_string().starts_with("fe80"), "a global/ULA IPv6, not link-local: {v6}");
    let any = address_of("any").await;
    assert!(!any.is_loopback(), "{any}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_nodes_spread_clones_and_skip_an_offline_node() {
    let mut scenario = fast_scenario();
    add_node(&mut scenario, "pve3", 30);
    share_template_storage(&mut scenario);
    let mut setup = setup(scenario).await;
    setup.config["target_nodes"] = serde_json::json!(["pve2", "pve3"]);
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let on = |node: &str| admin.inventory().vms.iter().filter(|vm| vm.node == node && !vm.template).count();
    let answer = group.increase(4).await.unwrap();
    assert_eq!(answer.succeeded, 4, "{:?}", answer.failures);
    wait_until(&group, "4 running", all_running(4)).await;
    assert_eq!((on("pve2"), on("pve3")), (2, 2), "clones are balanced over the target nodes");

    // pve2 goes down: its clone fails, and it is skipped without Runner noticing.
    admin.set_node_online("pve2", false).unwrap();
    let answer = group.increase(2).await.unwrap();
    assert_eq!(answer.succeeded, 2, "{:?}", answer.failures);
    assert!(answer.failures.is_empty(), "{:?}", answer.failures);
    wait_until(&group, "6 running", |s| s.iter().filter(|(_, st)| *st == InstanceState::Running).count() == 6).await;
    assert_eq!(on("pve3"), 4, "the new clones went to pve3");
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_nodes_on_local_storage_are_refused_at_init_without_template_copies() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["target_nodes"] = serde_json::json!(["pve1", "pve2", "pve9"]);
    setup.config["template_stage_mode"] = "off".into();
    let group = ProxmoxGroup::new();
    let err = group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap_err().to_string();
    assert!(
        err.contains("`target_nodes` names pve9, which is not a node of this cluster (nodes: pve1, pve2)"),
        "{err}"
    );
    assert!(err.contains("only from shared storage"), "{err}");
    assert!(err.contains("template_stage_mode = \"auto\""), "the fix is named: {err}");
}

/// A UEFI template whose EFI disk sits on storage without linked clones
/// (thick LVM) beside a boot disk on LVM-thin: PVE refuses a linked clone
/// ("Linked clone feature is not supported"), so `clone_mode = auto` must
/// pick full clones from every disk, not just the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_clone_mode_weighs_every_disk_of_the_template() {
    let mut scenario = fast_scenario();
    scenario.storages.push(StorageSpec { id: "thick".into(), kind: "lvm".into(), ..StorageSpec::default() });
    scenario.vms[0].config.insert("efidisk0".into(), "thick:base-9000-disk-1,efitype=4m,size=4M".into());
    scenario.acl.push(AclSpec {
        path: "/storage/thick".into(),
        roles: vec!["PVEDatastoreUser".into()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        ..AclSpec::default()
    });
    let setup = setup(scenario).await;
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let answer = group.increase(2).await.unwrap();
    assert_eq!(answer.succeeded, 2, "{:?}", answer.failures);
    wait_until(&group, "2 running", all_running(2)).await;
    let clones: Vec<_> = admin.tasks().into_iter().filter(|task| task.task_type == "qmclone").collect();
    assert_eq!(clones.len(), 2, "each clone succeeded the first time: {clones:?}");
    for clone in &clones {
        assert!(
            clone.log.iter().any(|line| line == "create full clone of drive efidisk0 (thick:base-9000-disk-1)"),
            "{:?}",
            clone.log
        );
        assert!(!clone.log.iter().any(|line| line.contains("linked")), "{:?}", clone.log);
    }
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_info_takes_os_arch_and_protocol_from_the_template() {
    let mut scenario = fast_scenario();
    let template = &mut scenario.vms[0];
    template.config.insert("ostype".into(), "win11".into());
    template.config.insert("arch".into(), "aarch64".into());
    let setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    let settings = ConnectorSettings {
        username: "Administrator".into(),
        password: "pw".into(),
        use_static_credentials: true,
        ..Default::default()
    };
    group.init(setup.config.to_string().as_bytes(), settings).await.unwrap();
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    let info = group.connect_info(&running[0].0).await.unwrap();
    assert_eq!(
        (info.connector.os.as_str(), info.connector.arch.as_str(), info.connector.protocol.as_str()),
        ("windows", "arm64", "winrm")
    );
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_api_error_does_not_make_a_healthy_instance_unhealthy() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    let admin = setup.sim.admin();
    admin.add_fault(FaultRule {
        operation: "post_nodes_node_qemu_vmid_agent_ping".into(),
        error_rate: 1.0,
        status: 503,
        remaining: Some(2),
        ..Default::default()
    });
    group.heartbeat(&running[0].0).await.expect("two 503s are ridden out");
    admin.make_unreachable(5.0 * 50.0);
    group.heartbeat(&running[0].0).await.expect("an unreachable API is not an unhealthy instance");
    group.shutdown().await.unwrap();
}
