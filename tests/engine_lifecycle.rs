//! The Proxmox instance group against the simulator: scale up and down,
//! one PVE request per Update, ownership, invalid config, generated
//! credentials. (Through the fleeting adapter's domain contract; the Go
//! conformance suite covers the wire.)

#[path = "support/engine_setup.rs"]
mod engine_setup;
#[path = "support/reliability/logs.rs"]
#[allow(dead_code)]
mod logs;

use std::time::Instant;

use engine_setup::*;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::FaultRule;
use fleeting_plugin_proxmox::sim::config::defaults;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_and_down_with_one_request_per_update() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    let info = group.init(setup.config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    assert_eq!(info.max_size, 10);
    assert_eq!(info.id, "proxmox/ci/fleeting");

    let accepted = group.increase(10).await.unwrap();
    assert_eq!(accepted.succeeded, 10, "{:?}", accepted.failures);
    let running = wait_until(&group, "10 running", all_running(10)).await;

    // Steady state: exactly one PVE request per Update.
    let admin = setup.sim.admin();
    admin.reset_counters();
    for _ in 0..5 {
        group.update().await.unwrap();
    }
    let counters = admin.counters();
    assert_eq!(counters.requests_total, 5, "one request per Update: {:?}", counters.by_operation);

    // Generated credentials: the key went in with cloud-init; ConnectInfo hands it out.
    let (first, _) = &running[0];
    let info = group.connect_info(first).await.unwrap();
    assert_eq!(info.connector.username, "fleeting");
    assert!(String::from_utf8_lossy(&info.connector.key).starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    assert!(!info.internal_addr.is_empty(), "{info:?}");
    let vmid = vmid_of(first);
    let vm = admin.vm(vmid).unwrap();
    assert_eq!(vm.config.get("ciuser").map(String::as_str), Some("fleeting"));
    assert!(
        vm.config.get("sshkeys").is_some_and(|k| k.starts_with("ssh-ed25519%20")),
        "{:?}",
        vm.config.get("sshkeys")
    );
    assert!(vm.tags.iter().any(|t| t == "fleeting-fleeting"), "{:?}", vm.tags);
    group.heartbeat(first).await.unwrap();

    let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
    let removed = group.decrease(ids).await.unwrap();
    assert_eq!(removed.succeeded.len(), 10);
    wait_until(&group, "all gone", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increase_returns_while_clones_still_run() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 1.0;
    scenario.timings.clone_linked = 30.0;
    let setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    let mut config = setup.config.clone();
    config["max_instances"] = 20.into();
    config["max_parallel_clones"] = 20.into();
    group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let started = Instant::now();
    let accepted = group.increase(20).await.unwrap();
    assert_eq!(accepted.succeeded, 20, "{:?}", accepted.failures);
    let clones = setup.sim.admin().tasks().iter().filter(|t| t.task_type == "qmclone" && t.running).count();
    assert_eq!(clones, 20, "Increase returned after {:?} with {clones} clone tasks running", started.elapsed());
    assert!(states(&group).await.iter().all(|(_, s)| *s == InstanceState::Creating));
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_increase_keeps_few_requests_and_connections_under_way() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 1.0;
    scenario.timings.clone_linked = 60.0;
    // A busy pveproxy: the VMID queries of one Increase overlap, as they
    // would on a real cluster, instead of each being answered at once.
    scenario.faults.push(FaultRule { latency_ms: 300, ..FaultRule::for_operation("get_cluster_nextid") });
    let setup = setup(scenario).await;
    let group = ProxmoxGroup::new();
    let mut config = setup.config.clone();
    config["max_instances"] = 48.into();
    group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let admin = setup.sim.admin();
    admin.reset_counters();

    let accepted = group.increase(48).await.unwrap();
    assert_eq!(accepted.succeeded, 48, "{:?}", accepted.failures);
    let counters = admin.counters();
    // One VMID query per instance, and one more for those above PVE's
    // lowest free VMID (nearly all of them: the lowest is usually claimed
    // by a request under way), and a few spare for a candidate PVE finds
    // taken. Without claims, each would be told the same lowest VMID and
    // ask again, one after another (611 queries, 14 s).
    let queries = counters.operation("get_cluster_nextid");
    assert!((48..=100).contains(&queries), "{queries} VMID queries for 48 instances: {:?}", counters.by_operation);
    // 16 clone requests at a time (VMID query, then the clone POST), plus
    // the status polls of the 4 clone tasks that max_parallel_clones lets run.
    let bound = 16 + 4 + 2;
    assert!(
        (12..=bound).contains(&counters.requests_in_flight_peak),
        "requests under way at once: {} (at most {bound}; at least 12, or the VMID queries did not overlap)",
        counters.requests_in_flight_peak
    );
    assert!(
        counters.connections_open_peak <= bound,
        "connections open at once: {} of {} opened (at most {bound})",
        counters.connections_open_peak,
        counters.connections_accepted
    );
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_vms_and_the_template_are_never_touched() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let template = setup.sim.admin().vm(defaults::TEMPLATE_VMID).unwrap();
    // Asking to remove the template or an unknown VM does nothing.
    let answer = group.decrease(vec![format!("{}-abcdef", defaults::TEMPLATE_VMID), "not-an-id".into()]).await.unwrap();
    assert!(answer.succeeded.is_empty());
    assert_eq!(answer.failures.len(), 2, "{:?}", answer.failures);
    assert!(states(&group).await.is_empty(), "the template is not an instance");
    assert_eq!(setup.sim.admin().vm(defaults::TEMPLATE_VMID).unwrap(), template, "the template is unchanged");
    // Nor are the foreign VMs in the pool, even the copy carrying our tags.
    let foreign = group.decrease(vec![format!("{STRANGER_VMID}-abcdef"), format!("{COPY_VMID}-abcdef")]).await.unwrap();
    assert!(!foreign.succeeded.contains(&format!("{STRANGER_VMID}-abcdef")), "{foreign:?}");
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(states(&group).await.is_empty());
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_lists_every_problem_in_one_init_error() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    let mut config = setup.config.clone();
    config["template_id"] = "abc".into();
    config["max_instancs"] = 3.into();
    config["pool"] = "bad pool".into();
    let err = group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap_err().to_string();
    assert!(err.contains("`template_id`"), "{err}");
    assert!(err.contains("did you mean `max_instances`?"), "{err}");
    assert!(err.contains("`pool`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_never_stop_init_and_are_logged_once_each() {
    let logs = logs::capture("fleeting_plugin_proxmox=warn");
    let setup = setup(fast_scenario()).await;
    let mut config = setup.config.clone();
    config["api_url"] = "https://elsewhere:8006".into();
    config["max_instancez"] = 3.into();
    config["Instance_Tags_Running"] = "ci;running".into();
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), static_credentials()).await.expect("Init with unknown keys");
    let warnings: Vec<(String, String)> = logs
        .lines()
        .into_iter()
        .filter(|line| line.level == "warn")
        .filter_map(|line| line.field("key").map(|key| (key, line.message)))
        .filter(|(key, _)| ["api_url", "max_instancez", "Instance_Tags_Running"].contains(&key.as_str()))
        .collect();
    assert_eq!(warnings.len(), 2, "one line per unknown key, none for a known key in other case: {warnings:?}");
    assert!(warnings.iter().any(|(k, m)| k == "api_url" && m.ends_with("rename it to `url`")), "{warnings:?}");
    assert!(
        warnings.iter().any(|(k, m)| k == "max_instancez" && m.contains("did you mean `max_instances`?")),
        "{warnings:?}"
    );
    group.shutdown().await.unwrap();
}

/// Two seed-style runners in one pool that differ only in `instance_name_*`
/// get different groups, and neither sees nor removes the other's VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_sharing_a_pool_with_different_names_stay_apart() {
    let setup = setup(fast_scenario()).await;
    let runner = |prefix: &str| {
        let mut config = setup.config.clone();
        for state in ["creating", "running", "removing"] {
            config[format!("instance_name_{state}")] = format!("{prefix}-{state}").into();
        }
        config.to_string()
    };
    let (a, b) = (ProxmoxGroup::new(), ProxmoxGroup::new());
    let info_a = a.init(runner("ci-a").as_bytes(), static_credentials()).await.unwrap();
    let info_b = b.init(runner("ci-b").as_bytes(), static_credentials()).await.unwrap();
    assert_ne!(info_a.id, info_b.id, "each runner has its own group");
    assert_eq!(a.increase(2).await.unwrap().succeeded, 2);
    assert_eq!(b.increase(1).await.unwrap().succeeded, 1);
    let running_a = wait_until(&a, "a: 2 running", all_running(2)).await;
    let running_b = wait_until(&b, "b: 1 running", all_running(1)).await;
    assert!(running_a.iter().all(|(id, _)| !running_b.iter().any(|(other, _)| other == id)));
    let vm_b = setup.sim.admin().vm(vmid_of(&running_b[0].0)).unwrap();
    assert_eq!(vm_b.name.as_deref(), Some("ci-b-running"));

    // a scales to zero; b's VM stays as it was.
    let removed = a.decrease(running_a.iter().map(|(id, _)| id.clone()).collect()).await.unwrap();
    assert_eq!(removed.succeeded.len(), 2);
    wait_until(&a, "a: all gone", |s| s.is_empty()).await;
    assert_eq!(states(&b).await, running_b);
    assert_eq!(setup.sim.admin().vm(vm_b.vmid).unwrap(), vm_b, "b's VM must be untouched");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_clone_is_cleaned_up_and_does_not_hold_scale_up() {
    let setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    admin.add_fault(fleeting_plugin_proxmox::sim::FaultRule {
        operation: "post_nodes_node_qemu_vmid_clone".into(),
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..Default::default()
    });
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1, "the clone request itself is accepted");
    wait_until(&group, "failed instance removed", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    // One failure says nothing systematic: the next scale-up goes ahead
    // (tests/never_starve.rs holds it for failures of one cause in a row).
    let next = group.increase(1).await.unwrap();
    assert_eq!((next.succeeded, next.failures.len()), (1, 0), "{:?}", next.failures);
    wait_until(&group, "running", all_running(1)).await;
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_vmid_is_retried_invisibly() {
    let setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    // Someone else's clone answers "already exists" once, as in a VMID race.
    admin.add_fault(fleeting_plugin_proxmox::sim::FaultRule {
        operation: "post_nodes_node_qemu_vmid_clone".into(),
        error_rate: 1.0,
        status: 500,
        message: Some("unable to create VM 100: config file already exists".into()),
        remaining: Some(1),
        ..Default::default()
    });
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let accepted = group.increase(1).await.unwrap();
    assert_eq!(accepted.succeeded, 1, "{:?}", accepted.failures);
    assert!(accepted.failures.is_empty(), "the race stays invisible: {:?}", accepted.failures);
    wait_until(&group, "running", all_running(1)).await;
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_login_with_totp_drives_the_whole_lifecycle() {
    let mut setup = setup(fast_scenario()).await;
    // The seed's file format: realm + username + password, plus a TOTP secret for fresh codes.
    setup.use_credentials(serde_json::json!({
        "realm": "pve",
        "username": "tfa",
        "password": defaults::TFA_PASSWORD,
        "totp_secret": defaults::TFA_TOTP_SECRET,
    }));
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    group.decrease(vec![running[0].0.clone()]).await.unwrap();
    wait_until(&group, "removed", |s| s.is_empty()).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_use_proxmox_suspend() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    let info = group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    assert!(info.capabilities.iter().any(|c| c == "suspend_resume"), "{:?}", info.capabilities);
    group.increase(1).await.unwrap();
    let running = wait_until(&group, "running", all_running(1)).await;
    let id = running[0].0.clone();
    assert_eq!(group.suspend(vec![id.clone()]).await.unwrap().succeeded, std::slice::from_ref(&id));
    wait_until(&group, "suspended", |s| s == [(id.clone(), InstanceState::Suspended)]).await;
    assert_eq!(
        setup.sim.admin().vm(vmid_of(&id)).unwrap().status,
        "running",
        "a suspended (paused) VM stays running in PVE's listing"
    );
    assert_eq!(group.resume(vec![id.clone()]).await.unwrap().succeeded, std::slice::from_ref(&id));
    wait_until(&group, "running again", all_running(1)).await;
    // Not ours: refused.
    let refused = group.suspend(vec![format!("{STRANGER_VMID}-abcdef")]).await.unwrap();
    assert!(refused.succeeded.is_empty() && refused.failures.len() == 1, "{refused:?}");
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_is_one_request_and_reports_a_dead_agent_or_a_gone_vm() {
    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    group.increase(2).await.unwrap();
    let running = wait_until(&group, "running", all_running(2)).await;
    let (healthy, broken) = (&running[0].0, &running[1].0);
    let admin = setup.sim.admin();
    admin.reset_counters();
    group.heartbeat(healthy).await.unwrap();
    assert_eq!(admin.counters().requests_total, 1, "one request per heartbeat");
    admin.set_agent(vmid_of(broken), fleeting_plugin_proxmox::sim::AgentState::Killed).unwrap();
    let err = group.heartbeat(broken).await.unwrap_err();
    assert!(matches!(err, fleeting_plugin_proxmox::group::Error::Unhealthy(_)), "{err:?}");
    assert!(group.heartbeat("4242-abcdef").await.is_err(), "an unknown instance is not healthy");
    group.decrease(vec![broken.clone()]).await.unwrap();
    wait_until(&group, "broken one removed", |s| s.len() == 1).await;
    assert!(group.heartbeat(broken).await.is_err(), "a removed instance is not healthy");
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn older_releases_run_the_whole_lifecycle() {
    // 7.x and 8.0 send config `memory` as a number, VM.Monitor guards the agent.
    for version in ["7.0.15", "7.4.19", "8.0.4", "8.4.1"] {
        let mut scenario = fast_scenario();
        scenario.pve_version = version.into();
        let setup = setup(scenario).await;
        let group = ProxmoxGroup::new();
        group
            .init(setup.config.to_string().as_bytes(), ConnectorSettings::default())
            .await
            .unwrap_or_else(|err| panic!("{version}: {err}"));
        group.increase(2).await.unwrap();
        let running = wait_until(&group, version, all_running(2)).await;
        assert!(group.connect_info(&running[0].0).await.is_ok(), "{version}");
        group.decrease(running.into_iter().map(|(id, _)| id).collect()).await.unwrap();
        wait_until(&group, version, |s| s.is_empty()).await;
        setup.assert_no_leaks();
        setup.assert_untouched();
        group.shutdown().await.unwrap();
    }
}

/// The key the plugin generates is derived from the PVE credentials: after a
/// restart, adopted instances are reached with the key they were given; once
/// the credentials change, an instance with the old key is removed, never
/// handed to Runner with a key it does not accept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_plugin_hands_out_the_key_its_instances_were_given() {
    let mut setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    let generated = ConnectorSettings::default();
    let first = ProxmoxGroup::new();
    first.init(setup.config.to_string().as_bytes(), generated.clone()).await.unwrap();
    assert_eq!(first.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&first, "one running", all_running(1)).await;
    let id = running[0].0.clone();
    let key_before = first.connect_info(&id).await.unwrap().connector.key;
    // A crash: no Shutdown, nothing removed.
    drop(first);

    let second = ProxmoxGroup::new();
    second.init(setup.config.to_string().as_bytes(), generated.clone()).await.unwrap();
    wait_until(&second, "the instance adopted", |s| s.iter().any(|(i, st)| *i == id && *st == InstanceState::Running))
        .await;
    let info = second.connect_info(&id).await.unwrap();
    assert_eq!(info.connector.key, key_before, "the same private key after the restart");
    let vm = admin.vm(vmid_of(&id)).unwrap();
    let installed = vm.config.get("sshkeys").cloned().unwrap_or_default();
    let private = String::from_utf8(key_before.clone()).unwrap();
    assert!(private.contains("OPENSSH PRIVATE KEY"), "a private key is handed out");
    drop(second);

    // The token is replaced by a password login: another secret, another key.
    setup.use_credentials(serde_json::json!({
        "username": "fleeting", "realm": "pve", "password": defaults::USER_PASSWORD
    }));
    let third = ProxmoxGroup::new();
    third.init(setup.config.to_string().as_bytes(), generated).await.unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let states = states(&third).await;
        assert!(
            states.iter().all(|(i, st)| *i != id || *st != InstanceState::Running),
            "never handed to Runner as running with a key it does not accept: {states:?}"
        );
        if admin.vm(vmid_of(&id)).is_none() && states.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "the instance with the old key was not removed: {states:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(!installed.is_empty(), "cloud-init got the public key");
    setup.assert_no_leaks();
    third.shutdown().await.unwrap();
}
