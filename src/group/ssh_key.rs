//! The SSH key the plugin generates at Init when Runner does not bring its
//! own credentials: the public half goes to each VM through cloud-init, the
//! private half back to Runner in ConnectInfo.

use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::pve::Secret;

/// An ed25519 key pair in OpenSSH formats.
#[derive(Clone)]
pub struct GeneratedKey {
    /// `ssh-ed25519 AAAA… fleeting-plugin-proxmox`
    pub public_openssh: String,
    /// PEM (`-----BEGIN OPENSSH PRIVATE KEY-----`), what Runner's connector reads.
    pub private_pem: Secret,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("public_openssh", &self.public_openssh).finish_non_exhaustive()
    }
}

impl GeneratedKey {
    pub fn generate() -> Result<Self, ssh_key::Error> {
        let mut key = PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)?;
        key.set_comment("fleeting-plugin-proxmox");
        let private_pem = key.to_openssh(LineEnding::LF)?;
        let public_openssh = key.public_key().to_openssh()?;
        Ok(Self { public_openssh, private_pem: Secret::new(private_pem.as_str()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_an_openssh_ed25519_pair() {
        let key = GeneratedKey::generate().unwrap();
        assert!(key.public_openssh.starts_with("ssh-ed25519 "), "{}", key.public_openssh);
        assert!(key.private_pem.expose().starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        assert!(!format!("{key:?}").contains("PRIVATE KEY"), "Debug must not print the private key");
        let other = GeneratedKey::generate().unwrap();
        assert_ne!(key.public_openssh, other.public_openssh);
    }
}
