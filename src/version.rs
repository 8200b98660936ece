//! Build metadata, laid out like Go fleeting plugins' `VersionInfo`
//! (`gitlab.com/gitlab-org/fleeting/fleeting/plugin`, `version.go`).
//!
//! Go plugins print `VersionInfo.Full()` with `fmt.Println` for
//! `-version`, `--version` and `version`: seven `Label:` lines padded to
//! a 14-column label, then an empty line (Full's own newline plus
//! Println's). The one deliberate difference is the toolchain line:
//! `Rust version: rustc 1.95.0` where Go writes `GO version:   go1.26.0`,
//! in the same column. Revision (8 characters) and build date
//! (`YYYY-MM-DDTHH:MM:SS+0000`) follow GitLab's plugin Makefiles, which set
//! them at link time; `build.rs` provides them here.

/// The package name, `fleeting-plugin-proxmox`.
pub const NAME: &str = env!("CARGO_PKG_NAME");
/// The package version from `Cargo.toml` (semantic, without a `v`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git revision the binary was built from (8 hex digits), or `unknown`.
pub const REVISION: &str = env!("FPP_GIT_REVISION");
/// The git branch or tag it was built from, or `unknown`.
pub const REFERENCE: &str = env!("FPP_GIT_REF");
/// When it was built, UTC (`SOURCE_DATE_EPOCH` makes it reproducible).
pub const BUILT_AT: &str = env!("FPP_BUILT_AT");

/// `linux/amd64`: Go's `GOOS/GOARCH` names, which Runner and the OCI
/// layout (`dist/<os>/<arch>/plugin`) use.
pub fn os_arch() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    format!("{}/{arch}", std::env::consts::OS)
}

/// `sha=…; ref=…; rust=…; built_at=…; os_arch=…`, the `build_info` Runner
/// logs when the plugin initialises (Go plugins write `go=` for the toolchain).
pub fn build_info() -> String {
    format!("sha={REVISION}; ref={REFERENCE}; rust={}; built_at={BUILT_AT}; os_arch={}", rustc_version(), os_arch())
}

fn rustc_version() -> &'static str {
    option_env!("FPP_RUSTC_VERSION").unwrap_or("rustc")
}

/// The multi-line version text, as Go's `VersionInfo.Full()` builds it
/// (ending in one newline; print it with `println!` to get Go's output).
pub fn full() -> String {
    let lines = [
        ("Name", NAME.to_string()),
        ("Version", VERSION.to_string()),
        ("Git revision", REVISION.to_string()),
        ("Git ref", REFERENCE.to_string()),
        ("Rust version", rustc_version().to_string()),
        ("Built", BUILT_AT.to_string()),
        ("OS/Arch", os_arch()),
    ];
    lines.iter().map(|(label, value)| format!("{:<14}{value}\n", format!("{label}:"))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_matches_go_version_info_layout() {
        let text = full();
        // Go: fmt.Sprintf("Name:         %s\n", …) and so on: values start in column 15.
        let expected_prefixes = [
            "Name:         ",
            "Version:      ",
            "Git revision: ",
            "Git ref:      ",
            "Rust version: ",
            "Built:        ",
            "OS/Arch:      ",
        ];
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), expected_prefixes.len(), "{text}");
        for (line, prefix) in lines.iter().zip(expected_prefixes) {
            assert!(line.starts_with(prefix), "{line:?} should start with {prefix:?}");
            assert!(!line[prefix.len()..].starts_with(' '), "{line:?}");
        }
        assert!(text.ends_with('\n') && !text.ends_with("\n\n"));
        assert_eq!(lines[0], format!("Name:         {NAME}"));
        assert_eq!(lines[6], format!("OS/Arch:      {}", os_arch()));
    }

    #[test]
    fn build_info_matches_go_fields() {
        let info = build_info();
        let keys: Vec<&str> = info.split("; ").map(|field| field.split('=').next().unwrap_or_default()).collect();
        assert_eq!(keys, ["sha", "ref", "rust", "built_at", "os_arch"], "{info}");
    }
}
