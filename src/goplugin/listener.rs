//! The Unix socket the host dials, created the way go-plugin's Go servers do
//! (a fresh `plugin<random>` name in `PLUGIN_UNIX_SOCKET_DIR` or the temp
//! dir), with group ownership and mode 0660 when the host names a group.

use std::path::{Path, PathBuf};

use rand::Rng;
use tokio::net::UnixListener;

use super::Error;

/// A bound socket that removes its file when dropped.
pub struct PluginSocket {
    listener: Option<UnixListener>,
    pub path: PathBuf,
}

impl PluginSocket {
    /// Hands the listener to the server; the file stays until `self` drops.
    pub fn take_listener(&mut self) -> UnixListener {
        match self.listener.take() {
            Some(listener) => listener,
            None => unreachable!("the plugin socket's listener is taken once"),
        }
    }
}

impl Drop for PluginSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub fn bind(dir: Option<&Path>, group: Option<&str>) -> Result<PluginSocket, Error> {
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    let mut last_error = None;
    for _ in 0..8 {
        let path = dir.join(format!("plugin{}", rand::rng().random_range(100_000_000u32..1_000_000_000)));
        match UnixListener::bind(&path) {
            Ok(listener) => {
                let socket = PluginSocket { listener: Some(listener), path };
                if let Some(group) = group {
                    apply_group(&socket.path, group)?;
                }
                return Ok(socket);
            }
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => last_error = Some(err),
            Err(err) => {
                return Err(Error::Socket(format!(
                    "could not create the plugin socket in {}: {err} (check PLUGIN_UNIX_SOCKET_DIR)",
                    dir.display()
                )));
            }
        }
    }
    Err(Error::Socket(format!(
        "could not create the plugin socket in {}: {}",
        dir.display(),
        last_error.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// `PLUGIN_UNIX_SOCKET_GROUP` is a group name or a numeric GID.
fn apply_group(path: &Path, group: &str) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let gid = match group.parse::<u32>() {
        Ok(gid) => nix::unistd::Gid::from_raw(gid),
        Err(_) => {
            nix::unistd::Group::from_name(group)
                .map_err(|err| Error::Socket(format!("could not look up group {group}: {err}")))?
                .ok_or_else(|| Error::Socket(format!("could not find group {group} from PLUGIN_UNIX_SOCKET_GROUP")))?
                .gid
        }
    };
    nix::unistd::chown(path, None, Some(gid))
        .map_err(|err| Error::Socket(format!("could not give the plugin socket to group {group}: {err}")))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|err| Error::Socket(format!("could not set the plugin socket's mode: {err}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn binds_in_the_given_dir_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let socket = bind(Some(dir.path()), None).unwrap();
        let path = socket.path.clone();
        assert!(path.starts_with(dir.path()));
        assert!(path.file_name().unwrap().to_string_lossy().starts_with("plugin"));
        assert!(path.exists());
        drop(socket);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn applies_a_numeric_group_and_mode() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let own_gid = nix::unistd::getegid().as_raw();
        let socket = bind(Some(dir.path()), Some(&own_gid.to_string())).unwrap();
        let metadata = std::fs::metadata(&socket.path).unwrap();
        assert_eq!(metadata.gid(), own_gid);
        assert_eq!(metadata.permissions().mode() & 0o777, 0o660);
        let err = bind(Some(dir.path()), Some("no-such-group-xyz")).err().unwrap();
        assert!(err.to_string().contains("no-such-group-xyz"), "{err}");
    }
}
