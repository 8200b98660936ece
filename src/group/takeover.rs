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
use super::config::GroupConfig;
use super::engine::Engine;
use super::naming::{InstanceId, Naming};
use crate::pve::{VmResource, Vmid};

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

/// What the seed would have done with one of its VMs, and so what the
/// takeover does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedPlan {
    /// Named creating or removing: the seed would have deleted it.
    Delete,
    /// Named running: adopt it if it is ready, delete it otherwise.
    Adopt,
}

/// The judgement of what the seed plugin left for one config: a pure
/// function of the config and what PVE shows, shared by the takeover (which
/// then claims) and `status` (which only reports).
#[derive(Debug, Clone, Copy)]
pub struct SeedJudge<'a> {
    pub config: &'a GroupConfig,
    pub naming: &'a Naming,
    /// The plugin installs its own key (Runner brings no credentials): the
    /// seed's running VMs lack it and cannot be adopted.
    pub generates_key: bool,
}

impl SeedJudge<'_> {
    /// Whether the listing leaves open that `vm` is the seed's (its config
    /// decides): in the pool, not a template, not tagged by any group, and
    /// named with one of this config's names or not named yet.
    pub fn may_be_seed(&self, vm: &VmResource) -> bool {
        !vm.template
            && vm.vmid != self.config.template_id
            && vm.pool.as_deref() == Some(self.config.pool.as_str())
            && self.naming.owner_of_tags(vm.vmid, &vm.tags).is_none()
            && !self.naming.tagged_by_another_group(&vm.tags)
            && vm.name.as_deref().is_none_or(|name| self.plan_for(name).is_some())
    }

    /// What the seed would do with the VM whose config is `current`, or
    /// `None` when it is not the seed's. A held lock does not change the
    /// verdict (the takeover waits for it). Call only for VMs that
    /// [`Self::may_be_seed`] admits: the pool and the template VMID are
    /// judged there.
    pub fn plan(&self, vmid: Vmid, current: &BTreeMap<String, String>) -> Option<SeedPlan> {
        let description = current.get("description").map(String::as_str).unwrap_or_default();
        let tags: Vec<String> = current
            .get("tags")
            .map(|t| t.split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_ascii_lowercase).collect())
            .unwrap_or_default();
        let name = current.get("name").map(String::as_str).unwrap_or_default();
        let seeds = current.get("template").is_none_or(|t| t != "1")
            && !Naming::has_any_marker(description)
            && self.naming.owner_of_tags(vmid, &tags).is_none()
            && !self.naming.tagged_by_another_group(&tags);
        self.plan_for(name).filter(|_| seeds)
    }

    /// What the seed would do with a VM of this name.
    fn plan_for(&self, name: &str) -> Option<SeedPlan> {
        let config = self.config;
        if name == config.instance_name_running {
            // Seed configs may use one name for several states; running wins,
            // as the seed's own Update reads it. The seed always handed out
            // Runner's credentials: when the plugin generates its own key, the
            // seed's VMs do not have it and cannot be used.
            Some(if self.generates_key { SeedPlan::Delete } else { SeedPlan::Adopt })
        } else if name == config.instance_name_creating || name == config.instance_name_removing {
            Some(SeedPlan::Delete)
        } else {
            None
        }
    }
}

/// At Init: judges every VM of the listing that may be the seed's. Returns
/// how many were claimed; the rest are judged again by Update.
pub(crate) async fn take_over(engine: &Arc<Engine>, vms: &[VmResource]) -> usize {
    let mut claimed = 0;
    let judge = engine.seed_judge();
    for vm in vms.iter().filter(|vm| judge.may_be_seed(vm)) {
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

/// Claims `vm` if its config (`current`) shows it is the seed's.
pub(crate) async fn claim(engine: &Arc<Engine>, vm: &VmResource, current: &BTreeMap<String, String>) -> Claim {
    let config = &engine.config;
    let Some(plan) = engine.seed_judge().plan(vm.vmid, current) else { return Claim::NotSeed };
    if current.contains_key("lock") {
        // A clone the seed started is still running; its VM is claimed once it ends.
        return Claim::Later;
    }
    let description = current.get("description").map(String::as_str).unwrap_or_default();
    let name = current.get("name").map(String::as_str).unwrap_or_default();
    let id = InstanceId::generate(vm.vmid);
    // The seed's own description, if any, is kept below the marker.
    let mut marker = engine.naming.description(&id);
    if !description.trim().is_empty() {
        marker.push_str("\n\n");
        marker.push_str(description);
    }
    let state = if plan == SeedPlan::Delete { InstanceState::Deleting } else { InstanceState::Running };
    let mut update = engine.label_for(&id, state);
    if plan == SeedPlan::Adopt {
        update.name = None;
    }
    update.description = Some(marker);
    update.digest = current.get("digest").cloned();
    match plan {
        SeedPlan::Delete => {
            engine.registry.track_deleting(id.clone(), &vm.node);
        }
        SeedPlan::Adopt => engine.registry.track_adopting(id.clone(), &vm.node),
    }
    if let Err(err) = engine.pve.update_vm_config(&vm.node, vm.vmid, &update).await {
        engine.registry.forget(&id);
        tracing::debug!(vmid = %vm.vmid, error = %err, "could not claim a VM the seed plugin left yet; Update looks again");
        return Claim::Later;
    }
    match plan {
        SeedPlan::Delete => {
            let left = if name == config.instance_name_creating { "half-created" } else { "half-removed" };
            tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: deleting a VM it left {left}");
            engine.metrics.taken_over("deleted");
            super::deletion::spawn_deletion(engine.clone(), id, "left by the seed plugin".into());
        }
        SeedPlan::Adopt => {
            tracing::info!(instance = %id, vmid = %vm.vmid, node = vm.node, name, pool = config.pool, "taking over from the seed plugin: adopting its running VM if it answers, else deleting it");
            engine.metrics.taken_over("claimed_for_adoption");
            super::adoption::spawn_adoption(engine.clone(), id, vm.clone());
        }
    }
    Claim::Claimed
}
