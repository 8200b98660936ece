//! Reachability and the server certificate's fingerprint, read with a bare
//! TLS handshake (no HTTP request): `check` shows the fingerprint so a
//! mismatch or an untrusted certificate comes with the value to pin.

use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

use crate::pve::Fingerprint;

/// What a connection attempt found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// `http://`: reachable, nothing to verify.
    PlainHttp,
    /// The certificate the server presents.
    Tls { fingerprint: Fingerprint },
}

/// Connects to the URL's host and port and, for https, completes a TLS
/// handshake that accepts any certificate (trust is judged afterwards by
/// the real client; this only reads what the server presents).
pub async fn probe(url: &str, timeout: Duration) -> Result<Probe, String> {
    let parsed = reqwest::Url::parse(url.trim()).map_err(|err| format!("`url` is not a URL ({err})"))?;
    let host =
        parsed.host_str().ok_or("`url` names no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = parsed.scheme() == "https";
    let port = parsed.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("no connection to {host}:{port} within {} s", timeout.as_secs()))?
        .map_err(|err| format!("could not connect to {host}:{port}: {err}"))?;
    if !https {
        return Ok(Probe::PlainHttp);
    }
    let config = crate::pve::any_certificate_config().map_err(|err| err.to_string())?;
    let server_name = ServerName::try_from(host.clone()).map_err(|err| format!("`url` host {host}: {err}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(timeout, connector.connect(server_name, stream))
        .await
        .map_err(|_| format!("no TLS handshake with {host}:{port} within {} s", timeout.as_secs()))?
        .map_err(|err| {
            format!("TLS handshake with {host}:{port} failed: {err} (is it really PVE's port 8006 over https?)")
        })?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("{host}:{port} presented no certificate"))?;
    Ok(Probe::Tls { fingerprint: Fingerprint::of_certificate(certificate) })
}
