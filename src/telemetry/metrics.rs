//! Every metric of one instance group, under the `fleeting_proxmox_` prefix
//! with the group as a constant label. Names and units follow Prometheus'
//! conventions (`_seconds`, `_total`); label values come from closed sets
//! (phases, nodes, API operations, status codes, reason classes), never
//! from VMIDs or instance ids.
//!
//! Counters restart at zero with the plugin process (Runner restarts it at
//! will): `rate()` and `increase()` handle that. What an alert must see
//! across a restart is a gauge computed from the group's state at scrape
//! time (instances by phase, the oldest creating instance, the breaker,
//! quarantined VMIDs), which a restart does not lose.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, text};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::snapshot::FleetSnapshot;
use crate::pve::{RequestObserver, TicketEvent};

/// A step of provisioning one instance whose duration is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProvisionPhase {
    /// From choosing a VMID until PVE accepted the clone.
    CloneRequest,
    /// The clone task, until the new VM's config is free.
    CloneTask,
    /// Tags, cloud-init and disk growth.
    Configure,
    /// The start task.
    Start,
    /// From the started VM until the guest agent first answers.
    BootToAgent,
    /// From the agent's first answer until it reports a usable address.
    Address,
    /// From the clone request until the instance is running.
    Total,
}

impl ProvisionPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CloneRequest => "clone_request",
            Self::CloneTask => "clone_task",
            Self::Configure => "configure",
            Self::Start => "start",
            Self::BootToAgent => "boot_to_agent",
            Self::Address => "address",
            Self::Total => "total",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CopyLabels {
    node: String,
    state: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseNode {
    phase: &'static str,
    node: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PhaseLabel {
    phase: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailureLabels {
    phase: &'static str,
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    operation: &'static str,
    /// The HTTP status code, or `none` when no answer came.
    code: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OperationLabel {
    operation: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TicketLabel {
    event: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ActionLabel {
    action: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn phase_histogram() -> Histogram {
    // 0.25 s to about 17 min: a linked clone takes seconds, a full clone or
    // a slow boot minutes.
    Histogram::new(exponential_buckets(0.25, 2.0, 13))
}

fn request_histogram() -> Histogram {
    // 5 ms to about 20 s: most API calls answer in milliseconds, a
    // /cluster/resources of a big cluster or a loaded pveproxy in seconds.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

/// Where the fleet gauges come from at scrape time: the engine, held
/// weakly so the metrics never keep a shut-down group alive.
pub trait FleetSource: Send + Sync {
    fn snapshot(&self) -> FleetSnapshot;
}

/// The metrics of one instance group.
pub struct Metrics {
    registry: Registry,
    source: Mutex<Option<Weak<dyn FleetSource>>>,
    /// Serialises scrapes: gauges are cleared and set from one snapshot.
    scrape: Mutex<()>,

    // Set from the snapshot at scrape time.
    instances: Family<PhaseNode, Gauge>,
    oldest_in_phase: Family<PhaseLabel, FloatGauge>,
    max_instances: Gauge,
    impostors: Gauge,
    foreign_vms: Gauge,
    quarantined_vmids: Gauge,
    template_copies: Family<CopyLabels, Gauge>,
    retired_template_copies: Gauge,
    scale_up_held: Gauge,
    scale_up_probing: Gauge,
    scale_up_next_attempt: FloatGauge,
    breaker_failures: Gauge,

    // Events.
    phase_duration: HistogramFamily<PhaseLabel>,
    provisioned: Counter,
    failures: Family<FailureLabels, Counter>,
    requested: Counter,
    refused: Family<ReasonLabel, Counter>,
    adopted: Counter,
    half_provisioned_removed: Counter,
    taken_over: Family<ActionLabel, Counter>,
    removed: Counter,
    removal_failures: Counter,
    vmids_quarantined: Counter,
    update_duration: Histogram,
    pve_requests: Family<RequestLabels, Counter>,
    pve_request_duration: HistogramFamily<OperationLabel>,
    pve_retries: Family<OperationLabel, Counter>,
    pve_tickets: Family<TicketLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of the group `group`, all carrying `group="<group>"`.
    pub fn new(group: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "fleeting_proxmox",
            [("group".into(), group.to_string().into())].into_iter(),
        );
        let metrics = Self {
            source: Mutex::new(None),
            scrape: Mutex::new(()),
            instances: Family::default(),
            oldest_in_phase: Family::default(),
            max_instances: Gauge::default(),
            impostors: Gauge::default(),
            foreign_vms: Gauge::default(),
            quarantined_vmids: Gauge::default(),
            template_copies: Family::default(),
            retired_template_copies: Gauge::default(),
            scale_up_held: Gauge::default(),
            scale_up_probing: Gauge::default(),
            scale_up_next_attempt: FloatGauge::default(),
            breaker_failures: Gauge::default(),
            phase_duration: Family::new_with_constructor(phase_histogram),
            provisioned: Counter::default(),
            failures: Family::default(),
            requested: Counter::default(),
            refused: Family::default(),
            adopted: Counter::default(),
            half_provisioned_removed: Counter::default(),
            taken_over: Family::default(),
            removed: Counter::default(),
            removal_failures: Counter::default(),
            vmids_quarantined: Counter::default(),
            update_duration: Histogram::new(exponential_buckets(0.0001, 4.0, 10)),
            pve_requests: Family::default(),
            pve_request_duration: Family::new_with_constructor(request_histogram),
            pve_retries: Family::default(),
            pve_tickets: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "build",
            "The plugin's version and revision",
            Info::new(BuildLabels { version: crate::version::VERSION, revision: crate::version::REVISION }),
        );
        r.register("instances", "Instances by phase and node, as the plugin tracks them", metrics.instances.clone());
        r.register_with_unit(
            "oldest_instance_in_phase",
            "How long the oldest instance of each phase has been in it (a stuck creation shows here)",
            Unit::Seconds,
            metrics.oldest_in_phase.clone(),
        );
        r.register("max_instances", "The group's max_instances setting", metrics.max_instances.clone());
        r.register("impostors", "VMs with the group's tags but another marker (left alone)", metrics.impostors.clone());
        r.register("foreign_vms", "VMs in the pool that are not the group's (left alone)", metrics.foreign_vms.clone());
        r.register(
            "quarantined_vmids",
            "VMIDs skipped by allocation after a failure tied to them (orphaned volumes, held locks)",
            metrics.quarantined_vmids.clone(),
        );
        r.register(
            "template_copies",
            "1 for each target node's template copy state (current, staging, failed, missing) when nodes clone from copies",
            metrics.template_copies.clone(),
        );
        r.register(
            "retired_template_copies",
            "Copies of an older template waiting for their last linked clone to go before they are deleted",
            metrics.retired_template_copies.clone(),
        );
        r.register(
            "scale_up_held",
            "1 while scale-up is held after systematic provisioning failures",
            metrics.scale_up_held.clone(),
        );
        r.register(
            "scale_up_probing",
            "1 while one instance tests whether the cause of held scale-up is gone",
            metrics.scale_up_probing.clone(),
        );
        r.register_with_unit(
            "scale_up_next_attempt_timestamp",
            "When held scale-up tries again (Unix time; 0 when not held or waiting for a probe)",
            Unit::Seconds,
            metrics.scale_up_next_attempt.clone(),
        );
        r.register(
            "scale_up_failures",
            "Failures that counted toward holding scale-up since it last resumed",
            metrics.breaker_failures.clone(),
        );
        r.register_with_unit(
            "provision_phase_duration",
            "Duration of each provisioning phase of instances that got through it",
            Unit::Seconds,
            metrics.phase_duration.clone(),
        );
        r.register("instances_provisioned", "Instances that became ready", metrics.provisioned.clone());
        r.register(
            "provision_failures",
            "Failed provisioning attempts by phase and reason class",
            metrics.failures.clone(),
        );
        r.register("instances_requested", "Instances Increase was asked for", metrics.requested.clone());
        r.register(
            "instances_refused",
            "Instances Increase did not create, by reason (held, max_instances, error)",
            metrics.refused.clone(),
        );
        r.register("instances_adopted", "Running instances adopted after a restart", metrics.adopted.clone());
        r.register(
            "instances_half_provisioned_removed",
            "Instances found half-provisioned after a restart and removed",
            metrics.half_provisioned_removed.clone(),
        );
        r.register(
            "instances_taken_over",
            "VMs of the seed plugin taken over (adopted or deleted)",
            metrics.taken_over.clone(),
        );
        r.register("instances_removed", "Instances deleted", metrics.removed.clone());
        r.register(
            "instance_removal_failures",
            "Deletions that failed (retried by the next Update)",
            metrics.removal_failures.clone(),
        );
        r.register("vmids_quarantined", "VMIDs put in quarantine", metrics.vmids_quarantined.clone());
        r.register_with_unit(
            "update_duration",
            "Plugin time per Update (one /cluster/resources request included)",
            Unit::Seconds,
            metrics.update_duration.clone(),
        );
        r.register(
            "pve_requests",
            "Proxmox VE API requests by operation and HTTP status code (`none`: no answer)",
            metrics.pve_requests.clone(),
        );
        r.register_with_unit(
            "pve_request_duration",
            "Proxmox VE API request latency by operation",
            Unit::Seconds,
            metrics.pve_request_duration.clone(),
        );
        r.register("pve_retries", "Proxmox VE API requests sent again", metrics.pve_retries.clone());
        r.register(
            "pve_ticket_events",
            "Ticket logins, renewals and their failures (password credentials)",
            metrics.pve_tickets.clone(),
        );
        // Series that exist from the start at 0: rate() and increase() miss
        // the first increment of a series that appears already above 0.
        for reason in ["max_instances", "held", "ip_pool", "no_room", "error"] {
            drop(metrics.refused.get_or_create(&ReasonLabel { reason }));
        }
        for action in ["deleted", "claimed_for_adoption"] {
            drop(metrics.taken_over.get_or_create(&ActionLabel { action }));
        }
        for event in [TicketEvent::Login, TicketEvent::Renewed, TicketEvent::RenewalFailed, TicketEvent::LoginFailed] {
            drop(metrics.pve_tickets.get_or_create(&TicketLabel { event: event.as_str() }));
        }
        Self { registry, ..metrics }
    }

    /// Where the fleet gauges come from at scrape time.
    pub fn set_source(&self, source: Weak<dyn FleetSource>) {
        *self.source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(source);
    }

    /// The group's state now, if its source is alive.
    pub fn snapshot(&self) -> Option<FleetSnapshot> {
        let source = self.source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()?;
        Some(source.upgrade()?.snapshot())
    }

    /// The exposition in the OpenMetrics text format, gauges freshly set.
    pub fn encode(&self) -> String {
        let _scrape = self.scrape.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(snapshot) = self.snapshot() {
            self.set_fleet(&snapshot);
        }
        let mut out = String::new();
        if text::encode(&mut out, &self.registry).is_err() {
            // Writing to a String cannot fail; keep the scrape valid anyway.
            out.clear();
            let _ = writeln!(out, "# EOF");
        }
        out
    }

    fn set_fleet(&self, snapshot: &FleetSnapshot) {
        self.instances.clear();
        for entry in &snapshot.instances {
            let phase = phase_name(&entry.phase);
            self.instances.get_or_create(&PhaseNode { phase, node: entry.node.clone() }).set(entry.count as i64);
        }
        self.oldest_in_phase.clear();
        for (phase, seconds) in &snapshot.oldest_in_phase_seconds {
            self.oldest_in_phase.get_or_create(&PhaseLabel { phase: phase_name(phase) }).set(*seconds);
        }
        self.max_instances.set(i64::from(snapshot.max_instances));
        self.impostors.set(snapshot.impostors as i64);
        self.foreign_vms.set(snapshot.foreign_vms as i64);
        self.quarantined_vmids.set(snapshot.quarantined_vmids.len() as i64);
        self.template_copies.clear();
        for copy in &snapshot.template_copies {
            let labels = CopyLabels { node: copy.node.clone(), state: copy_state_name(&copy.state) };
            self.template_copies.get_or_create(&labels).set(1);
        }
        self.retired_template_copies.set(snapshot.retired_template_copies as i64);
        let breaker = &snapshot.breaker;
        self.scale_up_held.set(i64::from(breaker.held));
        self.scale_up_probing.set(i64::from(breaker.probing));
        self.scale_up_next_attempt.set(breaker.next_attempt_unix.unwrap_or(0.0));
        self.breaker_failures.set(i64::from(breaker.failures));
    }

    // --- Recording ------------------------------------------------------

    pub fn phase_done(&self, phase: ProvisionPhase, took: Duration) {
        self.phase_duration.get_or_create(&PhaseLabel { phase: phase.as_str() }).observe(took.as_secs_f64());
    }

    pub fn provisioned(&self) {
        self.provisioned.inc();
    }

    /// A provisioning attempt failed in `phase` for `reason` (both from closed sets).
    pub fn failure(&self, phase: &'static str, reason: &'static str) {
        self.failures.get_or_create(&FailureLabels { phase, reason }).inc();
    }

    /// Increase was asked for `count` instances.
    pub fn requested(&self, count: u32) {
        self.requested.inc_by(u64::from(count));
    }

    /// `count` requested instances were not created, for `reason`
    /// (`max_instances`, `held`, `error`).
    pub fn refused(&self, reason: &'static str, count: u32) {
        if count > 0 {
            self.refused.get_or_create(&ReasonLabel { reason }).inc_by(u64::from(count));
        }
    }

    pub fn adopted(&self) {
        self.adopted.inc();
    }

    pub fn half_provisioned_removed(&self) {
        self.half_provisioned_removed.inc();
    }

    /// A VM of the seed plugin was taken over: `adopted` or `deleted`.
    pub fn taken_over(&self, action: &'static str) {
        self.taken_over.get_or_create(&ActionLabel { action }).inc();
    }

    pub fn removed(&self) {
        self.removed.inc();
    }

    pub fn removal_failed(&self) {
        self.removal_failures.inc();
    }

    pub fn vmid_quarantined(&self) {
        self.vmids_quarantined.inc();
    }

    pub fn update_took(&self, took: Duration) {
        self.update_duration.observe(took.as_secs_f64());
    }
}

impl RequestObserver for Metrics {
    fn request(&self, operation: &'static str, status: Option<u16>, elapsed: Duration) {
        let code = status.map_or("none", status_code);
        self.pve_requests.get_or_create(&RequestLabels { operation, code }).inc();
        self.pve_request_duration.get_or_create(&OperationLabel { operation }).observe(elapsed.as_secs_f64());
    }

    fn retry(&self, operation: &'static str) {
        self.pve_retries.get_or_create(&OperationLabel { operation }).inc();
    }

    fn ticket(&self, event: TicketEvent) {
        self.pve_tickets.get_or_create(&TicketLabel { event: event.as_str() }).inc();
    }
}

/// The label for an HTTP status: the codes PVE answers with by name, the
/// rest by class, so the set stays closed.
fn status_code(status: u16) -> &'static str {
    const NAMED: [(u16, &str); 12] = [
        (200, "200"),
        (400, "400"),
        (401, "401"),
        (403, "403"),
        (404, "404"),
        (500, "500"),
        (501, "501"),
        (502, "502"),
        (503, "503"),
        (504, "504"),
        (595, "595"),
        (596, "596"),
    ];
    if let Some((_, name)) = NAMED.iter().find(|(code, _)| *code == status) {
        return name;
    }
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The phase names the engine reports, as static label values.
fn phase_name(phase: &str) -> &'static str {
    match phase {
        "creating" => "creating",
        "running" => "running",
        "suspending" => "suspending",
        "suspended" => "suspended",
        "resuming" => "resuming",
        "deleting" => "deleting",
        "adopting" => "adopting",
        _ => "other",
    }
}

fn copy_state_name(state: &str) -> &'static str {
    match state {
        "current" => "current",
        "staging" => "staging",
        "failed" => "failed",
        "missing" => "missing",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_every_metric_with_the_group_label() {
        let metrics = Metrics::new("ci");
        metrics.request("get_cluster_resources", Some(200), Duration::from_millis(12));
        metrics.request("get_cluster_resources", None, Duration::from_secs(10));
        metrics.retry("get_cluster_resources");
        metrics.failure("clone", "task_failed");
        metrics.requested(5);
        metrics.refused("held", 3);
        metrics.refused("error", 0);
        let text = metrics.encode();
        for line in [
            "fleeting_proxmox_pve_requests_total{group=\"ci\",operation=\"get_cluster_resources\",code=\"200\"} 1",
            "fleeting_proxmox_pve_requests_total{group=\"ci\",operation=\"get_cluster_resources\",code=\"none\"} 1",
            "fleeting_proxmox_pve_retries_total{group=\"ci\",operation=\"get_cluster_resources\"} 1",
            "fleeting_proxmox_provision_failures_total{group=\"ci\",phase=\"clone\",reason=\"task_failed\"} 1",
            "fleeting_proxmox_instances_requested_total{group=\"ci\"} 5",
            "fleeting_proxmox_instances_refused_total{group=\"ci\",reason=\"held\"} 3",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(
            text.lines().any(|l| l == "fleeting_proxmox_instances_refused_total{group=\"ci\",reason=\"error\"} 0"),
            "known series start at 0: {text}"
        );
        assert!(text.contains("fleeting_proxmox_build_info{group=\"ci\",version=\""), "{text}");
        assert!(text.contains("# TYPE fleeting_proxmox_pve_request_duration_seconds histogram"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"));
    }

    #[test]
    fn status_codes_stay_a_closed_set() {
        assert_eq!(status_code(503), "503");
        assert_eq!(status_code(418), "4xx");
        assert_eq!(status_code(599), "5xx");
        assert_eq!(status_code(302), "3xx");
    }
}
