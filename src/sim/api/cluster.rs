//! `/version`, `/cluster/status`, `/cluster/nextid`, `/cluster/tasks`
//! (`/cluster/resources` has its own file).

use serde_json::{Value, json};

use super::Call;
use crate::pve::api::types;
use crate::pve::lenient::{PveBool, PveInt};
use crate::sim::wire::{ApiError, Reply};

pub fn version(call: &Call<'_>) -> Result<Reply, ApiError> {
    let version = call.shared.version;
    Ok(Reply::data(&types::GetVersionResponseData {
        console: (version >= crate::sim::release::PveRelease { major: 7, minor: 4, patch: 0 })
            .then(|| "html5".to_string()),
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
