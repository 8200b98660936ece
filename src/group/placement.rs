//! Placement: which node takes the next clone, from what the one
//! `/cluster/resources` listing of the last Update says about every node
//! (memory, CPU, storage, our instances and everybody else's VMs), plus the
//! clones this process placed since that listing.
//!
//! Policies (`scheduler`, nE0sIghT's names plus `spread`): `balanced` keeps
//! the most capacity free in proportion to the node's size, `most_free_ram`
//! and `most_free_cpu` pick the node with the most of one, `round_robin`
//! takes nodes in turn, `spread` the fewest of our instances. Every policy
//! first drops the nodes that cannot take the instance: offline, just failed
//! a clone, below a reserve after placing it, or above an allocation limit.
//!
//! One owner: `Placement` holds the last view of the nodes and the pending
//! placements behind one private lock, taken inside each method.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::{GroupConfig, Sizing};
use crate::pve::{ClusterListing, Vmid};

const MIB: f64 = 1024.0 * 1024.0;
const GIB: f64 = 1024.0 * MIB;

/// How long a node that failed a clone is skipped.
pub const NODE_PENALTY: Duration = Duration::from_secs(60);

/// The placement policy (`scheduler`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scheduler {
    #[default]
    Balanced,
    MostFreeRam,
    MostFreeCpu,
    RoundRobin,
    Spread,
}

impl Scheduler {
    pub const NAMES: &'static [&'static str] = &["balanced", "most_free_ram", "most_free_cpu", "round_robin", "spread"];

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "balanced" => Self::Balanced,
            "most_free_ram" => Self::MostFreeRam,
            "most_free_cpu" => Self::MostFreeCpu,
            "round_robin" => Self::RoundRobin,
            "spread" => Self::Spread,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Balanced => "balanced",
            Self::MostFreeRam => "most_free_ram",
            Self::MostFreeCpu => "most_free_cpu",
            Self::RoundRobin => "round_robin",
            Self::Spread => "spread",
        }
    }
}

/// Headroom a node keeps after placing an instance: absolute or a percent of
/// the node's (or the storage's) size; the percent wins when both are set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Reserve {
    pub memory_mb: Option<u64>,
    pub memory_percent: Option<u32>,
    pub cpu_cores: Option<f64>,
    pub cpu_percent: Option<u32>,
    pub disk_gb: Option<u64>,
    pub disk_percent: Option<u32>,
}

impl Reserve {
    fn limits_memory(&self) -> bool {
        self.memory_mb.is_some() || self.memory_percent.is_some()
    }

    fn limits_cpu(&self) -> bool {
        self.cpu_cores.is_some() || self.cpu_percent.is_some()
    }

    fn limits_disk(&self) -> bool {
        self.disk_gb.is_some() || self.disk_percent.is_some()
    }

    fn memory(&self, total: f64) -> f64 {
        match (self.memory_percent, self.memory_mb) {
            (Some(percent), _) => total * f64::from(percent) / 100.0,
            (None, Some(mb)) => mb as f64 * MIB,
            (None, None) => 0.0,
        }
    }

    fn cpu(&self, total: f64) -> f64 {
        match (self.cpu_percent, self.cpu_cores) {
            (Some(percent), _) => total * f64::from(percent) / 100.0,
            (None, Some(cores)) => cores,
            (None, None) => 0.0,
        }
    }

    fn disk(&self, total: f64) -> f64 {
        match (self.disk_percent, self.disk_gb) {
            (Some(percent), _) => total * f64::from(percent) / 100.0,
            (None, Some(gb)) => gb as f64 * GIB,
            (None, None) => 0.0,
        }
    }
}

/// The rules one node is placed by: its reserve and allocation limits
/// (committed memory and vCPUs of all VMs on it, as a percent of its size).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NodeRules {
    pub reserve: Reserve,
    pub memory_allocation_limit_percent: Option<u32>,
    pub cpu_allocation_limit_percent: Option<u32>,
}

/// Placement settings of the group.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlacementConfig {
    pub scheduler: Scheduler,
    /// The rules of nodes without their own.
    pub rules: NodeRules,
    /// `node_policies`: rules for named nodes.
    pub node_rules: BTreeMap<String, NodeRules>,
    /// Storages full clones may go to (`target_storages`, or `storage`);
    /// empty: the template's.
    pub target_storages: Vec<String>,
}

impl PlacementConfig {
    fn rules_of(&self, node: &str) -> &NodeRules {
        self.node_rules.get(node).unwrap_or(&self.rules)
    }
}

/// What one instance needs of a node.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Demand {
    /// Bytes of memory.
    pub memory: u64,
    pub cpus: f64,
    /// Bytes on the storage the clone's disks land on.
    pub disk: u64,
}

impl Demand {
    /// What a clone of `template` (the config that is cloned) needs after
    /// `sizing`: its memory (`vm_memory_mb`, else the template's MiB, default
    /// 512), vCPUs (`vm_cpu_cores` or `cores`, times `sockets`; or `vcpus`)
    /// and disks (their `size=`, the cloud-init drive and CD-ROMs excluded;
    /// `grown_disk`, which `vm_disk_mb` grows, counted at its new size).
    pub fn of_clone(template: &BTreeMap<String, String>, sizing: &Sizing, grown_disk: Option<&str>) -> Self {
        let number = |key: &str| template.get(key).and_then(|v| v.split(',').next()?.trim().parse::<u64>().ok());
        let memory_mib = sizing.memory_mib.or_else(|| number("memory")).unwrap_or(512);
        let cores = sizing.cores.map(u64::from).or_else(|| number("cores")).unwrap_or(1).max(1);
        let sockets = number("sockets").unwrap_or(1).max(1);
        let cpus = match (sizing.cores, number("vcpus")) {
            (None, Some(vcpus)) => vcpus,
            _ => cores * sockets,
        };
        let disks = super::template::disk_sizes(template);
        let mut disk: u64 = disks.values().sum();
        if let Some(wanted) = sizing.disk_mib.map(|mib| mib << 20) {
            let grown = grown_disk.and_then(|key| disks.get(key).copied()).unwrap_or(0);
            disk += wanted.saturating_sub(grown);
        }
        Self { memory: memory_mib << 20, cpus: cpus as f64, disk }
    }
}

impl fmt::Display for Demand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} memory, {} vCPU, {} disk", bytes(self.memory as f64), trim(self.cpus), bytes(self.disk as f64))
    }
}

/// A node as the last listing showed it.
#[derive(Debug, Clone, Default, PartialEq)]
struct NodeView {
    online: bool,
    cpus: f64,
    cpu_used: f64,
    memory: f64,
    memory_used: f64,
    /// Memory and vCPUs committed to VMs on the node: running ones, and ours
    /// even while stopped (they are about to run).
    allocated_memory: f64,
    allocated_cpus: f64,
    /// Storages on this node: (total, used), available ones only.
    storages: BTreeMap<String, (f64, f64)>,
}

/// What this process placed on a node since the listing shows it.
#[derive(Debug, Default)]
struct Committed {
    memory: f64,
    cpus: f64,
    /// Bytes per target storage.
    disk: HashMap<String, f64>,
    count: u32,
}

/// A node's room for one more instance, as placement judged it.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeRoom {
    pub node: String,
    /// Why the node cannot take it; empty when it can.
    pub blocked_by: Vec<String>,
    /// The storage a full clone would go to, when `target_storages` applies.
    pub storage: Option<String>,
    /// What the listing says of the node (memory, CPU, commitments), for people.
    pub summary: String,
    /// How many more instances fit under the limits that are set (`None`:
    /// no limit is set, or the listing carries no resources for the node).
    pub fits: Option<u32>,
    score: f64,
}

/// No candidate node can take another instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoRoom {
    pub demand: String,
    /// Per node: what binds.
    pub reasons: Vec<String>,
}

impl fmt::Display for NoRoom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no node can take another instance ({}): {}", self.demand, self.reasons.join("; "))
    }
}

/// Nodes that cannot take a clone yet, with why.
pub type Unready = BTreeMap<String, String>;

/// Where a clone goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    pub node: String,
    /// The full clone's target storage, when `target_storages` chose one.
    pub storage: Option<String>,
    /// Names this placement for [`Placement::release`] (concurrent clones
    /// may try the same VMID, so the VMID cannot).
    pub ticket: u64,
}

#[derive(Debug, Clone)]
struct Pending {
    vmid: Vmid,
    node: String,
    storage: Option<String>,
    demand: Demand,
    placed_at: Instant,
}

/// How long a placed clone counts without its VM in the listing (the clone
/// request creates the VM's config at once; after this it failed).
const UNLISTED_GRACE: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// `None` until the first listing; a node missing from it (the
    /// credentials may not audit nodes) has unknown resources.
    nodes: Option<BTreeMap<String, NodeView>>,
    /// Placed clones until their VM runs, by ticket.
    pending: HashMap<u64, Pending>,
    next_ticket: u64,
    /// Our instances per node in the last listing.
    ours: HashMap<String, u32>,
    penalties: HashMap<String, Instant>,
    turn: usize,
}

/// The one owner of placement state.
#[derive(Debug)]
pub struct Placement {
    config: PlacementConfig,
    /// The nodes clones may go to, in configured order.
    candidates: Vec<String>,
    demand: Demand,
    state: Mutex<State>,
}

impl Placement {
    pub fn new(config: PlacementConfig, candidates: Vec<String>, demand: Demand) -> Self {
        Self { config, candidates, demand, state: Mutex::new(State::default()) }
    }

    /// The group's placement: over `target_nodes`, else the templates'
    /// nodes (`default_nodes`); linked clones stay on the template's
    /// storage, so `target_storages` do not apply to them. One reading for
    /// the engine and `check`.
    pub fn for_group(config: &GroupConfig, default_nodes: Vec<String>, linked: bool, demand: Demand) -> Self {
        let candidates = if config.target_nodes.is_empty() { default_nodes } else { config.target_nodes.clone() };
        let mut placement_config = config.placement.clone();
        if linked {
            placement_config.target_storages.clear();
        }
        Self::new(placement_config, candidates, demand)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn demand(&self) -> Demand {
        self.demand
    }

    pub fn scheduler(&self) -> Scheduler {
        self.config.scheduler
    }

    /// Takes in a fresh listing. `ours` says which VMs are the group's.
    pub fn observe(&self, listing: &ClusterListing, ours: impl Fn(&crate::pve::VmResource) -> bool) {
        let mut nodes: BTreeMap<String, NodeView> = listing
            .nodes
            .iter()
            .map(|node| {
                let cpus = node.cpus.unwrap_or(0.0);
                (
                    node.name.clone(),
                    NodeView {
                        online: node.online,
                        cpus,
                        cpu_used: node.cpu_usage.unwrap_or(0.0) * cpus,
                        memory: node.max_memory.unwrap_or(0) as f64,
                        memory_used: node.memory_used.unwrap_or(0) as f64,
                        ..NodeView::default()
                    },
                )
            })
            .collect();
        for storage in listing.storages.iter().filter(|s| s.available) {
            if let Some(view) = nodes.get_mut(&storage.node) {
                view.storages.insert(
                    storage.storage.clone(),
                    (storage.total.unwrap_or(0) as f64, storage.used.unwrap_or(0) as f64),
                );
            }
        }
        let mut ours_per_node: HashMap<String, u32> = HashMap::new();
        let mut listed_running: HashSet<Vmid> = HashSet::new();
        for vm in listing.vms.iter().filter(|vm| !vm.template) {
            let running = vm.status.as_deref() == Some("running");
            let is_ours = ours(vm);
            if is_ours {
                *ours_per_node.entry(vm.node.clone()).or_default() += 1;
            }
            if running {
                listed_running.insert(vm.vmid);
            }
            if (running || is_ours)
                && let Some(view) = nodes.get_mut(&vm.node)
            {
                view.allocated_memory += vm.max_memory.unwrap_or(0) as f64;
                view.allocated_cpus += vm.cpus.unwrap_or(0.0);
            }
        }
        let listed: HashSet<Vmid> = listing.vms.iter().map(|vm| vm.vmid).collect();
        let now = Instant::now();
        let mut state = self.lock();
        // A placement stops counting once its VM runs (its use shows in the
        // node's figures), or when its VM never showed up or is gone.
        state.pending.retain(|_, pending| {
            !listed_running.contains(&pending.vmid)
                && (listed.contains(&pending.vmid) || now.duration_since(pending.placed_at) < UNLISTED_GRACE)
        });
        state.nodes = (!nodes.is_empty()).then_some(nodes);
        state.ours = ours_per_node;
    }

    /// Chooses the node (and storage) for the clone `vmid` and counts it
    /// there until its VM runs.
    /// `unready` names the nodes that cannot take a clone yet, with why
    /// (their template copy is not made yet).
    pub fn place(&self, vmid: Vmid, unready: &Unready) -> Result<Placed, NoRoom> {
        let now = Instant::now();
        let mut state = self.lock();
        state.penalties.retain(|_, until| *until > now);
        let rooms = self.rooms(&state, unready);
        let mut open: Vec<&NodeRoom> = rooms.iter().filter(|room| room.blocked_by.is_empty()).collect();
        if open.is_empty() {
            return Err(NoRoom {
                demand: self.demand.to_string(),
                reasons: rooms.iter().map(|room| format!("{}: {}", room.node, room.blocked_by.join(", "))).collect(),
            });
        }
        let chosen = match self.config.scheduler {
            Scheduler::RoundRobin => {
                let index = state.turn % open.len();
                state.turn = state.turn.wrapping_add(1);
                open[index]
            }
            // Highest score; the configured order breaks ties.
            _ => {
                open.sort_by(|a, b| b.score.total_cmp(&a.score));
                open[0]
            }
        };
        state.next_ticket += 1;
        let placed = Placed { node: chosen.node.clone(), storage: chosen.storage.clone(), ticket: state.next_ticket };
        state.pending.insert(
            placed.ticket,
            Pending {
                vmid,
                node: placed.node.clone(),
                storage: placed.storage.clone(),
                demand: self.demand,
                placed_at: now,
            },
        );
        Ok(placed)
    }

    /// The clone placed under `ticket` never came to be: it no longer counts.
    pub fn release(&self, ticket: u64) {
        self.lock().pending.remove(&ticket);
    }

    /// Skips `node` for a while after a clone there failed (only when other
    /// nodes remain).
    pub fn penalise(&self, node: &str) {
        if self.candidates.len() > 1 {
            self.lock().penalties.insert(node.to_string(), Instant::now() + NODE_PENALTY);
        }
    }

    /// Every candidate node's room for one more instance now.
    pub fn survey(&self, unready: &Unready) -> Vec<NodeRoom> {
        let state = self.lock();
        self.rooms(&state, unready)
    }

    fn rooms(&self, state: &State, unready: &Unready) -> Vec<NodeRoom> {
        let mut pending_per_node: HashMap<&str, Committed> = HashMap::new();
        for Pending { node, storage, demand, .. } in state.pending.values() {
            let entry = pending_per_node.entry(node.as_str()).or_default();
            entry.memory += demand.memory as f64;
            entry.cpus += demand.cpus;
            entry.count += 1;
            if let Some(storage) = storage {
                *entry.disk.entry(storage.clone()).or_default() += demand.disk as f64;
            }
        }
        self.candidates
            .iter()
            .map(|node| {
                let pending = pending_per_node.remove(node.as_str()).unwrap_or_default();
                let ours = state.ours.get(node).copied().unwrap_or(0) + pending.count;
                let mut room = match state.nodes.as_ref() {
                    // No resources known (no node may be audited): any node, the first target storage.
                    None => NodeRoom {
                        node: node.clone(),
                        blocked_by: Vec::new(),
                        storage: self.config.target_storages.first().cloned(),
                        summary:
                            "resources unknown: the listing shows no node (the credentials lack Sys.Audit on /nodes)"
                                .into(),
                        fits: None,
                        score: 0.0,
                    },
                    Some(nodes) => match nodes.get(node) {
                        None => NodeRoom {
                            node: node.clone(),
                            blocked_by: vec![
                                "not in the cluster's listing (unknown node, or no Sys.Audit on it)".into(),
                            ],
                            storage: None,
                            summary: String::new(),
                            fits: Some(0),
                            score: 0.0,
                        },
                        Some(view) => self.judge(node, view, &pending),
                    },
                };
                if self.config.scheduler == Scheduler::Spread || state.nodes.is_none() {
                    room.score = -f64::from(ours);
                }
                if state.penalties.contains_key(node) {
                    room.blocked_by.push(format!("a clone there failed within the last {} s", NODE_PENALTY.as_secs()));
                }
                if let Some(why) = unready.get(node) {
                    room.blocked_by.push(why.clone());
                    room.fits = Some(0);
                }
                room
            })
            .collect()
    }

    /// One node's room: what blocks it, how many fit, its score.
    fn judge(&self, node: &str, view: &NodeView, pending: &Committed) -> NodeRoom {
        let rules = self.config.rules_of(node);
        let demand = self.demand;
        let (memory, cpus, disk) = (demand.memory as f64, demand.cpus, demand.disk as f64);
        let mut blocked_by = Vec::new();
        if !view.online {
            blocked_by.push("offline".to_string());
        }
        // After placing this instance, on top of what is pending.
        let memory_free = view.memory - view.memory_used - pending.memory;
        let memory_reserve = rules.reserve.memory(view.memory);
        let cpu_free = view.cpus - view.cpu_used - pending.cpus;
        let cpu_reserve = rules.reserve.cpu(view.cpus);
        let allocated_memory = view.allocated_memory + pending.memory;
        let allocated_cpus = view.allocated_cpus + pending.cpus;
        // Only the limits that are set bind (a node is never refused for
        // resources nobody asked to keep): `None` fits without any.
        let mut fits: Option<u32> = None;
        let mut limit = |free: f64, need: f64| {
            let count = if need <= 0.0 { f64::from(u32::MAX) } else { (free / need).floor().max(0.0) };
            let count = count.min(f64::from(u32::MAX)) as u32;
            fits = Some(fits.map_or(count, |fits| fits.min(count)));
        };
        if view.memory > 0.0 && rules.reserve.limits_memory() {
            limit(memory_free - memory_reserve, memory);
            if memory_free - memory < memory_reserve {
                blocked_by.push(format!(
                    "memory reserve ({} free, {} needed, {} reserved)",
                    bytes(memory_free),
                    bytes(memory),
                    bytes(memory_reserve)
                ));
            }
        }
        if view.cpus > 0.0 && rules.reserve.limits_cpu() {
            limit(cpu_free - cpu_reserve, cpus);
            if cpu_free - cpus < cpu_reserve {
                blocked_by.push(format!(
                    "CPU reserve ({} cores free, {} needed, {} reserved)",
                    trim(cpu_free),
                    trim(cpus),
                    trim(cpu_reserve)
                ));
            }
        }
        if let Some(percent) = rules.memory_allocation_limit_percent {
            let cap = view.memory * f64::from(percent) / 100.0;
            limit(cap - allocated_memory, memory);
            if allocated_memory + memory > cap {
                blocked_by.push(format!(
                    "memory allocation limit {percent}% ({} of {} committed, {} needed)",
                    bytes(allocated_memory),
                    bytes(cap),
                    bytes(memory)
                ));
            }
        }
        if let Some(percent) = rules.cpu_allocation_limit_percent {
            let cap = view.cpus * f64::from(percent) / 100.0;
            limit(cap - allocated_cpus, cpus);
            if allocated_cpus + cpus > cap {
                blocked_by.push(format!(
                    "vCPU allocation limit {percent}% ({} of {} committed, {} needed)",
                    trim(allocated_cpus),
                    trim(cap),
                    trim(cpus)
                ));
            }
        }
        // Storage: the target storage with the most free space that holds
        // the disk above its reserve.
        let mut storage = None;
        let mut disk_free_fraction = 1.0;
        if !self.config.target_storages.is_empty() {
            let best = self
                .config
                .target_storages
                .iter()
                .filter_map(|name| {
                    let placed = pending.disk.get(name).copied().unwrap_or(0.0);
                    view.storages.get(name).map(|&(total, used)| (name, total, total - used - placed))
                })
                .max_by(|a, b| a.2.total_cmp(&b.2));
            match best {
                None => blocked_by.push(format!(
                    "none of target_storages ({}) is available on it",
                    self.config.target_storages.join(", ")
                )),
                Some((name, total, free)) => {
                    let reserve = rules.reserve.disk(total);
                    if rules.reserve.limits_disk() {
                        limit(free - reserve, disk);
                    }
                    if rules.reserve.limits_disk() && free - disk < reserve {
                        blocked_by.push(format!(
                            "disk reserve on {name} ({} free, {} needed, {} reserved)",
                            bytes(free),
                            bytes(disk),
                            bytes(reserve)
                        ));
                    }
                    if total > 0.0 {
                        disk_free_fraction = (free - disk) / total;
                    }
                    storage = Some(name.clone());
                }
            }
        }
        if !view.online {
            fits = Some(0);
        }
        // Below zero when overcommitted, so overcommit spreads in proportion too.
        let fraction = |free: f64, total: f64| if total > 0.0 { free / total } else { 1.0 };
        let memory_after = fraction(memory_free - memory, view.memory);
        let cpu_after = fraction(cpu_free - cpus, view.cpus);
        let score = match self.config.scheduler {
            Scheduler::MostFreeRam => memory_free - memory_reserve,
            Scheduler::MostFreeCpu => cpu_free - cpu_reserve,
            // The scarcest resource after placing decides: nodes fill in
            // proportion to their size.
            _ => memory_after.min(cpu_after).min(disk_free_fraction),
        };
        let mut summary = format!(
            "{} of {} memory free, {} of {} CPUs idle, {} memory and {} vCPUs committed",
            bytes(memory_free),
            bytes(view.memory),
            trim(cpu_free.max(0.0)),
            trim(view.cpus),
            bytes(allocated_memory),
            trim(allocated_cpus)
        );
        if let Some(name) = &storage
            && let Some((total, used)) = view.storages.get(name)
        {
            summary.push_str(&format!(", {name} {} of {} free", bytes(total - used), bytes(*total)));
        }
        NodeRoom { node: node.to_string(), blocked_by, storage, summary, fits, score }
    }
}

fn bytes(value: f64) -> String {
    if value.abs() >= GIB { format!("{:.1} GiB", value / GIB) } else { format!("{:.0} MiB", value / MIB) }
}

fn trim(value: f64) -> String {
    let text = format!("{value:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pve::{NodeResource, StorageResource, VmResource};

    const GB: u64 = 1 << 30;

    fn node(name: &str, cpus: f64, memory_gb: u64, used_gb: u64, cpu_usage: f64) -> NodeResource {
        NodeResource {
            name: name.into(),
            online: true,
            cpus: Some(cpus),
            cpu_usage: Some(cpu_usage),
            max_memory: Some(memory_gb * GB),
            memory_used: Some(used_gb * GB),
        }
    }

    fn vm(vmid: u32, node: &str, memory_gb: u64, cpus: f64, running: bool) -> VmResource {
        VmResource {
            vmid: Vmid(vmid),
            node: node.into(),
            name: None,
            status: Some(if running { "running" } else { "stopped" }.into()),
            template: false,
            lock: None,
            tags: Vec::new(),
            pool: None,
            uptime: None,
            max_memory: Some(memory_gb * GB),
            cpus: Some(cpus),
        }
    }

    fn three_nodes() -> ClusterListing {
        ClusterListing {
            nodes: vec![
                node("pve1", 32.0, 64, 8, 0.05),
                node("pve2", 16.0, 64, 40, 0.5),
                node("pve3", 8.0, 32, 4, 0.1),
            ],
            vms: vec![vm(500, "pve2", 32, 8.0, true)],
            storages: Vec::new(),
        }
    }

    fn placement(scheduler: Scheduler, rules: NodeRules) -> Placement {
        let config = PlacementConfig { scheduler, rules, ..PlacementConfig::default() };
        let demand = Demand { memory: 4 * GB, cpus: 2.0, disk: 0 };
        Placement::new(config, vec!["pve1".into(), "pve2".into(), "pve3".into()], demand)
    }

    fn place_many(placement: &Placement, count: u32) -> BTreeMap<String, u32> {
        let mut placed = BTreeMap::new();
        for vmid in 0..count {
            let node = placement.place(Vmid(1000 + vmid), &Unready::new()).unwrap().node;
            *placed.entry(node).or_default() += 1;
        }
        placed
    }

    #[test]
    fn the_demand_counts_the_grown_disk_at_its_new_size() {
        let template: BTreeMap<String, String> = [
            ("memory", "4096"),
            ("cores", "2"),
            ("sockets", "2"),
            ("scsi0", "local-lvm:base-9000-disk-0,size=8G"),
            ("scsi1", "local-lvm:base-9000-disk-1,size=32G"),
            ("efidisk0", "local-lvm:base-9000-disk-2,size=4M"),
            ("ide2", "local-lvm:vm-9000-cloudinit,media=cdrom"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let plain = Demand::of_clone(&template, &Sizing::default(), None);
        assert_eq!((plain.memory, plain.cpus, plain.disk), (4 * GB, 4.0, 40 * GB + (4 << 20)));
        let sizing = Sizing { memory_mib: Some(1024), cores: Some(3), disk_mib: Some(20 * 1024), ..Sizing::default() };
        // The boot disk scsi0 grows from 8 to 20 GiB (not the larger data disk).
        let sized = Demand::of_clone(&template, &sizing, Some("scsi0"));
        assert_eq!((sized.memory, sized.cpus, sized.disk), (GB, 6.0, 52 * GB + (4 << 20)));
    }

    #[test]
    fn most_free_ram_fills_the_emptiest_node_first() {
        let placement = placement(Scheduler::MostFreeRam, NodeRules::default());
        placement.observe(&three_nodes(), |_| false);
        // pve1 has 56 GiB free, pve3 28, pve2 24: pve1 takes instances until it is level with pve3.
        assert_eq!(placement.place(Vmid(1), &Unready::new()).unwrap().node, "pve1");
        // Then the most free memory: pve1 down to 28 GiB, then pve1 and pve3 in turn, then all three.
        let placed = place_many(&placement, 10);
        assert_eq!((placed["pve1"], placed["pve2"], placed["pve3"]), (8, 1, 1), "{placed:?}");
    }

    #[test]
    fn balanced_fills_nodes_in_proportion_to_their_size() {
        let placement = placement(Scheduler::Balanced, NodeRules::default());
        let mut listing = three_nodes();
        listing.nodes =
            vec![node("pve1", 16.0, 64, 0, 0.0), node("pve2", 16.0, 64, 0, 0.0), node("pve3", 8.0, 32, 0, 0.0)];
        listing.vms.clear();
        placement.observe(&listing, |_| false);
        let placed = place_many(&placement, 20);
        assert_eq!((placed["pve1"], placed["pve2"], placed["pve3"]), (8, 8, 4), "{placed:?}");
    }

    #[test]
    fn a_reserve_keeps_a_loaded_node_out() {
        let rules =
            NodeRules { reserve: Reserve { memory_mb: Some(24 * 1024), ..Reserve::default() }, ..NodeRules::default() };
        let placement = placement(Scheduler::Spread, rules);
        placement.observe(&three_nodes(), |_| false);
        let placed = place_many(&placement, 6);
        // pve2: 24 GiB free minus 4 needed is below the 24 GiB reserve.
        assert_eq!(placed.get("pve2"), None, "{placed:?}");
        let rooms = placement.survey(&Unready::new());
        let pve2 = rooms.iter().find(|room| room.node == "pve2").unwrap();
        assert!(
            pve2.blocked_by[0].starts_with("memory reserve (24.0 GiB free, 4.0 GiB needed, 24.0 GiB reserved)"),
            "{pve2:?}"
        );
    }

    #[test]
    fn without_reserves_or_limits_resources_only_steer() {
        let placement = placement(Scheduler::MostFreeRam, NodeRules::default());
        placement.observe(&three_nodes(), |_| false);
        // 200 × 4 GiB on 160 GiB of nodes: every one is placed, by most free memory.
        let placed = place_many(&placement, 200);
        assert_eq!(placed.values().sum::<u32>(), 200);
        assert!(placement.survey(&Unready::new()).iter().all(|room| room.fits.is_none()));
    }

    #[test]
    fn an_offline_node_is_skipped_and_no_room_names_what_binds() {
        let rules = NodeRules { memory_allocation_limit_percent: Some(50), ..NodeRules::default() };
        let placement = placement(Scheduler::Balanced, rules);
        let mut listing = three_nodes();
        listing.nodes[0].online = false;
        listing.nodes[2].online = false;
        placement.observe(&listing, |_| false);
        // pve2: 32 GiB committed of a 32 GiB cap.
        let err = placement.place(Vmid(1), &Unready::new()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("no node can take another instance (4.0 GiB memory, 2 vCPU, 0 MiB disk): pve1: offline"),
            "{text}"
        );
        assert!(
            text.contains("pve2: memory allocation limit 50% (32.0 GiB of 32.0 GiB committed, 4.0 GiB needed)"),
            "{text}"
        );
    }

    #[test]
    fn round_robin_takes_turns_and_spread_counts_our_instances() {
        let placement = placement(Scheduler::RoundRobin, NodeRules::default());
        placement.observe(&three_nodes(), |_| false);
        let nodes: Vec<String> = (0..4).map(|i| placement.place(Vmid(i + 1), &Unready::new()).unwrap().node).collect();
        assert_eq!(nodes, ["pve1", "pve2", "pve3", "pve1"]);

        let spread = self::placement(Scheduler::Spread, NodeRules::default());
        let mut listing = three_nodes();
        listing.vms =
            vec![vm(1001, "pve1", 4, 2.0, true), vm(1002, "pve1", 4, 2.0, true), vm(1003, "pve3", 4, 2.0, true)];
        spread.observe(&listing, |vm| vm.vmid.0 > 1000);
        assert_eq!(spread.place(Vmid(2000), &Unready::new()).unwrap().node, "pve2");
        assert_eq!(spread.place(Vmid(2001), &Unready::new()).unwrap().node, "pve2");
        assert_eq!(spread.place(Vmid(2002), &Unready::new()).unwrap().node, "pve3");
    }

    #[test]
    fn pending_placements_count_until_their_vm_runs() {
        let rules = NodeRules { cpu_allocation_limit_percent: Some(100), ..NodeRules::default() };
        let config = PlacementConfig { scheduler: Scheduler::Balanced, rules, ..PlacementConfig::default() };
        let placement = Placement::new(config, vec!["pve3".into()], Demand { memory: GB, cpus: 4.0, disk: 0 });
        let mut listing = three_nodes();
        listing.nodes[2].cpu_usage = Some(0.0);
        placement.observe(&listing, |_| false);
        let first = placement.place(Vmid(1), &Unready::new()).unwrap();
        placement.place(Vmid(2), &Unready::new()).unwrap();
        assert!(placement.place(Vmid(3), &Unready::new()).is_err(), "8 vCPUs of 8 committed");
        // VM 1 fails to clone; VM 2 runs and is counted by the listing instead.
        placement.release(first.ticket);
        listing.vms.push(vm(2, "pve3", 1, 4.0, true));
        placement.observe(&listing, |_| true);
        assert_eq!(placement.place(Vmid(3), &Unready::new()).unwrap().node, "pve3");
        assert!(placement.place(Vmid(4), &Unready::new()).is_err());
    }

    #[test]
    fn target_storages_pick_the_most_free_space_that_holds_the_disk() {
        let rules =
            NodeRules { reserve: Reserve { disk_percent: Some(10), ..Reserve::default() }, ..NodeRules::default() };
        let config = PlacementConfig {
            scheduler: Scheduler::Balanced,
            rules,
            target_storages: vec!["local-lvm".into(), "fast".into()],
            ..PlacementConfig::default()
        };
        let placement = Placement::new(config, vec!["pve1".into()], Demand { memory: GB, cpus: 1.0, disk: 30 * GB });
        let storage = |name: &str, total: u64, used: u64| StorageResource {
            storage: name.into(),
            node: "pve1".into(),
            available: true,
            shared: false,
            content: vec!["images".into()],
            kind: Some("lvmthin".into()),
            total: Some(total * GB),
            used: Some(used * GB),
        };
        let mut listing = three_nodes();
        listing.storages = vec![storage("local-lvm", 100, 20), storage("fast", 200, 100), storage("other", 1000, 0)];
        placement.observe(&listing, |_| false);
        assert_eq!(placement.place(Vmid(1), &Unready::new()).unwrap().storage.as_deref(), Some("fast"));
        // fast: 70 GiB free now, local-lvm 80.
        assert_eq!(placement.place(Vmid(2), &Unready::new()).unwrap().storage.as_deref(), Some("local-lvm"));
        let fits = placement.survey(&Unready::new())[0].fits;
        assert_eq!(fits, Some(1), "local-lvm: 50 GiB free, 10 reserved, 30 each");
    }
}
