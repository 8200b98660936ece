//! The scenario: what cluster the simulator pretends to be, read from TOML or
//! JSON, plus how it is served (`SimConfig`).
//!
//! Every field has a default, so a scenario file names only what differs
//! from the built-in cluster (see [`Scenario::default`]). Durations are
//! simulated seconds (see `clock.rs`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SimError;
use super::faults::FaultRule;

/// How the simulator is served, and what it simulates.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub scenario: Scenario,
    pub tls: TlsMode,
    /// Where the HTTPS certificate files are written (`pve-root-ca.pem`,
    /// `pve-ssl.pem`); nothing is written when `None`.
    pub cert_dir: Option<PathBuf>,
}

/// Plain HTTP, a generated self-signed certificate (like a fresh PVE node),
/// or certificate files the caller provides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    Plain,
    SelfSigned,
    Files { certificate: PathBuf, key: PathBuf },
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { scenario: Scenario::default(), tls: TlsMode::SelfSigned, cert_dir: None }
    }
}

impl SimConfig {
    pub fn new(scenario: Scenario) -> Self {
        Self { scenario, ..Self::default() }
    }

    /// Plain HTTP (no certificate).
    pub fn plain_http(mut self) -> Self {
        self.tls = TlsMode::Plain;
        self
    }

    pub fn with_seed(mut self, seed: u64) -> Self {
        self.scenario.seed = Some(seed);
        self
    }
}

/// The simulated cluster.
///
/// In a file, every key is optional. The inventory lists (`nodes`,
/// `storages`, `pools`, `vms`, `users`, `acl`) go together: a file that
/// names none of them gets the built-in cluster; a file that names any of
/// them describes the whole inventory, and the lists it leaves out are
/// empty (`nodes` then defaults to one node `pve1`; `root@pam` always exists).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(from = "ScenarioFile")]
pub struct Scenario {
    /// The PVE release to answer as (`9.1.3`). It decides the guest-agent
    /// privilege (`VM.Monitor` up to 8.4, `VM.GuestAgent.Audit` from 9.0),
    /// the pools API (8.1+ query forms), TFA login flows, JSON booleans
    /// (8.0+) and the `message` field in error bodies (8.4+).
    pub pve_version: String,
    pub cluster_name: String,
    /// Makes MACs, leased addresses, UPIDs, task pids and injected faults
    /// reproducible. Without `start_epoch`, a seeded run also starts its
    /// clock at a fixed date.
    pub seed: Option<u64>,
    /// Simulated seconds per real second (10 = ten times faster than PVE).
    pub time_scale: f64,
    /// The simulated time at start (Unix seconds).
    pub start_epoch: Option<u64>,
    /// datacenter.cfg `next-id`: the range `/cluster/nextid` allocates from.
    pub next_id: NextIdRange,
    pub timings: Timings,
    pub nodes: Vec<NodeSpec>,
    pub storages: Vec<StorageSpec>,
    pub pools: Vec<PoolSpec>,
    pub vms: Vec<VmSpec>,
    /// Custom roles: name → privileges (built-in roles such as `PVEVMAdmin`
    /// are always there).
    pub roles: BTreeMap<String, Vec<String>>,
    pub users: Vec<UserSpec>,
    pub acl: Vec<AclSpec>,
    /// Faults active from the start; more can be added at run time.
    pub faults: Vec<FaultRule>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NextIdRange {
    pub lower: u32,
    pub upper: u32,
}

impl Default for NextIdRange {
    fn default() -> Self {
        Self { lower: 100, upper: 1_000_000 }
    }
}

/// Durations in simulated seconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Timings {
    pub clone_linked: f64,
    pub clone_full: f64,
    /// The start task (QEMU process up); the guest then boots.
    pub start: f64,
    /// From start to the guest's init (cloud-init, qemu-ga starting).
    pub boot: f64,
    /// From the end of boot until the guest agent answers.
    pub agent_delay: f64,
    pub stop: f64,
    pub shutdown: f64,
    pub delete: f64,
    /// An asynchronous config update (`POST …/config`).
    pub config: f64,
    /// An offline migration (`qmigrate`): the copy of the local disks.
    pub migrate: f64,
    /// A conversion to a template (`qmtemplate`): the disks renamed to base volumes.
    pub template: f64,
    /// How far `status`, `name` and `template` in `/cluster/resources` lag
    /// behind (pvestatd's broadcast cycle).
    pub resources_staleness: f64,
    /// The flock timeout of clone's source and target locks.
    pub lock_timeout: f64,
    /// pveproxy delays every 401 answer (brute-force protection).
    pub unauthorized_delay: f64,
    pub ticket_lifetime: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Self {
            clone_linked: 2.0,
            clone_full: 20.0,
            start: 1.0,
            boot: 15.0,
            agent_delay: 5.0,
            stop: 1.0,
            shutdown: 5.0,
            delete: 1.0,
            config: 0.5,
            migrate: 5.0,
            template: 1.0,
            resources_staleness: 10.0,
            lock_timeout: 1.0,
            unauthorized_delay: 3.0,
            ticket_lifetime: 7200.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSpec {
    pub name: String,
    pub online: bool,
    /// The node's own address (`/cluster/status`); defaults to `.2` of `subnet`.
    pub ip: Option<String>,
    /// The bridge network guests get DHCP leases from (IPv4 CIDR).
    pub subnet: String,
    /// The IPv6 /64 prefix guests autoconfigure from.
    pub subnet6: String,
    pub cpus: u32,
    pub memory_gib: u64,
}

impl Default for NodeSpec {
    fn default() -> Self {
        Self {
            name: "pve1".into(),
            online: true,
            ip: None,
            subnet: "10.10.10.0/24".into(),
            subnet6: "fd00:10:10:10::/64".into(),
            cpus: 16,
            memory_gib: 128,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSpec {
    pub id: String,
    /// PVE storage type: `dir`, `lvmthin`, `lvm`, `zfspool`, `rbd`, `nfs`,
    /// `cifs`, `cephfs`, `iscsi`, `btrfs`. It decides whether linked clones
    /// work.
    #[serde(rename = "type")]
    pub kind: String,
    /// Defaults to the type's nature (NFS, CIFS, RBD, CephFS, iSCSI: shared).
    pub shared: Option<bool>,
    /// Nodes that have it; all when empty.
    pub nodes: Vec<String>,
    pub content: String,
    pub total_gib: u64,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            id: "local-lvm".into(),
            kind: "lvmthin".into(),
            shared: None,
            nodes: Vec::new(),
            content: "images,rootdir".into(),
            total_gib: 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSpec {
    pub id: String,
    pub comment: Option<String>,
    /// Storages that are pool members.
    pub storages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct VmSpec {
    pub vmid: u32,
    pub node: String,
    pub template: bool,
    pub running: bool,
    pub pool: Option<String>,
    /// HA-managed (delete then needs `purge`).
    pub ha: bool,
    /// The VM's configuration as PVE stores it (`name`, `net0`, `scsi0`, …);
    /// disks name volumes (`local-lvm:base-9000-disk-0,size=8G`) that the
    /// simulator creates. A `netN` without MAC gets one. Numbers and
    /// booleans may be written bare (`cores = 2`, `onboot = true`).
    #[serde(deserialize_with = "config_values")]
    pub config: BTreeMap<String, String>,
    pub agent: AgentSpec,
    /// A config lock at start (`backup`, …).
    pub lock: Option<String>,
    /// Snapshots of a VM that is not a template (PVE refuses both
    /// snapshots of templates and templates with snapshots).
    pub snapshots: Vec<SnapshotSpec>,
    /// The share of its vCPUs the guest keeps busy while it runs (what the
    /// node's CPU use adds up from); unset: an idle guest's 2 %.
    pub cpu_load: Option<f64>,
}

/// One snapshot: the VM's configuration when it was taken.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SnapshotSpec {
    pub name: String,
    pub description: Option<String>,
    /// The configuration the snapshot holds; empty: the VM's own.
    #[serde(deserialize_with = "config_values")]
    pub config: BTreeMap<String, String>,
}

/// How the VM's guest agent behaves; clones inherit it from their source.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSpec {
    /// The agent never answers (a broken image).
    pub never_up: bool,
    /// Interfaces besides `lo` and the NIC of `net0`, e.g. a docker bridge.
    pub extra_interfaces: Vec<ExtraInterface>,
    /// Not the agent's but the guest's: the port its SSH or WinRM service
    /// opens once booted, on its static loopback `ipconfig0` address (see
    /// `guest_ports`). None: no service is reachable from outside.
    pub service_port: Option<u16>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ExtraInterface {
    pub name: String,
    pub mac: Option<String>,
    /// `172.17.0.1/16`
    pub ipv4: Option<String>,
    /// `fd00:dead::1/64`
    pub ipv6: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct UserSpec {
    /// `name@realm`
    pub userid: String,
    pub password: Option<String>,
    /// Base32 TOTP secret: the user must pass PVE's TFA challenge.
    pub totp_secret: Option<String>,
    pub enable: bool,
    pub groups: Vec<String>,
    pub tokens: Vec<TokenSpec>,
}

impl Default for UserSpec {
    fn default() -> Self {
        Self {
            userid: String::new(),
            password: None,
            totp_secret: None,
            enable: true,
            groups: Vec::new(),
            tokens: Vec::new(),
        }
    }
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSpec {
    /// The token name (`ci` in `user@pve!ci`).
    pub id: String,
    pub secret: String,
    /// Privilege separation: the token's ACLs are intersected with the user's.
    pub privsep: bool,
    /// Expiry (Unix seconds, simulated time); never when `None`.
    pub expire: Option<u64>,
}

impl Default for TokenSpec {
    fn default() -> Self {
        Self { id: String::new(), secret: String::new(), privsep: true, expire: None }
    }
}

/// Secrets never reach a log line, not even through `{:?}`.
impl std::fmt::Debug for UserSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserSpec")
            .field("userid", &self.userid)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("totp_secret", &self.totp_secret.as_ref().map(|_| "<redacted>"))
            .field("enable", &self.enable)
            .field("groups", &self.groups)
            .field("tokens", &self.tokens)
            .finish()
    }
}

impl std::fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSpec")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("privsep", &self.privsep)
            .field("expire", &self.expire)
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AclSpec {
    pub path: String,
    pub roles: Vec<String>,
    pub users: Vec<String>,
    /// Full token ids (`user@realm!name`).
    pub tokens: Vec<String>,
    pub groups: Vec<String>,
    pub propagate: bool,
}

impl Default for AclSpec {
    fn default() -> Self {
        Self {
            path: "/".into(),
            roles: Vec::new(),
            users: Vec::new(),
            tokens: Vec::new(),
            groups: Vec::new(),
            propagate: true,
        }
    }
}

/// The built-in credentials, for demos and tests on the default scenario.
pub mod defaults {
    pub const ROOT_PASSWORD: &str = "simulator";
    pub const USER: &str = "fleeting@pve";
    pub const USER_PASSWORD: &str = "fleeting-password";
    pub const TOKEN_ID: &str = "fleeting@pve!ci";
    pub const TOKEN_SECRET: &str = "5f0e4c36-0d8b-4f6e-9b1e-7a3c2d1e0f99";
    pub const TFA_USER: &str = "tfa@pve";
    pub const TFA_PASSWORD: &str = "tfa-password";
    pub const TFA_TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";
    pub const POOL: &str = "ci";
    pub const TEMPLATE_VMID: u32 = 9000;
}

impl Default for Scenario {
    /// Two nodes; `local-lvm` (LVM-thin, linked clones) and `local` (dir) on
    /// each; a pool `ci`; template 9000 on pve1 with the guest agent on,
    /// cloud-init on `ide2` and `net0` on `vmbr0`; `root@pam`, a user
    /// `fleeting@pve` with token `ci` that holds what the plugin needs on
    /// `/pool/ci`, and `tfa@pve` with a TOTP second factor.
    fn default() -> Self {
        use defaults::*;
        let template_config: BTreeMap<String, String> = [
            ("name", "debian-12-ci"),
            ("description", "CI runner template"),
            ("agent", "enabled=1"),
            ("boot", "order=scsi0"),
            ("cores", "2"),
            ("sockets", "1"),
            ("memory", "2048"),
            ("ostype", "l26"),
            ("scsihw", "virtio-scsi-single"),
            ("scsi0", "local-lvm:base-9000-disk-0,iothread=1,size=8G"),
            ("ide2", "local-lvm:vm-9000-cloudinit,media=cdrom"),
            ("net0", "virtio=BC:24:11:90:00:00,bridge=vmbr0,firewall=1"),
            ("ciuser", "debian"),
            ("ipconfig0", "ip=dhcp,ip6=auto"),
            ("serial0", "socket"),
            ("vga", "serial0"),
            ("tags", "ci;template"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let plugin_acl = |path: &str, roles: &[&str]| AclSpec {
            path: path.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            users: vec![USER.into(), TFA_USER.into()],
            tokens: vec![TOKEN_ID.into()],
            ..AclSpec::default()
        };
        Self {
            pve_version: "9.1.3".into(),
            cluster_name: "sim".into(),
            seed: None,
            time_scale: 1.0,
            start_epoch: None,
            next_id: NextIdRange::default(),
            timings: Timings::default(),
            nodes: vec![
                NodeSpec::default(),
                NodeSpec {
                    name: "pve2".into(),
                    subnet: "10.10.20.0/24".into(),
                    subnet6: "fd00:10:10:20::/64".into(),
                    ..NodeSpec::default()
                },
            ],
            storages: vec![
                StorageSpec::default(),
                StorageSpec {
                    id: "local".into(),
                    kind: "dir".into(),
                    content: "iso,vztmpl,backup,images,snippets".into(),
                    total_gib: 256,
                    ..StorageSpec::default()
                },
            ],
            pools: vec![PoolSpec { id: POOL.into(), comment: Some("CI runners".into()), storages: Vec::new() }],
            vms: vec![VmSpec {
                vmid: TEMPLATE_VMID,
                node: "pve1".into(),
                template: true,
                pool: Some(POOL.into()),
                config: template_config,
                ..VmSpec::default()
            }],
            roles: BTreeMap::new(),
            users: vec![
                UserSpec { userid: "root@pam".into(), password: Some(ROOT_PASSWORD.into()), ..UserSpec::default() },
                UserSpec {
                    userid: USER.into(),
                    password: Some(USER_PASSWORD.into()),
                    tokens: vec![TokenSpec { id: "ci".into(), secret: TOKEN_SECRET.into(), ..TokenSpec::default() }],
                    ..UserSpec::default()
                },
                UserSpec {
                    userid: TFA_USER.into(),
                    password: Some(TFA_PASSWORD.into()),
                    totp_secret: Some(TFA_TOTP_SECRET.into()),
                    ..UserSpec::default()
                },
            ],
            acl: vec![
                plugin_acl("/pool/ci", &["PVEVMAdmin", "PVEPoolUser"]),
                plugin_acl("/storage/local-lvm", &["PVEDatastoreUser"]),
                plugin_acl("/sdn/zones/localnetwork/vmbr0", &["PVESDNUser"]),
                plugin_acl("/nodes", &["PVEAuditor"]),
            ],
            faults: Vec::new(),
        }
    }
}

/// A scenario as written in a file: the inventory lists may be missing.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ScenarioFile {
    pve_version: String,
    cluster_name: String,
    seed: Option<u64>,
    time_scale: f64,
    start_epoch: Option<u64>,
    next_id: NextIdRange,
    timings: Timings,
    nodes: Option<Vec<NodeSpec>>,
    storages: Option<Vec<StorageSpec>>,
    pools: Option<Vec<PoolSpec>>,
    vms: Option<Vec<VmSpec>>,
    roles: BTreeMap<String, Vec<String>>,
    users: Option<Vec<UserSpec>>,
    acl: Option<Vec<AclSpec>>,
    faults: Vec<FaultRule>,
}

impl Default for ScenarioFile {
    fn default() -> Self {
        let defaults = Scenario::default();
        Self {
            pve_version: defaults.pve_version,
            cluster_name: defaults.cluster_name,
            seed: defaults.seed,
            time_scale: defaults.time_scale,
            start_epoch: defaults.start_epoch,
            next_id: defaults.next_id,
            timings: defaults.timings,
            nodes: None,
            storages: None,
            pools: None,
            vms: None,
            roles: defaults.roles,
            users: None,
            acl: None,
            faults: defaults.faults,
        }
    }
}

impl From<ScenarioFile> for Scenario {
    fn from(file: ScenarioFile) -> Self {
        let defaults = Scenario::default();
        let own_inventory = file.nodes.is_some()
            || file.storages.is_some()
            || file.pools.is_some()
            || file.vms.is_some()
            || file.users.is_some()
            || file.acl.is_some();
        fn pick<T>(list: Option<Vec<T>>, default: Vec<T>, own_inventory: bool) -> Vec<T> {
            match list {
                Some(list) => list,
                None if own_inventory => Vec::new(),
                None => default,
            }
        }
        Self {
            pve_version: file.pve_version,
            cluster_name: file.cluster_name,
            seed: file.seed,
            time_scale: file.time_scale,
            start_epoch: file.start_epoch,
            next_id: file.next_id,
            timings: file.timings,
            nodes: file.nodes.unwrap_or_else(|| if own_inventory { vec![NodeSpec::default()] } else { defaults.nodes }),
            storages: pick(file.storages, defaults.storages, own_inventory),
            pools: pick(file.pools, defaults.pools, own_inventory),
            vms: pick(file.vms, defaults.vms, own_inventory),
            roles: file.roles,
            users: pick(file.users, defaults.users, own_inventory),
            acl: pick(file.acl, defaults.acl, own_inventory),
            faults: file.faults,
        }
    }
}

/// Config values as PVE stores them: text, with booleans as `1`/`0`.
fn config_values<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value {
        Text(String),
        Integer(i64),
        Float(f64),
        Flag(bool),
    }
    let raw = BTreeMap::<String, Value>::deserialize(deserializer)?;
    Ok(raw
        .into_iter()
        .map(|(key, value)| {
            let text = match value {
                Value::Text(text) => text,
                Value::Integer(number) => number.to_string(),
                Value::Float(number) => number.to_string(),
                Value::Flag(flag) => if flag { "1" } else { "0" }.to_string(),
            };
            (key, text)
        })
        .collect())
}

impl Scenario {
    /// Reads a scenario from a `.toml` or `.json` file (by extension; TOML
    /// otherwise).
    pub fn load(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| SimError::Scenario(format!("could not read the scenario {}: {err}", path.display())))?;
        let is_json = path.extension().is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
        if is_json { Self::from_json(&text) } else { Self::from_toml(&text) }
            .map_err(|err| SimError::Scenario(format!("{} ({})", err, path.display())))
    }

    pub fn from_toml(text: &str) -> Result<Self, SimError> {
        toml::from_str(text).map_err(|err| SimError::Scenario(format!("could not parse the scenario: {err}")))
    }

    pub fn from_json(text: &str) -> Result<Self, SimError> {
        serde_json::from_str(text).map_err(|err| SimError::Scenario(format!("could not parse the scenario: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenario_round_trips_through_toml_and_json() {
        let scenario = Scenario::default();
        let toml_text = toml::to_string(&scenario).unwrap();
        assert_eq!(Scenario::from_toml(&toml_text).unwrap(), scenario);
        let json_text = serde_json::to_string(&scenario).unwrap();
        assert_eq!(Scenario::from_json(&json_text).unwrap(), scenario);
    }

    #[test]
    fn debug_output_hides_secrets() {
        let text = format!("{:?}", Scenario::default());
        assert!(text.contains("fleeting@pve"));
        for secret in
            [defaults::ROOT_PASSWORD, defaults::USER_PASSWORD, defaults::TOKEN_SECRET, defaults::TFA_TOTP_SECRET]
        {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn partial_files_keep_defaults_and_unknown_keys_are_named() {
        let scenario = Scenario::from_toml("pve_version = \"8.0.4\"\n[timings]\nboot = 1.5\n").unwrap();
        assert_eq!(scenario.pve_version, "8.0.4");
        assert_eq!(scenario.timings.boot, 1.5);
        assert_eq!(scenario.timings.agent_delay, Timings::default().agent_delay);
        assert_eq!(scenario.vms, Scenario::default().vms, "no inventory named: the built-in cluster");
        let own = Scenario::from_toml("[[users]]\nuserid = \"a@pve\"\n").unwrap();
        assert!(own.vms.is_empty() && own.acl.is_empty(), "an inventory of its own: the rest is empty");
        assert_eq!(own.nodes, vec![NodeSpec::default()]);
        let err = Scenario::from_toml("[timings]\nbooot = 1\n").unwrap_err();
        assert!(err.to_string().contains("booot"), "{err}");
        let scenario = Scenario::from_toml(
            "[[vms]]\nvmid = 100\nnode = \"pve1\"\n[vms.config]\ncores = 2\nonboot = true\ncpulimit = 1.5\n",
        )
        .unwrap();
        let config = &scenario.vms[0].config;
        assert_eq!(
            (config["cores"].as_str(), config["onboot"].as_str(), config["cpulimit"].as_str()),
            ("2", "1", "1.5")
        );
    }
}
