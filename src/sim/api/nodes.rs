//! `/nodes`, `/nodes/{node}/status`, storages, and the task endpoints.

use serde_json::{Value, json};

use super::Call;
use crate::pve::api::types;
use crate::pve::lenient::{PveBool, PveInt, PveNumber};
use crate::sim::access::Caller;
use crate::sim::cluster::{Cluster, Storage};
use crate::sim::tasks::Task;
use crate::sim::upid::Upid;
use crate::sim::wire::{ApiError, Reply};

pub fn list(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let shared = call.shared;
    let cluster = shared.cluster();
    let now = shared.clock.now();
    let fingerprint = shared.certificate.as_ref().map(|c| c.fingerprint.clone());
    let mut items = Vec::new();
    for node in cluster.nodes.values() {
        let audit = cluster.privileges(caller, &format!("/nodes/{}", node.name)).contains("Sys.Audit");
        let usage = cluster.node_usage(node);
        let item = types::GetNodesResponseDataItem {
            node: Some(node.name.clone()),
            status: Some(if node.online { "online" } else { "offline" }.into()),
            level: Some(String::new()),
            ssl_fingerprint: fingerprint.clone(),
            cpu: (audit && node.online).then_some(PveNumber(usage.cpu)),
            maxcpu: (audit && node.online).then_some(PveInt(i64::from(node.cpus))),
            mem: (audit && node.online).then_some(PveInt(usage.memory as i64)),
            maxmem: (audit && node.online).then_some(PveInt(node.memory as i64)),
            uptime: (audit && node.online).then_some(PveInt((now - node.boot_time) as i64)),
        };
        // PVE's list also carries `id` and `type`, which the schema omits.
        let mut value = serde_json::to_value(item).unwrap_or_default();
        if let Value::Object(map) = &mut value {
            map.insert("id".into(), json!(format!("node/{}", node.name)));
            map.insert("type".into(), json!("node"));
        }
        items.push(value);
    }
    Ok(Reply::data(&items))
}

pub fn status(call: &Call<'_>) -> Result<Reply, ApiError> {
    let shared = call.shared;
    let cluster = shared.cluster();
    let node = cluster.node(&call.node())?;
    let now = shared.clock.now();
    let version = shared.version;
    let usage = cluster.node_usage(node);
    let status = types::GetNodesNodeStatusResponseData {
        cpu: Some(PveNumber(usage.cpu)),
        cpuinfo: Some(types::GetNodesNodeStatusResponseDataCpuinfo {
            cores: Some(PveInt(i64::from(node.cpus / 2).max(1))),
            cpus: Some(PveInt(i64::from(node.cpus))),
            model: Some("QEMU Virtual CPU version 2.5+".into()),
            sockets: Some(PveInt(1)),
        }),
        loadavg: vec!["0.12".into(), "0.18".into(), "0.21".into()],
        memory: Some(types::GetNodesNodeStatusResponseDataMemory {
            available: Some(PveInt((node.memory - usage.memory) as i64)),
            free: Some(PveInt((node.memory - usage.memory) as i64)),
            total: Some(PveInt(node.memory as i64)),
            used: Some(PveInt(usage.memory as i64)),
        }),
        pveversion: Some(format!("pve-manager/{version}/5a1c3f1de2b8c9a0")),
        rootfs: Some(types::GetNodesNodeStatusResponseDataRootfs {
            avail: Some(PveInt(88 << 30)),
            free: Some(PveInt(88 << 30)),
            total: Some(PveInt(100 << 30)),
            used: Some(PveInt(12 << 30)),
        }),
        boot_info: Some(types::GetNodesNodeStatusResponseDataBootInfo {
            mode: Some("efi".into()),
            secureboot: Some(PveBool(false)),
        }),
        current_kernel: Some(types::GetNodesNodeStatusResponseDataCurrentKernel {
            machine: Some("x86_64".into()),
            release: Some("6.8.12-4-pve".into()),
            sysname: Some("Linux".into()),
            version: Some("#1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4".into()),
        }),
        extra: serde_json::Map::from_iter([
            ("uptime".to_string(), json!((now - node.boot_time) as u64)),
            ("kversion".to_string(), json!("Linux 6.8.12-4-pve #1 SMP PREEMPT_DYNAMIC PMX 6.8.12-4")),
            ("wait".to_string(), json!(0.0)),
            ("idle".to_string(), json!(0)),
            ("ksm".to_string(), json!({ "shared": 0 })),
            ("swap".to_string(), json!({ "total": 8u64 << 30, "used": 0, "free": 8u64 << 30 })),
        ]),
    };
    Ok(Reply::data(&status))
}

fn storage_visible(cluster: &Cluster, caller: &Caller, storage: &Storage) -> bool {
    let held = cluster.privileges(caller, &format!("/storage/{}", storage.id));
    held.contains("Datastore.Audit") || held.contains("Datastore.AllocateSpace")
}

/// What `node` sees used on `storage`: a local storage counts only that
/// node's volumes (each node has its own volume group or directory).
fn used_space(cluster: &Cluster, storage: &str, node: &str) -> u64 {
    cluster.volumes_on(storage, node).map(|v| v.size).sum()
}

/// The node's storages with usage; `content`/`storage`/`enabled` filter.
pub fn storage(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let node = call.node();
    cluster.node(&node)?;
    let content = call.params.get("content");
    let only = call.params.get("storage");
    let mut items = Vec::new();
    for storage in cluster.storages.values().filter(|s| s.available_on(&node)) {
        if only.is_some_and(|o| o != storage.id)
            || content.is_some_and(|c| !storage.content.split(',').any(|have| have == c))
            || !storage_visible(&cluster, caller, storage)
        {
            continue;
        }
        let used = used_space(&cluster, &storage.id, &node);
        items.push(types::GetNodesNodeStorageResponseDataItem {
            storage: Some(storage.id.clone()),
            type_: Some(storage.kind.clone()),
            content: Some(storage.content.clone()),
            active: Some(PveBool(true)),
            enabled: Some(PveBool(true)),
            shared: Some(PveBool(storage.shared)),
            total: Some(PveInt(storage.total as i64)),
            used: Some(PveInt(used as i64)),
            avail: Some(PveInt(storage.total.saturating_sub(used) as i64)),
            used_fraction: Some(PveNumber(if storage.total == 0 { 0.0 } else { used as f64 / storage.total as f64 })),
            ..Default::default()
        });
    }
    Ok(Reply::data(&items))
}

/// `GET /nodes/{node}/storage/{storage}/content`: the volumes, each shown
/// only if `check_volume_access` lets the caller see it: everything with
/// `Datastore.Allocate` on the storage; a VM's images with
/// `Datastore.Audit` on the storage and `VM.Config.Disk` on `/vms/<owner>`
/// (so the volumes of a VMID without a VM, which is in no pool, stay hidden
/// from a pool-scoped token).
pub fn storage_content(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let node = call.node();
    cluster.node(&node)?;
    let id = call.params.text("storage").unwrap_or_default();
    let storage = cluster
        .storages
        .get(&id)
        .filter(|s| s.available_on(&node))
        .ok_or_else(|| ApiError::internal(format!("storage '{id}' does not exist")))?;
    let content = call.params.get("content");
    if content.is_some_and(|c| !storage.content.split(',').any(|have| have == c)) {
        return Ok(Reply::data(&Vec::<types::GetNodesNodeStorageStorageContentResponseDataItem>::new()));
    }
    let only_vmid = call.params.int("vmid");
    let on_storage = cluster.privileges(caller, &format!("/storage/{id}"));
    let allocate = caller.is_root() || on_storage.contains("Datastore.Allocate");
    let mut items: Vec<types::GetNodesNodeStorageStorageContentResponseDataItem> = Vec::new();
    // A local storage lists the volumes on this node only.
    for volume in cluster.volumes_on(&id, &node) {
        if only_vmid.is_some_and(|vmid| vmid != i64::from(volume.owner)) {
            continue;
        }
        let visible = allocate
            || (on_storage.contains("Datastore.Audit")
                && cluster.privileges(caller, &format!("/vms/{}", volume.owner)).contains("VM.Config.Disk"));
        if !visible {
            continue;
        }
        let format = if volume.volid.ends_with(".qcow2") { "qcow2" } else { "raw" };
        items.push(types::GetNodesNodeStorageStorageContentResponseDataItem {
            volid: Some(volume.volid.clone()),
            vmid: Some(PveInt(i64::from(volume.owner))),
            size: Some(PveInt(volume.size as i64)),
            format: Some(format.into()),
            parent: volume.base.clone(),
            ..Default::default()
        });
    }
    Ok(Reply::data(&items))
}

fn storage_config(storage: &Storage) -> Value {
    let mut item = json!({
        "storage": storage.id,
        "type": storage.kind,
        "content": storage.content,
        "shared": u8::from(storage.shared),
        "digest": "0d3c4a1f6b5e8a7c9d2f1e0b3a4c5d6e7f8a9b0c",
    });
    if !storage.nodes.is_empty() {
        item["nodes"] = json!(storage.nodes.join(","));
    }
    if storage.kind == "lvmthin" {
        item["thinpool"] = json!("data");
        item["vgname"] = json!("pve");
    }
    item
}

pub fn storage_index(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let kind = call.params.get("type");
    let items: Vec<Value> = cluster
        .storages
        .values()
        .filter(|s| kind.is_none_or(|k| k == s.kind) && storage_visible(&cluster, caller, s))
        .map(storage_config)
        .collect();
    Ok(Reply::data(&items))
}

pub fn storage_config_of(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let id = call.params.text("storage").unwrap_or_default();
    let storage =
        cluster.storages.get(&id).ok_or_else(|| ApiError::internal(format!("storage '{id}' does not exist")))?;
    Ok(Reply::data(&storage_config(storage)))
}

/// Own tasks (the user's and its tokens') are visible; others' need
/// `Sys.Audit` on the node.
pub fn may_see_task(cluster: &Cluster, caller: &Caller, task_user: &str, node: &str) -> bool {
    let owner = task_user.split('!').next().unwrap_or(task_user);
    owner == caller.userid() || cluster.privileges(caller, &format!("/nodes/{node}")).contains("Sys.Audit")
}

fn task_item(task: &Task) -> types::GetNodesNodeTasksResponseDataItem {
    types::GetNodesNodeTasksResponseDataItem {
        upid: Some(task.text.clone()),
        node: Some(task.upid.node.clone()),
        pid: Some(PveInt(i64::from(task.upid.pid))),
        pstart: Some(PveInt(task.upid.pstart as i64)),
        starttime: Some(PveInt(i64::from(task.upid.starttime))),
        type_: Some(task.upid.task_type.clone()),
        id: Some(task.upid.id.clone()),
        user: Some(task.upid.user.clone()),
        endtime: task.ended.map(|e| PveInt(e as i64)),
        status: task.exit_status.clone(),
    }
}

/// The node's task list: finished tasks by default (`source=archive`),
/// running ones with `source=active`, both with `all`.
pub fn tasks(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let node = call.node();
    cluster.node(&node)?;
    let params = &call.params;
    let source = params.get("source").unwrap_or("archive");
    let vmid = params.get("vmid");
    let type_filter = params.get("typefilter");
    let user_filter = params.get("userfilter");
    let errors_only = params.flag("errors") == Some(true);
    let start = params.int("start").unwrap_or(0).max(0) as usize;
    let limit = params.int("limit").unwrap_or(50).max(0) as usize;
    let matching: Vec<&Task> = cluster
        .tasks
        .newest_first()
        .filter(|t| t.upid.node == node)
        .filter(|t| match source {
            "active" => t.is_running(),
            "all" => true,
            _ => !t.is_running(),
        })
        .filter(|t| vmid.is_none_or(|v| t.upid.id == v))
        .filter(|t| type_filter.is_none_or(|f| t.upid.task_type == f))
        .filter(|t| user_filter.is_none_or(|f| t.upid.user.contains(f)))
        .filter(|t| !errors_only || t.failed())
        .filter(|t| may_see_task(&cluster, caller, &t.upid.user, &node))
        .collect();
    let total = matching.len() as u64;
    let items: Vec<_> = matching.into_iter().skip(start).take(limit).map(task_item).collect();
    Ok(Reply::data(&items).with_total(total))
}

fn find_task<'a>(cluster: &'a Cluster, call: &Call<'_>) -> Result<&'a Task, ApiError> {
    let text = call.params.text("upid").unwrap_or_default();
    let upid = Upid::decode(&text).ok_or_else(|| ApiError::parameter("upid", "unable to parse worker upid"))?;
    let task = cluster
        .tasks
        .get(&text)
        .filter(|t| t.upid.node == call.node())
        .ok_or_else(|| ApiError::internal("no such task"))?;
    let caller = call.caller()?;
    if !may_see_task(cluster, caller, &upid.user, &upid.node) {
        return Err(ApiError::permission(Some(format!("/nodes/{}, Sys.Audit", upid.node))));
    }
    Ok(task)
}

pub fn task_status(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let task = find_task(&cluster, call)?;
    Ok(Reply::data(&types::GetNodesNodeTasksUpidStatusResponseData {
        upid: Some(task.text.clone()),
        node: Some(task.upid.node.clone()),
        pid: Some(PveInt(i64::from(task.upid.pid))),
        pstart: Some(PveInt(task.upid.pstart as i64)),
        starttime: Some(PveInt(i64::from(task.upid.starttime))),
        type_: Some(task.upid.task_type.clone()),
        id: Some(task.upid.id.clone()),
        user: Some(task.upid.user.clone()),
        status: Some(if task.is_running() { "running" } else { "stopped" }.into()),
        exitstatus: task.exit_status.clone(),
    }))
}

/// Lines `start..start+limit` (0-based `start`, 1-based `n`) with `total`.
pub fn task_log(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let task = find_task(&cluster, call)?;
    let start = call.params.int("start").unwrap_or(0).max(0) as usize;
    let limit = call.params.int("limit").unwrap_or(50).max(0) as usize;
    let mut lines: Vec<types::GetNodesNodeTasksUpidLogResponseDataItem> = task
        .log
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(index, text)| types::GetNodesNodeTasksUpidLogResponseDataItem {
            n: Some(PveInt(index as i64 + 1)),
            t: Some(text.clone()),
        })
        .collect();
    let mut total = task.log.len() as u64;
    if task.log.is_empty() {
        // A worker that has not written yet: PVE reports this one line.
        lines
            .push(types::GetNodesNodeTasksUpidLogResponseDataItem { n: Some(PveInt(1)), t: Some("no content".into()) });
        total = 1;
    }
    Ok(Reply::data(&lines).with_total(total))
}

/// Stops a running task (own tasks, or `Sys.Modify` on the node).
pub fn stop_task(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let task = find_task(&cluster, call)?;
    let owner = task.upid.user.split('!').next().unwrap_or_default();
    if owner != caller.userid() {
        cluster.require(caller, &format!("/nodes/{}", task.upid.node), &["Sys.Modify"], false)?;
    }
    cluster.tasks.request_stop(&task.text);
    Ok(Reply::null())
}
