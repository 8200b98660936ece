//! Static addressing against the simulator (`network_mode = "static"`):
//! agentless instances from a loopback /26 (the simulated guests open their
//! connector port on their static 127.0.1.x address, so readiness and
//! Heartbeat are real TCP connections, and only to loopback), two managers
//! on one pool and range, restarts that stop one manager mid-provisioning,
//! an exhausted pool, and an IPv6-only pool. IPv6 has one loopback address
//! (`::1`), so the IPv6 test checks allocation, `ipconfig0`'s `ip6=` and the
//! agent's report, not TCP readiness.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use engine_setup::*;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::ip_pool::Lease;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::defaults;

const POOL_NETWORK: &str = "127.0.1.0/26";

/// A port free on loopback now; the guests open it on their 127.0.1.x addresses.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The template without the guest agent, its guests opening `port` once booted.
fn agentless(setup_scenario: &mut fleeting_plugin_proxmox::sim::Scenario, port: u16) {
    let template = setup_scenario.vms.iter_mut().find(|vm| vm.vmid == defaults::TEMPLATE_VMID).unwrap();
    template.config.insert("agent".into(), "0".into());
    template.agent.service_port = Some(port);
}

fn static_config(setup: &Setup, group: &str, max_instances: u32) -> Vec<u8> {
    let mut config = setup.config.clone();
    config["group"] = group.into();
    config["max_instances"] = max_instances.into();
    // Clone slots last until the clone task ends: enough for a burst of 25.
    config["max_parallel_clones"] = 25.into();
    config["network_mode"] = "static".into();
    config["ip_pool_network"] = POOL_NETWORK.into();
    config["ip_pool_gateway"] = "127.0.1.1".into();
    config["ip_pool_reuse_cooldown"] = "2s".into();
    config["nameserver"] = "127.0.1.2".into();
    config["ip_pool_exclude"] = "127.0.1.2".into();
    config["searchdomain"] = "ci.example.com".into();
    config["agent_required"] = false.into();
    config.to_string().into_bytes()
}

fn settings(port: u16) -> ConnectorSettings {
    ConnectorSettings { protocol_port: port, ..static_credentials() }
}

/// Every address configured on a VM (ipconfig0 and lease tags, which are
/// written together once the lease is confirmed), per VMID; fails when two
/// VMs hold one address. Markers are not counted: two racing clones may
/// both name an address there until one of them yields.
fn assert_no_address_twice(setup: &Setup) -> BTreeMap<IpAddr, u32> {
    let mut holders: BTreeMap<IpAddr, u32> = BTreeMap::new();
    // One snapshot of every VM (one read per VM would compare VMs at
    // different moments, and see an address move as held twice).
    for vm in setup.sim.admin().inventory().vms {
        let mut claimed: BTreeSet<IpAddr> = Lease::from_tags(&vm.tags).addresses().collect();
        claimed.extend(
            Lease::from_ipconfig(vm.config.get("ipconfig0").map(String::as_str).unwrap_or_default()).addresses(),
        );
        for ip in claimed {
            if let Some(other) = holders.insert(ip, vm.vmid) {
                panic!("{ip} is claimed by VM {other} and VM {}", vm.vmid);
            }
        }
    }
    holders
}

async fn start(config: &[u8], port: u16) -> ProxmoxGroup {
    let group = ProxmoxGroup::new();
    group.init(config, settings(port)).await.unwrap();
    group
}

async fn running(group: &ProxmoxGroup) -> Vec<String> {
    states(group).await.into_iter().filter(|(_, s)| *s == InstanceState::Running).map(|(id, _)| id).collect()
}

/// Polls until `group` has `count` instances, all running, checking the
/// no-duplicate invariant on every round.
async fn settle(setup: &Setup, group: &ProxmoxGroup, count: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert_no_address_twice(setup);
        let current = states(group).await;
        if current.len() == count && current.iter().all(|(_, s)| *s == InstanceState::Running) {
            return current.into_iter().map(|(id, _)| id).collect();
        }
        assert!(Instant::now() < deadline, "not settled at {count}: {current:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_agentless_instances_from_a_26_never_share_an_address() {
    let port = free_port();
    let mut scenario = fast_scenario();
    agentless(&mut scenario, port);
    let setup = setup(scenario).await;
    // Two managers race for VMIDs too; their own VMID ranges keep that out of this test.
    let with_range = |config: Vec<u8>, range: &str| {
        let mut config: serde_json::Value = serde_json::from_slice(&config).unwrap();
        config["vmid_range"] = range.into();
        config.to_string().into_bytes()
    };
    let config_a = with_range(static_config(&setup, "first", 50), "1000-1099");
    let config_b = with_range(static_config(&setup, "second", 50), "2000-2099");
    let mut a = start(&config_a, port).await;
    let b = start(&config_b, port).await;

    for round in 0..3 {
        // Both managers scale up at once on the one range: 50 of 61 addresses.
        let (up_a, up_b) = tokio::join!(a.increase(25), b.increase(25));
        let (up_a, up_b) = (up_a.unwrap(), up_b.unwrap());
        assert_eq!(up_a.succeeded, 25, "round {round}: {:?}", up_a.failures);
        assert_eq!(up_b.succeeded, 25, "round {round}: {:?}", up_b.failures);
        if round > 0 {
            // A manager stops mid-provisioning (its background work ends
            // where it is, as after kill -9) and a new process takes over.
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.shutdown().await.unwrap();
            assert_no_address_twice(&setup);
            a = start(&config_a, port).await;
            let (up_a, _) = tokio::join!(
                async {
                    // The restarted manager replaces what it removes as Runner would.
                    let mut made = 0;
                    let deadline = Instant::now() + Duration::from_secs(120);
                    loop {
                        let current = states(&a).await;
                        let settled = current.iter().all(|(_, s)| *s == InstanceState::Running);
                        if settled && current.len() == 25 {
                            return made;
                        }
                        if settled && current.len() < 25 {
                            made += a.increase(25 - current.len() as u32).await.unwrap().succeeded;
                        }
                        assert_no_address_twice(&setup);
                        assert!(Instant::now() < deadline, "restarted manager did not settle: {current:?}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                settle(&setup, &b, 25)
            );
            let _ = up_a;
        }
        let ids_a = settle(&setup, &a, 25).await;
        let ids_b = settle(&setup, &b, 25).await;
        let holders = assert_no_address_twice(&setup);
        assert_eq!(holders.len(), 50, "one address per instance: {holders:?}");
        // ConnectInfo hands out the lease, and the port answers: Heartbeat is a TCP probe.
        let mut seen = BTreeSet::new();
        for (group, id) in ids_a.iter().map(|id| (&a, id)).chain(ids_b.iter().map(|id| (&b, id))) {
            let info = group.connect_info(id).await.unwrap();
            let ip: IpAddr = info.internal_addr.parse().unwrap();
            assert!(ip.to_string().starts_with("127.0.1."), "{ip}");
            assert!(seen.insert(ip), "{ip} handed out twice");
            group.heartbeat(id).await.unwrap();
        }
        let vm = setup.sim.admin().vm(vmid_of(&ids_a[0])).unwrap();
        let ipconfig = &vm.config["ipconfig0"];
        assert!(ipconfig.starts_with("ip=127.0.1.") && ipconfig.ends_with("/26,gw=127.0.1.1"), "{ipconfig}");
        assert_eq!(vm.config.get("nameserver").map(String::as_str), Some("127.0.1.2"));
        assert_eq!(vm.config.get("searchdomain").map(String::as_str), Some("ci.example.com"));
        assert!(!holders.contains_key(&"127.0.1.2".parse::<IpAddr>().unwrap()), "excluded address handed out");

        // Scale down: most of each manager's instances go.
        let (down_a, down_b) = tokio::join!(a.decrease(ids_a[5..].to_vec()), b.decrease(ids_b[5..].to_vec()));
        assert_eq!(down_a.unwrap().succeeded.len(), 20);
        assert_eq!(down_b.unwrap().succeeded.len(), 20);
        settle(&setup, &a, 5).await;
        settle(&setup, &b, 5).await;
        a.decrease(running(&a).await).await.unwrap();
        b.decrease(running(&b).await).await.unwrap();
        settle(&setup, &a, 0).await;
        settle(&setup, &b, 0).await;
        setup.assert_no_leaks();
    }

    // After the cooldown every address is free again: one manager takes 50
    // and every one of the 61 was free (none held by a leftover).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(a.increase(50).await.unwrap().succeeded, 50);
    let ids = settle(&setup, &a, 50).await;
    assert_eq!(assert_no_address_twice(&setup).len(), 50);
    a.decrease(ids).await.unwrap();
    settle(&setup, &a, 0).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agentless_instance_whose_port_closes_fails_its_heartbeat() {
    let port = free_port();
    let mut scenario = fast_scenario();
    agentless(&mut scenario, port);
    let setup = setup(scenario).await;
    let group = start(&static_config(&setup, "fleeting", 2), port).await;
    group.increase(1).await.unwrap();
    let ids = settle(&setup, &group, 1).await;
    group.heartbeat(&ids[0]).await.unwrap();
    // The guest stops (outside the plugin): its service port closes.
    let mut parsed = setup.config.clone();
    parsed["max_instances"] = 2.into();
    let config =
        fleeting_plugin_proxmox::group::config::PluginConfig::parse(parsed.to_string().as_bytes()).unwrap().config;
    let credentials = fleeting_plugin_proxmox::pve::Credentials::load(&config.credentials_file_path).unwrap();
    let pve = fleeting_plugin_proxmox::pve::PveClient::connect(config.client_config(credentials)).await.unwrap();
    let vmid = fleeting_plugin_proxmox::pve::Vmid(vmid_of(&ids[0]));
    let stop = pve.stop_vm("pve1", vmid, None).await.unwrap();
    pve.wait_task(&stop, Duration::from_secs(30)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match group.heartbeat(&ids[0]).await {
            Err(err) => {
                assert!(err.to_string().contains("could not connect to 127.0.1."), "{err}");
                break;
            }
            Ok(()) => assert!(Instant::now() < deadline, "heartbeat still passes on a stopped guest"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    group.decrease(ids).await.unwrap();
    settle(&setup, &group, 0).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_an_increase_shortfall_naming_the_pool() {
    let port = free_port();
    let mut scenario = fast_scenario();
    agentless(&mut scenario, port);
    let setup = setup(scenario).await;
    let mut config: serde_json::Value = serde_json::from_slice(&static_config(&setup, "fleeting", 3)).unwrap();
    config["ip_pool_ranges"] = "127.0.1.10-127.0.1.13".into();
    config["ip_pool_exclude"] = "127.0.1.13".into();
    // Long enough that a loaded machine still asks within it.
    config["ip_pool_reuse_cooldown"] = "8s".into();
    let group = start(config.to_string().as_bytes(), port).await;
    let first = group.increase(3).await.unwrap();
    assert_eq!(first.succeeded, 3, "{:?}", first.failures);
    let ids = settle(&setup, &group, 3).await;
    group.decrease(vec![ids[0].clone()]).await.unwrap();
    settle(&setup, &group, 2).await;
    // The freed address is cooling down: nothing is free for a new instance.
    let short = group.increase(1).await.unwrap();
    assert_eq!(short.succeeded, 0);
    assert_eq!(short.failures.len(), 1, "{:?}", short.failures);
    assert!(
        short.failures[0].to_string().contains("the static pool 127.0.1.0/26 (127.0.1.10-127.0.1.13) has none free"),
        "{:?}",
        short.failures
    );
    assert_eq!(states(&group).await.len(), 2, "no clone was made");
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1, "free again after the cooldown");
    let ids = settle(&setup, &group, 3).await;
    group.decrease(ids).await.unwrap();
    settle(&setup, &group, 0).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_pool_is_written_to_ipconfig0_and_reported_by_the_agent() {
    let setup = setup(fast_scenario()).await;
    let mut config = setup.config.clone();
    config["network_mode"] = "static".into();
    config["ip_pool_network"] = "fd00:20::/64".into();
    config["ip_pool_gateway"] = "fd00:20::1".into();
    config["instance_network_protocol"] = "ipv6".into();
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap();
    assert_eq!(group.increase(3).await.unwrap().succeeded, 3);
    let ids = settle(&setup, &group, 3).await;
    let mut seen = BTreeSet::new();
    for id in &ids {
        let info = group.connect_info(id).await.unwrap();
        let ip: std::net::Ipv6Addr = info.internal_addr.parse().unwrap();
        assert!(ip.segments()[0] == 0xfd00 && ip.segments()[1] == 0x20, "{ip}");
        assert!(seen.insert(ip));
        let vm = setup.sim.admin().vm(vmid_of(id)).unwrap();
        assert_eq!(vm.config["ipconfig0"], format!("ip6={ip}/64,gw6=fd00:20::1"));
        assert_eq!(Lease::from_tags(&vm.tags).v6, Some(ip), "the lease is in the tags: {:?}", vm.tags);
    }
    assert_no_address_twice(&setup);
    group.decrease(ids).await.unwrap();
    settle(&setup, &group, 0).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_an_instance_outside_the_changed_pool_is_replaced() {
    let port = free_port();
    let mut scenario = fast_scenario();
    agentless(&mut scenario, port);
    let setup = setup(scenario).await;
    let mut config: serde_json::Value = serde_json::from_slice(&static_config(&setup, "fleeting", 2)).unwrap();
    config["ip_pool_ranges"] = "127.0.1.10-127.0.1.11".into();
    config["ip_pool_exclude"] = serde_json::Value::Null;
    let group = start(config.to_string().as_bytes(), port).await;
    assert_eq!(group.increase(2).await.unwrap().succeeded, 2);
    let ids = settle(&setup, &group, 2).await;
    let address_of = |id: &str| {
        let vm = setup.sim.admin().vm(vmid_of(id)).unwrap();
        Lease::from_tags(&vm.tags).v4.unwrap().to_string()
    };
    let kept = ids.iter().find(|id| address_of(id) == "127.0.1.10").unwrap().clone();
    let dropped = ids.iter().find(|id| address_of(id) == "127.0.1.11").unwrap().clone();
    group.shutdown().await.unwrap();

    // The pool no longer hands out .11: its instance is replaced, the other adopted.
    config["ip_pool_ranges"] = "127.0.1.10-127.0.1.12".into();
    config["ip_pool_exclude"] = "127.0.1.11".into();
    let group = start(config.to_string().as_bytes(), port).await;
    let states = wait_until(&group, "the instance outside the pool removed", |states| {
        states.len() == 1 && states[0].1 == InstanceState::Running
    })
    .await;
    assert_eq!(states[0].0, kept);
    assert!(setup.sim.admin().vm(vmid_of(&dropped)).is_none(), "the instance at .11 is gone");
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let ids = settle(&setup, &group, 2).await;
    let mut addresses: Vec<String> = ids.iter().map(|id| address_of(id)).collect();
    addresses.sort();
    assert_eq!(addresses, ["127.0.1.10", "127.0.1.12"]);
    group.decrease(ids).await.unwrap();
    settle(&setup, &group, 0).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nameserver_and_searchdomain_are_written_with_dhcp_too() {
    let setup = setup(fast_scenario()).await;
    let mut config = setup.config.clone();
    config["nameserver"] = serde_json::json!(["10.0.20.2", "fd00:20::2"]);
    config["searchdomain"] = "ci.example.com".into();
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), static_credentials()).await.unwrap();
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let ids = settle(&setup, &group, 1).await;
    let vm = setup.sim.admin().vm(vmid_of(&ids[0])).unwrap();
    assert_eq!(vm.config.get("nameserver").map(String::as_str), Some("10.0.20.2 fd00:20::2"));
    assert_eq!(vm.config.get("searchdomain").map(String::as_str), Some("ci.example.com"));
    assert!(Lease::from_tags(&vm.tags).is_empty(), "no lease with DHCP");
    group.decrease(ids).await.unwrap();
    settle(&setup, &group, 0).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}
