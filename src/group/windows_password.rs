//! The password the plugin generates at Init for a Windows template when
//! Runner brings no credentials: set through cloud-init's `cipassword`
//! (cloudbase-init applies it to `ciuser`), handed to Runner in ConnectInfo
//! for WinRM. A [`Secret`]: `Debug` and `Display` never show it.

use rand::Rng;

use crate::pve::Secret;

/// Length of a generated password: far beyond brute force, within
/// Windows' 127-character limit.
const LENGTH: usize = 24;
/// Characters without look-alikes (`I`, `O`, `l`, `0`, `1`) and without
/// what PVE's config syntax or a shell quotes (`,`, `=`, `"`, `'`, `\`,
/// `%`, `$`, spaces).
const UPPER: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ";
const LOWER: &[u8] = b"abcdefghijkmnopqrstuvwxyz";
const DIGITS: &[u8] = b"23456789";
const SYMBOLS: &[u8] = b"-_.+!*#@";

/// A fresh random password with upper- and lower-case letters, digits and
/// symbols (Windows' complexity rule wants three of the four).
pub fn generate() -> Secret {
    let classes = [UPPER, LOWER, DIGITS, SYMBOLS];
    let alphabet: Vec<u8> = classes.concat();
    let mut rng = rand::rng();
    loop {
        let password: String = (0..LENGTH).map(|_| alphabet[rng.random_range(0..alphabet.len())] as char).collect();
        if classes.iter().all(|class| password.bytes().any(|c| class.contains(&c))) {
            return Secret::new(password);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_long_complex_distinct_and_redacted() {
        let first = generate();
        let text = first.expose();
        assert_eq!(text.len(), LENGTH);
        for class in [UPPER, LOWER, DIGITS, SYMBOLS] {
            assert!(text.bytes().any(|c| class.contains(&c)), "every class");
        }
        assert!(text.bytes().all(|c| !b",=\"'\\%$ ".contains(&c)));
        assert_ne!(generate(), first);
        assert!(!format!("{first:?} {first}").contains(text));
    }
}
