//! Taking over from the seed plugin (LukasK32/fleeting-plugin-proxmox and
//! its fork Phenix66): the VMs it left in the pool under this config's
//! `instance_name_*` are finished the way it would have finished them, so
//! switching binaries leaves nothing behind.
//!
//! A VM is the seed's when it is in the pool, is not a template nor the
//! template VMID, is named (in its config) with one of this config's three
//! instance names, carries no marker of this plugin (any group) and no
//! other group's tag. Anything else is never touched.
//!
//! The seed may die in the middle of a clone: that VM is listed late (PVE
//! publishes a new guest's name and pool only after a while) and stays
//! locked until the clone task ends. So the takeover is not one look at
//! Init: for [`TAKEOVER_WINDOW`] after Init, every untagged VM Update finds
//! in the pool is judged from its config, and one still locked is looked at
//! again on the next Update. VMs appearing later are left alone (they would
//! be a seed that still runs beside this plugin, which must not be fought).
//!
//! Each one is first claimed: this plugin's marker and tags are written into
//! it (guarded by the config digest, so a VM that changed meanwhile is left
//! alone). From then on it is an instance like any other, and the ordinary
//! paths finish it, crash-safe: one named creating or removing is deleted
//! (stop, then delete with `purge` and `destroy-unreferenced-disks`); one
//! named running is adopted when it runs and answers with an address, and
//! deleted otherwise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::InstanceState;
use super::engine::Engine;
use super::naming::{InstanceId, Naming};
use crate::pve::VmResource;

/// How long after Init VMs found in the pool are judged as the seed's: long
/// enough for a clone the seed started just before it died to end.
pub const TAKEOVER_WINDOW: Duration = Duration::from_secs(15 * 60);

/// What became of one VM judged for the takeover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// Claimed, and handed to deletion or adoption.
    Claimed,
    /// The seed's, but it cannot be claimed yet (locked, or PVE did not
    /// answer): look again on the next Update.
    Later,
    /// Not the seed's: leave it alone.
    NotSeed,
}

/// What to do with a VM of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Named creating or removing: the seed would have deleted it.
    Delete,
    /// Named running: adopt it if it is ready, delete it otherwise.
    Adopt,
}

/// At Init: judges every VM of the listing that may be the seed's. Returns
/// how many were claimed; the rest are judged again by Update.
pub(crate) async fn take_over(engine: &Arc<Engine>, vms: &[VmResource]) -> usize {
    let mut claimed = 0;
    for vm in vms.iter().filter(|vm| may_be_seed(engine, vm)) {
        let current = match engine.pve.vm_config(&vm.node, vm.vmid).await {
            Ok(current) => current,
            Err(err) => {
                tracing::debug!(vmid = %vm.vmid, error = %err, "could not read a VM the seed plugin may have left; Update looks again");
                continue;
            }
        };
        if claim(engine, vm, &current).await == Claim::Claimed {
            claimed += 1;
        }
    }
    claimed
}

/// Whether the listing leaves open that `vm` is the seed's (its config
/// decides): in the pool, not a template, not tagged by any group, and
/// named with one of this config's names or not named yet.
pub(crate) fn may_be_seed(engine: &Engine, vm: &VmResource) -> bool {
    let config = &engine.config;
    !vm.template
        && vm.vmid != config.template_id
        && vm.pool.as_deref() == Some(config.pool.as_str())
        && engine.naming.owner_of_tags(vm.vmid, &vm.tags).is_none()
        && !engine.naming.tagged_by_another_group(&vm.tags)
        && vm.name.as_deref().is_none_or(|name| plan_for(engine, name).is_some())
}

/// Claims `vm` if its config (`current`) shows it is the seed's.
pub(crate) async fn claim(engine: &Arc<Engine>, vm: &VmResource, current: &BTreeMap<String, String>) -> Claim {
    let config = &engine.config;
    let description = current.get("description").map(String::as_str).unwrap_or_default();
    let tags: Vec<String> = current
        .get("tags")
        .map(|t| t.split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect())
        .unwrap_or_default();
    let name = current.get("name").map(String::as_str).unwrap_or_default();
    let seeds = current.get("template").is_none_or(|t| t != "1")
        && !Naming::has_any_marker(description)
        && engine.naming.owner_of_tags(vm.vmid, &tags).is_none()
        && !engine.naming.tagged_by_another_group(&tags);
    let Some(plan) = plan_for(engine, name).filter(|_| seeds) else { return Claim::NotSeed };
    if current.contains_key("lock") {
        // A clone the seed started is still running; its VM is claimed once it ends.
        return Claim::Later;
    }
    let id = InstanceId::generate(vm.vmid);
    // The seed's own description, if any, is kept below the marker.
    let mut marker = engine.naming.description(&id);
    if !description.trim().is_empty() {
        marker.push_str("\n\n");
        marker.push_str(description);
    }
    let state = if plan == Plan::Delete { InstanceState::Deleting } else { InstanceState::Running };
    let mut update = engine.label_for(&id, state);
    if plan == Plan::Adopt {
        update.name = None;
    }
    update.description = Some(marker);
    update.digest = current.get("digest").cloned();
    match plan {
        Plan::Delete => {
            engine.registry.track_deleting(id.clone(), &vm.node);
        }
        Plan::Adopt => engine.registry.track_adopting(id.clone(), &vm.node),
    }
    if let Err(err) = engine.pve.update_vm_config(&vm.node, vm.vmid, &update).await {
        engine.registry.forget(&id);
        tracing::debug!(vmid = %vm.vmid, error = %err, "could not claim a VM the seed plugin left yet; Update looks again");
        return Claim::Later;
    }
    match plan {
        Plan::Delete => {
            let left = if name == config.instance_name_creating { "half-created" } else { "half-removed" };
            tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: deleting a VM it left {left}");
            engine.metrics.taken_over("deleted");
            super::deletion::spawn_deletion(engine.clone(), id, "left by the seed plugin".into());
        }
        Plan::Adopt => {
            tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: adopting its running VM if it answers, else deleting it");
            engine.metrics.taken_over("claimed_for_adoption");
            super::adoption::spawn_adoption(engine.clone(), id, vm.clone());
        }
    }
    Claim::Claimed
}

/// What the seed would do with a VM of this name.
fn plan_for(engine: &Engine, name: &str) -> Option<Plan> {
    let config = &engine.config;
    if name == config.instance_name_running {
        // Seed configs may use one name for several states; running wins,
        // as the seed's own Update reads it. The seed always handed out
        // Runner's credentials: when the plugin generates its own key, the
        // seed's VMs do not have it and cannot be used.
        Some(if engine.key.is_none() { Plan::Adopt } else { Plan::Delete })
    } else if name == config.instance_name_creating || name == config.instance_name_removing {
        Some(Plan::Delete)
    } else {
        None
    }
}
