//! VMIDs being reserved by this process. PVE's `/cluster/nextid` reserves
//! nothing: clone requests under way at once are all told the same lowest
//! free VMID, and all but one would lose the race and ask again, one round
//! trip after another. Each request instead claims a distinct candidate
//! here and holds it until the registry tracks its instance.

use std::collections::BTreeSet;
use std::sync::Mutex;

use crate::pve::Vmid;

/// The VMIDs claimed and not yet released (its own lock, taken and released
/// inside each method, never together with another engine lock).
#[derive(Debug, Default)]
pub(crate) struct VmidClaims(Mutex<BTreeSet<u32>>);

/// A claimed VMID; dropping it releases the claim. Release it only once the
/// registry tracks the instance on it (or the reservation failed): at every
/// moment a VMID handed out is claimed, tracked, or both.
#[derive(Debug)]
pub(crate) struct VmidClaim<'a> {
    claims: &'a VmidClaims,
    pub vmid: Vmid,
}

impl Drop for VmidClaim<'_> {
    fn drop(&mut self) {
        self.claims.0.lock().unwrap().remove(&self.vmid.0);
    }
}

impl VmidClaims {
    /// `vmid`, claimed, unless another request holds it.
    pub fn claim(&self, vmid: Vmid) -> Option<VmidClaim<'_>> {
        // Not `then_some`: a claim made and dropped for a VMID held by
        // another would release theirs.
        let claimed = self.0.lock().unwrap().insert(vmid.0);
        claimed.then(|| VmidClaim { claims: self, vmid })
    }

    /// The first VMID from `from` upwards that nobody holds, claimed, and
    /// `taken` by this process (tracked, quarantined) asked only once it is
    /// claimed: a VMID released after its instance was tracked then reads as
    /// taken, never as free.
    pub fn claim_from(&self, from: Vmid, taken: impl Fn(Vmid) -> bool) -> VmidClaim<'_> {
        let mut candidate = from;
        loop {
            if let Some(claim) = self.claim(candidate)
                && !taken(candidate)
            {
                return claim;
            }
            candidate = Vmid(candidate.0 + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_at_once_claim_distinct_vmids_and_a_release_frees_one() {
        let claims = VmidClaims::default();
        let first = claims.claim_from(Vmid(100), |_| false);
        let second = claims.claim_from(Vmid(100), |_| false);
        let third = claims.claim_from(Vmid(100), |vmid| vmid == Vmid(102));
        assert_eq!((first.vmid, second.vmid, third.vmid), (Vmid(100), Vmid(101), Vmid(103)));
        assert!(claims.claim(Vmid(101)).is_none(), "held by the second request");
        drop(second);
        assert_eq!(claims.claim(Vmid(101)).map(|claim| claim.vmid), Some(Vmid(101)));
        assert_eq!(claims.claim_from(Vmid(100), |_| false).vmid, Vmid(101), "released at the end of the line above");
    }

    #[test]
    fn a_vmid_whose_instance_was_tracked_before_its_release_is_never_handed_out_again() {
        let claims = VmidClaims::default();
        let tracked = std::cell::RefCell::new(BTreeSet::new());
        let claim = claims.claim_from(Vmid(100), |vmid| tracked.borrow().contains(&vmid.0));
        tracked.borrow_mut().insert(claim.vmid.0);
        drop(claim);
        let next = claims.claim_from(Vmid(100), |vmid| tracked.borrow().contains(&vmid.0));
        assert_eq!(next.vmid, Vmid(101));
    }
}
