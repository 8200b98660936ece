//! Tickets and CSRF tokens as pveproxy issues them.
//!
//! A ticket reads `PVE:<userid>:<HEXTIME>::<signature>`; a TFA half ticket
//! `PVE:!tfa!<url-encoded challenge>:<HEXTIME>::<signature>`; a CSRF token
//! `<HEXTIME>:<signature>`. PVE signs with the cluster's RSA key; the
//! simulator signs with HMAC-SHA256 under a per-run key, which clients
//! cannot tell apart: to them tickets are opaque.

use percent_encoding::{NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

use super::clock::SimTime;

/// How long a TFA challenge may be answered (simulated seconds).
const TFA_CHALLENGE_LIFETIME: f64 = 120.0;
/// Tickets from the future beyond this are rejected (clock skew allowance).
const FUTURE_SKEW: f64 = 300.0;

pub struct TicketKey([u8; 32]);

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

impl TicketKey {
    pub fn new(key: [u8; 32]) -> Self {
        Self(key)
    }

    fn sign(&self, data: &str) -> String {
        base64(&hmac_sha256(&self.0, data.as_bytes()))
    }

    fn signature_matches(&self, data: &str, signature: &str) -> bool {
        let expected = self.sign(data);
        // Constant-time comparison: the signature is a secret's proof.
        expected.len() == signature.len()
            && expected.bytes().zip(signature.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }

    pub fn issue(&self, userid: &str, now: SimTime) -> String {
        let data = format!("PVE:{userid}:{:08X}", now as u64);
        let signature = self.sign(&data);
        format!("{data}::{signature}")
    }

    /// The user a valid, unexpired full ticket belongs to.
    pub fn verify(&self, ticket: &str, now: SimTime, lifetime: f64) -> Option<String> {
        let (data, signature) = ticket.split_once("::")?;
        let rest = data.strip_prefix("PVE:")?;
        if rest.starts_with("!tfa!") {
            return None;
        }
        let (userid, hex_time) = rest.rsplit_once(':')?;
        let issued = u64::from_str_radix(hex_time, 16).ok()? as f64;
        if !self.signature_matches(data, signature) || now - issued > lifetime || issued - now > FUTURE_SKEW {
            return None;
        }
        Some(userid.to_string())
    }

    /// A half ticket that carries the TFA challenge; bound to `userid`,
    /// which the second login request names again.
    pub fn issue_tfa(&self, userid: &str, challenge_json: &str, now: SimTime) -> String {
        let data = format!("PVE:!tfa!{}:{:08X}", utf8_percent_encode(challenge_json, NON_ALPHANUMERIC), now as u64);
        let signature = self.sign(&format!("{data}\n{userid}"));
        format!("{data}::{signature}")
    }

    pub fn verify_tfa(&self, ticket: &str, userid: &str, now: SimTime) -> bool {
        let Some((data, signature)) = ticket.split_once("::") else { return false };
        let Some(rest) = data.strip_prefix("PVE:!tfa!") else { return false };
        let Some((_, hex_time)) = rest.rsplit_once(':') else { return false };
        let Ok(issued) = u64::from_str_radix(hex_time, 16) else { return false };
        self.signature_matches(&format!("{data}\n{userid}"), signature) && now - issued as f64 <= TFA_CHALLENGE_LIFETIME
    }

    pub fn csrf(&self, userid: &str, now: SimTime) -> String {
        let hex_time = format!("{:08X}", now as u64);
        let signature = self.sign(&format!("{hex_time}:{userid}"));
        format!("{hex_time}:{signature}")
    }

    pub fn verify_csrf(&self, userid: &str, token: &str, now: SimTime, lifetime: f64) -> bool {
        let Some((hex_time, signature)) = token.split_once(':') else { return false };
        let Ok(issued) = u64::from_str_radix(hex_time, 16) else { return false };
        self.signature_matches(&format!("{hex_time}:{userid}"), signature) && now - issued as f64 <= lifetime
    }
}

/// Reads the `PVEAuthCookie` out of a Cookie header (pveproxy URI-unescapes it).
pub fn cookie_ticket(cookie_header: &str) -> Option<String> {
    cookie_header.split(';').find_map(|part| {
        let (name, value) = part.trim().split_once('=')?;
        (name == "PVEAuthCookie").then(|| percent_decode_str(value).decode_utf8_lossy().into_owned())
    })
}

fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let inner = Sha256::new().chain_update(inner_pad).chain_update(message).finalize();
    Sha256::new().chain_update(outer_pad).chain_update(inner).finalize().into()
}

/// Standard base64 with padding (PVE's signatures use it).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], chunk.get(1).copied().unwrap_or(0), chunk.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> shift) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hmac_match_known_vectors() {
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        // RFC 4231 test case 2 uses a short key; ours is zero-padded to 32 bytes, which HMAC does too.
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        assert_eq!(
            hex::encode(hmac_sha256(&key, b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tickets_verify_until_they_expire() {
        let key = TicketKey::new([7; 32]);
        let ticket = key.issue("alice@pve", 1_000_000.0);
        assert!(ticket.starts_with("PVE:alice@pve:000F4240::"), "{ticket}");
        assert_eq!(key.verify(&ticket, 1_000_010.0, 7200.0).as_deref(), Some("alice@pve"));
        assert_eq!(key.verify(&ticket, 1_010_000.0, 7200.0), None, "expired");
        let forged = ticket.replace("alice", "mallory");
        assert_eq!(key.verify(&forged, 1_000_010.0, 7200.0), None);
        assert_eq!(TicketKey::new([8; 32]).verify(&ticket, 1_000_010.0, 7200.0), None);
    }

    #[test]
    fn csrf_and_tfa_tokens_are_bound_to_the_user() {
        let key = TicketKey::new([1; 32]);
        let csrf = key.csrf("alice@pve", 50.0);
        assert!(key.verify_csrf("alice@pve", &csrf, 60.0, 7200.0));
        assert!(!key.verify_csrf("bob@pve", &csrf, 60.0, 7200.0));
        let half = key.issue_tfa("alice@pve", r#"{"totp":true}"#, 50.0);
        assert!(half.starts_with("PVE:!tfa!%7B%22totp%22%3Atrue%7D:"), "{half}");
        assert!(key.verify_tfa(&half, "alice@pve", 60.0));
        assert!(!key.verify_tfa(&half, "bob@pve", 60.0));
        assert!(!key.verify_tfa(&half, "alice@pve", 500.0), "challenge expired");
        assert_eq!(key.verify(&half, 60.0, 7200.0), None, "a half ticket is no ticket");
    }

    #[test]
    fn cookie_is_found_and_unescaped() {
        assert_eq!(cookie_ticket("a=b; PVEAuthCookie=PVE%3Aroot%40pam%3A1::x").as_deref(), Some("PVE:root@pam:1::x"));
        assert_eq!(cookie_ticket("PVEAuthCookie=PVE:root@pam:1::a+b/c=").as_deref(), Some("PVE:root@pam:1::a+b/c="));
        assert_eq!(cookie_ticket("other=1"), None);
    }
}
