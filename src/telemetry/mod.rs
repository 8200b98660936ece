//! Telemetry: the group's metrics in the Prometheus/OpenMetrics text format,
//! and the `metrics_listen` endpoint that serves them with a JSON status.
//!
//! - [`metrics`]: every metric, its name, unit and labels (all bounded: no
//!   VMID or instance id is ever a label value), and the recording calls the
//!   engine and the PVE client make;
//! - [`snapshot`]: the group's state at one moment (counts by phase and
//!   node, the breaker, quarantined VMIDs), which the engine provides on
//!   demand; gauges are set from it at scrape time, so a scrape is always
//!   current and Update pays nothing;
//! - [`listener`]: the HTTP listener (`/metrics`, `/status`), bound in the
//!   background and bound again while its port is taken.
//!
//! Depends on [`crate::pve`] only for the observer trait the client calls.

pub mod listener;
pub mod metrics;
pub mod snapshot;

pub use listener::MetricsListener;
pub use metrics::{Metrics, ProvisionPhase};
pub use snapshot::{BreakerSnapshot, FleetSnapshot, StatusDocument, TemplateCopyState};
