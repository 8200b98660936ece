//! The PVE release a scenario simulates (`pve_version`), read by the
//! simulator itself rather than by the client's version type, so the two
//! cannot agree on a wrong reading.

use std::fmt;

/// A PVE release: `9.1.3` is major 9, minor 1, patch 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PveRelease {
    pub major: u32,
    pub minor: u32,
    /// 0 when absent (`9.1`).
    pub patch: u32,
}

impl PveRelease {
    /// Reads `9.1.3`, `9.1`, `9`, and package-style `8.4-1` or `8.0~2`;
    /// `None` without a leading number.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(['.', '-', '~']);
        let major = parts.next()?.parse().ok()?;
        let mut number = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let minor = number();
        let patch = number();
        Some(Self { major, minor, patch })
    }

    /// Cloning onto a bridge needs `SDN.Use` on it from PVE 8.0 on.
    pub fn requires_sdn_use(&self) -> bool {
        self.major >= 8
    }
}

impl fmt::Display for PveRelease {
    /// `9.1.3`, as `GET /version` reports `version`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_releases_as_pve_names_them() {
        let release = |major, minor, patch| Some(PveRelease { major, minor, patch });
        assert_eq!(PveRelease::parse("9.1.3"), release(9, 1, 3));
        assert_eq!(PveRelease::parse("9.1"), release(9, 1, 0));
        assert_eq!(PveRelease::parse(" 8 "), release(8, 0, 0));
        assert_eq!(PveRelease::parse("8.4-1"), release(8, 4, 1));
        assert_eq!(PveRelease::parse("8.0~2"), release(8, 0, 2));
        assert_eq!(PveRelease::parse("7.4.x"), release(7, 4, 0));
        assert_eq!(PveRelease::parse("x"), None);
        assert_eq!(PveRelease::parse(""), None);
        assert_eq!(PveRelease::parse("9.1.3").unwrap().to_string(), "9.1.3");
        assert_eq!(PveRelease::parse("9.1").unwrap().to_string(), "9.1.0");
        assert!(PveRelease::parse("8.1").unwrap() > PveRelease::parse("8.0.9").unwrap());
        assert!(PveRelease::parse("10.0").unwrap() > PveRelease::parse("9.4").unwrap());
        assert!(!PveRelease::parse("7.4").unwrap().requires_sdn_use());
        assert!(PveRelease::parse("8.0").unwrap().requires_sdn_use());
    }
}
