//! Taking over from the seed plugin (LukasK32/fleeting-plugin-proxmox and
//! its fork Phenix66): at Init, the VMs it left in the pool under this
//! config's `instance_name_*` are finished the way it would have finished
//! them, so switching binaries leaves nothing behind.
//!
//! A VM is the seed's when it is in the pool, is not a template nor the
//! template VMID, is named with one of this config's three instance names,
//! carries no marker of this plugin (any group) and no other group's tag.
//! Anything else is never touched.
//!
//! Each one is first claimed: this plugin's marker and tags are written into
//! it (guarded by the config digest, so a VM that changed meanwhile is left
//! alone). From then on it is an instance like any other, and the ordinary
//! paths finish it, crash-safe: one named creating or removing is deleted
//! (stop, then delete with `purge` and `destroy-unreferenced-disks`); one
//! named running is adopted when it runs and answers with an address, and
//! deleted otherwise.

use std::sync::Arc;

use super::InstanceState;
use super::address::Addresses;
use super::engine::{Engine, Phase, Tracked};
use super::naming::{InstanceId, Naming};
use crate::pve::VmResource;

/// What became of one seed VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Named creating or removing: the seed would have deleted it.
    Delete,
    /// Named running: adopt it if it is ready, delete it otherwise.
    Adopt,
}

/// Finds the seed's VMs in `vms` (the listing Init already read), claims
/// them and hands them to deletion or adoption in the background. Returns
/// how many were claimed.
pub(crate) async fn take_over(engine: &Arc<Engine>, vms: &[VmResource]) -> usize {
    let config = &engine.config;
    let mut claimed = 0;
    for vm in vms {
        let Some(plan) = seed_plan(engine, vm) else { continue };
        let id = InstanceId::generate(vm.vmid);
        // Read the config: the marker decides, and its digest guards the claim.
        let current = match engine.pve.vm_config(&vm.node, vm.vmid).await {
            Ok(current) => current,
            Err(err) => {
                tracing::warn!(vmid = %vm.vmid, error = %err, "could not read a VM the seed plugin may have left; leaving it for now");
                continue;
            }
        };
        let description = current.get("description").map(String::as_str).unwrap_or_default();
        if Naming::has_any_marker(description) || current.get("name") != vm.name.as_ref() {
            continue;
        }
        // The seed's own description, if any, is kept below the marker.
        let mut marker = engine.naming.description(&id);
        if !description.trim().is_empty() {
            marker.push_str("\n\n");
            marker.push_str(description);
        }
        let state = if plan == Plan::Delete { InstanceState::Deleting } else { InstanceState::Running };
        let mut claim = engine.label_for(&id, state);
        if plan == Plan::Adopt {
            claim.name = None;
        }
        claim.description = Some(marker);
        claim.digest = current.get("digest").cloned();
        let phase = if plan == Plan::Delete { Phase::Deleting } else { Phase::Adopting };
        engine.instances.lock().unwrap().insert(
            id.clone(),
            Tracked { node: vm.node.clone(), phase, addresses: Addresses::default(), missing_since: None },
        );
        if let Err(err) = engine.pve.update_vm_config(&vm.node, vm.vmid, &claim).await {
            engine.instances.lock().unwrap().remove(&id);
            tracing::warn!(vmid = %vm.vmid, error = %err, "could not take over a VM the seed plugin left; leaving it for now");
            continue;
        }
        claimed += 1;
        let name = vm.name.as_deref().unwrap_or_default();
        match plan {
            Plan::Delete => {
                tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: deleting a VM it left {}", if name == config.instance_name_creating { "half-created" } else { "half-removed" });
                super::provision::spawn_deletion(engine.clone(), id, "left by the seed plugin".into());
            }
            Plan::Adopt => {
                tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: adopting its running VM if it answers, else deleting it");
                super::provision::spawn_adoption(engine.clone(), id, vm.clone());
            }
        }
    }
    claimed
}

/// Whether the listing shows a VM the seed left for this config, and what
/// to do with it.
fn seed_plan(engine: &Engine, vm: &VmResource) -> Option<Plan> {
    let config = &engine.config;
    if vm.template || vm.vmid == config.template_id || vm.pool.as_deref() != Some(config.pool.as_str()) {
        return None;
    }
    // Ours already (any state), or another group's: not the seed's.
    if engine.naming.owner_of_tags(vm.vmid, &vm.tags).is_some() || engine.naming.tagged_by_another_group(&vm.tags) {
        return None;
    }
    let name = vm.name.as_deref()?;
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
