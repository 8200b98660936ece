//! The instance-group room: the domain behind fleeting's calls. It knows
//! instances, their states and how to reach them; it knows nothing about
//! gRPC, protobuf or go-plugin (the fleeting adapter converts at its edge).
//!
//! [`InstanceGroup`] is the contract the adapter drives. The Proxmox
//! provisioning engine implements it.

pub mod address;
mod adoption;
pub mod breaker;
pub mod config;
mod deletion;
pub mod engine;
pub mod failure;
pub mod ip_pool;
mod lease;
pub mod naming;
pub mod placement;
mod power;
mod provision;
pub mod quarantine;
mod registry;
pub mod slots;
pub mod ssh_key;
pub mod takeover;
pub mod template;
pub mod template_copy;
mod vmid_claim;
pub mod windows_password;

use std::future::Future;
use std::time::Duration;

/// What Runner hands to `Init` besides the plugin config: how it connects to
/// instances (`[runners.autoscaler.connector_config]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectorSettings {
    pub os: String,
    pub arch: String,
    /// `ssh`, `winrm`, `winrm+https`, or empty.
    pub protocol: String,
    /// 0: the protocol's default port.
    pub protocol_port: u16,
    pub username: String,
    pub password: String,
    /// PEM private key.
    pub key: Vec<u8>,
    pub use_static_credentials: bool,
    pub keepalive: Duration,
    pub timeout: Duration,
}

impl ConnectorSettings {
    /// Whether Runner brings its own credentials: a key, a password, or
    /// `use_static_credentials = true`. They are then handed back unchanged
    /// (username included) and the template needs no cloud-init drive; only
    /// when Runner brings none does the plugin generate a key.
    pub fn brings_credentials(&self) -> bool {
        self.use_static_credentials || !self.key.is_empty() || !self.password.is_empty()
    }
}

/// What `Init` reports back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderInfo {
    /// Identifies the group in Runner's logs, e.g. `proxmox/<cluster>/<pool>/<group>`.
    pub id: String,
    pub max_size: u32,
    pub version: String,
    pub build_info: String,
    /// Optional features, e.g. [`CAPABILITY_SUSPEND_RESUME`].
    pub capabilities: Vec<String>,
}

/// The capability that makes Runner call `suspend`/`resume`.
pub const CAPABILITY_SUSPEND_RESUME: &str = "suspend_resume";

/// An instance's state as fleeting knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InstanceState {
    Creating,
    Running,
    Deleting,
    Deleted,
    /// The instance is broken; Runner removes it.
    Timeout,
    Suspending,
    Suspended,
    Resuming,
}

/// How to reach one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectInfo {
    pub connector: ConnectorSettings,
    pub external_addr: String,
    pub internal_addr: String,
    /// When these credentials stop working, as Unix seconds.
    pub expires_unix: Option<i64>,
}

/// The result of a call that works on several instances: some may succeed
/// while others fail.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Partial<T> {
    pub succeeded: T,
    /// One error per failure; the adapter words them for the log and Runner.
    pub failures: Vec<Error>,
}

/// Errors the domain reports to Runner. Each keeps its cause; the fleeting
/// adapter words it once, for the wire (`could not <verb> <object>: <cause>`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A call arrived before a successful `init`.
    #[error("the plugin is not initialised: Runner must call Init first")]
    NotInitialised,
    /// `Heartbeat`: the instance is gone, stopped, or its agent is dead.
    #[error("instance is unhealthy: {0}")]
    Unhealthy(String),
    /// The group does not offer this optional call.
    #[error("not supported: {0}")]
    NotSupported(&'static str),
    /// `plugin_config` is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The credentials file could not be read.
    #[error(transparent)]
    Credentials(#[from] crate::pve::CredentialsError),
    /// A Proxmox call failed (its message names what it tried).
    #[error(transparent)]
    Pve(#[from] crate::pve::Error),
    /// The template VMID is not in the listing.
    #[error(
        "could not find template {template_id} (template_id): no such VM, or the user lacks VM.Audit on /vms/{template_id}"
    )]
    TemplateNotFound { template_id: crate::pve::Vmid },
    /// The template does not meet the group's requirements.
    #[error("could not use template {template_id}: {}", problems.join("; "))]
    Template { template_id: crate::pve::Vmid, problems: Vec<String> },
    /// `target_nodes` names nodes that cannot be used.
    #[error("could not use target_nodes: {}", problems.join("; "))]
    TargetNodes { problems: Vec<String> },
    /// No SSH key could be generated (or encoded).
    #[error("could not generate an SSH key: {0}")]
    SshKey(#[source] ::ssh_key::Error),
    /// Increase: `max_instances` leaves no room for `refused` of `requested`.
    #[error("could not create {refused} of {requested} instances: max_instances is {max}")]
    MaxInstances { requested: u32, refused: u32, max: u32 },
    /// Increase: no target node can take `short` more instances under the
    /// placement rules; `why` names what binds on each node.
    #[error(
        "could not create {short} instances: {why}; lower max_instances, add target_nodes, or relax the node_reserve_* or node_*_allocation_limit_percent settings that bind"
    )]
    NoRoom { short: u32, why: String },
    /// Increase: the breaker holds scale-up; its message says why and until when.
    #[error("{0}")]
    ScaleUpHeld(String),
    /// Increase: one instance's clone request failed.
    #[error("could not create an instance: {0}")]
    Provision(#[source] failure::ProvisionError),
    /// An id Runner passed names no instance of this plugin.
    #[error("could not {verb} instance {id}: it is not an instance of this plugin")]
    NotAnInstance { verb: &'static str, id: String },
    /// A power action on an instance in a phase that does not allow it.
    #[error("could not {verb} instance {id}: it is {phase}")]
    WrongPhase { verb: &'static str, id: String, phase: &'static str },
    /// An id Runner passed is not one of this plugin's.
    #[error(transparent)]
    InvalidId(#[from] naming::InstanceIdError),
    /// A call about an instance the group does not track.
    #[error("could not {verb} instance {id}: this group does not own it")]
    NotOwned { verb: &'static str, id: String },
    /// Connect info for an instance that is not ready.
    #[error("could not get connect info for instance {id}: it is not running yet")]
    NotRunning { id: String },
}

/// The contract between the fleeting adapter and the domain. Every method
/// may be called concurrently; implementations keep their own locking.
pub trait InstanceGroup: Send + Sync + 'static {
    /// Validates `config` (the JSON of `plugin_config`) and prepares the group.
    fn init(
        &self,
        config: &[u8],
        settings: ConnectorSettings,
    ) -> impl Future<Output = Result<ProviderInfo, Error>> + Send;

    /// Every instance of the group with its current state.
    fn update(&self) -> impl Future<Output = Result<Vec<(String, InstanceState)>, Error>> + Send;

    /// Requests `count` more instances; returns how many were accepted.
    fn increase(&self, count: u32) -> impl Future<Output = Result<Partial<u32>, Error>> + Send;

    /// Requests removal; returns the ids whose removal was accepted.
    fn decrease(&self, ids: Vec<String>) -> impl Future<Output = Result<Partial<Vec<String>>, Error>> + Send;

    fn connect_info(&self, id: &str) -> impl Future<Output = Result<ConnectInfo, Error>> + Send;

    /// `Ok` when healthy, [`Error::Unhealthy`] when not.
    fn heartbeat(&self, id: &str) -> impl Future<Output = Result<(), Error>> + Send;

    fn suspend(&self, ids: Vec<String>) -> impl Future<Output = Result<Partial<Vec<String>>, Error>> + Send;

    fn resume(&self, ids: Vec<String>) -> impl Future<Output = Result<Partial<Vec<String>>, Error>> + Send;

    /// Stops background work; deletes nothing.
    fn shutdown(&self) -> impl Future<Output = Result<(), Error>> + Send;
}
