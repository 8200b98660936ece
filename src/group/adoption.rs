//! Adoption (background): a VM of the group found without the engine
//! knowing it (after a restart) is adopted when it is ready and cleaned up
//! when it is half-provisioned; an untagged VM of the pool is ours when its
//! description says so, and remembered as foreign otherwise.

use std::sync::Arc;

use super::InstanceState;
use super::deletion::delete;
use super::engine::{Engine, PORT_PROBE_TIMEOUT, choose_addresses};
use super::ip_pool::Lease;
use super::naming::InstanceId;
use super::provision::{reports_lease, retry_locked};
use crate::pve::{Error as PveError, VmResource};

/// A VM of the group found without the engine knowing it (after a restart):
/// ready ones are adopted, half-provisioned ones removed.
pub(crate) fn spawn_adoption(engine: Arc<Engine>, id: InstanceId, vm: VmResource) {
    engine.spawn_traced(Some(&id), id.vmid, adopt(engine.clone(), id.clone(), vm));
}

/// Why a found instance is not adopted.
enum NotAdopted {
    /// PVE could not be asked (its answer says nothing about the VM); decide later.
    Undecided(PveError),
    /// Ours but not ready: remove it.
    Leftover(String),
}
use NotAdopted::{Leftover, Undecided};

async fn adopt(engine: Arc<Engine>, id: InstanceId, vm: VmResource) {
    let pve = &engine.pve;
    let verdict = async {
        // A transient error says nothing about the VM: never remove a
        // possibly healthy instance because the API hiccuped.
        let config = match retry_locked(|| pve.vm_config(&vm.node, id.vmid)).await {
            Ok(config) => config,
            Err(err) => return Err(Undecided(err)),
        };
        let marker = config.get("description").map(String::as_str).unwrap_or_default();
        if engine.naming.owner_of_description(marker).as_ref() != Some(&id) {
            return Ok(None);
        }
        // Renamed for removal before the restart: finish the removal (only
        // when the removal name is distinct; seed configs may use one name).
        let names = &engine.config;
        let removal_name_distinct = names.instance_name_removing != names.instance_name_running
            && names.instance_name_removing != names.instance_name_creating;
        if removal_name_distinct && config.get("name") == Some(&names.instance_name_removing) {
            return Err(Leftover("its removal was under way before the restart".to_string()));
        }
        // Its password came from an earlier process and is known to nobody now.
        if engine.password.is_some() {
            return Err(Leftover("its generated password belonged to an earlier plugin process".into()));
        }
        // The key is derived from the credentials: only a changed secret
        // (a rotated token) leaves an instance Runner cannot log in to.
        if let Some(key) = &engine.key
            && !installed_keys(&config).contains(key.public_openssh.trim())
        {
            return Err(Leftover(
                "it was given another SSH key (the PVE credentials changed since), so Runner could not log in".into(),
            ));
        }
        let status = retry_locked(|| pve.vm_status(&vm.node, id.vmid)).await.map_err(Undecided)?;
        if status.status != "running" || status.lock.is_some() {
            return Err(Leftover(format!("found {} after a restart, not ready", status.status)));
        }
        let lease = match &engine.config.static_network {
            Some(_) => Some(adopted_lease(&engine, &id, &vm, &config)?),
            None => None,
        };
        // Ready means answering with an address now; one still booting was
        // half-provisioned when the plugin stopped, and is removed.
        let addresses = match lease {
            Some(lease) if !engine.config.agent_required => {
                let addresses = engine.lease_addresses(&lease);
                let Some(address) = engine.connector_address(&addresses) else {
                    return Err(Leftover("its lease has no address".into()));
                };
                let probe = tokio::time::timeout(PORT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await;
                if !matches!(probe, Ok(Ok(_))) {
                    return Err(Leftover(format!(
                        "half-provisioned after a restart: {address} does not accept connections"
                    )));
                }
                addresses
            }
            _ => {
                let interfaces = match retry_locked(|| pve.guest_interfaces(&vm.node, id.vmid)).await {
                    Ok(interfaces) => interfaces,
                    Err(err) if err.is_retryable() => return Err(Undecided(err)),
                    Err(err) => return Err(Leftover(format!("half-provisioned after a restart: {err}"))),
                };
                match &lease {
                    Some(lease) if reports_lease(&interfaces, lease) => engine.lease_addresses(lease),
                    Some(_) => Default::default(),
                    None => choose_addresses(&engine.config, &interfaces, config.get("net0").map(String::as_str)),
                }
            }
        };
        if addresses.is_empty() {
            return Err(Leftover("half-provisioned after a restart: the guest agent reports no address yet".into()));
        }
        // Killed before its rename: the name tells the state, as for any instance.
        if config.get("name") != Some(&engine.config.instance_name_running) {
            let rename = engine.label_for(&id, InstanceState::Running);
            if let Err(err) = retry_locked(|| pve.update_vm_config(&vm.node, id.vmid, &rename)).await {
                tracing::warn!(vmid = %id.vmid, error = %err, "could not rename the adopted VM; it is running anyway");
            }
        }
        Ok(Some(addresses))
    };
    match verdict.await {
        Ok(Some(addresses)) => {
            engine.registry.adopted(&id, addresses);
            engine.metrics.adopted();
            tracing::info!(instance = %id, vmid = %id.vmid, node = vm.node, "instance running: adopted after a restart");
        }
        Ok(None) => {
            tracing::warn!(instance = %id, vmid = %id.vmid, "VM {} carries this group's tags but not its marker; ignoring it", id.vmid);
            engine.registry.impostor(id);
        }
        Err(Undecided(err)) => {
            // Forget it; the next Update finds it again and retries.
            if err.is_retryable() || err.is_not_found() {
                tracing::debug!(instance = %id, error = %err, "could not check a found instance yet");
            } else {
                tracing::warn!(instance = %id, error = %err, "could not check a found instance; leaving it alone");
            }
            engine.registry.adoption_undecided(&id);
        }
        Err(Leftover(reason)) => {
            if engine.registry.leftover(&id) {
                engine.metrics.half_provisioned_removed();
                tracing::info!(instance = %id, vmid = %id.vmid, reason, "removing a leftover instance");
                delete(engine, id, reason).await;
            }
        }
    }
}

/// The static lease of a found instance: its tags' lease, which its
/// `ipconfig0` must hold (a VM configured by hand since, or killed before
/// its configuration, is not adopted). Held by this process from here on.
fn adopted_lease(
    engine: &Engine,
    id: &InstanceId,
    vm: &VmResource,
    config: &std::collections::BTreeMap<String, String>,
) -> Result<Lease, NotAdopted> {
    let lease = Lease::from_tags(&vm.tags);
    if lease.is_empty() {
        return Err(Leftover("it carries no static address lease".into()));
    }
    super::lease::hold(engine, id, lease);
    // The pool is the desired state: an address it no longer hands out
    // (the pool changed since) is replaced, as is a family it now has.
    if let Some(network) = &engine.config.static_network {
        let fits = |pool: Option<&super::ip_pool::AddressPool>, ip: Option<std::net::IpAddr>| match (pool, ip) {
            (Some(pool), Some(ip)) => pool.allows(ip),
            (None, None) => true,
            _ => false,
        };
        let v4 = lease.v4.map(std::net::IpAddr::V4);
        let v6 = lease.v6.map(std::net::IpAddr::V6);
        if !fits(network.v4.as_ref(), v4) || !fits(network.v6.as_ref(), v6) {
            return Err(Leftover(format!(
                "its lease ({}) is not one the static pool {} hands out",
                lease.addresses().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", "),
                network.describe()
            )));
        }
    }
    let configured = Lease::from_ipconfig(config.get("ipconfig0").map(String::as_str).unwrap_or_default());
    if configured != lease {
        return Err(Leftover(format!(
            "its ipconfig0 ({}) does not hold its lease ({})",
            config.get("ipconfig0").map(String::as_str).unwrap_or("none"),
            lease.addresses().map(|ip| ip.to_string()).collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(lease)
}

/// An untagged VM in the pool: ours if its description says so (a crash
/// between clone and tagging), then removed; otherwise remembered as foreign.
pub(crate) fn spawn_untagged_check(engine: Arc<Engine>, vm: VmResource) {
    engine.spawn_traced(None, vm.vmid, check_untagged(engine.clone(), vm));
}

async fn check_untagged(engine: Arc<Engine>, vm: VmResource) {
    let Ok(config) = engine.pve.vm_config(&vm.node, vm.vmid).await else { return };
    let marker = config.get("description").map(String::as_str).unwrap_or_default();
    match engine.naming.owner_of_description(marker) {
        Some(id) if id.vmid == vm.vmid => {
            if engine.registry.track_deleting(id.clone(), &vm.node) {
                engine.metrics.half_provisioned_removed();
                tracing::info!(instance = %id, vmid = %vm.vmid, "removing a half-provisioned instance left by an earlier run");
                delete(engine, id, "half-provisioned by an earlier run".into()).await;
            }
        }
        _ => {
            if engine.takeover_open() {
                match super::takeover::claim(&engine, &vm, &config).await {
                    super::takeover::Claim::NotSeed => {}
                    // Claimed, or judged again on the next Update.
                    super::takeover::Claim::Claimed | super::takeover::Claim::Later => return,
                }
            }
            engine.registry.mark_foreign(vm.vmid);
        }
    }
}

/// The public keys cloud-init installs (`sshkeys`, which PVE stores
/// URL-encoded).
fn installed_keys(config: &std::collections::BTreeMap<String, String>) -> String {
    let stored = config.get("sshkeys").map(String::as_str).unwrap_or_default();
    percent_encoding::percent_decode_str(stored).decode_utf8_lossy().into_owned()
}
