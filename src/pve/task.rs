//! Worker tasks: the UPID that identifies them, and their outcome.
//!
//! Long operations (clone, start, stop, delete) return a UPID at once and run
//! as a task on the node named in it. A task is `running` until its worker
//! ends, then `stopped` with an exit status: `OK`, `WARNINGS: <n>` (success
//! with warnings, as `PVE::UPID::status_is_error` treats it) or the error text.

use std::fmt;
use std::str::FromStr;

/// A PVE task id: `UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    /// The node the task runs on.
    pub node: String,
    /// The worker's process id (hex in the UPID).
    pub pid: u32,
    /// The process start time in clock ticks (hex in the UPID).
    pub pstart: u64,
    /// Unix seconds when the task started (hex in the UPID).
    pub starttime: u32,
    /// `qmclone`, `qmstart`, `qmdestroy`, …
    pub task_type: String,
    /// The object, usually a VMID.
    pub id: String,
    /// Who started it: `user@realm` or `user@realm!token`.
    pub user: String,
}

/// Why a string is not a UPID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not parse UPID `{text}`: {problem}")]
pub struct UpidParseError {
    text: String,
    problem: &'static str,
}

impl FromStr for Upid {
    type Err = UpidParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = |problem| UpidParseError { text: text.to_string(), problem };
        let rest = text.strip_prefix("UPID:").ok_or_else(|| error("it does not start with `UPID:`"))?;
        let rest = rest.strip_suffix(':').ok_or_else(|| error("it does not end with `:`"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, task_type, id, user] = parts.as_slice() else {
            return Err(error("it does not have 8 `:`-separated fields"));
        };
        let valid_node = !node.is_empty()
            && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !node.starts_with('-')
            && !node.ends_with('-');
        if !valid_node {
            return Err(error("the node is not a host name"));
        }
        let hex = |value: &str, lengths: &[usize]| {
            lengths.contains(&value.len()) && value.chars().all(|c| c.is_ascii_hexdigit())
        };
        if !hex(pid, &[8]) || !hex(pstart, &[8, 9]) || !hex(starttime, &[8]) {
            return Err(error("pid, pstart and starttime must be 8, 8–9 and 8 hex digits"));
        }
        let plain = |value: &str| !value.contains(|c: char| c.is_whitespace() || c == '/' || c == ':');
        if task_type.is_empty() || user.is_empty() || !plain(task_type) || !plain(id) || !plain(user) {
            return Err(error("type and user must be non-empty words"));
        }
        Ok(Self {
            node: node.to_string(),
            pid: u32::from_str_radix(pid, 16).map_err(|_| error("pid is not hexadecimal"))?,
            pstart: u64::from_str_radix(pstart, 16).map_err(|_| error("pstart is not hexadecimal"))?,
            starttime: u32::from_str_radix(starttime, 16).map_err(|_| error("starttime is not hexadecimal"))?,
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        })
    }
}

impl fmt::Display for Upid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UPID:{}:{:08X}:{:08X}:{:08X}:{}:{}:{}:",
            self.node, self.pid, self.pstart, self.starttime, self.task_type, self.id, self.user
        )
    }
}

/// The end of a task that succeeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSuccess {
    /// `n` of a `WARNINGS: n` exit status; 0 for `OK`.
    pub warnings: u32,
}

/// Interprets a stopped task's exit status: a success for `OK` and
/// `WARNINGS: n`, `None` for anything else (the status is then PVE's error).
pub fn exit_status_outcome(exit_status: &str) -> Option<TaskSuccess> {
    let status = exit_status.trim();
    if status == "OK" {
        return Some(TaskSuccess { warnings: 0 });
    }
    let count = status.strip_prefix("WARNINGS:")?;
    Some(TaskSuccess { warnings: count.trim().parse().unwrap_or(1) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upid_round_trips() {
        let text = "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:autoscaler@pve!tok:";
        let upid: Upid = text.parse().unwrap();
        assert_eq!(upid.node, "pve1");
        assert_eq!(upid.task_type, "qmclone");
        assert_eq!(upid.id, "100");
        assert_eq!(upid.user, "autoscaler@pve!tok");
        assert_eq!(upid.starttime, 0x6560_B3F1);
        assert_eq!(upid.to_string(), text);
        // A nine-digit pstart survives too.
        let long = "UPID:pve-2:0000ABCD:1A2B3C4D5:6560B3F1:qmstart::root@pam:";
        assert_eq!(long.parse::<Upid>().unwrap().to_string(), long);
    }

    #[test]
    fn rejects_malformed_upids() {
        for bad in [
            "",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100:user",
            "UPID::000A1B2C:0012D687:6560B3F1:qmclone:100:user:",
            "UPID:pve1:XYZ:0012D687:6560B3F1:qmclone:100:user:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1::100:user:",
            "UPID:pve1:000A1B2C:0012D687:6560B3F1:qmclone:100::",
        ] {
            let err = bad.parse::<Upid>().unwrap_err();
            assert!(err.to_string().starts_with("could not parse UPID"), "{err}");
        }
    }

    #[test]
    fn warnings_count_as_success() {
        assert_eq!(exit_status_outcome("OK"), Some(TaskSuccess { warnings: 0 }));
        assert_eq!(exit_status_outcome("WARNINGS: 3"), Some(TaskSuccess { warnings: 3 }));
        assert_eq!(exit_status_outcome("clone failed: no space"), None);
        assert_eq!(exit_status_outcome("unexpected status"), None);
    }
}
