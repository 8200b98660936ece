//! Indexed keys that PVE collapses in its schema dump.
//!
//! `PVE::RESTHandler::api_clone_schema` folds `net0 … net31` into one key
//! `net[n]` and loses the upper bound. The bounds below come from the Perl
//! constants (`$MAX_NETS` and friends); keys not in the table are kept as an
//! open map so nothing the server sends is lost.

/// How collapsed `name[n]` keys are restored (`--indexed-keys`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum IndexedKeys {
    /// One property per index (`net0`, `net1`, …): typed fields.
    #[default]
    Expand,
    /// An `additionalProperties` map: much less generated code.
    Map,
}

impl IndexedKeys {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expand => "expand",
            Self::Map => "map",
        }
    }
}

/// Exclusive upper bound of each known indexed key.
const BOUNDS: &[(&str, u32)] = &[
    ("acmedomain", 6),
    ("dev", 256),
    ("hostpci", 16),
    ("ide", 4),
    ("ipconfig", 32),
    ("link", 8),
    ("mp", 256),
    ("net", 32),
    ("numa", 8),
    ("parallel", 3),
    ("sata", 6),
    ("scsi", 31),
    ("serial", 4),
    ("unused", 256),
    ("usb", 14),
    ("virtio", 16),
    ("virtiofs", 10),
];

/// `Some("net")` for `net[n]`.
pub fn indexed_base(key: &str) -> Option<&str> {
    key.strip_suffix("[n]").filter(|base| !base.is_empty())
}

/// The number of indices of a known indexed key.
pub fn bound(base: &str) -> Option<u32> {
    BOUNDS.iter().find(|(name, _)| *name == base).map(|(_, bound)| *bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knows_the_qemu_bounds() {
        assert_eq!(indexed_base("net[n]"), Some("net"));
        assert_eq!(indexed_base("[n]"), None);
        assert_eq!(bound("net"), Some(32));
        assert_eq!(bound("scsi"), Some(31));
        assert_eq!(bound("nonexistent"), None);
    }
}
