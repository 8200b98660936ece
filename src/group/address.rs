//! Which guest address Runner connects to. The guest agent reports every
//! interface; the right one is the interface whose MAC equals net0's (robust
//! against Docker bridges and renamed NICs), else the configured interface
//! name. Loopback, link-local and container bridges never count. Private
//! addresses are internal, global ones external.

use std::net::IpAddr;

use super::config::NetworkProtocol;
use crate::pve::GuestInterface;

/// The addresses chosen for one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Addresses {
    pub internal: Option<IpAddr>,
    pub external: Option<IpAddr>,
}

impl Addresses {
    pub fn is_empty(&self) -> bool {
        self.internal.is_none() && self.external.is_none()
    }
}

/// `virtio=BC:24:11:…,bridge=vmbr0` or `macaddr=…` → the MAC, lower-cased.
pub fn mac_of_net0(net0: &str) -> Option<String> {
    net0.split(',').find_map(|part| {
        let (key, value) = part.split_once('=')?;
        let is_mac = value.len() == 17 && value.split(':').count() == 6;
        (key == "macaddr" || is_mac).then(|| value.to_ascii_lowercase())
    })
}

fn is_container_bridge(name: &str) -> bool {
    ["docker", "br-", "veth", "virbr", "cni", "flannel", "cali", "lxc", "podman"].iter().any(|p| name.starts_with(p))
}

fn usable(ip: &IpAddr, protocol: NetworkProtocol) -> bool {
    let family_ok = match protocol {
        NetworkProtocol::Ipv4 => ip.is_ipv4(),
        NetworkProtocol::Ipv6 => ip.is_ipv6(),
        NetworkProtocol::Any => true,
    };
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    family_ok && !ip.is_loopback() && !ip.is_unspecified() && !ip.is_multicast() && !link_local
}

fn is_private(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private() || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64, // RFC 1918, CGNAT
        IpAddr::V6(v6) => (v6.segments()[0] & 0xfe00) == 0xfc00,                                     // unique local
    }
}

/// Picks the addresses from the agent's interface list.
pub fn select(
    interfaces: &[GuestInterface],
    net0_mac: Option<&str>,
    name: &str,
    name_first: bool,
    protocol: NetworkProtocol,
) -> Addresses {
    let by_mac = || net0_mac.and_then(|mac| interfaces.iter().find(|i| i.mac.as_deref() == Some(mac)));
    let by_name = || interfaces.iter().find(|i| i.name == name);
    // An interface the admin named is read first, as the seed reads it;
    // otherwise net0's MAC decides and the default name is the fallback.
    let chosen = if name_first { by_name().or_else(by_mac) } else { by_mac().or_else(by_name) };
    let Some(interface) = chosen.filter(|i| i.name != "lo" && !is_container_bridge(&i.name)) else {
        return Addresses::default();
    };
    let mut addresses = Addresses::default();
    // IPv4 first when both are allowed: it is what most runners reach.
    let mut candidates: Vec<IpAddr> =
        interface.addresses.iter().map(|(ip, _)| *ip).filter(|ip| usable(ip, protocol)).collect();
    candidates.sort_by_key(|ip| ip.is_ipv6());
    for ip in candidates {
        if is_private(&ip) {
            addresses.internal.get_or_insert(ip);
        } else {
            addresses.external.get_or_insert(ip);
        }
    }
    addresses
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, mac: &str, ips: &[&str]) -> GuestInterface {
        GuestInterface {
            name: name.into(),
            mac: Some(mac.into()),
            addresses: ips.iter().map(|ip| (ip.parse().unwrap(), 24)).collect(),
        }
    }

    fn guest() -> Vec<GuestInterface> {
        vec![
            interface("lo", "00:00:00:00:00:00", &["127.0.0.1", "::1"]),
            interface("docker0", "02:42:ac:11:00:01", &["172.17.0.1"]),
            interface("eth0", "bc:24:11:aa:bb:cc", &["fe80::1", "10.0.0.5", "2001:db8::5"]),
        ]
    }

    #[test]
    fn reads_the_mac_of_net0() {
        assert_eq!(
            mac_of_net0("virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1").as_deref(),
            Some("bc:24:11:aa:bb:cc")
        );
        assert_eq!(mac_of_net0("model=virtio,macaddr=BC:24:11:AA:BB:CC").as_deref(), Some("bc:24:11:aa:bb:cc"));
        assert_eq!(mac_of_net0("virtio,bridge=vmbr0"), None);
    }

    #[test]
    fn picks_the_interface_of_net0_by_mac() {
        let chosen = select(&guest(), Some("bc:24:11:aa:bb:cc"), "ens18", false, NetworkProtocol::Ipv4);
        assert_eq!(chosen.internal, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(chosen.external, None);
        let chosen = select(&guest(), Some("bc:24:11:aa:bb:cc"), "ens18", false, NetworkProtocol::Ipv6);
        assert_eq!(chosen.external, Some("2001:db8::5".parse().unwrap()), "link-local is skipped");
        let chosen = select(&guest(), Some("bc:24:11:aa:bb:cc"), "ens18", false, NetworkProtocol::Any);
        assert_eq!(chosen.internal, Some("10.0.0.5".parse().unwrap()));
        assert_eq!(chosen.external, Some("2001:db8::5".parse().unwrap()));
    }

    #[test]
    fn falls_back_to_the_named_interface_never_to_bridges() {
        let chosen = select(&guest(), None, "eth0", false, NetworkProtocol::Ipv4);
        assert_eq!(chosen.internal, Some("10.0.0.5".parse().unwrap()));
        assert!(select(&guest(), None, "docker0", false, NetworkProtocol::Ipv4).is_empty());
        assert!(
            select(&guest(), Some("00:00:00:00:00:00"), "ens18", false, NetworkProtocol::Any).is_empty(),
            "loopback"
        );
        assert!(select(&guest(), None, "ens18", false, NetworkProtocol::Ipv4).is_empty());
    }

    #[test]
    fn an_interface_the_admin_named_is_read_first() {
        let mut interfaces = guest();
        interfaces.push(interface("ens19", "bc:24:11:00:00:19", &["192.168.50.7"]));
        let named = select(&interfaces, Some("bc:24:11:aa:bb:cc"), "ens19", true, NetworkProtocol::Ipv4);
        assert_eq!(named.internal, Some("192.168.50.7".parse().unwrap()), "the named one, not net0's");
        let by_mac = select(&interfaces, Some("bc:24:11:aa:bb:cc"), "ens19", false, NetworkProtocol::Ipv4);
        assert_eq!(by_mac.internal, Some("10.0.0.5".parse().unwrap()), "the default name is only a fallback");
        let missing = select(&interfaces, Some("bc:24:11:aa:bb:cc"), "ens20", true, NetworkProtocol::Ipv4);
        assert_eq!(missing.internal, Some("10.0.0.5".parse().unwrap()), "net0's when the named one is absent");
    }
}
