//! The whole-API client, compiled against the main crate's lenient scalars.
#![allow(clippy::all, dead_code, unused_imports)]

pub mod lenient {
    pub use fleeting_plugin_proxmox::pve::lenient::{PveBool, PveInt, PveNumber, PveText};
}

include!(concat!(env!("OUT_DIR"), "/pve_full.rs"));
