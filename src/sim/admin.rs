//! The simulator's control room, in process ([`Admin`]) and over HTTP
//! under `/_sim/` (JSON, no authentication: bind the simulator to loopback).
//!
//! | Method and path | Body | Effect |
//! |---|---|---|
//! | `GET /_sim/counters` | | requests per operationId, statuses (per operation too), refusal reasons, faults, tasks, the most connections and requests at once, and the simulator's own lag (longest cluster lock hold, late task waits) |
//! | `POST /_sim/counters/reset` | | zeroes the counters; the peaks start again from what is under way |
//! | `GET /_sim/inventory` | | VMs (config, status, lock, pool, agent), orphaned disks, pools, nodes |
//! | `GET /_sim/vms/{vmid}` | | one VM |
//! | `GET /_sim/tasks` | | every task, newest first |
//! | `GET /_sim/faults` | | active fault rules with ids |
//! | `POST /_sim/faults` | a [`FaultRule`] | adds a rule; answers `{"id": n}` |
//! | `DELETE /_sim/faults[/{id}]` | | removes all rules, or one |
//! | `POST /_sim/vms/{vmid}/lock` | `{"lock": "backup"}` or `{"flock": true}` | sets a config lock, or holds the config file lock |
//! | `DELETE /_sim/vms/{vmid}/lock` | | releases both |
//! | `POST /_sim/vms/{vmid}/agent` | `{"state": "running" \| "killed" \| "never-up"}` | breaks or repairs the guest agent |
//! | `POST /_sim/nodes/{node}` | `{"online": false}` | takes a node offline (or back) |
//! | `POST /_sim/unreachable` | `{"seconds": 5}` | refuses every connection for that long (simulated seconds) |
//! | `POST /_sim/orphans` | `{"storage": "local-lvm", "vmid": 105, "node": "pve2"}` | creates an orphaned disk `vm-105-disk-N` (on a local storage: on `node`, by default the VM's node or the storage's first) |
//! | `POST /_sim/vms/{vmid}/config` | `{"set": {"description": "v2"}, "delete": ["tags"]}` | edits the config as an admin on the node would (`qm set`): the digest changes |

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::SimError;
use super::counters::Counters;
use super::faults::FaultRule;
use super::simulator::Shared;

/// In-process control of a running simulator.
#[derive(Clone)]
pub struct Admin {
    shared: Arc<Shared>,
}

/// One VM as the admin sees it: everything, current (no staleness).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmView {
    pub vmid: u32,
    pub node: String,
    pub name: Option<String>,
    /// `running` or `stopped`.
    pub status: String,
    pub lock: Option<String>,
    pub pool: Option<String>,
    pub template: bool,
    pub tags: Vec<String>,
    /// Whether `agent/ping` would answer now.
    pub agent_running: bool,
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VolumeView {
    pub volid: String,
    pub storage: String,
    /// The VMID in the volume's name.
    pub vmid: u32,
    pub size: u64,
    /// The node it lives on (a local storage's volume); `None` on shared storage.
    #[serde(default)]
    pub node: Option<String>,
    /// The template volume a linked clone is based on (`local-lvm:base-9000-disk-0`).
    #[serde(default)]
    pub base: Option<String>,
}

impl VolumeView {
    fn of(v: &super::cluster::Volume) -> Self {
        Self {
            volid: v.volid.clone(),
            storage: v.storage.clone(),
            vmid: v.owner,
            size: v.size,
            node: v.node.clone(),
            base: v.base.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    pub name: String,
    pub online: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    pub vms: Vec<VmView>,
    /// Volumes no VM config references.
    pub orphaned_disks: Vec<VolumeView>,
    /// Pool → member VMIDs.
    pub pools: BTreeMap<String, Vec<u32>>,
    pub nodes: Vec<NodeView>,
    pub running_tasks: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    pub upid: String,
    pub node: String,
    pub task_type: String,
    pub id: String,
    pub user: String,
    pub running: bool,
    pub exit_status: Option<String>,
    pub log: Vec<String>,
    /// When it started and ended, in simulated seconds (exact, unlike the
    /// UPID's whole seconds).
    #[serde(default)]
    pub started: f64,
    #[serde(default)]
    pub ended: Option<f64>,
    /// The VMID the task creates (a clone's new VM), which the UPID does not name.
    #[serde(default)]
    pub creates: Option<u32>,
    /// The client never got the answer that named this task.
    #[serde(default)]
    pub answer_lost: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultEntry {
    pub id: u64,
    #[serde(flatten)]
    pub rule: FaultRule,
}

/// The guest agent's condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    /// Answers once the VM has booted (the default).
    Running,
    /// Stopped answering (qemu-ga crashed).
    Killed,
    /// Never answers (a broken image); inherited by clones.
    NeverUp,
}

impl Admin {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    pub fn counters(&self) -> Counters {
        self.shared.counters.snapshot()
    }

    pub fn reset_counters(&self) {
        self.shared.counters.reset();
    }

    /// Forgets every kept `/cluster/resources` answer and guest item, so the
    /// next answers are written from scratch (benchmarks measure that case).
    pub fn forget_kept_resources(&self) {
        self.shared.resources_cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).forget();
    }

    pub fn add_fault(&self, rule: FaultRule) -> u64 {
        self.shared.faults().add(rule)
    }

    pub fn remove_fault(&self, id: u64) -> bool {
        self.shared.faults().remove(id)
    }

    pub fn clear_faults(&self) {
        self.shared.faults().clear();
    }

    pub fn faults(&self) -> Vec<FaultEntry> {
        self.shared.faults().list().into_iter().map(|(id, rule)| FaultEntry { id, rule }).collect()
    }

    pub fn inventory(&self) -> Inventory {
        let cluster = self.shared.cluster();
        let vms = cluster.vms.keys().filter_map(|vmid| self.view(&cluster, *vmid)).collect();
        let orphaned_disks = cluster.orphaned_volumes().into_iter().map(VolumeView::of).collect();
        let pools = cluster.pools.values().map(|p| (p.id.clone(), p.vms.iter().copied().collect())).collect();
        let nodes = cluster.nodes.values().map(|n| NodeView { name: n.name.clone(), online: n.online }).collect();
        Inventory { vms, orphaned_disks, pools, nodes, running_tasks: cluster.tasks.running() }
    }

    /// Every volume of `vmid`'s name on any storage and node, as the
    /// storages hold them (which tells, e.g., what a linked clone is based on).
    pub fn volumes_of(&self, vmid: u32) -> Vec<VolumeView> {
        let cluster = self.shared.cluster();
        cluster.volumes.values().filter(|v| v.owner == vmid).map(VolumeView::of).collect()
    }

    pub fn vm(&self, vmid: u32) -> Option<VmView> {
        let cluster = self.shared.cluster();
        self.view(&cluster, vmid)
    }

    fn view(&self, cluster: &super::cluster::Cluster, vmid: u32) -> Option<VmView> {
        let guest = cluster.vms.get(&vmid)?;
        let agent_running = super::agent::check_available(guest, self.shared.clock.now(), &self.shared.timings).is_ok();
        Some(VmView {
            vmid,
            node: guest.node.clone(),
            name: guest.name().map(str::to_string),
            status: guest.status().to_string(),
            lock: guest.lock().map(str::to_string),
            pool: guest.pool.clone(),
            template: guest.is_template(),
            tags: guest
                .config
                .get("tags")
                .map(|t| t.split(';').filter(|s| !s.is_empty()).map(str::to_string).collect())
                .unwrap_or_default(),
            agent_running,
            config: guest.config.clone(),
        })
    }

    pub fn tasks(&self) -> Vec<TaskView> {
        let cluster = self.shared.cluster();
        cluster
            .tasks
            .newest_first()
            .map(|task| TaskView {
                upid: task.text.clone(),
                node: task.upid.node.clone(),
                task_type: task.upid.task_type.clone(),
                id: task.upid.id.clone(),
                user: task.upid.user.clone(),
                running: task.is_running(),
                exit_status: task.exit_status.clone(),
                log: task.log.clone(),
                started: task.started,
                ended: task.ended,
                creates: task.creates,
                answer_lost: task.answer_lost,
            })
            .collect()
    }

    /// Sets (`Some`) or clears the `lock` property of a VM's config.
    pub fn set_config_lock(&self, vmid: u32, lock: Option<&str>) -> Result<(), SimError> {
        let mut cluster = self.shared.cluster();
        let guest = cluster.vms.get_mut(&vmid).ok_or_else(|| no_vm(vmid))?;
        match lock {
            Some(lock) => guest.config.insert("lock".into(), lock.to_string()),
            None => guest.config.remove("lock"),
        };
        Ok(())
    }

    /// Holds (or releases) the VM's config file lock, as a long backup or
    /// a stuck `qm` process would: clones of it and power actions time out.
    pub fn hold_lock(&self, vmid: u32, held: bool) -> Result<(), SimError> {
        let mut cluster = self.shared.cluster();
        if !cluster.vms.contains_key(&vmid) && held {
            return Err(no_vm(vmid));
        }
        cluster.hold_flock(vmid, held);
        Ok(())
    }

    pub fn set_agent(&self, vmid: u32, state: AgentState) -> Result<(), SimError> {
        let mut cluster = self.shared.cluster();
        let guest = cluster.vms.get_mut(&vmid).ok_or_else(|| no_vm(vmid))?;
        guest.agent_killed = state == AgentState::Killed;
        guest.agent.never_up = state == AgentState::NeverUp;
        Ok(())
    }

    pub fn set_node_online(&self, node: &str, online: bool) -> Result<(), SimError> {
        let mut cluster = self.shared.cluster();
        let entry = cluster
            .nodes
            .get_mut(node)
            .ok_or_else(|| SimError::Admin(format!("could not change node {node}: it does not exist")))?;
        entry.online = online;
        Ok(())
    }

    /// Refuses every connection for `sim_seconds` (simulated time).
    pub fn make_unreachable(&self, sim_seconds: f64) {
        let until = tokio::time::Instant::now() + self.shared.clock.real(sim_seconds);
        *self.shared.unreachable_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(until);
    }

    /// Creates a disk named for `vmid` that no config references, as a crash
    /// in the middle of a clone leaves behind. On a local storage it lives
    /// on the node of VM `vmid` if there is one, else on the first node that
    /// has the storage.
    pub fn add_orphaned_disk(&self, storage: &str, vmid: u32) -> Result<String, SimError> {
        self.add_orphaned_disk_on(storage, vmid, None)
    }

    /// [`Self::add_orphaned_disk`] on `node` (for a local storage).
    pub fn add_orphaned_disk_on(&self, storage: &str, vmid: u32, node: Option<&str>) -> Result<String, SimError> {
        let mut cluster = self.shared.cluster();
        let problem =
            |cause: String| SimError::Admin(format!("could not create an orphaned disk on {storage}: {cause}"));
        let node = leftover_node(&cluster, storage, vmid, node).map_err(problem)?;
        let name = cluster
            .free_disk_name(storage, vmid, None, &node)
            .ok_or_else(|| problem("the storage does not exist".into()))?;
        cluster.create_volume(storage, name, vmid, 1 << 30, None, &node).map_err(problem)
    }

    /// Edits VM `vmid`'s config as an admin on its node would (`qm set`,
    /// or an edit of `/etc/pve/qemu-server/<vmid>.conf`): `Some` sets a key,
    /// `None` deletes it. No checks, no locks; values are stored as given
    /// (tags normalised as PVE writes them). The config's `digest` changes
    /// with any change, so clients see "the template changed".
    pub fn edit_config(&self, vmid: u32, changes: &[(&str, Option<&str>)]) -> Result<(), SimError> {
        let now = self.shared.clock.now();
        let mut cluster = self.shared.cluster();
        let guest = cluster.vms.get_mut(&vmid).ok_or_else(|| no_vm(vmid))?;
        for (key, value) in changes {
            if key.is_empty() || matches!(*key, "digest" | "vmid" | "node") {
                return Err(SimError::Admin(format!("could not change VM {vmid}: `{key}` is not a config key")));
            }
            match value {
                Some(value) if *key == "tags" => guest.config.insert(key.to_string(), super::vm::normalize_tags(value)),
                Some(value) => guest.config.insert(key.to_string(), value.to_string()),
                None => guest.config.remove(*key),
            };
        }
        cluster.touch(vmid, now);
        Ok(())
    }

    /// Leaves what a node crash in the middle of a clone to `vmid` leaves on
    /// `storage`: its first disk and its cloud-init volume, with no config.
    /// The cloud-init volume has a fixed name, so a later clone to the same
    /// VMID collides with it ("already exists"). Returns the volume ids.
    pub fn add_crashed_clone_leftovers(&self, storage: &str, vmid: u32) -> Result<Vec<String>, SimError> {
        let mut cluster = self.shared.cluster();
        let problem =
            |cause: String| SimError::Admin(format!("could not leave volumes of VM {vmid} on {storage}: {cause}"));
        let node = leftover_node(&cluster, storage, vmid, None).map_err(problem)?;
        let disk = cluster
            .free_disk_name(storage, vmid, None, &node)
            .ok_or_else(|| problem("the storage does not exist".into()))?;
        let cloudinit =
            cluster.cloudinit_volume_name(storage, vmid).ok_or_else(|| problem("the storage does not exist".into()))?;
        let disk = cluster.create_volume(storage, disk, vmid, 1 << 30, None, &node).map_err(problem)?;
        let cloudinit = cluster.create_volume(storage, cloudinit, vmid, 4 << 20, None, &node).map_err(problem)?;
        Ok(vec![disk, cloudinit])
    }

    /// The simulated time (Unix seconds).
    pub fn now(&self) -> f64 {
        self.shared.clock.now()
    }
}

/// The node leftovers of `vmid` on `storage` go to: the given one, the VM's
/// node, or the first node that has the storage.
fn leftover_node(
    cluster: &super::cluster::Cluster,
    storage: &str,
    vmid: u32,
    node: Option<&str>,
) -> Result<String, String> {
    let store = cluster.storages.get(storage).ok_or_else(|| "the storage does not exist".to_string())?;
    let node = match node {
        Some(node) => node.to_string(),
        None => match cluster.vms.get(&vmid).map(|vm| vm.node.clone()).filter(|n| store.available_on(n)) {
            Some(node) => node,
            None => cluster
                .nodes
                .keys()
                .find(|n| store.available_on(n))
                .cloned()
                .ok_or_else(|| "no node has the storage".to_string())?,
        },
    };
    if !cluster.nodes.contains_key(&node) {
        return Err(format!("node {node} does not exist"));
    }
    if !store.available_on(&node) {
        return Err(format!("the storage is not available on node {node}"));
    }
    Ok(node)
}

fn no_vm(vmid: u32) -> SimError {
    SimError::Admin(format!("could not change VM {vmid}: it does not exist"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LockRequest {
    lock: Option<String>,
    #[serde(default)]
    flock: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentRequest {
    state: AgentState,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeRequest {
    online: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnreachableRequest {
    seconds: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrphanRequest {
    storage: String,
    vmid: u32,
    #[serde(default)]
    node: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigEditRequest {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    delete: Vec<String>,
}

/// Answers one `/_sim/…` request.
// The error of the body parsers is the finished 400 answer, built once per
// admin request; boxing it would gain nothing.
#[expect(clippy::result_large_err)]
pub(crate) async fn respond(shared: &Arc<Shared>, request: Request<Body>) -> Response<Body> {
    let admin = Admin::new(shared.clone());
    let method = request.method().clone();
    let path = request.uri().path().trim_end_matches('/').to_string();
    let body = match axum::body::to_bytes(request.into_body(), 1 << 20).await {
        Ok(body) => body,
        Err(err) => {
            return reply(StatusCode::BAD_REQUEST, &error_body(format!("could not read the request body: {err}")));
        }
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    let parse = |what: &str| -> Result<Value, Response<Body>> {
        if body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&body)
            .map_err(|err| reply(StatusCode::BAD_REQUEST, &error_body(format!("could not parse the {what}: {err}"))))
    };
    macro_rules! body_as {
        ($type:ty, $what:expr) => {
            match parse($what).and_then(|value| {
                serde_json::from_value::<$type>(value).map_err(|err| {
                    reply(StatusCode::BAD_REQUEST, &error_body(format!("could not read the {}: {err}", $what)))
                })
            }) {
                Ok(parsed) => parsed,
                Err(response) => return response,
            }
        };
    }
    let vmid = |text: &str| text.parse::<u32>().ok();
    let done = |result: Result<(), SimError>| match result {
        Ok(()) => reply(StatusCode::OK, &serde_json::json!({})),
        Err(err) => reply(StatusCode::NOT_FOUND, &error_body(err.to_string())),
    };
    match (method, segments.as_slice()) {
        (Method::GET, ["counters"]) => reply(StatusCode::OK, &admin.counters()),
        (Method::POST, ["counters", "reset"]) => {
            admin.reset_counters();
            reply(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::GET, ["inventory"]) => reply(StatusCode::OK, &admin.inventory()),
        (Method::GET, ["tasks"]) => reply(StatusCode::OK, &admin.tasks()),
        (Method::GET, ["vms", id]) => match vmid(id).and_then(|v| admin.vm(v)) {
            Some(view) => reply(StatusCode::OK, &view),
            None => reply(StatusCode::NOT_FOUND, &error_body(format!("could not find VM {id}"))),
        },
        (Method::GET, ["faults"]) => reply(StatusCode::OK, &admin.faults()),
        (Method::POST, ["faults"]) => {
            let rule = body_as!(FaultRule, "fault rule");
            reply(StatusCode::OK, &serde_json::json!({ "id": admin.add_fault(rule) }))
        }
        (Method::DELETE, ["faults"]) => {
            admin.clear_faults();
            reply(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::DELETE, ["faults", id]) => match id.parse().ok().filter(|id| admin.remove_fault(*id)) {
            Some(_) => reply(StatusCode::OK, &serde_json::json!({})),
            None => reply(StatusCode::NOT_FOUND, &error_body(format!("could not find fault {id}"))),
        },
        (Method::POST, ["vms", id, "lock"]) => {
            let request = body_as!(LockRequest, "lock request");
            let Some(vmid) = vmid(id) else {
                return reply(StatusCode::NOT_FOUND, &error_body(format!("could not find VM {id}")));
            };
            let result = match request.lock.as_deref() {
                Some(lock) => admin.set_config_lock(vmid, Some(lock)),
                None => Ok(()),
            };
            done(result.and_then(|()| if request.flock { admin.hold_lock(vmid, true) } else { Ok(()) }))
        }
        (Method::DELETE, ["vms", id, "lock"]) => {
            let Some(vmid) = vmid(id) else {
                return reply(StatusCode::NOT_FOUND, &error_body(format!("could not find VM {id}")));
            };
            done(admin.set_config_lock(vmid, None).and_then(|()| admin.hold_lock(vmid, false)))
        }
        (Method::POST, ["vms", id, "config"]) => {
            let request = body_as!(ConfigEditRequest, "config edit");
            let Some(vmid) = vmid(id) else {
                return reply(StatusCode::NOT_FOUND, &error_body(format!("could not find VM {id}")));
            };
            let changes: Vec<(&str, Option<&str>)> = request
                .set
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_str())))
                .chain(request.delete.iter().map(|k| (k.as_str(), None)))
                .collect();
            done(admin.edit_config(vmid, &changes))
        }
        (Method::POST, ["vms", id, "agent"]) => {
            let request = body_as!(AgentRequest, "agent request");
            let Some(vmid) = vmid(id) else {
                return reply(StatusCode::NOT_FOUND, &error_body(format!("could not find VM {id}")));
            };
            done(admin.set_agent(vmid, request.state))
        }
        (Method::POST, ["nodes", node]) => {
            let request = body_as!(NodeRequest, "node request");
            done(admin.set_node_online(node, request.online))
        }
        (Method::POST, ["unreachable"]) => {
            let request = body_as!(UnreachableRequest, "unreachable request");
            admin.make_unreachable(request.seconds);
            reply(StatusCode::OK, &serde_json::json!({}))
        }
        (Method::POST, ["orphans"]) => {
            let request = body_as!(OrphanRequest, "orphan request");
            match admin.add_orphaned_disk_on(&request.storage, request.vmid, request.node.as_deref()) {
                Ok(volid) => reply(StatusCode::OK, &serde_json::json!({ "volid": volid })),
                Err(err) => reply(StatusCode::BAD_REQUEST, &error_body(err.to_string())),
            }
        }
        (method, _) => reply(
            StatusCode::NOT_FOUND,
            &error_body(format!("could not find {method} {path} in the simulator's admin API")),
        ),
    }
}

fn error_body(message: String) -> Value {
    serde_json::json!({ "error": message })
}

fn reply<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
