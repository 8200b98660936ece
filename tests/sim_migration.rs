//! Per-node template copies on local storage, as a real PVE (7.0–9.1)
//! answers each step: a full clone on the template's node, an offline
//! migration to another node, the conversion to a template there; local
//! volumes that belong to one node; every refusal with PVE's words; the
//! config digest that tells a changed template.

#[path = "sim/common.rs"]
mod common;

use common::*;
use fleeting_plugin_proxmox::pve::{
    CloneRequest, ConfigUpdate, Error, ErrorKind, MigrateRequest, PveClient, StorageResource, Upid, Vmid,
};
use fleeting_plugin_proxmox::sim::config::{NodeSpec, StorageSpec, VmSpec};
use fleeting_plugin_proxmox::sim::{FaultRule, Scenario};

const GIB: u64 = 1 << 30;

/// Three nodes, `local-lvm` (LVM-thin) on each, a shared NFS storage, a
/// directory `local` for ISO images and an LVM-thin pool that only pve1 has.
/// Template 9000 (8 GiB disk, cloud-init drive) is on pve1's `local-lvm`.
fn three_nodes() -> Scenario {
    let mut scenario = fast_scenario();
    let node = |name: &str, net: u8| NodeSpec {
        name: name.into(),
        subnet: format!("10.10.{net}.0/24"),
        subnet6: format!("fd00:10:10:{net}::/64"),
        ..NodeSpec::default()
    };
    scenario.nodes = vec![node("pve1", 10), node("pve2", 20), node("pve3", 30)];
    scenario.storages = vec![
        StorageSpec::default(),
        StorageSpec {
            id: "local".into(),
            kind: "dir".into(),
            content: "iso,vztmpl,backup,images,snippets".into(),
            total_gib: 256,
            ..StorageSpec::default()
        },
        StorageSpec { id: "shared".into(), kind: "nfs".into(), content: "images".into(), ..StorageSpec::default() },
        StorageSpec { id: "pve1-only".into(), nodes: vec!["pve1".into()], ..StorageSpec::default() },
    ];
    scenario
}

fn message(err: &Error) -> String {
    match err.kind() {
        ErrorKind::TaskFailed { exit_status, .. } => exit_status.clone(),
        _ => err.to_string(),
    }
}

fn to(target: &str) -> MigrateRequest {
    MigrateRequest { target: target.into(), ..MigrateRequest::default() }
}

/// A full clone of template 9000 onto pve1's `local-lvm`, in pool `ci`.
async fn local_copy(pve: &PveClient, vmid: u32) {
    let request = CloneRequest {
        new_vmid: Some(Vmid(vmid)),
        full: Some(true),
        storage: Some("local-lvm".into()),
        pool: Some("ci".into()),
        name: Some(format!("copy-{vmid}")),
        ..CloneRequest::default()
    };
    wait(pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
}

async fn volids(pve: &PveClient, node: &str, storage: &str) -> Vec<String> {
    let mut list: Vec<String> = pve.storage_images(node, storage).await.unwrap().into_iter().map(|v| v.volid).collect();
    list.sort();
    list
}

async fn storage_entry(pve: &PveClient, node: &str, storage: &str) -> StorageResource {
    pve.cluster_listing()
        .await
        .unwrap()
        .storages
        .into_iter()
        .find(|s| s.node == node && s.storage == storage)
        .unwrap_or_else(|| panic!("storage/{node}/{storage} is listed"))
}

async fn log_of(pve: &PveClient, upid: &Upid) -> Vec<String> {
    pve.task_log_tail(upid, 100).await.unwrap()
}

#[tokio::test]
async fn clones_to_another_node_are_refused_when_anything_is_on_local_storage() {
    let sim = start(three_nodes()).await;
    let root = root_client(&sim);
    let clone = |target: &str, storage: Option<&str>, full: bool| CloneRequest {
        new_vmid: Some(Vmid(300)),
        full: Some(full),
        storage: storage.map(str::to_string),
        target_node: Some(target.into()),
        ..CloneRequest::default()
    };
    // The template's disks are on pve1's local-lvm: not even a full clone onto shared storage.
    let err = root.clone_vm("pve1", Vmid(9000), &clone("pve2", None, false)).await.unwrap_err();
    assert!(message(&err).contains("can't clone VM to node 'pve2' (VM uses local storage)"), "{err}");
    let err = root.clone_vm("pve1", Vmid(9000), &clone("pve2", Some("shared"), true)).await.unwrap_err();
    assert!(message(&err).contains("can't clone VM to node 'pve2' (VM uses local storage)"), "{err}");
    // A target storage must be shared for a clone to another node, and exist there.
    let err = root.clone_vm("pve1", Vmid(9000), &clone("pve2", Some("local-lvm"), true)).await.unwrap_err();
    assert!(message(&err).contains("can't clone to non-shared storage 'local-lvm'"), "{err}");
    let err = root.clone_vm("pve1", Vmid(9000), &clone("pve2", Some("pve1-only"), true)).await.unwrap_err();
    assert!(message(&err).contains("storage 'pve1-only' is not available on node 'pve2'"), "{err}");

    // A VM on shared storage clones to other nodes, unless a CD-ROM image
    // (or any drive) is on local storage: qemu-server counts every drive.
    let mut scenario = three_nodes();
    let config = |extra: Option<(&str, &str)>| {
        let mut config = std::collections::BTreeMap::from([
            ("name".to_string(), "on-nfs".to_string()),
            ("scsi0".to_string(), "shared:base-9100-disk-0,size=4G".to_string()),
        ]);
        if let Some((key, value)) = extra {
            config.insert(key.into(), value.into());
        }
        config
    };
    scenario.vms.push(VmSpec {
        vmid: 9100,
        node: "pve1".into(),
        template: true,
        config: config(None),
        ..VmSpec::default()
    });
    scenario.vms.push(VmSpec {
        vmid: 9101,
        node: "pve1".into(),
        template: true,
        config: {
            let mut config = config(Some(("ide2", "local:iso/debian.iso,media=cdrom")));
            config.insert("scsi0".into(), "shared:base-9101-disk-0,size=4G".into());
            config
        },
        ..VmSpec::default()
    });
    let sim = start(scenario).await;
    let root = root_client(&sim);
    let linked =
        CloneRequest { new_vmid: Some(Vmid(310)), target_node: Some("pve3".into()), ..CloneRequest::default() };
    let upid = root.clone_vm("pve1", Vmid(9100), &linked).await.unwrap();
    wait(&root, &upid).await.unwrap();
    assert_eq!(sim.admin().vm(310).unwrap().node, "pve3");
    let linked =
        CloneRequest { new_vmid: Some(Vmid(311)), target_node: Some("pve3".into()), ..CloneRequest::default() };
    let err = root.clone_vm("pve1", Vmid(9101), &linked).await.unwrap_err();
    assert!(message(&err).contains("can't clone VM to node 'pve3' (VM uses local storage)"), "{err}");
}

#[tokio::test]
async fn clone_migrate_convert_makes_a_template_on_the_target_nodes_local_storage() {
    let mut scenario = three_nodes();
    scenario.time_scale = 10.0;
    scenario.timings.migrate = 20.0; // two real seconds
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    local_copy(&pve, 300).await;
    assert_eq!(
        volids(&pve, "pve1", "local-lvm").await,
        [
            "local-lvm:base-9000-disk-0",
            "local-lvm:vm-300-cloudinit",
            "local-lvm:vm-300-disk-0",
            "local-lvm:vm-9000-cloudinit",
        ]
    );
    assert!(volids(&pve, "pve2", "local-lvm").await.is_empty(), "pve2's local-lvm is another volume group");
    let used_before = (
        storage_entry(&pve, "pve1", "local-lvm").await.used.unwrap(),
        storage_entry(&pve, "pve2", "local-lvm").await.used.unwrap(),
    );
    assert_eq!(used_before.1, 0);

    let upid = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap();
    assert_eq!((upid.node.as_str(), upid.task_type.as_str(), upid.id.as_str()), ("pve1", "qmigrate", "300"));
    eventually("the migrate lock", || admin.vm(300).is_some_and(|vm| vm.lock.as_deref() == Some("migrate"))).await;
    let listed = pve.cluster_vms().await.unwrap().into_iter().find(|vm| vm.vmid == Vmid(300)).unwrap();
    assert_eq!(listed.lock.as_deref(), Some("migrate"), "the lock is visible in the listing");
    assert_eq!(listed.node, "pve1", "the config is still on the source while the disks copy");
    let err = pve.convert_to_template("pve1", Vmid(300)).await.unwrap_err();
    assert!(message(&err).contains("VM is locked (migrate)"), "{err}");
    wait(&pve, &upid).await.unwrap();

    let moved = admin.vm(300).unwrap();
    assert_eq!((moved.node.as_str(), moved.lock.as_deref()), ("pve2", None));
    assert_eq!(moved.config["scsi0"], "local-lvm:vm-300-disk-0,iothread=1,size=8G");
    assert_eq!(moved.config["ide2"], "local-lvm:vm-300-cloudinit,media=cdrom");
    let log = log_of(&pve, &upid).await;
    assert!(log.iter().any(|l| l.contains("starting migration of VM 300 to node 'pve2'")), "{log:?}");
    assert!(log.iter().any(|l| l == "found local disk 'local-lvm:vm-300-disk-0'"), "{log:?}");
    assert!(log.iter().any(|l| l == "found generated disk 'local-lvm:vm-300-cloudinit' (in current VM config)"));
    assert!(log.iter().any(|l| l.starts_with("migration finished successfully")), "{log:?}");
    assert_eq!(log.last().unwrap(), "TASK OK");
    let err = pve.vm_config("pve1", Vmid(300)).await.unwrap_err();
    assert!(err.to_string().contains("Configuration file 'nodes/pve1/qemu-server/300.conf' does not exist"), "{err}");
    eventually_listed_on(&pve, 300, "pve2").await;
    assert_eq!(volids(&pve, "pve2", "local-lvm").await, ["local-lvm:vm-300-cloudinit", "local-lvm:vm-300-disk-0"]);
    assert_eq!(volids(&pve, "pve1", "local-lvm").await, ["local-lvm:base-9000-disk-0", "local-lvm:vm-9000-cloudinit"]);
    let copied = 8 * GIB + (4 << 20);
    assert_eq!(storage_entry(&pve, "pve2", "local-lvm").await.used, Some(copied), "usage moved with the disks");
    assert_eq!(storage_entry(&pve, "pve1", "local-lvm").await.used, Some(used_before.0 - copied));
    assert_eq!(storage_entry(&pve, "pve3", "local-lvm").await.used, Some(0));

    let upid = pve.convert_to_template("pve2", Vmid(300)).await.unwrap().expect("9.1 answers with a UPID");
    assert_eq!((upid.node.as_str(), upid.task_type.as_str()), ("pve2", "qmtemplate"));
    wait(&pve, &upid).await.unwrap();
    let template = admin.vm(300).unwrap();
    assert!(template.template);
    assert_eq!(template.config["scsi0"], "local-lvm:base-300-disk-0,iothread=1,size=8G");
    assert_eq!(template.config["ide2"], "local-lvm:vm-300-cloudinit,media=cdrom", "cloud-init is no base");
    assert_eq!(volids(&pve, "pve2", "local-lvm").await, ["local-lvm:base-300-disk-0", "local-lvm:vm-300-cloudinit"]);
    assert!(!volids(&pve, "pve1", "local-lvm").await.iter().any(|v| v.contains("-300-")));
    assert!(!volids(&pve, "pve3", "local-lvm").await.iter().any(|v| v.contains("-300-")));

    // A template does not start; linked clones of it stay on pve2 and keep it alive.
    let start = pve.start_vm("pve2", Vmid(300)).await.unwrap();
    assert_eq!(message(&wait(&pve, &start).await.unwrap_err()), "you can't start a vm if it's a template");
    let linked = CloneRequest { new_vmid: Some(Vmid(301)), pool: Some("ci".into()), ..CloneRequest::default() };
    wait(&pve, &pve.clone_vm("pve2", Vmid(300), &linked).await.unwrap()).await.unwrap();
    assert_eq!(admin.vm(301).unwrap().node, "pve2");
    assert!(volids(&pve, "pve2", "local-lvm").await.contains(&"local-lvm:vm-301-disk-0".to_string()));
    let delete = pve.delete_vm("pve2", Vmid(300)).await.unwrap();
    assert_eq!(
        message(&wait(&pve, &delete).await.unwrap_err()),
        "base volume 'local-lvm:base-300-disk-0' is still in use by linked cloned VM 301"
    );
    // A template whose base a linked clone uses does not migrate either.
    let upid = pve.migrate_vm("pve2", Vmid(300), &to("pve3")).await.unwrap();
    assert_eq!(message(&wait(&pve, &upid).await.unwrap_err()), "migration aborted");
    let log = log_of(&pve, &upid).await;
    assert!(
        log.iter()
            .any(|l| l.contains("can't migrate local disk 'local-lvm:base-300-disk-0': referenced by linked clone(s)")),
        "{log:?}"
    );
    assert_eq!(admin.vm(300).unwrap().node, "pve2");
    assert_eq!(admin.vm(300).unwrap().lock, None);
}

async fn eventually_listed_on(pve: &PveClient, vmid: u32, node: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let vms = pve.cluster_vms().await.unwrap();
        if vms.iter().any(|vm| vm.vmid == Vmid(vmid) && vm.node == node) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "VM {vmid} is never listed on {node}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn migrate_refusals_use_pves_words() {
    let mut scenario = three_nodes();
    scenario.vms.push(VmSpec {
        vmid: 320,
        node: "pve1".into(),
        config: [("scsi0", "pve1-only:vm-320-disk-0,size=2G")].into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
        ..VmSpec::default()
    });
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let root = root_client(&sim);
    let admin = sim.admin();
    local_copy(&pve, 300).await;

    let err = pve.migrate_vm("pve1", Vmid(300), &to("pve1")).await.unwrap_err();
    match err.kind() {
        ErrorKind::InvalidParameter { errors, .. } => assert_eq!(errors["target"], "target is local node."),
        other => panic!("{other:?}"),
    }
    let err = pve.migrate_vm("pve1", Vmid(300), &to("pve9")).await.unwrap_err();
    assert!(err.to_string().contains("no such cluster node 'pve9'"), "{err}");

    admin.set_config_lock(300, Some("backup")).unwrap();
    let err = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap_err();
    assert!(err.to_string().contains("VM is locked (backup)"), "{err}");
    admin.set_config_lock(300, None).unwrap();

    wait(&pve, &pve.start_vm("pve1", Vmid(300)).await.unwrap()).await.unwrap();
    let err = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap_err();
    assert!(err.to_string().contains("can't migrate running VM without --online"), "{err}");
    let err = pve.convert_to_template("pve1", Vmid(300)).await.unwrap_err();
    assert!(err.to_string().contains("you can't convert a VM to template if VM is running"), "{err}");
    wait(&pve, &pve.stop_vm("pve1", Vmid(300), None).await.unwrap()).await.unwrap();

    // A storage the target lacks, used by a disk or named as the target storage.
    let err = root.migrate_vm("pve1", Vmid(320), &to("pve2")).await.unwrap_err();
    assert!(err.to_string().contains("storage 'pve1-only' is not available on node 'pve2'"), "{err}");
    let mapped = MigrateRequest { target_storage: Some("pve1-only".into()), ..to("pve2") };
    let err = root.migrate_vm("pve1", Vmid(300), &mapped).await.unwrap_err();
    assert!(err.to_string().contains("storage 'pve1-only' is not available on node 'pve2'"), "{err}");
    let identity = MigrateRequest { target_storage: Some("1".into()), ..to("pve2") };
    let err = root.migrate_vm("pve1", Vmid(320), &identity).await.unwrap_err();
    assert!(err.to_string().contains("storage 'pve1-only' is not available on node 'pve2'"), "{err}");
    let bad = MigrateRequest { target_storage: Some("1,local-lvm".into()), ..to("pve2") };
    let err = root.migrate_vm("pve1", Vmid(300), &bad).await.unwrap_err();
    match err.kind() {
        ErrorKind::InvalidParameter { errors, .. } => assert_eq!(
            errors["targetstorage"].trim_end(),
            "failed to parse storage map: identity mapping cannot be combined with other mappings"
        ),
        other => panic!("{other:?}"),
    }

    // Privileges: VM.Migrate on the VM; a target storage needs Datastore.AllocateSpace.
    wait(
        &root,
        &root
            .clone_vm(
                "pve1",
                Vmid(9000),
                &CloneRequest { new_vmid: Some(Vmid(330)), full: Some(true), ..CloneRequest::default() },
            )
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let err = pve.migrate_vm("pve1", Vmid(330), &to("pve2")).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/vms/330, VM.Migrate)"), "{err}");
    let onto_shared = MigrateRequest { target_storage: Some("local-lvm:shared".into()), ..to("pve2") };
    let err = pve.migrate_vm("pve1", Vmid(300), &onto_shared).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/storage/shared, Datastore.AllocateSpace)"), "{err}");
    let err = pve.convert_to_template("pve1", Vmid(330)).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/vms/330, VM.Allocate)"), "{err}");

    // An offline target node: the worker's ssh test fails, nothing moves.
    admin.set_node_online("pve3", false).unwrap();
    let upid = pve.migrate_vm("pve1", Vmid(300), &to("pve3")).await.unwrap();
    assert_eq!(message(&wait(&pve, &upid).await.unwrap_err()), "migration aborted");
    let log = log_of(&pve, &upid).await;
    assert!(
        log.iter()
            .any(|l| l.contains("migration aborted")
                && l.contains("Can't connect to destination address using public key")),
        "{log:?}"
    );
    assert_eq!(admin.vm(300).unwrap().node, "pve1");

    // Mapped onto the shared storage by root: the disks leave local storage.
    let upid = root.migrate_vm("pve1", Vmid(300), &onto_shared).await.unwrap();
    wait(&root, &upid).await.unwrap();
    let moved = admin.vm(300).unwrap();
    assert_eq!(moved.node, "pve2");
    // `volname_for_storage`: a directory-like storage gets `<vmid>/<name>.<format>`.
    assert_eq!(moved.config["scsi0"], "shared:300/vm-300-disk-0.raw,iothread=1,size=8G");
    assert_eq!(moved.config["ide2"], "shared:300/vm-300-cloudinit.raw,media=cdrom", "the cloud-init drive moves too");
    assert!(
        volids(&root, "pve1", "shared").await.contains(&"shared:300/vm-300-disk-0.raw".to_string()),
        "seen from every node"
    );
    assert!(!volids(&root, "pve1", "local-lvm").await.iter().any(|v| v.contains("-300-")));

    // Converting a template again.
    let err = root.convert_to_template("pve1", Vmid(9000)).await.unwrap_err();
    assert!(err.to_string().contains("you can't convert a template to a template"), "{err}");
}

#[tokio::test]
async fn faults_fail_the_migrate_task_or_refuse_the_call() {
    let sim = start(three_nodes()).await;
    let pve = token_client(&sim);
    let admin = sim.admin();
    local_copy(&pve, 300).await;
    let refuse = admin.add_fault(FaultRule {
        error_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_migrate")
    });
    let err = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transient { .. }), "{err}");
    admin.remove_fault(refuse);
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_migrate")
    });
    let upid = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap();
    assert_eq!(message(&wait(&pve, &upid).await.unwrap_err()), "migration aborted");
    let after = admin.vm(300).unwrap();
    assert_eq!((after.node.as_str(), after.lock.as_deref()), ("pve1", None), "the VM stays, unlocked");
    assert!(volids(&pve, "pve2", "local-lvm").await.is_empty(), "copies on the target are cleaned up");
    let upid = pve.migrate_vm("pve1", Vmid(300), &to("pve2")).await.unwrap();
    wait(&pve, &upid).await.unwrap();
    assert_eq!(admin.vm(300).unwrap().node, "pve2");
}

#[tokio::test]
async fn templates_migrate_offline_with_their_base_volumes() {
    let sim = start(three_nodes()).await;
    let root = root_client(&sim);
    let upid = root.migrate_vm("pve1", Vmid(9000), &to("pve3")).await.unwrap();
    wait(&root, &upid).await.unwrap();
    let template = sim.admin().vm(9000).unwrap();
    assert_eq!(template.node, "pve3");
    assert!(template.template);
    assert_eq!(volids(&root, "pve3", "local-lvm").await, ["local-lvm:base-9000-disk-0", "local-lvm:vm-9000-cloudinit"]);

    // Before pve-storage 8.2.0 (fix #1611) LVM-thin could not import a base volume.
    let mut scenario = three_nodes();
    scenario.pve_version = "8.1.4".into();
    let sim = start(scenario).await;
    let root = root_client(&sim);
    let upid = root.migrate_vm("pve1", Vmid(9000), &to("pve3")).await.unwrap();
    assert_eq!(message(&wait(&root, &upid).await.unwrap_err()), "migration aborted");
    let log = log_of(&root, &upid).await;
    assert!(log.iter().any(|l| l.contains("illegal name 'base-9000-disk-0' - should be 'vm-9000-*'")), "{log:?}");
    assert_eq!(sim.admin().vm(9000).unwrap().node, "pve1");
}

#[tokio::test]
async fn pve_7_0_converts_in_the_request_and_answers_null() {
    let mut scenario = three_nodes();
    scenario.pve_version = "7.0.2".into();
    let sim = start(scenario).await;
    let root = root_client(&sim);
    local_copy(&root, 300).await;
    let answer = root.convert_to_template("pve1", Vmid(300)).await.unwrap();
    assert_eq!(answer, None);
    assert!(sim.admin().vm(300).unwrap().template, "template: 1 is written before the answer");
    eventually("the base volume", || {
        sim.admin().vm(300).is_some_and(|vm| vm.config["scsi0"].starts_with("local-lvm:base-300-disk-0"))
    })
    .await;
}

async fn digest(pve: &PveClient) -> String {
    pve.vm_config("pve1", Vmid(9000)).await.unwrap()["digest"].clone()
}

#[tokio::test]
async fn the_digest_changes_with_every_config_change_and_only_then() {
    let sim = start(three_nodes()).await;
    let root = root_client(&sim);
    let admin = sim.admin();
    let first = digest(&root).await;
    assert_eq!(first.len(), 40);
    assert_eq!(digest(&root).await, first, "reading changes nothing");
    // Neither does a clone of it, nor a task on it that fails.
    local_copy(&root, 300).await;
    let start = root.start_vm("pve1", Vmid(9000)).await.unwrap();
    assert!(wait(&root, &start).await.is_err());
    assert_eq!(digest(&root).await, first);

    let update = ConfigUpdate { description: Some("CI runner template v2".into()), ..ConfigUpdate::default() };
    root.update_vm_config("pve1", Vmid(9000), &update).await.unwrap();
    let second = digest(&root).await;
    assert_ne!(second, first, "description");
    let update = ConfigUpdate { tags: Some(vec!["ci".into(), "v2".into()]), ..ConfigUpdate::default() };
    root.update_vm_config("pve1", Vmid(9000), &update).await.unwrap();
    let third = digest(&root).await;
    assert_ne!(third, second, "tags");

    admin.edit_config(9000, &[("description", Some("edited by an admin"))]).unwrap();
    let fourth = digest(&root).await;
    assert_ne!(fourth, third, "an admin's edit");
    admin.edit_config(9000, &[("tags", Some("V3;ci")), ("ciuser", None)]).unwrap();
    let vm = admin.vm(9000).unwrap();
    assert_eq!(vm.tags, ["ci", "v3"], "tags are stored as PVE writes them");
    assert!(!vm.config.contains_key("ciuser"));
    assert_ne!(digest(&root).await, fourth);
    assert!(admin.edit_config(9000, &[("digest", Some("x"))]).is_err());
    assert!(admin.edit_config(12345, &[("name", Some("x"))]).is_err());
}
