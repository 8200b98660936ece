//! `fleeting-plugin-proxmox`: GitLab Runner fleeting plugin for Proxmox VE.
//!
//! Its stdout carries the go-plugin handshake line when Runner starts it, and
//! a command's result otherwise; both go through `fleeting_plugin_proxmox::stdout`.
#![forbid(unsafe_code)]
#![deny(clippy::print_stdout)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
