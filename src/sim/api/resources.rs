//! `GET /cluster/resources`: every guest, node, storage and pool the caller
//! may see, as pvestatd's broadcast and the config files describe them.
//!
//! PVE's semantics: a guest's `status`, `name` and `template` are as they
//! were `staleness` seconds ago ("unknown" for a guest younger than that, or
//! on an offline node); `lock`, `tags` and `hastate` are current.
//!
//! The answer is large (about 290 bytes per guest) and polled often, so it
//! is serialised from borrowed views straight into bytes, and kept per
//! (caller, `type`) until the cluster changes (`Cluster::generation`) or a
//! recorded observation comes of age. Between those instants only `uptime`
//! moves with the clock: the kept bytes leave a gap for it, filled on every
//! answer.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::time::Instant;

use serde::{Serialize, Serializer};

use super::Call;
use crate::pve::lenient::PveBool;
use crate::sim::access::Caller;
use crate::sim::clock::SimTime;
use crate::sim::cluster::{Cluster, Pool};
use crate::sim::vm::{Power, Vm};
use crate::sim::wire::{ApiError, Reply, write_perl_json};

/// Answers kept at once: a few callers times the five `type` filters
/// (at most 32 x ~600 KB for 2,000 guests).
const CACHED_ANSWERS: usize = 32;

/// Up to this many guests, debug builds check every built answer against
/// one written without kept items.
#[cfg(debug_assertions)]
const DEBUG_CHECKED_GUESTS: usize = 256;

pub fn resources(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let kind = call.params.get("type");
    let cluster = call.shared.cluster();
    let started = Instant::now();
    let mut cache = call.shared.resources_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = call.shared.clock.now();
    let serialised_before = cache.items_serialised;
    let (answer, reused) = cache.answer(&cluster, caller, kind, now);
    let items_serialised = cache.items_serialised - serialised_before;
    let elapsed = started.elapsed();
    call.shared.counters.update(|c| {
        if reused {
            c.resources_answers_reused += 1;
        } else {
            c.resources_answers_built += 1;
        }
        c.resources_items_serialised += items_serialised;
        c.resources_server_nanos += u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
    });
    Ok(Reply::serialized(answer))
}

/// Serialised `/cluster/resources` answers of the current cluster state,
/// and each guest's serialised item.
///
/// Two layers, so that a change costs what it touches:
/// - whole answers per (caller, `type`), valid while `Cluster::generation`
///   stands (any write) and no observation comes of age;
/// - per guest, its item's bytes next to the exact inputs they were written
///   from (`GuestView`). After any write every guest's inputs are read again
///   and compared; only guests whose inputs differ are re-serialised, and
///   the answer is the concatenation of the kept items. Because the bytes
///   are a function of the view alone, no mutator has to remember to
///   invalidate anything: a task-log line changes no view and re-serialises
///   nothing, a lock on one guest re-serialises one item.
#[derive(Default)]
pub struct ResourcesCache {
    generation: u64,
    answers: Vec<KeptAnswer>,
    /// vmid → its item without and with `pool` (callers differ in `Pool.Audit`).
    guests: HashMap<u32, [Option<KeptGuest>; 2]>,
    /// Guest items written so far (for counters and tests).
    items_serialised: u64,
}

struct KeptAnswer {
    caller: Caller,
    kind: Option<String>,
    built_at: SimTime,
    /// The first instant an observation recorded before `built_at` shows
    /// through the lag.
    valid_until: SimTime,
    template: Template,
}

impl ResourcesCache {
    /// The answer's `data` for `caller` with the `type` filter `kind` at
    /// `now`, and whether a kept answer was reused whole.
    pub fn answer(&mut self, cluster: &Cluster, caller: &Caller, kind: Option<&str>, now: SimTime) -> (Vec<u8>, bool) {
        if self.generation != cluster.generation() {
            self.answers.clear();
            self.generation = cluster.generation();
        }
        let same_question = |kept: &KeptAnswer| kept.caller == *caller && kept.kind.as_deref() == kind;
        if let Some(kept) =
            self.answers.iter().find(|kept| same_question(kept) && kept.built_at <= now && now < kept.valid_until)
        {
            return (kept.template.render(now), true);
        }
        self.answers.retain(|kept| !same_question(kept));
        if self.answers.len() >= CACHED_ANSWERS {
            self.answers.remove(0);
        }
        let template = build(&mut self.guests, &mut self.items_serialised, cluster, caller, kind, now);
        let answer = template.render(now);
        // The safety net for the kept items in test and debug builds: the
        // same answer written from scratch (small clusters only: it costs a
        // full build).
        #[cfg(debug_assertions)]
        if cluster.vms.len() <= DEBUG_CHECKED_GUESTS {
            let fresh = build(&mut HashMap::new(), &mut 0, cluster, caller, kind, now).render(now);
            debug_assert!(answer == fresh, "kept /cluster/resources items differ from fresh ones");
        }
        self.answers.push(KeptAnswer {
            caller: caller.clone(),
            kind: kind.map(str::to_string),
            built_at: now,
            valid_until: next_coming_of_age(cluster, now),
            template,
        });
        (answer, false)
    }

    /// `members` of `GET /pools/{poolid}` (`extract_vm_stats`): the pool's
    /// guests as their `/cluster/resources` items with `pool` shown, then its
    /// storages once per node that has them. `kind` is the `type` filter.
    ///
    /// Guest items come from the kept ones: a plugin that reads a pool of a
    /// thousand VMs on every Update would otherwise have the simulator write
    /// (and hold the cluster for) half a megabyte of JSON each time.
    pub fn pool_members(&mut self, cluster: &Cluster, pool: &Pool, kind: Option<&str>, now: SimTime) -> Vec<u8> {
        let mut template = Template { bytes: Vec::with_capacity(64 + pool.vms.len() * 330), gaps: Vec::new() };
        template.bytes.push(b'[');
        if kind.is_none_or(|k| k == "qemu") {
            for guest in pool.vms.iter().filter_map(|vmid| cluster.vms.get(vmid)) {
                template
                    .append(&kept_item(&mut self.guests, &mut self.items_serialised, cluster, guest, now, true).item);
            }
        }
        if kind.is_none_or(|k| k == "storage") {
            for storage in pool.storages.iter().filter_map(|id| cluster.storages.get(id)) {
                for node in cluster.nodes.values().filter(|n| storage.available_on(&n.name)) {
                    let entry = Entry {
                        id: Some(ResourceId::Storage { node: &node.name, storage: &storage.id }),
                        kind: Some("storage"),
                        node: Some(&node.name),
                        storage: Some(&storage.id),
                        plugintype: Some(&storage.kind),
                        content: Some(&storage.content),
                        shared: Some(PveBool(storage.shared)),
                        status: Some("available"),
                        maxdisk: Some(storage.total as i64),
                        ..Entry::default()
                    };
                    template.push(&entry, None, None);
                }
            }
        }
        template.bytes.push(b']');
        template.render(now)
    }

    /// Forgets every kept answer and item (the next answers are written from scratch).
    pub fn forget(&mut self) {
        self.answers.clear();
        self.guests.clear();
    }
}

/// When the stale view next changes by the clock alone: the earliest
/// observation newer than `now - staleness`, plus `staleness`.
fn next_coming_of_age(cluster: &Cluster, now: SimTime) -> SimTime {
    let horizon = now - cluster.staleness;
    cluster.vms.values().filter_map(|guest| guest.next_observation_after(horizon)).fold(f64::INFINITY, f64::min)
        + cluster.staleness
}

/// The answer's bytes with gaps where an `uptime` goes.
struct Template {
    bytes: Vec<u8>,
    gaps: Vec<(usize, Uptime)>,
}

/// An uptime that grows with the clock.
#[derive(Debug, Clone, Copy)]
enum Uptime {
    Guest(Power),
    Node { boot_time: SimTime },
}

impl Uptime {
    fn at(self, now: SimTime) -> i64 {
        match self {
            Uptime::Guest(power) => power.uptime(now) as i64,
            Uptime::Node { boot_time } => (now - boot_time) as i64,
        }
    }
}

impl Template {
    fn render(&self, now: SimTime) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes.len() + self.gaps.len() * 8);
        let mut from = 0;
        for &(at, uptime) in &self.gaps {
            out.extend_from_slice(&self.bytes[from..at]);
            write_integer(&mut out, uptime.at(now));
            from = at;
        }
        out.extend_from_slice(&self.bytes[from..]);
        out
    }

    /// Appends a kept item (written by `push` into an empty template).
    fn append(&mut self, item: &Template) {
        if self.bytes.len() > 1 {
            self.bytes.push(b',');
        }
        let base = self.bytes.len();
        self.bytes.extend_from_slice(&item.bytes);
        self.gaps.extend(item.gaps.iter().map(|&(at, uptime)| (base + at, uptime)));
    }

    /// Appends one item: `entry`'s fields, then `uptime` and `vmid`, the
    /// keys that sort after `type`.
    fn push(&mut self, entry: &Entry<'_>, uptime: Option<UptimeField>, vmid: Option<u32>) {
        if self.bytes.len() > 1 {
            self.bytes.push(b',');
        }
        let start = self.bytes.len();
        // Serialising borrowed strings and numbers into a Vec cannot fail.
        let _ = write_perl_json(&mut self.bytes, entry);
        self.bytes.pop(); // its `}`: the item goes on
        let mut empty = self.bytes.len() == start + 1;
        let mut key = |bytes: &mut Vec<u8>, name: &str| {
            if !empty {
                bytes.push(b',');
            }
            empty = false;
            bytes.extend_from_slice(b"\"");
            bytes.extend_from_slice(name.as_bytes());
            bytes.extend_from_slice(b"\":");
        };
        match uptime {
            Some(UptimeField::Fixed(seconds)) => {
                key(&mut self.bytes, "uptime");
                write_integer(&mut self.bytes, seconds);
            }
            Some(UptimeField::Growing(uptime)) => {
                key(&mut self.bytes, "uptime");
                self.gaps.push((self.bytes.len(), uptime));
            }
            None => {}
        }
        if let Some(vmid) = vmid {
            key(&mut self.bytes, "vmid");
            write_integer(&mut self.bytes, i64::from(vmid));
        }
        self.bytes.push(b'}');
    }
}

enum UptimeField {
    Fixed(i64),
    Growing(Uptime),
}

fn write_integer(out: &mut Vec<u8>, value: i64) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{value}");
}

/// One item up to `type`, borrowed from the cluster. Keys, their order and
/// the omitted empties are those of the generated
/// `GetClusterResourcesResponseDataItem` (a test holds the bytes equal).
#[derive(Serialize, Default)]
struct Entry<'a> {
    #[serde(rename = "cgroup-mode", skip_serializing_if = "Option::is_none")]
    cgroup_mode: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    disk: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diskread: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    diskwrite: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hastate: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<ResourceId<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lock: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maxcpu: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maxdisk: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    maxmem: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mem: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netin: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    netout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    node: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    plugintype: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shared: Option<PveBool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tags: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    template: Option<PveBool>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'static str>,
}

/// `id`, written without building a string first.
enum ResourceId<'a> {
    Guest(u32),
    Node(&'a str),
    Storage { node: &'a str, storage: &'a str },
    Pool(&'a str),
}

impl fmt::Display for ResourceId<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResourceId::Guest(vmid) => write!(f, "qemu/{vmid}"),
            ResourceId::Node(node) => write!(f, "node/{node}"),
            ResourceId::Storage { node, storage } => write!(f, "storage/{node}/{storage}"),
            ResourceId::Pool(pool) => write!(f, "/pool/{pool}"),
        }
    }
}

impl Serialize for ResourceId<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Whether the caller may see a VM (`VM.Audit`) and its pool (`Pool.Audit`).
/// VMs without an ACL of their own share the answer of their pool.
struct Visibility<'a> {
    cluster: &'a Cluster,
    caller: &'a Caller,
    /// Whether any ACL names a single VM (then those VMs are checked alone).
    per_vm_acls: bool,
    /// Pool → answer; pools are few, so a list beats hashing.
    by_pool: Vec<(Option<&'a str>, (bool, bool))>,
}

impl<'a> Visibility<'a> {
    fn new(cluster: &'a Cluster, caller: &'a Caller) -> Self {
        Self { cluster, caller, per_vm_acls: cluster.access.has_entries_below("/vms/"), by_pool: Vec::new() }
    }

    fn of(&mut self, guest: &'a Vm) -> (bool, bool) {
        let compute = |cluster: &Cluster, caller: &Caller| {
            let audit = cluster.privileges(caller, &format!("/vms/{}", guest.vmid)).contains("VM.Audit");
            let pool_audit = guest
                .pool
                .as_ref()
                .is_some_and(|pool| cluster.privileges(caller, &format!("/pool/{pool}")).contains("Pool.Audit"));
            (audit, pool_audit)
        };
        if self.per_vm_acls && self.cluster.access.has_entries(&format!("/vms/{}", guest.vmid)) {
            return compute(self.cluster, self.caller);
        }
        let pool = guest.pool.as_deref();
        if let Some((_, known)) = self.by_pool.iter().find(|(p, _)| *p == pool) {
            return *known;
        }
        let answer = compute(self.cluster, self.caller);
        self.by_pool.push((pool, answer));
        answer
    }
}

/// The answer at `now`, uptimes left as gaps; guest items come from
/// `guests` where their inputs are unchanged, and are written (and kept)
/// otherwise.
fn build(
    guests: &mut HashMap<u32, [Option<KeptGuest>; 2]>,
    serialised: &mut u64,
    cluster: &Cluster,
    caller: &Caller,
    kind: Option<&str>,
    now: SimTime,
) -> Template {
    let wants = |what: &str| kind.is_none_or(|k| k == what);
    let mut template = Template { bytes: Vec::with_capacity(64 + cluster.vms.len() * 320), gaps: Vec::new() };
    template.bytes.push(b'[');
    if wants("vm") {
        let mut visibility = Visibility::new(cluster, caller);
        for guest in cluster.vms.values() {
            let (audit, pool_audit) = visibility.of(guest);
            if !audit {
                continue;
            }
            template.append(&kept_item(guests, serialised, cluster, guest, now, pool_audit).item);
        }
        // Forget removed guests (only when some are gone: a lookup per guest).
        if guests.len() > cluster.vms.len() {
            guests.retain(|vmid, _| cluster.vms.contains_key(vmid));
        }
    }
    if wants("node") {
        for node in cluster.nodes.values() {
            if !cluster.privileges(caller, &format!("/nodes/{}", node.name)).contains("Sys.Audit") {
                continue;
            }
            let usage = cluster.node_usage(node);
            let entry = Entry {
                id: Some(ResourceId::Node(&node.name)),
                kind: Some("node"),
                node: Some(&node.name),
                status: Some(if node.online { "online" } else { "offline" }),
                level: Some(""),
                cgroup_mode: Some(2),
                cpu: node.online.then_some(usage.cpu),
                maxcpu: Some(f64::from(node.cpus)),
                mem: node.online.then_some(usage.memory as i64),
                maxmem: Some(node.memory as i64),
                disk: node.online.then_some(12 << 30),
                maxdisk: Some(100 << 30),
                ..Entry::default()
            };
            let uptime = if node.online {
                UptimeField::Growing(Uptime::Node { boot_time: node.boot_time })
            } else {
                UptimeField::Fixed(0)
            };
            template.push(&entry, Some(uptime), None);
        }
    }
    if wants("storage") {
        for node in cluster.nodes.values() {
            for storage in cluster.storages.values().filter(|s| s.available_on(&node.name)) {
                let held = cluster.privileges(caller, &format!("/storage/{}", storage.id));
                if !held.contains("Datastore.Audit") && !held.contains("Datastore.AllocateSpace") {
                    continue;
                }
                let used: u64 = cluster.volumes_on(&storage.id, &node.name).map(|v| v.size).sum();
                let entry = Entry {
                    id: Some(ResourceId::Storage { node: &node.name, storage: &storage.id }),
                    kind: Some("storage"),
                    node: Some(&node.name),
                    storage: Some(&storage.id),
                    status: Some(if node.online { "available" } else { "unknown" }),
                    plugintype: Some(&storage.kind),
                    content: Some(&storage.content),
                    shared: Some(PveBool(storage.shared)),
                    disk: Some(used as i64),
                    maxdisk: Some(storage.total as i64),
                    ..Entry::default()
                };
                template.push(&entry, None, None);
            }
        }
    }
    if kind.is_none() {
        for pool in cluster.pools.values() {
            if cluster.privileges(caller, &format!("/pool/{}", pool.id)).contains("Pool.Audit") {
                let entry = Entry {
                    id: Some(ResourceId::Pool(&pool.id)),
                    kind: Some("pool"),
                    pool: Some(&pool.id),
                    ..Entry::default()
                };
                template.push(&entry, None, None);
            }
        }
    }
    template.bytes.push(b']');
    template
}

/// A guest's item, kept in `guests` and written afresh only when its
/// inputs changed (`serialised` counts those writes).
fn kept_item<'g>(
    guests: &'g mut HashMap<u32, [Option<KeptGuest>; 2]>,
    serialised: &mut u64,
    cluster: &Cluster,
    guest: &Vm,
    now: SimTime,
    show_pool: bool,
) -> &'g KeptGuest {
    let view = GuestView::of(cluster, guest, now, show_pool);
    let slot = &mut guests.entry(guest.vmid).or_default()[usize::from(show_pool)];
    if slot.as_ref().is_some_and(|kept| kept.view.as_view() != view) {
        *slot = None;
    }
    if slot.is_none() {
        *serialised += 1;
    }
    slot.get_or_insert_with(|| KeptGuest::write(view))
}

/// Everything a guest's item is written from: the stale view pvestatd
/// gives of it (see the module comment) and its current lock, tags, pool,
/// HA state and sizes. Equal views write equal bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GuestView<'a> {
    vmid: u32,
    node: &'a str,
    /// The observation pvestatd broadcast `staleness` ago, if the node is online.
    seen: Option<Seen<'a>>,
    power: Power,
    cpus: u64,
    max_memory: u64,
    max_disk: u64,
    lock: Option<&'a str>,
    tags: Option<&'a str>,
    /// The pool, if the caller may see it.
    pool: Option<&'a str>,
    hastate: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Seen<'a> {
    status: &'static str,
    name: Option<&'a str>,
    template: bool,
}

impl<'a> GuestView<'a> {
    fn of(cluster: &'a Cluster, guest: &'a Vm, now: SimTime, show_pool: bool) -> Self {
        let node_online = cluster.nodes.get(&guest.node).is_some_and(|n| n.online);
        let seen = if node_online { guest.observed_at(now - cluster.staleness) } else { None };
        Self {
            vmid: guest.vmid,
            node: &guest.node,
            seen: seen.map(|o| Seen { status: o.status, name: o.name.as_deref(), template: o.template }),
            power: guest.power,
            cpus: guest.cpus(),
            max_memory: guest.max_memory(),
            max_disk: guest.max_disk(),
            lock: guest.lock(),
            tags: guest.config.get("tags").map(String::as_str).filter(|t| !t.is_empty()),
            pool: if show_pool { guest.pool.as_deref() } else { None },
            hastate: guest.ha_managed.then_some(if guest.is_running() { "started" } else { "stopped" }),
        }
    }
}

/// A `GuestView` that outlives the cluster borrow.
#[derive(Debug)]
struct OwnedGuestView {
    vmid: u32,
    node: String,
    seen: Option<(&'static str, Option<String>, bool)>,
    power: Power,
    cpus: u64,
    max_memory: u64,
    max_disk: u64,
    lock: Option<String>,
    tags: Option<String>,
    pool: Option<String>,
    hastate: Option<&'static str>,
}

impl OwnedGuestView {
    fn from(view: &GuestView<'_>) -> Self {
        Self {
            vmid: view.vmid,
            node: view.node.to_string(),
            seen: view.seen.map(|s| (s.status, s.name.map(str::to_string), s.template)),
            power: view.power,
            cpus: view.cpus,
            max_memory: view.max_memory,
            max_disk: view.max_disk,
            lock: view.lock.map(str::to_string),
            tags: view.tags.map(str::to_string),
            pool: view.pool.map(str::to_string),
            hastate: view.hastate,
        }
    }

    fn as_view(&self) -> GuestView<'_> {
        GuestView {
            vmid: self.vmid,
            node: &self.node,
            seen: self.seen.as_ref().map(|(status, name, template)| Seen {
                status,
                name: name.as_deref(),
                template: *template,
            }),
            power: self.power,
            cpus: self.cpus,
            max_memory: self.max_memory,
            max_disk: self.max_disk,
            lock: self.lock.as_deref(),
            tags: self.tags.as_deref(),
            pool: self.pool.as_deref(),
            hastate: self.hastate,
        }
    }
}

/// One guest's item, kept with the view it was written from.
struct KeptGuest {
    view: OwnedGuestView,
    item: Template,
}

impl KeptGuest {
    fn write(view: GuestView<'_>) -> Self {
        let running = view.seen.is_some_and(|seen| seen.status == "running");
        let counter = |value: i64| if running { value } else { 0 };
        let entry = Entry {
            id: Some(ResourceId::Guest(view.vmid)),
            kind: Some("qemu"),
            node: Some(view.node),
            name: view.seen.and_then(|seen| seen.name),
            status: Some(view.seen.map_or("unknown", |seen| seen.status)),
            template: Some(PveBool(view.seen.is_some_and(|seen| seen.template))),
            cpu: Some(if running { 0.0125 } else { 0.0 }),
            maxcpu: Some(view.cpus as f64),
            mem: Some(counter((view.max_memory / 3) as i64)),
            maxmem: Some(view.max_memory as i64),
            disk: Some(0),
            maxdisk: Some(view.max_disk as i64),
            netin: Some(counter(i64::from(view.vmid) * 1024)),
            netout: Some(counter(i64::from(view.vmid) * 512)),
            diskread: Some(0),
            diskwrite: Some(0),
            lock: view.lock,
            tags: view.tags,
            pool: view.pool,
            hastate: view.hastate,
            ..Entry::default()
        };
        let uptime = if running { UptimeField::Growing(Uptime::Guest(view.power)) } else { UptimeField::Fixed(0) };
        let mut item = Template { bytes: Vec::with_capacity(320), gaps: Vec::new() };
        item.push(&entry, Some(uptime), Some(view.vmid));
        Self { view: OwnedGuestView::from(&view), item }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use super::*;
    use crate::pve::api::types::GetClusterResourcesResponseDataItem as Item;
    use crate::pve::lenient::{PveInt, PveNumber};
    use crate::sim::cluster::ClusterGuard;
    use crate::sim::config::{AclSpec, PoolSpec, Scenario, VmSpec, defaults};
    use crate::sim::release::PveRelease;
    use crate::sim::wire::perl_json;

    const START: SimTime = 1_700_000_000.0;

    /// The answer built the plain way, through the generated type, without
    /// borrowing or keeping anything: what the kept answers must equal.
    fn reference(cluster: &Cluster, caller: &Caller, kind: Option<&str>, now: SimTime) -> Vec<u8> {
        let wants = |what: &str| kind.is_none_or(|k| k == what);
        let mut items = Vec::new();
        if wants("vm") {
            for guest in cluster.vms.values() {
                if !cluster.privileges(caller, &format!("/vms/{}", guest.vmid)).contains("VM.Audit") {
                    continue;
                }
                let show_pool = guest
                    .pool
                    .as_ref()
                    .is_some_and(|pool| cluster.privileges(caller, &format!("/pool/{pool}")).contains("Pool.Audit"));
                let node_online = cluster.nodes.get(&guest.node).is_some_and(|n| n.online);
                let seen = if node_online { guest.observed_at(now - cluster.staleness) } else { None };
                let running = seen.is_some_and(|o| o.status == "running");
                let max_memory = guest.max_memory();
                items.push(Item {
                    id: Some(format!("qemu/{}", guest.vmid)),
                    type_: Some("qemu".into()),
                    vmid: Some(PveInt(i64::from(guest.vmid))),
                    node: Some(guest.node.clone()),
                    name: seen.and_then(|o| o.name.clone()),
                    status: Some(seen.map_or("unknown", |o| o.status).to_string()),
                    template: Some(PveBool(seen.is_some_and(|o| o.template))),
                    uptime: Some(PveInt(if running { guest.uptime(now) as i64 } else { 0 })),
                    cpu: Some(PveNumber(if running { 0.0125 } else { 0.0 })),
                    maxcpu: Some(PveNumber(guest.cpus() as f64)),
                    mem: Some(PveInt(if running { (max_memory / 3) as i64 } else { 0 })),
                    maxmem: Some(PveInt(max_memory as i64)),
                    disk: Some(PveInt(0)),
                    maxdisk: Some(PveInt(guest.max_disk() as i64)),
                    netin: Some(PveInt(if running { i64::from(guest.vmid) * 1024 } else { 0 })),
                    netout: Some(PveInt(if running { i64::from(guest.vmid) * 512 } else { 0 })),
                    diskread: Some(PveInt(0)),
                    diskwrite: Some(PveInt(0)),
                    lock: guest.lock().map(str::to_string),
                    tags: guest.config.get("tags").filter(|t| !t.is_empty()).cloned(),
                    pool: if show_pool { guest.pool.clone() } else { None },
                    hastate: guest
                        .ha_managed
                        .then(|| if guest.is_running() { "started" } else { "stopped" }.to_string()),
                    ..Default::default()
                });
            }
        }
        if wants("node") {
            for node in cluster
                .nodes
                .values()
                .filter(|node| cluster.privileges(caller, &format!("/nodes/{}", node.name)).contains("Sys.Audit"))
            {
                let usage = cluster.node_usage(node);
                items.push(Item {
                    id: Some(format!("node/{}", node.name)),
                    type_: Some("node".into()),
                    node: Some(node.name.clone()),
                    status: Some(if node.online { "online" } else { "offline" }.into()),
                    level: Some(String::new()),
                    cgroup_mode: Some(PveInt(2)),
                    cpu: node.online.then_some(PveNumber(usage.cpu)),
                    maxcpu: Some(PveNumber(f64::from(node.cpus))),
                    mem: node.online.then_some(PveInt(usage.memory as i64)),
                    maxmem: Some(PveInt(node.memory as i64)),
                    disk: node.online.then_some(PveInt(12 << 30)),
                    maxdisk: Some(PveInt(100 << 30)),
                    uptime: Some(PveInt(if node.online { (now - node.boot_time) as i64 } else { 0 })),
                    ..Default::default()
                });
            }
        }
        if wants("storage") {
            for node in cluster.nodes.values() {
                for storage in cluster.storages.values().filter(|s| s.available_on(&node.name)) {
                    let held = cluster.privileges(caller, &format!("/storage/{}", storage.id));
                    if !held.contains("Datastore.Audit") && !held.contains("Datastore.AllocateSpace") {
                        continue;
                    }
                    let used: u64 = cluster.volumes_on(&storage.id, &node.name).map(|v| v.size).sum();
                    items.push(Item {
                        id: Some(format!("storage/{}/{}", node.name, storage.id)),
                        type_: Some("storage".into()),
                        node: Some(node.name.clone()),
                        storage: Some(storage.id.clone()),
                        status: Some(if node.online { "available" } else { "unknown" }.into()),
                        plugintype: Some(storage.kind.clone()),
                        content: Some(storage.content.clone()),
                        shared: Some(PveBool(storage.shared)),
                        disk: Some(PveInt(used as i64)),
                        maxdisk: Some(PveInt(storage.total as i64)),
                        ..Default::default()
                    });
                }
            }
        }
        if kind.is_none() {
            for pool in cluster
                .pools
                .values()
                .filter(|pool| cluster.privileges(caller, &format!("/pool/{}", pool.id)).contains("Pool.Audit"))
            {
                items.push(Item {
                    id: Some(format!("/pool/{}", pool.id)),
                    type_: Some("pool".into()),
                    pool: Some(pool.id.clone()),
                    ..Default::default()
                });
            }
        }
        perl_json(&items)
    }

    /// The default cluster plus running, stopped, HA-managed and poolless
    /// guests on both nodes, a second pool, and a user who sees one VM.
    fn scenario() -> Scenario {
        let mut scenario = Scenario { seed: Some(7), ..Scenario::default() };
        scenario.pools.push(PoolSpec { id: "other".into(), ..PoolSpec::default() });
        let template = scenario.vms[0].config.clone();
        for (index, vmid) in (100..112).enumerate() {
            let mut config = template.clone();
            config.insert("name".into(), format!("runner-{vmid}"));
            config.insert("scsi0".into(), format!("local-lvm:vm-{vmid}-disk-0,size={}G", 4 + index));
            config.insert("ide2".into(), format!("local-lvm:vm-{vmid}-cloudinit,media=cdrom"));
            config.insert("net0".into(), "virtio,bridge=vmbr0".into());
            config.insert("memory".into(), format!("{}", 512 * (1 + index % 3)));
            config.insert("tags".into(), if index % 4 == 0 { String::new() } else { "ci;runner".into() });
            scenario.vms.push(VmSpec {
                vmid,
                node: if index % 2 == 0 { "pve1" } else { "pve2" }.into(),
                pool: match index % 3 {
                    0 => Some(defaults::POOL.into()),
                    1 => Some("other".into()),
                    _ => None,
                },
                running: index % 2 == 1,
                ha: index == 5,
                config,
                ..VmSpec::default()
            });
        }
        scenario.acl.push(AclSpec {
            path: "/vms/101".into(),
            roles: vec!["PVEAuditor".into()],
            users: vec![defaults::TFA_USER.into()],
            ..AclSpec::default()
        });
        scenario
    }

    fn callers() -> Vec<Caller> {
        vec![
            Caller::User { userid: "root@pam".into() },
            Caller::Token { userid: defaults::USER.into(), tokenid: defaults::TOKEN_ID.into() },
            Caller::User { userid: defaults::TFA_USER.into() },
            Caller::User { userid: "nobody@pve".into() },
        ]
    }

    struct Check {
        cache: ResourcesCache,
        reused: usize,
        built: usize,
    }

    impl Check {
        /// Every caller and filter: the (possibly kept) answer equals the
        /// reference, byte for byte.
        fn at(&mut self, cluster: &Cluster, now: SimTime, step: &str) {
            for caller in callers() {
                for kind in [None, Some("vm"), Some("node"), Some("storage"), Some("sdn")] {
                    let (answer, reused) = self.cache.answer(cluster, &caller, kind, now);
                    let expected = reference(cluster, &caller, kind, now);
                    assert!(
                        answer == expected,
                        "{step}: {caller:?} type={kind:?} (reused: {reused})\n  got: {}\n want: {}",
                        String::from_utf8_lossy(&answer),
                        String::from_utf8_lossy(&expected)
                    );
                    if reused {
                        self.reused += 1;
                    } else {
                        self.built += 1;
                    }
                }
            }
        }
    }

    #[test]
    fn kept_answers_equal_fresh_ones_across_changes_and_time() {
        let state =
            Mutex::new(Cluster::from_scenario(&scenario(), PveRelease::parse("9.1.3").unwrap(), START).unwrap());
        let cluster = || ClusterGuard::new(state.lock().unwrap());
        let mut check = Check { cache: ResourcesCache::default(), reused: 0, built: 0 };
        let staleness = cluster().staleness;
        assert!(staleness > 1.0, "the default lag is PVE's ~10 s");

        check.at(&cluster(), START, "first answers");
        assert_eq!((check.reused, check.built), (0, 20));
        check.at(&cluster(), START + 0.7, "uptimes grow, nothing else changed");
        check.at(&cluster(), START + 3.2, "uptimes grow further");
        assert_eq!((check.reused, check.built), (40, 20), "an unchanged cluster reuses every answer");

        // A start: the lag hides it until `staleness` has passed.
        let started = START + 4.0;
        {
            let mut cluster = cluster();
            cluster.vms.get_mut(&100).unwrap().power = Power::Running { since: started, paused: false };
            cluster.touch(100, started);
        }
        check.at(&cluster(), started, "just started");
        check.at(&cluster(), started + staleness - 0.01, "still inside the lag");
        check.at(&cluster(), started + staleness, "the start comes of age");
        check.at(&cluster(), started + staleness + 0.5, "after it");

        // A rename and a stop, recorded; lock and tags current at once.
        let now = started + staleness + 1.0;
        {
            let mut cluster = cluster();
            let guest = cluster.vms.get_mut(&103).unwrap();
            guest.config.insert("name".into(), "renamed".into());
            guest.power = Power::Stopped;
            cluster.touch(103, now);
        }
        check.at(&cluster(), now, "renamed and stopped");
        cluster().vms.get_mut(&104).unwrap().config.insert("lock".into(), "clone".into());
        check.at(&cluster(), now + 0.1, "a lock");
        cluster().vms.get_mut(&102).unwrap().config.insert("tags".into(), "busy".into());
        check.at(&cluster(), now + 0.2, "new tags");
        check.at(&cluster(), now + staleness - 0.5, "rename still lagging");
        check.at(&cluster(), now + staleness + 0.5, "rename of age");

        // Nodes, pools, ACLs and the inventory itself.
        let now = now + staleness + 1.0;
        cluster().nodes.get_mut("pve2").unwrap().online = false;
        check.at(&cluster(), now, "pve2 offline");
        cluster().nodes.get_mut("pve2").unwrap().online = true;
        check.at(&cluster(), now + 0.5, "pve2 back");
        {
            let mut cluster = cluster();
            cluster.leave_pool(101);
            cluster.join_pool(101, defaults::POOL).unwrap();
        }
        check.at(&cluster(), now + 1.0, "101 moved to ci");
        let acl = AclSpec {
            path: "/pool/other".into(),
            roles: vec!["PVEAuditor".into()],
            users: vec![defaults::TFA_USER.into()],
            ..AclSpec::default()
        };
        cluster().access.add_acl(&acl).unwrap();
        check.at(&cluster(), now + 1.5, "tfa@pve audits pool other");
        cluster().vms.remove(&107);
        check.at(&cluster(), now + 2.0, "107 gone");
        {
            let mut cluster = cluster();
            let mut guest =
                Vm::new(150, "pve2".into(), BTreeMap::from([("name".to_string(), "fresh".to_string())]), now + 2.5);
            guest.power = Power::Running { since: now + 2.5, paused: false };
            cluster.vms.insert(150, guest);
            cluster.touch(150, now + 2.5);
            cluster.join_pool(150, defaults::POOL).unwrap();
        }
        check.at(&cluster(), now + 2.5, "a new guest, unknown for now");
        // Sizes, HA state, power without an observation, history, storage use, ACLs.
        {
            let mut cluster = cluster();
            cluster.vms.get_mut(&108).unwrap().config.insert("memory".into(), "4096".into());
            cluster.touch(108, now + 2.6);
        }
        check.at(&cluster(), now + 2.6, "108 grew");
        cluster().vms.get_mut(&105).unwrap().ha_managed = false;
        check.at(&cluster(), now + 2.7, "105 left HA");
        cluster().vms.get_mut(&100).unwrap().ha_managed = true;
        cluster().vms.get_mut(&100).unwrap().power = Power::Stopped;
        check.at(&cluster(), now + 2.8, "100 in HA and stopped, not observed yet");
        cluster().vms.get_mut(&109).unwrap().reset_history(now + 2.9);
        check.at(&cluster(), now + 2.9, "109's history forgotten");
        cluster().create_volume("local-lvm", "vm-150-disk-0".into(), 150, 7 << 30, None, "pve1").unwrap();
        check.at(&cluster(), now + 3.0, "a new volume");
        cluster().access.remove_acl_path("/vms/101");
        check.at(&cluster(), now + 3.1, "tfa@pve no longer sees 101");
        cluster().staleness = 2.0;
        check.at(&cluster(), now + 3.2, "a shorter lag");
        check.at(&cluster(), now + 2.5 + staleness, "the new guest seen");
        check.at(&cluster(), now + 3600.0, "an hour later");

        assert!(check.reused >= 100, "kept answers were used: {} reused, {} built", check.reused, check.built);
        assert!(
            check.built >= 200,
            "changes and coming-of-age rebuilt answers: {} reused, {} built",
            check.reused,
            check.built
        );
    }

    #[test]
    fn only_guests_whose_inputs_changed_are_rewritten() {
        let state =
            Mutex::new(Cluster::from_scenario(&scenario(), PveRelease::parse("9.1.3").unwrap(), START).unwrap());
        let cluster = || ClusterGuard::new(state.lock().unwrap());
        let mut check = Check { cache: ResourcesCache::default(), reused: 0, built: 0 };
        let now = START + 100.0;
        check.at(&cluster(), now, "first answers");
        let written = check.cache.items_serialised;
        assert!(written >= 13, "every guest written at least once: {written}");

        cluster().hold_flock(100, true);
        let built = check.built;
        check.at(&cluster(), now + 0.1, "a held file lock, which the answer does not show");
        assert_eq!(check.built - built, 20, "whole answers are rebuilt after any write");
        assert_eq!(check.cache.items_serialised, written, "but no guest item is rewritten");

        cluster().vms.get_mut(&104).unwrap().config.insert("lock".into(), "backup".into());
        check.at(&cluster(), now + 0.2, "a lock on 104");
        let rewritten = check.cache.items_serialised - written;
        assert!((1..=2).contains(&rewritten), "only 104's item (with and without its pool) is rewritten: {rewritten}");

        let written = check.cache.items_serialised;
        cluster().vms.remove(&104);
        check.at(&cluster(), now + 0.3, "104 gone");
        assert_eq!(check.cache.items_serialised, written, "removing a guest rewrites nothing");
        assert!(!check.cache.guests.contains_key(&104), "its kept items are dropped");

        check.cache.forget();
        check.at(&cluster(), now + 0.4, "everything forgotten");
        assert!(check.cache.items_serialised - written >= 12, "forgotten items are written again");
    }

    #[test]
    fn reading_the_cluster_keeps_answers() {
        let state =
            Mutex::new(Cluster::from_scenario(&scenario(), PveRelease::parse("9.1.3").unwrap(), START).unwrap());
        let before = ClusterGuard::new(state.lock().unwrap()).generation();
        let cluster = ClusterGuard::new(state.lock().unwrap());
        let _ = (cluster.vms.len(), cluster.privileges(&callers()[1], "/vms/100"));
        assert_eq!(cluster.generation(), before, "reads are not changes");
        drop(cluster);
        let mut cluster = ClusterGuard::new(state.lock().unwrap());
        cluster.staleness = 5.0;
        assert_ne!(cluster.generation(), before, "a mutable access is a change");
    }

    /// `members` of `GET /pools/{poolid}` built the plain way: each guest's
    /// reference item, then a `serde_json` object per storage and node.
    fn reference_members(cluster: &Cluster, pool: &str, kind: Option<&str>, now: SimTime) -> Vec<u8> {
        let root = Caller::User { userid: "root@pam".into() };
        let items: Vec<serde_json::Value> =
            serde_json::from_slice(&reference(cluster, &root, Some("vm"), now)).unwrap();
        let pool = &cluster.pools[pool];
        let mut members = Vec::new();
        if kind.is_none_or(|k| k == "qemu") {
            for vmid in &pool.vms {
                members.extend(items.iter().find(|item| item["vmid"] == *vmid).cloned());
            }
        }
        if kind.is_none_or(|k| k == "storage") {
            for storage in pool.storages.iter().map(|id| &cluster.storages[id]) {
                for node in cluster.nodes.values().filter(|n| storage.available_on(&n.name)) {
                    members.push(serde_json::json!({
                        "id": format!("storage/{}/{}", node.name, storage.id),
                        "type": "storage",
                        "node": node.name,
                        "storage": storage.id,
                        "plugintype": storage.kind,
                        "content": storage.content,
                        "shared": u8::from(storage.shared),
                        "status": "available",
                        "maxdisk": storage.total,
                    }));
                }
            }
        }
        perl_json(&members)
    }

    #[test]
    fn pool_members_are_the_kept_resources_items() {
        let state =
            Mutex::new(Cluster::from_scenario(&scenario(), PveRelease::parse("9.1.3").unwrap(), START).unwrap());
        let cluster = || ClusterGuard::new(state.lock().unwrap());
        {
            let mut cluster = cluster();
            let storages: Vec<String> = cluster.storages.keys().cloned().collect();
            cluster.pools.get_mut(defaults::POOL).unwrap().storages.extend(storages);
        }
        let mut cache = ResourcesCache::default();
        let check = |cache: &mut ResourcesCache, now: SimTime, step: &str| {
            let cluster = cluster();
            for kind in [None, Some("qemu"), Some("storage")] {
                let answer = cache.pool_members(&cluster, &cluster.pools[defaults::POOL], kind, now);
                let expected = reference_members(&cluster, defaults::POOL, kind, now);
                assert!(
                    answer == expected,
                    "{step}: type={kind:?}\n  got: {}\n want: {}",
                    String::from_utf8_lossy(&answer),
                    String::from_utf8_lossy(&expected)
                );
            }
        };
        let vms: Vec<u32> = cluster().pools[defaults::POOL].vms.iter().copied().collect();
        let members = vms.len() as u64;
        assert!(members >= 3, "the pool has guests to list: {vms:?}");
        let (locked, leaving) = (vms[1], vms[2]);

        check(&mut cache, START + 5.0, "first answer");
        assert_eq!(cache.items_serialised, members, "each member is written once, for both filters that list it");
        check(&mut cache, START + 9.0, "uptimes grow, nothing else changed");
        check(&mut cache, START + 9.5, "again");
        assert_eq!(cache.items_serialised, members, "an unchanged pool is answered from kept items");

        cluster().vms.get_mut(&locked).unwrap().config.insert("lock".into(), "clone".into());
        check(&mut cache, START + 10.0, "a lock on a member");
        assert_eq!(cache.items_serialised, members + 1, "only the changed member is written again");

        let (answer, _) = cache.answer(&cluster(), &Caller::User { userid: "root@pam".into() }, None, START + 10.0);
        assert!(!answer.is_empty());
        assert_eq!(
            cache.items_serialised,
            members + 1 + (cluster().vms.len() as u64 - members),
            "/cluster/resources reuses the members' items and writes only the guests outside the pool"
        );
        cluster().leave_pool(leaving);
        check(&mut cache, START + 11.0, "a member left the pool");
    }
}
