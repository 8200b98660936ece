//! A seed or Phenix66 user's settings work unchanged: Runner's credentials
//! win (no cloud-init drive needed), Phenix66's per-state tags, disk
//! autoresize and task wait interval reach Proxmox, and a source VM that is
//! not a template is cloned in full onto `storage`.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::time::{Duration, Instant};

use engine_setup::*;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::FaultRule;
use fleeting_plugin_proxmox::sim::config::defaults;

/// Runner's own username and key (Runner reads `key_path` into `key`).
fn runner_key() -> ConnectorSettings {
    ConnectorSettings {
        username: "ubuntu".into(),
        key: b"-----BEGIN OPENSSH PRIVATE KEY-----\nRunner's own key\n-----END OPENSSH PRIVATE KEY-----\n".to_vec(),
        ..ConnectorSettings::default()
    }
}

fn without_cloud_init(mut scenario: fleeting_plugin_proxmox::sim::Scenario) -> fleeting_plugin_proxmox::sim::Scenario {
    let template = &mut scenario.vms[0].config;
    template.remove("ide2");
    template.remove("ciuser");
    template.remove("ipconfig0");
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_credentials_win_and_need_no_cloud_init_drive() {
    let setup = setup(without_cloud_init(fast_scenario())).await;
    for connector in [
        runner_key(),
        ConnectorSettings {
            username: "ci".into(),
            password: "Runner's password".into(),
            ..ConnectorSettings::default()
        },
        ConnectorSettings { username: "ci".into(), use_static_credentials: true, ..ConnectorSettings::default() },
    ] {
        let group = ProxmoxGroup::new();
        group.init(setup.config.to_string().as_bytes(), connector.clone()).await.expect("Init without cloud-init");
        assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
        let running = wait_until(&group, "running", all_running(1)).await;
        let info = group.connect_info(&running[0].0).await.unwrap();
        assert_eq!(info.connector.username, connector.username, "Runner's username, unchanged");
        assert_eq!(info.connector.key, connector.key, "Runner's key, byte for byte");
        assert_eq!(info.connector.password, connector.password, "Runner's password, unchanged");
        let vm = setup.sim.admin().vm(vmid_of(&running[0].0)).unwrap();
        assert!(!vm.config.contains_key("sshkeys") && !vm.config.contains_key("ciuser"), "no key was injected");
        group.decrease(vec![running[0].0.clone()]).await.unwrap();
        wait_until(&group, "removed", |s| s.is_empty()).await;
        group.shutdown().await.unwrap();
    }
    setup.assert_no_leaks();
    setup.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_runners_credentials_a_key_is_generated_and_the_drive_required() {
    let setup = setup(without_cloud_init(fast_scenario())).await;
    let group = ProxmoxGroup::new();
    let err = group.init(setup.config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap_err();
    let err = err.to_string();
    assert!(err.contains("no cloud-init drive") && err.contains("key_path"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phenix66_tags_per_state_and_disk_autoresize_reach_proxmox() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["instance_tags_creating"] = "ci;Creating".into();
    setup.config["instance_tags_running"] = "ci;ready".into();
    setup.config["instance_tags_removing"] = "ci;gone".into();
    setup.config["instance_autoresize_disk"] = "scsi0".into();
    setup.config["instance_autoresize_size"] = "+4G".into();
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), runner_key()).await.unwrap();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    // While creating: the creating tags next to the plugin's own.
    let creating = wait_until(&group, "tagged while creating", |s| {
        s.first().is_some_and(|(id, _)| admin.vm(vmid_of(id)).is_some_and(|vm| vm.tags.iter().any(|t| t == "creating")))
    })
    .await;
    let vmid = vmid_of(&creating[0].0);
    let vm = admin.vm(vmid).unwrap();
    assert!(vm.tags.iter().any(|t| t == "fleeting-fleeting") && vm.tags.iter().any(|t| t == "ci"), "{:?}", vm.tags);
    let running = wait_until(&group, "running", all_running(1)).await;
    let vm = admin.vm(vmid).unwrap();
    assert!(vm.tags.iter().any(|t| t == "ready") && !vm.tags.iter().any(|t| t == "creating"), "{:?}", vm.tags);
    // The template's 8G disk grew by 4G before the first start; the
    // cloud-init drive was not touched.
    assert!(vm.config["scsi0"].contains("size=12G"), "{}", vm.config["scsi0"]);
    assert!(!vm.config["ide2"].contains("size=4G"), "{}", vm.config["ide2"]);
    let resized = admin.counters().by_operation.get("put_nodes_node_qemu_vmid_resize").copied();
    assert_eq!(resized, Some(1));

    // Removing: the removing tags while it goes (its first delete fails, so
    // the VM stays a moment with them).
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::for_operation("delete_nodes_node_qemu_vmid")
    });
    group.decrease(vec![running[0].0.clone()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !admin.vm(vmid).unwrap().tags.iter().any(|t| t == "gone") {
        assert!(Instant::now() < deadline, "never tagged for removal: {:?}", admin.vm(vmid).map(|vm| vm.tags));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_until(&group, "removed", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_autoresize_never_shrinks_a_disk() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["instance_autoresize_disk"] = "scsi0".into();
    setup.config["instance_autoresize_size"] = "4G".into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), runner_key()).await.unwrap();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    let vm = setup.sim.admin().vm(vmid_of(&running[0].0)).unwrap();
    assert!(vm.config["scsi0"].contains("size=8G"), "the 8G disk stays 8G: {}", vm.config["scsi0"]);
    group.decrease(vec![running[0].0.clone()]).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_task_wait_interval_spaces_task_polls() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["proxmox_task_wait_interval"] = 1.into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), runner_key()).await.unwrap();
    let started = Instant::now();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    // The clone and the start each wait at least one interval.
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    group.decrease(vec![running[0].0.clone()]).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_vm_that_is_not_a_template_is_cloned_in_full_onto_storage() {
    let mut scenario = fast_scenario();
    scenario.vms[0].template = true;
    scenario.vms[0].config.insert("scsi0".into(), "local-lvm:vm-9000-disk-0,iothread=1,size=8G".into());
    scenario.vms[0].template = false;
    let mut setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    let err = group.init(setup.config.to_string().as_bytes(), runner_key()).await.unwrap_err().to_string();
    assert!(err.contains("is not a template") && err.contains("`storage`"), "{err}");

    setup.config["storage"] = "local-lvm".into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), runner_key()).await.unwrap();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    let vm = setup.sim.admin().vm(vmid_of(&running[0].0)).unwrap();
    assert!(
        vm.config["scsi0"].starts_with(&format!("local-lvm:vm-{}-disk", vm.vmid)),
        "a full copy: {}",
        vm.config["scsi0"]
    );
    let source = setup.sim.admin().vm(defaults::TEMPLATE_VMID).unwrap();
    assert!(!source.template, "the source VM stays as it is");
    group.decrease(vec![running[0].0.clone()]).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    assert!(setup.sim.admin().vm(defaults::TEMPLATE_VMID).is_some());
    let _ = InstanceState::Running;
    group.shutdown().await.unwrap();
}
