//! What the running plugin says about itself: whether scale-up is held, why
//! and until when, and which VMIDs it skips. Only the plugin process knows
//! this; `check` reads it from the `/status` of `metrics_listen`.

use std::time::Duration;

use super::Report;
use crate::group::config::GroupConfig;
use crate::telemetry::StatusDocument;
pub use crate::telemetry::snapshot::format_unix;

const SUBJECT: &str = "running plugin";

/// Reads the running plugin's `/status`, when `metrics_listen` is set.
pub async fn fetch_status(address: std::net::SocketAddr) -> Result<StatusDocument, String> {
    let url = format!("http://{address}/status");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|err| format!("could not read {url}: {err}"))?;
    let response = client
        .get(&url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|err| format!("could not read {url}: {err}"))?;
    response.json::<StatusDocument>().await.map_err(|err| format!("could not read {url}: {err}"))
}

/// Reports the running plugin's scale-up state and quarantined VMIDs.
pub async fn check_running_plugin(config: &GroupConfig, report: &mut Report) {
    let Some(address) = config.metrics_listen else {
        report.pass(
            SUBJECT,
            "not asked: metrics_listen is not set (the plugin logs when scale-up is held; set metrics_listen for \
             check and status to read its live state)",
        );
        return;
    };
    let status = match fetch_status(address).await {
        Ok(status) => status,
        Err(err) => {
            report.warn(
                SUBJECT,
                format!("no answer on metrics_listen {address}: {err}"),
                "if the runner is up, run check on the runner's host (metrics_listen is usually a loopback address); \
                 before the runner starts, this is expected",
            );
            return;
        }
    };
    let fleet = &status.fleet;
    let breaker = &fleet.breaker;
    if breaker.held {
        let until = match breaker.next_attempt_unix {
            Some(at) => format!("until {} (then one instance tests the cause)", format_unix(at)),
            None => "until the instance testing the cause is ready".to_string(),
        };
        report.fail(
            "scale-up",
            format!(
                "held by the running plugin (pid {}) {until}: {}",
                status.pid,
                breaker.message.as_deref().unwrap_or("after repeated provisioning failures")
            ),
            "fix the cause named in the last failure (the plugin's log has each one); scale-up resumes on the first \
             instance that becomes ready. failure_threshold, failure_backoff and failure_backoff_max tune the hold",
        );
    } else {
        report.pass(
            "scale-up",
            format!(
                "not held; the running plugin (pid {}, {}) tracks {} instance{} of max_instances {}",
                status.pid,
                status.plugin,
                fleet.instances.iter().map(|entry| entry.count).sum::<u64>(),
                if fleet.instances.iter().map(|entry| entry.count).sum::<u64>() == 1 { "" } else { "s" },
                fleet.max_instances
            ),
        );
    }
    for vmid in &fleet.quarantined_vmids {
        report.warn(
            format!("VMID {}", vmid.vmid),
            format!("skipped by the running plugin until {}: {}", format_unix(vmid.until_unix), vmid.reason),
            format!(
                "if volumes of VMID {0} remain without a VM, free them: `pvesm list <storage> --vmid {0}`, then \
                 `pvesm free <volume>`",
                vmid.vmid
            ),
        );
    }
}
