//! The fleeting instance-group service (`proto.InstanceGroup`), generated from
//! `proto/fleeting/proto/instance_group.proto`. Only the adapter sees it.
#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

include!(concat!(env!("OUT_DIR"), "/proto.rs"));
