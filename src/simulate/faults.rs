//! The fault plan of `--faults flaky`: what a bad day on a real cluster
//! looks like, through the simulator's fault API.

use crate::sim::{Admin, FaultRule};

/// The clone request's operationId (the task it starts fails once).
const CLONE: &str = "post_nodes_node_qemu_vmid_clone";

/// How long (simulated seconds) the slow instance's guest agent stays
/// silent after it would normally answer; well inside the boot timeout.
pub const SLOW_AGENT_SECONDS: f64 = 40.0;

/// Adds the flaky rules to a running simulator.
pub fn inject_flaky(admin: &Admin) {
    // Transient errors on any request: reads are retried by the client,
    // failed writes are the plugin's to handle (or Runner retries Increase).
    admin.add_fault(FaultRule { error_rate: 0.05, status: 503, ..FaultRule::default() });
    // A proxy that drops the odd connection without an answer.
    admin.add_fault(FaultRule { drop_rate: 0.02, ..FaultRule::default() });
    // One clone task fails on the node (e.g. storage trouble): the plugin
    // must clean up the half-created VM and back off.
    admin.add_fault(FaultRule { operation: CLONE.into(), task_failure_rate: 1.0, remaining: Some(1), ..FaultRule::default() });
}
