//! `plugin_config`: the settings Runner passes as JSON (its
//! `[runners.autoscaler.plugin_config]` table). Every key of the seed plugin
//! keeps its meaning and default; the rest are new, each with a default.
//!
//! Keys are read as the seed's Go decoding reads them: names match
//! regardless of case, `""` for a text key is the same as leaving it out,
//! and a key we do not know never fails: it is returned as an
//! [`IgnoredKey`] (a warning naming the closest key, or the equivalent of
//! another Proxmox plugin's key). Validation of known keys reports every
//! problem at once, each naming the key and the fix.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::ip_pool::{self, AddressPool, StaticNetwork};
use super::placement::{NodeRules, PlacementConfig, Reserve, Scheduler};
use crate::pve::Vmid;

/// `plugin_config` exactly as written by the user; every key optional here,
/// defaults and requirements are applied by [`PluginConfig::resolve`].
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(title = "fleeting-plugin-proxmox plugin_config")]
pub struct PluginConfig {
    /// Proxmox VE API address, e.g. `https://pve.example.com:8006` (a trailing `/api2/json` is accepted). Required.
    pub url: Option<String>,
    /// Skip TLS certificate verification. Insecure; prefer `tls_fingerprint` or `ca_file`. Default `false`.
    pub insecure_skip_tls_verify: Option<bool>,
    /// Path of the JSON credentials file (API token, or user and password with optional TOTP). Required.
    pub credentials_file_path: Option<String>,
    /// The Proxmox pool the instances are cloned into; it must exist. Required.
    pub pool: Option<String>,
    /// Storage for full clones. When it is set and `clone_mode` is not, every instance is a full clone onto it, as in the seed (a source VM that is not a template can then be cloned too). Default: the template's storage.
    pub storage: Option<String>,
    /// VMID of the template to clone (or the first of `template_vmids`). Required.
    pub template_id: Option<u32>,
    /// Templates to clone, as in nE0sIghT: each serves the node it is on, so the admin can keep one template per node (e.g. on each node's local-lvm) instead of letting the plugin copy one. The first (or `template_id`, when set) is the main one: it serves every target node without a template of its own, and its copies are made for them (`template_stage_mode`). At most one per node. Default: `template_id` alone.
    pub template_vmids: Option<Vec<u32>>,
    /// Most instances this group may have at once, counting those being created. Required.
    pub max_instances: Option<u32>,
    /// Guest interface to take addresses from. Set, it is read first (as in the seed); unset, the interface with net0's MAC is read first and `ens18` is only the fallback. Default `ens18`.
    pub instance_network_interface: Option<String>,
    /// Address family to connect with: `ipv4`, `ipv6` or `any` (IPv4 preferred, then IPv6). Default `ipv4`.
    pub instance_network_protocol: Option<NetworkProtocol>,
    /// VM name while an instance is being created. Default `fleeting-creating`.
    pub instance_name_creating: Option<String>,
    /// VM name once an instance is running. Default `fleeting-running`.
    pub instance_name_running: Option<String>,
    /// VM name while an instance is being removed. Default `fleeting-removing`.
    pub instance_name_removing: Option<String>,
    /// Proxmox tags for a VM while it is being created, separated by `;` (Phenix66), added to the plugin's own tags. Default: none.
    pub instance_tags_creating: Option<String>,
    /// Proxmox tags for a running VM, separated by `;` (Phenix66), added to the plugin's own tags. Default: none.
    pub instance_tags_running: Option<String>,
    /// Proxmox tags for a VM being removed, separated by `;` (Phenix66), added to the plugin's own tags. Default: none.
    pub instance_tags_removing: Option<String>,
    /// Disk to resize after the clone (Phenix66): `ide0`-`ide3`, `sata0`-`sata5`, `scsi0`-`scsi30` or `virtio0`-`virtio15`; set it together with `instance_autoresize_size`. Default: none.
    pub instance_autoresize_disk: Option<String>,
    /// Size for `instance_autoresize_disk` in Proxmox's syntax (Phenix66): absolute like `20G`, or an increment like `+5.5G`; units `K`, `M`, `G`, `T`. Default: none.
    pub instance_autoresize_size: Option<String>,
    /// Seconds between two status reads of a Proxmox task (clone, resize, start, delete), as in Phenix66. Default: adaptive, every 0.25 s for a task's first 2 s, then rising to 2 s.
    pub proxmox_task_wait_interval: Option<i64>,

    /// PEM file with the CA that signed the PVE certificate (e.g. the cluster's `/etc/pve/pve-root-ca.pem`).
    pub ca_file: Option<String>,
    /// SHA-256 fingerprint of the PVE server certificate, as shown under Node → System → Certificates.
    pub tls_fingerprint: Option<String>,
    /// Name that marks this runner's VMs; runners sharing a pool need different ones (at most 40 lower-case letters, digits, `-`, `_`, `.`). Unset, it is `fleeting` while the three `instance_name_*` keep their defaults; when any of them is changed it is derived from them, so seed-style runners that differ only in names stay apart: `<prefix>-<hash>`, where prefix is the names' common prefix (the running name when they share fewer than 3 characters), lower-cased, cut to 31 characters, without trailing `-`, `_`, `.`, and hash is the first 8 hex digits of the SHA-256 of the creating, running and removing names joined by newlines. Default `fleeting`, or derived from `instance_name_*`.
    pub group: Option<String>,
    /// `auto` (linked clones where the template's storage allows them, else full), `linked` or `full`. Default `auto`, or `full` when `storage` is set.
    pub clone_mode: Option<CloneMode>,
    /// Nodes clones may go to; `scheduler` picks one for each new VM from what the cluster listing says about them. A node whose clone fails is skipped for a minute. Cloning to another node needs the template's disks on shared storage (or `storage`/`target_storages` set to shared ones for full clones). Default: the template's node.
    pub target_nodes: Option<Vec<String>>,
    /// nE0sIghT's name for `target_nodes` (a list, or one text with names separated by `,`); set one of the two.
    pub nodes: Option<TextList>,
    /// How the node for a new VM is chosen among `target_nodes` that can take it: `balanced` (the node left with the most of its scarcest resource, memory or CPU, as a share of its size, so nodes fill in proportion), `most_free_ram`, `most_free_cpu`, `round_robin`, or `spread` (the fewest of this group's instances). Nodes that are offline, failed a clone within a minute, would go below a `node_reserve_*`, or above a `node_*_allocation_limit_percent` are never chosen. Default `balanced`.
    pub scheduler: Option<String>,
    /// Memory in MiB a node keeps free after a new VM is placed on it: its use as the cluster listing reports it, plus the VMs this plugin placed there that do not run yet. A node that would go below it takes no new VM. Default: none (free memory only steers `scheduler`).
    pub node_reserve_memory_mb: Option<u64>,
    /// As `node_reserve_memory_mb`, in percent of the node's memory; wins over it. Default: none.
    pub node_reserve_memory_percent: Option<u32>,
    /// CPU cores a node keeps idle after a new VM's vCPUs are placed on it (its current use as the listing reports it, plus the VMs this plugin placed there that do not run yet). A node that would go below it takes no new VM. Default: none (idle CPU only steers `scheduler`).
    pub node_reserve_cpu_cores: Option<f64>,
    /// As `node_reserve_cpu_cores`, in percent of the node's CPUs; wins over it. Default: none.
    pub node_reserve_cpu_percent: Option<u32>,
    /// GiB a target storage keeps free after a full clone's disks (their full size) land on it; with `target_storages` or `storage`. Default: none (free space only chooses among `target_storages`).
    pub node_reserve_disk_gb: Option<u64>,
    /// As `node_reserve_disk_gb`, in percent of the storage's size; wins over it. Default: none.
    pub node_reserve_disk_percent: Option<u32>,
    /// Most memory committed to the VMs of a node (running ones, and this group's), in percent of its memory; over 100 overcommits. Only VMs the credentials may audit count: grant `PVEAuditor` on `/vms` to count every VM. Default: no limit.
    pub node_memory_allocation_limit_percent: Option<u32>,
    /// Most vCPUs committed to the VMs of a node (running ones, and this group's), in percent of its CPUs. Only VMs the credentials may audit count: grant `PVEAuditor` on `/vms` to count every VM. Default: no limit.
    pub node_cpu_allocation_limit_percent: Option<u32>,
    /// Rules for named nodes instead of the `node_*` ones, e.g. `[{ nodes = ["pve3"], reserve_memory_percent = 50 }]`; keys `nodes`, `reserve_memory_mb`, `reserve_memory_percent`, `reserve_cpu_cores`, `reserve_cpu_percent`, `reserve_disk_gb`, `reserve_disk_percent`, `memory_allocation_limit_percent`, `cpu_allocation_limit_percent` (unset ones take the `node_*` value). Default: none.
    pub node_policies: Option<Vec<NodePolicySettings>>,
    /// Storages full clones may land on; for each VM, the one on its node with the most free space that holds the disks above `node_reserve_disk_*` wins. Implies full clones (`clone_mode` `linked` is refused). Use instead of `storage`. Default: the template's storage (or `storage`).
    pub target_storages: Option<TextList>,
    /// Whether a target node that cannot clone the template directly (its disks are on storage that node cannot reach, such as each node's own local-lvm or ZFS) gets its own copy of the template, as in nE0sIghT: `auto` (such nodes get a copy), `required` (nE0sIghT's name; the same as `auto`, which also refuses a node that can get no copy), or `off` (Init refuses such nodes). A copy is a full clone on the template's node, migrated offline to the node and converted into a template there: it is in `pool`, marked as this group's in its description, never counted as an instance, made again when the template changes (see `template_check_interval`) and deleted once no instance is a linked clone of it. Nodes without a ready copy take no clones meanwhile. Default `auto`.
    pub template_stage_mode: Option<String>,
    /// VMIDs of the template copies, as `first-last`, apart from `vmid_range`, e.g. `9900-9909`. Default: any free VMID.
    pub template_vmid_range: Option<String>,
    /// VM name of the template copies, `<prefix>-<node>` (letters, digits and `-`); copies made under an earlier prefix are still found by their marker and serve while current. Default `<group>-template`, with `_` and `.` of the group written `-`.
    pub template_name_prefix: Option<String>,
    /// How often the template is read to notice that it changed, which makes new copies (old ones serve until the new ones are ready). A change is a new `template-version=<value>` line in the template's description (nE0sIghT's marker) when it has one, else any change of its configuration (its digest). Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub template_check_interval: Option<String>,
    /// VMIDs the plugin may use, as `first-last`, e.g. `9100-9199`. Default: any free VMID.
    pub vmid_range: Option<String>,
    /// Extra Proxmox tags for every instance (lower-cased by Proxmox).
    pub tags: Option<Vec<String>>,
    /// Clones in progress at the same time, each from its clone request until Proxmox's clone task ends, as in nE0sIghT (parallel clones contend for the template's storage, and Proxmox fails them with "can't lock file … got timeout" when it is overloaded). An instance waiting for its turn is reported as creating and holds no other slot. Default `4`.
    pub max_parallel_clones: Option<u32>,
    /// Clones in progress at the same time on one node: the node whose template is cloned, where Proxmox runs the clone task. Default: no limit besides `max_parallel_clones`.
    pub max_parallel_clones_per_node: Option<u32>,
    /// Instances starting at the same time, each from its start request until the guest reports its address (without the agent: until its port opens), as in nE0sIghT; bounds boot storms. Default: no limit.
    pub max_parallel_starts: Option<u32>,
    /// Instances starting at the same time on one node (the node the VM runs on). Default: no limit besides `max_parallel_starts`.
    pub max_parallel_starts_per_node: Option<u32>,
    /// Deletions running at the same time. Default `4`.
    pub max_parallel_deletes: Option<u32>,
    /// Memory of every instance in MiB (Proxmox's `memory`), as in nE0sIghT: set with the first configuration update after the clone, before the first start; at least 16. Default: the template's.
    pub vm_memory_mb: Option<u64>,
    /// Cores per socket of every instance (Proxmox's `cores`; `sockets` stays the template's), as in nE0sIghT: set before the first start. Default: the template's.
    pub vm_cpu_cores: Option<u32>,
    /// Size in MiB that `vm_disk_device` is grown to before the first start, as in nE0sIghT. A disk already that large or larger is left as it is (never shrunk; logged at info). Not together with `instance_autoresize_disk`/`instance_autoresize_size`. Default: the template's size.
    pub vm_disk_mb: Option<u64>,
    /// The disk `vm_disk_mb` grows, e.g. `scsi0` (`ide0`-`ide3`, `sata0`-`sata5`, `scsi0`-`scsi30`, `virtio0`-`virtio15`); never the cloud-init drive. Default: the template's boot disk (the first disk in its `boot: order=`, else its first disk).
    pub vm_disk_device: Option<String>,
    /// Clone this snapshot of the source VM instead of its current state (Proxmox's `snapname`), as in nE0sIghT. Proxmox templates cannot have snapshots, so the source is a VM that is not a template, cloned in full onto `storage`; Init checks that the snapshot exists. Default: none (the current state).
    pub clone_snapshot: Option<String>,
    /// Bandwidth limit of every clone's disk copy in KiB/s (Proxmox's `bwlimit`; `0` means unlimited). Default: the limit of the datacenter or storage configuration.
    pub clone_bwlimit: Option<u64>,
    /// Longest wait for a clone task, e.g. `10m`. Default `10m`.
    #[schemars(extend("x-format" = "duration"))]
    pub clone_timeout: Option<String>,
    /// Longest wait from start until the guest agent reports an address, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub boot_timeout: Option<String>,
    /// Longest wait for stopping and deleting a VM, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub delete_timeout: Option<String>,
    /// Longest wait for one Proxmox API request, e.g. `30s`. Default `30s`.
    #[schemars(extend("x-format" = "duration"))]
    pub request_timeout: Option<String>,
    /// User that cloud-init creates with the generated SSH key (when Runner does not pass static credentials). Default `fleeting`.
    pub cloud_init_user: Option<String>,
    /// Failed provisioning attempts in a row, all of one cause (e.g. the guest never reports an address), that hold scale-up. Single failures among successes never do; outages, dropped connections and VMID collisions never count. Default `5`.
    pub failure_threshold: Option<u32>,
    /// How long scale-up is held after systematic failures before one instance tests whether the cause is gone; doubles after each failed test up to `failure_backoff_max`. A success ends the hold. Default `10s`.
    #[schemars(extend("x-format" = "duration"))]
    pub failure_backoff: Option<String>,
    /// Longest hold of scale-up between two tests, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub failure_backoff_max: Option<String>,
    /// At Init, finish what the seed plugin (LukasK32, Phenix66) left in the pool under this config's `instance_name_*`: VMs named creating or removing are deleted, running ones adopted when they answer with an address (deleted otherwise). Only VMs in `pool` with one of these names, without this plugin's marker and without another group's tag are touched; never the template. Default `true`.
    pub take_over_seed_instances: Option<bool>,
    /// Serve Prometheus metrics on `http://<address>/metrics` and the group's live state on `/status` (which `check` and `status` read), e.g. `127.0.0.1:9464`. One plugin process runs per `[[runners]]` entry: give each entry its own port. A taken port is retried in the background; the plugin serves Runner meanwhile. Default: off.
    pub metrics_listen: Option<String>,
    /// How instances get their address, as in nE0sIghT: `dhcp` (from the network; the guest agent reports it) or `static` (the plugin hands out addresses from `ip_pool_*` and writes them into cloud-init's `ipconfig0` before the first start; the lease is kept on the VM, in its description and tags, never in a state file). Default `dhcp`.
    pub network_mode: Option<NetworkMode>,
    /// The static pool's network in CIDR notation: one IPv4 and/or one IPv6 network, e.g. `"10.0.20.0/24"` or `["10.0.20.0/24", "fd00:20::/64"]`; each instance gets one address of each. With `network_mode = "static"`. Default: none.
    pub ip_pool_network: Option<TextList>,
    /// The gateway of each `ip_pool_network`, inside it, e.g. `"10.0.20.1"` or `["10.0.20.1", "fd00:20::1"]`; never handed out. With `network_mode = "static"`. Default: none.
    pub ip_pool_gateway: Option<TextList>,
    /// Addresses to hand out, inside `ip_pool_network`, as ranges `first-last` or single addresses, e.g. `["10.0.20.100-10.0.20.199"]`. Default: the whole network but its own address, the IPv4 broadcast and the gateway.
    pub ip_pool_ranges: Option<TextList>,
    /// Addresses (or ranges `first-last`) never handed out, e.g. `["10.0.20.150"]`: hosts that are not VMs of this cluster, or VMs whose address the plugin cannot see. Default: none.
    pub ip_pool_exclude: Option<TextList>,
    /// How long an address freed by a deletion is not handed out again (ARP caches, known_hosts), e.g. `"5m"`; kept by the plugin process, so a restart forgets it. Default `0s`.
    #[schemars(extend("x-format" = "duration"))]
    pub ip_pool_reuse_cooldown: Option<String>,
    /// DNS servers that cloud-init configures (either `network_mode`; the template needs a cloud-init drive), e.g. `"10.0.20.2"` or `["10.0.20.2", "fd00:20::2"]`. Default: the template's (Proxmox uses the node's when unset).
    pub nameserver: Option<TextList>,
    /// DNS search domain that cloud-init configures (either `network_mode`), e.g. `"ci.example.com"`. Default: the template's.
    pub searchdomain: Option<String>,
    /// Whether the template runs the QEMU guest agent. `false` needs `network_mode = "static"`: an instance is then ready when its connector port (`protocol_port`, else 22 for SSH, 5985/5986 for WinRM) accepts TCP connections from the plugin's host within `boot_timeout`, and Heartbeat probes that port. With the agent and a static address, the agent must report that address. Default `true`.
    pub agent_required: Option<bool>,
}

/// One entry of `node_policies`, as nE0sIghT writes it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct NodePolicySettings {
    /// The nodes these rules are for.
    pub nodes: Option<TextList>,
    pub reserve_memory_mb: Option<u64>,
    pub reserve_memory_percent: Option<u32>,
    pub reserve_cpu_cores: Option<f64>,
    pub reserve_cpu_percent: Option<u32>,
    pub reserve_disk_gb: Option<u64>,
    pub reserve_disk_percent: Option<u32>,
    pub memory_allocation_limit_percent: Option<u32>,
    pub cpu_allocation_limit_percent: Option<u32>,
}

/// One text or a list of texts (nE0sIghT's settings accept both).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TextList {
    One(String),
    Many(Vec<String>),
}

impl TextList {
    fn items(self) -> Vec<String> {
        let items = match self {
            TextList::One(text) => vec![text],
            TextList::Many(list) => list,
        };
        items.into_iter().map(|item| item.trim().to_string()).filter(|item| !item.is_empty()).collect()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    #[default]
    Dhcp,
    Static,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkProtocol {
    #[default]
    Ipv4,
    Ipv6,
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloneMode {
    #[default]
    Auto,
    Linked,
    Full,
}

/// The validated configuration with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub url: String,
    pub insecure_skip_tls_verify: bool,
    pub credentials_file_path: PathBuf,
    pub pool: String,
    pub storage: Option<String>,
    /// The main template: cloned on its node and wherever its storage is
    /// shared, copied for nodes without (`template_vmids`' first, or
    /// `template_id`).
    pub template_id: Vmid,
    /// The other templates of `template_vmids`, each serving its own node.
    pub node_templates: Vec<Vmid>,
    pub max_instances: u32,
    /// The interface to read addresses from: read first when
    /// [`Self::instance_network_interface_explicit`], else only a fallback
    /// behind the interface with net0's MAC.
    pub instance_network_interface: String,
    /// The user set `instance_network_interface` (to a non-empty value).
    pub instance_network_interface_explicit: bool,
    pub instance_network_protocol: NetworkProtocol,
    pub instance_name_creating: String,
    pub instance_name_running: String,
    pub instance_name_removing: String,
    /// Phenix66's per-state tags, valid PVE tags, lower-cased, without
    /// duplicates; set next to the plugin's own tags while the VM is in that
    /// state. Empty when not configured.
    pub instance_tags_creating: Vec<String>,
    pub instance_tags_running: Vec<String>,
    pub instance_tags_removing: Vec<String>,
    /// Resize this disk after the clone (Phenix66), before the VM starts.
    pub autoresize: Option<DiskResize>,
    /// How often task status is read; `None` means the client's own
    /// adaptive polling.
    pub task_poll_interval: Option<Duration>,
    pub ca_file: Option<PathBuf>,
    pub tls_fingerprint: Option<crate::pve::Fingerprint>,
    /// Explicit `group`, `fleeting`, or derived from the instance names
    /// (see [`derived_group`]).
    pub group: String,
    /// Resolved: the user's `clone_mode`, else `full` when `storage` is set,
    /// else `auto`.
    pub clone_mode: CloneMode,
    /// The user set `clone_mode` (so `storage` did not decide it).
    pub clone_mode_explicit: bool,
    pub target_nodes: Vec<String>,
    /// The scheduler, reserves, limits and target storages.
    pub placement: PlacementConfig,
    /// Template copies for nodes that cannot clone the template directly.
    pub staging: Staging,
    pub vmid_range: Option<(Vmid, Vmid)>,
    pub tags: Vec<String>,
    pub max_parallel_clones: u32,
    pub max_parallel_deletes: u32,
    /// How many clones and starts may run at once, in total and per node.
    pub parallel: ParallelLimits,
    /// nE0sIghT's sizing of every instance and its clone source.
    pub sizing: Sizing,
    pub clone_timeout: Duration,
    pub boot_timeout: Duration,
    pub delete_timeout: Duration,
    pub request_timeout: Duration,
    pub cloud_init_user: String,
    pub failure_threshold: u32,
    pub failure_backoff: Duration,
    pub failure_backoff_max: Duration,
    pub take_over_seed_instances: bool,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `network_mode = "static"`: the pools, DNS and cooldown.
    pub static_network: Option<StaticNetwork>,
    /// The template runs the guest agent (see [`PluginConfig::agent_required`]).
    pub agent_required: bool,
    /// cloud-init's `nameserver`, in order; empty: not written.
    pub nameservers: Vec<std::net::IpAddr>,
    /// cloud-init's `searchdomain`; `None`: not written.
    pub searchdomain: Option<String>,
}

/// Bounds on work that loads Proxmox, in total and per node; `None` is
/// no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParallelLimits {
    pub clones_per_node: Option<u32>,
    pub starts: Option<u32>,
    pub starts_per_node: Option<u32>,
}

/// What every instance is made of, besides the template (nE0sIghT's
/// `vm_*` and `clone_*` settings).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sizing {
    pub memory_mib: Option<u64>,
    pub cores: Option<u32>,
    /// The size the disk is grown to; with [`Self::disk_device`] or the
    /// template's boot disk.
    pub disk_mib: Option<u64>,
    /// `vm_disk_device`, normalised (`scsi01` → `scsi1`).
    pub disk_device: Option<String>,
    pub clone_snapshot: Option<String>,
    pub clone_bwlimit_kib: Option<u64>,
}

/// `template_stage_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StageMode {
    /// Nodes that cannot clone the template directly are refused.
    Off,
    /// They get a copy (`auto`, and nE0sIghT's `required`).
    #[default]
    Auto,
}

/// How template copies are made and named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staging {
    pub mode: StageMode,
    /// `template_vmid_range`; `None`: any free VMID.
    pub vmid_range: Option<(Vmid, Vmid)>,
    /// Copies are named `<name_prefix>-<node>`.
    pub name_prefix: String,
    pub check_interval: Duration,
}

/// A disk resize after the clone (PVE's `PUT /nodes/{node}/qemu/{vmid}/resize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskResize {
    /// `scsi0`, `virtio1`, … (PVE's `disk` parameter).
    pub disk: String,
    /// PVE's `size` parameter as written: `20G` (absolute) or `+5.5G` (increment).
    pub size: String,
}

impl GroupConfig {
    /// How to reach PVE with these settings (the engine's defaults for
    /// connecting and retrying).
    pub fn client_config(&self, credentials: crate::pve::Credentials) -> crate::pve::ClientConfig {
        crate::pve::ClientConfig {
            url: self.url.clone(),
            tls: crate::pve::TlsOptions {
                ca_file: self.ca_file.clone(),
                fingerprint: self.tls_fingerprint,
                insecure_skip_verify: self.insecure_skip_tls_verify,
            },
            credentials,
            request_timeout: self.request_timeout,
            connect_timeout: Duration::from_secs(10),
            retry: crate::pve::RetryPolicy::default(),
            observer: None,
        }
    }
}

/// Every problem found in a `plugin_config`, and the keys it ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub problems: Vec<String>,
    /// Keys that were ignored (not problems, but often their cause: a
    /// misspelt required key).
    pub ignored: Vec<IgnoredKey>,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let count = self.problems.len();
        write!(f, "could not use plugin_config ({count} problem{}): ", if count == 1 { "" } else { "s" })?;
        f.write_str(&self.problems.join("; "))?;
        if !self.ignored.is_empty() {
            let ignored: Vec<String> = self.ignored.iter().map(ToString::to_string).collect();
            write!(f, " (also: {})", ignored.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A valid `plugin_config`, and the keys that were ignored in it.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: GroupConfig,
    /// One per ignored key, in key order; Init logs each as a warning and
    /// `check` reports each as a failure.
    pub warnings: Vec<IgnoredKey>,
}

/// A key of the `plugin_config` that was not used (Go's decoding in the seed
/// ignores such keys too, so they never stop Runner).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IgnoredKey {
    /// The key as written.
    pub key: String,
    pub reason: Ignored,
}

/// Why a key was ignored, with what is known about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ignored {
    /// Close to one of our keys: probably a typo.
    Misspelt { suggestion: String },
    /// A key of another Proxmox fleeting plugin.
    OtherPlugin {
        plugin: &'static str,
        /// Our key with the same purpose, if there is one.
        equivalent: Option<&'static str>,
        fix: &'static str,
    },
    /// Neither ours nor close to ours.
    Unknown,
    /// The same key again in other letter case; `kept` (as written) counts.
    Duplicate { kept: String },
}

impl IgnoredKey {
    /// What is wrong, naming the key.
    pub fn problem(&self) -> String {
        let key = &self.key;
        match &self.reason {
            Ignored::Duplicate { kept } => {
                format!("`{key}` is ignored: `{kept}` is set too, and key names match regardless of case")
            }
            Ignored::OtherPlugin { plugin, .. } => {
                format!("`{key}` is not a setting of this plugin (it is one of {plugin}) and is ignored")
            }
            Ignored::Misspelt { .. } | Ignored::Unknown => {
                format!("`{key}` is not a setting of this plugin and is ignored")
            }
        }
    }

    /// How to fix it.
    pub fn fix(&self) -> String {
        match &self.reason {
            Ignored::Misspelt { suggestion } => format!("did you mean `{suggestion}`? rename it"),
            Ignored::OtherPlugin { fix, .. } => (*fix).to_string(),
            Ignored::Unknown => "remove it (the settings are listed in the README, Configuration)".into(),
            Ignored::Duplicate { kept } => format!("remove `{}` and keep `{kept}`", self.key),
        }
    }
}

impl std::fmt::Display for IgnoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem(), self.fix())
    }
}

const NE: &str = "nE0sIghT/fleeting-plugin-proxmox";
const OV: &str = "overlordtm/fleeting-plugin-proxmox";
const YO: &str = "yoonda9/fleeting-plugin-proxmox";
const LC: &str = "LeCyreaxYT/gitlab-fleeting-plugin-proxmox";

const NO_RETRIES: &str = "remove it: transient Proxmox API errors are retried automatically";
const NO_LAZY_START: &str = "remove it: instances start as soon as their clone is done";
const TOKEN_FILE: &str = "move it into the JSON file named by `credentials_file_path` (fields `token_id` and \
                          `token_secret`, see README, The credentials file)";

/// Keys of the other Proxmox fleeting plugins (nE0sIghT and its fork
/// overlordtm, yoonda9, LeCyreaxYT; dxas90 has only the seed's keys), with
/// what to do instead: (key, plugin, our equivalent key, fix).
const OTHER_PLUGIN_KEYS: &[(&str, &str, Option<&str>, &str)] = &[
    ("api_url", NE, Some("url"), "rename it to `url`"),
    ("token_id", NE, None, TOKEN_FILE),
    ("token_secret", NE, None, TOKEN_FILE),
    ("tls_ca_file", NE, Some("ca_file"), "rename it to `ca_file`"),
    ("tls_insecure_skip_verify", NE, Some("insecure_skip_tls_verify"), "rename it to `insecure_skip_tls_verify`"),
    ("cluster_name", NE, None, "remove it: the plugin uses the cluster behind `url`"),
    ("name_prefix", NE, Some("group"), "set `group` to mark this runner's VMs (VM names come from `instance_name_*`)"),
    (
        "task_poll_interval",
        NE,
        Some("proxmox_task_wait_interval"),
        "set `proxmox_task_wait_interval` in whole seconds, or leave it out for adaptive polling",
    ),
    (
        "start_timeout",
        NE,
        Some("boot_timeout"),
        "set `boot_timeout` (start until the guest agent reports an address), e.g. \"5m\"",
    ),
    (
        "agent_timeout",
        NE,
        Some("boot_timeout"),
        "set `boot_timeout` (start until the guest agent reports an address), e.g. \"5m\"",
    ),
    ("shutdown_timeout", NE, Some("delete_timeout"), "set `delete_timeout` (stop and delete), e.g. \"5m\""),
    (
        "metrics_socket",
        NE,
        Some("metrics_listen"),
        "set `metrics_listen` (an HTTP address Prometheus scrapes directly, no exporter process), e.g. \"127.0.0.1:9464\"",
    ),
    ("metrics_interval", NE, None, "remove it: metrics are computed when Prometheus scrapes"),
    ("state_file", NE, None, "remove it: the plugin keeps no state file (ownership is written on the VMs)"),
    ("ci_user", NE, Some("cloud_init_user"), "rename it to `cloud_init_user`"),
    (
        "ci_ssh_keys",
        NE,
        None,
        "remove it: Runner connects with the key of [runners.autoscaler.connector_config] or one the plugin generates; put other keys into the template",
    ),
    ("prefer_ipv6", NE, Some("instance_network_protocol"), "set `instance_network_protocol = \"ipv6\"` (or \"any\")"),
    ("description_template", NE, None, "remove it: the VM description holds the plugin's ownership marker"),
    ("api_retry_max_elapsed", OV, None, NO_RETRIES),
    (
        "proxmox_task_wait_timeout",
        YO,
        Some("clone_timeout"),
        "set `clone_timeout` and `delete_timeout` as durations, e.g. \"5m\"",
    ),
    ("instance_agent_start_timeout", YO, Some("boot_timeout"), "set `boot_timeout` as a duration, e.g. \"2m\""),
    ("instance_connect_timeout", YO, Some("boot_timeout"), "set `boot_timeout` as a duration, e.g. \"2m\""),
    ("collector_interval", YO, None, "remove it: removals start at once, without a collector"),
    ("http_timeout", YO, Some("request_timeout"), "set `request_timeout` as a duration, e.g. \"60s\""),
    ("http_max_idle_conns_per_host", YO, None, "remove it: connections are pooled automatically"),
    ("proxmox_api_retry_attempts", YO, None, NO_RETRIES),
    ("clone_concurrency", YO, Some("max_parallel_clones"), "rename it to `max_parallel_clones`"),
    (
        "vmid_range_start",
        YO,
        Some("vmid_range"),
        "set `vmid_range = \"first-last\"` instead (both ends included; yoonda9's end is excluded)",
    ),
    (
        "vmid_range_end",
        YO,
        Some("vmid_range"),
        "set `vmid_range = \"first-last\"` instead (both ends included; yoonda9's end is excluded)",
    ),
    ("instance_name_idle", LC, None, NO_LAZY_START),
    ("instance_name_starting", LC, None, "remove it: a starting instance keeps `instance_name_creating`"),
    ("vmid_range_low", LC, Some("vmid_range"), "set `vmid_range = \"low-high\"` instead"),
    ("vmid_range_high", LC, Some("vmid_range"), "set `vmid_range = \"low-high\"` instead"),
    (
        "cleanup_running_on_init",
        LC,
        None,
        "remove it: after a restart every leftover VM is verified, then adopted or removed",
    ),
    ("lazy_start_instances", LC, None, NO_LAZY_START),
];

impl IgnoredKey {
    /// Classifies a key that is not ours: another plugin's, a near miss of
    /// one of `known`, or unknown.
    fn classify(key: &str, known: &[String]) -> Self {
        let folded = fold(key);
        let reason = if let Some((_, plugin, equivalent, fix)) =
            OTHER_PLUGIN_KEYS.iter().find(|(other, ..)| fold(other) == folded)
        {
            Ignored::OtherPlugin { plugin, equivalent: *equivalent, fix }
        } else if let Some(suggestion) = closest(&key.to_lowercase(), known) {
            Ignored::Misspelt { suggestion: suggestion.to_string() }
        } else {
            Ignored::Unknown
        };
        Self { key: key.to_string(), reason }
    }
}

/// A key name folded as Go's encoding/json folds it to match struct fields
/// regardless of case (`ToUpper(ToLower(r))` per character).
fn fold(key: &str) -> String {
    key.chars().flat_map(char::to_lowercase).flat_map(char::to_uppercase).collect()
}

/// The keys `plugin_config` accepts, from the generated JSON Schema.
pub fn known_keys() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfig)).unwrap_or_default();
    let mut keys: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// The JSON Schema of `plugin_config`, pretty-printed.
pub fn json_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(PluginConfig)).unwrap_or_default()
}

/// The `plugin_config` reference as a Markdown table (key, type, default,
/// meaning), generated from the doc comments of [`PluginConfig`] so the
/// README cannot drift from the code.
pub fn reference_markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfig)).unwrap_or_default();
    let definitions = schema.get("$defs").cloned().unwrap_or_default();
    let mut out = String::from("| Key | Type | Default | Meaning |\n|---|---|---|---|\n");
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return out };
    // Declaration order (schemars keeps it), which groups seed keys first.
    for (key, property) in properties {
        let description = property.get("description").and_then(Value::as_str).unwrap_or_default().replace('\n', " ");
        let (meaning, default) = split_default(&description);
        let kind = type_name(property, &definitions);
        out.push_str(&format!("| `{key}` | {kind} | {default} | {} |\n", meaning.replace('|', "\\|")));
    }
    out
}

/// Splits "… Default `x`." (or "… Required.") off a key's description.
fn split_default(description: &str) -> (String, String) {
    if let Some(meaning) = description.strip_suffix(" Required.") {
        return (meaning.to_string(), "required".into());
    }
    match description.rfind(" Default") {
        Some(at) => {
            let default = description[at + " Default".len()..].trim_start_matches(':').trim().trim_end_matches('.');
            (description[..at].to_string(), default.to_string())
        }
        None => (description.to_string(), "none".into()),
    }
}

fn type_name(property: &Value, definitions: &Value) -> String {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return type_name(&definitions[name], definitions);
    }
    if let Some(any_of) = property.get("anyOf").and_then(Value::as_array) {
        let names: Vec<String> = any_of
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .map(|v| type_name(v, definitions))
            .collect();
        return names.join(" or ");
    }
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().filter_map(Value::as_str).map(|v| format!("`{v}`")).collect();
        return names.join(" / ");
    }
    if let Some(values) = property.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .filter_map(|v| v.get("const").or_else(|| v.get("enum").and_then(|e| e.get(0))))
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        return names.join(" / ");
    }
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).filter(|k| *k != "null").collect(),
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("string") if property.get("x-format") == Some(&Value::from("duration")) => "duration".into(),
        Some("string") => "text".into(),
        Some("boolean") => "`true` / `false`".into(),
        Some("integer") => "whole number".into(),
        Some("array") => format!(
            "list of {}",
            property.get("items").map(|items| type_name(items, definitions)).unwrap_or_else(|| "values".into())
        ),
        Some(other) => other.to_string(),
        None => "value".into(),
    }
}

/// The keys whose value is text (plain or one of a list of words): for
/// them `""` means the default, as in the seed's Go decoding.
fn text_keys() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfig)).unwrap_or_default();
    let definitions = schema.get("$defs").cloned().unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return Vec::new() };
    properties.iter().filter(|(_, property)| is_text(property, &definitions)).map(|(key, _)| key.clone()).collect()
}

fn is_text(property: &Value, definitions: &Value) -> bool {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return is_text(&definitions[name], definitions);
    }
    for alternatives in ["anyOf", "oneOf"] {
        if let Some(values) = property.get(alternatives).and_then(Value::as_array) {
            return values.iter().any(|v| is_text(v, definitions));
        }
    }
    if property.get("const").is_some_and(Value::is_string) {
        return true;
    }
    match property.get("type") {
        Some(Value::String(kind)) => kind == "string",
        Some(Value::Array(kinds)) => kinds.iter().any(|k| k == "string"),
        _ => false,
    }
}

impl PluginConfig {
    /// Parses and validates the JSON Runner sends. Keys are matched as the
    /// seed's Go decoding matches them (exact name first, else regardless of
    /// case); `""` for a text key means its default; keys that are not ours
    /// are returned in [`Parsed::warnings`], never as errors.
    pub fn parse(json: &[u8]) -> Result<Parsed, ConfigError> {
        let whole = |problem: &str| ConfigError { problems: vec![problem.to_string()], ignored: Vec::new() };
        let value: Value = serde_json::from_slice(json).map_err(|err| {
            whole(&format!("it is not valid JSON ({err}); check the [runners.autoscaler.plugin_config] table"))
        })?;
        let object = match value {
            Value::Object(object) => object,
            Value::Null => Map::new(),
            _ => return Err(whole("it must be a table of settings ([runners.autoscaler.plugin_config])")),
        };
        let known = known_keys();
        let text = text_keys();
        let mut ignored = Vec::new();
        // Our key → (the key as written, its value). An exact name wins over
        // another spelling; between other spellings the later one does, as in
        // Go (Runner sends keys sorted, so an exact lower-case name comes last).
        let mut chosen: std::collections::BTreeMap<String, (String, Value)> = Default::default();
        for (key, value) in object {
            let ours = if known.contains(&key) {
                Some(key.clone())
            } else {
                let folded = fold(&key);
                known.iter().find(|k| fold(k) == folded).cloned()
            };
            let Some(ours) = ours else {
                ignored.push(IgnoredKey::classify(&key, &known));
                continue;
            };
            match chosen.remove(&ours) {
                Some((previous, previous_value)) if previous == ours => {
                    ignored.push(IgnoredKey { key, reason: Ignored::Duplicate { kept: previous.clone() } });
                    chosen.insert(ours, (previous, previous_value));
                }
                Some((previous, _)) => {
                    ignored.push(IgnoredKey { key: previous, reason: Ignored::Duplicate { kept: key.clone() } });
                    chosen.insert(ours, (key, value));
                }
                None => {
                    chosen.insert(ours, (key, value));
                }
            }
        }
        ignored.sort_by(|a, b| a.key.cmp(&b.key));

        let mut problems = Vec::new();
        // Each key on its own, so one mistyped value does not hide the next.
        let mut clean = Map::new();
        for (ours, (written, value)) in chosen {
            if value.as_str() == Some("") && text.contains(&ours) {
                continue;
            }
            let single = Value::Object(Map::from_iter([(ours.clone(), value.clone())]));
            match serde_json::from_value::<PluginConfig>(single) {
                Ok(_) => {
                    clean.insert(ours, value);
                }
                Err(err) => problems.push(format!("`{written}`: {}", describe_serde_error(&err))),
            }
        }
        let config: PluginConfig = serde_json::from_value(Value::Object(clean)).unwrap_or_default();
        match config.resolve(problems) {
            Ok(config) => Ok(Parsed { config, warnings: ignored }),
            Err(mut err) => {
                err.ignored = ignored;
                Err(err)
            }
        }
    }

    /// Applies defaults and checks every value; `problems` already found are kept.
    pub fn resolve(self, mut problems: Vec<String>) -> Result<GroupConfig, ConfigError> {
        let mut required = |value: Option<String>, key: &str, example: &str| -> String {
            match value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                Some(value) => value,
                None => {
                    problems.push(format!("`{key}` is required; add e.g. `{key} = {example}`"));
                    String::new()
                }
            }
        };
        let url = required(self.url, "url", "\"https://pve.example.com:8006\"");
        let credentials_file_path =
            required(self.credentials_file_path, "credentials_file_path", "\"/etc/gitlab-runner/pve.json\"");
        let pool = required(self.pool, "pool", "\"ci\"");

        if !url.is_empty() {
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "https" | "http") && parsed.host_str().is_some() => {}
                _ => problems.push(format!(
                    "`url` {url:?} is not an http(s) URL; write it like \"https://pve.example.com:8006\""
                )),
            }
        }
        if !pool.is_empty() && !pool.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
            problems.push(format!(
                "`pool` {pool:?} is not a Proxmox pool id (letters, digits, `-`, `_`, `.`, `/` for nested pools)"
            ));
        }
        let mut templates: Vec<Vmid> = Vec::new();
        for (key, id) in self
            .template_id
            .map(|id| ("template_id", id))
            .into_iter()
            .chain(self.template_vmids.iter().flatten().map(|id| ("template_vmids", *id)))
        {
            if id < 100 {
                problems.push(format!("`{key}` {id} is not a VMID (100 or more)"));
            } else if templates.contains(&Vmid(id)) {
                if key == "template_vmids"
                    && self.template_vmids.iter().flatten().filter(|other| **other == id).count() > 1
                {
                    problems.push(format!("`template_vmids` names {id} twice; keep it once"));
                }
            } else {
                templates.push(Vmid(id));
            }
        }
        if self.template_id.is_none() && self.template_vmids.as_ref().is_none_or(Vec::is_empty) {
            problems.push(
                "`template_id` is required; add the VMID of the template to clone, e.g. `template_id = 9000`".into(),
            );
        }
        let template_id = templates.first().copied().unwrap_or(Vmid(100));
        let node_templates: Vec<Vmid> = templates.iter().skip(1).copied().collect();
        let max_instances = match self.max_instances {
            Some(0) => {
                problems.push("`max_instances` must be at least 1".into());
                0
            }
            Some(n) => n,
            None => {
                problems.push(
                    "`max_instances` is required; add the most VMs this runner may have, e.g. `max_instances = 10`"
                        .into(),
                );
                0
            }
        };

        let names = [
            ("instance_name_creating", self.instance_name_creating, DEFAULT_NAMES[0]),
            ("instance_name_running", self.instance_name_running, DEFAULT_NAMES[1]),
            ("instance_name_removing", self.instance_name_removing, DEFAULT_NAMES[2]),
        ];
        let mut resolved_names = Vec::new();
        let mut names_valid = true;
        for (key, value, default) in names {
            let name = value.filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string());
            if !is_dns_name(&name) {
                names_valid = false;
                problems
                    .push(format!("`{key}` {name:?} is not a valid VM name (letters, digits and `-`, dot-separated)"));
            }
            resolved_names.push(name);
        }

        let group = match self.group.filter(|g| !g.is_empty()) {
            Some(group) => group,
            None if names_valid && resolved_names.iter().zip(DEFAULT_NAMES).any(|(name, default)| name != default) => {
                derived_group(&resolved_names[0], &resolved_names[1], &resolved_names[2])
            }
            None => DEFAULT_GROUP.to_string(),
        };
        if !is_tag(&group) || group.len() > 40 {
            problems.push(format!(
                "`group` {group:?} must be at most 40 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            ));
        }
        let tags = self.tags.unwrap_or_default();
        for tag in &tags {
            if !is_tag(&tag.to_ascii_lowercase()) {
                problems
                    .push(format!("`tags` entry {tag:?} is not a Proxmox tag (letters, digits, `-`, `_`, `+`, `.`)"));
            }
        }
        let mut state_tags = |value: Option<String>, key: &str| -> Vec<String> {
            let mut tags: Vec<String> = Vec::new();
            for tag in value.unwrap_or_default().split(|c: char| c == ';' || c == ',' || c.is_whitespace()) {
                let tag = tag.to_ascii_lowercase();
                if tag.is_empty() || tags.contains(&tag) {
                    continue;
                }
                if is_tag(&tag) {
                    tags.push(tag);
                } else {
                    problems.push(format!(
                        "`{key}` tag {tag:?} is not a Proxmox tag; write tags of letters, digits, `-`, `_`, `+`, `.`, separated by `;`, e.g. \"ci;docker\""
                    ));
                }
            }
            tags
        };
        let instance_tags_creating = state_tags(self.instance_tags_creating, "instance_tags_creating");
        let instance_tags_running = state_tags(self.instance_tags_running, "instance_tags_running");
        let instance_tags_removing = state_tags(self.instance_tags_removing, "instance_tags_removing");

        let disk_text = self.instance_autoresize_disk.filter(|d| !d.is_empty());
        let size_text = self.instance_autoresize_size.filter(|s| !s.is_empty());
        let (disk_set, size_set) = (disk_text.is_some(), size_text.is_some());
        let disk = disk_text.as_deref().and_then(|text| match parse_disk(text) {
            Ok(disk) => Some(disk),
            Err(problem) => {
                problems.push(format!("`instance_autoresize_disk` {text:?} {problem}"));
                None
            }
        });
        let size = size_text.filter(|size| {
            let valid = is_disk_size(size);
            if !valid {
                problems.push(format!(
                    "`instance_autoresize_size` {size:?} is not a disk size; write an absolute size like \"20G\" or an increment like \"+5.5G\" (units K, M, G, T)"
                ));
            }
            valid
        });
        match (disk_set, size_set) {
            (true, false) => problems.push(
                "`instance_autoresize_disk` is set without `instance_autoresize_size`; add the new size, e.g. `instance_autoresize_size = \"+10G\"`, or remove the disk".into(),
            ),
            (false, true) => problems.push(
                "`instance_autoresize_size` is set without `instance_autoresize_disk`; add the disk to resize, e.g. `instance_autoresize_disk = \"scsi0\"`, or remove the size".into(),
            ),
            _ => {}
        }
        let autoresize = disk.zip(size).map(|(disk, size)| DiskResize { disk, size });
        let task_poll_interval = match self.proxmox_task_wait_interval {
            None => None,
            Some(seconds) if (1..=3600).contains(&seconds) => Some(Duration::from_secs(seconds.unsigned_abs())),
            Some(seconds) => {
                problems.push(format!(
                    "`proxmox_task_wait_interval` {seconds} is not between 1 and 3600 seconds; write whole seconds, e.g. `proxmox_task_wait_interval = 2`, or remove it for adaptive polling"
                ));
                None
            }
        };

        let vmid_range = self.vmid_range.as_deref().and_then(|text| match parse_range(text) {
            Ok(range) => Some(range),
            Err(problem) => {
                problems.push(format!("`vmid_range` {text:?} {problem}"));
                None
            }
        });
        if let Some((first, last)) = vmid_range {
            let size = last.0 - first.0 + 1;
            if max_instances > size {
                problems.push(format!(
                    "`max_instances` {max_instances} does not fit `vmid_range` {first}-{last} ({size} ids); widen the range or lower max_instances"
                ));
            }
            for template in templates.iter().filter(|template| (first.0..=last.0).contains(&template.0)) {
                problems.push(format!("`vmid_range` {first}-{last} contains the template {template}; move the range"));
            }
        }

        let mut duration = |value: Option<String>, key: &str, default: Duration| -> Duration {
            match value {
                None => default,
                Some(text) => match humantime::parse_duration(text.trim()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        problems.push(format!(
                            "`{key}` {text:?} is not a duration; write it like \"90s\", \"10m\" or \"1h\""
                        ));
                        default
                    }
                },
            }
        };
        let clone_timeout = duration(self.clone_timeout, "clone_timeout", Duration::from_secs(600));
        let boot_timeout = duration(self.boot_timeout, "boot_timeout", Duration::from_secs(300));
        let delete_timeout = duration(self.delete_timeout, "delete_timeout", Duration::from_secs(300));
        let request_timeout = duration(self.request_timeout, "request_timeout", Duration::from_secs(30));
        let failure_backoff = duration(self.failure_backoff, "failure_backoff", Duration::from_secs(10));
        let failure_backoff_max = duration(self.failure_backoff_max, "failure_backoff_max", Duration::from_secs(300));
        if failure_backoff_max < failure_backoff {
            problems.push(format!(
                "`failure_backoff_max` ({}) is shorter than `failure_backoff` ({}); raise failure_backoff_max",
                humantime::format_duration(failure_backoff_max),
                humantime::format_duration(failure_backoff)
            ));
        }

        let mut parallel = |value: Option<u32>, key: &str| match value {
            Some(0) => {
                problems.push(format!("`{key}` must be at least 1"));
                1
            }
            Some(n) => n,
            None => 4,
        };
        let max_parallel_clones = parallel(self.max_parallel_clones, "max_parallel_clones");
        let max_parallel_deletes = parallel(self.max_parallel_deletes, "max_parallel_deletes");
        let mut limit = |value: Option<u32>, key: &str| match value {
            Some(0) => {
                problems.push(format!("`{key}` must be at least 1; remove it for no limit"));
                None
            }
            other => other,
        };
        let parallel_limits = ParallelLimits {
            clones_per_node: limit(self.max_parallel_clones_per_node, "max_parallel_clones_per_node"),
            starts: limit(self.max_parallel_starts, "max_parallel_starts"),
            starts_per_node: limit(self.max_parallel_starts_per_node, "max_parallel_starts_per_node"),
        };
        let sizing = SizingSettings {
            memory_mb: self.vm_memory_mb,
            cpu_cores: self.vm_cpu_cores,
            disk_mb: self.vm_disk_mb,
            disk_device: self.vm_disk_device,
            clone_snapshot: self.clone_snapshot,
            clone_bwlimit: self.clone_bwlimit,
        }
        .resolve(autoresize.is_some() || disk_set || size_set, &mut problems);
        let failure_threshold = match self.failure_threshold {
            Some(0) => {
                problems.push("`failure_threshold` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => 5,
        };

        let metrics_listen = match self.metrics_listen.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => None,
            Some(text) => match text.parse::<std::net::SocketAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    problems.push(format!(
                        "`metrics_listen` {text:?} is not an address and port; write e.g. \"127.0.0.1:9464\" or \"[::1]:9464\""
                    ));
                    None
                }
            },
        };
        let tls_fingerprint = match self.tls_fingerprint.as_deref().map(crate::pve::Fingerprint::parse) {
            Some(Err(problem)) => {
                problems.push(format!("`tls_fingerprint` {problem}"));
                None
            }
            Some(Ok(fingerprint)) => Some(fingerprint),
            None => None,
        };
        let cloud_init_user = self.cloud_init_user.unwrap_or_else(|| "fleeting".into());
        let valid_user = !cloud_init_user.is_empty()
            && cloud_init_user.len() <= 32
            && cloud_init_user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && cloud_init_user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !valid_user {
            problems.push(format!(
                "`cloud_init_user` {cloud_init_user:?} is not a Linux user name (lower-case letters, digits, `-`, `_`)"
            ));
        }
        // Which of the two keys gave the nodes, so a problem names it.
        let (nodes_key, node_names) = match (self.target_nodes, self.nodes.map(TextList::items)) {
            (Some(ours), Some(theirs)) => {
                if ours != theirs {
                    problems
                        .push("`nodes` and `target_nodes` are the same setting and differ; keep one of them".into());
                }
                ("target_nodes", ours)
            }
            (Some(ours), None) => ("target_nodes", ours),
            (None, Some(theirs)) => {
                ("nodes", theirs.iter().flat_map(|item| item.split(',')).map(str::to_string).collect())
            }
            (None, None) => ("target_nodes", Vec::new()),
        };
        let mut target_nodes: Vec<String> = Vec::new();
        for node in node_names {
            let node = node.trim().to_string();
            if !is_dns_name(&node) || node.contains('.') {
                problems
                    .push(format!("`{nodes_key}` entry {node:?} is not a Proxmox node name (letters, digits and `-`)"));
            } else if !target_nodes.contains(&node) {
                target_nodes.push(node);
            }
        }
        let explicit_interface = self.instance_network_interface.filter(|i| !i.is_empty());
        let instance_network_interface_explicit = explicit_interface.is_some();
        let interface = explicit_interface.unwrap_or_else(|| DEFAULT_INTERFACE.into());
        let storage = self.storage.filter(|s| !s.is_empty());
        let target_storages = self.target_storages.map(TextList::items).unwrap_or_default();
        if storage.is_some() && !target_storages.is_empty() {
            problems.push(
                "`storage` and `target_storages` are both set; keep `target_storages` (list the one storage there) or `storage`".into(),
            );
        }
        if !target_storages.is_empty() && self.clone_mode == Some(CloneMode::Linked) {
            problems.push(
                "`target_storages` needs full clones (a linked clone stays on the template's storage), but `clone_mode` is `linked`; remove one of them".into(),
            );
        }
        // The one place that decides the clone mode: the seed clones in full
        // onto `storage` whenever it is set, and so do `target_storages`.
        let clone_mode = match (self.clone_mode, &storage) {
            (Some(mode), _) => mode,
            (None, Some(_)) => CloneMode::Full,
            (None, None) if !target_storages.is_empty() => CloneMode::Full,
            (None, None) => CloneMode::Auto,
        };
        let placement = resolve_placement(
            PlacementSettings {
                scheduler: self.scheduler,
                rules: NodePolicySettings {
                    nodes: None,
                    reserve_memory_mb: self.node_reserve_memory_mb,
                    reserve_memory_percent: self.node_reserve_memory_percent,
                    reserve_cpu_cores: self.node_reserve_cpu_cores,
                    reserve_cpu_percent: self.node_reserve_cpu_percent,
                    reserve_disk_gb: self.node_reserve_disk_gb,
                    reserve_disk_percent: self.node_reserve_disk_percent,
                    memory_allocation_limit_percent: self.node_memory_allocation_limit_percent,
                    cpu_allocation_limit_percent: self.node_cpu_allocation_limit_percent,
                },
                node_policies: self.node_policies.unwrap_or_default(),
                target_storages: if target_storages.is_empty() {
                    storage.iter().cloned().collect()
                } else {
                    target_storages
                },
            },
            &mut problems,
        );

        let network_mode = self.network_mode.unwrap_or_default();
        let agent_required = self.agent_required.unwrap_or(true);
        let static_settings = StaticSettings {
            networks: self.ip_pool_network.map(TextList::items),
            gateways: self.ip_pool_gateway.map(TextList::items),
            ranges: self.ip_pool_ranges.map(TextList::items),
            exclude: self.ip_pool_exclude.map(TextList::items),
            reuse_cooldown: self.ip_pool_reuse_cooldown,
        };
        // DNS for cloud-init in either mode, as in nE0sIghT.
        let mut nameservers = Vec::new();
        for text in self.nameserver.map(TextList::items).unwrap_or_default() {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => nameservers.push(ip),
                Err(_) => problems.push(format!("`nameserver` {text:?} is not an IP address")),
            }
        }
        let searchdomain = self.searchdomain.map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        if let Some(domain) = &searchdomain
            && domain.split_whitespace().any(|part| !is_dns_name(part))
        {
            problems.push(format!("`searchdomain` {domain:?} is not a domain name, e.g. \"ci.example.com\""));
        }
        let static_network = match network_mode {
            NetworkMode::Static => static_settings.resolve(max_instances, &mut problems),
            NetworkMode::Dhcp => {
                for key in static_settings.keys_set() {
                    problems.push(format!(
                        "`{key}` is set, but `network_mode` is `dhcp`; set `network_mode = \"static\"` to hand out static addresses, or remove `{key}`"
                    ));
                }
                if !agent_required {
                    problems.push(
                        "`agent_required = false` needs `network_mode = \"static\"`: with DHCP only the guest agent can tell the address; set up the static pool (`ip_pool_network`, `ip_pool_gateway`) or remove `agent_required`".into(),
                    );
                }
                None
            }
        };

        if !node_templates.is_empty() && sizing.clone_snapshot.is_some() {
            problems.push(
                "`clone_snapshot` names a snapshot of one source VM, but `template_vmids` lists several templates; remove `clone_snapshot` or keep one template".into(),
            );
        }
        let staging = resolve_staging(
            StagingSettings {
                mode: self.template_stage_mode,
                vmid_range: self.template_vmid_range,
                name_prefix: self.template_name_prefix,
                check_interval: self.template_check_interval,
            },
            &group,
            (&templates, vmid_range),
            &mut problems,
        );

        if !problems.is_empty() {
            return Err(ConfigError { problems, ignored: Vec::new() });
        }
        let mut names = resolved_names.into_iter();
        Ok(GroupConfig {
            url,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify.unwrap_or(false),
            credentials_file_path: PathBuf::from(credentials_file_path),
            pool,
            storage,
            template_id,
            node_templates,
            max_instances,
            instance_network_interface: interface,
            instance_network_interface_explicit,
            instance_network_protocol: self.instance_network_protocol.unwrap_or_default(),
            instance_name_creating: names.next().unwrap_or_default(),
            instance_name_running: names.next().unwrap_or_default(),
            instance_name_removing: names.next().unwrap_or_default(),
            instance_tags_creating,
            instance_tags_running,
            instance_tags_removing,
            autoresize,
            task_poll_interval,
            ca_file: self.ca_file.filter(|s| !s.is_empty()).map(PathBuf::from),
            tls_fingerprint,
            group,
            clone_mode,
            clone_mode_explicit: self.clone_mode.is_some(),
            target_nodes,
            placement,
            staging,
            vmid_range,
            tags: tags.into_iter().map(|t| t.to_ascii_lowercase()).collect(),
            max_parallel_clones,
            max_parallel_deletes,
            parallel: parallel_limits,
            sizing,
            clone_timeout,
            boot_timeout,
            delete_timeout,
            request_timeout,
            cloud_init_user,
            failure_threshold,
            failure_backoff,
            failure_backoff_max,
            take_over_seed_instances: self.take_over_seed_instances.unwrap_or(true),
            metrics_listen,
            static_network,
            agent_required,
            nameservers,
            searchdomain,
        })
    }
}

/// The placement settings as written.
struct PlacementSettings {
    scheduler: Option<String>,
    /// The `node_*` rules (prefix `node_` dropped), for nodes without a policy.
    rules: NodePolicySettings,
    node_policies: Vec<NodePolicySettings>,
    target_storages: Vec<String>,
}

/// Checks the placement settings; every problem goes into `problems`.
fn resolve_placement(settings: PlacementSettings, problems: &mut Vec<String>) -> PlacementConfig {
    let scheduler = match settings.scheduler.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => Scheduler::default(),
        Some(text) => Scheduler::parse(text).unwrap_or_else(|| {
            problems.push(format!("`scheduler` {text:?} is not one of {}", Scheduler::NAMES.join(", ")));
            Scheduler::default()
        }),
    };
    let rules = node_rules(&settings.rules, "node_", None, problems);
    let mut node_rules_by_name = BTreeMap::new();
    for (index, policy) in settings.node_policies.iter().enumerate() {
        let nodes = policy.nodes.clone().map(TextList::items).unwrap_or_default();
        if nodes.is_empty() {
            problems.push(format!("`node_policies` entry {} names no nodes; add e.g. `nodes = [\"pve3\"]`", index + 1));
        }
        let policy_rules = node_rules(policy, "", Some((index + 1, &rules)), problems);
        for node in nodes {
            if node_rules_by_name.insert(node.clone(), policy_rules).is_some() {
                problems.push(format!("`node_policies` names node {node:?} twice; keep one entry for it"));
            }
        }
    }
    PlacementConfig { scheduler, rules, node_rules: node_rules_by_name, target_storages: settings.target_storages }
}

/// One set of node rules; `prefix` is how the keys are written (`node_` at
/// the top level), `policy` the entry number and the rules it inherits.
fn node_rules(
    written: &NodePolicySettings,
    prefix: &str,
    policy: Option<(usize, &NodeRules)>,
    problems: &mut Vec<String>,
) -> NodeRules {
    let name = |key: &str| match policy {
        Some((index, _)) => format!("`node_policies` entry {index}: `{key}`"),
        None => format!("`{prefix}{key}`"),
    };
    let mut percent = |value: Option<u32>, key: &str, most: u32| {
        value.filter(|&percent| {
            let valid = percent <= most;
            if !valid {
                problems.push(format!("{} {percent} is more than {most} percent", name(key)));
            }
            valid
        })
    };
    let memory_percent = percent(written.reserve_memory_percent, "reserve_memory_percent", 100);
    let cpu_percent = percent(written.reserve_cpu_percent, "reserve_cpu_percent", 100);
    let disk_percent = percent(written.reserve_disk_percent, "reserve_disk_percent", 100);
    // Overcommit is common for memory (ballooning) and CPU: up to 10×.
    let memory_limit = percent(written.memory_allocation_limit_percent, "memory_allocation_limit_percent", 1000);
    let cpu_limit = percent(written.cpu_allocation_limit_percent, "cpu_allocation_limit_percent", 1000);
    let cpu_cores = written.reserve_cpu_cores.filter(|&cores| {
        let valid = cores.is_finite() && cores >= 0.0;
        if !valid {
            problems.push(format!("{} {cores} is not a number of cores (0 or more)", name("reserve_cpu_cores")));
        }
        valid
    });
    for (value, key) in [(memory_limit, "memory_allocation_limit_percent"), (cpu_limit, "cpu_allocation_limit_percent")]
    {
        if value == Some(0) {
            problems.push(format!("{} 0 leaves no room for any VM; raise it or remove it", name(key)));
        }
    }
    let inherited = policy.map(|(_, rules)| *rules).unwrap_or_default();
    let reserve = Reserve {
        memory_mb: written.reserve_memory_mb.or(inherited.reserve.memory_mb),
        memory_percent: memory_percent.or(inherited.reserve.memory_percent),
        cpu_cores: cpu_cores.or(inherited.reserve.cpu_cores),
        cpu_percent: cpu_percent.or(inherited.reserve.cpu_percent),
        disk_gb: written.reserve_disk_gb.or(inherited.reserve.disk_gb),
        disk_percent: disk_percent.or(inherited.reserve.disk_percent),
    };
    NodeRules {
        reserve,
        memory_allocation_limit_percent: memory_limit.or(inherited.memory_allocation_limit_percent),
        cpu_allocation_limit_percent: cpu_limit.or(inherited.cpu_allocation_limit_percent),
    }
}

/// nE0sIghT's sizing settings as written.
struct SizingSettings {
    memory_mb: Option<u64>,
    cpu_cores: Option<u32>,
    disk_mb: Option<u64>,
    disk_device: Option<String>,
    clone_snapshot: Option<String>,
    clone_bwlimit: Option<u64>,
}

impl SizingSettings {
    /// Every problem pushed onto `problems`; `autoresize_set` says whether
    /// Phenix66's `instance_autoresize_*` are set too.
    fn resolve(self, autoresize_set: bool, problems: &mut Vec<String>) -> Sizing {
        let mut sizing = Sizing { clone_bwlimit_kib: self.clone_bwlimit, ..Sizing::default() };
        match self.memory_mb {
            Some(mib) if mib < MIN_MEMORY_MIB => problems.push(format!(
                "`vm_memory_mb` {mib} is below Proxmox's minimum of {MIN_MEMORY_MIB} MiB; write the memory in MiB, e.g. `vm_memory_mb = 4096`, or remove it to keep the template's"
            )),
            other => sizing.memory_mib = other,
        }
        match self.cpu_cores {
            Some(0) => problems.push(
                "`vm_cpu_cores` 0 is not a number of cores; write at least 1, e.g. `vm_cpu_cores = 2`, or remove it to keep the template's".into(),
            ),
            other => sizing.cores = other,
        }
        match self.disk_mb {
            Some(0) => problems.push(
                "`vm_disk_mb` 0 is not a disk size; write the size in MiB, e.g. `vm_disk_mb = 20480`, or remove it to keep the template's".into(),
            ),
            other => sizing.disk_mib = other,
        }
        if let Some(text) = self.disk_device.map(|d| d.trim().to_string()).filter(|d| !d.is_empty()) {
            match parse_disk(&text) {
                Ok(disk) => sizing.disk_device = Some(disk),
                Err(problem) => problems.push(format!("`vm_disk_device` {text:?} {problem}")),
            }
            if self.disk_mb.is_none() {
                problems.push(
                    "`vm_disk_device` is set without `vm_disk_mb`; add the size in MiB, e.g. `vm_disk_mb = 20480`, or remove the device".into(),
                );
            }
        }
        if autoresize_set && self.disk_mb.is_some() {
            problems.push(
                "`vm_disk_mb` and `instance_autoresize_disk`/`instance_autoresize_size` both grow a disk; keep one: `vm_disk_mb` (with `vm_disk_device`, or the boot disk) or Phenix66's `instance_autoresize_*`".into(),
            );
        }
        if let Some(name) = self.clone_snapshot.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
            if is_snapshot_name(&name) {
                sizing.clone_snapshot = Some(name);
            } else {
                problems.push(format!(
                    "`clone_snapshot` {name:?} is not a Proxmox snapshot name (a letter, then letters, digits, `-`, `_`; at most 40); copy the name from the VM's Snapshots view"
                ));
            }
        }
        sizing
    }
}

/// Proxmox's smallest `memory` in MiB.
const MIN_MEMORY_MIB: u64 = 16;

/// PVE's `pve-configid` format of snapshot names: a letter, then letters,
/// digits, `-` and `_`, at most 40 characters.
fn is_snapshot_name(name: &str) -> bool {
    name.len() <= 40
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The `ip_pool_*` settings as written.
struct StaticSettings {
    networks: Option<Vec<String>>,
    gateways: Option<Vec<String>>,
    ranges: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    reuse_cooldown: Option<String>,
}

impl StaticSettings {
    fn keys_set(&self) -> Vec<&'static str> {
        let set = |list: &Option<Vec<String>>| list.as_ref().is_some_and(|l| !l.is_empty());
        let mut keys = Vec::new();
        for (key, value) in [
            ("ip_pool_network", &self.networks),
            ("ip_pool_gateway", &self.gateways),
            ("ip_pool_ranges", &self.ranges),
            ("ip_pool_exclude", &self.exclude),
        ] {
            if set(value) {
                keys.push(key);
            }
        }
        if self.reuse_cooldown.as_deref().is_some_and(|c| !c.trim().is_empty()) {
            keys.push("ip_pool_reuse_cooldown");
        }
        keys
    }

    /// The static network, every problem pushed onto `problems`.
    fn resolve(self, max_instances: u32, problems: &mut Vec<String>) -> Option<StaticNetwork> {
        let start = problems.len();
        let networks = self.networks.unwrap_or_default();
        if networks.is_empty() {
            problems.push(
                "`ip_pool_network` is required with `network_mode = \"static\"`; add e.g. `ip_pool_network = \"10.0.20.0/24\"`".into(),
            );
        }
        let mut v4: Option<(std::net::IpAddr, u8)> = None;
        let mut v6: Option<(std::net::IpAddr, u8)> = None;
        for text in &networks {
            match ip_pool::parse_cidr(text) {
                Ok(network) => {
                    let slot = if network.0.is_ipv4() { &mut v4 } else { &mut v6 };
                    if slot.is_some() {
                        problems.push(format!(
                            "`ip_pool_network` has two {} networks; give at most one IPv4 and one IPv6 network",
                            if network.0.is_ipv4() { "IPv4" } else { "IPv6" }
                        ));
                    }
                    *slot = Some(network);
                }
                Err(problem) => problems.push(format!("`ip_pool_network` {text:?} {problem}")),
            }
        }
        let family_networks = [v4, v6];
        let network_of = |ip: std::net::IpAddr| family_networks[usize::from(ip.is_ipv6())];
        let mut gateways: [Option<std::net::IpAddr>; 2] = [None, None];
        for text in self.gateways.unwrap_or_default() {
            match text.parse::<std::net::IpAddr>() {
                Ok(ip) => match network_of(ip) {
                    Some((network, prefix)) if ip_pool::in_network(network, prefix, ip) && ip != network => {
                        gateways[usize::from(ip.is_ipv6())] = Some(ip);
                    }
                    Some((network, prefix)) => problems.push(format!(
                        "`ip_pool_gateway` {text:?} is not a host of `ip_pool_network` {network}/{prefix}; give the gateway of that network"
                    )),
                    None => problems.push(format!(
                        "`ip_pool_gateway` {text:?} has no {} network in `ip_pool_network`; add the network or remove the gateway",
                        if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                    )),
                },
                Err(_) => problems.push(format!("`ip_pool_gateway` {text:?} is not an IP address")),
            }
        }
        for (index, network) in family_networks.iter().enumerate() {
            if let (Some((network, prefix)), None) = (network, gateways[index]) {
                problems.push(format!(
                    "`ip_pool_gateway` is required for `ip_pool_network` {network}/{prefix}; add its gateway, e.g. `ip_pool_gateway = \"{}\"`",
                    ip_pool::from_number(*network, ip_pool::number(*network) + 1)
                ));
            }
        }
        let mut ranges: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
        let mut exclude: [Vec<(u128, u128)>; 2] = [Vec::new(), Vec::new()];
        for (key, texts, into) in
            [("ip_pool_ranges", self.ranges, &mut ranges), ("ip_pool_exclude", self.exclude, &mut exclude)]
        {
            for text in texts.unwrap_or_default() {
                match ip_pool::parse_range(&text) {
                    Ok((first, last)) => match network_of(first) {
                        Some((network, prefix))
                            if ip_pool::in_network(network, prefix, first) && ip_pool::in_network(network, prefix, last) =>
                        {
                            into[usize::from(first.is_ipv6())].push((ip_pool::number(first), ip_pool::number(last)));
                        }
                        Some((network, prefix)) => problems.push(format!(
                            "`{key}` {text:?} is not inside `ip_pool_network` {network}/{prefix}; fix the range or the network"
                        )),
                        None => problems.push(format!(
                            "`{key}` {text:?} has no {} network in `ip_pool_network`; add the network or remove the entry",
                            if first.is_ipv4() { "IPv4" } else { "IPv6" }
                        )),
                    },
                    Err(problem) => problems.push(format!("`{key}` {text:?} {problem}")),
                }
            }
        }
        for family in &mut ranges {
            family.sort();
            if family.windows(2).any(|pair| pair[1].0 <= pair[0].1) {
                problems.push("`ip_pool_ranges` has overlapping ranges; merge them".into());
            }
        }
        let reuse_cooldown = match self.reuse_cooldown.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
            None => Duration::ZERO,
            Some("0") => Duration::ZERO,
            Some(text) => humantime::parse_duration(text).unwrap_or_else(|_| {
                problems.push(format!(
                    "`ip_pool_reuse_cooldown` {text:?} is not a duration; write it like \"0s\", \"90s\" or \"5m\""
                ));
                Duration::ZERO
            }),
        };
        if problems.len() > start {
            return None;
        }
        let pool = |index: usize| -> Option<AddressPool> {
            let (network, prefix) = family_networks[index]?;
            let ranges = if ranges[index].is_empty() {
                vec![ip_pool::default_range(network, prefix)]
            } else {
                ranges[index].clone()
            };
            Some(AddressPool { network, prefix, gateway: gateways[index]?, ranges, exclude: exclude[index].clone() })
        };
        let network = StaticNetwork { v4: pool(0), v6: pool(1), reuse_cooldown };
        for pool in network.pools() {
            if pool.size() < u128::from(max_instances) {
                problems.push(format!(
                    "the static pool {} has {} addresses, fewer than `max_instances` {max_instances}; widen `ip_pool_ranges`, remove entries of `ip_pool_exclude`, or lower `max_instances`",
                    pool.describe(),
                    pool.size()
                ));
            }
        }
        (problems.len() == start).then_some(network)
    }
}

const DEFAULT_NAMES: [&str; 3] = ["fleeting-creating", "fleeting-running", "fleeting-removing"];
const DEFAULT_GROUP: &str = "fleeting";
const DEFAULT_INTERFACE: &str = "ens18";

/// The group of a config whose instance names are not the defaults (see the
/// doc of [`PluginConfig::group`]): `<prefix>-<hash>`, a valid PVE tag part
/// of at most 40 characters, the same for the same names in every release.
pub fn derived_group(creating: &str, running: &str, removing: &str) -> String {
    use sha2::{Digest, Sha256};
    let common: String = creating
        .chars()
        .zip(running.chars())
        .zip(removing.chars())
        .take_while(|((a, b), c)| a == b && b == c)
        .map(|((a, _), _)| a)
        .collect();
    let trim = |text: &str| text.trim_end_matches(['-', '_', '.']).to_string();
    let base = if trim(&common).chars().count() >= 3 { common } else { running.to_string() };
    let prefix: String = base
        .to_ascii_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
        .take(31)
        .collect();
    let prefix = trim(prefix.trim_start_matches(['-', '_', '.']));
    let digest = Sha256::digest(format!("{creating}\n{running}\n{removing}").as_bytes());
    let hash = hex::encode(&digest[..4]);
    if prefix.is_empty() { hash } else { format!("{prefix}-{hash}") }
}

/// Phenix66's disk names: `(ide|scsi|sata|virtio)N` with N within the bus's
/// range; returned normalised (`scsi01` → `scsi1`).
fn parse_disk(text: &str) -> Result<String, String> {
    let buses = [("ide", 3u32), ("sata", 5), ("scsi", 30), ("virtio", 15)];
    let invalid = || {
        "is not a disk; write the bus and index as in the VM's Hardware view, e.g. \"scsi0\" or \"virtio0\" (ide0-3, sata0-5, scsi0-30, virtio0-15)".to_string()
    };
    let (bus, max) = buses.iter().find(|(bus, _)| text.starts_with(bus)).ok_or_else(invalid)?;
    let digits = &text[bus.len()..];
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid());
    }
    let significant = digits.trim_start_matches('0');
    let index: u32 = if significant.is_empty() { 0 } else { significant.parse().unwrap_or(u32::MAX) };
    if index > *max {
        return Err(format!("has no such index on the {bus} bus; use {bus}0 to {bus}{max}"));
    }
    Ok(format!("{bus}{index}"))
}

/// PVE's resize size: `\+?\d+(\.\d+)?[KMGT]?`.
fn is_disk_size(text: &str) -> bool {
    let text = text.strip_prefix('+').unwrap_or(text);
    let number = text.strip_suffix(['K', 'M', 'G', 'T']).unwrap_or(text);
    let (whole, fraction) = match number.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (number, None),
    };
    let digits = |part: &str| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit());
    digits(whole) && fraction.is_none_or(digits)
}

fn describe_serde_error(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = text.rsplit_once(" at line ").map_or(text.as_str(), |(head, _)| head);
    text.replace("u32", "a whole number").replace("a string", "text").replace("a sequence", "a list")
}

fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k.as_str()))
        .filter(|(distance, k)| *distance <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// PVE's `dns-name`: dot-separated labels of letters, digits and inner `-`.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// PVE's tag syntax: `[a-z0-9_][a-z0-9_\-+.]*` (after lower-casing).
pub(crate) fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '+' | '.'))
}

struct StagingSettings {
    mode: Option<String>,
    vmid_range: Option<String>,
    name_prefix: Option<String>,
    check_interval: Option<String>,
}

/// `template_stage_mode`, `template_vmid_range`, `template_name_prefix` and
/// `template_check_interval`; the copies' VMIDs must stay clear of the
/// instances' range and the template.
fn resolve_staging(
    settings: StagingSettings,
    group: &str,
    (templates, vmid_range): (&[Vmid], Option<(Vmid, Vmid)>),
    problems: &mut Vec<String>,
) -> Staging {
    let mode = match settings.mode.as_deref().map(str::trim).filter(|m| !m.is_empty()) {
        None | Some("auto" | "required") => StageMode::Auto,
        Some("off") => StageMode::Off,
        Some(other) => {
            problems.push(format!("`template_stage_mode` {other:?} is not one of auto, required, off"));
            StageMode::Auto
        }
    };
    let range = settings.vmid_range.as_deref().map(str::trim).filter(|r| !r.is_empty()).and_then(|text| {
        match parse_range(text) {
            Ok(range) => Some(range),
            Err(problem) => {
                problems.push(format!("`template_vmid_range` {text:?} {problem}"));
                None
            }
        }
    });
    if let Some((first, last)) = range {
        if let Some((instances_first, instances_last)) = vmid_range
            && first <= instances_last
            && instances_first <= last
        {
            problems.push(format!(
                "`template_vmid_range` {first}-{last} overlaps `vmid_range` {instances_first}-{instances_last}; give the copies their own VMIDs"
            ));
        }
        for template in templates.iter().filter(|template| (first.0..=last.0).contains(&template.0)) {
            problems
                .push(format!("`template_vmid_range` {first}-{last} contains the template {template}; move the range"));
        }
    }
    let name_prefix = match settings.name_prefix.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
        Some(prefix) if is_dns_name(prefix) && !prefix.contains('.') && prefix.len() <= 40 => prefix.to_string(),
        Some(prefix) => {
            problems.push(format!(
                "`template_name_prefix` {prefix:?} cannot start a VM name; use at most 40 letters, digits and `-`"
            ));
            String::new()
        }
        None => format!("{}-template", group.replace(['_', '.'], "-")),
    };
    let check_interval = match settings.check_interval.as_deref().map(str::trim) {
        None | Some("") => Duration::from_secs(300),
        Some(text) => match humantime::parse_duration(text) {
            Ok(interval) if interval >= Duration::from_secs(10) => interval,
            _ => {
                problems.push(format!(
                    "`template_check_interval` {text:?} is not a duration of at least 10s; write e.g. \"5m\""
                ));
                Duration::from_secs(300)
            }
        },
    };
    Staging { mode, vmid_range: range, name_prefix, check_interval }
}

fn parse_range(text: &str) -> Result<(Vmid, Vmid), &'static str> {
    let (first, last) = text.split_once('-').ok_or("must be written `first-last`, e.g. \"9100-9199\"")?;
    let first: u32 = first.trim().parse().map_err(|_| "must be written `first-last`, e.g. \"9100-9199\"")?;
    let last: u32 = last.trim().parse().map_err(|_| "must be written `first-last`, e.g. \"9100-9199\"")?;
    if first < 100 || last > 999_999_999 {
        return Err("must lie within 100-999999999");
    }
    if first > last {
        return Err("starts after it ends");
    }
    Ok((Vmid(first), Vmid(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GroupConfig, ConfigError> {
        PluginConfig::parse(json.as_bytes()).map(|parsed| parsed.config)
    }

    fn parse_warned(json: &str) -> Parsed {
        PluginConfig::parse(json.as_bytes()).unwrap()
    }

    /// SEED with more keys (`"key": value` pairs, comma-separated).
    fn seed_with(more: &str) -> String {
        SEED.replace("\"max_instances\": 5", &format!("\"max_instances\": 5, {more}"))
    }

    fn seed_without_storage_with(more: &str) -> String {
        seed_with(more).replace("\"storage\": \"local-lvm\",", "")
    }

    const SEED: &str = r#"{
        "url": "https://pve.example.com:8006",
        "insecure_skip_tls_verify": false,
        "credentials_file_path": "/etc/gitlab-runner/pve.json",
        "pool": "ci",
        "storage": "local-lvm",
        "template_id": 9000,
        "max_instances": 5
    }"#;

    #[test]
    fn seed_config_gets_seed_defaults() {
        let config = parse(SEED).unwrap();
        assert_eq!(config.instance_network_interface, "ens18");
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Ipv4);
        assert_eq!(config.instance_name_creating, "fleeting-creating");
        assert_eq!(config.instance_name_running, "fleeting-running");
        assert_eq!(config.instance_name_removing, "fleeting-removing");
        assert_eq!(config.storage.as_deref(), Some("local-lvm"));
        assert_eq!(config.group, "fleeting");
        assert_eq!(config.clone_mode, CloneMode::Full, "storage set, clone_mode unset: a full clone onto it");
        assert!(!config.clone_mode_explicit);
        assert!(!config.instance_network_interface_explicit);
        assert!(config.instance_tags_running.is_empty());
        assert_eq!(config.autoresize, None);
        assert_eq!(config.task_poll_interval, None);
        assert_eq!(config.clone_timeout, Duration::from_secs(600));
        assert_eq!(config.max_parallel_clones, 4);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            r#"{"url": "pve:8006", "pool": "ci pool", "template_id": "abc", "max_instances": 50,
                "vmid_range": "9100-9109", "clone_timeout": "soon", "tempalte_id": 1, "group": "Team A"}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "`tempalte_id` is not a setting of this plugin and is ignored; did you mean `template_id`? rename it",
            "`template_id`: invalid type: string \"abc\", expected a whole number",
            "`url` \"pve:8006\" is not an http(s) URL",
            "`credentials_file_path` is required",
            "`pool` \"ci pool\" is not a Proxmox pool id",
            "`max_instances` 50 does not fit `vmid_range` 9100-9109",
            "`clone_timeout` \"soon\" is not a duration",
            "`group` \"Team A\" must be",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
        assert!(text.starts_with("could not use plugin_config ("), "{text}");
    }

    #[test]
    fn new_keys_are_parsed() {
        let json = SEED.replace(
            "\"max_instances\": 5",
            r#""max_instances": 5, "clone_mode": "full", "target_nodes": ["pve1", "pve2"], "vmid_range": "9100-9199",
               "tags": ["CI", "team-a"], "boot_timeout": "90s", "group": "runner-a", "instance_network_protocol": "any""#,
        );
        let config = parse(&json).unwrap();
        assert_eq!(config.clone_mode, CloneMode::Full);
        assert_eq!(config.vmid_range, Some((Vmid(9100), Vmid(9199))));
        assert_eq!(config.tags, ["ci", "team-a"]);
        assert_eq!(config.boot_timeout, Duration::from_secs(90));
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Any);
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert!(parse("[1]").unwrap_err().to_string().contains("table of settings"));
        assert!(parse("{").unwrap_err().to_string().contains("not valid JSON"));
        let err = parse("{}").unwrap_err();
        assert_eq!(err.problems.len(), 5, "url, credentials_file_path, pool, template_id, max_instances: {err}");
    }

    #[test]
    fn reference_has_a_row_per_key_with_type_and_default() {
        let table = reference_markdown();
        assert_eq!(table.lines().count(), known_keys().len() + 2, "{table}");
        assert!(table.contains("| `url` | text | required | Proxmox VE API address"), "{table}");
        assert!(table.contains("| `instance_network_interface` | text | `ens18` |"), "{table}");
        assert!(table.contains("| `instance_network_protocol` | `ipv4` / `ipv6` / `any` | `ipv4` |"), "{table}");
        assert!(table.contains("| `target_nodes` | list of text | the template's node |"), "{table}");
        assert!(table.contains("| `max_instances` | whole number | required |"), "{table}");
    }

    #[test]
    fn schema_lists_every_key() {
        let keys = known_keys();
        for key in ["url", "template_id", "instance_name_removing", "vmid_range", "cloud_init_user"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        assert!(json_schema().contains("\"template_id\""));
    }

    /// Every key of the seed v1.2.0 and of Phenix66 v1.5.0, as their READMEs
    /// show them.
    const PHENIX66: &str = r#"{
        "url": "https://pve.example.com:8006/api2/json",
        "insecure_skip_tls_verify": true,
        "credentials_file_path": "/etc/gitlab-runner/pve.json",
        "pool": "ci",
        "storage": "",
        "template_id": 9000,
        "max_instances": 5,
        "instance_network_interface": "eth0",
        "instance_network_protocol": "ipv6",
        "instance_name_creating": "ci-a-creating",
        "instance_name_running": "ci-a-running",
        "instance_name_removing": "ci-a-removing",
        "instance_tags_creating": "CI;creating",
        "instance_tags_running": "ci;running;team-a",
        "instance_tags_removing": "ci;removing",
        "instance_autoresize_disk": "scsi0",
        "instance_autoresize_size": "+10G",
        "proxmox_task_wait_interval": 2
    }"#;

    #[test]
    fn every_seed_and_phenix66_key_is_accepted_with_its_meaning() {
        let Parsed { config, warnings } = parse_warned(PHENIX66);
        assert_eq!(warnings, [], "no key of theirs is ignored");
        assert!(config.insecure_skip_tls_verify);
        assert_eq!(config.storage, None);
        assert_eq!(config.clone_mode, CloneMode::Auto);
        assert_eq!(config.instance_network_interface, "eth0");
        assert!(config.instance_network_interface_explicit);
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Ipv6);
        assert_eq!(config.instance_name_running, "ci-a-running");
        assert_eq!(config.instance_tags_creating, ["ci", "creating"]);
        assert_eq!(config.instance_tags_running, ["ci", "running", "team-a"]);
        assert_eq!(config.instance_tags_removing, ["ci", "removing"]);
        assert_eq!(config.autoresize, Some(DiskResize { disk: "scsi0".into(), size: "+10G".into() }));
        assert_eq!(config.task_poll_interval, Some(Duration::from_secs(2)));
        assert_eq!(config.group, "ci-a-60a18e26", "derived from the instance names");
        // The fields of the Go structs, each one a key here.
        let keys = known_keys();
        let theirs: Value = serde_json::from_str(PHENIX66).unwrap();
        for key in theirs.as_object().unwrap().keys() {
            assert!(keys.contains(key), "{key} is not a key of ours");
        }
    }

    #[test]
    fn empty_text_means_the_default_as_in_the_seed() {
        let json = seed_with(
            r#""storage": "", "instance_network_interface": "", "instance_network_protocol": "",
               "instance_name_creating": "", "instance_name_running": "", "instance_name_removing": "",
               "instance_tags_creating": "", "instance_tags_running": "", "instance_tags_removing": "",
               "instance_autoresize_disk": "", "instance_autoresize_size": "", "clone_mode": "", "group": "",
               "ca_file": "", "tls_fingerprint": "", "vmid_range": "", "clone_timeout": "", "cloud_init_user": """#,
        )
        .replace("\"storage\": \"local-lvm\",", "");
        let Parsed { config, warnings } = parse_warned(&json);
        assert_eq!(warnings, []);
        assert_eq!(config.storage, None);
        assert_eq!(config.instance_network_interface, "ens18");
        assert!(!config.instance_network_interface_explicit, "\"\" is not an explicit interface");
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Ipv4);
        assert_eq!(
            [&config.instance_name_creating, &config.instance_name_running, &config.instance_name_removing],
            ["fleeting-creating", "fleeting-running", "fleeting-removing"]
        );
        assert_eq!(config.group, "fleeting");
        assert_eq!((config.clone_mode, config.clone_mode_explicit), (CloneMode::Auto, false));
        assert_eq!(config.autoresize, None);
        assert_eq!(config.ca_file, None);
        assert_eq!(config.tls_fingerprint, None);
        assert_eq!(config.vmid_range, None);
        assert_eq!(config.clone_timeout, Duration::from_secs(600));
        assert_eq!(config.cloud_init_user, "fleeting");
        // Required text keys stay required, and "" is no number.
        let err = parse(&json.replace("\"pool\": \"ci\"", "\"pool\": \"\"")).unwrap_err();
        assert_eq!(err.problems, ["`pool` is required; add e.g. `pool = \"ci\"`"]);
        let err = parse(&json.replace("\"template_id\": 9000", "\"template_id\": \"\"")).unwrap_err();
        assert!(err.problems[0].starts_with("`template_id`: invalid type: string \"\""), "{err}");
    }

    #[test]
    fn storage_means_a_full_clone_unless_clone_mode_is_set() {
        let config = parse(SEED).unwrap();
        assert_eq!((config.clone_mode, config.clone_mode_explicit), (CloneMode::Full, false));
        assert_eq!(config.storage.as_deref(), Some("local-lvm"));
        for (mode, expected) in [("auto", CloneMode::Auto), ("linked", CloneMode::Linked), ("full", CloneMode::Full)] {
            let config = parse(&seed_with(&format!("\"clone_mode\": \"{mode}\""))).unwrap();
            assert_eq!((config.clone_mode, config.clone_mode_explicit), (expected, true), "{mode}");
        }
        let config = parse(&seed_without_storage_with("\"clone_mode\": \"full\"")).unwrap();
        assert_eq!((config.clone_mode, config.storage), (CloneMode::Full, None));
        let config = parse(&seed_without_storage_with("\"tags\": []")).unwrap();
        assert_eq!((config.clone_mode, config.clone_mode_explicit), (CloneMode::Auto, false));
    }

    #[test]
    fn an_explicit_interface_is_recorded() {
        let config = parse(&seed_with("\"instance_network_interface\": \"ens18\"")).unwrap();
        assert_eq!(config.instance_network_interface, "ens18");
        assert!(config.instance_network_interface_explicit, "written, even if it is the default name");
        let config = parse(SEED).unwrap();
        assert_eq!(config.instance_network_interface, "ens18");
        assert!(!config.instance_network_interface_explicit);
    }

    #[test]
    fn key_names_match_regardless_of_case_as_in_go() {
        let json = r#"{"URL": "https://pve.example.com:8006", "Credentials_File_Path": "/etc/pve.json",
            "POOL": "ci", "Template_ID": 9000, "max_INSTANCES": 5, "ſtorage": "local-lvm"}"#;
        let Parsed { config, warnings } = parse_warned(json);
        assert_eq!(warnings, []);
        assert_eq!(config.url, "https://pve.example.com:8006");
        assert_eq!(config.template_id, Vmid(9000));
        assert_eq!(config.storage.as_deref(), Some("local-lvm"), "Go folds ſ to s as well");
        // The exact name wins over another spelling, whatever the order.
        let json = seed_with(r#""URL": "https://other.example.com:8006", "Pool": "other""#);
        let Parsed { config, warnings } = parse_warned(&json);
        assert_eq!(config.url, "https://pve.example.com:8006");
        assert_eq!(config.pool, "ci");
        let ignored: Vec<&str> = warnings.iter().map(|w| w.key.as_str()).collect();
        assert_eq!(ignored, ["Pool", "URL"]);
        assert_eq!(warnings[1].reason, Ignored::Duplicate { kept: "url".into() });
        assert_eq!(
            warnings[1].to_string(),
            "`URL` is ignored: `url` is set too, and key names match regardless of case; remove `URL` and keep `url`"
        );
        // Between two other spellings the later one counts, as in Go.
        let json = seed_without_storage_with(r#""STORAGE": "a", "Storage": "b""#);
        let Parsed { config, warnings } = parse_warned(&json);
        assert_eq!(config.storage.as_deref(), Some("b"));
        assert_eq!(warnings[0].reason, Ignored::Duplicate { kept: "Storage".into() });
        // Type errors name the key as written.
        let err = parse(&seed_with(r#""Max_Parallel_Clones": "x""#)).unwrap_err();
        assert!(err.problems[0].starts_with("`Max_Parallel_Clones`: invalid type"), "{err}");
    }

    #[test]
    fn unknown_keys_never_fail_and_say_what_to_do() {
        let json = seed_with(
            r#""tempalte_id": 1, "whatever": true, "api_url": "https://x", "template_vmid": [9000],
               "tls_insecure_skip_verify": true, "tls_ca_file": "/ca.pem", "token_id": "a@pve!b",
               "token_secret": "s3cr3t-value", "lazy_start_instances": true, "vmid_range_start": 100, "Clone_Concurrency": 2"#,
        );
        let Parsed { config, warnings } = parse_warned(&json);
        assert_eq!(config.template_id, Vmid(9000));
        let by_key = |key: &str| warnings.iter().find(|w| w.key == key).unwrap_or_else(|| panic!("{key} not warned"));
        assert_eq!(warnings.len(), 11, "one per unknown key: {warnings:?}");
        assert_eq!(by_key("tempalte_id").reason, Ignored::Misspelt { suggestion: "template_id".into() });
        assert!(matches!(&by_key("template_vmid").reason, Ignored::Misspelt { .. }));
        assert_eq!(by_key("whatever").reason, Ignored::Unknown);
        assert_eq!(
            by_key("whatever").to_string(),
            "`whatever` is not a setting of this plugin and is ignored; remove it (the settings are listed in the README, Configuration)"
        );
        for (key, ours) in [
            ("api_url", "url"),
            ("tls_insecure_skip_verify", "insecure_skip_tls_verify"),
            ("tls_ca_file", "ca_file"),
            ("vmid_range_start", "vmid_range"),
            ("Clone_Concurrency", "max_parallel_clones"),
        ] {
            let warning = by_key(key);
            assert!(
                matches!(warning.reason, Ignored::OtherPlugin { equivalent: Some(e), .. } if e == ours),
                "{key}: {warning:?}"
            );
            assert!(warning.fix().contains(&format!("`{ours}")), "{key}: {warning}");
        }
        let api_url = by_key("api_url").to_string();
        assert_eq!(
            api_url,
            "`api_url` is not a setting of this plugin (it is one of nE0sIghT/fleeting-plugin-proxmox) and is ignored; rename it to `url`"
        );
        assert!(by_key("token_secret").fix().contains("credentials_file_path"));
        assert!(by_key("lazy_start_instances").fix().starts_with("remove it: "));
        for warning in &warnings {
            assert!(!warning.to_string().contains("s3cr3t"), "a value reached a message: {warning}");
        }
    }

    #[test]
    fn other_plugins_keys_map_onto_ours() {
        let ours = known_keys();
        for (key, _, equivalent, fix) in OTHER_PLUGIN_KEYS {
            assert!(!ours.iter().any(|k| fold(k) == fold(key)), "{key} is one of ours");
            if let Some(equivalent) = equivalent {
                assert!(ours.iter().any(|k| k == equivalent), "{key} → {equivalent}, not a key of ours");
                assert!(fix.contains(&format!("`{equivalent}")), "{key}: the fix names {equivalent}: {fix}");
            }
            assert_eq!(OTHER_PLUGIN_KEYS.iter().filter(|(k, ..)| k == key).count(), 1, "{key} twice");
        }
    }

    #[test]
    fn problems_with_known_keys_stay_errors_and_list_the_ignored_keys() {
        let err = parse(r#"{"url": "https://pve:8006", "tempalte_id": 9000, "max_instances": "5", "pool": "ci"}"#)
            .unwrap_err();
        assert_eq!(err.ignored.len(), 1);
        let text = err.to_string();
        assert!(text.contains("`max_instances`: invalid type: string \"5\", expected a whole number"), "{text}");
        assert!(text.contains("`template_id` is required"), "{text}");
        assert!(text.ends_with("(also: `tempalte_id` is not a setting of this plugin and is ignored; did you mean `template_id`? rename it)"), "{text}");
    }

    #[test]
    fn per_state_tags_are_proxmox_tags() {
        let config = parse(&seed_with(
            r#""instance_tags_creating": "CI; Docker;;ci", "instance_tags_running": "a,b c", "instance_tags_removing": "x""#,
        ))
        .unwrap();
        assert_eq!(config.instance_tags_creating, ["ci", "docker"], "lower-cased, without empties and repeats");
        assert_eq!(config.instance_tags_running, ["a", "b", "c"], "`,` and spaces separate too, as in PVE");
        assert_eq!(config.instance_tags_removing, ["x"]);
        let err =
            parse(&seed_with(r#""instance_tags_running": "ok;not/ok", "instance_tags_removing": ["x"]"#)).unwrap_err();
        assert!(err.problems[0].starts_with("`instance_tags_removing`: invalid type: sequence"), "{err}");
        assert!(err.problems[1].starts_with("`instance_tags_running` tag \"not/ok\" is not a Proxmox tag"), "{err}");
    }

    #[test]
    fn autoresize_needs_a_disk_and_a_size() {
        let resize = |disk: &str, size: &str| {
            parse(&seed_with(&format!(
                "\"instance_autoresize_disk\": \"{disk}\", \"instance_autoresize_size\": \"{size}\""
            )))
        };
        for (disk, size) in
            [("scsi0", "20G"), ("ide3", "+5.5G"), ("sata5", "512M"), ("scsi30", "1T"), ("virtio15", "100")]
        {
            let config = resize(disk, size).unwrap_or_else(|err| panic!("{disk} {size}: {err}"));
            assert_eq!(config.autoresize, Some(DiskResize { disk: disk.into(), size: size.into() }));
        }
        assert_eq!(resize("scsi01", "+1G").unwrap().autoresize.unwrap().disk, "scsi1", "PVE's spelling");
        for disk in
            ["ide4", "sata6", "scsi31", "virtio16", "nvme0", "scsi", "scsi-1", "SCSI0", "efidisk0", "scsi99999999999"]
        {
            let err = resize(disk, "+1G").unwrap_err();
            assert!(err.problems[0].starts_with(&format!("`instance_autoresize_disk` \"{disk}\" ")), "{disk}: {err}");
        }
        for size in ["1.G", ".5G", "+-1G", "10GB", "1g", "10 G", "+"] {
            let err = resize("scsi0", size).unwrap_err();
            assert!(
                err.problems[0].starts_with(&format!("`instance_autoresize_size` \"{size}\" is not a disk size")),
                "{size}: {err}"
            );
        }
        let err = parse(&seed_with("\"instance_autoresize_disk\": \"scsi0\"")).unwrap_err();
        assert!(err.problems[0].contains("without `instance_autoresize_size`"), "{err}");
        let err =
            parse(&seed_with("\"instance_autoresize_size\": \"+1G\", \"instance_autoresize_disk\": \"\"")).unwrap_err();
        assert!(err.problems[0].contains("without `instance_autoresize_disk`"), "{err}");
    }

    #[test]
    fn task_wait_interval_is_whole_seconds() {
        let interval = |value: &str| parse(&seed_with(&format!("\"proxmox_task_wait_interval\": {value}")));
        assert_eq!(interval("10").unwrap().task_poll_interval, Some(Duration::from_secs(10)));
        assert_eq!(interval("null").unwrap().task_poll_interval, None);
        for bad in ["0", "-1", "3601"] {
            let err = interval(bad).unwrap_err();
            assert!(
                err.problems[0].starts_with(&format!("`proxmox_task_wait_interval` {bad} is not between 1 and 3600")),
                "{err}"
            );
        }
        for bad in ["2.5", "\"10\""] {
            let err = interval(bad).unwrap_err();
            assert!(err.problems[0].starts_with("`proxmox_task_wait_interval`: invalid type"), "{bad}: {err}");
        }
    }

    #[test]
    fn changed_instance_names_derive_the_group() {
        let names = |c: &str, r: &str, d: &str| {
            parse(&seed_with(&format!(
                "\"instance_name_creating\": \"{c}\", \"instance_name_running\": \"{r}\", \"instance_name_removing\": \"{d}\""
            )))
            .unwrap()
            .group
        };
        assert_eq!(names("fleeting-creating", "fleeting-running", "fleeting-removing"), "fleeting", "defaults");
        assert_eq!(names("", "", ""), "fleeting");
        // Pinned: the same names give the same group in every release.
        assert_eq!(names("ci-a-creating", "ci-a-running", "ci-a-removing"), "ci-a-60a18e26");
        assert_eq!(names("", "team-b-running", ""), "team-b-running-194afc13", "running name when no common prefix");
        let a = names("x-creating", "x-running", "x-removing");
        let b = names("x-creating", "x-running", "x-deleting");
        let c = names("X-creating", "x-running", "x-removing");
        assert!(a != b && a != c && b != c, "distinct names, distinct groups: {a} {b} {c}");
        let long = "a".repeat(60);
        let group = names(&format!("{long}-c"), &format!("{long}-r"), &format!("{long}-d"));
        assert!(group.len() <= 40 && is_tag(&group), "{group}");
        assert_eq!(
            group,
            format!(
                "{}-{}",
                "a".repeat(31),
                &derived_group(&format!("{long}-c"), &format!("{long}-r"), &format!("{long}-d"))[32..]
            )
        );
        for (c, r, d) in
            [("A.B-creating", "A.B-running", "A.B-removing"), ("1-c", "1-r", "1-d"), ("Ci.Run", "ci.run2", "x")]
        {
            let group = derived_group(c, r, d);
            assert!(group.len() <= 40 && is_tag(&group) && !group.starts_with(['-', '.']), "{c} {r} {d}: {group}");
        }
        // An explicit group wins.
        let config = parse(&seed_with(r#""instance_name_running": "ci-a-running", "group": "runner-a""#)).unwrap();
        assert_eq!(config.group, "runner-a");
    }

    #[test]
    fn a_static_pool_is_resolved_from_ne0sights_keys() {
        let config = parse(&seed_with(
            r#""network_mode": "static", "ip_pool_network": ["10.0.20.0/24", "fd00:20::/64"],
               "ip_pool_gateway": ["10.0.20.1", "fd00:20::1"], "ip_pool_ranges": "10.0.20.100-10.0.20.199",
               "ip_pool_exclude": ["10.0.20.150"], "ip_pool_reuse_cooldown": "5m",
               "nameserver": "10.0.20.2", "searchdomain": "ci.example.com", "agent_required": false"#,
        ))
        .unwrap();
        assert!(!config.agent_required);
        let network = config.static_network.unwrap();
        let v4 = network.v4.as_ref().unwrap();
        assert_eq!(v4.describe(), "10.0.20.0/24 (10.0.20.100-10.0.20.199)");
        assert_eq!(v4.size(), 99, "100 minus the excluded address");
        assert_eq!(network.v6.as_ref().unwrap().cidr(), "fd00:20::/64");
        assert_eq!(config.nameservers, ["10.0.20.2".parse::<std::net::IpAddr>().unwrap()]);
        assert_eq!(config.searchdomain.as_deref(), Some("ci.example.com"));
        assert_eq!(network.reuse_cooldown, Duration::from_secs(300));
        // IPv6 only.
        let config = parse(&seed_with(
            r#""network_mode": "static", "ip_pool_network": "fd00:20::/64", "ip_pool_gateway": "fd00:20::1""#,
        ))
        .unwrap();
        let network = config.static_network.unwrap();
        assert!(network.v4.is_none() && network.v6.is_some());
        assert_eq!(network.reuse_cooldown, Duration::ZERO, "nE0sIghT's default");
        // The default stays DHCP with the agent.
        let config = parse(SEED).unwrap();
        assert_eq!((config.static_network, config.agent_required), (None, true));
    }

    #[test]
    fn a_bad_static_pool_names_every_problem() {
        let err = parse(&seed_with(
            r#""network_mode": "static", "ip_pool_network": ["10.0.20.5/24", "10.1.0.0/16", "fd00::/64"],
               "ip_pool_gateway": "10.9.0.1", "ip_pool_ranges": ["10.1.0.10-10.1.0.1", "10.2.0.1"],
               "ip_pool_exclude": "nonsense", "ip_pool_reuse_cooldown": "soon", "nameserver": "dns",
               "searchdomain": "bad_domain!""#,
        ))
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "`ip_pool_network` \"10.0.20.5/24\" has host bits set; write the network \"10.0.20.0/24\"",
            "`ip_pool_gateway` \"10.9.0.1\" is not a host of `ip_pool_network` 10.1.0.0/16",
            "`ip_pool_gateway` is required for `ip_pool_network` fd00::/64",
            "`ip_pool_ranges` \"10.1.0.10-10.1.0.1\" ends before it starts",
            "`ip_pool_ranges` \"10.2.0.1\" is not inside `ip_pool_network` 10.1.0.0/16",
            "`ip_pool_exclude` \"nonsense\" is not an address",
            "`ip_pool_reuse_cooldown` \"soon\" is not a duration",
            "`nameserver` \"dns\" is not an IP address",
            "`searchdomain` \"bad_domain!\" is not a domain name",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
        let err = parse(&seed_with(r#""network_mode": "static""#)).unwrap_err();
        assert!(err.problems[0].starts_with("`ip_pool_network` is required with `network_mode = \"static\"`"), "{err}");
        let err = parse(&seed_with(
            r#""network_mode": "static", "ip_pool_network": "10.0.20.0/24", "ip_pool_gateway": "10.0.20.1",
               "ip_pool_ranges": "10.0.20.10-10.0.20.12""#,
        ))
        .unwrap_err();
        assert!(err.problems[0].contains("has 3 addresses, fewer than `max_instances` 5"), "{err}");
    }

    #[test]
    fn static_keys_without_static_mode_are_problems() {
        let err = parse(&seed_with(r#""ip_pool_network": "10.0.20.0/24", "agent_required": false"#)).unwrap_err();
        assert!(err.problems[0].starts_with("`ip_pool_network` is set, but `network_mode` is `dhcp`"), "{err}");
        assert!(err.problems[1].starts_with("`agent_required = false` needs `network_mode = \"static\"`"), "{err}");
        let Parsed { warnings, .. } = parse_warned(&seed_with(r#""network_mode": "dhcp", "nameserver": """#));
        assert_eq!(warnings, [], "nE0sIghT's keys are ours now");
        // DNS applies with DHCP too, as in nE0sIghT.
        let config =
            parse(&seed_with(r#""nameserver": ["10.0.20.2", "10.0.20.3"], "searchdomain": "ci.example.com""#)).unwrap();
        assert_eq!(config.nameservers.len(), 2);
        assert_eq!(config.static_network, None);
    }

    #[test]
    fn new_keys_appear_in_the_reference() {
        let table = reference_markdown();
        assert!(table.contains("| `instance_tags_running` | text | none |"), "{table}");
        assert!(
            table.contains("| `proxmox_task_wait_interval` | whole number | adaptive, every 0.25 s for a task's first 2 s, then rising to 2 s |"),
            "{table}"
        );
        assert!(
            table.contains("| `clone_mode` | `auto` / `linked` / `full` | `auto`, or `full` when `storage` is set |"),
            "{table}"
        );
        assert!(text_keys().contains(&"instance_network_protocol".to_string()));
        assert!(text_keys().contains(&"instance_autoresize_size".to_string()));
        assert!(!text_keys().contains(&"template_id".to_string()));
        assert!(!text_keys().contains(&"tags".to_string()));
        assert!(!text_keys().contains(&"insecure_skip_tls_verify".to_string()));
    }
}
