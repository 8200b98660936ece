//! Suspend and resume with Proxmox's own calls: the request is sent at
//! once, its task is awaited in the background.

use std::sync::Arc;
use std::time::Duration;

use super::Partial;
use super::engine::Engine;
use super::naming::InstanceId;
use super::registry::{PowerAction, PowerRefused};

/// Suspends or resumes instances with Proxmox's own calls.
pub(crate) async fn power(engine: &Arc<Engine>, ids: Vec<String>, action: PowerAction) -> Partial<Vec<String>> {
    let verb = action.verb();
    let mut partial: Partial<Vec<String>> = Partial::default();
    for text in ids {
        let Ok(id) = text.parse::<InstanceId>() else {
            partial.failures.push(format!("could not {verb} instance {text}: it is not an instance of this plugin"));
            continue;
        };
        let node = match engine.registry.begin_power(&id, action) {
            Ok(node) => node,
            Err(PowerRefused::WrongPhase(phase)) => {
                partial.failures.push(format!("could not {verb} instance {text}: it is {phase:?}"));
                continue;
            }
            Err(PowerRefused::Unknown) => {
                partial.failures.push(format!("could not {verb} instance {text}: this group does not own it"));
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
                partial.failures.push(err.to_string());
            }
        }
    }
    partial
}
