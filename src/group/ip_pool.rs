//! Static addressing (`network_mode = "static"`): the address pools of
//! `ip_pool_*`, and the lease an instance holds.
//!
//! A lease lives on the VM itself, never in a state file: in the description
//! marker, written atomically with the clone request, and in tags
//! (`ip-10-0-20-5`, `ip6-fd00-20-0-0-0-0-0-5`), set with the first config
//! update, so the one `/cluster/resources` listing shows every configured
//! lease. Whatever crashes, an address is either on no VM or on exactly the
//! VM that holds it (see `lease` for how allocation reads both).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use super::config::NetworkProtocol;

/// Tag prefix of an IPv4 lease.
const V4_TAG: &str = "ip-";
/// Tag prefix of an IPv6 lease.
const V6_TAG: &str = "ip6-";

/// The static network of a group: at most one pool per address family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticNetwork {
    pub v4: Option<AddressPool>,
    pub v6: Option<AddressPool>,
    /// How long an address freed by a deletion stays out of allocation.
    pub reuse_cooldown: Duration,
}

impl StaticNetwork {
    pub fn pools(&self) -> impl Iterator<Item = &AddressPool> {
        self.v4.iter().chain(self.v6.iter())
    }

    /// The most instances the pools can address at once.
    pub fn capacity(&self) -> u128 {
        self.pools().map(AddressPool::size).min().unwrap_or(0)
    }

    /// `ip=…/24,gw=…` and/or `ip6=…/64,gw6=…` for `ipconfig0`.
    pub fn ipconfig(&self, lease: &Lease) -> String {
        let mut parts = Vec::new();
        if let (Some(pool), Some(ip)) = (&self.v4, lease.v4) {
            parts.push(format!("ip={ip}/{}", pool.prefix));
            parts.push(format!("gw={}", pool.gateway));
        }
        if let (Some(pool), Some(ip)) = (&self.v6, lease.v6) {
            parts.push(format!("ip6={ip}/{}", pool.prefix));
            parts.push(format!("gw6={}", pool.gateway));
        }
        parts.join(",")
    }

    /// The pools as an operator reads them, e.g. `10.0.20.0/26 (10.0.20.10-10.0.20.60)`.
    pub fn describe(&self) -> String {
        self.pools().map(AddressPool::describe).collect::<Vec<_>>().join(" and ")
    }
}

/// One address family's pool: a network, its gateway, the ranges handed
/// out (the whole network when none are given) minus the excluded addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressPool {
    pub network: IpAddr,
    pub prefix: u8,
    pub gateway: IpAddr,
    /// Inclusive, ordered, non-overlapping, inside the network, as numbers.
    pub ranges: Vec<(u128, u128)>,
    /// Never handed out (besides the gateway, the network's own address and
    /// IPv4's broadcast, which default ranges leave out).
    pub exclude: Vec<(u128, u128)>,
}

impl AddressPool {
    /// The network as `a.b.c.d/n`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.network, self.prefix)
    }

    pub fn describe(&self) -> String {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|(first, last)| {
                let (first, last) = (from_number(self.network, *first), from_number(self.network, *last));
                if first == last { first.to_string() } else { format!("{first}-{last}") }
            })
            .collect();
        format!("{} ({})", self.cidr(), ranges.join(", "))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.network.is_ipv4() && in_network(self.network, self.prefix, ip)
    }

    /// Whether `ip` may be handed out: in a range, not excluded, not the gateway.
    pub fn allows(&self, ip: IpAddr) -> bool {
        if !self.contains(ip) || ip == self.gateway {
            return false;
        }
        let n = number(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&n))
            && !self.exclude.iter().any(|(a, b)| (*a..=*b).contains(&n))
    }

    /// Addresses the pool can hand out (exclusions and the gateway counted off).
    pub fn size(&self) -> u128 {
        let total: u128 = self.ranges.iter().map(|(a, b)| b - a + 1).sum();
        let mut off: u128 = 0;
        for (first, last) in &self.ranges {
            for (a, b) in &self.exclude {
                let (lo, hi) = ((*a).max(*first), (*b).min(*last));
                if lo <= hi {
                    off += hi - lo + 1;
                }
            }
            let gateway = number(self.gateway);
            let excluded = self.exclude.iter().any(|(a, b)| (*a..=*b).contains(&gateway));
            if (*first..=*last).contains(&gateway) && !excluded {
                off += 1;
            }
        }
        total.saturating_sub(off)
    }

    /// A free address: the first allowed one not in `taken`, walking the
    /// ranges from the `start`-th address (wrapping). A random start keeps
    /// two managers sharing the pool apart and spreads reuse; the walk ends
    /// at the first free address, so a /64 costs no more than a /26.
    pub fn pick(&self, taken: &HashSet<IpAddr>, start: u128) -> Option<IpAddr> {
        let total: u128 = self.ranges.iter().map(|(a, b)| b - a + 1).sum();
        let mut offset = start.checked_rem(total)?;
        for _ in 0..total {
            let ip = from_number(self.network, self.nth(offset));
            if self.allows(ip) && !taken.contains(&ip) {
                return Some(ip);
            }
            offset = (offset + 1) % total;
        }
        None
    }

    /// The `index`-th address of the ranges, as a number.
    fn nth(&self, mut index: u128) -> u128 {
        for (first, last) in &self.ranges {
            let len = last - first + 1;
            if index < len {
                return first + index;
            }
            index -= len;
        }
        self.ranges.first().map_or(0, |(first, _)| *first)
    }
}

/// The addresses an instance holds: one per configured family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Lease {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl Lease {
    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    pub fn addresses(&self) -> impl Iterator<Item = IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }

    /// The address Runner connects to: the family `protocol` names first,
    /// the other when the pool has only that.
    pub fn connect_address(&self, protocol: NetworkProtocol) -> Option<IpAddr> {
        let (v4, v6) = (self.v4.map(IpAddr::V4), self.v6.map(IpAddr::V6));
        match protocol {
            NetworkProtocol::Ipv6 => v6.or(v4),
            NetworkProtocol::Ipv4 | NetworkProtocol::Any => v4.or(v6),
        }
    }

    /// Tags that carry the lease: `ip-10-0-20-5`; IPv6 as its eight groups
    /// in hex, uncompressed (`::` and `:` are no tag characters, and a fixed
    /// form reads back unambiguously): `ip6-fd00-20-0-0-0-0-0-5`.
    pub fn tags(&self) -> Vec<String> {
        let mut tags = Vec::new();
        if let Some(ip) = self.v4 {
            tags.push(format!("{V4_TAG}{}", ip.to_string().replace('.', "-")));
        }
        if let Some(ip) = self.v6 {
            let groups: Vec<String> = ip.segments().iter().map(|g| format!("{g:x}")).collect();
            tags.push(format!("{V6_TAG}{}", groups.join("-")));
        }
        tags
    }

    /// The lease written in tags, of any group.
    pub fn from_tags(tags: &[String]) -> Self {
        let mut lease = Self::default();
        for tag in tags {
            if let Some(rest) = tag.strip_prefix(V6_TAG) {
                let groups: Vec<u16> = rest.split('-').filter_map(|g| u16::from_str_radix(g, 16).ok()).collect();
                if let Ok(segments) = <[u16; 8]>::try_from(groups) {
                    lease.v6 = Some(Ipv6Addr::from(segments));
                }
            } else if let Some(rest) = tag.strip_prefix(V4_TAG) {
                lease.v4 = rest.replace('-', ".").parse().ok().or(lease.v4);
            }
        }
        lease
    }

    /// Whether a tag is a lease tag (replaced as a whole when tags are set).
    pub fn is_lease_tag(tag: &str) -> bool {
        tag.starts_with(V4_TAG) || tag.starts_with(V6_TAG)
    }

    /// ` ip=10.0.20.5 ip6=fd00:20::5` for the description marker's first line.
    pub fn marker_fields(&self) -> String {
        let mut text = String::new();
        if let Some(ip) = self.v4 {
            text.push_str(&format!(" ip={ip}"));
        }
        if let Some(ip) = self.v6 {
            text.push_str(&format!(" ip6={ip}"));
        }
        text
    }

    /// The lease in a marker's fields (`ip=`, `ip6=`), of any group.
    pub fn from_marker_line(line: &str) -> Self {
        let mut lease = Self::default();
        for field in line.split_whitespace() {
            match field.split_once('=') {
                Some(("ip", value)) => lease.v4 = value.parse().ok(),
                Some(("ip6", value)) => lease.v6 = value.parse().ok(),
                _ => {}
            }
        }
        lease
    }

    /// The static addresses of an `ipconfigN` value (`ip=…/n`, `ip6=…/n`).
    pub fn from_ipconfig(value: &str) -> Self {
        let mut lease = Self::default();
        for part in value.split(',') {
            let address = |text: &str| text.split('/').next().unwrap_or_default().to_string();
            match part.split_once('=') {
                Some(("ip", v)) => lease.v4 = address(v).parse().ok(),
                Some(("ip6", v)) => lease.v6 = address(v).parse().ok(),
                _ => {}
            }
        }
        lease
    }
}

/// An address as a number, for ranges of either family.
pub fn number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(ip) => u128::from(u32::from(ip)),
        IpAddr::V6(ip) => u128::from(ip),
    }
}

/// The address of `number` in the family of `like`.
pub fn from_number(like: IpAddr, number: u128) -> IpAddr {
    match like {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from(number as u32)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(number)),
    }
}

fn bits(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// The mask of a prefix as a number of the family's width.
fn host_mask(ip: IpAddr, prefix: u8) -> u128 {
    let host_bits = u32::from(bits(ip) - prefix);
    if host_bits >= 128 { u128::MAX } else { (1u128 << host_bits) - 1 }
}

pub fn in_network(network: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    ip.is_ipv4() == network.is_ipv4() && number(ip) & !host_mask(ip, prefix) == number(network)
}

/// Parses `10.0.20.0/24` or `fd00:20::/64`; the host bits must be zero.
pub fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let (address, prefix) = text.trim().split_once('/').ok_or("is not a network; write it like \"10.0.20.0/24\"")?;
    let address: IpAddr = address.parse().map_err(|_| "is not a network; write it like \"10.0.20.0/24\"")?;
    let prefix: u8 = prefix.parse().map_err(|_| "has no prefix length after `/`")?;
    let largest = if address.is_ipv4() { 30 } else { 126 };
    if prefix == 0 || prefix > largest {
        return Err(format!("has prefix /{prefix}; a pool needs a prefix between /1 and /{largest}"));
    }
    let mask = host_mask(address, prefix);
    if number(address) & mask != 0 {
        let network = from_number(address, number(address) & !mask);
        return Err(format!("has host bits set; write the network \"{network}/{prefix}\""));
    }
    Ok((address, prefix))
}

/// Parses `a-b` or a single address into an inclusive pair.
pub fn parse_range(text: &str) -> Result<(IpAddr, IpAddr), String> {
    let text = text.trim();
    let (first, last) = text.split_once('-').unwrap_or((text, text));
    let parse = |part: &str| part.trim().parse::<IpAddr>().map_err(|_| "is not an address or range \"first-last\"");
    let (first, last) = (parse(first)?, parse(last)?);
    if first.is_ipv4() != last.is_ipv4() {
        return Err("mixes IPv4 and IPv6".into());
    }
    if number(first) > number(last) {
        return Err("ends before it starts".into());
    }
    Ok((first, last))
}

/// The addresses a network hands out by default: all but its own address,
/// IPv4's broadcast, and (left to `allows`) the gateway.
pub fn default_range(network: IpAddr, prefix: u8) -> (u128, u128) {
    let first = number(network) + 1;
    let last = number(network) | host_mask(network, prefix);
    if network.is_ipv4() { (first, last - 1) } else { (first, last) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(cidr: &str, gateway: &str, ranges: &[&str], exclude: &[&str]) -> AddressPool {
        let (network, prefix) = parse_cidr(cidr).unwrap();
        let numbers = |texts: &[&str]| -> Vec<(u128, u128)> {
            texts.iter().map(|t| parse_range(t).unwrap()).map(|(a, b)| (number(a), number(b))).collect()
        };
        let ranges = if ranges.is_empty() { vec![default_range(network, prefix)] } else { numbers(ranges) };
        AddressPool { network, prefix, gateway: gateway.parse().unwrap(), ranges, exclude: numbers(exclude) }
    }

    #[test]
    fn a_26_hands_out_61_addresses_never_the_gateway_network_or_broadcast() {
        let pool = pool("127.0.1.0/26", "127.0.1.1", &[], &[]);
        assert_eq!(pool.size(), 61);
        let mut taken = HashSet::new();
        for start in 0..61 {
            let ip = pool.pick(&taken, start * 7).expect("free address");
            assert!(taken.insert(ip), "{ip} twice");
        }
        assert_eq!(pool.pick(&taken, 3), None, "exhausted");
        for never in ["127.0.1.0", "127.0.1.1", "127.0.1.63"] {
            assert!(!taken.contains(&never.parse().unwrap()), "{never} handed out");
        }
    }

    #[test]
    fn ranges_and_excludes_bound_the_pool() {
        let pool = pool("10.0.20.0/24", "10.0.20.1", &["10.0.20.10-10.0.20.14"], &["10.0.20.12"]);
        assert_eq!(pool.size(), 4);
        let mut taken = HashSet::new();
        while let Some(ip) = pool.pick(&taken, 0) {
            taken.insert(ip);
        }
        let mut got: Vec<String> = taken.iter().map(ToString::to_string).collect();
        got.sort();
        assert_eq!(got, ["10.0.20.10", "10.0.20.11", "10.0.20.13", "10.0.20.14"]);
        assert_eq!(pool.describe(), "10.0.20.0/24 (10.0.20.10-10.0.20.14)");
    }

    #[test]
    fn an_ipv6_64_is_cheap_to_pick_from() {
        let pool = pool("fd00:20::/64", "fd00:20::1", &[], &[]);
        let taken: HashSet<IpAddr> = ["fd00:20::2".parse().unwrap()].into();
        let ip = pool.pick(&taken, 0).unwrap();
        assert_eq!(ip.to_string(), "fd00:20::3");
        assert!(pool.pick(&taken, u128::MAX - 5).is_some());
    }

    #[test]
    fn leases_round_trip_through_tags_marker_and_ipconfig() {
        let lease = Lease { v4: Some("10.0.20.5".parse().unwrap()), v6: Some("fd00:20::5".parse().unwrap()) };
        let tags = lease.tags();
        assert_eq!(tags, ["ip-10-0-20-5", "ip6-fd00-20-0-0-0-0-0-5"]);
        for tag in &tags {
            assert!(crate::group::config::is_tag(tag), "{tag}");
            assert!(Lease::is_lease_tag(tag));
        }
        assert_eq!(Lease::from_tags(&tags), lease);
        assert_eq!(
            Lease::from_marker_line(&format!("fleeting-plugin-proxmox: group=a{}", lease.marker_fields())),
            lease
        );
        let network = StaticNetwork {
            v4: Some(pool("10.0.20.0/24", "10.0.20.1", &[], &[])),
            v6: Some(pool("fd00:20::/64", "fd00:20::1", &[], &[])),
            reuse_cooldown: Duration::ZERO,
        };
        let ipconfig = network.ipconfig(&lease);
        assert_eq!(ipconfig, "ip=10.0.20.5/24,gw=10.0.20.1,ip6=fd00:20::5/64,gw6=fd00:20::1");
        assert_eq!(Lease::from_ipconfig(&ipconfig), lease);
        assert_eq!(Lease::from_ipconfig("ip=dhcp,ip6=auto"), Lease::default());
        assert_eq!(lease.connect_address(NetworkProtocol::Ipv4), lease.v4.map(IpAddr::V4));
        assert_eq!(lease.connect_address(NetworkProtocol::Ipv6), lease.v6.map(IpAddr::V6));
        let v6_only = Lease { v4: None, ..lease };
        assert_eq!(v6_only.connect_address(NetworkProtocol::Ipv4), lease.v6.map(IpAddr::V6), "the family there is");
    }

    #[test]
    fn networks_are_written_exactly() {
        assert_eq!(parse_cidr("10.0.20.0/24").unwrap().1, 24);
        assert!(parse_cidr("10.0.20.5/24").unwrap_err().contains("\"10.0.20.0/24\""));
        assert!(parse_cidr("10.0.20.0/31").is_err());
        assert!(parse_cidr("10.0.20.0").is_err());
        assert!(parse_range("10.0.0.9-10.0.0.1").is_err());
        assert!(parse_range("10.0.0.1-fd00::1").is_err());
    }
}
