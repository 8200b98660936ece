//! PVE releases and the API differences between them that matter here.

/// A PVE release, from `GET /version` (`9.1.3`, or `release` `9.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PveVersion {
    /// `9` in 9.1.3.
    pub major: u32,
    /// `1` in 9.1.3.
    pub minor: u32,
    /// `3` in 9.1.3 (0 when absent).
    pub patch: u32,
}

impl PveVersion {
    /// Parses `9.1.3`, `9.1`, `8.4-1` and the like; `None` without a major number.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.trim().split(['.', '-', '~']);
        let major = parts.next()?.parse().ok()?;
        let minor = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        Some(Self { major, minor, patch })
    }

    /// `GET/PUT/DELETE /pools?poolid=` and nested pools exist since 8.1.
    pub fn has_nested_pools(&self) -> bool {
        (self.major, self.minor) >= (8, 1)
    }

    /// The privilege the guest-agent calls need: `VM.Monitor` up to 8.4,
    /// `VM.GuestAgent.Audit` (or `…Unrestricted`) from 9.0 on.
    pub fn guest_agent_privilege(&self) -> &'static str {
        if self.major >= 9 { "VM.GuestAgent.Audit" } else { "VM.Monitor" }
    }

    /// `SDN.Use` on the bridge is required for clones since 8.0.
    pub fn requires_sdn_use(&self) -> bool {
        self.major >= 8
    }
}

impl std::fmt::Display for PveVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_by_release() {
        let v = |t| PveVersion::parse(t).unwrap();
        assert!(!v("8.0.4").has_nested_pools());
        assert!(v("8.1").has_nested_pools());
        assert_eq!(v("8.4.2").guest_agent_privilege(), "VM.Monitor");
        assert_eq!(v("9.1.3").guest_agent_privilege(), "VM.GuestAgent.Audit");
        assert!(!v("7.4-3").requires_sdn_use());
        assert_eq!(v("9.1.3").to_string(), "9.1.3");
        assert!(PveVersion::parse("x").is_none());
    }
}
