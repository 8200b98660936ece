//! The simulated cluster's state: nodes, storages and their volumes, pools,
//! VMs, config file locks, DHCP leases, tasks, and access control.
//!
//! Invariants kept here:
//! - a VMID names at most one VM cluster-wide; a VM is in at most one pool,
//!   and `Vm::pool` and `Pool::vms` agree;
//! - every volume a VM's config references exists; volumes may exist that
//!   no config references (orphans), and they keep their names, so a later
//!   VM with the same VMID can collide with them;
//! - a volume on a local (non-shared) storage lives on one node, the node of
//!   the VM that owns it (each node has its own `local-lvm` volume group, so
//!   the same volume id can exist on two nodes); one on a shared storage
//!   lives nowhere in particular and is seen from every node;
//! - every change to a VM's status, name or template is recorded for the
//!   stale view of `/cluster/resources` (`touch`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::{Deref, DerefMut};
use std::sync::MutexGuard;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SimError;
use super::access::{Access, Caller};
use super::clock::SimTime;
use super::config::{NextIdRange, Scenario};
use super::counters::CounterSet;
use super::privileges::PrivilegeSet;
use super::release::PveRelease;
use super::schema::parse_cidr_v4;
use super::tasks::Tasks;
use super::vm::{self, Power, Vm};
use super::wire::ApiError;

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub online: bool,
    pub ip: Ipv4Addr,
    pub network: Ipv4Addr,
    pub prefix: u8,
    pub prefix6: [u16; 4],
    pub cpus: u32,
    pub memory: u64,
    pub boot_time: SimTime,
}

/// A node's current use, as its status daemon reports it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NodeUsage {
    /// Bytes of memory in use.
    pub memory: u64,
    /// CPU use as a fraction of all CPUs.
    pub cpu: f64,
}

#[derive(Debug, Clone)]
pub struct Storage {
    pub id: String,
    pub kind: String,
    pub shared: bool,
    /// Empty: every node.
    pub nodes: Vec<String>,
    pub content: String,
    pub total: u64,
}

impl Storage {
    pub fn available_on(&self, node: &str) -> bool {
        self.nodes.is_empty() || self.nodes.iter().any(|n| n == node)
    }

    /// pve-storage's `clone` feature from a `base` volume (template disks).
    pub fn supports_linked_clone(&self) -> bool {
        matches!(self.kind.as_str(), "dir" | "nfs" | "cifs" | "btrfs" | "lvmthin" | "zfspool" | "rbd")
    }

    /// pve-storage's `volume_has_feature` for a snapshot of `volid`:
    /// `clone` (linked) from a snapshot on LVM-thin and RBD only; `copy`
    /// (full) also from qcow2 files on directory-like storages.
    pub fn copies_from_snapshot(&self, linked: bool, volid: &str) -> bool {
        match self.kind.as_str() {
            "lvmthin" | "rbd" => true,
            _ if linked => false,
            _ => self.file_based() && volid.ends_with(".qcow2"),
        }
    }

    fn file_based(&self) -> bool {
        matches!(self.kind.as_str(), "dir" | "nfs" | "cifs" | "btrfs" | "cephfs")
    }

    fn default_shared(kind: &str) -> bool {
        matches!(kind, "nfs" | "cifs" | "rbd" | "cephfs" | "iscsi" | "iscsidirect" | "pbs")
    }

    /// The volume name of disk `index` of `vmid` (`vm-105-disk-0`, or
    /// `105/vm-105-disk-0.qcow2` on file storages), linked to `base` where
    /// the storage encodes that in the name.
    fn disk_name(&self, vmid: u32, index: u32, base: Option<&str>) -> String {
        let plain = if self.file_based() {
            format!("{vmid}/vm-{vmid}-disk-{index}.qcow2")
        } else {
            format!("vm-{vmid}-disk-{index}")
        };
        match base {
            Some(base) if self.kind != "lvmthin" => format!("{base}/{plain}"),
            _ => plain,
        }
    }

    fn cloudinit_name(&self, vmid: u32) -> String {
        if self.file_based() { format!("{vmid}/vm-{vmid}-cloudinit.qcow2") } else { format!("vm-{vmid}-cloudinit") }
    }

    /// The storage's own words when a volume name is taken.
    fn exists_error(&self, volname: &str) -> String {
        let leaf = volname.rsplit('/').next().unwrap_or(volname);
        match self.kind.as_str() {
            "lvmthin" | "lvm" => format!(
                "lvcreate 'pve/{leaf}' error:   Logical Volume \"{leaf}\" already exists in volume group \"pve\""
            ),
            "zfspool" => format!("zfs error: cannot create 'rpool/data/{leaf}': dataset already exists"),
            "rbd" => format!("rbd create '{leaf}' error: rbd: create error: (17) File exists"),
            _ => format!("unable to create image: disk image '/var/lib/vz/images/{volname}' already exists"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub volid: String,
    pub storage: String,
    pub owner: u32,
    pub size: u64,
    /// The template volume a linked clone is based on.
    pub base: Option<String>,
    /// The node it lives on: `Some` on a local storage, `None` on a shared one.
    pub node: Option<String>,
}

impl Volume {
    /// Whether `node` sees it (a shared volume is seen from every node).
    pub fn seen_from(&self, node: &str) -> bool {
        self.node.as_deref().is_none_or(|n| n == node)
    }
}

/// Where a volume is kept: its node on a local storage (`None` on a shared
/// one) and its volume id.
pub type VolumeKey = (Option<String>, String);

#[derive(Debug, Clone, Default)]
pub struct Pool {
    pub id: String,
    pub comment: Option<String>,
    pub vms: BTreeSet<u32>,
    pub storages: BTreeSet<String>,
}

/// `/var/lock/qemu-server/lock-<vmid>.conf`: shared or exclusive flocks,
/// independent of whether the VM exists.
#[derive(Debug, Clone, Copy, Default)]
struct FileLock {
    shared: u32,
    exclusive: bool,
    held_by_admin: bool,
}

pub struct Cluster {
    pub name: String,
    pub access: Access,
    pub nodes: BTreeMap<String, Node>,
    pub storages: BTreeMap<String, Storage>,
    pub volumes: BTreeMap<VolumeKey, Volume>,
    pub pools: BTreeMap<String, Pool>,
    pub vms: BTreeMap<u32, Vm>,
    pub tasks: Tasks,
    pub next_id: NextIdRange,
    pub staleness: f64,
    flocks: HashMap<u32, FileLock>,
    /// Woken whenever a flock is released, so waiters need not poll.
    flock_released: std::sync::Arc<tokio::sync::Notify>,
    leases: HashMap<(String, String), Ipv4Addr>,
    /// Every MAC handed out or configured (never reused in a run).
    macs: HashSet<String>,
    random: StdRng,
    /// Bumped by every mutable access through `ClusterGuard`, so answers
    /// derived from the state (the `/cluster/resources` cache) know when
    /// they went stale.
    generation: u64,
}

impl Cluster {
    /// Changes on every mutable access through a `ClusterGuard`.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn from_scenario(scenario: &Scenario, version: PveRelease, now: SimTime) -> Result<Self, SimError> {
        let mut problems = Vec::new();
        let mut random = match scenario.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let access = Access::from_scenario(scenario, &version)?;

        let mut nodes = BTreeMap::new();
        for spec in &scenario.nodes {
            if !super::schema::is_dns_label(&spec.name) {
                problems.push(format!("node `{}`: not a valid node name", spec.name));
                continue;
            }
            let Some((network, prefix)) = parse_cidr_v4(&spec.subnet).filter(|(_, p)| *p <= 30) else {
                problems.push(format!(
                    "node {}: subnet `{}` is not an IPv4 CIDR like 10.10.10.0/24",
                    spec.name, spec.subnet
                ));
                continue;
            };
            let network = Ipv4Addr::from(u32::from(network) & prefix_mask(prefix));
            let prefix6 = match spec.subnet6.split_once('/').and_then(|(a, _)| a.parse::<Ipv6Addr>().ok()) {
                Some(address) => {
                    let s = address.segments();
                    [s[0], s[1], s[2], s[3]]
                }
                None => {
                    problems.push(format!(
                        "node {}: subnet6 `{}` is not an IPv6 prefix like fd00:1::/64",
                        spec.name, spec.subnet6
                    ));
                    continue;
                }
            };
            let ip = match &spec.ip {
                Some(ip) => match ip.parse() {
                    Ok(ip) => ip,
                    Err(_) => {
                        problems.push(format!("node {}: ip `{ip}` is not an IPv4 address", spec.name));
                        continue;
                    }
                },
                None => Ipv4Addr::from(u32::from(network) + 2),
            };
            let boot_time = now - 86_400.0 * (3.0 + nodes.len() as f64);
            nodes.insert(
                spec.name.clone(),
                Node {
                    name: spec.name.clone(),
                    online: spec.online,
                    ip,
                    network,
                    prefix,
                    prefix6,
                    cpus: spec.cpus.max(1),
                    memory: spec.memory_gib.max(1) << 30,
                    boot_time,
                },
            );
        }
        if nodes.is_empty() {
            problems.push("the scenario needs at least one node".into());
        }

        let mut storages = BTreeMap::new();
        for spec in &scenario.storages {
            for node in &spec.nodes {
                if !nodes.contains_key(node) {
                    problems.push(format!("storage {}: node {node} does not exist", spec.id));
                }
            }
            storages.insert(
                spec.id.clone(),
                Storage {
                    id: spec.id.clone(),
                    kind: spec.kind.clone(),
                    shared: spec.shared.unwrap_or_else(|| Storage::default_shared(&spec.kind)),
                    nodes: spec.nodes.clone(),
                    content: spec.content.clone(),
                    total: spec.total_gib << 30,
                },
            );
        }

        let mut pools = BTreeMap::new();
        for spec in &scenario.pools {
            if spec.id.is_empty() || spec.id.split('/').count() > 3 {
                problems.push(format!("pool `{}`: not a valid pool id", spec.id));
            }
            for storage in &spec.storages {
                if !storages.contains_key(storage) {
                    problems.push(format!("pool {}: storage {storage} does not exist", spec.id));
                }
            }
            pools.insert(
                spec.id.clone(),
                Pool {
                    id: spec.id.clone(),
                    comment: spec.comment.clone(),
                    vms: BTreeSet::new(),
                    storages: spec.storages.iter().cloned().collect(),
                },
            );
        }

        let mut cluster = Self {
            name: scenario.cluster_name.clone(),
            access,
            nodes,
            storages,
            volumes: BTreeMap::new(),
            pools,
            vms: BTreeMap::new(),
            tasks: Tasks::new(random.random_range(10_000..2_000_000)),
            next_id: scenario.next_id,
            staleness: scenario.timings.resources_staleness,
            flocks: HashMap::new(),
            flock_released: Default::default(),
            leases: HashMap::new(),
            macs: HashSet::new(),
            random: StdRng::seed_from_u64(0),
            generation: 0,
        };
        cluster.random = StdRng::seed_from_u64(random.random());

        for spec in &scenario.vms {
            if let Err(problem) = cluster.add_scenario_vm(spec, scenario, now) {
                problems.push(format!("vm {}: {problem}", spec.vmid));
            }
        }
        if problems.is_empty() {
            Ok(cluster)
        } else {
            Err(SimError::Scenario(format!("could not load the scenario: {}", problems.join("; "))))
        }
    }

    fn add_scenario_vm(
        &mut self,
        spec: &super::config::VmSpec,
        scenario: &Scenario,
        now: SimTime,
    ) -> Result<(), String> {
        if !(100..=999_999_999).contains(&spec.vmid) {
            return Err("VMIDs range from 100 to 999999999".into());
        }
        if self.vms.contains_key(&spec.vmid) {
            return Err("the VMID is used twice".into());
        }
        if !self.nodes.contains_key(&spec.node) {
            return Err(format!("node `{}` does not exist", spec.node));
        }
        let mut config = spec.config.clone();
        if spec.template {
            config.insert("template".into(), "1".into());
        }
        if let Some(lock) = &spec.lock {
            config.insert("lock".into(), lock.clone());
        }
        if let Some(tags) = config.get("tags").cloned() {
            config.insert("tags".into(), vm::normalize_tags(&tags));
        }
        for (key, value) in spec.config.iter().filter(|(key, _)| vm::is_disk_key(key)) {
            let Some(volid) = vm::disk_volume(value) else { continue };
            let Some((storage, volname)) = volid.split_once(':') else { continue };
            if !self.storages.contains_key(storage) {
                return Err(format!("{key} uses storage `{storage}`, which the scenario does not define"));
            }
            // A local storage must exist on the VM's node: its volumes live there
            // (PVE: `storage_check_node` refuses a storage outside its `nodes`).
            if !self.storages[storage].available_on(&spec.node) {
                return Err(format!(
                    "{key} uses storage `{storage}`, which is not available on node `{}` (a local volume lives on its VM's node)",
                    spec.node
                ));
            }
            if vm::is_cdrom(value) {
                continue;
            }
            let size = vm::property(value, "size").and_then(|s| vm::parse_size(&s)).unwrap_or(4 << 20);
            let node = self.volume_node(storage, &spec.node);
            let volume_key = (node.clone(), volid.clone());
            if let Some(other) = self.vms.values().find(|vm| {
                vm.vmid != spec.vmid
                    && vm.node != spec.node
                    && node.is_some()
                    && Self::referenced_volumes(vm).contains(&volid)
            }) {
                return Err(format!(
                    "{key}: `{volid}` is on a local storage and VM {} on node `{}` uses it; a local volume lives on one node",
                    other.vmid, other.node
                ));
            }
            // A linked clone's file name carries its base (`9000/base-9000-disk-0.qcow2/105/…`):
            // on a local storage the base is on the same node.
            if node.is_some()
                && let Some((prefix, _)) = volname.rsplit_once('/')
                && prefix.contains("base-")
                && let Some((base, _)) = prefix.rsplit_once('/')
            {
                let base_volid = format!("{storage}:{base}");
                if let Some(owner) = self
                    .vms
                    .values()
                    .find(|vm| vm.node != spec.node && Self::referenced_volumes(vm).contains(&base_volid))
                {
                    return Err(format!(
                        "{key}: `{volid}` is a linked clone of `{base_volid}`, which is on node `{}` (a local storage's linked clone lives beside its base)",
                        owner.node
                    ));
                }
            }
            self.volumes.insert(
                volume_key,
                Volume {
                    volid: volid.clone(),
                    storage: storage.to_string(),
                    owner: owner_of(volname).unwrap_or(spec.vmid),
                    size,
                    base: None,
                    node,
                },
            );
        }
        for key in spec.config.keys().filter(|key| key.starts_with("net")) {
            if let Some(value) = config.get(key).cloned() {
                match vm::net_mac(&value) {
                    Some(mac) => {
                        self.macs.insert(mac.to_ascii_uppercase());
                    }
                    None => {
                        let mac = self.new_mac();
                        config.insert(key.clone(), vm::net_with_mac(&value, &mac));
                    }
                }
            }
        }
        if spec.template && !spec.snapshots.is_empty() {
            return Err(
                "a template cannot have snapshots (PVE: unable to create template, because VM contains snapshots)"
                    .into(),
            );
        }
        let mut snapshots = BTreeMap::new();
        for snapshot in &spec.snapshots {
            let mut taken = if snapshot.config.is_empty() { config.clone() } else { snapshot.config.clone() };
            taken.remove("lock");
            let entry = vm::Snapshot {
                config: taken,
                description: snapshot.description.clone().unwrap_or_default(),
                snaptime: (now - 3600.0) as i64,
            };
            snapshots.insert(snapshot.name.clone(), entry);
        }
        let mut guest = Vm::new(spec.vmid, spec.node.clone(), config, now);
        guest.snapshots = snapshots;
        guest.agent = spec.agent.clone();
        guest.ha_managed = spec.ha;
        guest.cpu_load = spec.cpu_load.unwrap_or(super::vm::IDLE_CPU_LOAD).clamp(0.0, 1.0);
        if spec.running {
            // Up long enough for its agent to answer.
            let since = now - scenario.timings.boot - scenario.timings.agent_delay - 60.0;
            guest.power = Power::Running { since, paused: false };
        }
        self.vms.insert(spec.vmid, guest);
        if spec.running {
            self.assign_lease(spec.vmid);
        }
        if let Some(pool) = &spec.pool {
            self.join_pool(spec.vmid, pool).map_err(|err| err.message)?;
        }
        // Start with a settled history: what is true now was true long ago.
        if let Some(guest) = self.vms.get_mut(&spec.vmid) {
            guest.created = now - 86_400.0;
            guest.reset_history(now - 86_400.0);
        }
        Ok(())
    }

    /// What a node uses now: the host's own share (an eighth of its memory,
    /// 2 % CPU) plus every running guest on it, ours or not (a third of its
    /// memory, as the guest's status reports, and its `cpu_load` of its vCPUs).
    pub fn node_usage(&self, node: &Node) -> NodeUsage {
        let mut memory = node.memory / 8;
        let mut busy_cpus = 0.02 * f64::from(node.cpus);
        for guest in self.vms.values().filter(|vm| vm.node == node.name && vm.is_running()) {
            memory += guest.max_memory() / 3;
            busy_cpus += guest.cpu_load * guest.cpus() as f64;
        }
        NodeUsage {
            memory: memory.min(node.memory),
            cpu: if node.cpus == 0 { 0.0 } else { (busy_cpus / f64::from(node.cpus)).min(1.0) },
        }
    }

    /// Records a VM's current status/name/template for the stale view.
    pub fn touch(&mut self, vmid: u32, now: SimTime) {
        let staleness = self.staleness;
        if let Some(guest) = self.vms.get_mut(&vmid) {
            guest.observe(now, staleness);
        }
    }

    /// The pool an object path belongs to (`/vms/100` → the VM's pool,
    /// `/storage/x` → the pool that has storage x).
    pub fn pool_of(&self, path: &str) -> Option<String> {
        if let Some(vmid) = path.strip_prefix("/vms/").and_then(|v| v.parse::<u32>().ok()) {
            return self.vms.get(&vmid).and_then(|vm| vm.pool.clone());
        }
        let storage = path.strip_prefix("/storage/")?;
        self.pools.values().find(|pool| pool.storages.contains(storage)).map(|pool| pool.id.clone())
    }

    pub fn privileges(&self, caller: &Caller, path: &str) -> PrivilegeSet {
        self.access.privileges(caller, path, &|p| self.pool_of(p))
    }

    /// PVE's `check`/`check_any`: 403 `Permission check failed (<path>, <priv>)`.
    pub fn require(&self, caller: &Caller, path: &str, privileges: &[&str], any: bool) -> Result<(), ApiError> {
        let held = self.privileges(caller, path);
        if any {
            if privileges.iter().any(|p| held.contains(p)) {
                return Ok(());
            }
            return Err(ApiError::permission(Some(format!("{path}, {}", privileges.join("|")))));
        }
        match privileges.iter().find(|p| !held.contains(p)) {
            Some(missing) => Err(ApiError::permission(Some(format!("{path}, {missing}")))),
            None => Ok(()),
        }
    }

    pub fn node(&self, name: &str) -> Result<&Node, ApiError> {
        self.nodes.get(name).ok_or_else(|| {
            ApiError::internal(format!(
                "hostname lookup '{name}' failed - failed to get address info for: {name}: Name or service not known"
            ))
        })
    }

    /// The VM as the node in the path sees it: PVE proxies to `{node}`, so a
    /// VM on another node "does not exist" there.
    pub fn vm_on(&self, node: &str, vmid: u32) -> Result<&Vm, ApiError> {
        self.vms.get(&vmid).filter(|vm| vm.node == node).ok_or_else(|| ApiError::vm_not_found(node, vmid))
    }

    /// The lowest unused VMID in datacenter.cfg's range (nothing is reserved).
    pub fn next_free_vmid(&self) -> Option<u32> {
        let lower = self.next_id.lower.max(100);
        let mut candidate = lower;
        for &vmid in self.vms.range(lower..).map(|(vmid, _)| vmid) {
            if vmid > candidate {
                break;
            }
            candidate = vmid + 1;
        }
        (candidate < self.next_id.upper).then_some(candidate)
    }

    /// A fresh MAC in Proxmox's OUI, unique in the cluster.
    pub fn new_mac(&mut self) -> String {
        loop {
            let bytes: [u8; 3] = self.random.random();
            let mac = format!("BC:24:11:{:02X}:{:02X}:{:02X}", bytes[0], bytes[1], bytes[2]);
            if self.macs.insert(mac.clone()) {
                return mac;
            }
        }
    }

    /// A DHCP lease on the VM's node for its `net0` MAC (kept across boots).
    pub fn assign_lease(&mut self, vmid: u32) -> Option<Ipv4Addr> {
        let guest = self.vms.get(&vmid)?;
        let mac = guest.net0_mac()?.to_ascii_lowercase();
        let node = self.nodes.get(&guest.node)?;
        let key = (node.name.clone(), mac);
        if let Some(ip) = self.leases.get(&key) {
            return Some(*ip);
        }
        let hosts =
            u32::try_from((1u64 << (32 - u32::from(node.prefix.min(32)))).saturating_sub(2)).unwrap_or(u32::MAX);
        let first = 100.min(hosts / 2).max(3);
        let used: BTreeSet<Ipv4Addr> =
            self.leases.iter().filter(|((n, _), _)| *n == node.name).map(|(_, ip)| *ip).collect();
        let base = u32::from(node.network);
        let ip = (first..=hosts)
            .chain(3..first)
            .map(|host| Ipv4Addr::from(base.saturating_add(host)))
            .find(|ip| !used.contains(ip) && *ip != node.ip)?;
        self.leases.insert(key, ip);
        Some(ip)
    }

    pub fn lease(&self, node: &str, mac: &str) -> Option<Ipv4Addr> {
        self.leases.get(&(node.to_string(), mac.to_ascii_lowercase())).copied()
    }

    /// Adds a VM to a pool (at most one pool per VM).
    pub fn join_pool(&mut self, vmid: u32, pool: &str) -> Result<(), ApiError> {
        if !self.pools.contains_key(pool) {
            return Err(ApiError::internal(format!("pool '{pool}' does not exist")));
        }
        let current = self.vms.get(&vmid).and_then(|vm| vm.pool.clone());
        match current {
            Some(existing) if existing == pool => return Ok(()),
            Some(existing) => {
                return Err(ApiError::internal(format!(
                    "VM {vmid} belongs already to pool '{existing}' and 'allow-move' is not set"
                )));
            }
            None => {}
        }
        if let Some(guest) = self.vms.get_mut(&vmid) {
            guest.pool = Some(pool.to_string());
        }
        if let Some(entry) = self.pools.get_mut(pool) {
            entry.vms.insert(vmid);
        }
        Ok(())
    }

    pub fn leave_pool(&mut self, vmid: u32) {
        if let Some(pool) = self.vms.get_mut(&vmid).and_then(|vm| vm.pool.take())
            && let Some(entry) = self.pools.get_mut(&pool)
        {
            entry.vms.remove(&vmid);
        }
        for pool in self.pools.values_mut() {
            pool.vms.remove(&vmid);
        }
    }

    /// Takes the config flock: shared (clones of a stopped source) or exclusive.
    pub fn try_flock(&mut self, vmid: u32, exclusive: bool) -> bool {
        let lock = self.flocks.entry(vmid).or_default();
        if lock.exclusive || lock.held_by_admin || (exclusive && lock.shared > 0) {
            return false;
        }
        if exclusive {
            lock.exclusive = true;
        } else {
            lock.shared += 1;
        }
        true
    }

    pub fn release_flock(&mut self, vmid: u32, exclusive: bool) {
        if let Some(lock) = self.flocks.get_mut(&vmid) {
            if exclusive {
                lock.exclusive = false;
            } else {
                lock.shared = lock.shared.saturating_sub(1);
            }
            self.flock_released.notify_waiters();
        }
    }

    /// The admin's held lock: every flock on the VM times out until released.
    pub fn hold_flock(&mut self, vmid: u32, held: bool) {
        self.flocks.entry(vmid).or_default().held_by_admin = held;
        if !held {
            self.flock_released.notify_waiters();
        }
    }

    /// What a flock waiter awaits: woken at every release.
    pub fn flock_released(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.flock_released.clone()
    }

    /// Volume ids the VM's config references (disks, cloud-init, unusedN).
    pub fn referenced_volumes(guest: &Vm) -> Vec<String> {
        guest
            .config
            .iter()
            .filter(|(key, value)| vm::is_disk_key(key) && !vm::is_cdrom(value))
            .filter_map(|(_, value)| vm::disk_volume(value))
            .collect()
    }

    /// Volumes that no VM's config references (a local one: no VM on its node).
    pub fn orphaned_volumes(&self) -> Vec<&Volume> {
        let referenced: BTreeSet<VolumeKey> =
            self.vms.values().flat_map(|guest| self.referenced_volume_keys(guest)).collect();
        self.volumes.iter().filter(|(key, _)| !referenced.contains(*key)).map(|(_, v)| v).collect()
    }

    /// The node a volume of `storage` created for a VM on `node` lives on:
    /// `node` for a local storage, `None` for a shared one (or an unknown one).
    pub fn volume_node(&self, storage: &str, node: &str) -> Option<String> {
        self.storages.get(storage).filter(|s| !s.shared).map(|_| node.to_string())
    }

    /// The key of `volid` as a VM on `node` refers to it.
    pub fn volume_key(&self, volid: &str, node: &str) -> VolumeKey {
        let storage = volid.split(':').next().unwrap_or_default();
        (self.volume_node(storage, node), volid.to_string())
    }

    /// The volume `volid` as a VM on `node` sees it.
    pub fn volume(&self, volid: &str, node: &str) -> Option<&Volume> {
        self.volumes.get(&self.volume_key(volid, node))
    }

    pub fn volume_mut(&mut self, volid: &str, node: &str) -> Option<&mut Volume> {
        let key = self.volume_key(volid, node);
        self.volumes.get_mut(&key)
    }

    pub fn remove_volume(&mut self, volid: &str, node: &str) -> Option<Volume> {
        let key = self.volume_key(volid, node);
        self.volumes.remove(&key)
    }

    /// The volumes of `storage` that `node` sees: a local storage's own
    /// volumes on that node, every volume of a shared one.
    pub fn volumes_on<'a>(&'a self, storage: &'a str, node: &'a str) -> impl Iterator<Item = &'a Volume> + 'a {
        self.volumes.values().filter(move |v| v.storage == storage && v.seen_from(node))
    }

    /// The keys of the volumes the VM's config references, on its node.
    pub fn referenced_volume_keys(&self, guest: &Vm) -> Vec<VolumeKey> {
        Self::referenced_volumes(guest).iter().map(|volid| self.volume_key(volid, &guest.node)).collect()
    }

    /// Creates a volume on `node` (for a local storage; a shared one's
    /// volumes belong to no node); fails with the storage's message if the
    /// name is taken there.
    pub fn create_volume(
        &mut self,
        storage: &str,
        volname: String,
        owner: u32,
        size: u64,
        base: Option<String>,
        node: &str,
    ) -> Result<String, String> {
        let store = self.storages.get(storage).ok_or_else(|| format!("storage '{storage}' does not exist"))?;
        let volid = format!("{storage}:{volname}");
        let key = self.volume_key(&volid, node);
        if self.volumes.contains_key(&key) {
            return Err(store.exists_error(&volname));
        }
        let volume =
            Volume { volid: volid.clone(), storage: storage.to_string(), owner, size, base, node: key.0.clone() };
        self.volumes.insert(key, volume);
        Ok(volid)
    }

    /// pve-storage's `find_free_diskname` on `node`: the lowest free
    /// `vm-<vmid>-disk-<n>` (a local storage only knows its node's volumes).
    pub fn free_disk_name(&self, storage: &str, vmid: u32, base: Option<&str>, node: &str) -> Option<String> {
        let store = self.storages.get(storage)?;
        let taken: BTreeSet<String> = self
            .volumes_on(storage, node)
            .map(|v| v.volid.rsplit('/').next().unwrap_or(&v.volid).rsplit(':').next().unwrap_or_default().to_string())
            .collect();
        (0..1000)
            .map(|n| store.disk_name(vmid, n, base))
            .find(|name| !taken.contains(name.rsplit('/').next().unwrap_or(name)))
    }

    pub fn cloudinit_volume_name(&self, storage: &str, vmid: u32) -> Option<String> {
        self.storages.get(storage).map(|s| s.cloudinit_name(vmid))
    }

    /// Removes a VM: its referenced volumes, with `unreferenced` also every
    /// other volume named for its VMID, its pool membership and ACLs.
    /// Returns the task log lines.
    pub fn destroy(&mut self, vmid: u32, unreferenced: bool, purge: bool) -> Result<Vec<String>, String> {
        let guest = self
            .vms
            .get(&vmid)
            .ok_or_else(|| format!("Configuration file 'nodes/?/qemu-server/{vmid}.conf' does not exist"))?;
        let referenced = Self::referenced_volumes(guest);
        let node = guest.node.clone();
        // pve-storage's `volume_is_base_and_used` (qemu-server `destroy_vm`).
        for volid in &referenced {
            if let Some(user) = self.base_user(volid, &node) {
                return Err(format!("base volume '{volid}' is still in use by linked cloned VM {user}"));
            }
        }
        let mut log = Vec::new();
        for volid in &referenced {
            if self.remove_volume(volid, &node).is_some() {
                log.push(format!("Removing image: 100% complete...done. ({volid})"));
            }
        }
        if unreferenced {
            let orphans: Vec<VolumeKey> = self
                .volumes
                .iter()
                .filter(|(_, v)| {
                    v.owner == vmid
                        && v.seen_from(&node)
                        && self.storages.get(&v.storage).is_some_and(|s| s.available_on(&node))
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in orphans {
                self.volumes.remove(&key);
                log.push(format!("Removing unreferenced image: {}", key.1));
            }
        }
        self.leave_pool(vmid);
        self.access.remove_acl_path(&format!("/vms/{vmid}"));
        if purge {
            log.push(format!("purging VM {vmid} from related configurations.."));
            if self.vms.get(&vmid).is_some_and(|vm| vm.ha_managed) {
                log.push(format!("NOTE: removed VM {vmid} from HA resource configuration."));
            }
        }
        self.vms.remove(&vmid);
        self.flocks.remove(&vmid);
        self.flock_released.notify_waiters();
        Ok(log)
    }

    /// The VMID of a linked clone whose disk is based on `volid` (as a VM
    /// on `node` sees it), if any: pve-storage's `volume_is_base_and_used`.
    pub fn base_user(&self, volid: &str, node: &str) -> Option<u32> {
        let key = self.volume_key(volid, node);
        self.volumes.values().find(|v| v.base.as_deref() == Some(volid) && v.node == key.0).map(|v| v.owner)
    }

    /// `fe80::…` and SLAAC addresses are derived from the MAC (EUI-64).
    pub fn ipv6_for(&self, node: &str, mac: &str) -> Option<(Ipv6Addr, Ipv6Addr)> {
        let node = self.nodes.get(node)?;
        let interface_id = eui64(mac)?;
        let global = Ipv6Addr::new(
            node.prefix6[0],
            node.prefix6[1],
            node.prefix6[2],
            node.prefix6[3],
            interface_id[0],
            interface_id[1],
            interface_id[2],
            interface_id[3],
        );
        let link_local =
            Ipv6Addr::new(0xfe80, 0, 0, 0, interface_id[0], interface_id[1], interface_id[2], interface_id[3]);
        Some((global, link_local))
    }
}

/// The VMID a volume name belongs to (`vm-105-disk-0`, `base-9000-disk-0`,
/// `105/vm-105-disk-0.qcow2`, `base-9000-disk-0/vm-105-disk-1`).
pub fn owner_of(volname: &str) -> Option<u32> {
    let leaf = volname.rsplit('/').next()?;
    let rest = leaf.strip_prefix("vm-").or_else(|| leaf.strip_prefix("base-"))?;
    rest.split('-').next()?.parse().ok()
}

fn prefix_mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix)) }
}

fn eui64(mac: &str) -> Option<[u16; 4]> {
    let bytes: Vec<u8> = mac.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>().ok()?;
    let [a, b, c, d, e, f] = bytes.as_slice() else { return None };
    let eui = [a ^ 0x02, *b, *c, 0xff, 0xfe, *d, *e, *f];
    Some([
        u16::from_be_bytes([eui[0], eui[1]]),
        u16::from_be_bytes([eui[2], eui[3]]),
        u16::from_be_bytes([eui[4], eui[5]]),
        u16::from_be_bytes([eui[6], eui[7]]),
    ])
}

/// The locked cluster as handlers hold it. Every mutable access counts as
/// a change (`Cluster::generation`): no handler can change the state
/// without invalidating what was derived from it. A guard made by
/// [`ClusterGuard::timed`] reports how long it held the lock: every task and
/// request waits while one does, so a long hold stalls the whole simulator.
pub struct ClusterGuard<'a> {
    guard: MutexGuard<'a, Cluster>,
    held_since: Option<(&'a CounterSet, Instant)>,
}

impl<'a> ClusterGuard<'a> {
    #[cfg(test)]
    pub fn new(guard: MutexGuard<'a, Cluster>) -> Self {
        Self { guard, held_since: None }
    }

    /// A guard that reports its hold time to `counters` when dropped.
    pub fn timed(guard: MutexGuard<'a, Cluster>, counters: &'a CounterSet) -> Self {
        Self { guard, held_since: Some((counters, Instant::now())) }
    }
}

impl Drop for ClusterGuard<'_> {
    fn drop(&mut self) {
        if let Some((counters, since)) = self.held_since {
            counters.cluster_held(since.elapsed());
        }
    }
}

impl Deref for ClusterGuard<'_> {
    type Target = Cluster;

    fn deref(&self) -> &Cluster {
        &self.guard
    }
}

impl DerefMut for ClusterGuard<'_> {
    fn deref_mut(&mut self) -> &mut Cluster {
        self.guard.generation = self.guard.generation.wrapping_add(1);
        &mut self.guard
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let scenario = Scenario { seed: Some(3), ..Scenario::default() };
        Cluster::from_scenario(&scenario, PveRelease::parse("9.1.3").unwrap(), 1_700_000_000.0).unwrap()
    }

    #[test]
    fn default_scenario_loads_with_volumes_and_pool() {
        let cluster = cluster();
        let template = &cluster.vms[&9000];
        assert!(template.is_template());
        assert_eq!(template.pool.as_deref(), Some("ci"));
        assert!(cluster.volume("local-lvm:base-9000-disk-0", "pve1").is_some());
        assert!(cluster.volume("local-lvm:vm-9000-cloudinit", "pve1").is_some());
        assert!(cluster.orphaned_volumes().is_empty());
        assert_eq!(cluster.next_free_vmid(), Some(100));
        assert!(
            cluster.vms[&9000].observed_at(1_700_000_000.0 - 10.0).is_some(),
            "scenario VMs have a settled history"
        );
    }

    #[test]
    fn next_id_skips_used_ids() {
        let mut cluster = cluster();
        for vmid in [100, 101, 103] {
            cluster.vms.insert(vmid, Vm::new(vmid, "pve1".into(), BTreeMap::new(), 0.0));
        }
        assert_eq!(cluster.next_free_vmid(), Some(102));
        cluster.next_id = NextIdRange { lower: 5000, upper: 5001 };
        assert_eq!(cluster.next_free_vmid(), Some(5000));
        cluster.vms.insert(5000, Vm::new(5000, "pve1".into(), BTreeMap::new(), 0.0));
        assert_eq!(cluster.next_free_vmid(), None);
    }

    #[test]
    fn flocks_share_or_exclude() {
        let mut cluster = cluster();
        assert!(cluster.try_flock(9000, false));
        assert!(cluster.try_flock(9000, false));
        assert!(!cluster.try_flock(9000, true));
        cluster.release_flock(9000, false);
        cluster.release_flock(9000, false);
        assert!(cluster.try_flock(9000, true));
        assert!(!cluster.try_flock(9000, false));
        cluster.release_flock(9000, true);
        cluster.hold_flock(9000, true);
        assert!(!cluster.try_flock(9000, false));
    }

    #[test]
    fn disk_names_avoid_orphans_but_cloudinit_collides() {
        let mut cluster = cluster();
        cluster.create_volume("local-lvm", "vm-105-disk-0".into(), 105, 1, None, "pve1").unwrap();
        assert_eq!(cluster.free_disk_name("local-lvm", 105, None, "pve1").as_deref(), Some("vm-105-disk-1"));
        cluster.create_volume("local-lvm", "vm-105-cloudinit".into(), 105, 1, None, "pve1").unwrap();
        let err = cluster.create_volume("local-lvm", "vm-105-cloudinit".into(), 105, 1, None, "pve1").unwrap_err();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(cluster.orphaned_volumes().len(), 2);
        assert_eq!(
            cluster.free_disk_name("local", 105, Some("9000/base-9000-disk-0.qcow2"), "pve1").as_deref(),
            Some("9000/base-9000-disk-0.qcow2/105/vm-105-disk-0.qcow2")
        );
        assert_eq!(owner_of("9000/base-9000-disk-0.qcow2/105/vm-105-disk-0.qcow2"), Some(105));
        assert_eq!(owner_of("base-9000-disk-0"), Some(9000));
    }

    #[test]
    fn local_volumes_live_on_their_vms_node() {
        use crate::sim::config::{StorageSpec, VmSpec};
        let load = |vms: Vec<VmSpec>, storages: Vec<StorageSpec>| {
            let mut scenario = Scenario { seed: Some(3), ..Scenario::default() };
            scenario.vms.extend(vms);
            scenario.storages.extend(storages);
            Cluster::from_scenario(&scenario, PveRelease::parse("9.1.3").unwrap(), 1_700_000_000.0)
        };
        let vm = |vmid: u32, node: &str, disk: &str| VmSpec {
            vmid,
            node: node.into(),
            config: BTreeMap::from([("scsi0".to_string(), disk.to_string())]),
            ..VmSpec::default()
        };
        let cluster = load(vec![vm(100, "pve2", "local-lvm:vm-100-disk-0,size=1G")], vec![]).unwrap();
        let volume = cluster.volume("local-lvm:vm-100-disk-0", "pve2").unwrap();
        assert_eq!(volume.node.as_deref(), Some("pve2"));
        assert!(cluster.volume("local-lvm:vm-100-disk-0", "pve1").is_none(), "pve1's volume group lacks it");
        assert_eq!(cluster.volumes_on("local-lvm", "pve1").count(), 2, "the template's two volumes");
        assert_eq!(cluster.volumes_on("local-lvm", "pve2").count(), 1);
        // The same volume id on two nodes is two volumes; a free name is per node.
        let mut cluster = cluster;
        cluster.create_volume("local-lvm", "vm-100-disk-0".into(), 100, 1, None, "pve1").unwrap();
        assert_eq!(cluster.free_disk_name("local-lvm", 100, None, "pve2").as_deref(), Some("vm-100-disk-1"));
        assert_eq!(cluster.orphaned_volumes().len(), 1);

        let pve1_only = StorageSpec { id: "pve1-only".into(), nodes: vec!["pve1".into()], ..StorageSpec::default() };
        let Err(SimError::Scenario(problem)) = load(vec![vm(101, "pve2", "pve1-only:vm-101-disk-0")], vec![pve1_only])
        else {
            panic!("a local volume on another node than its VM is refused")
        };
        assert!(problem.contains("not available on node `pve2`"), "{problem}");
        let Err(SimError::Scenario(problem)) =
            load(vec![vm(102, "pve1", "local-lvm:vm-102-disk-0"), vm(103, "pve2", "local-lvm:vm-102-disk-0")], vec![])
        else {
            panic!("one local volume used on two nodes is refused")
        };
        assert!(problem.contains("VM 102 on node `pve1` uses it"), "{problem}");
        let base = vm(9100, "pve1", "local:9100/base-9100-disk-0.qcow2");
        let clone = vm(104, "pve2", "local:9100/base-9100-disk-0.qcow2/104/vm-104-disk-0.qcow2");
        let Err(SimError::Scenario(problem)) = load(vec![base, clone], vec![]) else {
            panic!("a linked clone away from its base is refused")
        };
        assert!(problem.contains("is a linked clone of `local:9100/base-9100-disk-0.qcow2`"), "{problem}");
    }

    #[test]
    fn leases_and_slaac_addresses() {
        let mut cluster = cluster();
        let mut guest = Vm::new(
            120,
            "pve1".into(),
            BTreeMap::from([("net0".to_string(), "virtio=BC:24:11:00:00:01,bridge=vmbr0".to_string())]),
            0.0,
        );
        guest.power = Power::Running { since: 0.0, paused: false };
        cluster.vms.insert(120, guest);
        assert_eq!(cluster.assign_lease(120), Some("10.10.10.100".parse().unwrap()));
        assert_eq!(cluster.assign_lease(120), Some("10.10.10.100".parse().unwrap()), "a lease is kept");
        let (global, link_local) = cluster.ipv6_for("pve1", "BC:24:11:00:00:01").unwrap();
        assert_eq!(global.to_string(), "fd00:10:10:10:be24:11ff:fe00:1");
        assert_eq!(link_local.to_string(), "fe80::be24:11ff:fe00:1");
    }
}
