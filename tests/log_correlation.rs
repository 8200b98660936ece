//! The log lines of one Increase and of one instance share ids, read back
//! from the real hclog layer. Its own test binary: a thread-local subscriber
//! must not share tracing's callsite cache with tests on other threads.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use engine_setup::*;
use fleeting_plugin_proxmox::goplugin::log::HclogLayer;
use fleeting_plugin_proxmox::group::InstanceGroup;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use tracing_subscriber::layer::SubscriberExt as _;

/// A writer the hclog layer writes into, for reading the lines back.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_lines_of_one_increase_and_of_one_instance_share_ids() {
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::registry().with(HclogLayer::with_writer(move || writer.clone()));
    // One thread: every task of the test logs through this subscriber.
    let _default = tracing::subscriber::set_default(subscriber);

    let setup = setup(fast_scenario()).await;
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    assert_eq!(group.increase(2).await.unwrap().succeeded, 2);
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "3 running", all_running(3)).await;
    group.decrease(running.iter().map(|(id, _)| id.clone()).collect()).await.unwrap();
    wait_until(&group, "all removed", |s| s.is_empty()).await;
    group.shutdown().await.unwrap();

    let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
    let parsed: Vec<serde_json::Value> = text.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let field = |line: &serde_json::Value, key: &str| line.get(key).and_then(|v| v.as_str()).map(str::to_string);

    // Each instance: its lines, from clone to deletion, name it; those of
    // its creation carry one batch id.
    let mut batch_of = BTreeMap::new();
    for (id, _) in &running {
        let own: Vec<&serde_json::Value> =
            parsed.iter().filter(|l| field(l, "instance").as_ref() == Some(id)).collect();
        let messages: BTreeSet<String> = own.iter().filter_map(|l| field(l, "@message")).collect();
        for expected in ["instance creating: clone accepted", "instance running", "instance deleted", "PVE request"] {
            assert!(messages.contains(expected), "{id}: no {expected:?} line among {messages:?}");
        }
        // Creation: every line up to "instance running" carries the batch.
        let creation: Vec<&&serde_json::Value> = own
            .iter()
            .take_while(|l| field(l, "@message").as_deref() != Some("instance running"))
            .chain(own.iter().filter(|l| field(l, "@message").as_deref() == Some("instance running")))
            .collect();
        assert!(creation.iter().all(|l| field(l, "batch").is_some()), "{id}: a creation line without a batch");
        let batches: BTreeSet<String> = creation.iter().filter_map(|l| field(l, "batch")).collect();
        assert_eq!(batches.len(), 1, "{id}: one batch for its creation, got {batches:?}");
        batch_of.insert(id.clone(), batches.into_iter().next().unwrap());
    }
    let distinct: BTreeSet<&String> = batch_of.values().collect();
    assert_eq!(distinct.len(), 2, "two Increase calls, two batches: {batch_of:?}");
    setup.assert_no_leaks();
}
