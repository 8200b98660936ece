//! Static addressing with the real plugin binary, as Runner runs it: two
//! plugin processes (two runners, groups `first` and `second`) share one pool
//! and one loopback /26, agentless (readiness and Heartbeat are TCP
//! connections to the simulated guests' port on their 127.0.1.x address),
//! and the first is killed with SIGKILL mid-clone or mid-boot, again and
//! again, and restarted. A watcher reads the simulator every few
//! milliseconds throughout: no address is ever configured on two VMs. At the
//! end both drain, and after the cooldown one process takes 50 instances,
//! so every address was free again.
//!
//! Short profile: 4 kills; `RELIABILITY_PROFILE=long`: 20.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::fleeting::proto::ConnectorConfig;
use fleeting_plugin_proxmox::fleeting::proto::update_response::State;
use fleeting_plugin_proxmox::group::ip_pool::Lease;
use fleeting_plugin_proxmox::sim::Admin;
use fleeting_plugin_proxmox::sim::config::defaults;
use rand::{Rng, SeedableRng};

use reliability::process::PluginProcess;
use reliability::{Login, Profile};

const TIME_SCALE: f64 = 20.0;
const PER_MANAGER: u32 = 25;

/// Addresses configured on more than one VM right now (ipconfig0 and lease tags).
fn duplicates(admin: &Admin) -> Vec<String> {
    let mut holders: BTreeMap<IpAddr, u32> = BTreeMap::new();
    let mut found = Vec::new();
    for vm in reliability::instance_vms(admin) {
        let mut held: BTreeSet<IpAddr> = Lease::from_tags(&vm.tags).addresses().collect();
        held.extend(
            Lease::from_ipconfig(vm.config.get("ipconfig0").map(String::as_str).unwrap_or_default()).addresses(),
        );
        for ip in held {
            if let Some(other) = holders.insert(ip, vm.vmid) {
                found.push(format!("{ip} on VM {other} and VM {}", vm.vmid));
            }
        }
    }
    found
}

fn connector(port: u16) -> ConnectorConfig {
    ConnectorConfig {
        username: "runner".into(),
        use_static_credentials: true,
        protocol_port: i64::from(port),
        ..ConnectorConfig::default()
    }
}

async fn settle(plugin: &mut PluginProcess, count: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let states = plugin.update().await.expect("Update");
        let running: Vec<String> =
            states.iter().filter(|(_, s)| *s == State::Running).map(|(id, _)| id.clone()).collect();
        if states.len() == count && running.len() == count {
            return running;
        }
        // As Runner's scaler does: replace what the plugin removed, and
        // remove what it adopted beyond the wanted count (after a kill, an
        // instance may be replaced before the new process adopted it).
        let settled = states.iter().all(|(_, s)| *s == State::Running);
        if settled && states.len() < count {
            plugin.increase((count - states.len()) as u32).await.expect("Increase");
        }
        if settled && running.len() > count {
            plugin.decrease(running[count..].to_vec()).await.expect("Decrease");
        }
        assert!(Instant::now() < deadline, "not settled at {count}: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plugin_processes_and_kill_9_never_share_an_address() {
    let kills = Profile::from_env().pick(4, 20, "RELIABILITY_CRASHES");
    let seed = reliability::seed("static_network_process");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut scenario = reliability::scenario_with_foreign_vms(TIME_SCALE);
    scenario.timings.resources_staleness = 0.5;
    let template = scenario.vms.iter_mut().find(|vm| vm.vmid == defaults::TEMPLATE_VMID).unwrap();
    template.config.insert("agent".into(), "0".into());
    template.agent.service_port = Some(port);
    let sim = reliability::start_sim(scenario, seed).await;
    let admin = sim.admin();
    let protected = reliability::snapshot_protected(&admin);
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let config = |group: &str, vmids: &str| {
        let mut config = reliability::plugin_config(&sim, &credentials, 2 * PER_MANAGER);
        config["group"] = group.into();
        config["vmid_range"] = vmids.into();
        // Clone slots last until the clone task ends: enough for a burst of 25.
        config["max_parallel_clones"] = 25.into();
        config["network_mode"] = "static".into();
        config["ip_pool_network"] = "127.0.1.0/26".into();
        config["ip_pool_gateway"] = "127.0.1.1".into();
        config["ip_pool_reuse_cooldown"] = "2s".into();
        config["agent_required"] = false.into();
        config["boot_timeout"] = "30s".into();
        config
    };
    let (config_a, config_b) = (config("first", "1000-1099"), config("second", "2000-2099"));

    // The watcher: every few milliseconds, for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let watcher = {
        let (admin, stop, seen) = (admin.clone(), stop.clone(), seen.clone());
        tokio::spawn(async move {
            let mut looks = 0u64;
            while !stop.load(Ordering::Relaxed) {
                seen.lock().unwrap().extend(duplicates(&admin));
                looks += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            looks
        })
    };

    let mut a = PluginProcess::start(dir.path(), "debug").await;
    a.init_with(&config_a, connector(port)).await.expect("Init a");
    let mut b = PluginProcess::start(dir.path(), "debug").await;
    b.init_with(&config_b, connector(port)).await.expect("Init b");
    let mut stderr = String::new();

    for round in 0..kills {
        // Both scale up on the one range; a kill lands mid-clone or mid-boot.
        let (_, up_b) = tokio::join!(a.increase(PER_MANAGER), b.increase(PER_MANAGER));
        assert_eq!(up_b.unwrap(), PER_MANAGER, "round {round}");
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..1500))).await;
        stderr.push_str(&a.kill9());
        a = PluginProcess::start(dir.path(), "debug").await;
        a.init_with(&config_a, connector(port)).await.expect("Init a after kill -9");
        let (ids_a, ids_b) = tokio::join!(
            settle(&mut a, PER_MANAGER as usize, Duration::from_secs(120)),
            settle(&mut b, PER_MANAGER as usize, Duration::from_secs(120))
        );
        let mut handed_out = BTreeSet::new();
        for id in &ids_a {
            let info = a.connect_info(id).await.unwrap();
            assert!(handed_out.insert(info.internal_addr.clone()), "{} handed out twice", info.internal_addr);
        }
        for id in &ids_b {
            let info = b.connect_info(id).await.unwrap();
            assert!(handed_out.insert(info.internal_addr.clone()), "{} handed out twice", info.internal_addr);
        }
        // Scale down to a few, as Runner does between bursts.
        a.decrease(ids_a[3..].to_vec()).await.unwrap();
        b.decrease(ids_b[3..].to_vec()).await.unwrap();
        let (kept_a, kept_b) =
            tokio::join!(settle(&mut a, 3, Duration::from_secs(60)), settle(&mut b, 3, Duration::from_secs(60)));
        a.decrease(kept_a).await.unwrap();
        b.decrease(kept_b).await.unwrap();
        let (_, _) =
            tokio::join!(settle(&mut a, 0, Duration::from_secs(60)), settle(&mut b, 0, Duration::from_secs(60)));
    }

    // Every address is free again once the cooldown passed: 50 of 61 from one process.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(reliability::instance_vms(&admin).len(), 0, "drained");
    assert_eq!(a.increase(2 * PER_MANAGER).await.unwrap(), 2 * PER_MANAGER);
    let ids = settle(&mut a, 2 * PER_MANAGER as usize, Duration::from_secs(120)).await;
    a.decrease(ids).await.unwrap();
    settle(&mut a, 0, Duration::from_secs(60)).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    stop.store(true, Ordering::Relaxed);
    let looks = watcher.await.unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.is_empty(), "an address was configured on two VMs: {:?}", &seen[..seen.len().min(10)]);
    stderr.push_str(&a.stderr());
    stderr.push_str(&b.stderr());
    let logs = reliability::logs::parse_lines(&stderr);
    reliability::assert_clean_end(&admin, &protected, &logs);
    eprintln!("static_network_process: {kills} kills, {looks} looks at the simulator, no address on two VMs");
}
