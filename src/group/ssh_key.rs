//! The SSH key the plugin makes at Init when Runner does not bring its own
//! credentials: the public half goes to each VM through cloud-init, the
//! private half back to Runner in ConnectInfo.
//!
//! The key is derived from the PVE credentials' secret and the group's scope
//! (URL, pool, group), not drawn at random: a plugin restarted by Runner (or
//! after a crash) hands out the key its running instances were given, so
//! they stay usable, and nothing is kept on disk. Whoever holds the secret
//! can derive the key, but could already reach every VM of the pool through
//! the PVE API. A new secret (a rotated token) makes a new key; instances
//! made with the old one are then removed at adoption (see `adoption`).

use sha2::{Digest, Sha256};
use ssh_key::private::Ed25519Keypair;
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
    /// A random key (tests, and callers with no secret to derive from).
    pub fn generate() -> Result<Self, ssh_key::Error> {
        Self::encode(PrivateKey::random(&mut rand_core::OsRng, Algorithm::Ed25519)?)
    }

    /// The key for `scope`, derived from `secret` (see the module comment):
    /// the same inputs always give the same key.
    pub fn derive(secret: &[u8], scope: &str) -> Result<Self, ssh_key::Error> {
        let mut hash = Sha256::new();
        hash.update(b"fleeting-plugin-proxmox/ssh-key/v1\0");
        hash.update(scope.as_bytes());
        hash.update(b"\0");
        hash.update(secret);
        let seed: [u8; 32] = hash.finalize().into();
        Self::encode(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
    }

    fn encode(mut key: PrivateKey) -> Result<Self, ssh_key::Error> {
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
    fn a_derived_key_is_the_same_for_the_same_secret_and_scope_only() {
        let key = GeneratedKey::derive(b"ci\0c0ffee", "https://pve:8006\0ci\0fleeting").unwrap();
        let again = GeneratedKey::derive(b"ci\0c0ffee", "https://pve:8006\0ci\0fleeting").unwrap();
        assert_eq!(key.public_openssh, again.public_openssh);
        assert_eq!(key.private_pem.expose(), again.private_pem.expose());
        assert!(key.public_openssh.starts_with("ssh-ed25519 "), "{}", key.public_openssh);
        let other_secret = GeneratedKey::derive(b"ci\0rotated", "https://pve:8006\0ci\0fleeting").unwrap();
        let other_group = GeneratedKey::derive(b"ci\0c0ffee", "https://pve:8006\0ci\0other").unwrap();
        assert_ne!(key.public_openssh, other_secret.public_openssh);
        assert_ne!(key.public_openssh, other_group.public_openssh);
    }

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
