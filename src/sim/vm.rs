//! One QEMU guest: its configuration as PVE stores it (key → text), its
//! power state, and what pvestatd last broadcast about it.
//!
//! Config values stay text, exactly as in `/etc/pve/qemu-server/<vmid>.conf`;
//! typing happens on the way out (see `api/qemu.rs`).

use std::collections::{BTreeMap, VecDeque};

use super::clock::SimTime;
use super::config::AgentSpec;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Power {
    Stopped,
    Running { since: SimTime, paused: bool },
}

impl Power {
    /// Whole seconds since the start; 0 when stopped.
    pub fn uptime(self, now: SimTime) -> u64 {
        match self {
            Power::Running { since, .. } => (now - since).max(0.0) as u64,
            Power::Stopped => 0,
        }
    }
}

/// What pvestatd saw at `at`: the source of `/cluster/resources`' stale
/// `status`, `name` and `template`.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub at: SimTime,
    pub status: &'static str,
    pub name: Option<String>,
    pub template: bool,
}

/// A snapshot: the configuration when it was taken, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub config: BTreeMap<String, String>,
    pub description: String,
    pub snaptime: i64,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub vmid: u32,
    pub node: String,
    pub config: BTreeMap<String, String>,
    pub power: Power,
    pub pool: Option<String>,
    pub ha_managed: bool,
    pub agent: AgentSpec,
    /// Set by the admin API: the agent stopped answering.
    pub agent_killed: bool,
    /// The share of its vCPUs it keeps busy while running.
    pub cpu_load: f64,
    /// Snapshot name → what it holds (the `[name]` sections of the config file).
    pub snapshots: BTreeMap<String, Snapshot>,
    pub created: SimTime,
    observations: VecDeque<Observation>,
    /// Sizes derived from the config, refreshed with every observation
    /// (every config change is observed, see `Cluster::touch`; listing
    /// 2,000 VMs must not re-parse 2,000 configs).
    facts: Facts,
}

/// An idle guest's CPU use, as a share of its vCPUs (clones start idle:
/// a CI VM waiting for its job).
pub const IDLE_CPU_LOAD: f64 = 0.02;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Facts {
    cpus: u64,
    max_memory: u64,
    max_disk: u64,
}

impl Vm {
    pub fn new(vmid: u32, node: String, config: BTreeMap<String, String>, now: SimTime) -> Self {
        let mut vm = Self {
            vmid,
            node,
            config,
            power: Power::Stopped,
            pool: None,
            ha_managed: false,
            agent: AgentSpec::default(),
            agent_killed: false,
            cpu_load: IDLE_CPU_LOAD,
            snapshots: BTreeMap::new(),
            created: now,
            observations: VecDeque::new(),
            facts: Facts::default(),
        };
        vm.observe(now, f64::INFINITY);
        vm
    }

    pub fn name(&self) -> Option<&str> {
        self.config.get("name").map(String::as_str)
    }

    /// The name PVE shows when none is set.
    pub fn display_name(&self) -> String {
        self.name().map_or_else(|| format!("VM {}", self.vmid), str::to_string)
    }

    pub fn is_template(&self) -> bool {
        self.config.get("template").is_some_and(|t| t == "1")
    }

    pub fn lock(&self) -> Option<&str> {
        self.config.get("lock").map(String::as_str)
    }

    pub fn is_running(&self) -> bool {
        matches!(self.power, Power::Running { .. })
    }

    pub fn status(&self) -> &'static str {
        if self.is_running() { "running" } else { "stopped" }
    }

    pub fn qmp_status(&self) -> &'static str {
        match self.power {
            Power::Running { paused: true, .. } => "paused",
            Power::Running { .. } => "running",
            Power::Stopped => "stopped",
        }
    }

    pub fn uptime(&self, now: SimTime) -> u64 {
        self.power.uptime(now)
    }

    pub fn agent_enabled(&self) -> bool {
        self.config.get("agent").is_some_and(|value| agent_enabled(value))
    }

    pub fn cpus(&self) -> u64 {
        self.facts.cpus
    }

    pub fn max_memory(&self) -> u64 {
        self.facts.max_memory
    }

    pub fn max_disk(&self) -> u64 {
        self.facts.max_disk
    }

    fn count_cpus(&self) -> u64 {
        let number = |key: &str, default: u64| self.config.get(key).and_then(|v| v.parse().ok()).unwrap_or(default);
        number("cores", 1).saturating_mul(number("sockets", 1))
    }

    /// Memory in bytes (`memory` is `[current=]<MiB>` since 8.1).
    fn count_memory(&self) -> u64 {
        let mib = self
            .config
            .get("memory")
            .and_then(|value| property(value, "current").or_else(|| value.split(',').next().map(str::to_string)))
            .and_then(|mib| mib.parse::<u64>().ok())
            .unwrap_or(512);
        mib.saturating_mul(1024 * 1024)
    }

    /// The boot disk's size in bytes (the first disk with a `size`).
    fn count_disk(&self) -> u64 {
        self.config
            .iter()
            .filter(|(key, value)| is_disk_key(key) && !is_cdrom(value))
            .find_map(|(_, value)| property(value, "size").and_then(|size| parse_size(&size)))
            .unwrap_or(0)
    }

    /// The MAC of `net0`, as PVE stores it (upper case).
    pub fn net0_mac(&self) -> Option<String> {
        self.config.get("net0").and_then(|value| net_mac(value))
    }

    /// Records what pvestatd would broadcast now; keeps what is still
    /// needed to answer with a `staleness` lag.
    pub fn observe(&mut self, now: SimTime, staleness: f64) {
        self.facts = Facts { cpus: self.count_cpus(), max_memory: self.count_memory(), max_disk: self.count_disk() };
        let observation = Observation {
            at: now,
            status: self.status(),
            name: self.name().map(str::to_string),
            template: self.is_template(),
        };
        if self.observations.back().is_some_and(|last| {
            last.status == observation.status && last.name == observation.name && last.template == observation.template
        }) {
            return;
        }
        self.observations.push_back(observation);
        // Keep the newest entry at or before the oldest instant still asked for.
        let horizon = now - if staleness.is_finite() { staleness } else { 0.0 };
        while self.observations.len() > 1 && self.observations.get(1).is_some_and(|next| next.at <= horizon) {
            self.observations.pop_front();
        }
    }

    /// Forgets the history: the current state is what was observed at `at`.
    pub fn reset_history(&mut self, at: SimTime) {
        self.observations.clear();
        self.observe(at, f64::INFINITY);
    }

    /// What pvestatd had broadcast at `at`; `None` for a guest younger than that.
    pub fn observed_at(&self, at: SimTime) -> Option<&Observation> {
        self.observations.iter().rev().find(|o| o.at <= at)
    }

    /// When the next recorded observation after `at` happened: until then,
    /// `observed_at(t)` answers the same for every `t >= at`.
    pub fn next_observation_after(&self, at: SimTime) -> Option<SimTime> {
        self.observations.iter().find(|o| o.at > at).map(|o| o.at)
    }
}

/// The value of `key` in a property string (`enabled` in `enabled=1,type=virtio`).
pub fn property(value: &str, key: &str) -> Option<String> {
    value.split(',').find_map(|part| part.split_once('=').filter(|(k, _)| *k == key).map(|(_, v)| v.to_string()))
}

/// `agent: 1`, `enabled=1`, `1,fstrim_cloned_disks=1`.
pub fn agent_enabled(value: &str) -> bool {
    let first = value.split(',').next().unwrap_or_default();
    match first.split_once('=') {
        None => first == "1",
        Some(_) => property(value, "enabled").is_some_and(|v| v == "1"),
    }
}

const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

/// The MAC in a `netN` value: `virtio=BC:24:11:…` or `macaddr=…`.
pub fn net_mac(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (key, mac) = part.split_once('=')?;
        (key == "macaddr" || NIC_MODELS.contains(&key)).then(|| mac.to_string())
    })
}

/// `netN` with `mac` in place of whatever it had (or none): the model keeps
/// its `model=MAC` form, as PVE writes it.
pub fn net_with_mac(value: &str, mac: &str) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut placed = false;
    for part in value.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((key, _)) if NIC_MODELS.contains(&key) => {
                parts.push(format!("{key}={mac}"));
                placed = true;
            }
            Some(("model", model)) => {
                parts.push(format!("{model}={mac}"));
                placed = true;
            }
            Some(("macaddr", _)) => {}
            None if NIC_MODELS.contains(&part) => {
                parts.push(format!("{part}={mac}"));
                placed = true;
            }
            _ => parts.push(part.to_string()),
        }
    }
    if !placed {
        parts.insert(0, format!("virtio={mac}"));
    }
    parts.join(",")
}

pub fn net_bridge(value: &str) -> Option<String> {
    property(value, "bridge")
}

/// Keys that hold volumes.
pub fn is_disk_key(key: &str) -> bool {
    let indexed = |prefix: &str, count: u32| {
        key.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()).is_some_and(|n| n < count)
    };
    indexed("ide", 4)
        || indexed("sata", 6)
        || indexed("scsi", 31)
        || indexed("virtio", 16)
        || indexed("unused", 256)
        || key == "efidisk0"
        || key == "tpmstate0"
}

pub fn is_cdrom(value: &str) -> bool {
    property(value, "media").is_some_and(|m| m == "cdrom") && !value.contains("cloudinit")
}

/// The volume id (`local-lvm:vm-100-disk-0`) a disk value refers to, if any.
pub fn disk_volume(value: &str) -> Option<String> {
    let first = value.split(',').next()?;
    let file = first.strip_prefix("file=").unwrap_or(first);
    let file =
        if first.contains('=') && !first.starts_with("file=") { property(value, "file")? } else { file.to_string() };
    (file.contains(':') && !file.starts_with('/')).then_some(file)
}

/// `8G`, `512M`, `10240K`, `1T`, or bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "" => 1.0,
        "K" => 1024.0,
        "M" => 1024.0 * 1024.0,
        "G" => 1024.0 * 1024.0 * 1024.0,
        "T" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((value * factor) as u64)
}

/// PVE's tag normalisation: split on `;`, `,` or spaces, lower-case,
/// de-duplicate, sort, join with `;`.
pub fn normalize_tags(text: &str) -> String {
    let mut tags: Vec<String> =
        text.split([';', ',', ' ', '\t', '\n']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect();
    tags.sort();
    tags.dedup();
    tags.join(";")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_found_and_replaced() {
        assert_eq!(net_mac("virtio=BC:24:11:00:00:01,bridge=vmbr0").as_deref(), Some("BC:24:11:00:00:01"));
        assert_eq!(net_mac("model=virtio,macaddr=BC:24:11:00:00:02").as_deref(), Some("BC:24:11:00:00:02"));
        assert_eq!(net_mac("virtio,bridge=vmbr0"), None);
        assert_eq!(
            net_with_mac("virtio,bridge=vmbr0,firewall=1", "BC:24:11:AA:BB:CC"),
            "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0,firewall=1"
        );
        assert_eq!(
            net_with_mac("virtio=BC:24:11:00:00:01,bridge=vmbr0", "BC:24:11:AA:BB:CC"),
            "virtio=BC:24:11:AA:BB:CC,bridge=vmbr0"
        );
        assert_eq!(net_with_mac("bridge=vmbr1", "BC:24:11:AA:BB:CC"), "virtio=BC:24:11:AA:BB:CC,bridge=vmbr1");
        assert_eq!(net_bridge("virtio,bridge=vmbr0").as_deref(), Some("vmbr0"));
    }

    #[test]
    fn tags_normalise_like_pve() {
        assert_eq!(normalize_tags("Zeta;alpha,beta alpha"), "alpha;beta;zeta");
        assert_eq!(normalize_tags(""), "");
    }

    #[test]
    fn disks_and_sizes() {
        assert!(is_disk_key("scsi0") && is_disk_key("unused12") && is_disk_key("efidisk0"));
        assert!(!is_disk_key("scsi31") && !is_disk_key("net0") && !is_disk_key("scsihw"));
        assert_eq!(disk_volume("local-lvm:base-9000-disk-0,size=8G").as_deref(), Some("local-lvm:base-9000-disk-0"));
        assert_eq!(disk_volume("file=local:iso/x.iso,media=cdrom").as_deref(), Some("local:iso/x.iso"));
        assert_eq!(disk_volume("none,media=cdrom"), None);
        assert!(is_cdrom("local:iso/x.iso,media=cdrom"));
        assert!(!is_cdrom("local-lvm:vm-100-cloudinit,media=cdrom"));
        assert_eq!(parse_size("8G"), Some(8 << 30));
        assert_eq!(parse_size("512M"), Some(512 << 20));
        assert!(
            agent_enabled("1")
                && agent_enabled("enabled=1,type=virtio")
                && !agent_enabled("0")
                && !agent_enabled("enabled=0")
        );
    }

    #[test]
    fn observations_lag() {
        let mut vm = Vm::new(100, "pve1".into(), BTreeMap::from([("name".to_string(), "a".to_string())]), 100.0);
        assert!(vm.observed_at(95.0).is_none(), "younger than the lag");
        vm.power = Power::Running { since: 110.0, paused: false };
        vm.observe(110.0, 10.0);
        assert_eq!(vm.observed_at(105.0).unwrap().status, "stopped");
        assert_eq!(vm.observed_at(111.0).unwrap().status, "running");
        vm.power = Power::Stopped;
        vm.observe(200.0, 10.0);
        assert_eq!(vm.observed_at(195.0).unwrap().status, "running");
        assert_eq!(vm.observations.len(), 2, "older entries are pruned");
    }
}
