//! Static leases against Proxmox: which addresses are taken, handing one
//! out, and making sure no other VM holds it once the clone exists.
//!
//! Taken is what Proxmox shows, read fresh for each allocation: lease tags
//! on any VM of the listing, and for VMs of the pool without lease tags
//! (clones not yet configured, by this or another manager; VMs that are not
//! ours) the marker's lease and `ipconfig0`'s static address from their
//! config. Plus what this process holds and what it freed within
//! `ip_pool_reuse_cooldown`. Two managers may still pick the same address
//! between their reads; each re-reads after its clone exists (its marker
//! carries the lease) and yields on any other claim, so at least one of two
//! racing clones sees the other and moves, and never both keep it.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Instant;

use super::engine::Engine;
use super::failure::{ProvisionError, Step};
use super::ip_pool::{Lease, StaticNetwork};
use super::naming::{InstanceId, Naming};
use crate::pve::{Error as PveError, VmResource, Vmid};

/// Times a clone moves to another address after finding its own claimed.
const CONFLICT_ATTEMPTS: u32 = 5;

/// Hands `id` a lease from the pools, held by this process until its VM is
/// gone.
pub(crate) async fn allocate(
    engine: &Engine,
    network: &StaticNetwork,
    id: &InstanceId,
) -> Result<Lease, ProvisionError> {
    let claimed = claimed_elsewhere(engine, id.vmid).await?;
    pick(engine, network, id, &claimed)
}

/// After the clone exists: re-reads the claims, and while another VM claims
/// this instance's address, moves to a free one (rewriting the marker).
/// Returns the lease the instance keeps.
pub(crate) async fn confirm(
    engine: &Engine,
    network: &StaticNetwork,
    id: &InstanceId,
    node: &str,
) -> Result<Lease, ProvisionError> {
    for _ in 0..CONFLICT_ATTEMPTS {
        let lease = held(engine, id).unwrap_or_default();
        let claimed = claimed_elsewhere(engine, id.vmid).await?;
        let conflicts: Vec<IpAddr> = lease.addresses().filter(|ip| claimed.contains(ip)).collect();
        if conflicts.is_empty() {
            return Ok(lease);
        }
        tracing::info!(instance = %id, vmid = %id.vmid, address = ?conflicts, "another VM claims this address; taking another");
        let fresh = pick(engine, network, id, &claimed)?;
        let update = crate::pve::ConfigUpdate {
            description: Some(engine.naming.description_with_lease(id, &fresh)),
            ..Default::default()
        };
        super::provision::retry_locked(|| engine.pve.update_vm_config(node, id.vmid, &update))
            .await
            .map_err(|error| ProvisionError::pve(Step::Configure, error))?;
    }
    Err(ProvisionError::PoolExhausted {
        pool: network.describe(),
        detail: format!("the address changed hands {CONFLICT_ATTEMPTS} times while this instance was created"),
    })
}

/// The lease this process holds for `id`.
pub(crate) fn held(engine: &Engine, id: &InstanceId) -> Option<Lease> {
    engine.leases.lock().unwrap().get(id).copied()
}

/// The instance's VM is deleted: its addresses start their cooldown now.
pub(crate) fn freed(engine: &Engine, id: &InstanceId) {
    let Some(network) = &engine.config.static_network else { return };
    let lease = engine.leases.lock().unwrap().remove(id);
    cool_down(engine, network, lease.into_iter().collect(), Instant::now());
}

/// Drops the lease of an instance whose clone never came to exist.
pub(crate) fn release_unused(engine: &Engine, id: &InstanceId) {
    engine.leases.lock().unwrap().remove(id);
}

/// Records the lease of an instance found after a restart.
pub(crate) fn hold(engine: &Engine, id: &InstanceId, lease: Lease) {
    engine.leases.lock().unwrap().insert(id.clone(), lease);
}

/// Chooses free addresses and records them for `id`, under the one lock
/// that makes this process's choices distinct. Leases of instances the
/// registry no longer tracks are released here (into the cooldown).
fn pick(
    engine: &Engine,
    network: &StaticNetwork,
    id: &InstanceId,
    claimed: &HashSet<IpAddr>,
) -> Result<Lease, ProvisionError> {
    let now = Instant::now();
    // The registry's lock first and alone (the engine's locks are leaves).
    let tracked: HashSet<InstanceId> = engine.registry.tracked_ids().into_iter().collect();
    // Leases of instances gone from the registry start their cooldown first,
    // so the address they free is not handed out by this very pick.
    let mut gone = Vec::new();
    engine.leases.lock().unwrap().retain(|other, lease| {
        let keep = other == id || tracked.contains(other);
        if !keep {
            gone.push(*lease);
        }
        keep
    });
    cool_down(engine, network, gone, now);
    let cooling: Vec<IpAddr> = {
        let mut cooling = engine.cooling.lock().unwrap();
        cooling.retain(|_, until| *until > now);
        cooling.keys().copied().collect()
    };
    let (lease, taken_count) = {
        let mut leases = engine.leases.lock().unwrap();
        let mut taken: HashSet<IpAddr> = claimed.clone();
        taken.extend(leases.iter().filter(|(other, _)| *other != id).flat_map(|(_, lease)| lease.addresses()));
        let previous = leases.get(id).copied().unwrap_or_default();
        // An address this instance is moving away from stays out for it.
        taken.extend(previous.addresses());
        taken.extend(cooling);
        let start: u128 = rand::random();
        let v4 = network.v4.as_ref().map(|pool| pool.pick(&taken, start));
        let v6 = network.v6.as_ref().map(|pool| pool.pick(&taken, start));
        if v4.is_some_and(|ip| ip.is_none()) || v6.is_some_and(|ip| ip.is_none()) {
            (None, taken.len())
        } else {
            let lease = Lease {
                v4: v4.flatten().and_then(|ip| match ip {
                    IpAddr::V4(ip) => Some(ip),
                    IpAddr::V6(_) => None,
                }),
                v6: v6.flatten().and_then(|ip| match ip {
                    IpAddr::V6(ip) => Some(ip),
                    IpAddr::V4(_) => None,
                }),
            };
            leases.insert(id.clone(), lease);
            (Some(lease), taken.len())
        }
    };
    lease.ok_or_else(|| ProvisionError::PoolExhausted {
        pool: network.describe(),
        detail: format!("{taken_count} addresses in use or cooling down"),
    })
}

/// Puts freed addresses into the reuse cooldown.
fn cool_down(engine: &Engine, network: &StaticNetwork, freed: Vec<Lease>, now: Instant) {
    if freed.is_empty() || network.reuse_cooldown.is_zero() {
        return;
    }
    let until = now + network.reuse_cooldown;
    let mut cooling = engine.cooling.lock().unwrap();
    for lease in freed {
        for ip in lease.addresses() {
            cooling.insert(ip, until);
        }
    }
}

/// Addresses claimed in Proxmox by VMs other than `own`: one listing, plus
/// the config of each pool VM whose tags carry no lease and whose lease this
/// process does not hold.
async fn claimed_elsewhere(engine: &Engine, own: Vmid) -> Result<HashSet<IpAddr>, ProvisionError> {
    let allocation_error = |error| ProvisionError::pve(Step::AllocateAddress, error);
    let vms = engine.pve.cluster_vms().await.map_err(allocation_error)?;
    let held_vmids: HashSet<Vmid> = engine.leases.lock().unwrap().keys().map(|id| id.vmid).collect();
    let mut claimed = HashSet::new();
    let mut unknown: Vec<&VmResource> = Vec::new();
    for vm in vms.iter().filter(|vm| vm.vmid != own) {
        let lease = Lease::from_tags(&vm.tags);
        if !lease.is_empty() {
            claimed.extend(lease.addresses());
        } else if vm.pool.as_deref() == Some(engine.config.pool.as_str())
            && !vm.template
            && !held_vmids.contains(&vm.vmid)
        {
            unknown.push(vm);
        }
    }
    let reads = futures::future::join_all(unknown.iter().map(|vm| config_claims(engine, vm))).await;
    for read in reads {
        claimed.extend(read.map_err(allocation_error)?);
    }
    Ok(claimed)
}

/// The addresses a VM's config claims: its marker's lease and the static
/// addresses of its `ipconfigN`. A VM gone meanwhile claims nothing.
async fn config_claims(engine: &Engine, vm: &VmResource) -> Result<Vec<IpAddr>, PveError> {
    let config = match super::provision::retry_locked(|| engine.pve.vm_config(&vm.node, vm.vmid)).await {
        Ok(config) => config,
        Err(err) if err.is_not_found() => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut addresses: Vec<IpAddr> =
        Naming::lease_of_description(config.get("description").map(String::as_str).unwrap_or_default())
            .addresses()
            .collect();
    for (key, value) in &config {
        if key.starts_with("ipconfig") {
            addresses.extend(Lease::from_ipconfig(value).addresses());
        }
    }
    Ok(addresses)
}
