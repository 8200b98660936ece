//! Crash recovery: the real plugin binary, driven over fleeting's gRPC
//! service like Runner drives it, is killed with SIGKILL in the middle of a
//! clone, a boot or a deletion, then restarted. After Init and ONE Update
//! (no further calls), the simulator must converge on its own within the
//! deletion time: half-provisioned VMs and orphans removed, removals in
//! progress finished, ready VMs kept and adopted (logged before any second
//! Update, which then reports them running and nothing else). At the end a
//! drain leaves nothing, and the VMs the plugin does not own were never
//! written to.
//!
//! Short profile: 6 kills; `RELIABILITY_PROFILE=long`: 50;
//! `RELIABILITY_CRASHES=n` any number; `RELIABILITY_SEED=n` replays the
//! choices.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::fleeting::proto::update_response::State;
use fleeting_plugin_proxmox::group::naming::Naming;
use fleeting_plugin_proxmox::pve::Vmid;
use fleeting_plugin_proxmox::sim::{Admin, VmView};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use reliability::logs::{self, LogLine};
use reliability::process::PluginProcess;
use reliability::{Login, Profile};

/// Simulated seconds per real second: a linked clone (10 s here) takes 1 s,
/// boot plus agent (20 s) 2 s.
const TIME_SCALE: f64 = 10.0;
const MAX_INSTANCES: u32 = 6;
/// How long the simulator may take to converge after the one Update.
const CONVERGE_WITHIN: Duration = Duration::from_secs(40);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum KillPoint {
    Cloning,
    Booting,
    Deleting,
}

/// What the simulator held when the plugin was killed.
#[derive(Debug, Default)]
struct AtKill {
    /// Tagged, running, agent up, not being removed.
    ready: BTreeSet<u32>,
    /// Being removed (renamed, stopping, destroying).
    removing: BTreeSet<u32>,
    /// Everything else of ours: cloning, configuring, booting.
    half_provisioned: BTreeSet<u32>,
    /// Of those, the ones whose clone task was still running.
    cloning: BTreeSet<u32>,
}

fn ours(vm: &VmView, naming: &Naming) -> Option<String> {
    naming.owner_of_tags(Vmid(vm.vmid), &vm.tags).map(|id| id.to_string())
}

fn classify(admin: &Admin, naming: &Naming) -> AtKill {
    let mut at_kill = AtKill::default();
    for vm in reliability::instance_vms(admin) {
        let tagged = ours(&vm, naming).is_some();
        let named = vm.name.as_deref().unwrap_or_default();
        if named == "fleeting-removing" || vm.lock.as_deref() == Some("destroyed") {
            at_kill.removing.insert(vm.vmid);
        } else if tagged && vm.status == "running" && vm.agent_running && vm.lock.is_none() {
            // (Also when Runner asked for its removal and the plugin had not
            // started it: Runner asks again after the restart.)
            at_kill.ready.insert(vm.vmid);
        } else {
            at_kill.half_provisioned.insert(vm.vmid);
            if vm.lock.as_deref() == Some("clone") {
                at_kill.cloning.insert(vm.vmid);
            }
        }
    }
    at_kill
}

async fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not reached within {within:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_plugin_converges_after_one_update() {
    let profile = Profile::from_env();
    let crashes = profile.pick(6, 50, "RELIABILITY_CRASHES");
    let seed = reliability::seed("crash_recovery");
    let mut rng = StdRng::seed_from_u64(seed);

    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.clone_linked = 10.0;
    scenario.timings.resources_staleness = 1.0;
    // A stop that takes a moment (0.5 s here), so kills land mid-stop too.
    scenario.timings.stop = 5.0;
    let sim = reliability::start_sim(scenario, seed).await;
    let admin = sim.admin();
    let protected_before = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, MAX_INSTANCES);
    config["boot_timeout"] = "20s".into();
    config["delete_timeout"] = "30s".into();
    let naming = Naming::new("fleeting");
    let mut all_logs: Vec<LogLine> = Vec::new();
    let mut kills: BTreeMap<KillPoint, u32> = BTreeMap::new();
    let mut cleaned = 0usize;
    let mut finished_removals = 0usize;
    let mut adopted = 0usize;
    let mut updates_after_clone_end = 0usize;
    let mut removal_requested: BTreeSet<u32> = BTreeSet::new();
    let points = [KillPoint::Cloning, KillPoint::Booting, KillPoint::Deleting];

    let mut plugin = PluginProcess::start(dir.path(), "debug").await;
    plugin.init(&config, true).await.expect("Init");
    plugin.update().await.expect("first Update");

    for round in 0..crashes {
        // Every kind of kill point in turn, each at a random moment.
        let point = points[round as usize % points.len()];
        let running_ids = |states: &[(String, State)]| -> Vec<String> {
            states.iter().filter(|(_, s)| *s == State::Running).map(|(id, _)| id.clone()).collect()
        };
        let before: BTreeSet<u32> = reliability::instance_vms(&admin).iter().map(|vm| vm.vmid).collect();
        match point {
            KillPoint::Cloning | KillPoint::Booting => {
                let room = MAX_INSTANCES - before.len() as u32;
                if room == 0 {
                    let states = plugin.update().await.unwrap();
                    let ids = running_ids(&states);
                    let victim = ids.choose(&mut rng).cloned().unwrap();
                    plugin.decrease(vec![victim]).await.unwrap();
                    wait_for("room for a clone", CONVERGE_WITHIN, || {
                        reliability::instance_vms(&admin).len() < MAX_INSTANCES as usize
                    })
                    .await;
                }
                let n = rng.random_range(1..=2u32).min(MAX_INSTANCES - reliability::instance_vms(&admin).len() as u32);
                let accepted = plugin.increase(n).await.expect("Increase");
                assert!(accepted >= 1, "round {round}: Increase accepted nothing");
                if point == KillPoint::Cloning {
                    wait_for("a clone in progress", Duration::from_secs(10), || {
                        reliability::instance_vms(&admin).iter().any(|vm| vm.lock.as_deref() == Some("clone"))
                    })
                    .await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..600))).await;
                } else {
                    wait_for("a booting VM", Duration::from_secs(20), || {
                        reliability::instance_vms(&admin)
                            .iter()
                            .any(|vm| !before.contains(&vm.vmid) && vm.status == "running" && !vm.agent_running)
                    })
                    .await;
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..1200))).await;
                }
            }
            KillPoint::Deleting => {
                // At least two ready instances, so one stays ready while another is removed.
                let mut states = plugin.update().await.unwrap();
                let ready = running_ids(&states).len();
                if ready < 2 {
                    let creating = states.iter().filter(|(_, s)| *s == State::Creating).count();
                    let wanted = (2 - ready).saturating_sub(creating) as u32;
                    if wanted > 0 {
                        plugin.increase(wanted).await.expect("Increase");
                    }
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while running_ids(&states).len() < 2 {
                        assert!(Instant::now() < deadline, "round {round}: no instance became ready: {states:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        states = plugin.update().await.unwrap();
                    }
                }
                let ids = running_ids(&states);
                let count = rng.random_range(1..ids.len());
                let victims: Vec<String> = ids.choose_multiple(&mut rng, count).cloned().collect();
                for id in &victims {
                    removal_requested.insert(id.split('-').next().unwrap().parse().unwrap());
                }
                plugin.decrease(victims).await.expect("Decrease");
                wait_for("a removal in progress", Duration::from_secs(10), || {
                    reliability::instance_vms(&admin).iter().any(|vm| vm.name.as_deref() == Some("fleeting-removing"))
                })
                .await;
                tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            }
        }

        // kill -9, and look at what it left.
        all_logs.extend(logs::parse_lines(&plugin.kill9()));
        // After the kill: until then the plugin was still at work.
        let at_kill = classify(&admin, &naming);
        *kills.entry(point).or_default() += 1;
        eprintln!("crash_recovery: round {round}: killed {point:?}; at kill {at_kill:?}");

        // Restart: Init and ONE Update, nothing else.
        plugin = PluginProcess::start(dir.path(), "debug").await;
        plugin.init(&config, true).await.expect("Init after the restart");
        plugin.update().await.expect("the Update after the restart");

        // A VM whose clone was still running is invisible to the plugin's
        // user: PVE adds it to the pool (which grants the plugin its rights)
        // only when the clone ends, and writes its config (with our marker)
        // only then. So it is the first Update after the clone task ended
        // that finds it, as Runner's next periodic Update would.
        if !at_kill.cloning.is_empty() {
            let cloning = at_kill.cloning.clone();
            wait_for("the interrupted clones to end", Duration::from_secs(20), || {
                reliability::instance_vms(&admin)
                    .iter()
                    .all(|vm| !cloning.contains(&vm.vmid) || vm.lock.as_deref() != Some("clone"))
            })
            .await;
            plugin.update().await.expect("the Update after the interrupted clone ended");
            updates_after_clone_end += 1;
        }

        // The simulator converges without another call.
        let converged = |admin: &Admin| -> Result<(), String> {
            let vms = reliability::instance_vms(admin);
            let present: BTreeSet<u32> = vms.iter().map(|vm| vm.vmid).collect();
            let kept_ready: Vec<&u32> = at_kill.ready.iter().filter(|v| !present.contains(v)).collect();
            if !kept_ready.is_empty() {
                return Err(format!("ready VMs were removed: {kept_ready:?}"));
            }
            for vm in &vms {
                if at_kill.removing.contains(&vm.vmid) {
                    return Err(format!(
                        "VM {} was being removed and is still there ({:?}, {})",
                        vm.vmid, vm.name, vm.status
                    ));
                }
                if vm.lock.is_some() || vm.status != "running" || !vm.agent_running || ours(vm, &naming).is_none() {
                    return Err(format!(
                        "VM {} is half-provisioned ({:?}, {}, lock {:?}, tags {:?})",
                        vm.vmid, vm.name, vm.status, vm.lock, vm.tags
                    ));
                }
            }
            let orphans = admin.inventory().orphaned_disks;
            if !orphans.is_empty() {
                return Err(format!("orphaned disks: {orphans:?}"));
            }
            Ok(())
        };
        let deadline = Instant::now() + CONVERGE_WITHIN;
        loop {
            match converged(&admin) {
                Ok(()) => break,
                Err(problem) if problem.starts_with("ready VMs were removed") => {
                    panic!("round {round} ({point:?}): {problem}\nplugin log:\n{}", plugin.stderr())
                }
                Err(problem) => assert!(
                    Instant::now() < deadline,
                    "round {round} ({point:?}): no convergence {CONVERGE_WITHIN:?} after the one Update: {problem}\nplugin log:\n{}",
                    plugin.stderr()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let survivors: BTreeMap<String, u32> = reliability::instance_vms(&admin)
            .iter()
            .filter_map(|vm| ours(vm, &naming).map(|id| (id, vm.vmid)))
            .collect();
        // Adopted before any second Update: the restarted plugin said so.
        let wait_logged = Instant::now() + Duration::from_secs(25);
        loop {
            let lines = logs::parse_lines(&plugin.stderr());
            let adopted_now: BTreeSet<String> = lines
                .iter()
                .filter(|l| l.message == "instance running: adopted after a restart")
                .filter_map(|l| l.field("instance"))
                .collect();
            let missing: Vec<&String> = survivors.keys().filter(|id| !adopted_now.contains(*id)).collect();
            if missing.is_empty() {
                break;
            }
            assert!(Instant::now() < wait_logged, "round {round}: instances never logged as adopted: {missing:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Adopted instances carry the running name like any other (seed
        // behaviour: the VM name tells the state).
        wait_for("adopted VMs renamed to fleeting-running", Duration::from_secs(5), || {
            reliability::instance_vms(&admin).iter().all(|vm| vm.name.as_deref() == Some("fleeting-running"))
        })
        .await;
        let states = plugin.update().await.expect("second Update");
        // Exactly the adopted VMs as running; a removed one may still show
        // as deleting until the listing has missed it for a moment.
        let reported: BTreeMap<String, State> = states.iter().filter(|(_, s)| *s != State::Deleting).cloned().collect();
        let expected: BTreeMap<String, State> = survivors.keys().map(|id| (id.clone(), State::Running)).collect();
        assert_eq!(
            reported, expected,
            "round {round} ({point:?}): the second Update reports exactly the adopted VMs as running: {states:?}"
        );
        for (id, state) in &states {
            assert!(
                *state != State::Deleting || !survivors.contains_key(id),
                "round {round}: adopted {id} reported deleting"
            );
        }
        adopted += survivors.len();
        cleaned += at_kill.half_provisioned.iter().filter(|v| !survivors.values().any(|s| s == *v)).count();
        finished_removals += at_kill.removing.len();
        // Runner asks again for removals it had requested that never started.
        let again: Vec<String> =
            survivors.iter().filter(|(_, vmid)| removal_requested.contains(vmid)).map(|(id, _)| id.clone()).collect();
        if !again.is_empty() {
            plugin.decrease(again).await.unwrap();
        }
        removal_requested.retain(|vmid| survivors.values().any(|v| v == vmid));
    }

    // Drain with the last plugin, then check the end state.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = plugin.update().await.unwrap();
        let alive: Vec<String> = states
            .iter()
            .filter(|(_, s)| matches!(s, State::Running | State::Creating))
            .map(|(id, _)| id.clone())
            .collect();
        if !alive.is_empty() {
            plugin.decrease(alive).await.unwrap();
        }
        if states.is_empty() && reliability::instance_vms(&admin).is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "drain did not finish: {states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    plugin.shutdown().await.unwrap();
    all_logs.extend(logs::parse_lines(&plugin.kill9()));
    let requests = all_logs.iter().filter(|l| l.message == "PVE request").count();
    assert!(requests > 0, "the plugin's debug log shows its PVE requests (needed for the write check)");
    reliability::assert_clean_end(&admin, &protected_before, &all_logs);
    let panics: Vec<&str> = all_logs.iter().filter(|l| l.raw.contains("panicked")).map(|l| l.raw.as_str()).collect();
    assert!(panics.is_empty(), "the plugin panicked: {panics:?}");
    eprintln!(
        "crash_recovery summary: profile {profile:?}, seed {seed}, {crashes} kills {kills:?}; after one Update each: \
         {cleaned} half-provisioned VMs removed, {finished_removals} removals finished, {adopted} ready VMs adopted; {updates_after_clone_end} rounds needed one more Update after an interrupted clone ended; \
         {requests} PVE requests logged; VMs left: 0, orphaned disks: 0, writes to protected VMs: 0"
    );
    sim.shutdown().await.unwrap();
}

/// Seed configs may give all three states the same VM name. A restart must
/// then still adopt a ready instance, not take its name for a removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_adopts_ready_instances_when_all_names_are_equal() {
    use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
    use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};

    let mut scenario = reliability::scenario_with_foreign_vms(20.0);
    scenario.timings.resources_staleness = 0.5;
    let sim = reliability::start_sim(scenario, 3).await;
    let admin = sim.admin();
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let mut config = reliability::plugin_config(&sim, &credentials, 2);
    for key in ["instance_name_creating", "instance_name_running", "instance_name_removing"] {
        config[key] = "ci-runner".into();
    }
    let settings = ConnectorSettings { use_static_credentials: true, ..Default::default() };
    let first = ProxmoxGroup::new();
    first.init(config.to_string().as_bytes(), settings.clone()).await.unwrap();
    assert_eq!(first.increase(1).await.unwrap().succeeded, 1);
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let states = first.update().await.unwrap();
        if let Some((id, InstanceState::Running)) = states.first() {
            break id.clone();
        }
        assert!(Instant::now() < deadline, "never running: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The plugin goes away (Shutdown deletes nothing) and a new one starts.
    first.shutdown().await.unwrap();
    let second = ProxmoxGroup::new();
    second.init(config.to_string().as_bytes(), settings).await.unwrap();
    second.update().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reliability::instance_vms(&admin).len(), 1, "the ready instance was removed after the restart");
    assert_eq!(second.update().await.unwrap(), vec![(id, InstanceState::Running)]);
    second.shutdown().await.unwrap();
}
