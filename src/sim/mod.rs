//! The Proxmox VE simulator: a stand-in for a PVE cluster for tests and demos
//! (being built; see issue 3).
