//! go-plugin's AutoMTLS: when the host puts its certificate in
//! `PLUGIN_CLIENT_CERT`, the plugin serves TLS with a fresh self-signed
//! certificate (sent back in the handshake line) and accepts exactly the
//! host's certificate as client certificate.
//!
//! The host's certificate is an ECDSA P-521 CA certificate; webpki would
//! refuse it as an end-entity, so it is pinned byte for byte instead, and
//! the handshake signature is checked with aws-lc-rs (which, unlike ring,
//! verifies P-521).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;

use super::Error;

/// The server side of AutoMTLS.
pub struct AutoMtls {
    pub config: Arc<rustls::ServerConfig>,
    /// Our certificate, for the handshake line.
    pub server_cert_der: Vec<u8>,
}

impl AutoMtls {
    pub fn new(host_cert_pem: &str) -> Result<Self, Error> {
        let host_cert = rustls_pemfile::certs(&mut host_cert_pem.as_bytes())
            .next()
            .ok_or_else(|| Error::Tls("PLUGIN_CLIENT_CERT holds no PEM certificate".into()))?
            .map_err(|err| Error::Tls(format!("could not read PLUGIN_CLIENT_CERT: {err}")))?;

        // Same recipe as go-plugin's own: CN/SAN localhost (Go checks the
        // SAN against ServerName "localhost"), usable for server auth.
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .map_err(|err| Error::Tls(format!("could not generate the plugin's TLS key: {err}")))?;
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .map_err(|err| Error::Tls(format!("could not prepare the plugin's certificate: {err}")))?;
        params.distinguished_name.push(rcgen::DnType::CommonName, "localhost");
        params.distinguished_name.push(rcgen::DnType::OrganizationName, "fleeting-plugin-proxmox");
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .self_signed(&key)
            .map_err(|err| Error::Tls(format!("could not sign the plugin's certificate: {err}")))?;
        let server_cert_der = cert.der().to_vec();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = PinnedClientCertificate {
            expected: host_cert.to_vec(),
            subjects: Vec::new(),
            algorithms: provider.signature_verification_algorithms,
        };
        let key_der = PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|err| Error::Tls(format!("could not use the plugin's TLS key: {err}")))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| Error::Tls(err.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(vec![CertificateDer::from(server_cert_der.clone())], key_der)
            .map_err(|err| Error::Tls(format!("could not configure TLS: {err}")))?;
        // grpc-go refuses TLS peers that do not select h2 through ALPN.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Self { config: Arc::new(config), server_cert_der })
    }
}

/// Accepts exactly one client certificate: the host's.
#[derive(Debug)]
struct PinnedClientCertificate {
    expected: Vec<u8>,
    subjects: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for PinnedClientCertificate {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.subjects
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.expected.as_slice() {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::General("client certificate is not the one in PLUGIN_CLIENT_CERT".into()))
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

/// A TLS connection over the plugin socket, as tonic's server wants it.
pub struct TlsConnection(pub tokio_rustls::server::TlsStream<UnixStream>);

impl tonic::transport::server::Connected for TlsConnection {
    type ConnectInfo = ();
    fn connect_info(&self) -> Self::ConnectInfo {}
}

impl AsyncRead for TlsConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
