//! `fleeting-plugin-proxmox`: GitLab Runner fleeting plugin for Proxmox VE.

mod cli;

fn main() -> std::process::ExitCode {
    cli::run()
}
