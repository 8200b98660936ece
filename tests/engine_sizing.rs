//! nE0sIghT's sizing and pressure settings against the simulator: the
//! config PVE ends up with is what was asked, a disk is never shrunk, the
//! cloud-init drive is never resized, `clone_snapshot` clones that
//! snapshot, and clone and start limits hold (measured from the
//! simulator's task list, not by timing).

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use engine_setup::*;
use fleeting_plugin_proxmox::group::InstanceGroup;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::sim::config::{SnapshotSpec, VmSpec, defaults};

fn size_of(value: &str) -> &str {
    value.split(',').find_map(|part| part.strip_prefix("size=")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_proxmox_ends_up_with_is_what_was_asked() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["vm_memory_mb"] = 4096.into();
    setup.config["vm_cpu_cores"] = 3.into();
    setup.config["vm_disk_mb"] = 12288.into();
    let template_ide2 = setup.sim.admin().vm(defaults::TEMPLATE_VMID).unwrap().config["ide2"].clone();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init");
    assert_eq!(group.increase(2).await.unwrap().succeeded, 2);
    let running = wait_until(&group, "running", all_running(2)).await;
    for (id, _) in &running {
        let vm = setup.sim.admin().vm(vmid_of(id)).unwrap();
        assert_eq!(vm.config["memory"], "4096", "{id}");
        assert_eq!(vm.config["cores"], "3", "{id}");
        assert_eq!(vm.config["sockets"], "1", "sockets stay the template's");
        assert_eq!(size_of(&vm.config["scsi0"]), "12G", "the boot disk grew to 12288 MiB: {}", vm.config["scsi0"]);
        assert_eq!(size_of(&vm.config["ide2"]), size_of(&template_ide2), "the cloud-init drive is never resized");
    }
    let counters = setup.sim.admin().counters();
    assert_eq!(
        counters.by_operation.get("put_nodes_node_qemu_vmid_config"),
        Some(&4),
        "one update before the start, one rename after: {counters:?}"
    );
    group.decrease(running.iter().map(|(id, _)| id.clone()).collect()).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    group.shutdown().await.unwrap();
    setup.assert_no_leaks();
    setup.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_is_never_shrunk_and_the_cloud_init_drive_never_resized() {
    let mut setup = setup(fast_scenario()).await;
    // The template's disk is 8G: asking for 1 GiB leaves it as it is.
    setup.config["vm_disk_mb"] = 1024.into();
    setup.config["vm_disk_device"] = "scsi0".into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init");
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    let vm = setup.sim.admin().vm(vmid_of(&running[0].0)).unwrap();
    assert_eq!(size_of(&vm.config["scsi0"]), "8G");
    assert_eq!(setup.sim.admin().counters().by_operation.get("put_nodes_node_qemu_vmid_resize"), None);
    group.shutdown().await.unwrap();

    // Naming the cloud-init drive is refused at Init, before any clone.
    for (key, disk) in [("vm_disk_device", "ide2"), ("instance_autoresize_disk", "ide2")] {
        let mut config = setup.config.clone();
        config.as_object_mut().unwrap().remove("vm_disk_mb");
        config.as_object_mut().unwrap().remove("vm_disk_device");
        config[key] = disk.into();
        if key == "vm_disk_device" {
            config["vm_disk_mb"] = 20480.into();
        } else {
            config["instance_autoresize_size"] = "+1G".into();
        }
        let err = ProxmoxGroup::new().init(config.to_string().as_bytes(), static_credentials()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&format!("`{key}` ide2 is VM 9000's cloud-init drive")), "{text}");
        assert!(text.contains("scsi0"), "the fix names the disks: {text}");
    }
    let mut config = setup.config.clone();
    config["vm_disk_device"] = "virtio3".into();
    let err = ProxmoxGroup::new().init(config.to_string().as_bytes(), static_credentials()).await.unwrap_err();
    assert!(err.to_string().contains("`vm_disk_device` virtio3 is not a disk of VM 9000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_error_lists_every_bad_sizing_setting_at_once() {
    let mut setup = setup(fast_scenario()).await;
    for (key, value) in [
        ("vm_memory_mb", serde_json::json!(8)),
        ("vm_cpu_cores", 0.into()),
        ("vm_disk_mb", 0.into()),
        ("vm_disk_device", "nvme0".into()),
        ("clone_snapshot", "not a name".into()),
        ("max_parallel_starts", 0.into()),
        ("max_parallel_clones_per_node", 0.into()),
        ("instance_autoresize_disk", "scsi0".into()),
        ("instance_autoresize_size", "+1G".into()),
    ] {
        setup.config[key] = value;
    }
    let err = ProxmoxGroup::new().init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap_err();
    let text = err.to_string();
    for expected in [
        "`vm_memory_mb` 8 is below Proxmox's minimum of 16 MiB",
        "`vm_cpu_cores` 0 is not a number of cores",
        "`vm_disk_mb` 0 is not a disk size",
        "`vm_disk_device` \"nvme0\" is not a disk",
        "`clone_snapshot` \"not a name\" is not a Proxmox snapshot name",
        "`max_parallel_starts` must be at least 1",
        "`max_parallel_clones_per_node` must be at least 1",
        "`vm_disk_mb` and `instance_autoresize_disk`/`instance_autoresize_size` both grow a disk",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in {text}");
    }
    assert!(setup.sim.admin().counters().by_operation.is_empty(), "nothing reached Proxmox");
}

/// A VM that is not a template, with a snapshot whose config differs.
fn with_golden_vm(mut scenario: fleeting_plugin_proxmox::sim::Scenario) -> fleeting_plugin_proxmox::sim::Scenario {
    let mut config: BTreeMap<String, String> = scenario.vms[0].config.clone();
    config.insert("scsi0".into(), "local-lvm:vm-9100-disk-0,size=8G".into());
    config.insert("ide2".into(), "local-lvm:vm-9100-cloudinit,media=cdrom".into());
    config.insert("memory".into(), "2048".into());
    let mut snapshot = config.clone();
    snapshot.insert("memory".into(), "1536".into());
    snapshot.insert("ostype".into(), "l26".into());
    scenario.vms.push(VmSpec {
        vmid: 9100,
        node: "pve1".into(),
        pool: Some(defaults::POOL.into()),
        config,
        snapshots: vec![SnapshotSpec { name: "golden".into(), description: None, config: snapshot }],
        ..VmSpec::default()
    });
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_snapshot_clones_that_snapshot() {
    let mut setup = setup(with_golden_vm(fast_scenario())).await;
    setup.config["template_id"] = 9100.into();
    setup.config["storage"] = "local-lvm".into();
    setup.config["clone_snapshot"] = "golden".into();
    setup.config["clone_bwlimit"] = 51200.into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init");
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    let vm = setup.sim.admin().vm(vmid_of(&running[0].0)).unwrap();
    assert_eq!(vm.config["memory"], "1536", "made of the snapshot, not the current state");
    group.shutdown().await.unwrap();

    let mut config = setup.config.clone();
    config["clone_snapshot"] = "silver".into();
    let err = ProxmoxGroup::new().init(config.to_string().as_bytes(), static_credentials()).await.unwrap_err();
    assert!(err.to_string().contains("`clone_snapshot` silver is not a snapshot of VM 9100 (it has golden)"), "{err}");
    // A template has no snapshots in Proxmox: the error says so.
    config["template_id"] = defaults::TEMPLATE_VMID.into();
    let err = ProxmoxGroup::new().init(config.to_string().as_bytes(), static_credentials()).await.unwrap_err();
    assert!(err.to_string().contains("Proxmox templates cannot have snapshots"), "{err}");
}

/// The most tasks of `kind` that ran at once, in total and per node.
fn peak(tasks: &[fleeting_plugin_proxmox::sim::TaskView], kind: &str) -> (usize, BTreeMap<String, usize>) {
    let of_kind: Vec<_> = tasks.iter().filter(|t| t.task_type == kind).collect();
    let overlapping =
        |t: &&fleeting_plugin_proxmox::sim::TaskView,
         others: &mut dyn Iterator<Item = &&fleeting_plugin_proxmox::sim::TaskView>| {
            others.filter(|o| o.started <= t.started && o.ended.is_none_or(|end| end > t.started)).count()
        };
    let total = of_kind.iter().map(|t| overlapping(t, &mut of_kind.iter())).max().unwrap_or(0);
    let mut per_node = BTreeMap::new();
    for t in &of_kind {
        let count = overlapping(t, &mut of_kind.iter().filter(|o| o.node == t.node));
        let entry = per_node.entry(t.node.clone()).or_insert(0);
        *entry = count.max(*entry);
    }
    (total, per_node)
}

/// The template on shared storage, with clone and start tasks long enough
/// that unbounded starts and clones would overlap.
fn on_shared_storage(mut scenario: fleeting_plugin_proxmox::sim::Scenario) -> fleeting_plugin_proxmox::sim::Scenario {
    share_template_storage(&mut scenario);
    scenario.timings.start = 5.0;
    scenario.timings.clone_linked = 5.0;
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_and_start_limits_hold_in_total_and_per_node() {
    let mut setup = setup(on_shared_storage(fast_scenario())).await;
    setup.config["target_nodes"] = serde_json::json!(["pve1", "pve2"]);
    setup.config["max_instances"] = 8.into();
    setup.config["max_parallel_clones"] = 3.into();
    setup.config["max_parallel_clones_per_node"] = 2.into();
    setup.config["max_parallel_starts"] = 3.into();
    setup.config["max_parallel_starts_per_node"] = 2.into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init");
    let asked = Instant::now();
    assert_eq!(group.increase(8).await.unwrap().succeeded, 8, "queued clones count as accepted");
    assert!(asked.elapsed() < Duration::from_secs(5), "Increase does not wait for clone slots");
    assert_eq!(states(&group).await.len(), 8, "queued instances are reported creating");
    let running = wait_until(&group, "running", all_running(8)).await;
    let tasks = setup.sim.admin().tasks();
    let (clones, clones_per_node) = peak(&tasks, "qmclone");
    assert!(clones <= 2, "clone tasks all run on the template's node, at most 2 there: {clones} {clones_per_node:?}");
    assert!(clones >= 2, "the limit, not chance, bounded them: {clones}");
    let (starts, starts_per_node) = peak(&tasks, "qmstart");
    assert!(starts <= 3, "at most 3 starts in total: {starts}");
    assert!(starts_per_node.values().all(|peak| *peak <= 2), "at most 2 per node: {starts_per_node:?}");
    assert_eq!(starts_per_node.len(), 2, "both nodes started instances: {starts_per_node:?}");
    group.decrease(running.iter().map(|(id, _)| id.clone()).collect()).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    group.shutdown().await.unwrap();
    setup.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_for_queued_clones() {
    let mut setup = setup(on_shared_storage(fast_scenario())).await;
    setup.config["max_parallel_clones"] = 1.into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init");
    let answer = group.increase(6).await.unwrap();
    assert_eq!(answer.succeeded, 6, "{:?}", answer.failures);
    let asked = Instant::now();
    group.shutdown().await.unwrap();
    assert!(asked.elapsed() < Duration::from_millis(1500), "Shutdown took {:?}", asked.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clones = setup.sim.admin().counters().tasks_started.get("qmclone").copied().unwrap_or(0);
    assert!(clones <= 1, "queued clones were never sent: {clones}");
}
