//! The fault plan of `--faults flaky`: what a bad day on a real cluster
//! looks like, through the simulator's fault API.

use crate::sim::{Admin, FaultRule};

/// The clone request's operationId (the task it starts fails once).
const CLONE: &str = "post_nodes_node_qemu_vmid_clone";

/// How long (simulated seconds) the slow instance's guest agent stays
/// silent after it would normally answer; well inside the boot timeout.
pub const SLOW_AGENT_SECONDS: f64 = 40.0;

/// The first clone task fails on the node (e.g. storage trouble): the
/// plugin must clean up the half-created VM and back off. Injected alone,
/// so no other fault answers that clone request first; returns the rule id
/// (the rule disappears once it has struck).
pub fn inject_clone_failure(admin: &Admin) -> u64 {
    admin.add_fault(FaultRule {
        operation: CLONE.into(),
        task_failure_rate: 1.0,
        remaining: Some(1),
        ..FaultRule::default()
    })
}

/// Transient trouble on any request from then on: reads are retried by the
/// client, failed writes are the plugin's to handle (or Runner asks again).
pub fn inject_transient(admin: &Admin) {
    admin.add_fault(FaultRule { error_rate: 0.05, status: 503, ..FaultRule::default() });
    // A proxy that drops the odd connection without an answer.
    admin.add_fault(FaultRule { drop_rate: 0.02, ..FaultRule::default() });
}
