//! Reachability and the server certificate's fingerprint, read with a bare
//! TLS handshake (no HTTP request): `check` shows the fingerprint so a
//! mismatch or an untrusted certificate comes with the value to pin.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
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
    let host = parsed.host_str().ok_or("`url` names no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = parsed.scheme() == "https";
    let port = parsed.port_or_known_default().unwrap_or(if https { 443 } else { 80 });
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| format!("no connection to {host}:{port} within {} s", timeout.as_secs()))?
        .map_err(|err| format!("could not connect to {host}:{port}: {err}"))?;
    if !https {
        return Ok(Probe::PlainHttp);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let server_name = ServerName::try_from(host.clone()).map_err(|err| format!("`url` host {host}: {err}"))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tls = tokio::time::timeout(timeout, connector.connect(server_name, stream))
        .await
        .map_err(|_| format!("no TLS handshake with {host}:{port} within {} s", timeout.as_secs()))?
        .map_err(|err| format!("TLS handshake with {host}:{port} failed: {err} (is it really PVE's port 8006 over https?)"))?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| format!("{host}:{port} presented no certificate"))?;
    Ok(Probe::Tls { fingerprint: Fingerprint::of_certificate(certificate) })
}

/// Accepts any certificate but still checks the handshake signature.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl AnyCertificate {
    fn algorithms(&self) -> &WebPkiSupportedAlgorithms {
        &self.0.signature_verification_algorithms
    }
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, self.algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, self.algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms().supported_schemes()
    }
}
