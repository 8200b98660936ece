//! The `bootstrap` command: installs this binary into a fleeting plugin
//! directory, where `gitlab-runner` finds OCI-installed plugins.
//!
//! Go plugins get the same command from `plugin.Main` in the fleeting
//! module; it serves the container install flow, where an init container
//! runs `plugin bootstrap <repository>` to copy the plugin into a volume
//! that Runner's container mounts as its plugin directory. The layout is
//! `<plugin dir>/<registry>/<repository>/<version>/plugin`, with the
//! repository and version escaped as Go module paths (an upper-case letter
//! becomes `!` and the lower-case letter), the directory taken from
//! `FLEETING_PLUGIN_PATH` (default `/plugins`), and the version from the
//! binary. Unlike Go's, which copies every file beside the executable, this
//! copies the executable alone: it is the whole plugin.

use std::path::{Path, PathBuf};

/// Where the plugin directory is taken from, as in Runner and fleeting.
pub const PLUGIN_PATH_ENV: &str = "FLEETING_PLUGIN_PATH";
/// The package version an image was built for; a mismatch is warned about.
pub const PACKAGE_VERSION_ENV: &str = "FLEETING_PLUGIN_PKG_VERSION";
/// The plugin directory when `FLEETING_PLUGIN_PATH` is not set (the
/// container flow's volume).
pub const DEFAULT_PLUGIN_DIR: &str = "/plugins";
/// Registry and namespace that a bare plugin name resolves to, as Runner's
/// `plugin = "aws"` does.
const DEFAULT_REGISTRY: &str = "registry.gitlab.com";
const DEFAULT_NAMESPACE: &str = "gitlab-org/fleeting/plugins";

/// What `bootstrap` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// `<plugin dir>/<registry>/<repository>/<version>`; the binary is
    /// `plugin` inside it.
    pub dir: PathBuf,
    /// False when that version was already installed (left as it was).
    pub copied: bool,
    /// A note for stderr when the image's package version and the binary's
    /// version differ.
    pub warning: Option<String>,
}

/// Why `bootstrap` failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(
        "could not bootstrap: the plugin repository is missing; pass it as the argument, e.g. `bootstrap registry.example.com/runners/fleeting-plugin-proxmox`"
    )]
    MissingRepository,
    #[error(
        "could not bootstrap into {dir}: the plugin directory does not exist; create it or set {PLUGIN_PATH_ENV} to Runner's plugin directory"
    )]
    MissingPluginDir { dir: PathBuf },
    #[error(
        "could not bootstrap into {dir}: it exists but holds no `plugin` file (Runner could not start it); remove the directory and run bootstrap again"
    )]
    IncompleteInstall { dir: PathBuf },
    #[error("could not bootstrap {repository}: {reason}")]
    InvalidRepository { repository: String, reason: String },
    #[error("could not bootstrap version {version}: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("could not {action}: {source}")]
    Io {
        action: String,
        #[source]
        source: std::io::Error,
    },
}

/// Installs `executable` as `version` of `repository` under `plugin_dir`.
/// An existing install of that version is kept (Runner may be running it).
pub fn bootstrap(
    repository: &str,
    version: &str,
    package_version: Option<&str>,
    plugin_dir: &Path,
    executable: &Path,
) -> Result<Installed, BootstrapError> {
    let repository = repository.trim();
    if repository.is_empty() {
        return Err(BootstrapError::MissingRepository);
    }
    let version = version.strip_prefix('v').unwrap_or(version);
    // `1.2` matches binary `1.2.0`; a leading `v` on either side does not count.
    let warning = package_version
        .filter(|package| !package.is_empty() && !version.starts_with(package.strip_prefix('v').unwrap_or(package)))
        .map(|package| {
            format!("warn: fleeting plugin package version and binary version differ: \"{package}\" != \"{version}\"")
        });

    if !plugin_dir.is_dir() {
        return Err(BootstrapError::MissingPluginDir { dir: plugin_dir.to_path_buf() });
    }
    let normalized = normalize_repository(repository);
    let escaped_repository = escape_module_path(&normalized)
        .map_err(|reason| BootstrapError::InvalidRepository { repository: normalized.clone(), reason })?;
    let escaped_version = escape_version(version)
        .map_err(|reason| BootstrapError::InvalidVersion { version: version.to_string(), reason })?;
    let dir = plugin_dir.join(escaped_repository).join(escaped_version);
    if dir.join("plugin").is_file() {
        return Ok(Installed { dir, copied: false, warning });
    }
    if dir.exists() {
        return Err(BootstrapError::IncompleteInstall { dir });
    }
    copy_into(plugin_dir, &dir, executable)?;
    Ok(Installed { dir, copied: true, warning })
}

/// Copies into a temporary directory beside the target and renames it into
/// place, so Runner never sees a half-written plugin.
fn copy_into(plugin_dir: &Path, dir: &Path, executable: &Path) -> Result<(), BootstrapError> {
    let io = |action: String| move |source| BootstrapError::Io { action, source };
    let staging = tempfile::Builder::new()
        .prefix("plugin")
        .tempdir_in(plugin_dir)
        .map_err(io(format!("create a temporary directory in {}", plugin_dir.display())))?;
    let staged = staging.path().join("plugin");
    std::fs::copy(executable, &staged).map_err(io(format!("copy {} to {}", executable.display(), staged.display())))?;
    make_executable(&staged).map_err(io(format!("make {} executable", staged.display())))?;
    let parent = dir.parent().unwrap_or(plugin_dir);
    std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    let staging = staging.keep();
    std::fs::rename(&staging, dir).map_err(|source| {
        let _ = std::fs::remove_dir_all(&staging);
        BootstrapError::Io { action: format!("move {} to {}", staging.display(), dir.display()), source }
    })?;
    Ok(())
}

#[cfg(unix)]
fn make_executable(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn make_executable(_path: &Path) -> std::io::Result<()> {
    Ok(())
}

/// `aws` → `registry.gitlab.com/gitlab-org/fleeting/plugins/aws`,
/// `group/name` → `registry.gitlab.com/group/name`; a `:tag` is dropped
/// (the binary's own version names the directory).
pub fn normalize_repository(repository: &str) -> String {
    let parts: Vec<&str> = repository.split('/').collect();
    let mut full = if parts.len() == 1 {
        format!("{DEFAULT_REGISTRY}/{DEFAULT_NAMESPACE}/{repository}")
    } else if !parts[0].contains('.') {
        format!("{DEFAULT_REGISTRY}/{repository}")
    } else {
        repository.to_string()
    };
    let base_start = full.rfind('/').map_or(0, |slash| slash + 1);
    if let Some(colon) = full[base_start..].find(':') {
        full.truncate(base_start + colon);
    }
    full
}

/// Go's `module.EscapePath`: upper-case letters become `!` + lower case, so
/// paths stay distinct on case-insensitive file systems. Like Go, it refuses
/// what is not a module path (a registry port, spaces, `..`).
pub fn escape_module_path(path: &str) -> Result<String, String> {
    let elements: Vec<&str> = path.split('/').collect();
    for (index, element) in elements.iter().enumerate() {
        if element.is_empty() {
            return Err("empty path element (a leading, trailing or double `/`)".to_string());
        }
        if *element == "." || *element == ".." {
            return Err(format!("`{element}` is not allowed as a path element"));
        }
        if element.starts_with('.') || element.ends_with('.') {
            return Err(format!("path element `{element}` starts or ends with a dot"));
        }
        let first = index == 0;
        if let Some(bad) = element.chars().find(|&c| !allowed_in_path(c, first)) {
            let hint =
                if first && bad == ':' { " (a registry port cannot be part of a plugin directory path)" } else { "" };
            return Err(format!("`{bad}` is not allowed in `{element}`{hint}"));
        }
    }
    if !elements[0].contains('.') {
        return Err(format!("the registry `{}` has no dot in its name", elements[0]));
    }
    Ok(escape(path))
}

/// Go's `module.EscapeVersion`.
pub fn escape_version(version: &str) -> Result<String, String> {
    if version.is_empty() {
        return Err("the version is empty".to_string());
    }
    if let Some(bad) = version.chars().find(|&c| !(c.is_ascii_alphanumeric() || "-._+~".contains(c))) {
        return Err(format!("`{bad}` is not allowed in a version"));
    }
    Ok(escape(version))
}

fn allowed_in_path(c: char, first_element: bool) -> bool {
    if first_element {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.'
    } else {
        c.is_ascii_alphanumeric() || "-._~".contains(c)
    }
}

fn escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii_uppercase() {
            escaped.push('!');
            escaped.push(c.to_ascii_lowercase());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repositories_normalise_like_runner_references() {
        // The cases of fleeting's TestNormalizeRepo (facts about the layout).
        let cases = [
            ("index.docker.io/namespace/project", "index.docker.io/namespace/project"),
            ("registry.gitlab.com/namespace/project", "registry.gitlab.com/namespace/project"),
            ("namespace/no-registry", "registry.gitlab.com/namespace/no-registry"),
            ("long/namespace/no-registry", "registry.gitlab.com/long/namespace/no-registry"),
            ("no-registry-or-namespace", "registry.gitlab.com/gitlab-org/fleeting/plugins/no-registry-or-namespace"),
            ("drop-version:1.0.0", "registry.gitlab.com/gitlab-org/fleeting/plugins/drop-version"),
            ("registry.gitlab.com/drop-version/project:1.2.3", "registry.gitlab.com/drop-version/project"),
            ("registry.gitlab.com:8080/drop-version/project:1.2.3", "registry.gitlab.com:8080/drop-version/project"),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_repository(input), expected, "{input}");
        }
    }

    #[test]
    fn escaping_marks_upper_case_and_refuses_non_module_paths() {
        assert_eq!(
            escape_module_path("registry.example.com/Runners/Proxmox").unwrap(),
            "registry.example.com/!runners/!proxmox"
        );
        assert_eq!(escape_version("1.2.0-RC1").unwrap(), "1.2.0-!r!c1");
        let port = escape_module_path("registry.example.com:5000/runners/proxmox").unwrap_err();
        assert!(port.contains("registry port"), "{port}");
        assert!(escape_module_path("registry.example.com/../etc").is_err());
        assert!(escape_module_path("registry.example.com//x").is_err());
        assert!(escape_module_path("localhost/x").is_err());
        assert!(escape_module_path("Registry.example.com/x").is_err());
        assert!(escape_version("1.0/../..").is_err());
    }

    #[test]
    fn package_version_mismatch_warns_and_a_match_does_not() {
        let plugins = tempfile::tempdir().unwrap();
        let executable = plugins.path().join("source");
        std::fs::write(&executable, b"binary").unwrap();
        let matching = bootstrap("group/name", "1.2.0", Some("1.2"), plugins.path(), &executable).unwrap();
        assert_eq!(matching.warning, None);
        let with_v = bootstrap("group/name", "1.2.0", Some("v1.2.0"), plugins.path(), &executable).unwrap();
        assert_eq!(with_v.warning, None);
        let differing = bootstrap("group/name", "1.2.0", Some("1.3.0"), plugins.path(), &executable).unwrap();
        assert_eq!(
            differing.warning.as_deref(),
            Some("warn: fleeting plugin package version and binary version differ: \"1.3.0\" != \"1.2.0\"")
        );
        assert!(!differing.copied, "the second call must keep the first install");
    }
}
