//! The QEMU guest agent inside a simulated VM: when it answers, and what
//! `guest-network-get-interfaces` and `guest-get-osinfo` report.
//!
//! The agent answers once the VM has run for `boot + agent_delay`
//! (simulated), unless the scenario or the admin API broke it. Until then
//! PVE's errors apply, checked in PVE's order: no agent configured, VM not
//! running, agent not running.

use serde_json::{Value, json};

use super::clock::SimTime;
use super::cluster::Cluster;
use super::config::Timings;
use super::schema::parse_cidr_v4;
use super::vm::{self, Power, Vm};
use super::wire::ApiError;

/// PVE's `agent_available` check.
pub fn check_available(guest: &Vm, now: SimTime, timings: &Timings) -> Result<(), ApiError> {
    if !guest.agent_enabled() {
        return Err(ApiError::internal("No QEMU guest agent configured"));
    }
    let Power::Running { since, paused } = guest.power else {
        return Err(ApiError::internal(format!("VM {} is not running", guest.vmid)));
    };
    let up =
        !guest.agent.never_up && !guest.agent_killed && !paused && now >= since + timings.boot + timings.agent_delay;
    if !up {
        return Err(ApiError::internal("QEMU guest agent is not running"));
    }
    Ok(())
}

/// `{"result": [...]}` for `network-get-interfaces`: `lo`, the NIC of
/// `net0` with its MAC, a DHCP lease (or `ipconfig0`'s static address) and
/// SLAAC/link-local IPv6, then the scenario's extra interfaces.
pub fn network_interfaces(cluster: &Cluster, guest: &Vm) -> Value {
    let mut interfaces = vec![json!({
        "name": "lo",
        "hardware-address": "00:00:00:00:00:00",
        "ip-addresses": [
            { "ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8 },
            { "ip-address": "::1", "ip-address-type": "ipv6", "prefix": 128 }
        ],
        "statistics": statistics(guest.vmid, 0)
    })];
    if let Some(mac) = guest.net0_mac() {
        let mac_lower = mac.to_ascii_lowercase();
        let ipconfig = guest.config.get("ipconfig0").cloned().unwrap_or_default();
        let mut addresses = Vec::new();
        let static_v4 = vm::property(&ipconfig, "ip").filter(|ip| ip != "dhcp").and_then(|ip| parse_cidr_v4(&ip));
        match static_v4 {
            Some((address, prefix)) => addresses
                .push(json!({ "ip-address": address.to_string(), "ip-address-type": "ipv4", "prefix": prefix })),
            None => {
                if let (Some(lease), Some(node)) = (cluster.lease(&guest.node, &mac), cluster.nodes.get(&guest.node)) {
                    addresses.push(
                        json!({ "ip-address": lease.to_string(), "ip-address-type": "ipv4", "prefix": node.prefix }),
                    );
                }
            }
        }
        // A static IPv6 address is the guest's own, with or without SLAAC on the node.
        let static_v6 = vm::property(&ipconfig, "ip6").filter(|ip| ip != "dhcp" && ip != "auto");
        let static_v6 = static_v6.as_deref().and_then(|ip| ip.split_once('/'));
        if let Some((address, prefix)) = static_v6 {
            addresses.push(json!({ "ip-address": address, "ip-address-type": "ipv6", "prefix": prefix.parse::<u8>().unwrap_or(64) }));
        }
        if let Some((global, link_local)) = cluster.ipv6_for(&guest.node, &mac) {
            if static_v6.is_none() {
                addresses.push(json!({ "ip-address": global.to_string(), "ip-address-type": "ipv6", "prefix": 64 }));
            }
            addresses.push(json!({ "ip-address": link_local.to_string(), "ip-address-type": "ipv6", "prefix": 64 }));
        }
        interfaces.push(json!({
            "name": "ens18",
            "hardware-address": mac_lower,
            "ip-addresses": addresses,
            "statistics": statistics(guest.vmid, 1)
        }));
    }
    for (index, extra) in guest.agent.extra_interfaces.iter().enumerate() {
        let mut addresses = Vec::new();
        if let Some((address, prefix)) = extra.ipv4.as_deref().and_then(parse_cidr_v4) {
            addresses.push(json!({ "ip-address": address.to_string(), "ip-address-type": "ipv4", "prefix": prefix }));
        }
        if let Some((address, prefix)) = extra.ipv6.as_deref().and_then(|ip| ip.split_once('/')) {
            addresses.push(json!({ "ip-address": address, "ip-address-type": "ipv6", "prefix": prefix.parse::<u8>().unwrap_or(64) }));
        }
        let mac = extra.mac.clone().unwrap_or_else(|| {
            format!("02:42:ac:11:{:02x}:{:02x}", (guest.vmid >> 8) & 0xff, (guest.vmid as usize + index) & 0xff)
        });
        interfaces.push(json!({
            "name": extra.name,
            "hardware-address": mac.to_ascii_lowercase(),
            "ip-addresses": addresses,
            "statistics": statistics(guest.vmid, index as u64 + 2)
        }));
    }
    json!({ "result": interfaces })
}

fn statistics(vmid: u32, index: u64) -> Value {
    let base = u64::from(vmid) * 1000 + index * 100;
    json!({
        "rx-bytes": base * 64, "rx-packets": base, "rx-errs": 0, "rx-dropped": 0,
        "tx-bytes": base * 32, "tx-packets": base / 2, "tx-errs": 0, "tx-dropped": 0
    })
}

/// `guest-get-osinfo` of the Debian image the templates pretend to be.
pub fn os_info() -> Value {
    json!({ "result": {
        "id": "debian",
        "name": "Debian GNU/Linux",
        "pretty-name": "Debian GNU/Linux 12 (bookworm)",
        "version": "12 (bookworm)",
        "version-id": "12",
        "kernel-release": "6.1.0-28-amd64",
        "kernel-version": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
        "machine": "x86_64"
    }})
}
