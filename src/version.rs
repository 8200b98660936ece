//! Build metadata, laid out like Go fleeting plugins' `VersionInfo`.

pub const NAME: &str = env!("CARGO_PKG_NAME");
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("FPP_GIT_REVISION");
pub const REFERENCE: &str = env!("FPP_GIT_REF");
pub const BUILT_AT: &str = env!("FPP_BUILT_AT");

fn os_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// `sha=…; ref=…; rust=…; built_at=…; os_arch=…`, the `build_info` Runner
/// logs when the plugin initialises (Go plugins write `go=` for the toolchain).
pub fn build_info() -> String {
    format!(
        "sha={REVISION}; ref={REFERENCE}; rust={}; built_at={BUILT_AT}; os_arch={}",
        rustc_version(),
        os_arch()
    )
}

fn rustc_version() -> &'static str {
    option_env!("FPP_RUSTC_VERSION").unwrap_or("rustc")
}

/// The multi-line `version` output.
pub fn full() -> String {
    format!(
        "Name:         {NAME}\nVersion:      {VERSION}\nGit revision: {REVISION}\nGit ref:      {REFERENCE}\nRust version: {}\nBuilt:        {BUILT_AT}\nOS/Arch:      {}\n",
        rustc_version(),
        os_arch()
    )
}
