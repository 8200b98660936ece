//! `/version`, `/cluster/status`, `/cluster/resources`, `/cluster/nextid`,
//! `/cluster/tasks`.

use serde_json::{Value, json};

use super::Call;
use crate::pve::api::types;
use crate::pve::lenient::{PveBool, PveInt, PveNumber};
use crate::sim::access::Caller;
use crate::sim::cluster::Cluster;
use crate::sim::vm::Vm;
use crate::sim::wire::{ApiError, Reply};

pub fn version(call: &Call<'_>) -> Result<Reply, ApiError> {
    let version = call.shared.version;
    Ok(Reply::data(&types::GetVersionResponseData {
        console: (version >= crate::pve::PveVersion { major: 7, minor: 4, patch: 0 }).then(|| "html5".to_string()),
        release: Some(format!("{}.{}", version.major, version.minor)),
        repoid: Some("5a1c3f1de2b8c9a0".into()),
        version: Some(version.to_string()),
    }))
}

pub fn status(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let mut items = Vec::new();
    if cluster.nodes.len() > 1 {
        items.push(types::GetClusterStatusResponseDataItem {
            id: Some("cluster".into()),
            name: Some(cluster.name.clone()),
            nodes: Some(PveInt(cluster.nodes.len() as i64)),
            quorate: Some(PveBool(cluster.nodes.values().filter(|n| n.online).count() * 2 > cluster.nodes.len())),
            type_: Some("cluster".into()),
            version: Some(PveInt(cluster.nodes.len() as i64 + 1)),
            ..Default::default()
        });
    }
    for (index, node) in cluster.nodes.values().enumerate() {
        items.push(types::GetClusterStatusResponseDataItem {
            id: Some(format!("node/{}", node.name)),
            ip: Some(node.ip.to_string()),
            level: Some(String::new()),
            local: Some(PveBool(index == 0)),
            name: Some(node.name.clone()),
            nodeid: Some(PveInt(index as i64 + 1)),
            online: Some(PveBool(node.online)),
            type_: Some("node".into()),
            ..Default::default()
        });
    }
    Ok(Reply::data(&items))
}

/// The stale view pvestatd gives: `status`, `name`, `template` as they were
/// `staleness` seconds ago ("unknown" for a guest younger than that, or on
/// an offline node); `lock` and `tags` from the current config.
pub fn vm_resource(cluster: &Cluster, guest: &Vm, now: f64, show_pool: bool) -> types::GetClusterResourcesResponseDataItem {
    let node_online = cluster.nodes.get(&guest.node).is_some_and(|n| n.online);
    let seen = if node_online { guest.observed_at(now - cluster.staleness) } else { None };
    let running = seen.is_some_and(|o| o.status == "running");
    let max_memory = guest.max_memory();
    types::GetClusterResourcesResponseDataItem {
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
        hastate: guest.ha_managed.then(|| if guest.is_running() { "started" } else { "stopped" }.to_string()),
        ..Default::default()
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
            let pool_audit = guest.pool.as_ref().is_some_and(|pool| cluster.privileges(caller, &format!("/pool/{pool}")).contains("Pool.Audit"));
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

pub fn resources(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let kind = call.params.get("type");
    let cluster = call.shared.cluster();
    let now = call.shared.clock.now();
    let wants = |what: &str| kind.is_none_or(|k| k == what);
    let mut items = Vec::with_capacity(cluster.vms.len() + 8);
    if wants("vm") {
        let mut visibility = Visibility::new(&cluster, caller);
        for guest in cluster.vms.values() {
            let (audit, pool_audit) = visibility.of(guest);
            if audit {
                items.push(vm_resource(&cluster, guest, now, pool_audit));
            }
        }
    }
    if wants("node") {
        for node in cluster.nodes.values() {
            if !cluster.privileges(caller, &format!("/nodes/{}", node.name)).contains("Sys.Audit") {
                continue;
            }
            items.push(types::GetClusterResourcesResponseDataItem {
                id: Some(format!("node/{}", node.name)),
                type_: Some("node".into()),
                node: Some(node.name.clone()),
                status: Some(if node.online { "online" } else { "offline" }.into()),
                level: Some(String::new()),
                cgroup_mode: Some(PveInt(2)),
                cpu: node.online.then_some(PveNumber(0.03)),
                maxcpu: Some(PveNumber(f64::from(node.cpus))),
                mem: node.online.then_some(PveInt((node.memory / 4) as i64)),
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
                let used: u64 = cluster.volumes.values().filter(|v| v.storage == storage.id).map(|v| v.size).sum();
                items.push(types::GetClusterResourcesResponseDataItem {
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
        for pool in cluster.pools.values() {
            if cluster.privileges(caller, &format!("/pool/{}", pool.id)).contains("Pool.Audit") {
                items.push(types::GetClusterResourcesResponseDataItem {
                    id: Some(format!("/pool/{}", pool.id)),
                    type_: Some("pool".into()),
                    pool: Some(pool.id.clone()),
                    ..Default::default()
                });
            }
        }
    }
    Ok(Reply::data(&items))
}

/// The lowest free VMID as a JSON string (PVE's Perl returns it so); with
/// `vmid`, that id if free, else 400. Nothing is reserved.
pub fn next_id(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    if let Some(vmid) = call.params.int("vmid") {
        let vmid = u32::try_from(vmid).unwrap_or(0);
        if cluster.vms.contains_key(&vmid) {
            return Err(ApiError::parameter("vmid", format!("VM {vmid} already exists")));
        }
        return Ok(Reply::data(&vmid.to_string()));
    }
    match cluster.next_free_vmid() {
        Some(vmid) => Ok(Reply::data(&vmid.to_string())),
        None => Err(ApiError::internal(format!(
            "unable to get any free VMID in range [{}, {}]",
            cluster.next_id.lower,
            cluster.next_id.upper.saturating_sub(1)
        ))),
    }
}

/// Recent tasks of the cluster that the caller may see.
pub fn tasks(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let items: Vec<Value> = cluster
        .tasks
        .newest_first()
        .filter(|task| super::nodes::may_see_task(&cluster, caller, &task.upid.user, &task.upid.node))
        .take(200)
        .map(|task| {
            let mut item = json!({
                "upid": task.text,
                "node": task.upid.node,
                "pid": task.upid.pid,
                "pstart": task.upid.pstart,
                "starttime": task.upid.starttime,
                "type": task.upid.task_type,
                "id": task.upid.id,
                "user": task.upid.user,
            });
            if let (Some(ended), Some(status)) = (task.ended, &task.exit_status) {
                item["endtime"] = json!(ended as u64);
                item["status"] = json!(status);
            }
            item
        })
        .collect();
    Ok(Reply::data(&items))
}
