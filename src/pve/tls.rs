//! How the client trusts the PVE server's certificate.
//!
//! PVE ships a self-signed certificate per node. Users either install a real
//! one (system roots work), hand us their cluster CA (`ca_file`, the
//! `/etc/pve/pve-root-ca.pem` of the cluster), pin the certificate's SHA-256
//! fingerprint as PVE's GUI shows it (`tls_fingerprint`), or, as a last
//! resort, switch verification off (`insecure_skip_tls_verify`).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use super::error::Error;

/// Certificate trust settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Pin the server certificate by its SHA-256 fingerprint
    /// (`"AB:CD:…".parse()` or [`Fingerprint::parse`]); decides over `ca_file`.
    pub fingerprint: Option<Fingerprint>,
    /// Accept any certificate. Logged loudly.
    pub insecure_skip_verify: bool,
}

/// A parsed SHA-256 certificate fingerprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// Parses hex with or without `:` separators, as PVE shows it; the error
    /// says what a fingerprint looks like.
    pub fn parse(text: &str) -> Result<Self, String> {
        let hex_text: String = text.chars().filter(|c| !matches!(c, ':' | ' ' | '-')).collect();
        let bytes = hex::decode(&hex_text).map_err(|_| {
            format!("`{text}` is not a hexadecimal SHA-256 fingerprint such as AB:CD:…:EF (PVE shows it under node → System → Certificates)")
        })?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("`{text}` has {} bytes; a SHA-256 fingerprint has 32", b.len()))?;
        Ok(Self(bytes))
    }

    /// The fingerprint of a DER-encoded certificate.
    pub fn of_certificate(der: &[u8]) -> Self {
        Self(Sha256::digest(der).into())
    }
}

impl std::str::FromStr for Fingerprint {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|b| format!("{b:02X}")).collect();
        f.write_str(&parts.join(":"))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// A rustls configuration that accepts any server certificate (still
/// checking the handshake signature): for reading what a server presents,
/// never for talking to the API.
pub fn any_certificate_config() -> Result<rustls::ClientConfig, Error> {
    let provider = provider();
    let verifier = ServerCertificate { pinned: None, algorithms: provider.signature_verification_algorithms };
    Ok(rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::setup("set up TLS to read a server certificate", err.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// The rustls configuration for these options, or `None` for reqwest's
/// default (system roots).
pub fn client_config(options: &TlsOptions) -> Result<Option<rustls::ClientConfig>, Error> {
    let action = "set up TLS for the PVE API";
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| Error::setup(action, err.to_string()))?;

    if options.insecure_skip_verify {
        tracing::warn!(
            "insecure_skip_tls_verify is on: the PVE server's certificate is NOT verified, so anyone on the network path \
             can read the API credentials; set `tls_fingerprint` or `ca_file` instead"
        );
        let verifier = ServerCertificate { pinned: None, algorithms: provider.signature_verification_algorithms };
        return Ok(Some(
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(),
        ));
    }
    if let Some(pinned) = options.fingerprint {
        if options.ca_file.is_some() {
            tracing::warn!("both tls_fingerprint and ca_file are set; the fingerprint pin decides, ca_file is ignored");
        }
        let verifier =
            ServerCertificate { pinned: Some(pinned), algorithms: provider.signature_verification_algorithms };
        return Ok(Some(
            builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth(),
        ));
    }
    if let Some(path) = &options.ca_file {
        let pem =
            std::fs::read(path).map_err(|err| Error::setup(action, format!("ca_file {}: {err}", path.display())))?;
        let mut roots = rustls::RootCertStore::empty();
        let mut count = 0;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert =
                cert.map_err(|err| Error::setup(action, format!("ca_file {}: not valid PEM: {err}", path.display())))?;
            roots.add(cert).map_err(|err| {
                Error::setup(action, format!("ca_file {}: unusable certificate: {err}", path.display()))
            })?;
            count += 1;
        }
        if count == 0 {
            return Err(Error::setup(
                action,
                format!("ca_file {} holds no PEM certificate (expected -----BEGIN CERTIFICATE-----)", path.display()),
            ));
        }
        return Ok(Some(builder.with_root_certificates(roots).with_no_client_auth()));
    }
    Ok(None)
}

/// A verifier for the two cases PVE's self-signed certificates call for:
/// `pinned` trusts exactly one end-entity certificate by its SHA-256
/// fingerprint (names and expiry are not checked: node certificates rarely
/// match the address users connect to, and the pin is the identity); `None`
/// is `insecure_skip_tls_verify` and accepts any certificate. Either way the
/// handshake signature is checked, so the peer holds the key it shows.
#[derive(Debug)]
struct ServerCertificate {
    pinned: Option<Fingerprint>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ServerCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(pinned) = self.pinned else { return Ok(ServerCertVerified::assertion()) };
        let actual = Fingerprint::of_certificate(end_entity);
        if actual == pinned {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::error!(
                expected = %pinned,
                actual = %actual,
                "the PVE server's certificate does not match tls_fingerprint; if the certificate was renewed, update tls_fingerprint"
            );
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {actual} does not match tls_fingerprint {pinned}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_pve_notation() {
        let text = "AB:".repeat(31) + "CD";
        let parsed = Fingerprint::parse(&text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(Fingerprint::parse(&text.replace(':', "").to_lowercase()).unwrap(), parsed);
        assert!(Fingerprint::parse("AB:CD").unwrap_err().contains("has 2 bytes"));
        assert!(Fingerprint::parse("zz").unwrap_err().contains("not a hexadecimal"));
    }
}
