//! Pieces of PVE's ticket login that need no network: TOTP codes and the TFA
//! challenge carried inside a half ticket.
//!
//! The flow (PVE 7.1+ with `new-format=1`, always on 8.0+): the first
//! `POST /access/ticket` answers a ticket `PVE:!tfa!<url-encoded JSON>:…` that
//! lists the factors the user has; the second one sends `tfa-challenge=<that
//! ticket>` and `password=<type>:<response>`, e.g. `totp:123456`.

use percent_encoding::percent_decode_str;
use totp_rs::{Algorithm, Secret as TotpSecret, TOTP};

use super::credentials::{SecondFactor, Secret};

/// Builds a TOTP generator (SHA-1, 6 digits, 30 s: what PVE uses) from a
/// base32 secret, describing the problem without echoing the secret.
pub fn totp_from_base32(secret: &str) -> Result<TOTP, String> {
    let cleaned: String = secret.chars().filter(|c| !c.is_whitespace() && *c != '=').collect::<String>().to_uppercase();
    let bytes = TotpSecret::Encoded(cleaned).to_bytes().map_err(|_| {
        "is not valid base32 (letters A–Z and digits 2–7, as PVE shows it when TOTP is set up)".to_string()
    })?;
    if bytes.len() < 10 {
        return Err(format!("is too short ({} bytes decoded, at least 10 expected)", bytes.len()));
    }
    // new_unchecked: PVE accepts 80-bit secrets that totp-rs' strict check refuses.
    Ok(TOTP::new_unchecked(Algorithm::SHA1, 6, 1, 30, bytes))
}

/// The factors a TFA challenge offers, as PVE lists them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TfaChallenge {
    /// A TOTP code (what `totp_secret` and `otp` answer).
    pub totp: bool,
    /// A Yubico OTP.
    pub yubico: bool,
    /// A recovery key.
    pub recovery: bool,
    /// WebAuthn (needs a browser; not answerable here).
    pub webauthn: bool,
    /// Legacy U2F (needs a browser; not answerable here).
    pub u2f: bool,
}

impl TfaChallenge {
    /// Parses the challenge out of a `PVE:!tfa!<json>:…` ticket; `None` when
    /// the ticket is a full one.
    pub fn from_ticket(ticket: &str) -> Option<Self> {
        let rest = ticket.strip_prefix("PVE:!tfa!")?;
        let encoded = rest.split(':').next().unwrap_or_default();
        let json = percent_decode_str(encoded).decode_utf8_lossy();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap_or_default();
        let offered = |key: &str| value.get(key).is_some_and(|v| !v.is_null() && v != &serde_json::Value::Bool(false));
        Some(Self {
            totp: offered("totp"),
            yubico: offered("yubico"),
            recovery: offered("recovery"),
            webauthn: offered("webauthn"),
            u2f: offered("u2f"),
        })
    }

    /// The offered factors by PVE's names (`totp`, `yubico`, …), for error messages.
    pub fn offered(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (on, name) in [
            (self.totp, "totp"),
            (self.yubico, "yubico"),
            (self.webauthn, "webauthn"),
            (self.u2f, "u2f"),
            (self.recovery, "recovery"),
        ] {
            if on {
                names.push(name);
            }
        }
        names
    }

    /// The `password` value answering this challenge, e.g. `totp:123456`.
    pub fn response(&self, factor: &SecondFactor) -> Result<Secret, String> {
        let offered = self.offered().join(", ");
        match factor {
            SecondFactor::None => Err(format!(
                "the user has two-factor authentication ({offered}); add `totp_secret` (base32) to the credentials file, \
                 or use an API token, which needs no second factor"
            )),
            SecondFactor::TotpSecret(secret) => {
                if !self.totp {
                    return Err(format!("`totp_secret` is set, but PVE offers only: {offered}"));
                }
                let code = totp_from_base32(secret.expose())
                    .map_err(|problem| format!("`totp_secret` {problem}"))?
                    .generate_current()
                    .map_err(|_| "the system clock is before 1970".to_string())?;
                Ok(Secret::new(format!("totp:{code}")))
            }
            SecondFactor::FixedOtp(code) => {
                if self.totp {
                    Ok(Secret::new(format!("totp:{}", code.expose())))
                } else if self.yubico {
                    Ok(Secret::new(format!("yubico:{}", code.expose())))
                } else {
                    Err(format!("`otp` is set, but PVE offers only: {offered}"))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenge_from_half_ticket() {
        let ticket = "PVE:!tfa!%7B%22totp%22%3Atrue%2C%22recovery%22%3A%5B0%2C1%5D%7D:6560B3F1::c2lnbmF0dXJl";
        let challenge = TfaChallenge::from_ticket(ticket).unwrap();
        assert!(challenge.totp && challenge.recovery && !challenge.yubico);
        assert_eq!(challenge.offered(), ["totp", "recovery"]);
        assert!(TfaChallenge::from_ticket("PVE:root@pam:6560B3F1::sig").is_none());
    }

    #[test]
    fn answers_with_fresh_totp_or_fixed_code() {
        let challenge = TfaChallenge { totp: true, ..Default::default() };
        let answer = challenge.response(&SecondFactor::TotpSecret(Secret::new("JBSWY3DPEHPK3PXP"))).unwrap();
        let code = answer.expose().strip_prefix("totp:").unwrap();
        assert_eq!(code.len(), 6);
        let expected = totp_from_base32("JBSWY3DPEHPK3PXP").unwrap().generate_current().unwrap();
        assert_eq!(code, expected);
        let fixed = challenge.response(&SecondFactor::FixedOtp(Secret::new("123456"))).unwrap();
        assert_eq!(fixed.expose(), "totp:123456");
        let yubico = TfaChallenge { yubico: true, ..Default::default() };
        assert_eq!(yubico.response(&SecondFactor::FixedOtp(Secret::new("cccc"))).unwrap().expose(), "yubico:cccc");
        let err = challenge.response(&SecondFactor::None).unwrap_err();
        assert!(err.contains("add `totp_secret`"), "{err}");
    }

    #[test]
    fn rejects_bad_base32() {
        assert!(totp_from_base32("JBSWY3DP!!").is_err());
        assert!(totp_from_base32("JBSW").unwrap_err().contains("too short"));
        assert!(totp_from_base32("jbsw y3dp ehpk 3pxp").is_ok(), "PVE shows secrets in lower-case groups too");
    }
}
