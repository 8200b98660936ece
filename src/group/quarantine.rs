//! VMIDs that failed for reasons tied to the VMID itself, skipped by
//! allocation for a while.
//!
//! PVE's `/cluster/nextid` looks only at VM configs. After a node crashes
//! mid-clone, the new VMID's volumes can stay behind without a config
//! (`vm-100-disk-0`, `vm-100-cloudinit`): nextid offers 100 again, and every
//! clone to it fails with "already exists". A held lock on the new VMID's
//! config file fails the same way. Such a failure says nothing about the
//! template or the cluster, so the instance is retried on another VMID and
//! the failure never counts toward the scale-up breaker.
//!
//! Quarantine lives in memory: after a restart, the orphaned volumes are
//! still there, the first clone to that VMID collides once, and the VMID is
//! quarantined again (one invisible retry per orphaned VMID and restart).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::pve::{Error as PveError, ErrorKind, Vmid};

/// How long a VMID stays quarantined: long enough that a collision never
/// repeats within a busy hour, short enough that an admin's cleanup is
/// noticed without a restart.
pub const QUARANTINE_FOR: Duration = Duration::from_secs(30 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub until: Instant,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct Quarantine {
    entries: BTreeMap<Vmid, Entry>,
}

impl Quarantine {
    /// Quarantines `vmid` for [`QUARANTINE_FOR`]; returns true when it was
    /// not quarantined before (so the caller logs it once).
    pub fn add(&mut self, vmid: Vmid, reason: &str, now: Instant) -> bool {
        let fresh = !self.contains(vmid, now);
        self.entries.insert(vmid, Entry { until: now + QUARANTINE_FOR, reason: reason.to_string() });
        fresh
    }

    pub fn contains(&self, vmid: Vmid, now: Instant) -> bool {
        self.entries.get(&vmid).is_some_and(|entry| entry.until > now)
    }

    /// The quarantined VMIDs, oldest expiry first dropped.
    pub fn current(&mut self, now: Instant) -> Vec<(Vmid, Entry)> {
        self.entries.retain(|_, entry| entry.until > now);
        self.entries.iter().map(|(vmid, entry)| (*vmid, entry.clone())).collect()
    }
}

/// Whether `err`, from cloning to `new_vmid`, is tied to that VMID: a volume
/// or config of that VMID already exists, or its config file is locked.
/// Locks of the source (the template) are not: they pass by themselves.
pub fn tied_to_vmid(err: &PveError, new_vmid: Vmid) -> bool {
    let text = match err.kind() {
        ErrorKind::TaskFailed { exit_status, log_tail, .. } => {
            let mut text = exit_status.clone();
            for line in log_tail {
                text.push('\n');
                text.push_str(line);
            }
            text
        }
        ErrorKind::AlreadyExists { message } | ErrorKind::Locked { message } => message.clone(),
        ErrorKind::Api { message, .. } => message.clone(),
        _ => return false,
    };
    let lower = text.to_ascii_lowercase();
    let vmid = new_vmid.0.to_string();
    let names_vmid = lower.contains(&format!("vm-{vmid}-"))
        || lower.contains(&format!("/{vmid}/"))
        || lower.contains(&format!("lock-{vmid}.conf"))
        || lower.contains(&format!("{vmid}.conf"))
        || lower.contains(&format!("vm {vmid} "))
        || lower.contains(&format!("vm {vmid}:"));
    let collision = lower.contains("already exists") || lower.contains("file exists");
    let locked = lower.contains("can't lock file") || lower.contains("got timeout");
    names_vmid && (collision || locked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pve::Upid;

    fn task_failed(exit_status: &str) -> PveError {
        let upid: Upid = "UPID:pve1:0000A1B2:0001C3D4:6553F000:qmclone:9000:root@pam:".parse().unwrap();
        PveError::new(
            "clone VM 9000",
            ErrorKind::TaskFailed { upid, exit_status: exit_status.into(), log_tail: Vec::new() },
        )
    }

    #[test]
    fn volume_collisions_of_the_new_vmid_are_tied_to_it() {
        // The texts real storage plugins print (lvm-thin, ZFS, RBD, directory).
        for text in [
            "clone failed: lvcreate 'pve/vm-100-disk-0' error:   Logical Volume \"vm-100-disk-0\" already exists in volume group \"pve\"",
            "clone failed: zfs error: cannot create 'rpool/data/vm-100-disk-0': dataset already exists",
            "clone failed: rbd create 'vm-100-cloudinit' error: rbd: create error: (17) File exists",
            "clone failed: unable to create image: disk image '/var/lib/vz/images/100/vm-100-cloudinit.qcow2' already exists",
            "clone failed: can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout",
        ] {
            assert!(tied_to_vmid(&task_failed(text), Vmid(100)), "{text}");
            assert!(!tied_to_vmid(&task_failed(text), Vmid(10)), "another VMID: {text}");
        }
    }

    #[test]
    fn failures_of_the_template_or_of_the_copy_are_not() {
        for text in [
            "clone failed: can't lock file '/var/lock/qemu-server/lock-9000.conf' - got timeout",
            "clone failed: command 'qemu-img convert' failed: exit code 1",
            "clone failed: storage 'local-lvm' is full",
        ] {
            assert!(!tied_to_vmid(&task_failed(text), Vmid(100)), "{text}");
        }
        let outage = PveError::new("clone VM 9000", ErrorKind::Transient { message: "503 Service Unavailable".into() });
        assert!(!tied_to_vmid(&outage, Vmid(100)));
    }

    #[test]
    fn entries_expire() {
        let mut quarantine = Quarantine::default();
        let now = Instant::now();
        assert!(quarantine.add(Vmid(100), "orphaned volumes", now));
        assert!(!quarantine.add(Vmid(100), "again", now), "already quarantined");
        assert!(quarantine.contains(Vmid(100), now + Duration::from_secs(60)));
        assert!(!quarantine.contains(Vmid(101), now));
        assert!(!quarantine.contains(Vmid(100), now + QUARANTINE_FOR));
        assert!(quarantine.current(now + QUARANTINE_FOR).is_empty());
    }
}
