//! VMs and their tasks, in the form "a real PVE answers this request like
//! this": VMID allocation, linked and full clones with their locks, power
//! actions, destroy with `purge` and `destroy-unreferenced-disks`, orphaned
//! disks, config updates (tags, sshkeys, digest), UPIDs and task logs.

#[path = "sim/common.rs"]
mod common;

use common::*;
use fleeting_plugin_proxmox::pve::{CloneRequest, ConfigUpdate, ErrorKind, PveClient, Upid, Vmid};
use fleeting_plugin_proxmox::sim::{FaultRule, Scenario};
use serde_json::Value;

fn into_pool(vmid: u32) -> CloneRequest {
    CloneRequest { new_vmid: Some(Vmid(vmid)), pool: Some("ci".into()), ..Default::default() }
}

/// Clones the template as root (full) and starts the copy.
async fn running_vm(pve: &PveClient, vmid: u32) {
    let request =
        CloneRequest { new_vmid: Some(Vmid(vmid)), full: Some(true), pool: Some("ci".into()), ..Default::default() };
    wait(pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    wait(pve, &pve.start_vm("pve1", Vmid(vmid)).await.unwrap()).await.unwrap();
}

fn task_error(err: &fleeting_plugin_proxmox::pve::Error) -> String {
    match err.kind() {
        ErrorKind::TaskFailed { exit_status, .. } => exit_status.clone(),
        other => panic!("expected a failed task, got {other:?}"),
    }
}

#[tokio::test]
async fn a_clone_is_locked_until_its_task_ends_then_joins_the_pool() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 10.0;
    scenario.timings.clone_linked = 20.0; // two real seconds
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(200)).await.unwrap();
    assert_eq!((upid.node.as_str(), upid.task_type.as_str(), upid.id.as_str()), ("pve1", "qmclone", "9000"));
    assert_eq!(upid.user, "fleeting@pve!ci");

    let during = admin.vm(200).expect("the config exists while cloning");
    assert_eq!(during.lock.as_deref(), Some("clone"));
    assert_eq!(during.pool, None, "the pool is joined at the end");
    let listed = pve.cluster_vms().await.unwrap();
    assert!(listed.iter().all(|vm| vm.vmid != Vmid(200)), "not in the pool yet, so not visible to the pool's token");
    let root = root_client(&sim);
    let seen = root.cluster_vms().await.unwrap().into_iter().find(|vm| vm.vmid == Vmid(200)).unwrap();
    assert_eq!(seen.lock.as_deref(), Some("clone"), "lock is current in /cluster/resources");
    let err = root
        .update_vm_config("pve1", Vmid(200), &ConfigUpdate { name: Some("x".into()), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.is_locked(), "{err}");
    assert!(err.to_string().contains("VM is locked (clone)"), "{err}");
    let start = root.start_vm("pve1", Vmid(200)).await.unwrap();
    assert_eq!(task_error(&wait(&root, &start).await.unwrap_err()), "VM is locked (clone)");

    wait(&pve, &upid).await.unwrap();
    let after = admin.vm(200).unwrap();
    assert_eq!(after.lock, None);
    assert_eq!(after.pool.as_deref(), Some("ci"));
    assert_eq!(after.name.as_deref(), Some("Copy-of-VM-debian-12-ci"));
    assert!(!after.template);
    assert_eq!(after.tags, ["ci", "template"], "tags are inherited");
    assert_eq!(after.config["scsi0"], "local-lvm:vm-200-disk-0,iothread=1,size=8G");
    assert_eq!(after.config["ide2"], "local-lvm:vm-200-cloudinit,media=cdrom");
    let template_mac = &admin.vm(9000).unwrap().config["net0"];
    assert_ne!(&after.config["net0"], template_mac, "MACs are regenerated");
    assert!(after.config["net0"].starts_with("virtio=BC:24:11:"), "{}", after.config["net0"]);

    let log = pve.task_log_tail(&upid, 50).await.unwrap();
    // Drives in PVE's order (ide, sata, scsi, virtio); cloud-init is always copied.
    assert_eq!(log[0], "create full clone of drive ide2 (local-lvm:vm-9000-cloudinit)");
    assert_eq!(log[1], "create linked clone of drive scsi0 (local-lvm:base-9000-disk-0)");
    assert_eq!(log.last().unwrap(), "TASK OK");
}

#[tokio::test]
async fn nextid_reserves_nothing_and_a_taken_vmid_fails_the_clone() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let first = pve.next_vmid(None).await.unwrap();
    assert_eq!(pve.next_vmid(None).await.unwrap(), first, "asking twice gives the same id");
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(first.0)).await.unwrap();
    let err = pve.clone_vm("pve1", Vmid(9000), &into_pool(first.0)).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert!(err.to_string().contains(&format!("unable to create VM {first}: config file already exists")), "{err}");
    wait(&pve, &upid).await.unwrap();
    let err = pve.next_vmid(Some(first)).await.unwrap_err();
    assert!(err.is_already_exists(), "{err}");
    assert!(err.to_string().contains(&format!("VM {first} already exists")), "{err}");
    assert_eq!(pve.next_vmid(Some(Vmid(777))).await.unwrap(), Vmid(777));
    assert_eq!(pve.next_vmid(None).await.unwrap(), Vmid(first.0 + 1));
}

#[tokio::test]
async fn template_clones_run_in_parallel_but_a_running_source_serialises() {
    let mut scenario = fast_scenario();
    scenario.timings.clone_full = 60.0; // 1.2 real seconds, far beyond the 1 s lock timeout
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let clones = futures::future::join_all((210..215).map(|vmid| {
        let pve = pve.clone();
        async move {
            let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(vmid)).await?;
            wait(&pve, &upid).await
        }
    }))
    .await;
    assert!(clones.iter().all(Result::is_ok), "{clones:?}");

    running_vm(&pve, 300).await;
    let full = |vmid: u32| CloneRequest {
        new_vmid: Some(Vmid(vmid)),
        full: Some(true),
        pool: Some("ci".into()),
        ..Default::default()
    };
    let first = pve.clone_vm("pve1", Vmid(300), &full(301)).await.unwrap();
    let second = pve.clone_vm("pve1", Vmid(300), &full(302)).await.unwrap();
    let results = [wait(&pve, &first).await, wait(&pve, &second).await];
    let failures: Vec<String> = results.iter().filter_map(|r| r.as_ref().err()).map(task_error).collect();
    assert_eq!(failures, ["can't lock file '/var/lock/qemu-server/lock-300.conf' - got timeout"], "{results:?}");

    let linked = CloneRequest { full: Some(false), ..into_pool(303) };
    let err = pve.clone_vm("pve1", Vmid(300), &linked).await.unwrap_err();
    assert!(
        err.to_string().contains("Linked clone feature is not supported for 'local-lvm:vm-300-disk-0' (scsi0)"),
        "{err}"
    );
    let request = CloneRequest { full: Some(false), storage: Some("local-lvm".into()), ..into_pool(304) };
    let err = pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap_err();
    assert!(err.to_string().contains("parameter 'storage' not allowed for linked clones"), "{err}");
}

#[tokio::test]
async fn thick_lvm_cannot_linked_clone() {
    let mut scenario = fast_scenario();
    scenario.storages.push(fleeting_plugin_proxmox::sim::config::StorageSpec {
        id: "thick".into(),
        kind: "lvm".into(),
        ..Default::default()
    });
    let template = &mut scenario.vms[0];
    template.config.insert("scsi0".into(), "thick:base-9000-disk-0,size=8G".into());
    let sim = start(scenario).await;
    let pve = root_client(&sim);
    let err = pve.clone_vm("pve1", Vmid(9000), &into_pool(220)).await.unwrap_err();
    assert!(
        err.to_string().contains("Linked clone feature is not supported for 'thick:base-9000-disk-0' (scsi0)"),
        "{err}"
    );
    let full = CloneRequest { full: Some(true), ..into_pool(220) };
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &full).await.unwrap()).await.unwrap();
    assert_eq!(sim.admin().vm(220).unwrap().config["scsi0"], "thick:vm-220-disk-0,size=8G");
}

#[tokio::test]
async fn power_actions_and_delete_follow_pve() {
    let mut scenario = fast_scenario();
    scenario.timings.shutdown = 30.0;
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    running_vm(&pve, 230).await;
    let status = pve.vm_status("pve1", Vmid(230)).await.unwrap();
    assert_eq!((status.status.as_str(), status.qmpstatus.as_deref()), ("running", Some("running")));
    assert!(status.agent_enabled);

    let err = pve.delete_vm("pve1", Vmid(230)).await.unwrap_err();
    assert!(err.to_string().contains("VM 230 is running - destroy failed"), "{err}");
    let again = pve.start_vm("pve1", Vmid(230)).await.unwrap();
    assert_eq!(task_error(&wait(&pve, &again).await.unwrap_err()), "VM 230 already running");

    // A shutdown longer than its timeout: an error, or with forceStop a
    // hard stop that ends with warnings (success).
    let upid = pve.shutdown_vm("pve1", Vmid(230), std::time::Duration::from_secs(5), false).await.unwrap();
    assert_eq!(task_error(&wait(&pve, &upid).await.unwrap_err()), "VM quit/powerdown failed - got timeout");
    let upid = pve.shutdown_vm("pve1", Vmid(230), std::time::Duration::from_secs(5), true).await.unwrap();
    let outcome = pve.wait_task(&upid, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(outcome.warnings, 1);
    assert_eq!(pve.vm_status("pve1", Vmid(230)).await.unwrap().status, "stopped");

    let template = pve.start_vm("pve1", Vmid(9000)).await.unwrap();
    assert_eq!(task_error(&wait(&pve, &template).await.unwrap_err()), "you can't start a vm if it's a template");

    wait(&pve, &pve.delete_vm("pve1", Vmid(230)).await.unwrap()).await.unwrap();
    assert!(sim.admin().vm(230).is_none());
    let err = root_client(&sim).vm_status("pve1", Vmid(230)).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(sim.admin().inventory().orphaned_disks.is_empty());
}

#[tokio::test]
async fn purge_and_unreferenced_disks_behave_as_in_pve() {
    let mut scenario: Scenario = fast_scenario();
    let mut ha_vm = scenario.vms[0].clone();
    ha_vm.vmid = 500;
    ha_vm.template = false;
    ha_vm.ha = true;
    ha_vm.config.insert("scsi0".into(), "local-lvm:vm-500-disk-0,size=8G".into());
    ha_vm.config.insert("ide2".into(), "local-lvm:vm-500-cloudinit,media=cdrom".into());
    scenario.vms.push(ha_vm);
    let sim = start(scenario).await;
    let pve = root_client(&sim);
    let (cookie, csrf) = root_ticket(&sim).await;
    let http = raw_client();
    let delete = |vmid: u32, query: &'static str| {
        http.delete(format!("{}/nodes/pve1/qemu/{vmid}?{query}", sim.api_url()))
            .header("Cookie", &cookie)
            .header("CSRFPreventionToken", &csrf)
            .send()
    };
    let response = delete(500, "").await.unwrap();
    assert_eq!(reason(&response), "unable to remove VM 500 - used in HA resources and purge parameter not set.");
    let upid: Value = delete(500, "purge=1").await.unwrap().json().await.unwrap();
    let upid: Upid = upid["data"].as_str().unwrap().parse().unwrap();
    wait(&pve, &upid).await.unwrap();
    let log = pve.task_log_tail(&upid, 50).await.unwrap();
    assert!(log.contains(&"NOTE: removed VM 500 from HA resource configuration.".to_string()), "{log:?}");

    // An orphan named for VMID 600: the new VM's disk takes the next name,
    // and a destroy without destroy-unreferenced-disks leaves the orphan.
    let admin = sim.admin();
    assert_eq!(admin.add_orphaned_disk("local-lvm", 600).unwrap(), "local-lvm:vm-600-disk-0");
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(600)).await.unwrap()).await.unwrap();
    assert_eq!(admin.vm(600).unwrap().config["scsi0"], "local-lvm:vm-600-disk-1,iothread=1,size=8G");
    let upid: Value = delete(600, "purge=1").await.unwrap().json().await.unwrap();
    wait(&pve, &upid["data"].as_str().unwrap().parse().unwrap()).await.unwrap();
    let orphans: Vec<String> = admin.inventory().orphaned_disks.into_iter().map(|d| d.volid).collect();
    assert_eq!(orphans, ["local-lvm:vm-600-disk-0"]);
    // With destroy-unreferenced-disks (the project's client always sends it) it goes too.
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(600)).await.unwrap()).await.unwrap();
    wait(&pve, &pve.delete_vm("pve1", Vmid(600)).await.unwrap()).await.unwrap();
    assert!(admin.inventory().orphaned_disks.is_empty());
}

#[tokio::test]
async fn a_failed_clone_cleans_up_unless_it_crashed() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
    });
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(610)).await.unwrap();
    assert_eq!(
        task_error(&wait(&pve, &upid).await.unwrap_err()),
        "clone failed: command 'qemu-img convert' failed: exit code 1"
    );
    assert!(admin.vm(610).is_none(), "the config is removed");
    assert!(admin.inventory().orphaned_disks.is_empty(), "and the volumes");

    // A crash mid-clone leaves disks; a recycled VMID then collides on the
    // cloud-init volume, whose name is fixed.
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        leave_orphans: true,
        task_error: Some("node crashed".into()),
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
    });
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(611)).await.unwrap();
    assert_eq!(task_error(&wait(&pve, &upid).await.unwrap_err()), "clone failed: node crashed");
    let orphans: Vec<String> = admin.inventory().orphaned_disks.into_iter().map(|d| d.volid).collect();
    assert_eq!(orphans, ["local-lvm:vm-611-cloudinit", "local-lvm:vm-611-disk-0"]);
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(611)).await.unwrap();
    assert_eq!(
        task_error(&wait(&pve, &upid).await.unwrap_err()),
        "clone failed: lvcreate 'pve/vm-611-cloudinit' error:   Logical Volume \"vm-611-cloudinit\" already exists in volume group \"pve\""
    );
}

#[tokio::test]
async fn config_updates_normalise_tags_and_keep_sshkeys_encoded() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(620)).await.unwrap()).await.unwrap();
    let before = pve.vm_config("pve1", Vmid(620)).await.unwrap();
    let update = ConfigUpdate {
        tags: Some(vec!["Zeta".into(), "alpha".into(), "beta".into(), "alpha".into()]),
        ssh_public_keys: Some("ssh-ed25519 AAAA me@host\n".into()),
        ipconfig0: Some("ip=10.10.10.50/24,gw=10.10.10.1".into()),
        ciuser: Some("runner".into()),
        delete: vec!["description".into()],
        digest: Some(before["digest"].clone()),
        ..Default::default()
    };
    pve.update_vm_config("pve1", Vmid(620), &update).await.unwrap();
    let after = pve.vm_config("pve1", Vmid(620)).await.unwrap();
    assert_eq!(after["tags"], "alpha;beta;zeta");
    assert_eq!(after["sshkeys"], "ssh-ed25519%20AAAA%20me%40host%0A", "returned still percent-encoded");
    assert_eq!(after["ciuser"], "runner");
    assert!(!after.contains_key("description"));
    let listed = pve.cluster_vms().await.unwrap().into_iter().find(|vm| vm.vmid == Vmid(620)).unwrap();
    assert_eq!(listed.tags, ["alpha", "beta", "zeta"], "tags are current in /cluster/resources");

    let stale =
        ConfigUpdate { name: Some("late".into()), digest: Some(before["digest"].clone()), ..Default::default() };
    let err = pve.update_vm_config("pve1", Vmid(620), &stale).await.unwrap_err();
    assert!(
        err.to_string().contains("detected modified configuration - file changed by other user? Try again."),
        "{err}"
    );

    let response = raw_client()
        .put(format!("{}/nodes/pve1/qemu/620/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("tags", "owner:alice"), ("lock", "backup")])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["tags"], "invalid format - invalid characters in tag\n");
    let response = raw_client()
        .put(format!("{}/nodes/pve1/qemu/620/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("lock", "backup")])
        .send()
        .await
        .unwrap();
    assert_eq!(reason(&response), "only root can set 'lock' config");
    let response = raw_client()
        .put(format!("{}/nodes/pve1/qemu/620/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("name", "x"), ("skiplock", "1")])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"]["skiplock"], "Only root may use this option.");
}

#[tokio::test]
async fn tasks_are_listed_and_can_be_stopped() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 10.0;
    scenario.timings.clone_linked = 600.0;
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let upid = pve.clone_vm("pve1", Vmid(9000), &into_pool(630)).await.unwrap();
    assert!(pve.task_status(&upid).await.unwrap().running);
    let active = Some(fleeting_plugin_proxmox::pve::api::types::GetNodesNodeTasksSource::Active);
    let listed =
        pve.api().get_nodes_node_tasks("pve1", None, None, None, active, None, None, None, None, None, None).await;
    let listed = listed.unwrap().into_inner();
    assert_eq!(listed.data.len(), 1);
    assert_eq!(listed.data[0].upid.as_deref(), Some(upid.to_string().as_str()));
    pve.api().delete_nodes_node_tasks_upid("pve1", &upid.to_string()).await.unwrap();
    assert_eq!(task_error(&wait(&pve, &upid).await.unwrap_err()), "clone failed: interrupted by signal");
    assert!(sim.admin().vm(630).is_none(), "the interrupted clone cleaned up");
    let err = pve
        .task_status(&"UPID:pve1:00000001:00000001:00000001:qmclone:9000:root@pam:".parse().unwrap())
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn an_empty_vm_is_created_in_a_pool_with_the_pools_privileges_and_frees_orphans_when_destroyed() {
    use fleeting_plugin_proxmox::pve::EmptyVmRequest;
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    let leftovers = admin.add_crashed_clone_leftovers("local-lvm", 300).unwrap();
    let request = EmptyVmRequest {
        vmid: Vmid(300),
        name: Some("holder".into()),
        description: Some("marker".into()),
        pool: Some("ci".into()),
    };
    // Without the pool, VM.Allocate on /vms/300 is needed, which the token lacks.
    let err = pve.create_empty_vm("pve1", &EmptyVmRequest { pool: None, ..request.clone() }).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PermissionDenied { .. }), "{err}");
    let upid = pve.create_empty_vm("pve1", &request).await.unwrap();
    assert_eq!((upid.task_type.as_str(), upid.id.as_str()), ("qmcreate", "300"));
    wait(&pve, &upid).await.unwrap();
    let created = admin.vm(300).unwrap();
    assert_eq!((created.pool.as_deref(), created.config.get("name").map(String::as_str)), (Some("ci"), Some("holder")));
    // The VMID is taken now: a second create says so in the request.
    let err = pve.create_empty_vm("pve1", &request).await.unwrap_err();
    assert!(err.to_string().contains("unable to create VM 300: config file already exists"), "{err}");
    // Destroyed with destroy-unreferenced-disks, the VMID's leftovers go with it.
    assert_eq!(admin.inventory().orphaned_disks.len(), leftovers.len());
    wait(&pve, &pve.delete_vm("pve1", Vmid(300)).await.unwrap()).await.unwrap();
    assert!(admin.inventory().orphaned_disks.is_empty());
}

#[tokio::test]
async fn a_disk_grows_but_never_shrinks_and_a_cdrom_is_refused() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(301)).await.unwrap()).await.unwrap();
    // 8G → +2G → 10G; then 12G absolute.
    let task = pve.resize_disk("pve1", Vmid(301), "scsi0", "+2G").await.unwrap().expect("9.x resizes in a task");
    assert_eq!(task.task_type, "qmresize");
    wait(&pve, &task).await.unwrap();
    assert!(admin.vm(301).unwrap().config["scsi0"].ends_with("size=10G"), "{:?}", admin.vm(301).unwrap().config);
    wait(&pve, &pve.resize_disk("pve1", Vmid(301), "scsi0", "12G").await.unwrap().unwrap()).await.unwrap();
    assert!(admin.vm(301).unwrap().config["scsi0"].ends_with("size=12G"));
    let err = pve.resize_disk("pve1", Vmid(301), "scsi0", "4G").await.unwrap_err();
    assert!(err.to_string().contains("shrinking disks is not supported"), "{err}");
    let err = pve.resize_disk("pve1", Vmid(301), "ide2", "+1G").await.unwrap_err();
    assert!(err.to_string().contains("you can't resize a cdrom"), "{err}");
    let err = pve.resize_disk("pve1", Vmid(301), "scsi5", "+1G").await.unwrap_err();
    assert!(err.to_string().contains("disk 'scsi5' does not exist"), "{err}");
}

#[tokio::test]
async fn pve_7_resizes_in_the_request() {
    let mut scenario = fast_scenario();
    scenario.pve_version = "7.4.17".into();
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &into_pool(302)).await.unwrap()).await.unwrap();
    assert_eq!(pve.resize_disk("pve1", Vmid(302), "scsi0", "+1G").await.unwrap(), None);
    assert!(sim.admin().vm(302).unwrap().config["scsi0"].ends_with("size=9G"));
}
