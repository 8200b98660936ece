//! The Proxmox VE simulator: a faithful, fault-injectable stand-in for a PVE
//! cluster, for tests, CI and `simulate` demos.
//!
//! It answers every operation of `openapi/pve.json` (the document the client
//! is generated from) under `/api2/json` (and `/api2/extjs`) the way PVE
//! does where a client can tell: the `{"data": …}` envelope, error text in
//! the HTTP reason phrase, 0/1 booleans, numbers as Perl prints them, the
//! string from `/cluster/nextid`, parameter verification with PVE's
//! per-parameter messages, permission checks per path, tickets with CSRF
//! and TFA, API tokens with privilege separation, worker tasks with real
//! UPIDs, clone locks, stale `/cluster/resources`, a guest agent that comes
//! up after boot, orphaned disks. PVE facts it follows are in
//! `../shared/docs/pve-api-notes.md`.
//!
//! # Rooms
//!
//! - `simulator.rs`: [`Simulator`], [`SimHandle`], [`run`]: the shared
//!   state and its lifecycle; `server.rs`: connections, TLS, dropped
//!   connections; `certificate.rs`: the self-signed cluster CA.
//! - `api/`: one request like pveproxy + pvedaemon: route, faults,
//!   authenticate, verify parameters (`schema.rs`), check permissions, run
//!   the handler; `wire.rs` writes PVE's envelopes and errors.
//! - `cluster.rs` (nodes, storages, volumes, pools, locks, leases), `vm.rs`
//!   (a guest's config and power state), `guest_ports.rs` (a booted
//!   guest's SSH/WinRM port on its static loopback address), `tasks.rs` (task state, logs) and
//!   `upid.rs` (UPIDs written and read as PVE does), `agent.rs` (the guest
//!   agent), `access.rs` + `privileges.rs` + `ticket.rs` + `totp.rs` (users,
//!   tokens, ACLs, roles, tickets, TOTP codes); `release.rs` the simulated
//!   PVE release.
//! - `faults.rs`, `counters.rs`, `admin.rs`: fault injection, request
//!   counters (with the answers per operation and the reasons of refusals,
//!   injected faults apart), and the control room ([`Admin`], HTTP under
//!   `/_sim/`). `RUST_LOG=pve_sim::requests=info` logs one line per
//!   answered request: method, operationId, path, status and reason.
//! - `clock.rs`: the one clock; every duration is simulated seconds scaled
//!   by `time_scale`. `config.rs`: the scenario.
//!
//! # Invariants
//!
//! - It depends on nothing of the plugin but the generated API types
//!   (`crate::pve::api::types`) and the lenient scalars they embed
//!   (`crate::pve::lenient`): UPIDs, TOTP, certificate fingerprints and
//!   releases are its own, written from PVE's rules, so it never judges the
//!   client by the client's own code (`tests/sim_independence.rs`).
//! - The surface is the OpenAPI document's: a request it does not route is
//!   501 `Method '…' not implemented`; a handler exists for each operation
//!   (a unit test checks).
//! - Requests never panic the server: every problem is an [`ApiError`]
//!   answered the PVE way; shared state survives a panicking handler.
//! - Nothing secret is logged or echoed: passwords, token secrets, tickets
//!   and TOTP secrets appear in no error message.
//! - `/cluster/resources` shows `status`, `name`, `template` as they were
//!   `resources_staleness` ago; `lock`, `tags` and membership are current.
//!
//! # Starting it
//!
//! In process, on an ephemeral port:
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleeting_plugin_proxmox::sim::SimError> {
//! use fleeting_plugin_proxmox::sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default()).await?;
//! println!("{} pinned by {:?}", sim.base_url(), sim.fingerprint());
//! let counters = sim.admin().counters();
//! # let _ = counters;
//! sim.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! Or [`run`]`(listener, config, shutdown)` on a listener of your own, or the
//! `pve-sim` binary: `pve-sim --listen 127.0.0.1:8006 [--scenario FILE]
//! [--seed N] [--plain-http] [--cert-dir DIR]` (HTTPS with a generated
//! certificate by default; it prints the URL, the CA file and the SHA-256
//! fingerprint).
//!
//! # Scenario format (TOML or JSON; every key optional)
//!
//! ```toml
//! pve_version = "9.1.3"       # agent privilege, pools API, TFA flow, JSON booleans
//! seed = 7                    # reproducible MACs, leases, UPIDs, faults
//! time_scale = 20.0           # simulated seconds per real second
//!
//! [next_id]
//! lower = 100
//! upper = 1000000
//!
//! [timings]                   # simulated seconds
//! clone_linked = 2.0
//! clone_full = 20.0
//! migrate = 5.0               # offline migration (copy of local disks)
//! template = 1.0              # conversion to a template
//! start = 1.0
//! boot = 15.0
//! agent_delay = 5.0
//! resources_staleness = 10.0
//! lock_timeout = 1.0
//! unauthorized_delay = 3.0    # PVE's 401 delay; tests set it small
//!
//! [[nodes]]
//! name = "pve1"
//! subnet = "10.10.10.0/24"    # guests' DHCP leases
//! subnet6 = "fd00:10:10:10::/64"
//!
//! [[storages]]
//! id = "local-lvm"
//! type = "lvmthin"            # lvm and iscsi cannot do linked clones
//!
//! [[pools]]
//! id = "ci"
//!
//! [[vms]]
//! vmid = 9000
//! node = "pve1"
//! template = true
//! pool = "ci"
//! agent = { extra_interfaces = [{ name = "docker0", ipv4 = "172.17.0.1/16" }] }
//! [vms.config]
//! name = "debian-12"
//! agent = "enabled=1"
//! net0 = "virtio,bridge=vmbr0"          # a MAC is generated
//! scsi0 = "local-lvm:base-9000-disk-0,size=8G"
//! ide2 = "local-lvm:vm-9000-cloudinit,media=cdrom"
//! ipconfig0 = "ip=dhcp"
//!
//! [roles]
//! Autoscaler = ["VM.Allocate", "VM.Clone", "VM.Audit", "VM.PowerMgmt", "VM.Config.Cloudinit", "VM.GuestAgent.Audit"]
//!
//! [[users]]
//! userid = "fleeting@pve"
//! password = "secret"
//! totp_secret = "JBSWY3DPEHPK3PXP"      # optional: TFA challenge on login
//! tokens = [{ id = "ci", secret = "…", privsep = true }]
//!
//! [[acl]]
//! path = "/pool/ci"
//! roles = ["PVEVMAdmin"]
//! tokens = ["fleeting@pve!ci"]
//!
//! [[faults]]
//! operation = "post_nodes_node_qemu_vmid_clone"
//! task_failure_rate = 0.1
//! ```
//!
//! Without a file (or with a file that names none of the inventory lists
//! `nodes`, `storages`, `pools`, `vms`, `users`, `acl`), the built-in
//! cluster of [`Scenario::default`] applies: nodes `pve1`/`pve2`,
//! `local-lvm` (LVM-thin) and `local` (dir), pool `ci`, template 9000,
//! `root@pam` (password `simulator`), `fleeting@pve` with token `ci` holding
//! what the plugin needs (see [`config::defaults`]) and `tfa@pve` with TOTP.
//! A file that names any inventory list describes the whole inventory.
//! Config values may be written bare (`cores = 2`); a `netN` without MAC
//! gets one; disks name the volumes the simulator then holds.
//!
//! # Simplifications (where the simulator is not PVE)
//!
//! Changes to a running VM apply at once (PVE keeps some pending); snapshots
//! exist only as a scenario declares them (`[[vms.snapshots]]`, never on a
//! template; listed, read with `config?snapshot=` and cloned from with
//! `snapname`, not created or rolled back); there are no LXC guests, HA
//! state machine or replication; a failed
//! destroy lifts its `destroyed` lock so a retry can work; TOTP codes are
//! checked against real time (the client computes them from its clock).

mod access;
mod admin;
mod agent;
mod api;
mod certificate;
mod clock;
mod cluster;
pub mod config;
mod counters;
mod faults;
mod guest_ports;
mod privileges;
mod release;
mod schema;
mod server;
mod simulator;
mod tasks;
mod ticket;
mod totp;
mod upid;
mod vm;
mod wire;

pub use admin::{Admin, AgentState, FaultEntry, Inventory, NodeView, TaskView, VmView, VolumeView};
pub use config::{Scenario, SimConfig, TlsMode};
pub use counters::Counters;
pub use faults::FaultRule;
pub use simulator::{SimHandle, Simulator, run};
pub use wire::ApiError;

/// Why the simulator could not start or do what the admin asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("{0}")]
    Scenario(String),
    #[error("{0}")]
    Tls(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Admin(String),
}
