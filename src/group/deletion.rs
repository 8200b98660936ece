//! Deletion (background): re-check ownership, stop, delete with `purge` and
//! `destroy-unreferenced-disks`, retry while PVE is briefly unavailable;
//! not-found counts as done. One that gives up within `delete_timeout`
//! goes back to Running so Runner can ask again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::InstanceState;
use super::engine::Engine;
use super::naming::InstanceId;
use crate::pve::Error as PveError;

/// Starts a deletion in the background.
pub(crate) fn spawn_deletion(engine: Arc<Engine>, id: InstanceId, reason: String) {
    engine.spawn_traced(Some(&id), id.vmid, delete(engine.clone(), id.clone(), reason));
}

/// Removes one of the group's VMs. Ownership is re-checked first: a VM whose
/// description does not carry this instance's marker is never touched.
pub(super) async fn delete(engine: Arc<Engine>, id: InstanceId, reason: String) {
    let Ok(_slot) = engine.delete_slots.acquire().await else { return };
    let started = Instant::now();
    let deadline = started + engine.config.delete_timeout;
    let pve = &engine.pve;
    let mut delay = Duration::from_millis(500);
    loop {
        let Some(node) = engine.registry.node_of(&id) else {
            // Update forgot it after its VM had left the listing: done.
            tracing::info!(instance = %id, vmid = %id.vmid, reason, duration_ms = started.elapsed().as_millis() as u64, confirmed_by = "listing", "instance deleted");
            engine.metrics.removed();
            super::lease::freed(&engine, &id);
            return;
        };
        let attempt = async {
            let config = match pve.vm_config(&node, id.vmid).await {
                Ok(config) => config,
                Err(err) if err.is_not_found() => return Ok(true),
                Err(err) => return Err(err),
            };
            let marker = config.get("description").map(String::as_str).unwrap_or_default();
            if engine.naming.owner_of_description(marker).as_ref() != Some(&id) {
                return Ok(false);
            }
            let _ = pve.update_vm_config(&node, id.vmid, &engine.label_for(&id, InstanceState::Deleting)).await;
            let status = pve.vm_status(&node, id.vmid).await?;
            if status.status != "stopped" {
                let stop = pve.stop_vm(&node, id.vmid, Some(Duration::from_secs(30))).await?;
                pve.wait_task(&stop, Duration::from_secs(60)).await?;
            }
            let destroy = pve.delete_vm(&node, id.vmid).await?;
            pve.wait_task(&destroy, engine.config.delete_timeout).await?;
            Ok::<bool, PveError>(true)
        };
        match attempt.await {
            Ok(true) => {
                tracing::info!(
                    instance = %id, vmid = %id.vmid, node, reason,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "instance deleted"
                );
                engine.metrics.removed();
                super::lease::freed(&engine, &id);
                return;
            }
            Ok(false) => {
                tracing::error!(instance = %id, vmid = %id.vmid, "VM {} no longer carries this instance's marker; not deleting it", id.vmid);
                engine.registry.forget(&id);
                return;
            }
            Err(err) if err.is_not_found() => {
                tracing::info!(instance = %id, vmid = %id.vmid, node, reason, duration_ms = started.elapsed().as_millis() as u64, "instance deleted");
                engine.metrics.removed();
                super::lease::freed(&engine, &id);
                return;
            }
            Err(err) => {
                if Instant::now() + delay > deadline {
                    tracing::error!(instance = %id, vmid = %id.vmid, error = %err, "could not delete instance within delete_timeout; Runner will ask again");
                    // Back to a state Runner can ask to remove again.
                    engine.registry.removal_failed(&id);
                    engine.metrics.removal_failed();
                    return;
                }
                tracing::debug!(instance = %id, error = %err, "deletion failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}
