//! The guest agent, in the form "a real PVE answers this request like
//! this": not running until boot plus the agent delay, then interfaces with
//! `net0`'s MAC and addresses from the node's subnet; PVE's errors in PVE's
//! order; reproducible MACs and leases with a seed.

#[path = "sim/common.rs"]
mod common;

use std::net::IpAddr;

use common::*;
use fleeting_plugin_proxmox::pve::{CloneRequest, ConfigUpdate, PveClient, Vmid};
use fleeting_plugin_proxmox::sim::config::ExtraInterface;
use fleeting_plugin_proxmox::sim::{AgentState, Scenario};

async fn clone_and_start(pve: &PveClient, vmid: u32) {
    let request = CloneRequest { new_vmid: Some(Vmid(vmid)), pool: Some("ci".into()), ..Default::default() };
    wait(pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    wait(pve, &pve.start_vm("pve1", Vmid(vmid)).await.unwrap()).await.unwrap();
}

/// Polls the agent until it answers (simulated boot + agent delay).
async fn until_agent_answers(pve: &PveClient, vmid: u32) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match pve.agent_ping("pve1", Vmid(vmid)).await {
            Ok(()) => return,
            Err(err) => {
                assert!(err.to_string().contains("QEMU guest agent is not running"), "{err}");
                assert!(tokio::time::Instant::now() < deadline, "the agent never came up");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

fn slow_boot() -> Scenario {
    let mut scenario = fast_scenario();
    scenario.time_scale = 10.0;
    scenario.timings.boot = 10.0;
    scenario.timings.agent_delay = 3.0;
    scenario
}

#[tokio::test]
async fn the_agent_answers_after_boot_with_net0s_mac_and_a_lease() {
    let sim = start(slow_boot()).await;
    let pve = token_client(&sim);
    clone_and_start(&pve, 300).await;
    let err = pve.agent_ping("pve1", Vmid(300)).await.unwrap_err();
    assert!(err.to_string().contains("PVE answered 500: QEMU guest agent is not running"), "{err}");
    assert!(!sim.admin().vm(300).unwrap().agent_running);
    until_agent_answers(&pve, 300).await;

    let interfaces = pve.guest_interfaces("pve1", Vmid(300)).await.unwrap();
    let names: Vec<&str> = interfaces.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["lo", "ens18"]);
    let config = pve.vm_config("pve1", Vmid(300)).await.unwrap();
    let mac = config["net0"].split(',').next().unwrap().split_once('=').unwrap().1.to_ascii_lowercase();
    let nic = &interfaces[1];
    assert_eq!(nic.mac.as_deref(), Some(mac.as_str()));
    let v4: Vec<_> = nic.addresses.iter().filter(|(ip, _)| ip.is_ipv4()).collect();
    assert_eq!(v4, [&("10.10.10.100".parse::<IpAddr>().unwrap(), 24)], "a DHCP lease from pve1's subnet");
    let v6: Vec<String> = nic.addresses.iter().filter(|(ip, _)| ip.is_ipv6()).map(|(ip, _)| ip.to_string()).collect();
    assert_eq!(v6.len(), 2);
    assert!(v6[0].starts_with("fd00:10:10:10:"), "{v6:?}");
    assert!(v6[1].starts_with("fe80::"), "{v6:?}");

    let os: serde_json::Map<String, serde_json::Value> =
        pve.api().get_nodes_node_qemu_vmid_agent_get_osinfo("pve1", 300).await.unwrap().into_inner().data;
    assert_eq!(os["result"]["id"], "debian");

    // A second VM gets the next lease.
    clone_and_start(&pve, 301).await;
    until_agent_answers(&pve, 301).await;
    let second = pve.guest_interfaces("pve1", Vmid(301)).await.unwrap();
    assert_eq!(second[1].addresses[0], ("10.10.10.101".parse().unwrap(), 24));
}

#[tokio::test]
async fn agent_errors_come_in_pves_order() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    let request = CloneRequest { new_vmid: Some(Vmid(310)), pool: Some("ci".into()), ..Default::default() };
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    let err = pve.agent_ping("pve1", Vmid(310)).await.unwrap_err();
    assert!(err.to_string().contains("VM 310 is not running"), "{err}");
    let raw = raw_client()
        .put(format!("{}/nodes/pve1/qemu/310/config", sim.api_url()))
        .header("Authorization", token_header())
        .form(&[("agent", "enabled=0")])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.status(), 200);
    wait(&pve, &pve.start_vm("pve1", Vmid(310)).await.unwrap()).await.unwrap();
    let err = pve.guest_interfaces("pve1", Vmid(310)).await.unwrap_err();
    assert!(err.to_string().contains("No QEMU guest agent configured"), "{err}");
}

#[tokio::test]
async fn static_addresses_and_extra_interfaces() {
    let mut scenario = fast_scenario();
    scenario.vms[0].agent.extra_interfaces =
        vec![ExtraInterface { name: "docker0".into(), ipv4: Some("172.17.0.1/16".into()), ..Default::default() }];
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let request = CloneRequest { new_vmid: Some(Vmid(320)), pool: Some("ci".into()), ..Default::default() };
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    let update = ConfigUpdate { ipconfig0: Some("ip=10.10.10.77/24,gw=10.10.10.1".into()), ..Default::default() };
    pve.update_vm_config("pve1", Vmid(320), &update).await.unwrap();
    wait(&pve, &pve.start_vm("pve1", Vmid(320)).await.unwrap()).await.unwrap();
    until_agent_answers(&pve, 320).await;
    let interfaces = pve.guest_interfaces("pve1", Vmid(320)).await.unwrap();
    assert_eq!(interfaces[1].addresses[0], ("10.10.10.77".parse().unwrap(), 24));
    assert_eq!(interfaces[2].name, "docker0");
    assert_eq!(interfaces[2].addresses, [("172.17.0.1".parse().unwrap(), 16)]);
}

#[tokio::test]
async fn a_broken_agent_never_answers() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    clone_and_start(&pve, 330).await;
    until_agent_answers(&pve, 330).await;
    sim.admin().set_agent(330, AgentState::Killed).unwrap();
    let err = pve.agent_ping("pve1", Vmid(330)).await.unwrap_err();
    assert!(err.to_string().contains("QEMU guest agent is not running"), "{err}");
    sim.admin().set_agent(330, AgentState::Running).unwrap();
    pve.agent_ping("pve1", Vmid(330)).await.unwrap();

    // A template whose image has a broken agent passes it on to its clones.
    sim.admin().set_agent(9000, AgentState::NeverUp).unwrap();
    clone_and_start(&pve, 331).await;
    // 100 simulated seconds: far beyond boot and agent delay.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let err = pve.agent_ping("pve1", Vmid(331)).await.unwrap_err();
    assert!(err.to_string().contains("QEMU guest agent is not running"), "{err}");
}

#[tokio::test]
async fn a_seed_makes_macs_and_leases_reproducible() {
    /// The MACs of three clones and the pids of their tasks' UPIDs (the
    /// start times follow the real clock, so they are left out).
    async fn macs(seed: u64) -> Vec<String> {
        let mut scenario = fast_scenario();
        scenario.seed = Some(seed);
        let sim = start(scenario).await;
        let pve = token_client(&sim);
        let mut macs = Vec::new();
        for vmid in [400, 401, 402] {
            let request = CloneRequest { new_vmid: Some(Vmid(vmid)), pool: Some("ci".into()), ..Default::default() };
            let upid = pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap();
            wait(&pve, &upid).await.unwrap();
            macs.push(sim.admin().vm(vmid).unwrap().config["net0"].clone());
            macs.push(format!("UPID pid {}", upid.pid));
        }
        macs
    }
    let first = macs(5).await;
    assert_eq!(first, macs(5).await);
    assert_ne!(first, macs(6).await);
}

async fn connects(address: &str) -> bool {
    let connect = tokio::net::TcpStream::connect(address);
    matches!(tokio::time::timeout(std::time::Duration::from_secs(1), connect).await, Ok(Ok(_)))
}

/// A clone with a static `ipconfig0`, started.
async fn static_clone(pve: &PveClient, vmid: u32, ipconfig0: &str) {
    let request = CloneRequest { new_vmid: Some(Vmid(vmid)), pool: Some("ci".into()), ..Default::default() };
    wait(pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
    let update = ConfigUpdate { ipconfig0: Some(ipconfig0.into()), ..Default::default() };
    pve.update_vm_config("pve1", Vmid(vmid), &update).await.unwrap();
    wait(pve, &pve.start_vm("pve1", Vmid(vmid)).await.unwrap()).await.unwrap();
}

#[tokio::test]
async fn a_guests_service_port_opens_on_its_loopback_static_address_only_after_boot() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut scenario = slow_boot();
    scenario.vms[0].config.insert("agent".into(), "0".into());
    scenario.vms[0].agent.service_port = Some(port);
    let sim = start(scenario).await;
    let pve = token_client(&sim);
    let guest = format!("127.0.2.21:{port}");
    static_clone(&pve, 321, "ip=127.0.2.21/24,gw=127.0.2.1").await;
    // Not a loopback address: its service never listens anywhere.
    static_clone(&pve, 322, "ip=10.10.10.78/24,gw=10.10.10.1").await;
    assert!(!connects(&guest).await, "open before the guest booted");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !connects(&guest).await {
        assert!(tokio::time::Instant::now() < deadline, "the service port never opened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    for elsewhere in [format!("127.0.0.1:{port}"), format!("[::1]:{port}")] {
        assert!(!connects(&elsewhere).await, "a guest listens on {elsewhere}");
    }
    // No agent: PVE says so, the service answers anyway.
    let err = pve.agent_ping("pve1", Vmid(321)).await.unwrap_err();
    assert!(err.to_string().contains("No QEMU guest agent configured"), "{err}");
    wait(&pve, &pve.stop_vm("pve1", Vmid(321), None).await.unwrap()).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while connects(&guest).await {
        assert!(tokio::time::Instant::now() < deadline, "the service port stayed open after the stop");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_static_ipv6_address_is_reported_by_the_agent() {
    let sim = start(fast_scenario()).await;
    let pve = token_client(&sim);
    static_clone(&pve, 323, "ip6=fd00:20::5/64,gw6=fd00:20::1").await;
    until_agent_answers(&pve, 323).await;
    let interfaces = pve.guest_interfaces("pve1", Vmid(323)).await.unwrap();
    let expected: IpAddr = "fd00:20::5".parse().unwrap();
    assert!(interfaces[1].addresses.contains(&(expected, 64)), "{:?}", interfaces[1]);
}
