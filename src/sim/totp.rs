//! TOTP second factors, checked the way PVE checks them (proxmox-tfa):
//! RFC 6238 with HMAC-SHA1, 6 digits, 30 s steps, accepting the previous and
//! the next step for clock drift.
//!
//! The simulator's own check, independent of the client's code generator: it
//! uses `totp-rs` for the HMAC arithmetic only and sets every parameter here,
//! so a wrong digit count, step or window on either side shows as a failed
//! login. The RFC 6238 appendix B vectors below keep it honest.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use totp_rs::{Algorithm, Secret, TOTP};

/// Digits of a PVE TOTP code.
const DIGITS: usize = 6;
/// Seconds per TOTP step.
const STEP: u64 = 30;
/// Steps either side of the current one that are still accepted.
const WINDOW: u64 = 1;

/// A user's TOTP key (the shared secret), never shown.
pub struct TotpKey(Vec<u8>);

impl fmt::Debug for TotpKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TotpKey(<redacted>)")
    }
}

impl TotpKey {
    /// Reads a base32 secret as PVE shows it when TOTP is set up (upper or
    /// lower case, grouped by spaces, `=` padding optional); the problem is
    /// described without echoing the secret.
    pub fn from_base32(secret: &str) -> Result<Self, String> {
        let cleaned: String =
            secret.chars().filter(|c| !c.is_whitespace() && *c != '=').collect::<String>().to_uppercase();
        let bytes = Secret::Encoded(cleaned).to_bytes().map_err(|_| {
            "is not valid base32 (letters A–Z and digits 2–7, as PVE shows it when TOTP is set up)".to_string()
        })?;
        if bytes.len() < 10 {
            return Err(format!("is too short ({} bytes decoded, at least 10 expected)", bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// The `digits`-digit code of the step holding `unix_time` (RFC 6238,
    /// HMAC-SHA1, T0 = 0, X = 30 s).
    fn code(&self, digits: usize, unix_time: u64) -> String {
        // new_unchecked: PVE accepts 80-bit secrets that totp-rs' strict check refuses.
        TOTP::new_unchecked(Algorithm::SHA1, digits, 0, STEP, self.0.clone()).generate(unix_time)
    }

    /// Whether `code` is the 6-digit code of the step holding `unix_time`
    /// or of one step before or after it.
    pub fn accepts_at(&self, code: &str, unix_time: u64) -> bool {
        let code = code.trim();
        let current = unix_time / STEP;
        (current.saturating_sub(WINDOW)..=current + WINDOW).any(|step| self.code(DIGITS, step * STEP) == code)
    }

    /// [`accepts_at`](Self::accepts_at) the wall clock's time: clients compute
    /// codes from their own wall clock, never from the simulated one.
    pub fn accepts_now(&self, code: &str) -> bool {
        SystemTime::now().duration_since(UNIX_EPOCH).is_ok_and(|now| self.accepts_at(code, now.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B: the SHA-1 key is the ASCII "12345678901234567890".
    fn rfc_key() -> TotpKey {
        TotpKey(b"12345678901234567890".to_vec())
    }

    /// RFC 6238 appendix B, SHA-1 rows: time → 8-digit code.
    const RFC_6238_SHA1: [(u64, &str); 6] = [
        (59, "94287082"),
        (1_111_111_109, "07081804"),
        (1_111_111_111, "14050471"),
        (1_234_567_890, "89005924"),
        (2_000_000_000, "69279037"),
        (20_000_000_000, "65353130"),
    ];

    #[test]
    fn computes_the_rfc_6238_vectors() {
        let key = rfc_key();
        for (time, expected) in RFC_6238_SHA1 {
            assert_eq!(key.code(8, time), expected, "T = {time}");
            // The 6-digit code is the same truncated value modulo 10^6: the
            // last six digits of the 8-digit one.
            assert_eq!(key.code(DIGITS, time), expected[2..], "T = {time}");
        }
    }

    #[test]
    fn accepts_the_6_digit_codes_of_the_rfc_vectors() {
        let key = rfc_key();
        for (time, expected) in RFC_6238_SHA1 {
            let six = &expected[2..];
            assert!(key.accepts_at(six, time), "T = {time}");
            assert!(key.accepts_at(&format!(" {six}\n"), time), "surrounding white space is ignored");
            // One step of drift either way is tolerated.
            assert!(key.accepts_at(six, time + STEP), "T = {time} + 30 s");
            assert!(key.accepts_at(six, time - STEP), "T = {time} - 30 s");
            // The 8-digit form is not a PVE code.
            assert!(!key.accepts_at(expected, time), "T = {time}: 8 digits");
        }
    }

    #[test]
    fn refuses_wrong_and_stale_codes() {
        let key = rfc_key();
        let (time, expected) = RFC_6238_SHA1[3];
        let six = &expected[2..];
        assert!(key.accepts_at(six, time));
        // Two steps later (or earlier) the code is stale.
        assert!(!key.accepts_at(six, time + 2 * STEP), "a code two steps old");
        assert!(!key.accepts_at(six, time + 3600), "a code an hour old");
        assert!(!key.accepts_at(six, time - 2 * STEP), "a code two steps early");
        // Wrong codes, one digit off, and not codes at all.
        let off_by_one = format!("{}{}", &six[..5], (six.as_bytes()[5] - b'0' + 1) % 10);
        for wrong in [off_by_one.as_str(), "000000", "", "12345", "1234567", "abcdef", &expected[..6]] {
            assert!(!key.accepts_at(wrong, time), "`{wrong}`");
        }
        // Another key's code.
        let other = TotpKey::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        assert!(!other.accepts_at(six, time));
    }

    #[test]
    fn accepts_the_current_code() {
        let key = TotpKey::from_base32("JBSWY3DPEHPK3PXP").unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
        assert!(key.accepts_now(&key.code(DIGITS, now)));
        assert!(!key.accepts_now(&key.code(DIGITS, now - 10 * STEP)));
    }

    #[test]
    fn reads_base32_as_pve_shows_it() {
        // "12345678901234567890" in base32, the RFC key.
        let upper = TotpKey::from_base32("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ").unwrap();
        assert_eq!(upper.0, b"12345678901234567890");
        let grouped = TotpKey::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq").unwrap();
        assert_eq!(grouped.0, upper.0);
        assert_eq!(TotpKey::from_base32("JBSWY3DPEHPK3PXP").unwrap().0, b"Hello!\xde\xad\xbe\xef");
        let short = TotpKey::from_base32("JBSW").unwrap_err();
        assert!(short.contains("too short"), "{short}");
        let bad = TotpKey::from_base32("JBSWY3DP!!").unwrap_err();
        assert!(bad.contains("not valid base32") && !bad.contains("JBSW"), "{bad}");
        assert_eq!(format!("{:?}", upper), "TotpKey(<redacted>)");
    }
}
