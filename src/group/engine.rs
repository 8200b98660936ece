//! The Proxmox instance group: fleeting's calls turned into clones, starts,
//! address lookups and deletions.
//!
//! - `update` is a reconcile from one `/cluster/resources` request merged with
//!   what the engine is doing right now; it never waits for provisioning.
//! - `increase` returns once Proxmox accepted the clone requests; the rest
//!   (wait, configure, start, wait for the agent's address) runs in the
//!   background, bounded, with cleanup on failure (see `provision`).
//! - `decrease` returns at once; deletion runs in the background.
//! - Ownership: pool + not a template + our tag; the description marker is
//!   re-checked before anything destructive.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::address::{self, Addresses};
use super::breaker::{Admission, Breaker};
use super::config::{GroupConfig, PluginConfig};
use super::failure::Cause;
use super::ip_pool::Lease;
use super::lease::LeaseBook;
use super::naming::{InstanceId, Naming};
use super::placement::{Demand, Placement};
use super::quarantine::Quarantine;
use super::registry::{Phase, PowerAction, Reconciled, Registry, Removal};
use super::slots::SlotGate;
use super::ssh_key::GeneratedKey;
use super::template::{TemplateFacts, TemplateStorage};
use super::template_copy::{CloneSource, CopyStatus, TemplateCopies};
use super::{
    CAPABILITY_SUSPEND_RESUME, ConnectInfo, ConnectorSettings, Error, InstanceGroup, InstanceState, Partial,
    ProviderInfo,
};
use crate::pve::{ClusterListing, ConfigUpdate, Credentials, PveClient, VmResource};
use crate::telemetry::metrics::FleetSource;
use crate::telemetry::snapshot::{InstanceCount, QuarantinedVmid, TemplateCopyState, unix_seconds};
use crate::telemetry::{FleetSnapshot, Metrics, MetricsListener};

/// Everything `init` sets up.
///
/// Lock order: the engine's mutexes (the placement's, `breaker`,
/// `quarantine`, `range_cursor`, `vmid_claims`, the lease book's and the registry's) are private
/// leaves, each taken and released inside one synchronous method, so none is
/// held across an `.await` or together with another. Keep it so: a new
/// method takes one lock and returns a value, never a guard.
pub(crate) struct Engine {
    pub config: GroupConfig,
    pub naming: Naming,
    pub pve: PveClient,
    pub settings: ConnectorSettings,
    pub key: Option<GeneratedKey>,
    /// For a Windows template when Runner brings no credentials: the
    /// password set through cloud-init and handed out for WinRM (no key then).
    pub password: Option<crate::pve::Secret>,
    pub template_node: String,
    /// Linked clones when `clone_mode` allows and the template's storage can.
    pub linked: bool,
    /// What ConnectInfo reports when Runner's connector_config leaves it empty.
    pub guest: GuestDefaults,
    /// Which node takes the next clone (its own lock; see `placement`).
    pub placement: Placement,
    /// The template's copies on nodes that cannot clone it directly (its
    /// own lock; see `template_copy`).
    pub copies: TemplateCopies,
    /// Every tracked instance, impostor and foreign VMID; the only way to
    /// change an instance's phase.
    pub registry: Registry,
    /// Holds scale-up back after systematic provisioning failures.
    breaker: Mutex<Breaker>,
    /// VMIDs tied to a failure (orphaned volumes, held locks), skipped by allocation.
    quarantine: Mutex<Quarantine>,
    /// Clones in progress, from the request until the clone task ends.
    pub clone_slots: Arc<SlotGate>,
    /// Starts in progress, from the request until the guest's address is known.
    pub start_slots: Arc<SlotGate>,
    /// The disk `vm_disk_mb` or `instance_autoresize_disk` grows, checked at Init.
    pub grown_disk: Option<String>,
    pub delete_slots: Semaphore,
    pub background: TaskTracker,
    pub cancel: CancellationToken,
    /// Until when VMs found in the pool are judged as the seed plugin's;
    /// `None` when `take_over_seed_instances` is off.
    pub takeover_until: Option<Instant>,
    /// Next VMID to try inside `vmid_range`.
    range_cursor: Mutex<u32>,
    /// VMIDs clone requests under way hold until their instance is tracked.
    pub vmid_claims: super::vmid_claim::VmidClaims,
    /// The group's metrics; the PVE client reports its requests here too.
    pub metrics: Arc<Metrics>,
    /// Static leases this process handed out or adopted, and the addresses
    /// cooling down (see `lease`); one private lock.
    pub leases: LeaseBook,
}

/// The `InstanceGroup` for Proxmox VE.
#[derive(Default)]
pub struct ProxmoxGroup {
    engine: OnceCell<Arc<Engine>>,
    /// Serves `metrics_listen` until Shutdown.
    listener: Mutex<Option<MetricsListener>>,
}

impl ProxmoxGroup {
    pub fn new() -> Self {
        Self::default()
    }

    fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.engine.get().ok_or(Error::NotInitialised)
    }
}

impl Engine {
    /// Connects, reads the template and sets the group up; returns the
    /// cluster's VM listing it read, for the takeover of the seed's VMs.
    async fn start(config: GroupConfig, settings: ConnectorSettings) -> Result<(Self, ClusterListing), Error> {
        let credentials = Credentials::load(&config.credentials_file_path)?;
        // Derived, not random: a restarted plugin hands Runner the key its
        // running instances were given (see `GeneratedKey::derive`).
        let key_scope = format!("{}\0{}\0{}", config.url, config.pool, config.group);
        let key_material = match &credentials {
            Credentials::Token { token_id, secret } => format!("{token_id}\0{}", secret.expose()),
            Credentials::Password { userid, password, .. } => format!("{userid}\0{}", password.expose()),
        };
        let derived_key = GeneratedKey::derive(key_material.as_bytes(), &key_scope);
        drop(key_material);
        let metrics = Arc::new(Metrics::new(&config.group));
        let client_config = crate::pve::ClientConfig {
            observer: Some(crate::pve::Observer(metrics.clone())),
            ..config.client_config(credentials)
        };
        let pve = PveClient::connect(client_config).await?.with_task_poll_interval(config.task_poll_interval);
        let version = pve.version().await?;

        // The template: where it is, that it is one, and what it can do.
        let listing = pve.cluster_listing().await?;
        let template = listing
            .vms
            .iter()
            .find(|vm| vm.vmid == config.template_id)
            .ok_or(Error::TemplateNotFound { template_id: config.template_id })?;
        let template_node = template.node.clone();
        let current_config = pve.vm_config(&template_node, config.template_id).await?;
        // With `clone_snapshot` the instances are made of the snapshot's config.
        let template_config = match &config.sizing.clone_snapshot {
            None => current_config.clone(),
            Some(name) => {
                let snapshots = pve.snapshots(&template_node, config.template_id).await?;
                if !snapshots.contains(name) {
                    let problem =
                        super::template::missing_snapshot(config.template_id, name, template.template, &snapshots);
                    return Err(Error::Template { template_id: config.template_id, problems: vec![problem] });
                }
                pve.vm_config_of_snapshot(&template_node, config.template_id, name).await?
            }
        };
        let facts = TemplateFacts::from_config(&template_node, &template_config, template.template);
        let generate_credentials = !settings.brings_credentials();
        let mut problems: Vec<String> = super::template::judge(&facts, &config, generate_credentials)
            .into_iter()
            .filter_map(|requirement| requirement.verdict.err().map(|problem| problem.to_string()))
            .collect();
        let grown_disk = super::template::grown_disk(&template_config, &config).unwrap_or_else(|problem| {
            problems.push(problem);
            None
        });
        if !problems.is_empty() {
            return Err(Error::Template { template_id: config.template_id, problems });
        }

        let storage = TemplateStorage::inspect(&pve, &facts).await;
        for (name, err) in storage.unreadable() {
            tracing::warn!(storage = name, error = %err, "could not read the template's storage; assuming no linked clones");
        }
        let (linked, _) =
            super::template::clone_kind(&facts, &storage, config.clone_mode, config.clone_mode_explicit).map_err(
                |problem| Error::Template { template_id: config.template_id, problems: vec![problem.to_string()] },
            )?;
        let node_templates = super::template_copy::read_node_templates(
            &pve,
            &config,
            &listing,
            &template_node,
            generate_credentials,
            grown_disk.as_deref(),
        )
        .await?;
        let own_template: Vec<String> = node_templates.iter().map(|source| source.node.clone()).collect();
        check_target_nodes(&pve, &config, &template_node, &own_template, &storage).await?;
        let plans = super::template_copy::plan_copies(&config, &facts, &storage, &listing, &own_template)
            .map_err(|problems| Error::TargetNodes { problems })?;
        // Copies are looked for even when no node needs one now, so those
        // of nodes no longer targeted are deleted too.
        let found = super::template_copy::discover(
            &pve,
            &Naming::new(&config.group),
            &config.pool,
            &config.staging.name_prefix,
            &listing,
        )
        .await?;
        let template_version = super::template_copy::template_version(&current_config);
        let copies =
            TemplateCopies::new(config.template_id, plans, template_version, found, config.staging.check_interval)
                .with_node_templates(node_templates);
        for plan in copies.plans() {
            tracing::info!(
                node = plan.node,
                storage = plan.storage,
                clone = if plan.linked { "linked" } else { "full" },
                "node {} clones from its own copy of the template (template_stage_mode)",
                plan.node
            );
        }

        let demand = Demand::of_clone(&template_config, &config.sizing, grown_disk.as_deref());
        let default_nodes = std::iter::once(template_node.clone()).chain(own_template.iter().cloned()).collect();
        let placement = Placement::for_group(&config, default_nodes, linked, demand);
        let guest = GuestDefaults::from_template(&template_config);
        let generate_password = generate_credentials && guest.os == "windows";
        let password = generate_password.then(super::windows_password::generate);
        let key =
            if generate_credentials && !generate_password { Some(derived_key.map_err(Error::SshKey)?) } else { None };
        tracing::info!(
            pve = %version,
            template = %config.template_id,
            node = %template_node,
            clone = if linked { "linked" } else { "full" },
            pool = %config.pool,
            group = %config.group,
            "Proxmox instance group ready"
        );
        let first = config.vmid_range.map_or(0, |(first, _)| first.0);
        let config_takeover = config.take_over_seed_instances;
        let engine = Self {
            naming: Naming::new(&config.group),
            clone_slots: SlotGate::new(Some(config.max_parallel_clones), config.parallel.clones_per_node),
            start_slots: SlotGate::new(config.parallel.starts, config.parallel.starts_per_node),
            grown_disk,
            delete_slots: Semaphore::new(config.max_parallel_deletes as usize),
            breaker: Mutex::new(Breaker::new(
                config.failure_threshold,
                config.failure_backoff,
                config.failure_backoff_max,
            )),
            quarantine: Mutex::new(Quarantine::default()),
            config,
            pve,
            settings,
            key,
            password,
            guest,
            template_node,
            linked,
            placement,
            copies,
            registry: Registry::default(),
            background: TaskTracker::new(),
            cancel: CancellationToken::new(),
            range_cursor: Mutex::new(first),
            vmid_claims: Default::default(),
            takeover_until: config_takeover.then(|| Instant::now() + super::takeover::TAKEOVER_WINDOW),
            metrics,
            leases: LeaseBook::default(),
        };
        Ok((engine, listing))
    }

    /// Where a clone for `node` comes from: the node's template copy, or
    /// the template itself (on its node, or on shared storage).
    pub fn clone_source(&self, node: &str) -> CloneSource {
        self.copies.source_for(node).unwrap_or_else(|| CloneSource {
            vmid: self.config.template_id,
            node: self.template_node.clone(),
            linked: self.linked,
        })
    }

    /// The tags an instance carries in `state`: the group's ownership tags,
    /// `tags`, and the state's own (`instance_tags_creating` / `_running` /
    /// `_removing`, as Phenix66 sets them).
    pub fn tags_for(&self, id: &InstanceId, state: InstanceState) -> Vec<String> {
        let per_state = match state {
            InstanceState::Creating => &self.config.instance_tags_creating,
            InstanceState::Running => &self.config.instance_tags_running,
            InstanceState::Deleting => &self.config.instance_tags_removing,
            _ => &Vec::new(),
        };
        // Lease tags go with the `ipconfig0` written after the lease was
        // confirmed; a VM being deleted may never have got that far (its
        // lease was lost to another VM), and its marker and `ipconfig0`
        // still show any claim until it is gone.
        let lease = match state {
            InstanceState::Deleting => Lease::default(),
            _ => super::lease::held(self, id).unwrap_or_default(),
        };
        let extra: Vec<String> = self.config.tags.iter().chain(per_state).cloned().chain(lease.tags()).collect();
        self.naming.tags(id, &extra)
    }

    /// The port Runner's connector uses: `protocol_port`, else the
    /// protocol's (SSH 22, WinRM 5985, WinRM over HTTPS 5986).
    pub fn connector_port(&self) -> u16 {
        if self.settings.protocol_port != 0 {
            return self.settings.protocol_port;
        }
        let protocol =
            if self.settings.protocol.is_empty() { self.protocol() } else { self.settings.protocol.as_str() };
        match protocol {
            "winrm" => 5985,
            "winrm+https" => 5986,
            _ => 22,
        }
    }

    /// The protocol ConnectInfo names when Runner's connector_config does
    /// not: WinRM with a generated password, else the guest's default.
    pub fn protocol(&self) -> &'static str {
        if self.password.is_some() { "winrm" } else { self.guest.protocol(&self.settings, self.key.is_some()) }
    }

    /// The user cloud-init creates or updates for generated credentials:
    /// Runner's `username` when it names one (Windows images often expect
    /// `Administrator`), else `cloud_init_user`.
    pub fn generated_user(&self) -> String {
        if self.password.is_some() && !self.settings.username.is_empty() {
            self.settings.username.clone()
        } else {
            self.config.cloud_init_user.clone()
        }
    }

    /// The addresses of a static lease, the connecting family first
    /// (`instance_network_protocol`; the other family when the pool has only that).
    pub fn lease_addresses(&self, lease: &Lease) -> Addresses {
        Addresses { internal: lease.connect_address(self.config.instance_network_protocol), external: None }
    }

    /// Where the connector's port of an instance with `addresses` listens.
    pub fn connector_address(&self, addresses: &Addresses) -> Option<SocketAddr> {
        addresses.internal.or(addresses.external).map(|ip| SocketAddr::new(ip, self.connector_port()))
    }

    /// The name and tags of an instance in `state` (creating, running, removing).
    pub fn label_for(&self, id: &InstanceId, state: InstanceState) -> ConfigUpdate {
        let name = match state {
            InstanceState::Creating => &self.config.instance_name_creating,
            InstanceState::Deleting => &self.config.instance_name_removing,
            _ => &self.config.instance_name_running,
        };
        ConfigUpdate { name: Some(name.clone()), tags: Some(self.tags_for(id, state)), ..Default::default() }
    }

    /// Whether VMs found in the pool are still judged as the seed plugin's
    /// (see `takeover`).
    pub fn takeover_open(&self) -> bool {
        self.takeover_until.is_some_and(|until| Instant::now() < until)
    }

    /// The judgement of the seed plugin's VMs for this config.
    pub fn seed_judge(&self) -> super::takeover::SeedJudge<'_> {
        super::takeover::SeedJudge {
            config: &self.config,
            naming: &self.naming,
            generates_key: self.key.is_some() || self.password.is_some(),
        }
    }

    /// Whether `vm` is one of the group's, judged from the cheap listing.
    pub fn owned(&self, vm: &VmResource) -> Option<InstanceId> {
        if vm.template || vm.vmid == self.config.template_id {
            return None;
        }
        let in_pool = vm.pool.as_deref().is_none_or(|pool| pool == self.config.pool);
        if !in_pool {
            return None;
        }
        self.naming.owner_of_tags(vm.vmid, &vm.tags)
    }

    /// The VMIDs of the instances the registry tracks (a copy carrying our
    /// tags is not one of them): one lock for a whole listing.
    pub fn tracked_vmids(&self) -> std::collections::HashSet<crate::pve::Vmid> {
        self.registry.tracked_ids().into_iter().map(|id| id.vmid).collect()
    }

    fn count_active(&self) -> u32 {
        self.registry.count_active() as u32
    }

    // --- The engine's small locks: taken and released inside each call ---

    /// How many of `wanted` instances Increase may create now.
    pub fn admit(&self, wanted: u32) -> Admission {
        self.breaker.lock().unwrap().admit(wanted, Instant::now())
    }

    /// A failure of `cause` counted toward the breaker; when it holds
    /// scale-up, returns the wait and why (for the log).
    pub fn count_failure(&self, cause: Cause, reason: &str) -> Option<(Duration, String)> {
        let now = Instant::now();
        let mut breaker = self.breaker.lock().unwrap();
        let wait = breaker.failure(cause, reason, now)?;
        Some((wait, breaker.status(now).unwrap_or_default()))
    }

    /// The breaker's probe ended without a verdict.
    pub fn probe_undecided(&self) {
        self.breaker.lock().unwrap().probe_undecided(Instant::now());
    }

    /// An instance became ready; true when this resumed held scale-up.
    pub fn provisioning_succeeded(&self) -> bool {
        self.breaker.lock().unwrap().success()
    }

    /// Quarantines `vmid`; true when it was not quarantined before.
    pub fn quarantine_vmid(&self, vmid: crate::pve::Vmid, reason: &str) -> bool {
        self.quarantine.lock().unwrap().add(vmid, reason, Instant::now())
    }

    pub fn is_quarantined(&self, vmid: crate::pve::Vmid) -> bool {
        self.quarantine.lock().unwrap().contains(vmid, Instant::now())
    }

    /// The next VMID of `first..=last` to try, round robin.
    pub fn next_in_range(&self, first: crate::pve::Vmid, last: crate::pve::Vmid) -> crate::pve::Vmid {
        let mut cursor = self.range_cursor.lock().unwrap();
        let candidate = crate::pve::Vmid(*cursor);
        *cursor = if *cursor >= last.0 { first.0 } else { *cursor + 1 };
        candidate
    }

    /// Runs `work` in the background until it ends or the group shuts
    /// down, inside a span naming `vmid` (and `instance`, when known), so
    /// every log line of one instance's life carries them, and the lines of
    /// one Increase also carry its `batch` (the caller's span is the parent).
    pub fn spawn_traced<F>(&self, instance: Option<&InstanceId>, vmid: crate::pve::Vmid, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        use tracing::Instrument as _;
        // Error-level spans: enabled whenever any line is logged, so the ids
        // are on warnings and errors even when Runner's level is `warn`.
        let span = match instance {
            Some(id) => tracing::error_span!("instance", instance = %id, vmid = %vmid),
            None => tracing::error_span!("vm", vmid = %vmid),
        };
        let cancel = self.cancel.clone();
        self.background.spawn(
            async move {
                tokio::select! {
                    () = work => {}
                    () = cancel.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }
}

impl FleetSource for Engine {
    fn snapshot(&self) -> FleetSnapshot {
        let now = Instant::now();
        // One lock at a time (see the lock order on `Engine`).
        let census = self.registry.census();
        let breaker = self.breaker.lock().unwrap().snapshot(now);
        let quarantined = self.quarantine.lock().unwrap().current(now);
        FleetSnapshot {
            group: self.config.group.clone(),
            pool: self.config.pool.clone(),
            max_instances: self.config.max_instances,
            instances: census
                .by_phase_and_node
                .into_iter()
                .map(|((phase, node), count)| InstanceCount { phase: phase.as_str().into(), node, count: count as u64 })
                .collect(),
            oldest_in_phase_seconds: census
                .oldest_in_phase
                .into_iter()
                .map(|(phase, age)| (phase.as_str().to_string(), age.as_secs_f64()))
                .collect(),
            impostors: census.impostors as u64,
            foreign_vms: census.foreign as u64,
            quarantined_vmids: quarantined
                .into_iter()
                .map(|(vmid, entry)| QuarantinedVmid {
                    vmid: vmid.0,
                    reason: entry.reason,
                    until_unix: unix_seconds(entry.until, now),
                })
                .collect(),
            breaker,
            template_copies: self
                .copies
                .survey()
                .into_iter()
                .map(|(plan, status)| copy_state(plan.node, status))
                .collect(),
            retired_template_copies: self.copies.retired_count() as u64,
        }
    }
}

/// A node's copy as the snapshot reports it.
fn copy_state(node: String, status: CopyStatus) -> TemplateCopyState {
    let (state, vmid, staging_seconds, reason) = match status {
        CopyStatus::Current(copy) => ("current", Some(copy.vmid.0), None, None),
        CopyStatus::Staging(running) => ("staging", None, Some(running.as_secs_f64()), None),
        CopyStatus::Failed(reason) => ("failed", None, None, Some(reason)),
        CopyStatus::Missing => ("missing", None, None, None),
    };
    TemplateCopyState { node, state: state.into(), vmid, staging_seconds, reason }
}

/// What is wrong with `target_nodes`: problems refuse the configuration,
/// offline nodes are only skipped until they are back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TargetNodeFindings {
    pub problems: Vec<String>,
    pub offline: Vec<String>,
}

/// `target_nodes` must name nodes of the cluster, and cloning to a node other
/// than the template's needs every volume on shared storage. Used by Init
/// and by `check`.
pub async fn inspect_target_nodes(
    pve: &PveClient,
    config: &GroupConfig,
    template_node: &str,
    own_template: &[String],
    storage: &TemplateStorage,
) -> Result<TargetNodeFindings, crate::pve::Error> {
    let mut findings = TargetNodeFindings::default();
    if config.target_nodes.is_empty() {
        return Ok(findings);
    }
    let nodes = pve.nodes().await?;
    for target in &config.target_nodes {
        match nodes.iter().find(|node| &node.name == target) {
            None => {
                let known: Vec<&str> = nodes.iter().map(|node| node.name.as_str()).collect();
                findings.problems.push(format!(
                    "`target_nodes` names {target}, which is not a node of this cluster (nodes: {}); fix the name or remove it",
                    known.join(", ")
                ));
            }
            Some(node) if !node.online => findings.offline.push(target.clone()),
            Some(_) => {}
        }
    }
    let elsewhere = config.target_nodes.iter().any(|node| node != template_node && !own_template.contains(node));
    let staged = config.staging.mode == super::config::StageMode::Auto;
    if elsewhere && !storage.all_shared() && !staged {
        findings.problems.push(format!(
            "`target_nodes` includes nodes other than {template_node}, but template {} has volumes on storage that is not shared: {}, and `template_stage_mode` is off; Proxmox clones to another node only from shared storage, so set `template_stage_mode = \"auto\"` (each node gets its own copy of the template), move the template's disks and cloud-init drive to shared storage (e.g. Ceph/NFS), or list only {template_node}",
            config.template_id,
            storage.describe(),
        ));
    }
    Ok(findings)
}

async fn check_target_nodes(
    pve: &PveClient,
    config: &GroupConfig,
    template_node: &str,
    own_template: &[String],
    storage: &TemplateStorage,
) -> Result<(), Error> {
    let findings = inspect_target_nodes(pve, config, template_node, own_template, storage).await?;
    for node in &findings.offline {
        tracing::warn!(node, "target node is offline; clones go to the other target nodes until it is back");
    }
    if findings.problems.is_empty() { Ok(()) } else { Err(Error::TargetNodes { problems: findings.problems }) }
}

/// The guest's OS, architecture and connection protocol, read from the
/// template (`ostype`, `arch`), for when Runner's connector_config is silent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDefaults {
    pub os: &'static str,
    pub arch: &'static str,
}

impl GuestDefaults {
    pub fn from_template(config: &BTreeMap<String, String>) -> Self {
        let ostype = config.get("ostype").map(String::as_str).unwrap_or("l26");
        let os = if ostype.starts_with('w') {
            "windows"
        } else if ostype == "solaris" {
            "solaris"
        } else {
            "linux"
        };
        let arch = match config.get("arch").map(String::as_str) {
            Some("aarch64") => "arm64",
            _ => "amd64",
        };
        Self { os, arch }
    }

    /// WinRM for Windows guests reached with a password; SSH otherwise
    /// (generated credentials are always an SSH key).
    pub fn protocol(&self, settings: &ConnectorSettings, generated_key: bool) -> &'static str {
        let password_only = settings.key.is_empty() && !settings.password.is_empty();
        if self.os == "windows" && !generated_key && password_only { "winrm" } else { "ssh" }
    }
}

impl InstanceGroup for ProxmoxGroup {
    async fn init(&self, config: &[u8], settings: ConnectorSettings) -> Result<ProviderInfo, Error> {
        let parsed = PluginConfig::parse(config)?;
        parsed.warnings.iter().for_each(|ignored| tracing::warn!(key = %ignored.key, "{ignored}"));
        let config = parsed.config;
        if let Some(engine) = self.engine.get() {
            return Ok(provider_info(engine));
        }
        let (engine, listing) = Engine::start(config, settings).await?;
        let engine = self.engine.get_or_init(|| async { Arc::new(engine) }).await;
        let tracked = engine.tracked_vmids();
        engine.placement.observe(&listing, |vm| tracked.contains(&vm.vmid));
        let vms = listing.vms;
        let source: Weak<dyn FleetSource> = Arc::downgrade(engine) as Weak<Engine>;
        engine.metrics.set_source(source);
        if let Some(address) = engine.config.metrics_listen {
            *self.listener.lock().unwrap() = Some(MetricsListener::spawn(address, engine.metrics.clone()));
        }
        super::template_copy::spawn_keeper(engine.clone());
        if engine.config.take_over_seed_instances {
            // Init's own listing; what it misses, Update judges in the takeover window.
            let claimed = super::takeover::take_over(engine, &vms).await;
            if claimed > 0 {
                tracing::info!(count = claimed, "took over VMs the seed plugin left in the pool");
            }
        }
        Ok(provider_info(engine))
    }

    async fn update(&self) -> Result<Vec<(String, InstanceState)>, Error> {
        let engine = self.engine()?;
        let started = Instant::now();
        let listing = engine.pve.cluster_listing().await?;
        let vms = &listing.vms;
        let pool = engine.config.pool.as_str();
        let template_id = engine.config.template_id;
        let Reconciled { states, adopt, check_foreign } = engine.registry.reconcile(
            vms,
            Instant::now(),
            |vm| engine.owned(vm),
            |vm| vm.pool.as_deref() == Some(pool) && !vm.template && vm.vmid != template_id,
        );
        for (id, vm) in adopt {
            super::adoption::spawn_adoption(engine.clone(), id, vm);
        }
        for vm in check_foreign {
            super::adoption::spawn_untagged_check(engine.clone(), vm);
        }
        let tracked = engine.tracked_vmids();
        engine.placement.observe(&listing, |vm| tracked.contains(&vm.vmid));
        engine.metrics.update_took(started.elapsed());
        Ok(states)
    }

    async fn increase(&self, count: u32) -> Result<Partial<u32>, Error> {
        use tracing::Instrument as _;
        let engine = self.engine()?;
        // Every line of this Increase and of the instances it starts carries the batch id.
        let batch = format!("{:08x}", rand::random::<u32>());
        let span = tracing::error_span!("increase", batch);
        increase(engine, count).instrument(span).await
    }

    async fn decrease(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, Error> {
        let engine = self.engine()?;
        let mut partial: Partial<Vec<String>> = Partial::default();
        for text in ids {
            let Ok(id) = text.parse::<InstanceId>() else {
                partial.failures.push(Error::NotAnInstance { verb: "remove", id: text });
                continue;
            };
            let start = match engine.registry.begin_removal(&id) {
                Removal::Started => true,
                Removal::AlreadyDeleting => false,
                Removal::Unknown => {
                    partial.failures.push(Error::NotOwned { verb: "remove", id: text });
                    continue;
                }
            };
            if start {
                tracing::info!(instance = %id, vmid = %id.vmid, "instance deleting: removal requested by Runner");
                super::deletion::spawn_deletion(engine.clone(), id, "removal requested by Runner".into());
            }
            partial.succeeded.push(text);
        }
        Ok(partial)
    }

    async fn connect_info(&self, id: &str) -> Result<ConnectInfo, Error> {
        let engine = self.engine()?;
        let parsed: InstanceId = id.parse()?;
        let tracked = engine
            .registry
            .get(&parsed)
            .ok_or_else(|| Error::NotOwned { verb: "get connect info for", id: id.to_string() })?;
        if tracked.phase != Phase::Running || tracked.addresses.is_empty() {
            return Err(Error::NotRunning { id: id.to_string() });
        }
        let mut connector = engine.settings.clone();
        if connector.os.is_empty() {
            connector.os = engine.guest.os.into();
        }
        if connector.arch.is_empty() {
            connector.arch = engine.guest.arch.into();
        }
        if connector.protocol.is_empty() {
            connector.protocol = engine.protocol().into();
        }
        if let Some(key) = &engine.key {
            connector.username = engine.config.cloud_init_user.clone();
            connector.key = key.private_pem.expose().as_bytes().to_vec();
            connector.password.clear();
        }
        if let Some(password) = &engine.password {
            connector.username = engine.generated_user();
            connector.password = password.expose().to_string();
            connector.key.clear();
        }
        let text = |ip: Option<std::net::IpAddr>| ip.map(|ip| ip.to_string()).unwrap_or_default();
        Ok(ConnectInfo {
            connector,
            internal_addr: text(tracked.addresses.internal.or(tracked.addresses.external)),
            external_addr: text(tracked.addresses.external.or(tracked.addresses.internal)),
            expires_unix: None,
        })
    }

    /// One request: the agent's ping fails when the VM is gone, stopped or
    /// its agent is dead (transient API errors are retried, not reported).
    async fn heartbeat(&self, id: &str) -> Result<(), Error> {
        let engine = self.engine()?;
        let parsed: InstanceId =
            id.parse().map_err(|_| Error::Unhealthy(format!("{id} is not an instance of this plugin")))?;
        let node = engine.registry.node_of(&parsed);
        let Some(node) = node else {
            return Err(Error::Unhealthy(format!("instance {id} is gone")));
        };
        if !engine.config.agent_required {
            return probe_port(engine, &parsed, id).await;
        }
        // An API hiccup says nothing about the VM: retry it briefly, and if
        // PVE stays unreachable do not make Runner replace healthy instances.
        let mut pause = Duration::from_millis(250);
        for attempt in 0..3 {
            match engine.pve.agent_ping(&node, parsed.vmid).await {
                Ok(()) => return Ok(()),
                Err(err) if err.is_retryable() && attempt < 2 => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                Err(err) if err.is_retryable() => {
                    tracing::warn!(instance = %id, error = %err, "could not reach PVE to check the instance's health; assuming it is healthy");
                    return Ok(());
                }
                Err(err) => return Err(Error::Unhealthy(format!("instance {id}: {}", err.kind()))),
            }
        }
        Ok(())
    }

    async fn suspend(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, Error> {
        let engine = self.engine()?;
        Ok(super::power::power(engine, ids, PowerAction::Suspend).await)
    }

    async fn resume(&self, ids: Vec<String>) -> Result<Partial<Vec<String>>, Error> {
        let engine = self.engine()?;
        Ok(super::power::power(engine, ids, PowerAction::Resume).await)
    }

    async fn shutdown(&self) -> Result<(), Error> {
        self.listener.lock().unwrap().take();
        if let Some(engine) = self.engine.get() {
            // Background work stops; nothing is deleted (Runner decides that).
            engine.cancel.cancel();
            engine.background.close();
            let _ = tokio::time::timeout(Duration::from_secs(1), engine.background.wait()).await;
        }
        Ok(())
    }
}

/// Increase: as many clone requests as max_instances and the breaker
/// allow; returns once Proxmox accepted them.
async fn increase(engine: &Arc<Engine>, count: u32) -> Result<Partial<u32>, Error> {
    let room = engine.config.max_instances.saturating_sub(engine.count_active());
    let wanted = count.min(room);
    let mut failures = Vec::new();
    engine.metrics.requested(count);
    engine.metrics.refused("max_instances", count - wanted);
    if wanted < count {
        failures.push(Error::MaxInstances {
            requested: count,
            refused: count - wanted,
            max: engine.config.max_instances,
        });
    }
    let admission = engine.admit(wanted);
    engine.metrics.refused("held", wanted - admission.allowed);
    if let Some(held) = admission.held {
        tracing::info!(requested = count, allowed = admission.allowed, "{held}");
        failures.push(Error::ScaleUpHeld(held));
    }
    let probe = admission.probe;
    // A bounded number at a time: each asks PVE for a VMID before it
    // reserves one, and a thousand at once would open a thousand
    // connections to pveproxy (and hold their buffers) for no gain.
    let results: Vec<_> =
        futures::stream::iter((0..admission.allowed).map(|_| super::provision::request_clone(engine.clone(), probe)))
            .buffer_unordered(CLONE_REQUESTS_AT_ONCE)
            .collect()
            .await;
    let mut accepted = 0;
    let mut pool_exhausted = 0;
    let mut no_room: Vec<String> = Vec::new();
    for result in results {
        match result {
            Ok(()) => accepted += 1,
            Err(err @ super::failure::ProvisionError::PoolExhausted { .. }) => {
                pool_exhausted += 1;
                failures.push(Error::Provision(err));
            }
            Err(super::failure::ProvisionError::NoRoom(why)) => no_room.push(why.to_string()),
            Err(err) => failures.push(Error::Provision(err)),
        }
    }
    if pool_exhausted > 0 {
        tracing::warn!(requested = count, short = pool_exhausted, "the static IP pool is exhausted");
    }
    let short_of_room = no_room.len() as u32;
    if let Some(why) = no_room.pop() {
        // One line and one failure for the batch: the reason is the same.
        tracing::warn!(requested = count, short = short_of_room, "{why}");
        failures.push(Error::NoRoom { short: short_of_room, why });
    }
    engine.metrics.refused("ip_pool", pool_exhausted);
    engine.metrics.refused("no_room", short_of_room);
    engine.metrics.refused("error", admission.allowed - accepted - pool_exhausted - short_of_room);
    Ok(Partial { succeeded: accepted, failures })
}

/// Heartbeat without the agent: the connector's port accepts a connection.
async fn probe_port(engine: &Engine, parsed: &InstanceId, id: &str) -> Result<(), Error> {
    let tracked = engine.registry.get(parsed).ok_or_else(|| Error::Unhealthy(format!("instance {id} is gone")))?;
    let Some(address) = engine.connector_address(&tracked.addresses) else {
        return Err(Error::Unhealthy(format!("instance {id} has no address yet")));
    };
    match tokio::time::timeout(PORT_PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(err)) => Err(Error::Unhealthy(format!("instance {id}: could not connect to {address}: {err}"))),
        Err(_) => Err(Error::Unhealthy(format!(
            "instance {id}: could not connect to {address}: no answer within {} s",
            PORT_PROBE_TIMEOUT.as_secs()
        ))),
    }
}

/// How long one TCP probe of a connector's port may take.
pub(crate) const PORT_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How many of one Increase's clone requests (VMID, placement, clone POST)
/// are under way at once; the rest queue behind them in the same call.
const CLONE_REQUESTS_AT_ONCE: usize = 16;

fn provider_info(engine: &Engine) -> ProviderInfo {
    ProviderInfo {
        id: format!("proxmox/{}/{}", engine.config.pool, engine.config.group),
        max_size: engine.config.max_instances,
        version: crate::version::VERSION.into(),
        build_info: crate::version::build_info(),
        capabilities: vec![CAPABILITY_SUSPEND_RESUME.to_string()],
    }
}

/// The address of an instance from its agent, per the group's rules.
pub(crate) fn choose_addresses(
    config: &GroupConfig,
    interfaces: &[crate::pve::GuestInterface],
    net0: Option<&str>,
) -> Addresses {
    let mac = net0.and_then(address::mac_of_net0);
    address::select(
        interfaces,
        mac.as_deref(),
        &config.instance_network_interface,
        config.instance_network_interface_explicit,
        config.instance_network_protocol,
    )
}
