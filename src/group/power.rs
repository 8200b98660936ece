//! Suspend and resume with Proxmox's own calls: the request is sent at
//! once, its task is awaited in the background.

use std::sync::Arc;
use std::time::Duration;

use super::engine::Engine;
use super::naming::InstanceId;
use super::registry::{PowerAction, PowerRefused};
use super::{Error, Partial};

/// Suspends or resumes instances with Proxmox's own calls.
pub(crate) async fn power(engine: &Arc<Engine>, ids: Vec<String>, action: PowerAction) -> Partial<Vec<String>> {
    let verb = action.verb();
    let mut partial: Partial<Vec<String>> = Partial::default();
    for text in ids {
        let Ok(id) = text.parse::<InstanceId>() else {
            partial.failures.push(Error::NotAnInstance { verb, id: text });
            continue;
        };
        let node = match engine.registry.begin_power(&id, action) {
            Ok(node) => node,
            Err(PowerRefused::WrongPhase(phase)) => {
                partial.failures.push(Error::WrongPhase { verb, id: text, phase: phase.as_str() });
                continue;
            }
            Err(PowerRefused::Unknown) => {
                partial.failures.push(Error::NotOwned { verb, id: text });
                continue;
            }
        };
        let result = match action {
            PowerAction::Suspend => engine.pve.suspend_vm(&node, id.vmid).await,
            PowerAction::Resume => engine.pve.resume_vm(&node, id.vmid).await,
        };
        match result {
            Ok(upid) => {
                partial.succeeded.push(text);
                let task_engine = engine.clone();
                engine.background.spawn(async move {
                    let ok = task_engine.pve.wait_task(&upid, Duration::from_secs(120)).await.is_ok();
                    task_engine.registry.end_power(&id, action, ok);
                });
            }
            Err(err) => {
                engine.registry.power_refused(&id, action);
                partial.failures.push(Error::Pve(err));
            }
        }
    }
    partial
}
