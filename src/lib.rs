//! fleeting-plugin-proxmox: a GitLab Runner fleeting plugin for Proxmox VE,
//! and a typed Proxmox VE client usable on its own.
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
//! - [`simulate`]: the `simulate` command: an autoscaling session of the
//!   real plugin against the simulator, with a summary an operator can read.
//! - [`plugin_dir`]: the `bootstrap` command, which installs the binary into
//!   Runner's plugin directory.
//! - [`openapi`]: the converter from Proxmox's API schema dump to the OpenAPI
//!   document the client is generated from.
#![forbid(unsafe_code)]
#![deny(clippy::print_stdout)]

pub mod check;
pub mod fleeting;
pub mod goplugin;
pub mod group;
pub mod openapi;
pub mod plugin;
pub mod plugin_dir;
pub mod pve;
pub mod sim;
pub mod simulate;
pub mod version;

/// Compiles the README's Rust examples as doctests, so they cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
