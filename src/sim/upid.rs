//! UPIDs, written and read the way PVE does (pve-common `PVE::UPID`, formerly
//! `PVE::Tools::upid_encode` / `upid_decode`), independently of the client's
//! own UPID type: a bug the two shared would otherwise never show.
//!
//! `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`, with `pid`,
//! `pstart` and `starttime` as upper-case hex padded to 8 digits (`%08X`;
//! `pstart` grows to 9 digits after 497 days of uptime).

use std::fmt;

/// A worker task's id, as pvedaemon's `fork_worker` makes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upid {
    pub node: String,
    /// The worker's process id.
    pub pid: u32,
    /// The worker's start in clock ticks since the node booted.
    pub pstart: u64,
    /// Unix seconds when the task started.
    pub starttime: u32,
    /// `qmclone`, `qmstart`, `qmdestroy`, …
    pub task_type: String,
    /// What the task is about (a VMID), possibly empty.
    pub id: String,
    /// `user@realm` or `user@realm!token`.
    pub user: String,
}

impl fmt::Display for Upid {
    /// `sprintf("UPID:%s:%08X:%08X:%08X:%s:%s:%s:", …)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.task_type, self.id, self.user
        )
    }
}

impl Upid {
    /// PVE's decoder: `None` where PVE dies with `unable to parse worker upid`.
    ///
    /// `^UPID:([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?):([0-9A-Fa-f]{8}):([0-9A-Fa-f]{8,9}):([0-9A-Fa-f]{8}):`
    /// `([^:\s/]+):([^:\s/]*):([^:\s/]+):$`
    pub fn decode(text: &str) -> Option<Self> {
        let fields: Vec<&str> = text.strip_prefix("UPID:")?.strip_suffix(':')?.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = fields.as_slice() else {
            return None;
        };
        let host_name = |s: &str| {
            let bytes = s.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        };
        let hex = |s: &str, digits: std::ops::RangeInclusive<usize>| {
            digits.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        // `[^:\s/]`: Perl's `\s` is Unicode white space for character strings.
        let word = |s: &str| !s.chars().any(|c| c == ':' || c == '/' || c.is_whitespace());
        let valid = host_name(node)
            && hex(pid, 8..=8)
            && hex(pstart, 8..=9)
            && hex(starttime, 8..=8)
            && !task_type.is_empty()
            && word(task_type)
            && word(id)
            && !user.is_empty()
            && word(user);
        if !valid {
            return None;
        }
        Some(Self {
            node: node.to_string(),
            pid: u32::from_str_radix(pid, 16).ok()?,
            pstart: u64::from_str_radix(pstart, 16).ok()?,
            starttime: u32::from_str_radix(starttime, 16).ok()?,
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upid(node: &str, pid: u32, pstart: u64, starttime: u32, task_type: &str, id: &str, user: &str) -> Upid {
        Upid {
            node: node.into(),
            pid,
            pstart,
            starttime,
            task_type: task_type.into(),
            id: id.into(),
            user: user.into(),
        }
    }

    /// UPIDs as PVE writes them: the example of `pve-api-notes.md` §6 and
    /// the shapes pvedaemon gives clone, start, destroy and config tasks.
    #[test]
    fn writes_pve_upids() {
        for (fields, text) in [
            (
                upid("pve1", 0x000A_1B2C, 0x0012_D687, 0x6560_B3F1, "qmclone", "100", "autoscaler@pve!tok"),
                "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:autoscaler@pve!tok:",
            ),
            (
                upid("pve1", 0x0005_C3A2, 0x0A1B_2C3D, 0x6553_F000, "qmclone", "9000", "root@pam"),
                "UPID:pve1:0005C3A2:0A1B2C3D:6553F000:qmclone:9000:root@pam:",
            ),
            // Small values are zero-padded to 8 digits, hex is upper-case.
            (
                upid("pve-node-2", 0xabc, 0x1f, 1_700_000_000, "qmstart", "105", "fleeting@pve!ci"),
                "UPID:pve-node-2:00000ABC:0000001F:6553F100:qmstart:105:fleeting@pve!ci:",
            ),
            // An empty id, as for node-wide tasks.
            (
                upid("node3", 123_456, 98_765_432, 1_735_689_600, "aptupdate", "", "root@pam"),
                "UPID:node3:0001E240:05E30A78:67748580:aptupdate::root@pam:",
            ),
            // pstart past 32 bits (uptime over 497 days) takes a ninth digit.
            (
                upid("pve", 0x0000_ABCD, 0x1_A2B3_C4D5, 0x6560_B3F1, "qmdestroy", "9001", "root@pam"),
                "UPID:pve:0000ABCD:1A2B3C4D5:6560B3F1:qmdestroy:9001:root@pam:",
            ),
        ] {
            assert_eq!(fields.to_string(), text);
            assert_eq!(Upid::decode(text), Some(fields), "{text}");
        }
    }

    #[test]
    fn decodes_as_pve_does() {
        // Lower-case hex is read too (the regex allows A-Fa-f).
        let lower = Upid::decode("UPID:pve1:000a1b2c:0012d687:6560b3f1:qmclone:100:root@pam:").unwrap();
        assert_eq!((lower.pid, lower.pstart, lower.starttime), (0x000A_1B2C, 0x0012_D687, 0x6560_B3F1));
        for bad in [
            "",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam",
            "PID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID::000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:-pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1-:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve_1:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1:A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1:000A1B2C:12D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1:000A1B2C:001A2B3C4D5:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F:qmclone:100:root@pam:",
            "UPID:pve1:000A1B2G:0012D687:6560B3F1:qmclone:100:root@pam:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1::100:root@pam:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100::",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qm clone:100:root@pam:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:1/0:root@pam:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:root@pam:extra:",
        ] {
            assert_eq!(Upid::decode(bad), None, "{bad}");
        }
    }
}
