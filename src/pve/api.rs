//! The progenitor-generated Proxmox VE client (`OUT_DIR/pve_api.rs`, reviewed
//! copy in `generated/pve_api.rs`). Method names are the synthesised
//! operationIds of `openapi/pve.json`, e.g. `post_nodes_node_qemu_vmid_clone`.
#![allow(clippy::all, clippy::pedantic, missing_docs, unused_imports, dead_code, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/pve_api.rs"));
