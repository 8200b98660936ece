//! fleeting-plugin-proxmox: a GitLab Runner fleeting plugin for Proxmox VE,
//! and a typed Proxmox VE client usable on its own.
//!
//! # Features
//! - `client`: only [`pve`], the typed client, and what it needs (reqwest,
//!   rustls, progenitor's runtime). A program that talks to PVE depends on
//!   the crate with `default-features = false, features = ["client"]`.
//! - `plugin` (default): `client` and everything else below, with the
//!   binaries (`fleeting-plugin-proxmox`, `pve-sim`) and the tests.
//!
//! # Layout
//! Rooms, each depending only on the ones after it:
//! - [`goplugin`]: the go-plugin transport (handshake, socket, AutoMTLS,
//!   health/controller/stdio, hclog logging). Knows nothing of fleeting.
//! - [`fleeting`]: the adapter from fleeting's gRPC service to [`group`].
//! - [`group`]: the instance-group domain contract.
//! - [`pve`]: the Proxmox VE client: the progenitor-generated API
//!   (`pve::api`) and the wrapper on top (`pve::PveClient`).
//! - [`sim`]: a Proxmox VE simulator for tests and demos.
//! - [`check`]: the `check` command, a preflight run of a `plugin_config`
//!   against its cluster (privileges, template, TLS, credentials).
//! - [`status`]: the `status` command, a read-only view of an instance
//!   group as Proxmox shows it (verdicts, leaks, `check`'s problems).
//! - [`simulate`]: the `simulate` command: an autoscaling session of the
//!   real plugin against the simulator, with a summary an operator can read.
//! - [`plugin_dir`]: the `bootstrap` command, which installs the binary into
//!   Runner's plugin directory.
//! - [`openapi`]: the converter from Proxmox's API schema dump to the OpenAPI
//!   document the client is generated from.
//! - [`telemetry`]: the group's Prometheus metrics and the `metrics_listen`
//!   endpoint (`/metrics`, `/status`); the engine records into it, and the
//!   PVE client reports its requests through an observer.
//! - [`runtime`]: the one async runtime of the plugin and the commands.
//! - [`stdout`]: the one writer of standard output (the plugin's handshake
//!   line, the commands' results); nothing else may print there.
#![forbid(unsafe_code)]
#![deny(clippy::print_stdout)]
// The layout above links rooms that only the `plugin` feature builds.
#![cfg_attr(not(feature = "plugin"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(feature = "plugin")]
pub mod check;
#[cfg(feature = "plugin")]
pub mod fleeting;
#[cfg(feature = "plugin")]
pub mod goplugin;
#[cfg(feature = "plugin")]
pub mod group;
#[cfg(feature = "plugin")]
pub mod openapi;
#[cfg(feature = "plugin")]
pub mod plugin;
#[cfg(feature = "plugin")]
pub mod plugin_dir;
#[cfg(feature = "client")]
pub mod pve;
#[cfg(feature = "plugin")]
pub mod runtime;
#[cfg(feature = "plugin")]
pub mod sim;
#[cfg(feature = "plugin")]
pub mod simulate;
#[cfg(feature = "plugin")]
pub mod status;
#[cfg(feature = "plugin")]
pub mod stdout;
#[cfg(feature = "plugin")]
pub mod telemetry;
#[cfg(feature = "plugin")]
pub mod version;

/// Compiles the README's Rust examples as doctests, so they cannot rot; its
/// one example uses the client alone, so it builds with `client` only.
#[cfg(all(doctest, feature = "client"))]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
