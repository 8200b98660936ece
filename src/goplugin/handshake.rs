//! What the go-plugin host tells the plugin through the environment, and the
//! one line the plugin answers with on stdout.
//!
//! Facts from hashicorp/go-plugin (v1.4.8 – v1.8.0) and the fleeting module:
//! the host sets the magic cookie, `PLUGIN_PROTOCOL_VERSIONS` (fleeting: `0`),
//! optionally `PLUGIN_UNIX_SOCKET_DIR`/`_GROUP` and, with AutoMTLS,
//! `PLUGIN_CLIENT_CERT`; it reads only the first stdout line:
//! `CORE|APP|NETWORK|ADDRESS|PROTOCOL|SERVER-CERT`.

use std::path::PathBuf;

use base64::Engine;

/// fleeting's go-plugin handshake key and value (`internal/plugin/plugin.go`).
pub const MAGIC_COOKIE_KEY: &str = "FLEETING_INSTANCE_GROUP_PLUGIN";
pub const MAGIC_COOKIE_VALUE: &str = "4c6410b1-cb78-4962-8c76-ab936d0ea908";

/// go-plugin's core protocol version.
const CORE_PROTOCOL_VERSION: u32 = 1;

/// The fleeting app protocol versions this plugin speaks.
const APP_PROTOCOL_VERSIONS: &[u32] = &[0];

/// go-plugin's text for a binary started by hand (`server.go`).
pub const NOT_A_HOST_MESSAGE: &str = "This binary is a plugin. These are not meant to be executed directly.\n\
Please execute the program that consumes these plugins, which will\n\
load any plugins automatically\n";

/// The host's wishes, read once at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeEnv {
    pub app_protocol_version: u32,
    pub socket_dir: Option<PathBuf>,
    pub socket_group: Option<String>,
    /// PEM of the host's client certificate (AutoMTLS).
    pub client_cert_pem: Option<String>,
    /// The host asked for broker multiplexing (not offered by this plugin).
    pub multiplex_requested: bool,
}

/// Why the process cannot act as a plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Started without the cookie: by hand, not by Runner.
    #[error("not started by a go-plugin host (the {MAGIC_COOKIE_KEY} variable is missing or wrong)")]
    NotStartedByHost,
}

impl HandshakeEnv {
    /// Reads the handshake variables through `lookup` (the process
    /// environment in production).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, HandshakeError> {
        if lookup(MAGIC_COOKIE_KEY).as_deref() != Some(MAGIC_COOKIE_VALUE) {
            return Err(HandshakeError::NotStartedByHost);
        }
        let offered: Vec<u32> = lookup("PLUGIN_PROTOCOL_VERSIONS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        // Like go-plugin's server: the newest version both sides know, else
        // our lowest (the host then reports the mismatch itself).
        let app_protocol_version = APP_PROTOCOL_VERSIONS
            .iter()
            .rev()
            .copied()
            .find(|v| offered.contains(v))
            .unwrap_or(APP_PROTOCOL_VERSIONS[0]);
        let non_empty = |key: &str| lookup(key).filter(|v| !v.is_empty());
        Ok(Self {
            app_protocol_version,
            socket_dir: non_empty("PLUGIN_UNIX_SOCKET_DIR").map(PathBuf::from),
            socket_group: non_empty("PLUGIN_UNIX_SOCKET_GROUP"),
            client_cert_pem: non_empty("PLUGIN_CLIENT_CERT"),
            multiplex_requested: non_empty("PLUGIN_MULTIPLEX_GRPC").is_some(),
        })
    }

    pub fn from_process() -> Result<Self, HandshakeError> {
        Self::from_lookup(|key| std::env::var(key).ok())
    }
}

/// The handshake line for a Unix socket, with the server certificate (DER)
/// when AutoMTLS is on. go-plugin reads the certificate as unpadded standard
/// base64 and ignores the field when it is short, so it stays empty without TLS.
pub fn handshake_line(
    app_protocol_version: u32,
    socket_path: &std::path::Path,
    server_cert_der: Option<&[u8]>,
) -> String {
    let cert =
        server_cert_der.map(|der| base64::engine::general_purpose::STANDARD_NO_PAD.encode(der)).unwrap_or_default();
    format!("{CORE_PROTOCOL_VERSION}|{app_protocol_version}|unix|{}|grpc|{cert}\n", socket_path.display())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn requires_the_cookie() {
        assert_eq!(HandshakeEnv::from_lookup(env(&[])), Err(HandshakeError::NotStartedByHost));
        assert_eq!(
            HandshakeEnv::from_lookup(env(&[(MAGIC_COOKIE_KEY, "wrong")])),
            Err(HandshakeError::NotStartedByHost)
        );
    }

    #[test]
    fn picks_the_app_version_and_reads_options() {
        let handshake = HandshakeEnv::from_lookup(env(&[
            (MAGIC_COOKIE_KEY, MAGIC_COOKIE_VALUE),
            ("PLUGIN_PROTOCOL_VERSIONS", "0,1"),
            ("PLUGIN_UNIX_SOCKET_DIR", "/run/plugins"),
            ("PLUGIN_UNIX_SOCKET_GROUP", "gitlab-runner"),
        ]))
        .unwrap();
        assert_eq!(handshake.app_protocol_version, 0);
        assert_eq!(handshake.socket_dir, Some(PathBuf::from("/run/plugins")));
        assert_eq!(handshake.socket_group.as_deref(), Some("gitlab-runner"));
        assert!(handshake.client_cert_pem.is_none());
    }

    #[test]
    fn line_matches_go_plugin_layout() {
        let path = std::path::Path::new("/tmp/plugin123");
        assert_eq!(handshake_line(0, path, None), "1|0|unix|/tmp/plugin123|grpc|\n");
        let line = handshake_line(0, path, Some(&[0xff, 0x00, 0x10]));
        assert_eq!(line, "1|0|unix|/tmp/plugin123|grpc|/wAQ\n", "standard alphabet, no padding");
    }
}
