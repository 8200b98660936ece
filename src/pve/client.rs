//! `PveClient`: domain-shaped calls over the generated client. Callers see
//! `Vmid`, `Upid` and plain structs; generated types stay in this room.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use progenitor_client::ClientInfo;
use serde_json::Value;
use tokio::sync::OnceCell;

use super::api::{self, types};
use super::credentials::Credentials;
use super::error::{self, Error, ErrorKind};
use super::lenient::PveBool;
use super::session::{RetryPolicy, Session};
use super::task::{TaskSuccess, Upid, exit_status_outcome};
use super::tls::{self, TlsOptions};
use super::version::PveVersion;

/// A VM id (100 – 999 999 999).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Vmid(pub u32);

impl std::fmt::Display for Vmid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<Vmid> for i64 {
    fn from(vmid: Vmid) -> i64 {
        i64::from(vmid.0)
    }
}

/// Idle connections to PVE kept for reuse after a burst of requests.
const IDLE_CONNECTIONS_KEPT: usize = 16;

/// Everything needed to reach one PVE cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `https://pve.example.com:8006`; a trailing `/api2/json` is accepted.
    pub url: String,
    /// Which certificates to trust.
    pub tls: TlsOptions,
    /// API token or password login.
    pub credentials: Credentials,
    /// Limit for one HTTP request (not for the task it starts).
    pub request_timeout: Duration,
    /// Limit for opening a connection.
    pub connect_timeout: Duration,
    /// Backoff for requests that are safe to retry.
    pub retry: RetryPolicy,
    /// Told of every request, retry and ticket event (metrics).
    pub observer: Option<super::Observer>,
}

impl ClientConfig {
    /// System roots, 30 s per request, 10 s to connect, the default retry policy.
    pub fn new(url: impl Into<String>, credentials: Credentials) -> Self {
        Self {
            url: url.into(),
            tls: TlsOptions::default(),
            credentials,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            observer: None,
        }
    }
}

/// One guest as `/cluster/resources` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmResource {
    /// The guest's id.
    pub vmid: Vmid,
    /// The node it lives on.
    pub node: String,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// `running`, `stopped`, or `unknown` while the node's status is stale.
    pub status: Option<String>,
    /// Whether it is a template.
    pub template: bool,
    /// A config lock such as `clone`, `backup` or `migrate`.
    pub lock: Option<String>,
    /// As PVE stores them: lower-cased, sorted, de-duplicated.
    pub tags: Vec<String>,
    /// The pool it belongs to.
    pub pool: Option<String>,
    /// Seconds since it started, while it runs.
    pub uptime: Option<u64>,
    /// Its configured memory in bytes.
    pub max_memory: Option<u64>,
    /// Its configured virtual CPUs (cores × sockets, or `vcpus`).
    pub cpus: Option<f64>,
}

/// One node as `/cluster/resources` lists it. Usage is what the node's
/// status daemon last reported; it is missing while the node is offline.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeResource {
    pub name: String,
    /// `online`, or `offline`/`unknown` when the node left the quorum.
    pub online: bool,
    /// Logical CPUs.
    pub cpus: Option<f64>,
    /// CPU use as a fraction of all CPUs (0.0 – 1.0).
    pub cpu_usage: Option<f64>,
    /// Memory in bytes: the total and the part in use.
    pub max_memory: Option<u64>,
    pub memory_used: Option<u64>,
}

/// One storage on one node as `/cluster/resources` lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageResource {
    pub storage: String,
    pub node: String,
    /// `available` when the node can use it now.
    pub available: bool,
    pub shared: bool,
    /// Content types (`images`, `rootdir`, `iso`, …).
    pub content: Vec<String>,
    /// The storage type (`lvmthin`, `zfspool`, `rbd`, …).
    pub kind: Option<String>,
    /// Bytes: the size and the part in use.
    pub total: Option<u64>,
    pub used: Option<u64>,
}

/// The one `/cluster/resources` answer Update reads: guests, nodes and
/// storages together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterListing {
    pub vms: Vec<VmResource>,
    pub nodes: Vec<NodeResource>,
    pub storages: Vec<StorageResource>,
}

/// `GET …/status/current`, reduced to what decisions need.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStatus {
    /// `running` or `stopped`.
    pub status: String,
    /// QEMU's own view (`running`, `paused`, `prelaunch`, …).
    pub qmpstatus: Option<String>,
    /// A config lock such as `clone` or `backup`.
    pub lock: Option<String>,
    /// Whether the VM's config enables the guest agent (`agent: 1`).
    pub agent_enabled: bool,
    /// Its name, if it has one.
    pub name: Option<String>,
    /// Whether it is a template.
    pub template: bool,
    /// Its tags, as PVE stores them.
    pub tags: Vec<String>,
}

/// A clone request; `None` fields are left to PVE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CloneRequest {
    /// The new VM's id (PVE requires one; see [`PveClient::next_vmid`]).
    pub new_vmid: Option<Vmid>,
    /// The new VM's name.
    pub name: Option<String>,
    /// The new VM's description, written atomically with the clone.
    pub description: Option<String>,
    /// The pool the new VM joins.
    pub pool: Option<String>,
    /// `Some(true)` full, `Some(false)` linked, `None` PVE's default.
    pub full: Option<bool>,
    /// Target storage for a full clone.
    pub storage: Option<String>,
    /// Target node (full clones on shared storage only).
    pub target_node: Option<String>,
    /// Clone this snapshot of the source instead of its current state.
    pub snapshot: Option<String>,
    /// Bandwidth limit of the copy in KiB/s (PVE's `bwlimit`).
    pub bandwidth_limit_kib: Option<u64>,
}

/// An offline migration (`POST …/migrate` without `online`): PVE copies
/// the VM's local disks to `target` and moves its config there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateRequest {
    /// The node the VM moves to.
    pub target: String,
    /// PVE's `targetstorage`: one storage id for every local disk, `1` for
    /// each disk's own storage, or `source:target` pairs (comma-separated).
    pub target_storage: Option<String>,
    /// Bandwidth limit of the disk copy in KiB/s (PVE's `bwlimit`).
    pub bwlimit_kib: Option<u64>,
}

/// A VM without disks or devices (see [`PveClient::create_empty_vm`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmptyVmRequest {
    pub vmid: Vmid,
    pub name: Option<String>,
    pub description: Option<String>,
    pub pool: Option<String>,
}

/// Configuration keys to change with `PUT …/config`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigUpdate {
    /// A new name.
    pub name: Option<String>,
    /// A new description.
    pub description: Option<String>,
    /// The complete new tag list.
    pub tags: Option<Vec<String>>,
    /// cloud-init's user.
    pub ciuser: Option<String>,
    /// Public keys, one per line; percent-encoded here as PVE requires.
    pub ssh_public_keys: Option<String>,
    /// cloud-init's network config of net0, e.g. `ip=dhcp`.
    pub ipconfig0: Option<String>,
    /// cloud-init's DNS servers, separated by spaces.
    pub nameserver: Option<String>,
    /// cloud-init's DNS search domain.
    pub searchdomain: Option<String>,
    /// cloud-init's password for `ciuser` (cloudbase-init sets it on Windows).
    pub cipassword: Option<super::Secret>,
    /// Keys to remove from the config.
    pub delete: Vec<String>,
    /// Fails the update if the config changed since it was read.
    pub digest: Option<String>,
    /// Memory in MiB (`memory`).
    pub memory_mib: Option<u64>,
    /// Cores per socket (`cores`).
    pub cores: Option<u32>,
}

/// One interface reported by the guest agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestInterface {
    /// The guest's name for it (`ens18`, `eth0`, `lo`).
    pub name: String,
    /// Its hardware address, lower-case.
    pub mac: Option<String>,
    /// Addresses with their prefix lengths.
    pub addresses: Vec<(IpAddr, u8)>,
}

/// Task state as PVE reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskStatus {
    /// Whether the task still runs.
    pub running: bool,
    /// `OK`, `WARNINGS: n`, or the error text, once it ended.
    pub exit_status: Option<String>,
}

/// A disk image on a storage, as `GET …/storage/{storage}/content` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageVolume {
    /// `local-lvm:vm-100-disk-0`.
    pub volid: String,
    /// The VMID the volume is named for, if any.
    pub vmid: Option<Vmid>,
    /// Bytes.
    pub size: u64,
}

/// A storage as `GET /storage/{storage}` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageInfo {
    /// `dir`, `nfs`, `cifs`, `lvm`, `lvmthin`, `zfspool`, `rbd`, `iscsi`, …
    pub kind: String,
    /// Whether every node sees the same storage.
    pub shared: bool,
}

impl StorageInfo {
    /// Whether PVE can make linked clones of a template disk on this storage
    /// (pve-storage's `clone` feature for `base` volumes).
    pub fn supports_linked_clones(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "dir" | "nfs" | "cifs" | "glusterfs" | "cephfs" | "lvmthin" | "zfspool" | "zfs" | "rbd" | "btrfs"
        )
    }
}

/// One node of the cluster (`GET /nodes`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub name: String,
    pub online: bool,
}

/// One member of a pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolMember {
    /// `qemu/101`, `storage/pve1/local-lvm`, …
    pub id: String,
    /// `qemu`, `lxc` or `storage`.
    pub kind: String,
    /// The guest's id, for guests.
    pub vmid: Option<Vmid>,
    /// The node, where PVE names one.
    pub node: Option<String>,
}

/// How often a young task's status is read, and for how long it counts as
/// young: a linked clone, a config change or a start ends within a few
/// seconds, and provisioning waits for each in turn, so a poll that has
/// already backed off would see it done up to half a second late every time.
const YOUNG_TASK_POLL: Duration = Duration::from_millis(250);
const YOUNG_TASK_FOR: Duration = Duration::from_secs(2);
/// The longest pause between two reads of a long task's status.
const OLD_TASK_POLL: Duration = Duration::from_secs(2);

/// The pause before the next read of a task's status, `age` after it was
/// first read: the admin's fixed interval if set, else every 250 ms while
/// the task is young, then growing by half up to 2 s.
fn next_task_poll(fixed: Option<Duration>, interval: Duration, age: Duration) -> Duration {
    match fixed {
        Some(fixed) => fixed,
        None if age < YOUNG_TASK_FOR => YOUNG_TASK_POLL,
        None => (interval * 3 / 2).min(OLD_TASK_POLL),
    }
}

/// The Proxmox VE client.
#[derive(Clone, Debug)]
pub struct PveClient {
    api: api::Client,
    version: Arc<OnceCell<PveVersion>>,
    /// A fixed pause between two reads of a task's status; `None` polls
    /// adaptively ([`next_task_poll`]).
    task_poll_interval: Option<Duration>,
}

impl PveClient {
    /// Reads task status every `interval` instead of adaptively (Phenix66's
    /// `proxmox_task_wait_interval`).
    pub fn with_task_poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.task_poll_interval = interval;
        self
    }

    /// Builds the client and, for password credentials, logs in.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        let client = Self::new(config)?;
        client.api.inner().login().await?;
        Ok(client)
    }

    /// Builds the client without contacting PVE (a ticket login then happens
    /// on the first request).
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        let base_url = api_base_url(&config.url)?;
        let mut builder = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(config.connect_timeout)
            // pveproxy speaks HTTP/1.1: every request in flight has its own
            // connection. Keep a few for the next burst, not one per request
            // of the last (each holds TLS and HTTP buffers).
            .pool_max_idle_per_host(IDLE_CONNECTIONS_KEPT)
            .user_agent(concat!("fleeting-plugin-proxmox/", env!("CARGO_PKG_VERSION")));
        if let Some(tls_config) = tls::client_config(&config.tls)? {
            builder = builder.tls_backend_preconfigured(tls_config);
        }
        let http = builder.build().map_err(|err| Error::setup("build the HTTP client", err.to_string()))?;
        let login_client = api::Client::new_with_client(
            &base_url,
            http.clone(),
            Session::anonymous(config.retry, config.observer.clone()),
        );
        let session = Session::new(&config.credentials, config.retry, config.observer.clone(), login_client)?;
        Ok(Self {
            api: api::Client::new_with_client(&base_url, http, session),
            version: Arc::new(OnceCell::new()),
            task_poll_interval: None,
        })
    }

    /// The generated client, for operations this wrapper does not cover. It
    /// shares authentication, retries and timeouts with the wrapper.
    pub fn api(&self) -> &api::Client {
        &self.api
    }

    /// The PVE release (`GET /version`), read once and cached.
    pub async fn version(&self) -> Result<PveVersion, Error> {
        self.version
            .get_or_try_init(|| async {
                let action = "read the PVE version";
                let data = data(self.api.get_version().await, action).await?;
                let text = data.version.or(data.release).unwrap_or_default();
                PveVersion::parse(&text).ok_or_else(|| invalid(action, format!("unrecognised version `{text}`")))
            })
            .await
            .cloned()
    }

    /// All QEMU guests of the cluster in one request.
    pub async fn cluster_vms(&self) -> Result<Vec<VmResource>, Error> {
        let action = "list the cluster's VMs";
        let items =
            data(self.api.get_cluster_resources(Some(types::GetClusterResourcesType::Vm)).await, action).await?;
        let mut vms = Vec::new();
        for item in items {
            if let Some(vm) = vm_resource(item, action)? {
                vms.push(vm);
            }
        }
        Ok(vms)
    }

    /// Guests, nodes and storages of the cluster in one request (no type
    /// filter): what placement needs comes with the listing Update reads
    /// anyway. Nodes and storages the credentials may not audit are absent.
    pub async fn cluster_listing(&self) -> Result<ClusterListing, Error> {
        let action = "list the cluster's resources";
        let items = data(self.api.get_cluster_resources(None).await, action).await?;
        let mut listing = ClusterListing::default();
        for item in items {
            match item.type_.as_deref() {
                Some("qemu") => listing.vms.extend(vm_resource(item, action)?),
                Some("node") => listing.nodes.extend(node_resource(item)),
                Some("storage") => listing.storages.extend(storage_resource(item)),
                _ => {}
            }
        }
        Ok(listing)
    }

    /// The cluster's nodes and whether each is online.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, Error> {
        let action = "list the cluster's nodes";
        let items = data(self.api.get_nodes().await, action).await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let name = item.node?;
                Some(NodeInfo { online: item.status.as_deref() == Some("online"), name })
            })
            .collect())
    }

    /// The lowest free VMID, or checks that `candidate` is free. PVE
    /// reserves nothing: a clone may still find it taken.
    pub async fn next_vmid(&self, candidate: Option<Vmid>) -> Result<Vmid, Error> {
        let action = match candidate {
            Some(vmid) => format!("check that VMID {vmid} is free"),
            None => "get the next free VMID".to_string(),
        };
        let vmid = data(self.api.get_cluster_nextid(candidate.map(i64::from)).await, &action).await?;
        vmid_from(vmid.0, &action)
    }

    /// Starts a clone task of `source` on `node`.
    pub async fn clone_vm(&self, node: &str, source: Vmid, request: &CloneRequest) -> Result<Upid, Error> {
        let action = match request.new_vmid {
            Some(new) => format!("clone VM {source} to {new}"),
            None => format!("clone VM {source}"),
        };
        let newid = match request.new_vmid {
            Some(vmid) => vmid,
            None => return Err(Error::setup(action, "the clone request has no new VMID")),
        };
        let body = types::PostNodesNodeQemuVmidCloneBody {
            newid: newid.into(),
            name: request.name.clone(),
            description: request.description.clone(),
            pool: request.pool.clone(),
            full: request.full.map(PveBool),
            storage: request.storage.clone(),
            target: request.target_node.clone(),
            bwlimit: request.bandwidth_limit_kib.map(|kib| i64::try_from(kib).unwrap_or(i64::MAX)),
            format: None,
            snapname: request.snapshot.clone(),
        };
        upid(self.api.post_nodes_node_qemu_vmid_clone(node, source.into(), &body).await, &action).await
    }

    /// Starts an offline migration of `vmid` from `node` (a `qmigrate`
    /// task on `node`; the VM must be stopped, PVE refuses a running VM
    /// without `online`, which this never sends).
    pub async fn migrate_vm(&self, node: &str, vmid: Vmid, request: &MigrateRequest) -> Result<Upid, Error> {
        let action = format!("migrate VM {vmid} from {node} to {}", request.target);
        let body = types::PostNodesNodeQemuVmidMigrateBody {
            target: request.target.clone(),
            targetstorage: request.target_storage.clone(),
            bwlimit: request.bwlimit_kib.map(|kib| i64::try_from(kib).unwrap_or(i64::MAX)),
            // Offline: `online` is not sent (PVE would refuse a running VM).
            online: None,
            force: None,
            migration_network: None,
            migration_type: None,
            with_conntrack_state: None,
            with_local_disks: None,
        };
        upid(self.api.post_nodes_node_qemu_vmid_migrate(node, vmid.into(), &body).await, &action).await
    }

    /// Converts the stopped VM into a template (a `qmtemplate` task: its
    /// disks become `base-…` volumes). `None` from PVE 7.0, whose call
    /// started the task but answered `null` (qemu-server returns the UPID
    /// since 7.0-15, i.e. PVE 7.1); there `template: 1` is already set when
    /// the call returns and the disks are renamed shortly after.
    pub async fn convert_to_template(&self, node: &str, vmid: Vmid) -> Result<Option<Upid>, Error> {
        let action = format!("convert VM {vmid} to a template");
        let body = types::PostNodesNodeQemuVmidTemplateBody::default();
        let result = self.api.post_nodes_node_qemu_vmid_template(node, vmid.into(), &body).await;
        match data(result, &action).await {
            Ok(text) => {
                text.parse().map(Some).map_err(|err: super::task::UpidParseError| invalid(&action, err.to_string()))
            }
            Err(err) if matches!(err.kind(), ErrorKind::InvalidResponse { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// The VM's configuration as key → value strings (pending changes applied).
    pub async fn vm_config(&self, node: &str, vmid: Vmid) -> Result<BTreeMap<String, String>, Error> {
        let action = format!("read the configuration of VM {vmid}");
        let config =
            data(self.api.get_nodes_node_qemu_vmid_config(node, vmid.into(), None, None).await, &action).await?;
        config_entries(config, &action)
    }

    /// The configuration of the snapshot `snapshot` of the VM, as
    /// [`Self::vm_config`] reads the current one.
    pub async fn vm_config_of_snapshot(
        &self,
        node: &str,
        vmid: Vmid,
        snapshot: &str,
    ) -> Result<BTreeMap<String, String>, Error> {
        let action = format!("read the configuration of snapshot {snapshot} of VM {vmid}");
        let config =
            data(self.api.get_nodes_node_qemu_vmid_config(node, vmid.into(), None, Some(snapshot)).await, &action)
                .await?;
        config_entries(config, &action)
    }

    /// The names of the VM's snapshots (without PVE's `current` entry).
    pub async fn snapshots(&self, node: &str, vmid: Vmid) -> Result<Vec<String>, Error> {
        let action = format!("list the snapshots of VM {vmid}");
        let list = data(self.api.get_nodes_node_qemu_vmid_snapshot(node, vmid.into()).await, &action).await?;
        Ok(list.into_iter().filter_map(|snapshot| snapshot.name).filter(|name| name != "current").collect())
    }

    /// Changes configuration keys synchronously.
    pub async fn update_vm_config(&self, node: &str, vmid: Vmid, update: &ConfigUpdate) -> Result<(), Error> {
        let action = format!("update the configuration of VM {vmid}");
        let body = types::PutNodesNodeQemuVmidConfigBody {
            name: update.name.clone(),
            description: update.description.clone(),
            tags: update.tags.as_ref().map(|tags| tags.join(";")),
            ciuser: update.ciuser.clone(),
            sshkeys: update.ssh_public_keys.as_deref().map(encode_ssh_keys),
            ipconfig0: update.ipconfig0.clone(),
            nameserver: update.nameserver.clone(),
            searchdomain: update.searchdomain.clone(),
            cipassword: update.cipassword.as_ref().map(|password| password.expose().to_string()),
            delete: (!update.delete.is_empty()).then(|| update.delete.join(",")),
            digest: update.digest.clone(),
            memory: update.memory_mib.map(|mib| mib.to_string()),
            cores: update.cores.map(i64::from),
            ..Default::default()
        };
        match self.api.put_nodes_node_qemu_vmid_config(node, vmid.into(), &body).await {
            Ok(_) => Ok(()),
            Err(err) => Err(error::from_api(action, err).await),
        }
    }

    /// The VM's current state and the config flags decisions need.
    pub async fn vm_status(&self, node: &str, vmid: Vmid) -> Result<VmStatus, Error> {
        let action = format!("read the status of VM {vmid}");
        let status = data(self.api.get_nodes_node_qemu_vmid_status_current(node, vmid.into()).await, &action).await?;
        Ok(VmStatus {
            status: status.status.unwrap_or_else(|| "unknown".into()),
            qmpstatus: status.qmpstatus,
            lock: status.lock.filter(|l| !l.is_empty()),
            agent_enabled: status.agent.is_some_and(|a| a.0),
            name: status.name,
            template: status.template.is_some_and(|t| t.0),
            tags: split_tags(status.tags.as_deref()),
        })
    }

    /// Creates a VM without disks or devices, holding `request.vmid` (e.g.
    /// so that deleting it with `destroy-unreferenced-disks` frees what a
    /// crashed clone left of that VMID). Returns the create task.
    pub async fn create_empty_vm(&self, node: &str, request: &EmptyVmRequest) -> Result<Upid, Error> {
        let action = format!("create VM {} on {node}", request.vmid);
        // The body type has a field for every VM setting; only these are sent.
        let body: types::PostNodesNodeQemuBody = serde_json::from_value(serde_json::json!({
            "vmid": i64::from(request.vmid),
            "name": request.name,
            "description": request.description,
            "pool": request.pool,
        }))
        .map_err(|err| Error::setup(action.clone(), err.to_string()))?;
        upid(self.api.post_nodes_node_qemu(node, &body).await, &action).await
    }

    /// Grows `disk` (e.g. `scsi0`) to `size` (`+10G` grows by, `32G` grows
    /// to; PVE never shrinks). PVE 8.0+ answers with a task, 7.x resizes in
    /// the request.
    pub async fn resize_disk(&self, node: &str, vmid: Vmid, disk: &str, size: &str) -> Result<Option<Upid>, Error> {
        let action = format!("resize disk {disk} of VM {vmid} to {size}");
        let disk = disk
            .parse::<types::PutNodesNodeQemuVmidResizeBodyDisk>()
            .map_err(|_| Error::setup(action.clone(), format!("`{disk}` is not a disk key such as scsi0")))?;
        let body = types::PutNodesNodeQemuVmidResizeBody { digest: None, disk, size: size.to_string(), skiplock: None };
        let result = self.api.put_nodes_node_qemu_vmid_resize(node, vmid.into(), &body).await;
        match data(result, &action).await {
            Ok(text) => {
                text.parse().map(Some).map_err(|err: super::task::UpidParseError| invalid(&action, err.to_string()))
            }
            Err(err) if matches!(err.kind(), ErrorKind::InvalidResponse { .. }) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Starts the VM; returns the start task.
    pub async fn start_vm(&self, node: &str, vmid: Vmid) -> Result<Upid, Error> {
        let action = format!("start VM {vmid}");
        let body = types::PostNodesNodeQemuVmidStatusStartBody::default();
        upid(self.api.post_nodes_node_qemu_vmid_status_start(node, vmid.into(), &body).await, &action).await
    }

    /// Hard stop; `timeout` bounds PVE's wait for the QEMU process.
    pub async fn stop_vm(&self, node: &str, vmid: Vmid, timeout: Option<Duration>) -> Result<Upid, Error> {
        let action = format!("stop VM {vmid}");
        let body = types::PostNodesNodeQemuVmidStatusStopBody {
            timeout: timeout.map(|t| t.as_secs() as i64),
            ..Default::default()
        };
        upid(self.api.post_nodes_node_qemu_vmid_status_stop(node, vmid.into(), &body).await, &action).await
    }

    /// ACPI/agent shutdown; with `force_stop`, a hard stop after `timeout`.
    pub async fn shutdown_vm(
        &self,
        node: &str,
        vmid: Vmid,
        timeout: Duration,
        force_stop: bool,
    ) -> Result<Upid, Error> {
        let action = format!("shut down VM {vmid}");
        let body = types::PostNodesNodeQemuVmidStatusShutdownBody {
            timeout: Some(timeout.as_secs() as i64),
            force_stop: Some(PveBool(force_stop)),
            ..Default::default()
        };
        upid(self.api.post_nodes_node_qemu_vmid_status_shutdown(node, vmid.into(), &body).await, &action).await
    }

    /// Pauses the VM (in memory); returns the task.
    pub async fn suspend_vm(&self, node: &str, vmid: Vmid) -> Result<Upid, Error> {
        let action = format!("suspend VM {vmid}");
        let body = types::PostNodesNodeQemuVmidStatusSuspendBody::default();
        upid(self.api.post_nodes_node_qemu_vmid_status_suspend(node, vmid.into(), &body).await, &action).await
    }

    /// Resumes a paused VM; returns the task.
    pub async fn resume_vm(&self, node: &str, vmid: Vmid) -> Result<Upid, Error> {
        let action = format!("resume VM {vmid}");
        let body = types::PostNodesNodeQemuVmidStatusResumeBody::default();
        upid(self.api.post_nodes_node_qemu_vmid_status_resume(node, vmid.into(), &body).await, &action).await
    }

    /// Deletes a stopped VM with `purge` and `destroy-unreferenced-disks`, so
    /// no orphaned disk can collide with a later VM of the same id.
    pub async fn delete_vm(&self, node: &str, vmid: Vmid) -> Result<Upid, Error> {
        let action = format!("delete VM {vmid}");
        let yes = PveBool(true);
        upid(self.api.delete_nodes_node_qemu_vmid(node, vmid.into(), Some(&yes), Some(&yes), None).await, &action).await
    }

    /// Whether the guest agent answers.
    pub async fn agent_ping(&self, node: &str, vmid: Vmid) -> Result<(), Error> {
        let action = format!("ping the guest agent of VM {vmid}");
        match self.api.post_nodes_node_qemu_vmid_agent_ping(node, vmid.into()).await {
            Ok(_) => Ok(()),
            Err(err) => Err(error::from_api(action, err).await),
        }
    }

    /// The guest's interfaces as its agent reports them.
    pub async fn guest_interfaces(&self, node: &str, vmid: Vmid) -> Result<Vec<GuestInterface>, Error> {
        let action = format!("read the network interfaces of VM {vmid}");
        let data =
            data(self.api.get_nodes_node_qemu_vmid_agent_network_get_interfaces(node, vmid.into()).await, &action)
                .await?;
        parse_guest_interfaces(&Value::Object(data)).map_err(|message| invalid(&action, message))
    }

    /// Whether a task still runs, and how it ended.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, Error> {
        let action = format!("read the status of task {upid}");
        let status =
            data(self.api.get_nodes_node_tasks_upid_status(&upid.node, &upid.to_string()).await, &action).await?;
        Ok(TaskStatus { running: status.status.as_deref() != Some("stopped"), exit_status: status.exitstatus })
    }

    /// The last `lines` lines of a task's log.
    pub async fn task_log_tail(&self, upid: &Upid, lines: u32) -> Result<Vec<String>, Error> {
        let action = format!("read the log of task {upid}");
        let text = upid.to_string();
        let first =
            self.api.get_nodes_node_tasks_upid_log(&upid.node, &text, None, Some(i64::from(lines)), Some(0)).await;
        let first = match first {
            Ok(response) => response.into_inner(),
            Err(err) => return Err(error::from_api(action, err).await),
        };
        let total = first.total.map_or(0, |t| t.0);
        let entries = if total > i64::from(lines) {
            data(
                self.api
                    .get_nodes_node_tasks_upid_log(
                        &upid.node,
                        &text,
                        None,
                        Some(i64::from(lines)),
                        Some(total - i64::from(lines)),
                    )
                    .await,
                &action,
            )
            .await?
        } else {
            first.data
        };
        Ok(entries.into_iter().filter_map(|line| line.t).collect())
    }

    /// Polls a task until it stops or `timeout` passes. `OK` and
    /// `WARNINGS: n` are success; errors carry the last lines of the log.
    pub async fn wait_task(&self, upid: &Upid, timeout: Duration) -> Result<TaskSuccess, Error> {
        let started = Instant::now();
        let mut interval = self.task_poll_interval.unwrap_or(YOUNG_TASK_POLL);
        let grow = |interval: Duration| next_task_poll(self.task_poll_interval, interval, started.elapsed());
        loop {
            // A task runs on regardless of the API: ride out an outage or a
            // restarting pveproxy until the deadline instead of giving up.
            let status = match self.task_status(upid).await {
                Ok(status) => status,
                Err(err) if err.is_retryable() && started.elapsed() + interval < timeout => {
                    tracing::debug!(upid = %upid, error = %err, "could not read task status; polling on");
                    tokio::time::sleep(interval).await;
                    interval = grow(interval);
                    continue;
                }
                Err(err) => return Err(err),
            };
            if !status.running {
                let exit_status = status.exit_status.unwrap_or_else(|| "unexpected status".into());
                return match exit_status_outcome(&exit_status) {
                    Some(success) => Ok(success),
                    None => {
                        let log_tail = self.task_log_tail(upid, 10).await.unwrap_or_default();
                        Err(Error::new(
                            format!("complete task {} of {}", upid.task_type, describe_task_object(upid)),
                            ErrorKind::TaskFailed { upid: upid.clone(), exit_status, log_tail },
                        ))
                    }
                };
            }
            let elapsed = started.elapsed();
            if elapsed >= timeout {
                return Err(Error::new(
                    format!("complete task {} of {}", upid.task_type, describe_task_object(upid)),
                    ErrorKind::TaskTimeout { upid: upid.clone(), waited_secs: elapsed.as_secs() },
                ));
            }
            tokio::time::sleep(interval.min(timeout - elapsed)).await;
            interval = grow(interval);
        }
    }

    /// The pool's members, with the API form this PVE release offers
    /// (`GET /pools?poolid=` since 8.1, `GET /pools/{poolid}` before).
    pub async fn pool_members(&self, pool: &str) -> Result<Vec<PoolMember>, Error> {
        let action = format!("list the members of pool {pool}");
        let members = if self.version().await?.has_nested_pools() {
            let pools = data(self.api.get_pools(Some(pool), None).await, &action).await?;
            let entry = pools.into_iter().find(|p| p.poolid.as_deref() == Some(pool)).ok_or_else(|| {
                Error::new(&action, ErrorKind::NotFound { message: format!("pool '{pool}' does not exist") })
            })?;
            to_values(&entry.members)
        } else {
            let pool_data = data(self.api.get_pools_poolid(pool, None).await, &action).await?;
            to_values(&pool_data.members)
        };
        Ok(members.iter().map(pool_member).collect())
    }

    /// The disk images on `storage` that PVE lets this user see: all of
    /// them with `Datastore.Allocate` on the storage; otherwise only those of
    /// VMs the user may configure (`VM.Config.Disk`), so volumes of a VMID
    /// without a VM stay hidden from a least-privilege token.
    pub async fn storage_images(&self, node: &str, storage: &str) -> Result<Vec<StorageVolume>, Error> {
        let action = format!("list the disk images on storage {storage} of node {node}");
        let items =
            data(self.api.get_nodes_node_storage_storage_content(node, storage, Some("images"), None).await, &action)
                .await?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                Some(StorageVolume {
                    volid: item.volid?,
                    vmid: item.vmid.and_then(|v| u32::try_from(v.0).ok()).filter(|v| *v >= 100).map(Vmid),
                    size: item.size.map_or(0, |s| u64::try_from(s.0).unwrap_or(0)),
                })
            })
            .collect())
    }

    /// A storage's type (`lvmthin`, `dir`, `nfs`, …) and whether it is
    /// shared, as `node` sees it. Read from the node's storage list, which
    /// needs only `Datastore.Audit`/`AllocateSpace` (`GET /storage/{id}`
    /// needs `Datastore.Allocate`, more than a least-privilege token has).
    pub async fn storage_info(&self, node: &str, storage: &str) -> Result<StorageInfo, Error> {
        let action = format!("read storage {storage} on node {node}");
        let items =
            data(self.api.get_nodes_node_storage(node, None, None, None, Some(storage), None).await, &action).await?;
        let item = items.into_iter().find(|item| item.storage.as_deref() == Some(storage)).ok_or_else(|| {
            Error::new(
                &action,
                ErrorKind::NotFound {
                    message: format!("storage '{storage}' does not exist on node {node} or the user lacks Datastore.Audit on /storage/{storage}"),
                },
            )
        })?;
        Ok(StorageInfo { kind: item.type_.unwrap_or_default(), shared: item.shared.is_some_and(|s| s.0) })
    }

    /// The privileges the caller holds: path → privilege → propagates.
    pub async fn permissions(&self, path: Option<&str>) -> Result<BTreeMap<String, BTreeMap<String, bool>>, Error> {
        let action = "read the caller's permissions";
        let map = data(self.api.get_access_permissions(path, None).await, action).await?;
        let mut out = BTreeMap::new();
        for (path, privileges) in map {
            let mut entry = BTreeMap::new();
            if let Value::Object(privileges) = privileges {
                for (privilege, propagate) in privileges {
                    let propagate = match propagate {
                        Value::Bool(b) => b,
                        Value::Number(n) => n.as_i64() != Some(0),
                        Value::String(s) => s != "0",
                        _ => false,
                    };
                    entry.insert(privilege, propagate);
                }
            }
            out.insert(path, entry);
        }
        Ok(out)
    }
}

fn api_base_url(url: &str) -> Result<String, Error> {
    let action = "use the PVE URL";
    let trimmed = url.trim().trim_end_matches('/');
    let parsed = reqwest::Url::parse(trimmed).map_err(|err| {
        Error::setup(action, format!("`url` {url:?} is not a URL ({err}); write it like https://pve.example.com:8006"))
    })?;
    if !matches!(parsed.scheme(), "https" | "http") || parsed.host_str().is_none() {
        return Err(Error::setup(
            action,
            format!("`url` {url:?} must start with https:// and name a host, like https://pve.example.com:8006"),
        ));
    }
    let base = trimmed.strip_suffix("/api2/json").unwrap_or(trimmed);
    Ok(format!("{base}/api2/json"))
}

/// PVE requires `sshkeys` percent-encoded inside the value (space → %20).
fn encode_ssh_keys(keys: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'!')
        .remove(b'~')
        .remove(b'*')
        .remove(b'\'')
        .remove(b'(')
        .remove(b')');
    percent_encoding::utf8_percent_encode(keys, KEEP).to_string()
}

fn split_tags(tags: Option<&str>) -> Vec<String> {
    tags.unwrap_or_default().split([';', ',', ' ']).filter(|t| !t.is_empty()).map(str::to_string).collect()
}

fn vmid_from(value: i64, action: &str) -> Result<Vmid, Error> {
    u32::try_from(value)
        .ok()
        .filter(|v| *v >= 100)
        .map(Vmid)
        .ok_or_else(|| invalid(action, format!("`{value}` is not a VMID")))
}

fn invalid(action: impl Into<String>, message: impl Into<String>) -> Error {
    Error::new(action, ErrorKind::InvalidResponse { message: message.into() })
}

fn describe_task_object(upid: &Upid) -> String {
    if upid.id.is_empty() { format!("node {}", upid.node) } else { format!("VM {} on {}", upid.id, upid.node) }
}

/// Anything with a `data` envelope field.
trait Envelope {
    type Data;
    fn into_data(self) -> Option<Self::Data>;
}

/// typify turns optional arrays and maps into plain ones with a serde
/// default (`always`); other `data` fields stay `Option`.
macro_rules! envelope {
    ($($response:ident => $kind:ident $data:ty),* $(,)?) => {
        $(impl Envelope for types::$response {
            type Data = $data;
            fn into_data(self) -> Option<$data> {
                envelope!(@take $kind self.data)
            }
        })*
    };
    (@take optional $value:expr) => { $value };
    (@take always $value:expr) => { Some($value) };
}

/// A VM configuration as key → value strings (numbers and flags as PVE
/// wrote them; absent keys left out).
fn config_entries(config: impl serde::Serialize, action: &str) -> Result<BTreeMap<String, String>, Error> {
    let value = serde_json::to_value(config).map_err(|err| invalid(action, err.to_string()))?;
    let mut entries = BTreeMap::new();
    if let Value::Object(map) = value {
        for (key, value) in map {
            let text = match value {
                Value::Null => continue,
                Value::String(text) => text,
                other => other.to_string(),
            };
            entries.insert(key, text);
        }
    }
    Ok(entries)
}

envelope! {
    GetVersionResponse => optional types::GetVersionResponseData,
    GetClusterResourcesResponse => always Vec<types::GetClusterResourcesResponseDataItem>,
    GetClusterNextidResponse => optional super::lenient::PveInt,
    PostNodesNodeQemuVmidCloneResponse => optional String,
    PostNodesNodeQemuResponse => optional String,
    PutNodesNodeQemuVmidResizeResponse => optional String,
    PostNodesNodeQemuVmidMigrateResponse => optional String,
    PostNodesNodeQemuVmidTemplateResponse => optional String,
    GetNodesNodeQemuVmidConfigResponse => optional types::GetNodesNodeQemuVmidConfigResponseData,
    GetNodesNodeQemuVmidStatusCurrentResponse => optional types::GetNodesNodeQemuVmidStatusCurrentResponseData,
    PostNodesNodeQemuVmidStatusStartResponse => optional String,
    PostNodesNodeQemuVmidStatusStopResponse => optional String,
    PostNodesNodeQemuVmidStatusShutdownResponse => optional String,
    PostNodesNodeQemuVmidStatusSuspendResponse => optional String,
    PostNodesNodeQemuVmidStatusResumeResponse => optional String,
    DeleteNodesNodeQemuVmidResponse => optional String,
    GetNodesNodeQemuVmidAgentNetworkGetInterfacesResponse => always serde_json::Map<String, Value>,
    GetNodesNodeTasksUpidStatusResponse => optional types::GetNodesNodeTasksUpidStatusResponseData,
    GetNodesNodeTasksUpidLogResponse => always Vec<types::GetNodesNodeTasksUpidLogResponseDataItem>,
    GetPoolsResponse => always Vec<types::GetPoolsResponseDataItem>,
    GetPoolsPoolidResponse => optional types::GetPoolsPoolidResponseData,
    GetAccessPermissionsResponse => always serde_json::Map<String, Value>,
    GetNodesNodeStorageResponse => always Vec<types::GetNodesNodeStorageResponseDataItem>,
    GetNodesNodeStorageStorageContentResponse => always Vec<types::GetNodesNodeStorageStorageContentResponseDataItem>,
    GetNodesResponse => always Vec<types::GetNodesResponseDataItem>,
    GetNodesNodeQemuVmidSnapshotResponse => always Vec<types::GetNodesNodeQemuVmidSnapshotResponseDataItem>,
}

async fn data<T: Envelope>(
    result: Result<progenitor_client::ResponseValue<T>, progenitor_client::Error<()>>,
    action: &str,
) -> Result<T::Data, Error> {
    match result {
        Ok(response) => response.into_inner().into_data().ok_or_else(|| invalid(action, "the answer has no `data`")),
        Err(err) => Err(error::from_api(action, err).await),
    }
}

async fn upid<T: Envelope<Data = String>>(
    result: Result<progenitor_client::ResponseValue<T>, progenitor_client::Error<()>>,
    action: &str,
) -> Result<Upid, Error> {
    let text = data(result, action).await?;
    text.parse().map_err(|err: super::task::UpidParseError| invalid(action, err.to_string()))
}

fn to_values<T: serde::Serialize>(items: &[T]) -> Vec<Value> {
    items.iter().filter_map(|item| serde_json::to_value(item).ok()).collect()
}

/// A `qemu` item of `/cluster/resources`; other guest types are skipped.
fn vm_resource(item: types::GetClusterResourcesResponseDataItem, action: &str) -> Result<Option<VmResource>, Error> {
    if item.type_.as_deref() != Some("qemu") {
        return Ok(None);
    }
    let vmid = match (item.vmid, item.id.as_deref().and_then(|id| id.strip_prefix("qemu/"))) {
        (Some(vmid), _) => vmid_from(vmid.0, action)?,
        (None, Some(id)) => vmid_from(id.parse().unwrap_or(-1), action)?,
        (None, None) => return Err(invalid(action, "a guest has neither `vmid` nor `id`")),
    };
    Ok(Some(VmResource {
        vmid,
        node: item.node.unwrap_or_default(),
        name: item.name,
        status: item.status,
        template: item.template.is_some_and(|t| t.0),
        lock: item.lock.filter(|l| !l.is_empty()),
        tags: split_tags(item.tags.as_deref()),
        pool: item.pool,
        uptime: item.uptime.and_then(|u| u64::try_from(u.0).ok()).filter(|&u| u > 0),
        max_memory: item.maxmem.and_then(|m| u64::try_from(m.0).ok()),
        cpus: item.maxcpu.map(|c| c.0),
    }))
}

/// A `node` item of `/cluster/resources`.
fn node_resource(item: types::GetClusterResourcesResponseDataItem) -> Option<NodeResource> {
    let name = item.node?;
    Some(NodeResource {
        name,
        online: item.status.as_deref() == Some("online"),
        cpus: item.maxcpu.map(|c| c.0),
        cpu_usage: item.cpu.map(|c| c.0),
        max_memory: item.maxmem.and_then(|m| u64::try_from(m.0).ok()),
        memory_used: item.mem.and_then(|m| u64::try_from(m.0).ok()),
    })
}

/// A `storage` item of `/cluster/resources`.
fn storage_resource(item: types::GetClusterResourcesResponseDataItem) -> Option<StorageResource> {
    Some(StorageResource {
        storage: item.storage?,
        node: item.node?,
        available: item.status.as_deref() == Some("available"),
        shared: item.shared.is_some_and(|s| s.0),
        content: item.content.as_deref().unwrap_or_default().split(',').map(str::to_string).collect(),
        kind: item.plugintype,
        total: item.maxdisk.and_then(|d| u64::try_from(d.0).ok()),
        used: item.disk.and_then(|d| u64::try_from(d.0).ok()),
    })
}

fn pool_member(member: &Value) -> PoolMember {
    let text = |key: &str| member.get(key).and_then(Value::as_str).map(str::to_string);
    PoolMember {
        id: text("id").unwrap_or_default(),
        kind: text("type").unwrap_or_default(),
        vmid: member
            .get("vmid")
            .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .and_then(|v| u32::try_from(v).ok())
            .map(Vmid),
        node: text("node"),
    }
}

/// Reads QGA's `guest-network-get-interfaces` answer (`{"result": [...]}`).
pub fn parse_guest_interfaces(data: &Value) -> Result<Vec<GuestInterface>, String> {
    let list = data
        .get("result")
        .and_then(Value::as_array)
        .ok_or_else(|| "the agent answer has no `result` list".to_string())?;
    let mut interfaces = Vec::new();
    for entry in list {
        let Some(name) = entry.get("name").and_then(Value::as_str) else { continue };
        let mac = entry.get("hardware-address").and_then(Value::as_str).map(str::to_ascii_lowercase);
        let mut addresses = Vec::new();
        for address in entry.get("ip-addresses").and_then(Value::as_array).into_iter().flatten() {
            let ip = address
                .get("ip-address")
                .and_then(Value::as_str)
                .and_then(|ip| ip.split('%').next()?.parse::<IpAddr>().ok());
            let prefix = address.get("prefix").and_then(Value::as_u64).and_then(|p| u8::try_from(p).ok()).unwrap_or(0);
            if let Some(ip) = ip {
                addresses.push((ip, prefix));
            }
        }
        interfaces.push(GuestInterface { name: name.to_string(), mac, addresses });
    }
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_young_task_is_polled_often_and_an_old_one_ever_less_up_to_two_seconds() {
        let ms = Duration::from_millis;
        assert_eq!(next_task_poll(None, ms(250), ms(0)), ms(250));
        assert_eq!(next_task_poll(None, ms(250), ms(1_900)), ms(250), "still young");
        assert_eq!(next_task_poll(None, ms(250), ms(2_000)), ms(375), "then it backs off");
        let mut interval = ms(250);
        for _ in 0..20 {
            interval = next_task_poll(None, interval, ms(10_000));
        }
        assert_eq!(interval, ms(2_000));
        assert_eq!(next_task_poll(Some(ms(10_000)), ms(250), ms(0)), ms(10_000), "the admin's interval wins");
    }

    #[test]
    fn base_url_accepts_seed_forms() {
        assert_eq!(api_base_url("https://pve:8006").unwrap(), "https://pve:8006/api2/json");
        assert_eq!(api_base_url("https://pve:8006/api2/json/").unwrap(), "https://pve:8006/api2/json");
        assert!(api_base_url("pve:8006").unwrap_err().to_string().contains("must start with https://"));
        assert!(api_base_url("not a url").is_err());
    }

    #[test]
    fn ssh_keys_are_encoded_inside_the_value() {
        assert_eq!(encode_ssh_keys("ssh-ed25519 AAAA me@host\n"), "ssh-ed25519%20AAAA%20me%40host%0A");
    }

    #[test]
    fn guest_interfaces_keep_macs_and_addresses() {
        let data = serde_json::json!({ "result": [
            { "name": "lo", "hardware-address": "00:00:00:00:00:00",
              "ip-addresses": [{ "ip-address": "127.0.0.1", "ip-address-type": "ipv4", "prefix": 8 }] },
            { "name": "ens18", "hardware-address": "BC:24:11:00:00:01",
              "ip-addresses": [{ "ip-address": "10.0.0.5", "prefix": 24 }, { "ip-address": "fe80::1%ens18", "prefix": 64 }] },
            { "name": "tun0" }
        ]});
        let interfaces = parse_guest_interfaces(&data).unwrap();
        assert_eq!(interfaces.len(), 3);
        assert_eq!(interfaces[1].mac.as_deref(), Some("bc:24:11:00:00:01"));
        assert_eq!(interfaces[1].addresses[0], ("10.0.0.5".parse().unwrap(), 24));
        assert_eq!(interfaces[1].addresses[1].0, "fe80::1".parse::<IpAddr>().unwrap());
        assert!(interfaces[2].addresses.is_empty());
    }
}
