//! The session driver: GitLab Runner's part, played against the real
//! fleeting adapter and Proxmox engine, with the simulator as the cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tonic::Request;

use super::faults::{self, SLOW_AGENT_SECONDS};
use super::progress::Progress;
use super::summary::{FaultCounts, InstanceReport, Summary, TimeStats};
use super::{FaultMode, Network, Options, STATIC_POOL_SIZE, SimulateError, real_time};
use crate::fleeting::FleetingService;
use crate::fleeting::proto::instance_group_server::InstanceGroup as _;
use crate::fleeting::proto::update_response::State;
use crate::fleeting::proto::{self as wire};
use crate::group::engine::ProxmoxGroup;
use crate::sim::config::defaults;
use crate::sim::{Admin, AgentState, SimConfig, SimHandle, Simulator};

/// Updates counted for the steady-state requests-per-Update figure.
const STEADY_UPDATES: u64 = 5;

/// What the session knows about one instance id.
struct Tracked {
    state: State,
    /// Real and simulated time of the Increase that asked for it.
    requested: (Instant, f64),
    report: Option<InstanceReport>,
    /// Listed by the last Update.
    listed: bool,
    /// Already counted as replaced / asked to be removed.
    replaced: bool,
    decrease_sent: bool,
}

/// Everything measured while driving.
#[derive(Default)]
struct Tally {
    updates: u64,
    requests_before_reset: u64,
    faults_before_reset: FaultCounts,
    requests_per_update: f64,
    instances_replaced: u32,
    increase_shortfalls: u32,
    unhealthy_removed: u32,
    /// Most instances running (and not being removed) at once.
    peak_running: u32,
    slow_agents: u64,
    connect_errors: Vec<String>,
    not_removed: Vec<String>,
}

/// Runs one session: scale up to `options.instances`, connect to each,
/// scale down, and report what the simulator saw.
pub async fn run(options: &Options, progress: &mut Progress) -> Result<Summary, SimulateError> {
    if options.instances == 0 {
        return Err(SimulateError::NoInstances);
    }
    let mut scenario = options.profile.scenario();
    if let Some(scale) = options.time_scale {
        if !(scale.is_finite() && scale > 0.0) {
            return Err(SimulateError::TimeScale(scale));
        }
        scenario.time_scale = scale;
    }
    scenario.seed = options.seed;
    let time_scale = scenario.time_scale;
    // With a static pool the template has no agent; its guests open this
    // port on their static loopback address once booted.
    let guest_port = match options.network {
        Network::Dhcp => None,
        Network::Static => {
            if options.instances > STATIC_POOL_SIZE {
                return Err(SimulateError::StaticPool(options.instances));
            }
            let port = free_loopback_port().map_err(SimulateError::Metrics)?.port();
            if let Some(template) = scenario.vms.iter_mut().find(|vm| vm.vmid == defaults::TEMPLATE_VMID) {
                template.config.insert("agent".into(), "0".into());
                template.agent.service_port = Some(port);
            }
            Some(port)
        }
    };

    progress.phase(&format!(
        "starting the Proxmox VE simulator (profile {}, {}x time, faults: {}, network: {})",
        options.profile.name(),
        time_scale,
        options.faults.name(),
        options.network.name()
    ));
    let sim = Simulator::start(SimConfig::new(scenario)).await?;
    let started = Instant::now();
    let result = drive(&sim, options, time_scale, guest_port, progress).await;
    let shutdown = sim.shutdown().await;
    let mut summary = result?;
    shutdown?;
    summary.wall_seconds_total = started.elapsed().as_secs_f64();
    progress.finish();
    Ok(summary)
}

async fn drive(
    sim: &SimHandle,
    options: &Options,
    time_scale: f64,
    guest_port: Option<u16>,
    progress: &mut Progress,
) -> Result<Summary, SimulateError> {
    let admin = sim.admin();
    // The credentials file an admin would write: the built-in API token.
    let dir = tempfile::tempdir().map_err(SimulateError::Credentials)?;
    let credentials = dir.path().join("pve-credentials.json");
    write_private(
        &credentials,
        &serde_json::json!({ "token_id": defaults::TOKEN_ID, "token_secret": defaults::TOKEN_SECRET }).to_string(),
    )
    .map_err(SimulateError::Credentials)?;

    // The plugin's deadlines run on the real clock; scale PVE-sized ones.
    let deadline = |sim_seconds: f64| {
        humantime::format_duration(real_time(sim_seconds, time_scale, Duration::from_secs(30))).to_string()
    };
    let metrics_listen = match (options.metrics_listen, options.metrics) {
        (Some(address), _) => Some(address),
        (None, true) => Some(free_loopback_port().map_err(SimulateError::Metrics)?),
        (None, false) => None,
    };
    let mut config = serde_json::json!({
        "url": sim.base_url(),
        "tls_fingerprint": sim.fingerprint(),
        "credentials_file_path": credentials,
        "pool": defaults::POOL,
        "template_id": defaults::TEMPLATE_VMID,
        "max_instances": options.instances,
        "clone_timeout": deadline(600.0),
        "boot_timeout": deadline(300.0),
        "delete_timeout": deadline(300.0),
    });
    if let Some(address) = metrics_listen {
        config["metrics_listen"] = address.to_string().into();
    }
    if guest_port.is_some() {
        config["network_mode"] = "static".into();
        config["ip_pool_network"] = "127.0.1.0/24".into();
        config["ip_pool_gateway"] = "127.0.1.1".into();
        config["agent_required"] = false.into();
    }

    let plugin = FleetingService::new(ProxmoxGroup::new());
    progress.phase(&format!(
        "Init: plugin_config for {} (pool {}, template {})",
        sim.base_url(),
        defaults::POOL,
        defaults::TEMPLATE_VMID
    ));
    let connector = wire::ConnectorConfig {
        os: "linux".into(),
        arch: "amd64".into(),
        protocol: "ssh".into(),
        protocol_port: guest_port.map_or(22, i64::from),
        // As with Runner's default: the plugin generates a key and injects it.
        use_static_credentials: false,
        ..wire::ConnectorConfig::default()
    };
    let init = plugin
        .init(Request::new(wire::InitRequest {
            config: config.to_string().into_bytes(),
            settings: Some(wire::Settings { connector_config: Some(connector) }),
        }))
        .await
        .map_err(|status| SimulateError::Init(status.message().to_string()))?
        .into_inner();
    progress.phase(&format!(
        "plugin {} {} ready: group {}, max size {}",
        crate::version::NAME,
        init.version,
        init.id,
        init.max_size
    ));
    if options.faults == FaultMode::Flaky {
        progress.phase("faults: the first clone fails, then 5% transient API errors and 2% dropped connections, and one slow guest agent");
    }

    let poll = real_time(1.0, time_scale, Duration::from_millis(50));
    let mut driver = Driver {
        plugin: &plugin,
        admin: admin.clone(),
        tracked: BTreeMap::new(),
        tally: Tally::default(),
        last_increase: (Instant::now(), admin.now()),
        last_note: String::new(),
        slow_agent: None,
        // Without an agent there is none to slow down.
        wants_slow_agent: options.faults == FaultMode::Flaky && guest_port.is_none(),
        clone_fault: None,
    };
    if options.faults == FaultMode::Flaky {
        driver.clone_fault = Some(faults::inject_clone_failure(&admin));
    }

    // Scale up until the target runs, as Runner's scaler would.
    let target = options.instances;
    progress.phase(&format!("scaling up to {target} instances"));
    let up_deadline = Instant::now() + real_time(900.0, time_scale, Duration::from_secs(180));
    loop {
        driver.update(progress).await;
        let running =
            driver.tracked.values().filter(|t| t.listed && t.report.is_some() && !t.decrease_sent).count() as u32;
        driver.tally.peak_running = driver.tally.peak_running.max(running);
        let alive = driver
            .tracked
            .values()
            .filter(|t| t.listed && !t.decrease_sent && matches!(t.state, State::Creating | State::Running))
            .count() as u32;
        progress
            .counts("scaling up", &format!("{running}/{target} running, {} creating", alive.saturating_sub(running)));
        if running >= target {
            break;
        }
        if Instant::now() > up_deadline {
            progress.note(&format!("gave up waiting: {running} of {target} instances running"));
            break;
        }
        if alive < target {
            driver.increase(target - alive, progress).await;
        }
        tokio::time::sleep(poll).await;
    }

    // Steady state: the cost of one Update once nothing is in flight.
    progress.phase("steady state: measuring PVE requests per Update");
    tokio::time::sleep(poll * 2).await;
    let before = admin.counters();
    driver.tally.requests_before_reset = before.requests_total;
    driver.tally.faults_before_reset = FaultCounts {
        api_errors: before.injected_errors,
        dropped_connections: before.dropped_connections,
        failed_tasks: before.tasks_failed,
        slow_agents: 0,
    };
    admin.reset_counters();
    for _ in 0..STEADY_UPDATES {
        driver.update(progress).await;
        tokio::time::sleep(poll).await;
    }
    driver.tally.requests_per_update = admin.counters().requests_total as f64 / STEADY_UPDATES as f64;

    // Scale down: remove everything, then Update until nothing is listed.
    progress.phase("scaling down");
    let down_deadline = Instant::now() + real_time(600.0, time_scale, Duration::from_secs(120));
    loop {
        let listed: Vec<String> = driver.tracked.iter().filter(|(_, t)| t.listed).map(|(id, _)| id.clone()).collect();
        if listed.is_empty() {
            break;
        }
        if Instant::now() > down_deadline {
            progress.note(&format!("gave up waiting for removal of {}", listed.join(", ")));
            driver.tally.not_removed = listed;
            break;
        }
        let to_remove: Vec<String> = driver
            .tracked
            .iter()
            .filter(|(_, t)| t.listed && !t.decrease_sent && t.state != State::Deleting)
            .map(|(id, _)| id.clone())
            .collect();
        if !to_remove.is_empty() {
            driver.decrease(to_remove, progress).await;
        }
        progress.counts("scaling down", &format!("{} left", listed.len()));
        tokio::time::sleep(poll).await;
        driver.update(progress).await;
    }

    let metrics = match metrics_listen.filter(|_| options.metrics) {
        Some(address) => Some(scrape_metrics(address).await.map_err(SimulateError::Metrics)?),
        None => None,
    };
    progress.phase("Shutdown");
    if let Err(status) = plugin.shutdown(Request::new(wire::Empty {})).await {
        progress.note(&format!("Shutdown failed: {}", status.message()));
    }

    // The cluster's own word: wait for tasks still running, then look.
    let settle = Instant::now() + real_time(60.0, time_scale, Duration::from_secs(5));
    while admin.inventory().running_tasks > 0 && Instant::now() < settle {
        tokio::time::sleep(poll).await;
    }
    let inventory = admin.inventory();
    let counters = admin.counters();
    let instances: Vec<InstanceReport> = driver.tracked.values().filter_map(|t| t.report.clone()).collect();
    let tally = driver.tally;
    let summary = Summary {
        profile: options.profile.name().into(),
        faults: options.faults.name().into(),
        seed: options.seed,
        time_scale,
        target,
        reached_running: instances.len() as u32,
        peak_running: tally.peak_running,
        sim_seconds_to_running: TimeStats::of(instances.iter().map(|i| i.sim_seconds_to_running)),
        wall_seconds_to_running: TimeStats::of(instances.iter().map(|i| i.wall_seconds_to_running)),
        instances,
        wall_seconds_total: 0.0,
        updates: tally.updates,
        requests_per_update: tally.requests_per_update,
        requests_total: tally.requests_before_reset + counters.requests_total,
        faults_injected: FaultCounts {
            api_errors: tally.faults_before_reset.api_errors + counters.injected_errors,
            dropped_connections: tally.faults_before_reset.dropped_connections + counters.dropped_connections,
            failed_tasks: tally.faults_before_reset.failed_tasks + counters.tasks_failed,
            slow_agents: tally.slow_agents,
        },
        instances_replaced: tally.instances_replaced,
        increase_shortfalls: tally.increase_shortfalls,
        unhealthy_removed: tally.unhealthy_removed,
        connect_errors: tally.connect_errors,
        vms_leaked: inventory.vms.iter().filter(|vm| !vm.template).map(|vm| vm.vmid).collect(),
        orphaned_disks: inventory.orphaned_disks.iter().map(|disk| disk.volid.clone()).collect(),
        not_removed: tally.not_removed,
        metrics,
    };
    Ok(summary)
}

/// A loopback port nobody listens on right now.
fn free_loopback_port() -> Result<std::net::SocketAddr, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|err| format!("could not find a free loopback port for the metrics: {err}"))
}

/// The plugin's exposition, as Prometheus would scrape it (the listener
/// binds in the background: wait for it briefly).
async fn scrape_metrics(address: std::net::SocketAddr) -> Result<String, String> {
    let url = format!("http://{address}/metrics");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|err| format!("could not scrape {url}: {err}"))?;
    let mut last = String::new();
    for _ in 0..50 {
        match client.get(&url).send().await.and_then(reqwest::Response::error_for_status) {
            Ok(response) => return response.text().await.map_err(|err| format!("could not scrape {url}: {err}")),
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("could not scrape {url}: {last}"))
}

struct Driver<'a> {
    plugin: &'a FleetingService<ProxmoxGroup>,
    admin: Admin,
    tracked: BTreeMap<String, Tracked>,
    tally: Tally,
    last_increase: (Instant, f64),
    /// The last Increase shortfall note without its numbers, so a back-off
    /// is reported once.
    last_note: String,
    /// The instance whose agent is held silent, and when it is let go
    /// (simulated seconds).
    slow_agent: Option<(u32, f64)>,
    wants_slow_agent: bool,
    /// The failing-clone rule, until it has struck; the transient faults
    /// start then.
    clone_fault: Option<u64>,
}

impl Driver<'_> {
    async fn update(&mut self, progress: &mut Progress) {
        self.tally.updates += 1;
        let listing = match self.plugin.update(Request::new(wire::Empty {})).await {
            Ok(stream) => {
                use futures::StreamExt as _;
                let items: Vec<_> = stream.into_inner().collect().await;
                items.into_iter().collect::<Result<Vec<_>, _>>()
            }
            Err(status) => Err(status),
        };
        let listing = match listing {
            Ok(listing) => listing,
            Err(status) => {
                progress.note(&format!("Update failed (Runner retries on its next tick): {}", status.message()));
                return;
            }
        };
        self.release_slow_agent(progress);
        if let Some(rule) = self.clone_fault
            && !self.admin.faults().iter().any(|entry| entry.id == rule)
        {
            self.clone_fault = None;
            faults::inject_transient(&self.admin);
        }
        for entry in self.tracked.values_mut() {
            entry.listed = false;
        }
        for item in listing {
            let state = State::try_from(item.state).unwrap_or(State::Timeout);
            let id = item.instance;
            let requested = self.last_increase;
            let is_new = !self.tracked.contains_key(&id);
            let entry = self.tracked.entry(id.clone()).or_insert_with(|| Tracked {
                state,
                requested,
                report: None,
                listed: true,
                replaced: false,
                decrease_sent: false,
            });
            let changed = is_new || entry.state != state;
            entry.listed = true;
            if changed {
                entry.state = state;
                let detail = match state {
                    State::Creating => "cloning, configuring, booting".to_string(),
                    _ => String::new(),
                };
                if state != State::Running {
                    progress.instance(&id, state.as_str_name(), &detail);
                }
            }
            if state == State::Creating && self.wants_slow_agent && self.slow_agent.is_none() {
                self.hold_slow_agent(&id, progress);
            }
            if state == State::Running && self.tracked[&id].report.is_none() {
                self.connect(&id, progress).await;
            }
            if state == State::Timeout && !self.tracked[&id].decrease_sent {
                progress.note(&format!("{id} timed out; removing it (Runner does the same)"));
                let entry = self.tracked.get_mut(&id).expect("tracked above");
                entry.replaced = true;
                self.tally.instances_replaced += 1;
                self.decrease(vec![id.clone()], progress).await;
            }
        }
        // Gone from the listing: removed as asked, or given up by the plugin.
        for (id, entry) in &mut self.tracked {
            if entry.listed || entry.state == State::Deleted {
                continue;
            }
            if entry.report.is_none() && !entry.replaced {
                entry.replaced = true;
                self.tally.instances_replaced += 1;
                progress.instance(id, "gone", "never reached running; the plugin removed it");
            } else {
                progress.instance(id, "deleted", "");
            }
            entry.state = State::Deleted;
        }
    }

    /// ConnectInfo and Heartbeat, as Runner does before using an instance.
    async fn connect(&mut self, id: &str, progress: &mut Progress) {
        let now = (Instant::now(), self.admin.now());
        let info =
            match self.plugin.connect_info(Request::new(wire::ConnectInfoRequest { instance: id.to_string() })).await {
                Ok(info) => info.into_inner(),
                Err(status) => {
                    self.tally
                        .connect_errors
                        .push(format!("ConnectInfo for running instance {id} failed: {}", status.message()));
                    return;
                }
            };
        let healthy =
            match self.plugin.heartbeat(Request::new(wire::HeartbeatRequest { instance: id.to_string() })).await {
                Ok(_) => true,
                Err(status) => {
                    // Runner removes an instance whose Heartbeat fails.
                    progress
                        .note(&format!("Heartbeat for {id} failed; removing it as Runner would: {}", status.message()));
                    self.tally.unhealthy_removed += 1;
                    false
                }
            };
        let connector = info.connector.unwrap_or_default();
        let vmid = vmid_of(id);
        let node = vmid.and_then(|vmid| self.admin.vm(vmid)).map(|vm| vm.node).unwrap_or_default();
        let entry = self.tracked.get_mut(id).expect("connect is called for tracked instances");
        let report = InstanceReport {
            id: id.to_string(),
            node,
            address: info.internal_addr,
            username: connector.username,
            has_key: !connector.key.is_empty(),
            sim_seconds_to_running: now.1 - entry.requested.1,
            wall_seconds_to_running: now.0.duration_since(entry.requested.0).as_secs_f64(),
        };
        if report.address.is_empty() {
            self.tally.connect_errors.push(format!("ConnectInfo for running instance {id} has no address"));
        }
        progress.instance(
            id,
            "running",
            &format!(
                "{} on {} as {} ({:.1} s simulated)",
                report.address, report.node, report.username, report.sim_seconds_to_running
            ),
        );
        entry.report = Some(report);
        if !healthy {
            self.decrease(vec![id.to_string()], progress).await;
        }
    }

    async fn increase(&mut self, count: u32, progress: &mut Progress) {
        self.last_increase = (Instant::now(), self.admin.now());
        let note = match self.plugin.increase(Request::new(wire::IncreaseRequest { n: count })).await {
            Ok(answer) if answer.get_ref().succeeded == count => return,
            Ok(answer) => format!("Increase({count}) accepted {}", answer.get_ref().succeeded),
            Err(status) => format!("Increase({count}) refused: {}", status.message()),
        };
        self.tally.increase_shortfalls += 1;
        // A back-off repeats with a shrinking countdown: say it once.
        let gist: String = note.chars().filter(|c| !c.is_ascii_digit()).collect();
        if gist != self.last_note {
            progress.note(&note);
            self.last_note = gist;
        }
    }

    async fn decrease(&mut self, ids: Vec<String>, progress: &mut Progress) {
        match self.plugin.decrease(Request::new(wire::DecreaseRequest { instances: ids.clone() })).await {
            Ok(answer) => {
                for id in &answer.get_ref().succeeded {
                    if let Some(entry) = self.tracked.get_mut(id) {
                        entry.decrease_sent = true;
                    }
                }
                let refused = ids.len() - answer.get_ref().succeeded.len();
                if refused > 0 {
                    progress.note(&format!("Decrease: {refused} of {} not accepted; asking again", ids.len()));
                }
            }
            Err(status) => progress.note(&format!("Decrease failed (asking again): {}", status.message())),
        }
    }

    /// `--faults flaky`: the first new instance's guest agent stays silent
    /// for a while after boot, as with a slow cloud-init.
    fn hold_slow_agent(&mut self, id: &str, progress: &mut Progress) {
        let Some(vmid) = vmid_of(id) else { return };
        if self.admin.set_agent(vmid, AgentState::Killed).is_ok() {
            self.slow_agent = Some((vmid, self.admin.now() + SLOW_AGENT_SECONDS));
            self.tally.slow_agents += 1;
            progress.note(&format!("{id}: holding its guest agent silent for {SLOW_AGENT_SECONDS} s (simulated)"));
        }
    }

    fn release_slow_agent(&mut self, progress: &mut Progress) {
        if let Some((vmid, until)) = self.slow_agent
            && until.is_finite()
            && self.admin.now() >= until
        {
            let _ = self.admin.set_agent(vmid, AgentState::Running);
            self.slow_agent = Some((vmid, f64::INFINITY));
            progress.note(&format!("VM {vmid}: guest agent answers again"));
        }
    }
}

fn vmid_of(id: &str) -> Option<u32> {
    id.split('-').next()?.parse().ok()
}

/// Writes a file only its owner can read, as the plugin expects of a
/// credentials file.
fn write_private(path: &std::path::Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}
