//! The Proxmox VE client room: the only code that sees the generated API
//! types (`api`). Everything above it talks in `Vmid`, `Upid` and the plain
//! structs of [`client`].
//!
//! - [`api`]: the progenitor-generated client (from `openapi/pve.json`);
//! - [`session`]: authentication (token, ticket with TFA), retries, timeouts
//!   and request logging, applied to every generated call through hooks;
//! - [`client`]: [`PveClient`], domain-shaped calls;
//! - [`error`]: errors classified once into kinds a caller can act on.
//!
//! It uses nothing else of the crate, and is all that the `client` feature
//! builds (`default-features = false, features = ["client"]`).

pub mod api;
pub mod auth;
pub mod client;
pub mod credentials;
pub mod error;
pub mod lenient;
pub mod observer;
pub mod session;
pub mod task;
pub mod tls;
pub mod version;

pub use client::{
    ClientConfig, CloneRequest, ClusterListing, ConfigUpdate, EmptyVmRequest, GuestInterface, MigrateRequest, NodeInfo,
    NodeResource, PoolMember, PveClient, StorageInfo, StorageResource, StorageVolume, TaskStatus, VmResource, VmStatus,
    Vmid,
};
pub use credentials::{Credentials, CredentialsError, SecondFactor, Secret};
pub use error::{Error, ErrorKind};
pub use observer::{Observer, RequestObserver, TicketEvent};
pub use session::RetryPolicy;
pub use task::{TaskSuccess, Upid};
pub use tls::{Fingerprint, TlsOptions, any_certificate_config};
pub use version::PveVersion;
