//! Scale-up throughput under failing clones: the engine in process against
//! the simulator, driven like Runner's taskscaler (keep 8 instances; once
//! the fleet first stands full, a job ends in a quarter of the cycles and
//! its instance is removed, so new ones are needed all the time). For 0%,
//! 5% and 15% of clone tasks failing as after a node crash (volumes left
//! behind), it prints the instances that became ready per simulated minute
//! and the Increase calls that were refused or cut short. Numbers only;
//! nothing is asserted.
//!
//! `cargo bench --bench scale_up_failures` (`BENCH_SECONDS=n` sets the wall
//! time per rate, default 40).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::sim::{FaultRule, Scenario, SimConfig, Simulator};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const TIME_SCALE: f64 = 20.0;
const DESIRED: u32 = 8;

fn main() {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(40);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    println!(
        "scale-up under failing clones ({seconds} s wall per rate, time scale {TIME_SCALE}, desired capacity {DESIRED})"
    );
    println!("| clone failures | ready per simulated minute | Increase refused or cut short | Increase calls |");
    println!("|---|---|---|---|");
    for rate in [0.0, 0.05, 0.15] {
        let (ready, refused, calls, simulated_minutes) = runtime.block_on(run(rate, Duration::from_secs(seconds)));
        println!("| {:.0}% | {:.1} | {refused} | {calls} |", rate * 100.0, ready as f64 / simulated_minutes);
    }
}

async fn run(failure_rate: f64, wall: Duration) -> (usize, u32, u32, f64) {
    let mut scenario = Scenario { time_scale: TIME_SCALE, seed: Some(7), ..Scenario::default() };
    scenario.timings.unauthorized_delay = 0.0;
    let sim = Simulator::start(SimConfig::new(scenario)).await.unwrap();
    let admin = sim.admin();
    let dir = tempfile::tempdir().unwrap();
    let credentials = dir.path().join("credentials.json");
    std::fs::write(
        &credentials,
        serde_json::json!({"token_id": defaults::TOKEN_ID, "token_secret": defaults::TOKEN_SECRET}).to_string(),
    )
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let config = serde_json::json!({
        "url": sim.base_url(), "tls_fingerprint": sim.fingerprint(), "credentials_file_path": credentials,
        "pool": defaults::POOL, "template_id": defaults::TEMPLATE_VMID, "max_instances": DESIRED,
        "boot_timeout": "5s", "clone_timeout": "10s", "delete_timeout": "20s",
    });
    let group = ProxmoxGroup::new();
    group
        .init(config.to_string().as_bytes(), ConnectorSettings { use_static_credentials: true, ..Default::default() })
        .await
        .unwrap();
    if failure_rate > 0.0 {
        admin.add_fault(FaultRule {
            task_failure_rate: failure_rate,
            leave_orphans: true,
            ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
        });
    }
    let mut rng = StdRng::seed_from_u64(11);
    let mut ready = BTreeSet::new();
    let (mut refused, mut calls) = (0, 0);
    let mut full_once = false;
    let started = Instant::now();
    while started.elapsed() < wall {
        let states = group.update().await.unwrap_or_default();
        let running: Vec<String> =
            states.iter().filter(|(_, s)| *s == InstanceState::Running).map(|(id, _)| id.clone()).collect();
        ready.extend(running.iter().cloned());
        full_once |= running.len() as u32 >= DESIRED;
        let alive =
            states.iter().filter(|(_, s)| matches!(s, InstanceState::Creating | InstanceState::Running)).count() as u32;
        let mut removed = 0;
        if full_once && !running.is_empty() && rng.random_bool(0.25) {
            let id = running[rng.random_range(0..running.len())].clone();
            group.decrease(vec![id]).await.unwrap();
            removed = 1;
        }
        let missing = DESIRED.saturating_sub(alive - removed);
        if missing > 0 {
            calls += 1;
            if group.increase(missing).await.unwrap().succeeded < missing {
                refused += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let simulated_minutes = started.elapsed().as_secs_f64() * TIME_SCALE / 60.0;
    group.shutdown().await.unwrap();
    sim.shutdown().await.unwrap();
    (ready.len(), refused, calls, simulated_minutes)
}
