//! Why provisioning one instance failed, typed down to the boundary where a
//! person reads it, and what the failure says about the cluster: whether it
//! counts toward the scale-up breaker, is tied to one VMID, or says nothing.

use std::fmt;

use crate::pve::{Error as PveError, ErrorKind, Vmid};

/// A step of provisioning one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Finding a free VMID.
    AllocateVmid,
    /// Reading which static addresses are taken.
    AllocateAddress,
    /// Sending the clone request.
    CloneRequest,
    /// The clone task.
    Clone,
    /// Tags, cloud-init, name.
    Configure,
    /// Growing a disk after the clone.
    Resize,
    /// The start task.
    Start,
    /// From start until the guest reports an address.
    Boot,
}

impl Step {
    /// Its name as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::AllocateVmid => "allocate_vmid",
            Self::AllocateAddress => "allocate_address",
            Self::CloneRequest => "clone_request",
            Self::Clone => "clone",
            Self::Configure => "configure",
            Self::Resize => "resize",
            Self::Start => "start",
            Self::Boot => "boot",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AllocateVmid => "allocate a VMID",
            Self::AllocateAddress => "allocate an address",
            Self::CloneRequest => "clone request",
            Self::Clone => "clone",
            Self::Configure => "configure",
            Self::Resize => "resize disk",
            Self::Start => "start",
            Self::Boot => "boot",
        })
    }
}

/// Why one instance could not be provisioned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ProvisionError {
    /// A Proxmox call of `step` failed.
    #[error("{error}")]
    Pve {
        step: Step,
        #[source]
        error: PveError,
    },
    /// The guest never reported an address of the wanted family.
    #[error(
        "could not find the instance's address within boot_timeout ({waited_secs} s): {last}; check that \
         qemu-guest-agent runs in the template and the network hands out addresses"
    )]
    NoAddress {
        waited_secs: u64,
        /// What the last look showed.
        last: String,
        /// The last look failed at the API (an outage says nothing about the guest).
        api_unavailable: bool,
    },
    /// No free VMID in the allowed range.
    #[error("could not find a free VMID{range}; widen vmid_range or lower max_instances")]
    NoFreeVmid { range: String },
    /// The static pool has no free address.
    #[error(
        "could not allocate an address: the static pool {pool} has none free ({detail}); widen `ip_pool_ranges`, \
         lower `max_instances`, or shorten `ip_pool_reuse_cooldown`"
    )]
    PoolExhausted { pool: String, detail: String },
    /// No target node can take another instance under the placement rules.
    /// (Increase reports these together, as one `Error::NoRoom`.)
    #[error("could not place the instance: {0}")]
    NoRoom(super::placement::NoRoom),
    /// Without the agent: the connector's port never accepted a connection.
    #[error(
        "could not connect to {address} within boot_timeout ({waited_secs} s): {last}; check that the template \
         applies cloud-init's static address and starts its SSH or WinRM service, and that the plugin's host can \
         reach the pool's network"
    )]
    PortClosed { address: std::net::SocketAddr, waited_secs: u64, last: String },
    /// Runner asked for its removal while it was being created.
    #[error("its removal was requested while it was being created")]
    RemovalRequested,
    /// The plugin is shutting down.
    #[error("the plugin is shutting down")]
    ShuttingDown,
}

/// The cause class of a failure that counts toward the breaker: the step
/// and what went wrong there (a PVE error kind, or no address, no VMID).
/// Failures of one cause in a row are what opens the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    pub step: Step,
    pub class: &'static str,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.class)
    }
}

/// What a failure says about the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It may be systematic (template, storage, permissions): it counts
    /// toward the breaker under this cause.
    Counts { cause: Cause },
    /// It is tied to this VMID (orphaned volumes, a held lock on its config):
    /// quarantine the VMID and try another.
    VmidTied(Vmid),
    /// It says nothing about the template or the cluster (an outage, a
    /// dropped connection, a removal Runner asked for).
    Neutral,
}

impl ProvisionError {
    pub fn pve(step: Step, error: PveError) -> Self {
        Self::Pve { step, error }
    }

    /// The step that failed, when one did.
    pub fn step(&self) -> Option<Step> {
        match self {
            Self::Pve { step, .. } => Some(*step),
            Self::NoAddress { .. } => Some(Step::Boot),
            Self::NoFreeVmid { .. } => Some(Step::AllocateVmid),
            Self::PortClosed { .. } => Some(Step::Boot),
            // Counted as refused by Increase (`ip_pool`), not as a failed step.
            Self::PoolExhausted { .. } | Self::NoRoom(_) | Self::RemovalRequested | Self::ShuttingDown => None,
        }
    }

    /// The reason class as a metric label: the PVE error's kind, or what
    /// went wrong without one.
    pub fn reason_label(&self) -> &'static str {
        match self {
            Self::Pve { error, .. } => kind_label(error.kind()),
            Self::NoAddress { api_unavailable: true, .. } => "unavailable",
            Self::NoAddress { .. } => "no_address",
            Self::NoFreeVmid { .. } => "no_free_vmid",
            Self::PoolExhausted { .. } => "ip_pool_exhausted",
            Self::NoRoom(_) => "no_room",
            Self::PortClosed { .. } => "port_closed",
            Self::RemovalRequested => "removal_requested",
            Self::ShuttingDown => "shutting_down",
        }
    }

    /// What this failure says, for the clone to `vmid` (if one was made).
    pub fn verdict(&self, vmid: Option<Vmid>) -> Verdict {
        match self {
            Self::Pve { step, error } => {
                if let Some(vmid) = vmid
                    && matches!(step, Step::CloneRequest | Step::Clone)
                    && super::quarantine::tied_to_vmid(error, vmid)
                {
                    return Verdict::VmidTied(vmid);
                }
                if error.is_retryable() {
                    return Verdict::Neutral;
                }
                Verdict::Counts { cause: Cause { step: *step, class: kind_class(error.kind()) } }
            }
            Self::NoAddress { api_unavailable: true, .. } => Verdict::Neutral,
            Self::NoAddress { .. } => Verdict::Counts { cause: Cause { step: Step::Boot, class: "no address" } },
            Self::NoFreeVmid { .. } => {
                Verdict::Counts { cause: Cause { step: Step::AllocateVmid, class: "none free" } }
            }
            Self::PortClosed { .. } => Verdict::Counts { cause: Cause { step: Step::Boot, class: "port closed" } },
            // Increase reports it as a shortfall; it says nothing about the template.
            Self::PoolExhausted { .. } | Self::NoRoom(_) | Self::RemovalRequested | Self::ShuttingDown => {
                Verdict::Neutral
            }
        }
    }
}

/// A short, bounded name for an error kind (a cause of the breaker, a log field).
pub fn kind_class(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound { .. } => "not found",
        ErrorKind::Locked { .. } => "locked",
        ErrorKind::AlreadyExists { .. } => "already exists",
        ErrorKind::PermissionDenied { .. } => "permission denied",
        ErrorKind::Unauthorized { .. } => "unauthorized",
        ErrorKind::InvalidParameter { .. } => "invalid parameter",
        ErrorKind::Transient { .. } => "unavailable",
        ErrorKind::TaskFailed { .. } => "task failed",
        ErrorKind::TaskTimeout { .. } => "task timed out",
        ErrorKind::Api { .. } => "error answer",
        ErrorKind::InvalidResponse { .. } => "invalid answer",
        ErrorKind::Tls { .. } => "TLS",
        ErrorKind::Setup { .. } => "setup",
    }
}

/// [`kind_class`] as a metric label.
pub fn kind_label(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound { .. } => "not_found",
        ErrorKind::Locked { .. } => "locked",
        ErrorKind::AlreadyExists { .. } => "already_exists",
        ErrorKind::PermissionDenied { .. } => "permission_denied",
        ErrorKind::Unauthorized { .. } => "unauthorized",
        ErrorKind::InvalidParameter { .. } => "invalid_parameter",
        ErrorKind::Transient { .. } => "unavailable",
        ErrorKind::TaskFailed { .. } => "task_failed",
        ErrorKind::TaskTimeout { .. } => "task_timeout",
        ErrorKind::Api { .. } => "error_answer",
        ErrorKind::InvalidResponse { .. } => "invalid_answer",
        ErrorKind::Tls { .. } => "tls",
        ErrorKind::Setup { .. } => "setup",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pve::Upid;

    fn task_failed(exit_status: &str) -> PveError {
        let upid: Upid = "UPID:pve1:0000A1B2:0001C3D4:6553F000:qmclone:9000:root@pam:".parse().unwrap();
        PveError::new(
            "complete task qmclone of VM 9000",
            ErrorKind::TaskFailed { upid, exit_status: exit_status.into(), log_tail: Vec::new() },
        )
    }

    #[test]
    fn verdicts() {
        let collision = ProvisionError::pve(
            Step::Clone,
            task_failed("clone failed: zfs error: cannot create 'rpool/data/vm-104-disk-0': dataset already exists"),
        );
        assert_eq!(collision.verdict(Some(Vmid(104))), Verdict::VmidTied(Vmid(104)));

        let broken = ProvisionError::pve(Step::Clone, task_failed("clone failed: storage 'local-lvm' is full"));
        let verdict = broken.verdict(Some(Vmid(104)));
        assert_eq!(verdict, Verdict::Counts { cause: Cause { step: Step::Clone, class: "task failed" } });
        let Verdict::Counts { cause } = verdict else { unreachable!() };
        assert_eq!(cause.to_string(), "clone: task failed");

        let outage = ProvisionError::pve(
            Step::Start,
            PveError::new("start VM 104", ErrorKind::Transient { message: "503".into() }),
        );
        assert_eq!(outage.verdict(Some(Vmid(104))), Verdict::Neutral);

        let no_address = ProvisionError::NoAddress { waited_secs: 300, last: "no IPv4".into(), api_unavailable: false };
        assert_eq!(
            no_address.verdict(Some(Vmid(104))),
            Verdict::Counts { cause: Cause { step: Step::Boot, class: "no address" } }
        );
        let during_outage = ProvisionError::NoAddress { waited_secs: 300, last: "503".into(), api_unavailable: true };
        assert_eq!(during_outage.verdict(Some(Vmid(104))), Verdict::Neutral);
        assert_eq!(ProvisionError::RemovalRequested.verdict(Some(Vmid(104))), Verdict::Neutral);
    }
}
