//! Generates a client for the whole PVE API with the same settings as the
//! main crate (`../../build.rs`), from the document named by PVE_FULL_SPEC.

// Its `#[cfg(feature = …)]` name the main crate's features, not ours.
#[path = "../../build.rs"]
#[allow(dead_code, unexpected_cfgs)]
mod main_build;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::var("PVE_FULL_SPEC")
        .map_err(|_| "set PVE_FULL_SPEC to a document made by `fleeting-plugin-proxmox openapi --all`")?;
    println!("cargo:rerun-if-env-changed=PVE_FULL_SPEC");
    println!("cargo:rerun-if-changed={spec}");
    let code = main_build::generate_pve_client(std::path::Path::new(&spec), "crate::lenient", None)?;
    let lines = code.lines().count();
    println!("cargo:warning=generated the whole-API client: {lines} lines");
    std::fs::write(std::path::Path::new(&std::env::var("OUT_DIR")?).join("pve_full.rs"), code)?;
    Ok(())
}
