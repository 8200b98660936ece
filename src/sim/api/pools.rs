//! Pools: the pre-8.1 per-id API (`/pools/{poolid}`) and the 8.1+ query
//! forms (`GET /pools?poolid=`, `PUT /pools`, `DELETE /pools`). Which
//! exist depends on the configured release (see `schema.rs`).

use super::Call;
use crate::pve::api::types;
use crate::sim::access::Caller;
use crate::sim::cluster::{Cluster, Pool};
use crate::sim::wire::{ApiError, Reply, write_perl_json};

fn missing(pool: &str) -> ApiError {
    ApiError::internal(format!("pool '{pool}' does not exist"))
}

/// The pool as `GET /pools/{poolid}` shows it: `comment` (when set),
/// `members`, and with `with_id` (the 8.1+ `GET /pools?poolid=`) `poolid`.
/// Written around the members' kept bytes, keys in the order of the other
/// answers (sorted).
fn pool_object(call: &Call<'_>, cluster: &Cluster, pool: &Pool, with_id: bool) -> Vec<u8> {
    let members = call.shared.resources_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pool_members(
        cluster,
        pool,
        call.params.get("type"),
        call.shared.clock.now(),
    );
    let mut out = Vec::with_capacity(members.len() + 128);
    out.push(b'{');
    // Writing strings into a Vec cannot fail.
    if let Some(comment) = &pool.comment {
        out.extend_from_slice(b"\"comment\":");
        let _ = write_perl_json(&mut out, comment);
        out.push(b',');
    }
    out.extend_from_slice(b"\"members\":");
    out.extend_from_slice(&members);
    if with_id {
        out.extend_from_slice(b",\"poolid\":");
        let _ = write_perl_json(&mut out, &pool.id);
    }
    out.push(b'}');
    out
}

/// `GET /pools`: pools with `Pool.Audit`; since 8.1 `poolid` selects one,
/// answered with its members.
pub fn index(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let audit = |id: &str| cluster.privileges(caller, &format!("/pool/{id}")).contains("Pool.Audit");
    if let Some(poolid) = call.params.get("poolid") {
        let pool = cluster.pools.get(poolid).ok_or_else(|| missing(poolid))?;
        cluster.require(caller, &format!("/pool/{poolid}"), &["Pool.Audit"], false)?;
        let mut answer = vec![b'['];
        answer.extend_from_slice(&pool_object(call, &cluster, pool, true));
        answer.push(b']');
        return Ok(Reply::serialized(answer));
    }
    let items: Vec<types::GetPoolsResponseDataItem> = cluster
        .pools
        .values()
        .filter(|pool| audit(&pool.id))
        .map(|pool| types::GetPoolsResponseDataItem {
            poolid: Some(pool.id.clone()),
            comment: pool.comment.clone(),
            members: Vec::new(),
        })
        .collect();
    Ok(Reply::data(&items))
}

/// `GET /pools/{poolid}` (deprecated since 8.1): comment and members.
pub fn read(call: &Call<'_>) -> Result<Reply, ApiError> {
    let cluster = call.shared.cluster();
    let poolid = call.params.text("poolid").unwrap_or_default();
    let pool = cluster.pools.get(&poolid).ok_or_else(|| missing(&poolid))?;
    Ok(Reply::serialized(pool_object(call, &cluster, pool, false)))
}

pub fn create(call: &Call<'_>) -> Result<Reply, ApiError> {
    let mut cluster = call.shared.cluster();
    let poolid = call.params.text("poolid").unwrap_or_default();
    if cluster.pools.contains_key(&poolid) {
        return Err(ApiError::internal(format!("pool '{poolid}' already exists")));
    }
    let nested = (call.shared.version.major, call.shared.version.minor) >= (8, 1);
    if let Some((parent, _)) = poolid.rsplit_once('/') {
        if !nested {
            return Err(ApiError::parameter("poolid", format!("invalid format - invalid pool id '{poolid}'\n")));
        }
        if !cluster.pools.contains_key(parent) {
            return Err(ApiError::internal(format!("parent '{parent}' does not exist")));
        }
    }
    cluster.pools.insert(poolid.clone(), Pool { id: poolid, comment: call.params.text("comment"), ..Pool::default() });
    Ok(Reply::null())
}

/// `PUT /pools` (8.1+) and `PUT /pools/{poolid}`: comment, and adding or
/// (with `delete`) removing VMs and storages. Each VM needs `VM.Allocate`;
/// moving one from another pool needs `allow-move` and `Pool.Allocate` there.
pub fn update(call: &Call<'_>, path_pool: Option<String>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let params = &call.params;
    let poolid = path_pool.or_else(|| params.text("poolid")).unwrap_or_default();
    let mut cluster = call.shared.cluster();
    if !cluster.pools.contains_key(&poolid) {
        return Err(missing(&poolid));
    }
    let delete = params.flag("delete") == Some(true);
    let allow_move = params.flag("allow-move") == Some(true);
    let vmids: Vec<u32> = list(params.get("vms")).iter().filter_map(|v| v.parse().ok()).collect();
    let storages = list(params.get("storage"));
    for vmid in &vmids {
        check_member_change(&cluster, caller, &format!("/vms/{vmid}"))?;
        let guest = cluster.vms.get(vmid).ok_or_else(|| ApiError::internal(format!("VM {vmid} does not exist")))?;
        match (&guest.pool, delete) {
            (Some(current), false) if *current != poolid => {
                if !allow_move {
                    return Err(ApiError::internal(format!(
                        "VM {vmid} belongs already to pool '{current}' and 'allow-move' is not set"
                    )));
                }
                cluster.require(caller, &format!("/pool/{current}"), &["Pool.Allocate"], false)?;
            }
            (pool, true) if pool.as_deref() != Some(poolid.as_str()) => {
                return Err(ApiError::internal(format!("VM {vmid} is not a pool member")));
            }
            _ => {}
        }
    }
    for storage in &storages {
        check_member_change(&cluster, caller, &format!("/storage/{storage}"))?;
        if !cluster.storages.contains_key(storage) {
            return Err(ApiError::internal(format!("storage '{storage}' does not exist")));
        }
    }
    for vmid in vmids {
        cluster.leave_pool(vmid);
        if !delete {
            cluster.join_pool(vmid, &poolid)?;
        }
    }
    if let Some(pool) = cluster.pools.get_mut(&poolid) {
        for storage in storages {
            if delete {
                pool.storages.remove(&storage);
            } else {
                pool.storages.insert(storage);
            }
        }
        if let Some(comment) = params.text("comment") {
            pool.comment = Some(comment);
        }
    }
    Ok(Reply::null())
}

/// `check_perm_modify`: `Permissions.Modify`, or `VM.Allocate` /
/// `Datastore.Allocate` on the object.
fn check_member_change(cluster: &Cluster, caller: &Caller, path: &str) -> Result<(), ApiError> {
    let held = cluster.privileges(caller, path);
    let object_privilege = if path.starts_with("/vms/") { "VM.Allocate" } else { "Datastore.Allocate" };
    if held.contains("Permissions.Modify") || held.contains(object_privilege) {
        Ok(())
    } else {
        Err(ApiError::permission(Some(format!("{path}, Permissions.Modify|{object_privilege}"))))
    }
}

pub fn delete(call: &Call<'_>, path_pool: Option<String>) -> Result<Reply, ApiError> {
    let poolid = path_pool.or_else(|| call.params.text("poolid")).unwrap_or_default();
    let mut cluster = call.shared.cluster();
    let pool = cluster.pools.get(&poolid).ok_or_else(|| missing(&poolid))?;
    if !pool.vms.is_empty() || !pool.storages.is_empty() {
        return Err(ApiError::internal(format!("pool '{poolid}' is not empty")));
    }
    if cluster.pools.keys().any(|id| id.starts_with(&format!("{poolid}/"))) {
        return Err(ApiError::internal(format!("pool '{poolid}' is not empty (has sub-pools)")));
    }
    cluster.pools.remove(&poolid);
    Ok(Reply::null())
}

fn list(value: Option<&str>) -> Vec<String> {
    value.unwrap_or_default().split([',', ';', ' ']).filter(|s| !s.is_empty()).map(str::to_string).collect()
}
