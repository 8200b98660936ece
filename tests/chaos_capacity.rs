//! Capacity soak: the engine driven the way Runner's taskscaler drives it,
//! keeping a desired capacity (every cycle: Update, then Increase by what is
//! missing, so a failed instance is requested again; now and then a job
//! ends and Runner removes a running instance), under harsher faults than
//! tests/chaos_soak.rs:
//! - 8% of requests answered 503, 3% of connections dropped before PVE acts,
//!   1% of answers lost after it did;
//! - 15% of clone tasks fail as after a node crash mid-clone, leaving the
//!   new VMID's volumes behind;
//! - 10% of start tasks fail;
//! - 20% of removals hit a held lock on the VM (a lock timeout in PVE).
//!
//! It reports the time to full capacity, how often capacity was held, the
//! Increase calls refused, the VMIDs quarantined and the orphans reclaimed.
//! End state after a drain with the faults off: no VM of ours, no orphaned
//! volume, the VMs the plugin does not own never written to. The one
//! exception is the volumes of a failed clone whose answer was lost: the
//! plugin never learnt that clone ran, so it cannot tell its leftovers from
//! an earlier crash's; it quarantines the VMID and names the fix instead.
//!
//! Short profile by default (CI: 80 cycles, ~25 s); `RELIABILITY_PROFILE=long`
//! runs 400 cycles paced like Runner's Update interval compressed;
//! `RELIABILITY_CYCLES=n` and `RELIABILITY_SEED=n` as in the other soaks.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::FaultRule;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use reliability::{Login, Profile, logs};

/// Simulated seconds per real second: a boot with agent (20 s) takes one.
const TIME_SCALE: f64 = 20.0;
const DESIRED: u32 = 8;

#[derive(Debug, Default)]
struct Tally {
    cycles: u32,
    increase_calls: u32,
    requested: u32,
    accepted: u32,
    increase_refused: u32,
    jobs_done: u32,
    lock_holds: u32,
    update_errors: u32,
    cycles_at_capacity: u32,
    cycles_since_capacity: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_capacity_is_reached_and_held_under_harsh_faults() {
    let profile = Profile::from_env();
    let cycles = profile.pick(80, 400, "RELIABILITY_CYCLES");
    let pause = Duration::from_millis(250);
    let seed = reliability::seed("chaos_capacity");
    let capture = logs::capture("fleeting_plugin_proxmox=debug,fleeting_plugin_proxmox::sim=info");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.resources_staleness = 2.0;
    let sim = reliability::start_sim(scenario, seed).await;
    let admin = sim.admin();
    let protected_before = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, DESIRED);
    config["boot_timeout"] = "5s".into();
    config["clone_timeout"] = "10s".into();
    config["delete_timeout"] = "20s".into();
    let group = ProxmoxGroup::new();
    group
        .init(config.to_string().as_bytes(), ConnectorSettings { use_static_credentials: true, ..Default::default() })
        .await
        .expect("Init before the faults start");

    let faults = [
        FaultRule { error_rate: 0.08, status: 503, drop_rate: 0.03, lost_answer_rate: 0.01, ..FaultRule::default() },
        FaultRule {
            task_failure_rate: 0.15,
            leave_orphans: true,
            ..FaultRule::for_operation("post_nodes_node_qemu_vmid_clone")
        },
        FaultRule { task_failure_rate: 0.10, ..FaultRule::for_operation("post_nodes_node_qemu_vmid_status_start") },
    ];
    for rule in faults {
        admin.add_fault(rule);
    }

    let mut tally = Tally::default();
    let mut held_locks: Vec<u32> = Vec::new();
    let mut states: Vec<(String, InstanceState)> = Vec::new();
    let mut time_to_capacity: Option<Duration> = None;
    let started = Instant::now();
    for cycle in 0..cycles {
        tally.cycles += 1;
        match group.update().await {
            Ok(current) => states = current,
            Err(_) => tally.update_errors += 1,
        }
        let running: Vec<&String> =
            states.iter().filter(|(_, s)| *s == InstanceState::Running).map(|(id, _)| id).collect();
        let alive =
            states.iter().filter(|(_, s)| matches!(s, InstanceState::Creating | InstanceState::Running)).count() as u32;
        // Jobs start ending once the fleet first stood at full capacity.
        if running.len() as u32 >= DESIRED && time_to_capacity.is_none() {
            time_to_capacity = Some(started.elapsed());
        }
        if time_to_capacity.is_some() {
            tally.cycles_since_capacity += 1;
            if alive >= DESIRED {
                tally.cycles_at_capacity += 1;
            }
        }
        // A job ends now and then: Runner removes that instance; a fifth
        // of removals meet a lock (a backup, a stuck `qm`).
        let mut removed = 0;
        if time_to_capacity.is_some() && !running.is_empty() && rng.random_bool(0.25) {
            let id = (*running.choose(&mut rng).unwrap()).clone();
            let vmid: u32 = id.split('-').next().unwrap().parse().unwrap();
            if rng.random_bool(0.20) && admin.hold_lock(vmid, true).is_ok() {
                tally.lock_holds += 1;
                held_locks.push(vmid);
                let admin = admin.clone();
                let after = Duration::from_millis(rng.random_range(300..1500));
                tokio::spawn(async move {
                    tokio::time::sleep(after).await;
                    let _ = admin.hold_lock(vmid, false);
                });
            }
            let answer = group.decrease(vec![id.clone()]).await.expect("Decrease never fails as a whole");
            assert_eq!(answer.succeeded, [id], "cycle {cycle}: Decrease refused an id Update reported");
            tally.jobs_done += 1;
            removed += 1;
        }
        // The taskscaler asks for what is missing, again and again.
        let missing = DESIRED.saturating_sub(alive - removed);
        if missing > 0 {
            tally.increase_calls += 1;
            tally.requested += missing;
            let answer = group.increase(missing).await.expect("Increase never fails as a whole");
            tally.accepted += answer.succeeded;
            if answer.succeeded < missing {
                tally.increase_refused += 1;
                eprintln!(
                    "chaos_capacity: cycle {cycle}: Increase({missing}) = {}: {:?}",
                    answer.succeeded, answer.failures
                );
            }
        }
        tokio::time::sleep(pause).await;
    }
    let soak_time = started.elapsed();

    admin.clear_faults();
    for vmid in held_locks {
        let _ = admin.hold_lock(vmid, false);
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
        if states.is_empty()
            && reliability::instance_vms(&admin).is_empty()
            && reliability::orphaned_disks_split(&admin).0.is_empty()
        {
            break;
        }
        if Instant::now() >= deadline {
            let log_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos_capacity.log");
            std::fs::write(&log_path, capture.text()).unwrap();
            eprintln!("chaos_capacity: log in {}", log_path.display());
            let orphan_vmids: Vec<String> =
                admin.inventory().orphaned_disks.iter().map(|v| v.vmid.to_string()).collect();
            for task in admin.tasks() {
                let about_orphan = orphan_vmids.contains(&task.id)
                    || task.log.iter().any(|l| orphan_vmids.iter().any(|v| l.contains(&format!("vm-{v}-"))));
                if about_orphan {
                    eprintln!(
                        "chaos_capacity: task {} {} {:?}: {:?}",
                        task.upid, task.task_type, task.exit_status, task.log
                    );
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "drain did not finish; Update: {states:?}; VMs: {:?}; orphaned disks: {:?}",
            reliability::instance_vms(&admin)
                .iter()
                .map(|vm| (vm.vmid, vm.name.clone(), vm.lock.clone()))
                .collect::<Vec<_>>(),
            admin.inventory().orphaned_disks
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drain_time = drain_started.elapsed();
    group.shutdown().await.unwrap();

    let log_path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chaos_capacity.log");
    std::fs::write(&log_path, capture.text()).unwrap();
    eprintln!("chaos_capacity: log in {}", log_path.display());
    let lines = capture.lines();
    let clean_end = reliability::assert_clean_end(&admin, &protected_before, &lines);
    let count = |message: &str| lines.iter().filter(|l| l.message.starts_with(message)).count();
    let quarantined = count("VMID ");
    let reclaimed = count("holding VMID");
    let breaker_opened = lines.iter().filter(|l| l.message.starts_with("scale-up held")).count();
    let counters = admin.counters();
    let held_share = f64::from(tally.cycles_at_capacity) / f64::from(tally.cycles_since_capacity.max(1));
    eprintln!(
        "chaos_capacity summary: profile {profile:?}, seed {seed}, {} cycles in {:.1} s, drain {:.1} s; \
         time to full capacity ({DESIRED} running): {}; capacity held in {:.0}% of the cycles after; \
         Increase calls {} ({} instances requested, {} accepted), refused or cut short {}; \
         VMIDs quarantined {quarantined}, failed clones' leftovers reclaimed {reclaimed}, breaker opened {breaker_opened}; \
         {tally:?}; PVE requests {}, injected errors {}, dropped connections {}, lost answers {}, failed tasks {}; \
         VMs left besides protected: 0, orphaned volumes: 0 (besides {} of clones whose answer was lost)",
        tally.cycles,
        soak_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        time_to_capacity.map_or("never".into(), |t| format!("{:.1} s", t.as_secs_f64())),
        held_share * 100.0,
        tally.increase_calls,
        tally.requested,
        tally.accepted,
        tally.increase_refused,
        counters.requests_total,
        counters.injected_errors,
        counters.dropped_connections,
        counters.lost_answers,
        counters.tasks_failed,
        clean_end.unattributable_volumes,
    );
    assert!(time_to_capacity.is_some(), "the desired capacity of {DESIRED} was never reached");
    assert!(held_share >= 0.8, "capacity held in only {:.0}% of the cycles after reaching it", held_share * 100.0);
    sim.shutdown().await.unwrap();
}
