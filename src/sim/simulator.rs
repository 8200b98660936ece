//! The simulator object: the shared state every connection, handler and
//! worker task reaches, and the ways to start and stop it.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use super::SimError;
use super::admin::Admin;
use super::api::ResourcesCache;
use super::certificate::ServerCertificate;
use super::clock::Clock;
use super::cluster::{Cluster, ClusterGuard};
use super::config::{SimConfig, Timings, TlsMode};
use super::counters::CounterSet;
use super::faults::Faults;
use super::release::PveRelease;
use super::schema::Api;
use super::ticket::TicketKey;
use super::wire::WireStyle;

/// A fixed start date for seeded runs without `start_epoch` (2025-01-01),
/// so their UPIDs repeat.
const SEEDED_EPOCH: u64 = 1_735_689_600;

pub(crate) struct Shared {
    pub version: PveRelease,
    pub timings: Timings,
    pub api: Api,
    pub clock: Clock,
    /// Reached through `cluster()`, which notes every change.
    cluster: Mutex<Cluster>,
    /// Serialised `/cluster/resources` answers (see `api/resources.rs`).
    pub resources_cache: Mutex<ResourcesCache>,
    pub tickets: TicketKey,
    pub faults: Mutex<Faults>,
    pub counters: CounterSet,
    /// Until when (real time) connections are refused.
    pub unreachable_until: Mutex<Option<tokio::time::Instant>>,
    pub wire: WireStyle,
    /// pveproxy's request body limit: 64 KiB, 512 KiB since 8.4.
    pub body_limit: usize,
    pub certificate: Option<ServerCertificate>,
    workers: Mutex<JoinSet<()>>,
}

impl Shared {
    /// The cluster state. A handler that panicked cannot leave it half
    /// changed in a way later requests trip over, so poisoning is ignored.
    pub fn cluster(&self) -> ClusterGuard<'_> {
        ClusterGuard::timed(self.cluster.lock().unwrap_or_else(|poisoned| poisoned.into_inner()), &self.counters)
    }

    pub fn faults(&self) -> MutexGuard<'_, Faults> {
        self.faults.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn is_unreachable(&self) -> bool {
        let mut until = self.unreachable_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match *until {
            Some(deadline) if tokio::time::Instant::now() < deadline => true,
            Some(_) => {
                *until = None;
                false
            }
            None => false,
        }
    }

    /// Starts a worker task: registers its UPID (owned by `node`), then runs
    /// `body`, whose result becomes the exit status.
    pub fn spawn_task<F, Fut>(
        self: &Arc<Self>,
        cluster: &mut Cluster,
        node: &str,
        task_type: &str,
        id: &str,
        user: &str,
        body: F,
    ) -> String
    where
        F: FnOnce(TaskContext) -> Fut,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let now = self.clock.now();
        let boot = cluster.nodes.get(node).map_or(now - 86_400.0, |n| n.boot_time);
        let (upid, stop) = cluster.tasks.start(node, task_type, id, user, now, boot);
        self.counters.update(|c| *c.tasks_started.entry(task_type.to_string()).or_default() += 1);
        let work = body(TaskContext { shared: self.clone(), upid: upid.clone(), stop });
        let shared = self.clone();
        let finished = upid.clone();
        let mut workers = self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        while workers.try_join_next().is_some() {}
        workers.spawn(async move {
            let result = work.await;
            if result.is_err() {
                shared.counters.update(|c| c.tasks_failed += 1);
            }
            let now = shared.clock.now();
            shared.cluster().tasks.finish(&finished, result, now);
        });
        upid
    }

    fn stop_workers(&self) {
        self.workers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).abort_all();
    }
}

/// What a worker task can do besides changing the cluster: log, wait on the
/// simulated clock (and notice `DELETE …/tasks/{upid}`), take config locks.
pub(crate) struct TaskContext {
    pub shared: Arc<Shared>,
    pub upid: String,
    stop: watch::Receiver<bool>,
}

impl TaskContext {
    pub fn log(&self, line: impl Into<String>) {
        self.shared.cluster().tasks.log(&self.upid, line);
    }

    /// Waits `sim_secs`; fails when the task is stopped meanwhile.
    pub async fn sleep(&mut self, sim_secs: f64) -> Result<(), String> {
        if *self.stop.borrow() {
            return Err("interrupted by signal".into());
        }
        let due = self.shared.clock.now() + sim_secs.max(0.0);
        tokio::select! {
            _ = self.shared.clock.sleep(sim_secs) => {
                self.shared.counters.task_woke(self.shared.clock.now() - due);
                Ok(())
            }
            _ = self.stop.changed() => Err("interrupted by signal".into()),
        }
    }

    /// A warning line; the task then ends with `WARNINGS: n` instead of `OK`.
    pub fn warn(&self, line: impl Into<String>) {
        self.shared.cluster().tasks.warn(&self.upid, line);
    }

    /// qemu-server's `lock_config`: the flock on the VM's config, shared or
    /// exclusive, waiting up to `timeout` simulated seconds.
    ///
    /// Waiters sleep until a flock is released (or their deadline) instead of
    /// each taking the cluster's mutex every few milliseconds: with a thousand
    /// tasks waiting (a plugin that starts VMs while their config updates run)
    /// that polling competed with everything else the simulator does.
    pub async fn flock(&mut self, vmid: u32, exclusive: bool, timeout: f64) -> Result<(), String> {
        let deadline = self.shared.clock.now() + timeout;
        let released = self.shared.cluster().flock_released();
        loop {
            // Made before the check, so a release after it wakes this one
            // (`notify_waiters` reaches every `Notified` created, polled or not).
            let notified = released.notified();
            if self.shared.cluster().try_flock(vmid, exclusive) {
                return Ok(());
            }
            let now = self.shared.clock.now();
            if now >= deadline {
                return Err(format!("can't lock file '/var/lock/qemu-server/lock-{vmid}.conf' - got timeout"));
            }
            // Bounded all the same, should the time scale change meanwhile.
            let wait = self.shared.clock.real(deadline - now).min(std::time::Duration::from_secs(1));
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.changed() => return Err("interrupted by signal".into()),
            }
        }
    }
}

/// A configured simulator, not yet serving.
pub struct Simulator {
    pub(crate) shared: Arc<Shared>,
    cert_dir: Option<PathBuf>,
}

impl Simulator {
    /// Checks the scenario, builds the cluster and (for HTTPS) the certificate.
    pub fn new(config: SimConfig) -> Result<Self, SimError> {
        let scenario = &config.scenario;
        let version = PveRelease::parse(&scenario.pve_version).filter(|v| v.major >= 7).ok_or_else(|| {
            SimError::Scenario(format!(
                "could not load the scenario: pve_version `{}` is not a PVE release 7.0 or later",
                scenario.pve_version
            ))
        })?;
        let api = Api::for_version(&version).map_err(SimError::Scenario)?;
        let start_epoch = scenario.start_epoch.or(scenario.seed.map(|_| SEEDED_EPOCH));
        let clock = Clock::new(scenario.time_scale, start_epoch);
        let cluster = Cluster::from_scenario(scenario, version, clock.now())?;
        let ticket_key = match scenario.seed {
            Some(seed) => {
                use rand::{Rng, SeedableRng};
                rand::rngs::StdRng::seed_from_u64(seed ^ 0x7469_636b_6574).random()
            }
            None => rand::random(),
        };
        let node_names: Vec<String> = scenario.nodes.iter().map(|n| n.name.clone()).collect();
        let certificate = match &config.tls {
            TlsMode::Plain => None,
            TlsMode::SelfSigned => Some(ServerCertificate::generate(&scenario.cluster_name, &node_names)?),
            TlsMode::Files { certificate, key } => Some(ServerCertificate::load(certificate, key)?),
        };
        let release = (version.major, version.minor);
        let shared = Shared {
            version,
            timings: scenario.timings.clone(),
            api,
            clock,
            cluster: Mutex::new(cluster),
            resources_cache: Mutex::new(ResourcesCache::default()),
            tickets: TicketKey::new(ticket_key),
            faults: Mutex::new(Faults::new(scenario.faults.clone(), scenario.seed)),
            counters: CounterSet::default(),
            unreachable_until: Mutex::new(None),
            wire: WireStyle { error_message_in_body: release >= (8, 4) },
            body_limit: if release >= (8, 4) { 512 * 1024 } else { 64 * 1024 },
            certificate,
            workers: Mutex::new(JoinSet::new()),
        };
        Ok(Self { shared: Arc::new(shared), cert_dir: config.cert_dir })
    }

    /// The node certificate's SHA-256 fingerprint (`AB:CD:…`), for HTTPS.
    pub fn fingerprint(&self) -> Option<&str> {
        self.shared.certificate.as_ref().map(|c| c.fingerprint.as_str())
    }

    /// The cluster CA certificate (PEM) for a generated certificate.
    pub fn ca_pem(&self) -> Option<&str> {
        self.shared.certificate.as_ref().and_then(|c| c.ca_pem.as_deref())
    }

    /// Writes the certificate files into `cert_dir` (if configured) and
    /// returns the CA file's path.
    pub fn write_certificate(&self) -> Result<Option<PathBuf>, SimError> {
        match (&self.shared.certificate, &self.cert_dir) {
            (Some(certificate), Some(dir)) => certificate.write_to(dir).map(Some),
            _ => Ok(None),
        }
    }

    pub fn admin(&self) -> Admin {
        Admin::new(self.shared.clone())
    }

    /// Serves on `listener` until `shutdown` completes; then lets open
    /// connections finish their request and stops the worker tasks.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), SimError> {
        let guest_ports = tokio::spawn(super::guest_ports::run(self.shared.clone()));
        let result = super::server::serve(self.shared.clone(), listener, shutdown).await;
        guest_ports.abort();
        self.shared.stop_workers();
        result
    }

    /// Starts serving on an ephemeral loopback port in the background.
    pub async fn start(config: SimConfig) -> Result<SimHandle, SimError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|err| SimError::Io(format!("could not bind 127.0.0.1:0: {err}")))?;
        let simulator = Self::new(config)?;
        let address = listener
            .local_addr()
            .map_err(|err| SimError::Io(format!("could not read the listening address: {err}")))?;
        let ca_path = simulator.write_certificate()?;
        let scheme = if simulator.shared.certificate.is_some() { "https" } else { "http" };
        let handle_parts =
            (simulator.fingerprint().map(str::to_string), simulator.ca_pem().map(str::to_string), simulator.admin());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(simulator.serve(listener, async move {
            let _ = stopped.await;
        }));
        Ok(SimHandle {
            base_url: format!("{scheme}://{address}"),
            address,
            fingerprint: handle_parts.0,
            ca_pem: handle_parts.1,
            ca_path,
            admin: handle_parts.2,
            stop: Some(stop),
            task: Some(task),
        })
    }
}

/// A simulator running in the background (from [`Simulator::start`]).
/// Dropping it stops the server.
pub struct SimHandle {
    base_url: String,
    address: SocketAddr,
    fingerprint: Option<String>,
    ca_pem: Option<String>,
    ca_path: Option<PathBuf>,
    admin: Admin,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), SimError>>>,
}

impl SimHandle {
    /// `https://127.0.0.1:<port>` (or `http://` for plain HTTP).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `<base_url>/api2/json`.
    pub fn api_url(&self) -> String {
        format!("{}/api2/json", self.base_url)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The certificate fingerprint in PVE notation, usable as the client's
    /// `tls_fingerprint`.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// The CA file written to `cert_dir`, if one was configured.
    pub fn ca_path(&self) -> Option<&std::path::Path> {
        self.ca_path.as_deref()
    }

    pub fn admin(&self) -> Admin {
        self.admin.clone()
    }

    /// Stops serving and waits for the server to wind down.
    pub async fn shutdown(mut self) -> Result<(), SimError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|err| SimError::Io(format!("could not stop the simulator: {err}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Serves the simulated PVE API on `listener` (HTTPS or plain HTTP as
/// configured) until `shutdown` completes.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: SimConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), SimError> {
    let simulator = Simulator::new(config)?;
    simulator.write_certificate()?;
    simulator.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sim::config::{Scenario, TlsMode};

    /// A real PVE runs each task in its own process; the simulator runs them
    /// beside the API handlers, so a handler that keeps the runtime busy
    /// delays every task. That lag must show in the counters, or a stalled
    /// benchmark run passes for a slow plugin.
    #[tokio::test(flavor = "current_thread")]
    async fn a_busy_simulator_shows_its_own_lag_in_the_counters() {
        let scenario = Scenario { seed: Some(5), time_scale: 100.0, ..Scenario::default() };
        let simulator = Simulator::new(SimConfig { scenario, tls: TlsMode::Plain, cert_dir: None }).unwrap();
        let shared = simulator.shared.clone();
        {
            let mut cluster = shared.cluster();
            shared.spawn_task(&mut cluster, "pve1", "qmstart", "100", "root@pam", |mut task| async move {
                task.sleep(1.0).await
            });
        }
        // Let the task begin its 1 s wait (10 ms real), then hold the cluster
        // and the only runtime thread for 200 ms: 20 simulated seconds.
        tokio::task::yield_now().await;
        {
            let _held = shared.cluster();
            std::thread::sleep(Duration::from_millis(200));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;

        let counters = shared.counters.snapshot();
        assert!(counters.cluster_held_max_micros >= 200_000, "the hold is measured: {counters:?}");
        assert_eq!(counters.task_waits_late, 1, "the task woke late: {counters:?}");
        assert!(
            counters.task_wait_overrun_max_millis >= 15_000,
            "by most of the 20 simulated seconds: {}",
            counters.task_wait_overrun_max_millis
        );

        shared.counters.reset();
        let counters = shared.counters.snapshot();
        assert_eq!((counters.cluster_held_max_micros, counters.task_waits_late), (0, 0), "a reset starts again");
    }
}
