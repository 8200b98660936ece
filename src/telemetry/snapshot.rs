//! The group's state at one moment, as the engine reports it: what the
//! gauges show at a scrape and what `/status` returns (and `check` and
//! `status` read back from a running plugin).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Instances in one phase on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceCount {
    /// `creating`, `running`, `suspending`, `suspended`, `resuming`,
    /// `deleting` or `adopting`.
    pub phase: String,
    pub node: String,
    pub count: u64,
}

/// The scale-up breaker (see `group::breaker`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BreakerSnapshot {
    /// Scale-up is held (open or probing).
    pub held: bool,
    /// One instance is being created to test whether the cause is gone.
    pub probing: bool,
    /// When the next Increase may create an instance again (Unix seconds);
    /// `None` when it is not held, or is waiting for a probe.
    pub next_attempt_unix: Option<f64>,
    /// Failures that counted since it last closed.
    pub failures: u32,
    /// The cause class of the last counted failure, e.g. `boot: no address`.
    pub cause: Option<String>,
    /// Why scale-up is held and until when, as the logs say it.
    pub message: Option<String>,
}

/// One quarantined VMID.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantinedVmid {
    pub vmid: u32,
    pub reason: String,
    /// Unix seconds.
    pub until_unix: f64,
}

/// One target node's template copy (see `group::template_copy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateCopyState {
    pub node: String,
    /// `current` (complete, of the template as it is now), `staging` (being
    /// made), `failed` (the last staging failed; it is tried again) or
    /// `missing` (none yet).
    pub state: String,
    /// The current copy's VMID.
    pub vmid: Option<u32>,
    /// How long the staging has been running, seconds.
    pub staging_seconds: Option<f64>,
    /// Why the last staging failed.
    pub reason: Option<String>,
}

/// What the engine reports at a scrape or a `/status` request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FleetSnapshot {
    pub group: String,
    pub pool: String,
    pub max_instances: u32,
    pub instances: Vec<InstanceCount>,
    /// How long the oldest instance of each phase has been in it, seconds.
    pub oldest_in_phase_seconds: BTreeMap<String, f64>,
    /// VMs with the group's tags but another marker: left alone.
    pub impostors: u64,
    /// VMs in the pool that are not the group's: left alone.
    pub foreign_vms: u64,
    pub quarantined_vmids: Vec<QuarantinedVmid>,
    pub breaker: BreakerSnapshot,
    /// Each node's template copy, when nodes clone from copies.
    #[serde(default)]
    pub template_copies: Vec<TemplateCopyState>,
    /// Copies of an older template (or for a node no longer targeted)
    /// waiting for their last linked clone to go before they are deleted.
    #[serde(default)]
    pub retired_template_copies: u64,
}

impl FleetSnapshot {
    /// Instances in `phase`, on every node.
    pub fn count(&self, phase: &str) -> u64 {
        self.instances.iter().filter(|entry| entry.phase == phase).map(|entry| entry.count).sum()
    }
}

/// The document `/status` serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    /// `fleeting-plugin-proxmox 0.1.0 (rev …)`.
    pub plugin: String,
    pub pid: u32,
    /// When the plugin process started serving this group (Unix seconds).
    pub started_unix: f64,
    pub fleet: FleetSnapshot,
}

/// `at` (a monotonic instant) as Unix seconds, given `now` for both clocks.
pub fn unix_seconds(at: Instant, now: Instant) -> f64 {
    let wall = SystemTime::now();
    let wall = if at >= now { wall + (at - now) } else { wall - (now - at) };
    wall.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64()
}

/// Unix seconds as UTC, e.g. `2026-12-02 13:05:09 UTC`.
pub fn format_unix(seconds: f64) -> String {
    chrono::DateTime::from_timestamp(seconds as i64, 0)
        .map(|at| at.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| format!("{seconds:.0} (Unix time)"))
}

/// The current time as Unix seconds.
pub fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_secs_f64()
}
