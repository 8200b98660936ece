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

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::engine::Engine;
use super::failure::{ProvisionError, Step};
use super::ip_pool::{Lease, StaticNetwork};
use super::naming::{InstanceId, Naming};
use crate::pve::{Error as PveError, VmResource, Vmid};

/// The one owner of this process's lease state: the leases it handed out
/// or adopted, and the addresses it freed, until when they cool down. One
/// private lock, taken and released inside each method (a leaf, like the
/// engine's other locks).
#[derive(Debug, Default)]
pub(crate) struct LeaseBook {
    state: Mutex<BookState>,
}

#[derive(Debug, Default)]
struct BookState {
    leases: HashMap<InstanceId, Lease>,
    cooling: HashMap<IpAddr, Instant>,
}

impl LeaseBook {
    fn lock(&self) -> MutexGuard<'_, BookState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The lease held for `id`.
    pub fn held(&self, id: &InstanceId) -> Option<Lease> {
        self.lock().leases.get(id).copied()
    }

    /// Records the lease of an instance found after a restart.
    pub fn hold(&self, id: &InstanceId, lease: Lease) {
        self.lock().leases.insert(id.clone(), lease);
    }

    /// Drops `id`'s lease; with `cooldown`, its addresses cool down first.
    pub fn release(&self, id: &InstanceId, cooldown: Duration) {
        let mut state = self.lock();
        if let Some(lease) = state.leases.remove(id) {
            cool_down(&mut state.cooling, [lease], cooldown);
        }
    }

    /// VMIDs whose lease this process holds.
    pub fn held_vmids(&self) -> HashSet<Vmid> {
        self.lock().leases.keys().map(|id| id.vmid).collect()
    }

    /// Releases the leases of instances no longer `tracked` (into the
    /// cooldown), then chooses free addresses for `id` besides `claimed`,
    /// and records them: one lock, so this process's choices are distinct.
    fn pick(
        &self,
        network: &StaticNetwork,
        id: &InstanceId,
        tracked: &HashSet<InstanceId>,
        claimed: &HashSet<IpAddr>,
    ) -> Result<Lease, usize> {
        let now = Instant::now();
        let mut state = self.lock();
        let BookState { leases, cooling } = &mut *state;
        let mut gone = Vec::new();
        leases.retain(|other, lease| {
            let keep = other == id || tracked.contains(other);
            if !keep {
                gone.push(*lease);
            }
            keep
        });
        cool_down(cooling, gone, network.reuse_cooldown);
        cooling.retain(|_, until| *until > now);
        let mut taken: HashSet<IpAddr> = claimed.clone();
        taken.extend(leases.iter().filter(|(other, _)| *other != id).flat_map(|(_, lease)| lease.addresses()));
        // An address this instance is moving away from stays out for it.
        taken.extend(leases.get(id).copied().unwrap_or_default().addresses());
        taken.extend(cooling.keys().copied());
        let start: u128 = rand::random();
        let v4 = network.v4.as_ref().map(|pool| pool.pick(&taken, start));
        let v6 = network.v6.as_ref().map(|pool| pool.pick(&taken, start));
        if v4.is_some_and(|ip| ip.is_none()) || v6.is_some_and(|ip| ip.is_none()) {
            return Err(taken.len());
        }
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
        Ok(lease)
    }
}

/// Puts freed addresses into the reuse cooldown.
fn cool_down(cooling: &mut HashMap<IpAddr, Instant>, freed: impl IntoIterator<Item = Lease>, cooldown: Duration) {
    if cooldown.is_zero() {
        return;
    }
    let until = Instant::now() + cooldown;
    for lease in freed {
        for ip in lease.addresses() {
            cooling.insert(ip, until);
        }
    }
}

/// Times a clone moves to another address after finding its own claimed.
/// Two managers filling one range at once meet often near its end; each
/// move avoids every address contested before, so this bounds a rare case.
const CONFLICT_ATTEMPTS: u32 = 12;

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
    // Addresses another VM claimed during this confirmation: the other
    // manager may be moving too, so neither goes back to them.
    let mut contested: HashSet<IpAddr> = HashSet::new();
    for attempt in 0..CONFLICT_ATTEMPTS {
        let lease = held(engine, id).unwrap_or_default();
        let claimed = claimed_elsewhere(engine, id.vmid).await?;
        let conflicts: Vec<IpAddr> = lease.addresses().filter(|ip| claimed.contains(ip)).collect();
        if conflicts.is_empty() {
            return Ok(lease);
        }
        tracing::info!(instance = %id, vmid = %id.vmid, address = ?conflicts, attempt, "another VM claims this address; taking another");
        contested.extend(conflicts);
        if attempt > 0 {
            // Out of step with the other manager, whose new clones then show.
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..400))).await;
        }
        let avoided: HashSet<IpAddr> = claimed.union(&contested).copied().collect();
        let fresh = pick(engine, network, id, &avoided)?;
        let update = crate::pve::ConfigUpdate {
            description: Some(engine.naming.description_with_lease(id, &fresh)),
            ..Default::default()
        };
        super::provision::update_own_config(engine, id, node, &update)
            .await
            .map_err(|err| err.during(Step::Configure))?;
    }
    Err(ProvisionError::PoolExhausted {
        pool: network.describe(),
        detail: format!("the address changed hands {CONFLICT_ATTEMPTS} times while this instance was created"),
    })
}

/// The lease this process holds for `id`.
pub(crate) fn held(engine: &Engine, id: &InstanceId) -> Option<Lease> {
    engine.leases.held(id)
}

/// The instance's VM is deleted: its addresses start their cooldown now.
pub(crate) fn freed(engine: &Engine, id: &InstanceId) {
    let Some(network) = &engine.config.static_network else { return };
    engine.leases.release(id, network.reuse_cooldown);
}

/// Drops the lease of an instance whose clone never came to exist.
pub(crate) fn release_unused(engine: &Engine, id: &InstanceId) {
    engine.leases.release(id, Duration::ZERO);
}

/// Records the lease of an instance found after a restart.
pub(crate) fn hold(engine: &Engine, id: &InstanceId, lease: Lease) {
    engine.leases.hold(id, lease);
}

/// Chooses free addresses and records them for `id` (see
/// [`LeaseBook::pick`]). Leases of instances the registry no longer tracks
/// are released here (into the cooldown).
fn pick(
    engine: &Engine,
    network: &StaticNetwork,
    id: &InstanceId,
    claimed: &HashSet<IpAddr>,
) -> Result<Lease, ProvisionError> {
    // The registry's lock first and alone (the engine's locks are leaves).
    let tracked: HashSet<InstanceId> = engine.registry.tracked_ids().into_iter().collect();
    engine.leases.pick(network, id, &tracked, claimed).map_err(|taken_count| ProvisionError::PoolExhausted {
        pool: network.describe(),
        detail: format!("{taken_count} addresses in use or cooling down"),
    })
}

/// Addresses claimed in Proxmox by VMs other than `own`: one listing, plus
/// the config of each pool VM whose tags carry no lease and whose lease this
/// process does not hold.
async fn claimed_elsewhere(engine: &Engine, own: Vmid) -> Result<HashSet<IpAddr>, ProvisionError> {
    let allocation_error = |error| ProvisionError::pve(Step::AllocateAddress, error);
    let vms = engine.pve.cluster_vms().await.map_err(allocation_error)?;
    let held_vmids = engine.leases.held_vmids();
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
/// addresses of its `ipconfigN`. A VM gone meanwhile claims nothing (with
/// privileges on the pool only, PVE answers a deleted VM with 403 on its
/// path, not 404: it is in no pool any more).
async fn config_claims(engine: &Engine, vm: &VmResource) -> Result<Vec<IpAddr>, PveError> {
    let config = match super::provision::retry_locked(|| engine.pve.vm_config(&vm.node, vm.vmid)).await {
        Ok(config) => config,
        Err(err) if super::provision::absent_from_pool(&err, vm.vmid) => return Ok(Vec::new()),
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
