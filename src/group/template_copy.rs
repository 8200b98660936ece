//! Template copies: one per target node that cannot clone the template
//! directly because the template's disks are on storage that node cannot
//! reach (each node's own local-lvm or ZFS). Proxmox clones to another node
//! only from shared storage, so a copy is made on the template's node (a
//! full clone), migrated offline to the node, and converted into a template
//! there; instances of that node are then cloned from it, linked where its
//! storage allows.
//!
//! Crash safety: a copy is complete only once it is a template, which is
//! its last step. A VM carrying a copy marker of this group that is not a
//! template is a staging that was cut short (kill -9, lost node), and is
//! deleted; so is a complete copy of an older template version, once no
//! linked clone uses it (PVE refuses to delete a template whose base volume
//! a linked clone uses, and that refusal is what tells). Nothing here
//! touches a VM without reading its marker first.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::config::{CloneMode, GroupConfig, StageMode};
use super::engine::Engine;
use super::naming::{CopyMarker, Naming};
use super::placement::Unready;
use super::provision::{absent_from_pool, retry_locked};
use super::template::{TemplateFacts, TemplateStorage};
use crate::pve::{CloneRequest, ClusterListing, Error as PveError, MigrateRequest, PveClient, StorageInfo, Vmid};

/// How often the keeper looks at unfinished work (failed stagings, copies
/// waiting for deletion), at most; half of `template_check_interval` when
/// that is shorter. The template's version is read every interval.
const KEEPER_TICK: Duration = Duration::from_secs(30);
/// A node whose staging failed is tried again after this long, at most
/// (`template_check_interval` when that is shorter).
const RETRY_AFTER: Duration = Duration::from_secs(60);

/// How one node that needs a copy gets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyPlan {
    pub node: String,
    /// The storage on `node` the copy's disks land on.
    pub storage: String,
    /// Instances are linked clones of the copy (its storage can make them,
    /// and `clone_mode` allows); full clones otherwise.
    pub linked: bool,
    /// The migration moves the disks onto `storage` (`targetstorage`,
    /// which PVE lets only `VM.Config.Disk` ask for); otherwise every volume
    /// keeps its storage id, which the node must have.
    pub map_storage: bool,
}

/// A complete copy serving its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateCopy {
    pub vmid: Vmid,
    pub node: String,
    /// The template's version it was made of.
    pub version: String,
}

/// Where the clone of an instance for a node comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloneSource {
    pub vmid: Vmid,
    /// The node the source is on: the clone task runs there.
    pub node: String,
    pub linked: bool,
}

/// A VM of the pool that carries this group's copy marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundCopy {
    pub vmid: Vmid,
    /// Where the listing shows it.
    pub node: String,
    pub marker: CopyMarker,
    pub is_template: bool,
}

/// What `check` and `status` say about one node's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStatus {
    /// Complete and made of the current template.
    Current(TemplateCopy),
    /// Being made, for this long.
    Staging(Duration),
    /// None yet; the last staging failed for this reason.
    Failed(String),
    /// None yet.
    Missing,
}

#[derive(Debug, Default)]
struct State {
    /// The template's version copies must be made of.
    version: String,
    ready: BTreeMap<String, TemplateCopy>,
    /// Nodes whose copy is being made, since when.
    staging: BTreeMap<String, Instant>,
    /// Nodes whose last staging failed: why, and when.
    failed: BTreeMap<String, (String, Instant)>,
    /// Copies to delete once PVE lets us (of an older version, for a node
    /// no longer targeted, or cut short), with the node they were made for.
    retired: BTreeMap<Vmid, String>,
    /// VMIDs stagings in flight took (`/cluster/nextid` reserves nothing,
    /// so two stagings would otherwise pick the same).
    claimed: std::collections::BTreeSet<Vmid>,
}

/// The one owner of the copies' state, behind one private lock (a leaf:
/// never held across an `.await` or together with another lock).
#[derive(Debug, Default)]
pub struct TemplateCopies {
    source: Option<Vmid>,
    /// `template_vmids` beyond the main one: each serves its own node.
    node_templates: BTreeMap<String, CloneSource>,
    /// How long a node whose staging failed rests.
    retry_after: Duration,
    plans: BTreeMap<String, CopyPlan>,
    state: Mutex<State>,
}

impl TemplateCopies {
    /// The copies of `source` that `plans` need, given those found in the
    /// pool: a complete copy of the current `version` on its planned node
    /// serves it; every other one is retired.
    pub fn new(
        source: Vmid,
        plans: Vec<CopyPlan>,
        version: String,
        found: Vec<FoundCopy>,
        check_interval: Duration,
    ) -> Self {
        let plans: BTreeMap<String, CopyPlan> = plans.into_iter().map(|plan| (plan.node.clone(), plan)).collect();
        let mut state = State { version, ..State::default() };
        for copy in found {
            let serves = copy.is_template
                && copy.marker.source == source
                && copy.marker.node == copy.node
                && copy.marker.version == state.version
                && plans.contains_key(&copy.node)
                && !state.ready.contains_key(&copy.node);
            if serves {
                let ready = TemplateCopy { vmid: copy.vmid, node: copy.node.clone(), version: copy.marker.version };
                state.ready.insert(copy.node, ready);
            } else {
                state.retired.insert(copy.vmid, copy.marker.node);
            }
        }
        Self {
            source: Some(source),
            node_templates: BTreeMap::new(),
            retry_after: RETRY_AFTER.min(check_interval),
            plans,
            state: Mutex::new(state),
        }
    }

    /// Adds the templates of `template_vmids` that serve their own node.
    pub fn with_node_templates(mut self, templates: Vec<CloneSource>) -> Self {
        self.node_templates = templates.into_iter().map(|source| (source.node.clone(), source)).collect();
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether any node needs a copy.
    pub fn is_needed(&self) -> bool {
        !self.plans.is_empty()
    }

    pub fn plans(&self) -> impl Iterator<Item = &CopyPlan> {
        self.plans.values()
    }

    /// The node's own template (`template_vmids`), or the ready copy a
    /// node's instances are cloned from; `None` for a node that clones the
    /// main template directly or whose copy is not ready.
    pub fn source_for(&self, node: &str) -> Option<CloneSource> {
        if let Some(own) = self.node_templates.get(node) {
            return Some(own.clone());
        }
        let plan = self.plans.get(node)?;
        let state = self.lock();
        let copy = state.ready.get(node)?;
        Some(CloneSource { vmid: copy.vmid, node: copy.node.clone(), linked: plan.linked })
    }

    /// The nodes that need a copy and have none ready, with why.
    pub fn unready(&self) -> Unready {
        let state = self.lock();
        let now = Instant::now();
        self.plans
            .keys()
            .filter(|node| !state.ready.contains_key(*node))
            .map(|node| {
                let why = match (state.staging.get(node), state.failed.get(node)) {
                    (Some(since), _) => {
                        format!("its template copy is being made ({} s so far)", now.duration_since(*since).as_secs())
                    }
                    (None, Some((reason, _))) => format!("its template copy could not be made: {reason}"),
                    (None, None) => "its template copy is not made yet".to_string(),
                };
                (node.clone(), why)
            })
            .collect()
    }

    /// Each planned node's copy, for `check` and `status`.
    pub fn survey(&self) -> Vec<(CopyPlan, CopyStatus)> {
        let state = self.lock();
        let now = Instant::now();
        self.plans
            .values()
            .map(|plan| {
                let status = if let Some(copy) = state.ready.get(&plan.node) {
                    CopyStatus::Current(copy.clone())
                } else if let Some(since) = state.staging.get(&plan.node) {
                    CopyStatus::Staging(now.duration_since(*since))
                } else if let Some((reason, _)) = state.failed.get(&plan.node) {
                    CopyStatus::Failed(reason.clone())
                } else {
                    CopyStatus::Missing
                };
                (plan.clone(), status)
            })
            .collect()
    }

    /// Nodes whose copy should be made now: none ready of the current
    /// version, none being made, and no failure within `retry_after`.
    /// Each returned node is marked as staging.
    fn begin_due(&self) -> Vec<CopyPlan> {
        let mut state = self.lock();
        let now = Instant::now();
        let State { version, ready, staging, failed, .. } = &mut *state;
        let mut due = Vec::new();
        for plan in self.plans.values() {
            let current = ready.get(&plan.node).is_some_and(|copy| copy.version == *version);
            let resting = failed.get(&plan.node).is_some_and(|(_, when)| now.duration_since(*when) < self.retry_after);
            if current || resting || staging.contains_key(&plan.node) {
                continue;
            }
            staging.insert(plan.node.clone(), now);
            due.push(plan.clone());
        }
        due
    }

    fn version(&self) -> String {
        self.lock().version.clone()
    }

    /// Takes in the template's version; `true` when it changed.
    fn set_version(&self, version: String) -> bool {
        let mut state = self.lock();
        let changed = state.version != version;
        state.version = version;
        changed
    }

    /// A node's new copy is complete: it serves the node from now on, and
    /// the copy it replaces is retired.
    fn staged(&self, copy: TemplateCopy) {
        let mut state = self.lock();
        state.staging.remove(&copy.node);
        state.failed.remove(&copy.node);
        if let Some(old) = state.ready.insert(copy.node.clone(), copy) {
            state.retired.insert(old.vmid, old.node);
        }
    }

    /// A node's staging failed; the VM it made (its clone had completed) is
    /// retired.
    fn staging_failed(&self, node: &str, reason: String, made: Option<Vmid>) {
        let mut state = self.lock();
        state.staging.remove(node);
        state.failed.insert(node.to_string(), (reason, Instant::now()));
        if let Some(vmid) = made {
            state.retired.insert(vmid, node.to_string());
        }
    }

    /// Takes `vmid` for a staging unless another staging has it.
    fn claim(&self, vmid: Vmid) -> bool {
        self.lock().claimed.insert(vmid)
    }

    fn unclaim(&self, vmid: Vmid) {
        self.lock().claimed.remove(&vmid);
    }

    fn retired(&self) -> Vec<(Vmid, String)> {
        self.lock().retired.iter().map(|(vmid, node)| (*vmid, node.clone())).collect()
    }

    /// How many retired copies wait for deletion.
    pub fn retired_count(&self) -> usize {
        self.lock().retired.len()
    }

    fn forget_retired(&self, vmid: Vmid) {
        self.lock().retired.remove(&vmid);
    }

    /// The VMIDs of every copy this process knows (ready, retired or being made).
    fn known_vmids(&self) -> Vec<Vmid> {
        let state = self.lock();
        let ready = state.ready.values().map(|copy| copy.vmid);
        ready.chain(state.retired.keys().copied()).chain(state.claimed.iter().copied()).collect()
    }
}

/// Which target nodes need a copy and where it goes: every node in
/// `target_nodes` other than the template's, when the template has a volume
/// on storage that is not shared (with shared storage, every node clones it
/// directly), and other than those with a template of their own
/// (`own_template`). The copy's storage on the node is the first of
/// `target_storages` (else `storage`, else the template's disk storage) that
/// the listing shows there; instances are linked clones of it when
/// `clone_mode` allows and that storage can make them. A node that can get
/// no copy is a problem naming the fix.
pub fn plan_copies(
    config: &GroupConfig,
    facts: &TemplateFacts,
    storage: &TemplateStorage,
    listing: &ClusterListing,
    own_template: &[String],
) -> Result<Vec<CopyPlan>, Vec<String>> {
    if config.staging.mode == StageMode::Off || storage.all_shared() {
        return Ok(Vec::new());
    }
    let wanted: Vec<&String> = if !config.placement.target_storages.is_empty() {
        config.placement.target_storages.iter().collect()
    } else if let Some(storage) = &config.storage {
        vec![storage]
    } else {
        facts.disk_storages.iter().take(1).collect()
    };
    let mut plans = Vec::new();
    let mut problems = Vec::new();
    for node in config.target_nodes.iter().filter(|node| **node != facts.node && !own_template.contains(node)) {
        let on_node: Vec<_> = listing.storages.iter().filter(|s| s.node == *node && s.available).collect();
        // Without Datastore.Audit the listing shows no storage of the node,
        // and an offline node shows none available: take the first wanted
        // one, and let the migration say if it is missing.
        let chosen = if on_node.is_empty() {
            wanted.first().map(|name| name.to_string())
        } else {
            wanted.iter().find_map(|name| {
                on_node
                    .iter()
                    .find(|s| s.storage == **name && s.content.iter().any(|c| c == "images"))
                    .map(|_| name.to_string())
            })
        };
        // A storage's type is cluster-wide (storage.cfg): any node's entry tells it.
        let kind_of = |name: &str| listing.storages.iter().find(|s| s.storage == name).and_then(|s| s.kind.clone());
        let Some((storage_name, kind)) = chosen.map(|name| {
            let kind = kind_of(&name);
            (name, kind)
        }) else {
            let names: Vec<&str> = wanted.iter().map(|name| name.as_str()).collect();
            problems.push(format!(
                "node {node} cannot get a copy of template {}: none of {} holds VM disks there; add a storage of {node} to `target_storages`, or remove {node} from `target_nodes`",
                config.template_id,
                if names.is_empty() { "(no storage)".to_string() } else { names.join(", ") }
            ));
            continue;
        };
        let linkable = kind.is_some_and(|kind| StorageInfo { kind, shared: false }.supports_linked_clones());
        let map_storage = facts.all_storages().iter().any(|name| *name != storage_name);
        plans.push(CopyPlan {
            node: node.clone(),
            storage: storage_name,
            linked: config.clone_mode != CloneMode::Full && linkable,
            map_storage,
        });
    }
    if problems.is_empty() { Ok(plans) } else { Err(problems) }
}

/// The templates of `template_vmids` beyond the main one, each judged like
/// the main one and serving its own node: one per node, on a target node,
/// growing the same disk. Linked clones where its storage allows.
pub async fn read_node_templates(
    pve: &PveClient,
    config: &GroupConfig,
    listing: &ClusterListing,
    main_node: &str,
    generate_credentials: bool,
    grown_disk: Option<&str>,
) -> Result<Vec<CloneSource>, super::Error> {
    let mut sources: Vec<CloneSource> = Vec::new();
    for &id in &config.node_templates {
        let vm =
            listing.vms.iter().find(|vm| vm.vmid == id).ok_or(super::Error::TemplateNotFound { template_id: id })?;
        let mut problems = Vec::new();
        if vm.node == main_node {
            problems.push(format!(
                "it is on {main_node}, like template {}; `template_vmids` takes one template per node",
                config.template_id
            ));
        } else if let Some(other) = sources.iter().find(|source| source.node == vm.node) {
            problems.push(format!(
                "it is on {}, like template {}; `template_vmids` takes one template per node",
                vm.node, other.vmid
            ));
        }
        if !config.target_nodes.is_empty() && !config.target_nodes.contains(&vm.node) {
            problems
                .push(format!("it is on {}, which is not in `target_nodes`; add {} or remove {id}", vm.node, vm.node));
        }
        let template_config = pve.vm_config(&vm.node, id).await?;
        let facts = TemplateFacts::from_config(&vm.node, &template_config, vm.template);
        let judged =
            super::template::judge(&facts, &GroupConfig { template_id: id, ..config.clone() }, generate_credentials);
        problems.extend(judged.into_iter().filter_map(|requirement| requirement.verdict.err().map(|p| p.to_string())));
        match super::template::grown_disk(&template_config, config) {
            Ok(disk) if disk.as_deref() == grown_disk => {}
            Ok(disk) => problems.push(format!(
                "its disk to grow is {}, but template {}'s is {}; give the templates the same disk layout",
                disk.as_deref().unwrap_or("none"),
                config.template_id,
                grown_disk.unwrap_or("none")
            )),
            Err(problem) => problems.push(problem),
        }
        let storage = TemplateStorage::inspect(pve, &facts).await;
        let linked = match super::template::clone_kind(&facts, &storage, config.clone_mode, config.clone_mode_explicit)
        {
            Ok((linked, _)) => linked,
            Err(problem) => {
                problems.push(problem.to_string());
                false
            }
        };
        if !problems.is_empty() {
            return Err(super::Error::Template { template_id: id, problems });
        }
        sources.push(CloneSource { vmid: id, node: vm.node.clone(), linked });
    }
    Ok(sources)
}

/// The template's version as copies record it: the value of a
/// `template-version=<value>` line in its description (nE0sIghT's marker,
/// which an admin bumps on purpose), else its config digest (any change).
pub fn template_version(config: &BTreeMap<String, String>) -> String {
    let description = config.get("description").map(String::as_str).unwrap_or_default();
    let marked = description.lines().find_map(|line| line.trim().strip_prefix("template-version="));
    match marked.map(str::trim).filter(|value| !value.is_empty()) {
        // The marker field is one word.
        Some(value) => format!("v:{}", value.split_whitespace().collect::<Vec<_>>().join("_")),
        None => format!("d:{}", config.get("digest").map(String::as_str).unwrap_or_default()),
    }
}

/// The name of the copy for `node`: `<prefix>-<node>`, within PVE's 63
/// characters of a DNS label.
pub fn copy_name(prefix: &str, node: &str) -> String {
    let room = 63usize.saturating_sub(node.len() + 1);
    let prefix: String = prefix.chars().take(room).collect();
    format!("{}-{node}", prefix.trim_end_matches('-'))
}

/// The VMs of the pool that carry this group's copy marker. Only VMs named
/// like copies and the pool's templates are read (one config read each): a
/// copy made under an earlier `template_name_prefix` is found by the latter,
/// so changing the prefix leaves no copy behind.
pub async fn discover(
    pve: &PveClient,
    naming: &Naming,
    pool: &str,
    name_prefix: &str,
    listing: &ClusterListing,
) -> Result<Vec<FoundCopy>, PveError> {
    let mut found = Vec::new();
    let named = format!("{}-", name_prefix.trim_end_matches('-'));
    for vm in listing.vms.iter().filter(|vm| vm.pool.as_deref() == Some(pool)) {
        if !vm.template && !vm.name.as_deref().is_some_and(|name| name.starts_with(&named)) {
            continue;
        }
        let config = match retry_locked(|| pve.vm_config(&vm.node, vm.vmid)).await {
            Ok(config) => config,
            Err(err) if absent_from_pool(&err, vm.vmid) => continue,
            Err(err) => return Err(err),
        };
        let description = config.get("description").map(String::as_str).unwrap_or_default();
        if let Some(marker) = naming.copy_of_description(description).filter(|marker| marker.vmid == vm.vmid) {
            let is_template = vm.template || config.get("template").is_some_and(|t| t == "1");
            found.push(FoundCopy { vmid: vm.vmid, node: vm.node.clone(), marker, is_template });
        }
    }
    Ok(found)
}

/// Starts the keeper: it makes the copies that are due at once, then, every
/// [`KEEPER_TICK`], retries failed stagings and deletes retired copies, and
/// every `template_check_interval` reads the template's version and makes
/// new copies when it changed.
pub(crate) fn spawn_keeper(engine: Arc<Engine>) {
    if !engine.copies.is_needed() && engine.copies.retired().is_empty() {
        return;
    }
    let background = engine.background.clone();
    let work = async move {
        let mut next_check = Instant::now() + engine.config.staging.check_interval;
        loop {
            if Instant::now() >= next_check {
                next_check = Instant::now() + engine.config.staging.check_interval;
                check_template(&engine).await;
            }
            for plan in engine.copies.begin_due() {
                let staging = engine.clone();
                engine.background.spawn(async move { stage(&staging, plan).await });
            }
            delete_retired(&engine).await;
            tokio::select! {
                () = engine.cancel.cancelled() => return,
                () = tokio::time::sleep(KEEPER_TICK.min(engine.config.staging.check_interval / 2)) => {}
            }
        }
    };
    background.spawn(work);
}

/// Reads the template's version; a change makes every node's copy due.
async fn check_template(engine: &Engine) {
    let Some(source) = engine.copies.source else { return };
    match retry_locked(|| engine.pve.vm_config(&engine.template_node, source)).await {
        Ok(config) => {
            let version = template_version(&config);
            let old = engine.copies.version();
            if engine.copies.set_version(version.clone()) {
                tracing::info!(template = %source, from = old, to = version, "the template changed; making new template copies (the old ones serve until then)");
            }
        }
        Err(err) => {
            tracing::warn!(template = %source, error = %err, "could not read the template to see whether it changed; trying again later")
        }
    }
}

/// Makes the copy `plan` names: a full clone on the template's node, an
/// offline migration to the plan's node, a conversion into a template.
async fn stage(engine: &Arc<Engine>, plan: CopyPlan) {
    let Some(source) = engine.copies.source else { return };
    let version = engine.copies.version();
    let started = Instant::now();
    tracing::info!(node = plan.node, template = %source, storage = plan.storage, "making a template copy for node {}", plan.node);
    let mut made: Option<Vmid> = None;
    let mut claimed: Option<Vmid> = None;
    let result = make_copy(engine, source, &plan, &version, &mut claimed, &mut made).await;
    if let Some(vmid) = claimed {
        engine.copies.unclaim(vmid);
    }
    match result {
        Ok(vmid) => {
            tracing::info!(node = plan.node, vmid = %vmid, seconds = started.elapsed().as_secs(), "template copy ready: node {} clones from VM {vmid}", plan.node);
            engine.copies.staged(TemplateCopy { vmid, node: plan.node.clone(), version });
        }
        Err(err) => {
            tracing::warn!(node = plan.node, error = %err, "could not make the template copy for node {}; trying again in {} s", plan.node, engine.copies.retry_after.as_secs());
            engine.copies.staging_failed(&plan.node, err.to_string(), made);
        }
    }
}

/// Why a copy could not be made.
#[derive(Debug, thiserror::Error)]
enum StageError {
    #[error("could not {step}: {source}")]
    Pve { step: &'static str, source: PveError },
    #[error("no free VMID in `template_vmid_range` {0}-{1}; widen it")]
    RangeFull(Vmid, Vmid),
    #[error("the plugin is shutting down")]
    ShuttingDown,
}

fn step(step: &'static str) -> impl FnOnce(PveError) -> StageError {
    move |source| StageError::Pve { step, source }
}

async fn make_copy(
    engine: &Arc<Engine>,
    source: Vmid,
    plan: &CopyPlan,
    version: &str,
    claimed: &mut Option<Vmid>,
    made: &mut Option<Vmid>,
) -> Result<Vmid, StageError> {
    let pve = &engine.pve;
    let template_node = engine.template_node.as_str();
    // The copy's clone loads the template's storage like any clone: it takes a slot.
    let Some(slot) = engine.clone_slots.acquire(template_node, &engine.cancel).await else {
        return Err(StageError::ShuttingDown);
    };
    // `/cluster/nextid` reserves nothing: another staging or a clone may
    // take the VMID first, and then PVE refuses ours; take the next one.
    let mut attempts = 0;
    let (vmid, upid) = loop {
        attempts += 1;
        if let Some(vmid) = claimed.take() {
            engine.copies.unclaim(vmid);
        }
        let vmid = copy_vmid(engine).await?;
        *claimed = Some(vmid);
        let request = copy_request(engine, vmid, source, plan, version);
        match pve.clone_vm(template_node, source, &request).await {
            Ok(upid) => break (vmid, upid),
            Err(err) if err.is_already_exists() && attempts < 5 => {
                tracing::debug!(vmid = %vmid, "VMID taken meanwhile; the copy tries another");
                tokio::time::sleep(Duration::from_millis(rand::random_range(50..400))).await;
            }
            Err(err) => return Err(StageError::Pve { step: "clone the template", source: err }),
        }
    };
    // A failed clone task leaves nothing of ours (PVE removes what it
    // made; the VMID may even be another's now): only a completed clone
    // is ours to clean up.
    pve.wait_task(&upid, engine.config.clone_timeout).await.map_err(step("clone the template"))?;
    *made = Some(vmid);
    drop(slot);
    let migrate = MigrateRequest {
        target: plan.node.clone(),
        target_storage: plan.map_storage.then(|| plan.storage.clone()),
        bwlimit_kib: engine.config.sizing.clone_bwlimit_kib,
    };
    let upid = retry_locked(|| pve.migrate_vm(template_node, vmid, &migrate))
        .await
        .map_err(step("migrate the copy to its node"))?;
    pve.wait_task(&upid, engine.config.clone_timeout).await.map_err(step("migrate the copy to its node"))?;
    let upid = retry_locked(|| pve.convert_to_template(&plan.node, vmid))
        .await
        .map_err(step("convert the copy into a template"))?;
    // PVE 7.0 answers without the task; `template: 1` is set by then.
    if let Some(upid) = upid {
        pve.wait_task(&upid, engine.config.clone_timeout).await.map_err(step("convert the copy into a template"))?;
    }
    Ok(vmid)
}

/// The clone request of a copy: a full clone on the template's node,
/// carrying the copy's marker from the start, so it never exists unmarked.
fn copy_request(engine: &Engine, vmid: Vmid, source: Vmid, plan: &CopyPlan, version: &str) -> CloneRequest {
    CloneRequest {
        snapshot: engine.config.sizing.clone_snapshot.clone(),
        bandwidth_limit_kib: engine.config.sizing.clone_bwlimit_kib,
        new_vmid: Some(vmid),
        name: Some(copy_name(&engine.config.staging.name_prefix, &plan.node)),
        description: Some(engine.naming.copy_description(vmid, source, &plan.node, version)),
        pool: Some(engine.config.pool.clone()),
        full: Some(true),
        storage: None,
        target_node: None,
    }
}

/// A VMID for a new copy: the first free one of `template_vmid_range`, else
/// the cluster's next free one.
async fn copy_vmid(engine: &Engine) -> Result<Vmid, StageError> {
    let pve = &engine.pve;
    let taken = engine.copies.known_vmids();
    let (first, last) = match engine.config.staging.vmid_range {
        Some(range) => range,
        None => {
            let next = retry_locked(|| pve.next_vmid(None)).await.map_err(step("allocate a VMID"))?;
            (next, Vmid(next.0.saturating_add(100)))
        }
    };
    for candidate in first.0..=last.0 {
        let candidate = Vmid(candidate);
        if taken.contains(&candidate) {
            continue;
        }
        match pve.next_vmid(Some(candidate)).await {
            Ok(vmid) if engine.copies.claim(vmid) => return Ok(vmid),
            Ok(_) => continue,
            Err(err)
                if err.is_already_exists() || matches!(err.kind(), crate::pve::ErrorKind::InvalidParameter { .. }) =>
            {
                continue;
            }
            Err(err) => return Err(StageError::Pve { step: "allocate a VMID", source: err }),
        }
    }
    Err(StageError::RangeFull(first, last))
}

/// Deletes the retired copies PVE lets go of: a copy a linked clone still
/// uses stays until its last instance is gone, and a copy whose staging is
/// still running (after a restart) until its task ends.
async fn delete_retired(engine: &Engine) {
    for (vmid, node) in engine.copies.retired() {
        match delete_copy(engine, vmid, &node).await {
            Ok(Deleted::Gone) => engine.copies.forget_retired(vmid),
            Ok(Deleted::Now) => {
                tracing::info!(vmid = %vmid, node, "deleted a template copy no longer needed");
                engine.copies.forget_retired(vmid);
            }
            Ok(Deleted::Busy(why)) => {
                tracing::debug!(vmid = %vmid, node, "the retired template copy stays for now: {why}");
            }
            Ok(Deleted::NotOurs) => {
                tracing::warn!(vmid = %vmid, node, "VM {vmid} no longer carries this group's copy marker; leaving it alone");
                engine.copies.forget_retired(vmid);
            }
            Err(err) => {
                tracing::debug!(vmid = %vmid, node, error = %err, "the retired template copy stays for now");
            }
        }
    }
}

enum Deleted {
    Now,
    /// Not now (a task of a staging cut short still runs).
    Busy(String),
    Gone,
    NotOurs,
}

async fn delete_copy(engine: &Engine, vmid: Vmid, made_for: &str) -> Result<Deleted, PveError> {
    let pve = &engine.pve;
    // It may have moved since it was retired (a migration of a staging cut
    // short finishes after a restart): the listing tells where it is now.
    let vms = pve.cluster_vms().await?;
    let Some(node) = vms.iter().find(|vm| vm.vmid == vmid).map(|vm| vm.node.clone()) else {
        return Ok(Deleted::Gone);
    };
    let at = match pve.vm_config(&node, vmid).await {
        Ok(config) => Some((node, config)),
        Err(err) if absent_from_pool(&err, vmid) => None,
        Err(err) => return Err(err),
    };
    let Some((node, config)) = at else { return Ok(Deleted::Gone) };
    let description = config.get("description").map(String::as_str).unwrap_or_default();
    let ours = engine.naming.copy_of_description(description).is_some_and(|m| m.vmid == vmid && m.node == made_for);
    if !ours {
        return Ok(Deleted::NotOurs);
    }
    if let Some(lock) = config.get("lock") {
        return Ok(Deleted::Busy(format!("it is locked ({lock})")));
    }
    let upid = pve.delete_vm(&node, vmid).await?;
    pve.wait_task(&upid, engine.config.delete_timeout).await?;
    Ok(Deleted::Now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(node: &str) -> CopyPlan {
        CopyPlan { node: node.into(), storage: "local-lvm".into(), linked: true, map_storage: false }
    }

    fn found(vmid: u32, node: &str, version: &str, is_template: bool) -> FoundCopy {
        FoundCopy {
            vmid: Vmid(vmid),
            node: node.into(),
            marker: CopyMarker { vmid: Vmid(vmid), source: Vmid(9000), node: node.into(), version: version.into() },
            is_template,
        }
    }

    #[test]
    fn only_complete_current_copies_on_planned_nodes_serve() {
        let copies = TemplateCopies::new(
            Vmid(9000),
            vec![plan("pve2"), plan("pve3")],
            "d:new".into(),
            vec![
                found(9901, "pve2", "d:new", true),
                found(9902, "pve3", "d:old", true),
                found(9903, "pve3", "d:new", false),
                found(9904, "pve4", "d:new", true),
            ],
            RETRY_AFTER,
        );
        assert_eq!(
            copies.source_for("pve2"),
            Some(CloneSource { vmid: Vmid(9901), node: "pve2".into(), linked: true })
        );
        assert_eq!(copies.source_for("pve3"), None);
        assert_eq!(copies.source_for("pve1"), None, "the template's node clones the template");
        let retired: Vec<u32> = copies.retired().into_iter().map(|(vmid, _)| vmid.0).collect();
        assert_eq!(retired, [9902, 9903, 9904]);
        assert_eq!(copies.unready().keys().collect::<Vec<_>>(), ["pve3"]);
        let due: Vec<String> = copies.begin_due().into_iter().map(|plan| plan.node).collect();
        assert_eq!(due, ["pve3"]);
        assert!(copies.begin_due().is_empty(), "a node being staged is not due again");
        assert!(copies.unready()["pve3"].contains("being made"));
    }

    #[test]
    fn a_changed_template_makes_every_copy_due_and_the_old_one_serves_meanwhile() {
        let copies = TemplateCopies::new(
            Vmid(9000),
            vec![plan("pve2")],
            "d:a".into(),
            vec![found(9901, "pve2", "d:a", true)],
            RETRY_AFTER,
        );
        assert!(copies.begin_due().is_empty());
        assert!(copies.set_version("d:b".into()));
        assert_eq!(copies.begin_due().len(), 1);
        assert_eq!(copies.source_for("pve2").map(|source| source.vmid), Some(Vmid(9901)));
        copies.staged(TemplateCopy { vmid: Vmid(9905), node: "pve2".into(), version: "d:b".into() });
        assert_eq!(copies.source_for("pve2").map(|source| source.vmid), Some(Vmid(9905)));
        assert_eq!(copies.retired(), [(Vmid(9901), "pve2".to_string())]);
    }

    #[test]
    fn a_failed_staging_rests_and_retires_what_it_left() {
        let copies = TemplateCopies::new(Vmid(9000), vec![plan("pve2")], "d:a".into(), Vec::new(), RETRY_AFTER);
        assert_eq!(copies.begin_due().len(), 1);
        copies.staging_failed("pve2", "could not clone".into(), Some(Vmid(9907)));
        assert!(copies.begin_due().is_empty(), "not again before RETRY_AFTER");
        assert!(copies.unready()["pve2"].contains("could not clone"));
        assert_eq!(copies.retired(), [(Vmid(9907), "pve2".to_string())]);
    }

    #[test]
    fn versions_and_names() {
        let config = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(template_version(&config(&[("digest", "abc")])), "d:abc");
        assert_eq!(
            template_version(&config(&[("digest", "abc"), ("description", "Debian 12\ntemplate-version=2 final\n")])),
            "v:2_final"
        );
        assert_eq!(copy_name("fleeting-template", "pve2"), "fleeting-template-pve2");
        assert_eq!(copy_name(&"x".repeat(70), "pve2").len(), 63);
    }
}
