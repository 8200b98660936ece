//! What an admin sees of a running group, against the simulator: the
//! metrics count what the simulator saw, `/status` and `check` say why
//! scale-up is held and until when, and a taken metrics port is bound once it
//! is free. (The log lines' ids: `tests/log_correlation.rs`.)

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeMap;
use std::time::Duration;

use engine_setup::*;
use fleeting_plugin_proxmox::check::{self, Selection, Status};
use fleeting_plugin_proxmox::group::InstanceGroup;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::simulate::{self, FaultMode, Options, Profile, Progress};
use fleeting_plugin_proxmox::telemetry::StatusDocument;

fn free_port() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Samples of one exposition: `name{labels}` → value.
fn samples(exposition: &str) -> BTreeMap<String, f64> {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every sample of `name` whose labels contain all of `having`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, having: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .filter(|(series, _)| having.iter().all(|label| series.contains(label)))
        .map(|(_, value)| value)
        .sum()
}

async fn simulate_with_metrics(faults: FaultMode) -> simulate::Summary {
    let options =
        Options { instances: 4, profile: Profile::Short, faults, seed: Some(7), metrics: true, ..Options::default() };
    let mut progress = Progress::quiet();
    simulate::run(&options, &mut progress).await.expect("the session runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_count_what_the_simulator_saw() {
    for faults in [FaultMode::None, FaultMode::Flaky] {
        let summary = simulate_with_metrics(faults).await;
        assert!(summary.passed(), "{}", summary.render());
        let exposition = summary.metrics.as_deref().expect("--metrics scraped the exposition");
        let samples = samples(exposition);
        let label = format!("faults {faults:?}");

        // Every request the simulator answered (or dropped) was counted once.
        let requests = sum(&samples, "fleeting_proxmox_pve_requests_total", &[]);
        assert_eq!(requests, summary.requests_total as f64, "{label}: requests");
        let errors = sum(&samples, "fleeting_proxmox_pve_requests_total", &["code=\"503\""]);
        assert_eq!(errors, summary.faults_injected.api_errors as f64, "{label}: injected 503s");
        let unanswered = sum(&samples, "fleeting_proxmox_pve_requests_total", &["code=\"none\""]);
        assert_eq!(unanswered, summary.faults_injected.dropped_connections as f64, "{label}: dropped connections");
        let latency_count = sum(&samples, "fleeting_proxmox_pve_request_duration_seconds_count", &[]);
        assert_eq!(latency_count, requests, "{label}: one latency sample per request");

        // Instances: each one that ran was provisioned once and removed once.
        let provisioned = sum(&samples, "fleeting_proxmox_instances_provisioned_total", &[]);
        let replaced = f64::from(summary.instances_replaced);
        assert_eq!(provisioned, summary.reached_running as f64, "{label}: provisioned");
        let removed = sum(&samples, "fleeting_proxmox_instances_removed_total", &[]);
        assert_eq!(removed, summary.reached_running as f64 + replaced, "{label}: removed");
        let total_phase =
            sum(&samples, "fleeting_proxmox_provision_phase_duration_seconds_count", &["phase=\"total\""]);
        assert_eq!(total_phase, provisioned, "{label}: one total duration per provisioned instance");
        for phase in ["clone_request", "clone_task", "configure", "start", "boot_to_agent", "address"] {
            let count = sum(
                &samples,
                "fleeting_proxmox_provision_phase_duration_seconds_count",
                &[&format!("phase=\"{phase}\"")],
            );
            assert!(count >= provisioned, "{label}: phase {phase} measured {count} times, {provisioned} provisioned");
        }

        // Failed tasks are provisioning failures of the clone, by reason class.
        let clone_failures =
            sum(&samples, "fleeting_proxmox_provision_failures_total", &["phase=\"clone\"", "reason=\"task_failed\""]);
        assert_eq!(clone_failures, summary.faults_injected.failed_tasks as f64, "{label}: failed clone tasks");
        let requested = sum(&samples, "fleeting_proxmox_instances_requested_total", &[]);
        assert!(requested >= f64::from(summary.target), "{label}: requested {requested}");

        // Labels stay bounded: no VMID or instance id is a label.
        for series in samples.keys() {
            assert!(!series.contains("vmid=") && !series.contains("instance="), "{series}");
            assert!(series.contains("group=\"fleeting\""), "every series names its group: {series}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_check_say_why_scale_up_is_held_and_until_when() {
    let mut scenario = fast_scenario();
    // A broken image: clones inherit an agent that never answers.
    scenario.vms[0].agent.never_up = true;
    let mut setup = setup(scenario).await;
    let address = free_port();
    setup.config["boot_timeout"] = "2s".into();
    setup.config["failure_threshold"] = 2.into();
    setup.config["failure_backoff"] = "10m".into();
    setup.config["failure_backoff_max"] = "20m".into();
    setup.config["metrics_listen"] = address.to_string().into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();

    assert_eq!(group.increase(2).await.unwrap().succeeded, 2);
    wait_until(&group, "the two failed instances removed", |s| s.is_empty()).await;
    let held = group.increase(3).await.unwrap();
    assert_eq!(held.succeeded, 0, "{held:?}");

    let status = check::running::fetch_status(address).await.expect("the plugin serves /status");
    let breaker = &status.fleet.breaker;
    assert!(breaker.held && !breaker.probing, "{breaker:?}");
    assert_eq!(breaker.cause.as_deref(), Some("boot: no address"));
    let next = breaker.next_attempt_unix.expect("held until a known time");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(next > now + 500.0 && next < now + 601.0, "about 10 minutes from now: {next} vs {now}");

    let metrics = reqwest::get(format!("http://{address}/metrics")).await.unwrap().text().await.unwrap();
    let samples = samples(&metrics);
    assert_eq!(sum(&samples, "fleeting_proxmox_scale_up_held", &[]), 1.0, "{metrics}");
    assert_eq!(sum(&samples, "fleeting_proxmox_scale_up_next_attempt_timestamp_seconds", &[]).round(), next.round());
    assert_eq!(
        sum(&samples, "fleeting_proxmox_provision_failures_total", &["phase=\"boot\"", "reason=\"no_address\""]),
        2.0
    );
    assert_eq!(sum(&samples, "fleeting_proxmox_instances_refused_total", &["reason=\"held\""]), 3.0);

    // check, run beside the plugin with the same plugin_config, reads it.
    let config_path = setup.dir.path().join("plugin_config.json");
    std::fs::write(&config_path, setup.config.to_string()).unwrap();
    let outcome = check::run(&Selection { config: config_path, ..Selection::default() }).await;
    let report = &outcome.reports[0];
    let finding = report.findings.iter().find(|f| f.subject == "scale-up").expect("a scale-up line");
    assert_eq!(finding.status, Status::Fail, "{}", report.render());
    let until = check::running::format_unix(next);
    assert!(finding.detail.contains(&format!("until {until}")), "{}", finding.detail);
    assert!(finding.detail.contains("boot: no address"), "{}", finding.detail);
    assert!(finding.fix.as_deref().unwrap_or_default().contains("failure_backoff"), "{finding:?}");

    group.shutdown().await.unwrap();
    setup.assert_no_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_metrics_port_is_bound_once_it_is_free() {
    let mut setup = setup(fast_scenario()).await;
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = blocker.local_addr().unwrap();
    setup.config["metrics_listen"] = address.to_string().into();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.expect("Init never fails for metrics");
    assert!(group.update().await.is_ok(), "the group serves Runner meanwhile");
    drop(blocker);

    let url = format!("http://{address}/metrics");
    let mut answered = None;
    for _ in 0..100 {
        if let Ok(response) = reqwest::get(&url).await
            && response.status().is_success()
        {
            answered = Some(response.text().await.unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = answered.expect("the listener binds once the port is free");
    assert!(text.contains("fleeting_proxmox_build_info{group=\"fleeting\""), "{text}");
    let status: StatusDocument = reqwest::get(format!("http://{address}/status")).await.unwrap().json().await.unwrap();
    assert_eq!(status.fleet.max_instances, 10);

    // Shutdown stops serving, so a restarted plugin can bind the port.
    group.shutdown().await.unwrap();
    let mut freed = false;
    for _ in 0..50 {
        if std::net::TcpListener::bind(address).is_ok() {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "the port is free after Shutdown");
}
