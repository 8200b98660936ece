//! `fleeting-plugin-proxmox simulate`: an autoscaling session of the real
//! plugin against the built-in Proxmox VE simulator, in one process.
//!
//! The session plays GitLab Runner's part. It starts [`crate::sim`] on a
//! loopback port (HTTPS with a pinned fingerprint and an API token, as an
//! admin would configure it) and talks to the plugin through the same
//! fleeting adapter ([`crate::fleeting::FleetingService`]) that Runner
//! reaches over go-plugin, with the same messages: Init → Increase →
//! Update polling → ConnectInfo and Heartbeat for each instance → Decrease
//! → Update until every instance is gone → Shutdown. Only the transport
//! (go-plugin's socket) is left out; the Go conformance suite covers it.
//!
//! Like Runner's scaler, the session asks for more instances whenever fewer
//! than the target are alive, and removes instances the plugin reports as
//! `timeout`, so failures injected with [`FaultMode::Flaky`] are handled
//! the way they would be in production.
//!
//! The verdict comes from the simulator's own view (its inventory and
//! request counters), not from what the plugin claims: see [`Summary`].
//!
//! # Rooms
//! - `session.rs`: the Runner-like driver and its measurements.
//! - `faults.rs`: the fault plan of `--faults flaky`.
//! - `progress.rs`: live progress (indicatif on a terminal, plain lines
//!   otherwise) and the log writer that keeps the two apart.
//! - `summary.rs`: the summary, its table and JSON, and the verdict.

mod faults;
mod progress;
mod session;
mod summary;

use std::time::Duration;

pub use progress::{Progress, install_logging};
pub use session::run;
pub use summary::{FaultCounts, InstanceReport, Summary, TimeStats};

use crate::sim::{Scenario, SimError};

/// What the session does and how fast the simulated cluster is.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many instances to scale up to.
    pub instances: u32,
    /// How long things take in the simulated cluster.
    pub profile: Profile,
    /// Faults to inject.
    pub faults: FaultMode,
    /// Simulated seconds per real second; `None` takes the profile's.
    pub time_scale: Option<f64>,
    /// Makes MACs, addresses, VMIDs and injected faults reproducible.
    pub seed: Option<u64>,
    /// Scrape the plugin's metrics before Shutdown into the summary.
    pub metrics: bool,
    /// Where the plugin serves metrics and status (`metrics_listen`); a free
    /// loopback port when only `metrics` is asked for.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// How instances get their address.
    pub network: Network,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instances: 10,
            profile: Profile::Realistic,
            faults: FaultMode::None,
            time_scale: None,
            seed: None,
            metrics: false,
            metrics_listen: None,
            network: Network::Dhcp,
        }
    }
}

/// How long things take in the simulated cluster (`--profile`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// PVE-like durations (linked clone 2 s, boot 15 s, agent 5 s after
    /// boot, a 10 s stale `/cluster/resources`), ten times faster than real.
    Realistic,
    /// Short durations, fifty times faster: a session takes a few seconds
    /// (for CI).
    Short,
}

impl Profile {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Realistic => "realistic",
            Self::Short => "short",
        }
    }

    /// The simulated cluster for this profile: the simulator's built-in one
    /// (two nodes, pool `ci`, template 9000, token `fleeting@pve!ci`).
    fn scenario(self) -> Scenario {
        let mut scenario = Scenario::default();
        match self {
            Self::Realistic => scenario.time_scale = 10.0,
            Self::Short => {
                scenario.time_scale = 50.0;
                scenario.timings.boot = 5.0;
                scenario.timings.agent_delay = 2.0;
                scenario.timings.resources_staleness = 2.0;
            }
        }
        // Only the brute-force delay of a wrong password; the session uses a token.
        scenario.timings.unauthorized_delay = 0.0;
        scenario
    }
}

/// How the simulated instances get their address (`--network`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Network {
    /// DHCP, reported by the guest agent (the default template).
    Dhcp,
    /// A static pool on loopback (127.0.1.0/24) and a template without the
    /// guest agent: readiness and Heartbeat are TCP connections to the
    /// simulated guests' port on their static address.
    Static,
}

impl Network {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Static => "static",
        }
    }
}

/// Faults injected into the simulated cluster after Init (`--faults`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FaultMode {
    /// A healthy cluster.
    None,
    /// Transient API errors (503) and dropped connections on a share of
    /// requests, one failing clone task, and one instance whose guest agent
    /// answers only after a long delay.
    Flaky,
}

impl FaultMode {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Flaky => "flaky",
        }
    }
}

/// A session that could not run at all (as opposed to one that ran and
/// found problems, which its [`Summary`] reports).
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// The simulator did not start.
    #[error("could not start the simulator: {0}")]
    Simulator(#[from] SimError),
    /// The temporary credentials file could not be written.
    #[error("could not write the simulator's credentials file: {0}")]
    Credentials(std::io::Error),
    /// The plugin refused Init (a bug: the configuration is built in).
    #[error("could not initialise the plugin against the simulator: {0}")]
    Init(String),
    /// `--time-scale` was zero, negative or not a number.
    #[error("could not use --time-scale {0}: expected a number above 0 (simulated seconds per real second)")]
    TimeScale(f64),
    /// `--instances 0`.
    #[error("could not use --instances 0: expected at least 1")]
    NoInstances,
    /// `--metrics`: no port, or the scrape failed.
    #[error("{0}")]
    Metrics(String),
    /// `--network static` with more instances than its /24 has addresses.
    #[error(
        "could not use --instances {0} with --network static: its pool 127.0.1.0/24 has {STATIC_POOL_SIZE} addresses"
    )]
    StaticPool(u32),
}

/// Addresses of `--network static`'s pool (127.0.1.0/24 without its own
/// address, broadcast and gateway).
pub const STATIC_POOL_SIZE: u32 = 253;

/// A simulated duration as real time at the given scale, never below
/// `floor` (deadlines must survive a loaded machine).
fn real_time(sim_seconds: f64, time_scale: f64, floor: Duration) -> Duration {
    Duration::from_secs_f64(sim_seconds / time_scale).max(floor)
}
