//! `pve-sim`: runs the Proxmox VE simulator as a server (being built).

fn main() -> std::process::ExitCode {
    eprintln!("pve-sim: the simulator is not built yet");
    std::process::ExitCode::FAILURE
}
