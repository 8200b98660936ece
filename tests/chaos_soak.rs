//! Chaos soak: the engine driven the way Runner drives it (Increase, Update
//! every cycle, Decrease of ids it saw) while the simulator injects 10%
//! transient API errors, 5% failing clones, lock timeouts, guest agents
//! that never come up, 30 s API outages and the template's node going
//! offline. After a final drain with the faults off, nothing of ours is
//! left (no VM, no orphaned disk), the VMs the plugin does not own were
//! never written to, and every accepted instance either reached running or
//! was cleaned up with a logged reason.
//!
//! Short profile by default (CI: 40 cycles, ~15 s); `RELIABILITY_PROFILE=long`
//! runs 200 cycles paced about a second apart (~4 min); `RELIABILITY_CYCLES=n` sets any number; `RELIABILITY_SEED=n`
//! replays a run (the engine's own timing still varies, so a replay repeats
//! the same faults and actions, not the same interleaving).

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::sim::{AgentState, FaultRule};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use reliability::{Login, Profile, logs};

/// Simulated seconds per real second: a 30 s outage lasts 1.5 s here, a
/// boot with agent (20 s) one second.
const TIME_SCALE: f64 = 20.0;
const MAX_INSTANCES: u32 = 8;
/// The template's node; taking it offline hits every instance.
const NODE: &str = "pve1";

#[derive(Debug, Default)]
struct Tally {
    cycles: u32,
    increase_calls: u32,
    accepted: u32,
    increase_refusals: u32,
    decrease_calls: u32,
    decreased: u32,
    updates: u32,
    update_errors: u32,
    outages: u32,
    node_offline: u32,
    vm_lock_holds: u32,
    template_lock_holds: u32,
    config_locks: u32,
    agents_never_up: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_soak_leaves_nothing_behind() {
    let profile = Profile::from_env();
    let cycles = profile.pick(40, 200, "RELIABILITY_CYCLES");
    // Milliseconds between cycles. The engine's scale-up backoff runs on
    // wall time (10 s doubling to 5 min), so the long profile paces its
    // cycles nearer to Runner's (an Update every few seconds) to leave room
    // for provisioning between backoffs.
    let pause = match profile {
        Profile::Short => 50..250,
        Profile::Long => 500..1500,
    };
    let seed = reliability::seed("chaos_soak");
    let capture = logs::capture("fleeting_plugin_proxmox=debug,fleeting_plugin_proxmox::sim=info");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.resources_staleness = 2.0;
    let sim = reliability::start_sim(scenario, seed).await;
    let admin = sim.admin();
    let protected_before = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, MAX_INSTANCES);
    config["boot_timeout"] = "5s".into();
    config["clone_timeout"] = "10s".into();
    config["delete_timeout"] = "20s".into();

    let group = ProxmoxGroup::new();
    group
        .init(config.to_string().as_bytes(), ConnectorSettings { use_static_credentials: true, ..Default::default() })
        .await
        .expect("Init before the faults start");

    // The standing faults.
    let transient = admin.add_fault(FaultRule { error_rate: 0.10, status: 503, ..FaultRule::default() });
    let clone_failures = admin.add_fault(FaultRule {
        task_failure_rate: 0.05,
        ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
    });

    let mut tally = Tally::default();
    let mut seen: BTreeMap<String, InstanceState> = BTreeMap::new();
    let mut known_vms: HashSet<(u32, String)> = HashSet::new();
    let mut offline_until: Option<Instant> = None;
    // Locks taken (VMID, config lock or flock), all released before the drain.
    let mut held: Vec<(u32, bool)> = Vec::new();
    let started = Instant::now();

    for cycle in 0..cycles {
        tally.cycles += 1;
        let now = Instant::now();

        // Runner's side: grow, shrink, or just look.
        // Mostly idle running instances; now and then one still being created.
        let include_creating = rng.random_bool(0.15);
        let active: Vec<String> = seen
            .iter()
            .filter(|(_, state)| {
                **state == InstanceState::Running || (include_creating && **state == InstanceState::Creating)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let roll: f64 = rng.random();
        if roll < 0.45 {
            let n = rng.random_range(1..=3);
            tally.increase_calls += 1;
            let answer = group.increase(n).await.expect("Increase never fails as a whole");
            tally.accepted += answer.succeeded;
            if answer.succeeded < n {
                tally.increase_refusals += 1;
            }
        } else if roll < 0.75 && !active.is_empty() {
            let count = rng.random_range(1..=active.len().min(3));
            let ids: Vec<String> = active.choose_multiple(&mut rng, count).cloned().collect();
            tally.decrease_calls += 1;
            let answer = group.decrease(ids.clone()).await.expect("Decrease never fails as a whole");
            // Runner only removes what it saw, so every id must be accepted.
            assert_eq!(
                answer.succeeded.len(),
                ids.len(),
                "cycle {cycle}: Decrease refused ids Update reported: {:?}",
                answer.failures
            );
            tally.decreased += ids.len() as u32;
        }

        // The cluster's side.
        if rng.random_bool(0.03) {
            tally.outages += 1;
            admin.make_unreachable(30.0);
        }
        if offline_until.is_none_or(|until| now >= until) && rng.random_bool(0.03) {
            tally.node_offline += 1;
            admin.set_node_online(NODE, false).unwrap();
            // Back after 30 simulated seconds, whatever the driver is doing
            // (an Increase may take seconds while clones fail).
            let offline = Duration::from_secs_f64(30.0 / TIME_SCALE);
            offline_until = Some(now + offline);
            let admin = admin.clone();
            tokio::spawn(async move {
                tokio::time::sleep(offline).await;
                admin.set_node_online(NODE, true).unwrap();
            });
        }
        let instances = reliability::instance_vms(&admin);
        for vm in &instances {
            // VMIDs are reused; the description (our marker) names one instance.
            let instance = (vm.vmid, vm.config.get("description").cloned().unwrap_or_default());
            if known_vms.insert(instance) && rng.random_bool(0.08) {
                // A broken image: this instance's agent never answers.
                if admin.set_agent(vm.vmid, AgentState::NeverUp).is_ok() {
                    tally.agents_never_up += 1;
                }
            }
        }
        if rng.random_bool(0.05)
            && let Some(vm) = instances.choose(&mut rng)
        {
            // A stuck `qm` or a long backup: the config file lock is held.
            let config_lock = rng.random_bool(0.5);
            let locked = if config_lock {
                admin.set_config_lock(vm.vmid, Some("backup"))
            } else {
                admin.hold_lock(vm.vmid, true)
            };
            if locked.is_ok() {
                if config_lock {
                    tally.config_locks += 1;
                } else {
                    tally.vm_lock_holds += 1;
                }
                release_later(&admin, vm.vmid, config_lock, Duration::from_millis(rng.random_range(300..2000)));
                held.push((vm.vmid, config_lock));
            }
        }
        if rng.random_bool(0.03) {
            // Clones of the template time out on its lock (clone's flock).
            admin.hold_lock(defaults::TEMPLATE_VMID, true).unwrap();
            tally.template_lock_holds += 1;
            release_later(&admin, defaults::TEMPLATE_VMID, false, Duration::from_millis(rng.random_range(200..800)));
            held.push((defaults::TEMPLATE_VMID, false));
        }

        // Update, as Runner does every few seconds (compressed here).
        tally.updates += 1;
        match group.update().await {
            Ok(states) => {
                let alive = states
                    .iter()
                    .filter(|(_, s)| matches!(s, InstanceState::Creating | InstanceState::Running))
                    .count();
                assert!(
                    alive as u32 <= MAX_INSTANCES,
                    "cycle {cycle}: {alive} instances alive, max_instances is {MAX_INSTANCES}: {states:?}"
                );
                seen = states.into_iter().collect();
            }
            Err(_) => tally.update_errors += 1,
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(pause.clone()))).await;
    }
    let soak_time = started.elapsed();

    // Faults off, everything released; then Runner removes everything.
    admin.remove_fault(transient);
    admin.remove_fault(clone_failures);
    admin.clear_faults();
    admin.set_node_online(NODE, true).unwrap();
    for (vmid, config_lock) in held.drain(..) {
        if config_lock {
            let _ = admin.set_config_lock(vmid, None);
        } else {
            let _ = admin.hold_lock(vmid, false);
        }
    }
    let drain_started = Instant::now();
    let deadline = drain_started + Duration::from_secs(120);
    loop {
        let states = group.update().await.expect("Update with the faults off");
        let alive: Vec<String> = states
            .iter()
            .filter(|(_, s)| matches!(s, InstanceState::Creating | InstanceState::Running))
            .map(|(id, _)| id.clone())
            .collect();
        if !alive.is_empty() {
            let answer = group.decrease(alive).await.unwrap();
            assert!(answer.failures.is_empty(), "drain: {:?}", answer.failures);
        }
        if states.is_empty() && reliability::instance_vms(&admin).is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish; Update: {states:?}; VMs: {:?}",
            reliability::instance_vms(&admin)
                .iter()
                .map(|vm| (vm.vmid, vm.name.clone(), vm.status.clone(), vm.lock.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_time = drain_started.elapsed();
    group.shutdown().await.unwrap();

    // Invariants.
    let log_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos_soak.log");
    std::fs::write(&log_path, capture.text()).unwrap();
    eprintln!("chaos_soak: log in {}", log_path.display());
    let lines = capture.lines();
    reliability::assert_clean_end(&admin, &protected_before, &lines);
    let accepted: BTreeSet<String> = lines
        .iter()
        .filter(|l| l.message == "instance creating: clone accepted")
        .filter_map(|l| l.field("instance"))
        .collect();
    assert_eq!(accepted.len() as u32, tally.accepted, "every accepted clone is logged once with its instance id");
    let mut reached_running = 0;
    let mut failed_with_reason = 0;
    let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
    for id in &accepted {
        let about = logs::about(&lines, id);
        let running = about.iter().any(|l| l.message == "instance running");
        let failure = about.iter().find(|l| l.message == "could not provision instance; removing it");
        match (running, failure) {
            (true, _) => reached_running += 1,
            (false, Some(line)) => {
                let reason = line.field("reason").unwrap_or_default();
                assert!(!reason.trim().is_empty(), "instance {id} was removed without a reason: {}", line.raw);
                failed_with_reason += 1;
                eprintln!("chaos_soak: instance {id} failed: {reason}");
                *reasons.entry(reason_kind(&reason)).or_default() += 1;
            }
            (false, None) => {
                // Removed by Runner while still being created: the deletion says why.
                let deleted = about.iter().find(|l| l.message == "instance deleted");
                let reason = deleted.and_then(|l| l.field("reason")).unwrap_or_default();
                assert!(
                    !reason.is_empty(),
                    "instance {id} neither reached running nor was cleaned up with a logged reason:\n{}",
                    about.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>().join("\n")
                );
                *reasons.entry(format!("removed while creating: {reason}")).or_default() += 1;
            }
        }
        if running {
            // Once running, only a removal ends it, and the removal says why.
            let deleted = about
                .iter()
                .any(|l| l.message == "instance deleted" && l.field("reason").is_some_and(|r| !r.is_empty()));
            assert!(
                deleted,
                "instance {id} ran and is gone, but no deletion with a reason was logged:\n{}",
                about.iter().map(|l| l.raw.as_str()).collect::<Vec<_>>().join("\n")
            );
        }
    }
    let counters = admin.counters();
    eprintln!(
        "chaos_soak summary: profile {profile:?}, seed {seed}, {} cycles in {:.1} s, drain {:.1} s; {tally:?}; \
         accepted {} instances: {reached_running} reached running, {failed_with_reason} failed and were cleaned up; \
         reasons {reasons:?}; PVE requests {}, injected errors {}, refused connections {}, failed tasks {}; \
         VMs left besides protected: 0, orphaned disks: 0, writes to protected VMs: 0",
        tally.cycles,
        soak_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        accepted.len(),
        counters.requests_total,
        counters.injected_errors,
        counters.refused_connections,
        counters.tasks_failed,
    );
    assert!(tally.accepted > 0, "the soak never got an instance accepted; it tested nothing");
    sim.shutdown().await.unwrap();
}

/// Releases a lock after `after`, independent of the driver's pace.
fn release_later(admin: &fleeting_plugin_proxmox::sim::Admin, vmid: u32, config_lock: bool, after: Duration) {
    let admin = admin.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        let _ = if config_lock { admin.set_config_lock(vmid, None) } else { admin.hold_lock(vmid, false) };
    });
}

/// A short label for a failure reason, for the summary.
fn reason_kind(reason: &str) -> String {
    let lower = reason.to_lowercase();
    for (needle, label) in [
        ("boot_timeout", "no address within boot_timeout"),
        ("clone failed", "clone task failed"),
        ("timeout", "timeout"),
        ("lock", "lock"),
        ("no route", "node offline"),
        ("refused", "API unreachable"),
        ("connect", "API unreachable"),
        ("503", "transient API error"),
        ("unavailable", "transient API error"),
    ] {
        if lower.contains(needle) {
            return label.to_string();
        }
    }
    reason.chars().take(60).collect()
}
