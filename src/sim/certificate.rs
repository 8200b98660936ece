//! The HTTPS certificate: like a fresh PVE cluster, a cluster CA
//! (`pve-root-ca.pem`) that signs the node certificate (`pve-ssl.pem`).
//! Clients trust it by the CA file or by pinning the node certificate's
//! SHA-256 fingerprint, which `GET /nodes` also reports as PVE does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use sha2::{Digest, Sha256};

use super::SimError;

pub struct ServerCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The CA's PEM (absent for certificates loaded from files).
    pub ca_pem: Option<String>,
    pub certificate_pem: String,
    key_pem: Option<String>,
    /// `AB:CD:…` of the node certificate.
    pub fingerprint: String,
}

impl ServerCertificate {
    /// A new CA and a node certificate for `localhost`, the loopback
    /// addresses and the node names.
    pub fn generate(cluster_name: &str, node_names: &[String]) -> Result<Self, SimError> {
        let problem = |err: rcgen::Error| SimError::Tls(format!("could not generate the certificate: {err}"));
        let ca_key = rcgen::KeyPair::generate().map_err(problem)?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(problem)?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Proxmox Virtual Environment");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::OrganizationalUnitName, format!("{cluster_name} simulated cluster CA"));
        ca_params.distinguished_name.push(rcgen::DnType::OrganizationName, "PVE Cluster Manager CA");
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let ca_certificate = ca_params.self_signed(&ca_key).map_err(problem)?;
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);

        let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
        names.extend(node_names.iter().cloned());
        let node_key = rcgen::KeyPair::generate().map_err(problem)?;
        let mut node_params = rcgen::CertificateParams::new(names).map_err(problem)?;
        node_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, node_names.first().map_or("pve", String::as_str));
        node_params.distinguished_name.push(rcgen::DnType::OrganizationName, "PVE Cluster Node");
        node_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let node_certificate = node_params.signed_by(&node_key, &issuer).map_err(problem)?;

        let der = node_certificate.der().clone();
        Ok(Self {
            fingerprint: fingerprint(&der),
            chain: vec![der, ca_certificate.der().clone()],
            key: PrivateKeyDer::Pkcs8(node_key.serialize_der().into()),
            ca_pem: Some(ca_certificate.pem()),
            certificate_pem: node_certificate.pem(),
            key_pem: Some(node_key.serialize_pem()),
        })
    }

    /// A certificate chain and key from PEM files.
    pub fn load(certificate: &Path, key: &Path) -> Result<Self, SimError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|err| SimError::Tls(format!("could not read {}: {err}", path.display())))
        };
        let certificate_pem = read(certificate)?;
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut certificate_pem.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|err| SimError::Tls(format!("could not parse {}: {err}", certificate.display())))?;
        let first = chain.first().ok_or_else(|| {
            SimError::Tls(format!("could not use {}: it holds no certificate", certificate.display()))
        })?;
        let key_pem = read(key)?;
        let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|err| SimError::Tls(format!("could not parse {}: {err}", key.display())))?
            .ok_or_else(|| SimError::Tls(format!("could not use {}: it holds no private key", key.display())))?;
        Ok(Self {
            fingerprint: fingerprint(first),
            chain,
            key,
            ca_pem: None,
            certificate_pem: String::from_utf8_lossy(&certificate_pem).into_owned(),
            key_pem: None,
        })
    }

    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, SimError> {
        let config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|err| SimError::Tls(format!("could not set up TLS: {err}")))?
                .with_no_client_auth()
                .with_single_cert(self.chain.clone(), self.key.clone_key())
                .map_err(|err| SimError::Tls(format!("could not use the certificate: {err}")))?;
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    /// Writes `pve-root-ca.pem`, `pve-ssl.pem` and `pve-ssl.key` (mode 600)
    /// into `dir`; returns the CA file (or the certificate when there is no CA).
    pub fn write_to(&self, dir: &Path) -> Result<PathBuf, SimError> {
        let problem =
            |path: &Path, err: std::io::Error| SimError::Tls(format!("could not write {}: {err}", path.display()));
        std::fs::create_dir_all(dir).map_err(|err| problem(dir, err))?;
        let certificate_path = dir.join("pve-ssl.pem");
        std::fs::write(&certificate_path, &self.certificate_pem).map_err(|err| problem(&certificate_path, err))?;
        if let Some(key_pem) = &self.key_pem {
            let key_path = dir.join("pve-ssl.key");
            write_private(&key_path, key_pem).map_err(|err| problem(&key_path, err))?;
        }
        match &self.ca_pem {
            Some(ca_pem) => {
                let ca_path = dir.join("pve-root-ca.pem");
                std::fs::write(&ca_path, ca_pem).map_err(|err| problem(&ca_path, err))?;
                Ok(ca_path)
            }
            None => Ok(certificate_path),
        }
    }
}

/// The SHA-256 fingerprint of a DER certificate as PVE shows it (`GET /nodes`
/// `ssl_fingerprint`, the GUI, `openssl x509 -fingerprint -sha256`): upper-case
/// hex bytes joined by `:`.
fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_as_openssl_prints_them() {
        // A node certificate and what `openssl x509 -noout -fingerprint -sha256` printed for it.
        const PEM: &str = "-----BEGIN CERTIFICATE-----
MIICBzCCAa2gAwIBAgIUGPgs3jvf5OcSyhC3GZ+sQ7cwkgMwCgYIKoZIzj0EAwIw
WDEZMBcGA1UECwwQUFZFIENsdXN0ZXIgTm9kZTEkMCIGA1UECgwbUHJveG1veCBW
aXJ0dWFsIEVudmlyb25tZW50MRUwEwYDVQQDDAxwdmUxLmV4YW1wbGUwIBcNMjYx
MjAyMTAyMzQxWhgPMjEyNjExMDgxMDIzNDFaMFgxGTAXBgNVBAsMEFBWRSBDbHVz
dGVyIE5vZGUxJDAiBgNVBAoMG1Byb3htb3ggVmlydHVhbCBFbnZpcm9ubWVudDEV
MBMGA1UEAwwMcHZlMS5leGFtcGxlMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
CWWDNi1YPnfYaEhHdsSz6uPnTSnOjRapqgD8LK6SFoeN62VzHhnL1p0X0m+njMWX
dXg67UJ9M41FhsmHfE5qWaNTMFEwHQYDVR0OBBYEFIDPYZooX+9Y14UOLB1AC5eI
bA6/MB8GA1UdIwQYMBaAFIDPYZooX+9Y14UOLB1AC5eIbA6/MA8GA1UdEwEB/wQF
MAMBAf8wCgYIKoZIzj0EAwIDSAAwRQIgENb4avqeJqcVjzCR0jiF39vrhk7+WoP6
VX7Np+Ftyn4CIQCRbj6WzAFUDhSXH2tv+EztFVYhRR7CXqtWDuLDs19L1g==
-----END CERTIFICATE-----
";
        const OPENSSL: &str =
            "35:7C:D2:D2:FC:6D:92:9E:B6:3E:0F:CC:E8:7F:8E:60:C1:8B:35:93:28:94:92:B7:97:FF:E7:64:96:8D:A4:9C";
        let der = rustls_pemfile::certs(&mut PEM.as_bytes()).next().unwrap().unwrap();
        assert_eq!(fingerprint(&der), OPENSSL);
        // FIPS 180-2's "abc" digest, in the same form.
        assert_eq!(
            fingerprint(b"abc"),
            "BA:78:16:BF:8F:01:CF:EA:41:41:40:DE:5D:AE:22:23:B0:03:61:A3:96:17:7A:9C:B4:10:FF:61:F2:00:15:AD"
        );
    }

    #[test]
    fn a_generated_certificate_reports_its_own_fingerprint() {
        let certificate = ServerCertificate::generate("sim", &["pve1".to_string()]).unwrap();
        assert_eq!(certificate.fingerprint, fingerprint(&certificate.chain[0]));
        assert_eq!(certificate.fingerprint.len(), 32 * 3 - 1);
    }
}
