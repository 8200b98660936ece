//! Runner removing an instance while it is still being created (which the
//! chaos soak does all the time) is not a provisioning failure. Its own
//! binary, so its log capture holds only its own lines.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};

use reliability::{Login, logs};

const TIME_SCALE: f64 = 20.0;
const MAX_INSTANCES: u32 = 8;

/// Runner may remove an instance while it is still being created. That is
/// no provisioning failure: no warning, and no backoff of the next Increase.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_creating_instance_is_not_a_failure() {
    let capture = logs::capture("fleeting_plugin_proxmox=debug,fleeting_plugin_proxmox::sim=info");
    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.resources_staleness = 0.5;
    let sim = reliability::start_sim(scenario, 7).await;
    let admin = sim.admin();
    let protected_before = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, MAX_INSTANCES);
    config["group"] = "creating-removed".into();
    let group = ProxmoxGroup::new();
    group
        .init(config.to_string().as_bytes(), ConnectorSettings { use_static_credentials: true, ..Default::default() })
        .await
        .unwrap();

    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let states = group.update().await.unwrap();
    assert_eq!(states.len(), 1, "{states:?}");
    assert_eq!(states[0].1, InstanceState::Creating);
    let id = states[0].0.clone();
    // Removed after the clone finished, while it boots.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(group.decrease(vec![id.clone()]).await.unwrap().succeeded, vec![id.clone()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !group.update().await.unwrap().is_empty() || !reliability::instance_vms(&admin).is_empty() {
        assert!(Instant::now() < deadline, "the removed instance did not go away");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Give a provisioning step still in flight time to notice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let next = group.increase(1).await.unwrap();
    assert_eq!(next.succeeded, 1, "Runner's own removal backed off scale-up: {:?}", next.failures);
    let lines = capture.lines();
    let warnings: Vec<&str> = logs::about(&lines, &id)
        .into_iter()
        .filter(|l| l.message == "could not provision instance; removing it")
        .map(|l| l.raw.as_str())
        .collect();
    assert!(warnings.is_empty(), "a removal Runner asked for was logged as a provisioning failure: {warnings:?}");
    group.shutdown().await.unwrap();
    reliability::assert_protected_untouched(&admin, &protected_before, &lines);
}
