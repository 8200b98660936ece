//! The registry: the one owner of the engine's instance state. Every tracked
//! instance (its node, phase, addresses), the impostors and the foreign VMIDs
//! live behind one private lock, and a phase changes only through the
//! methods below, each named for the transition it makes and refusing any
//! other. [`allowed`] is the whole transition table.
//!
//! Every method is synchronous: the lock is never held across an `.await`,
//! and no other lock is taken while it is held (see the lock order on
//! `Engine`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::InstanceState;
use super::address::Addresses;
use super::naming::InstanceId;
use crate::pve::{VmResource, Vmid};

/// Where one instance is in its life, as the engine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Phase {
    /// Clone requested, configuring, starting or waiting for the agent.
    Creating,
    /// Ready: the agent reported an address.
    Running,
    Suspending,
    Suspended,
    Resuming,
    /// Removal requested or cleanup after a failure.
    Deleting,
    /// Found at start-up; being checked before it is adopted or cleaned up.
    Adopting,
}

impl Phase {
    #[cfg(test)]
    const ALL: [Phase; 7] = [
        Phase::Creating,
        Phase::Running,
        Phase::Suspending,
        Phase::Suspended,
        Phase::Resuming,
        Phase::Deleting,
        Phase::Adopting,
    ];

    /// Its name in metrics and status output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Creating => "creating",
            Phase::Running => "running",
            Phase::Suspending => "suspending",
            Phase::Suspended => "suspended",
            Phase::Resuming => "resuming",
            Phase::Deleting => "deleting",
            Phase::Adopting => "adopting",
        }
    }

    /// The state fleeting sees.
    pub fn state(self) -> InstanceState {
        match self {
            Phase::Creating | Phase::Adopting => InstanceState::Creating,
            Phase::Running => InstanceState::Running,
            Phase::Suspending => InstanceState::Suspending,
            Phase::Suspended => InstanceState::Suspended,
            Phase::Resuming => InstanceState::Resuming,
            Phase::Deleting => InstanceState::Deleting,
        }
    }
}

/// The transition table: whether an instance may go from `from` to `to`.
/// Entering the registry (as Creating, Adopting or Deleting) and leaving it
/// (`forget`) are not transitions.
pub(crate) fn allowed(from: Phase, to: Phase) -> bool {
    use Phase::*;
    matches!(
        (from, to),
        // Provisioned, or adopted after a restart.
        (Creating | Adopting, Running)
            // Suspend: requested, done, or failed.
            | (Running, Suspending)
            | (Suspending, Suspended | Running)
            // Resume: requested, done, or failed.
            | (Suspended, Resuming)
            | (Resuming, Running | Suspended)
            // Removal, from any live phase.
            | (Creating | Running | Suspending | Suspended | Resuming | Adopting, Deleting)
            // A deletion that gave up: Runner may ask again.
            | (Deleting, Running)
    )
}

/// Suspend or resume, the two power actions fleeting asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerAction {
    Suspend,
    Resume,
}

impl PowerAction {
    pub fn verb(self) -> &'static str {
        match self {
            PowerAction::Suspend => "suspend",
            PowerAction::Resume => "resume",
        }
    }

    /// The phases before, during and after the action.
    fn phases(self) -> (Phase, Phase, Phase) {
        match self {
            PowerAction::Suspend => (Phase::Running, Phase::Suspending, Phase::Suspended),
            PowerAction::Resume => (Phase::Suspended, Phase::Resuming, Phase::Running),
        }
    }
}

/// A copy of one tracked instance.
#[derive(Debug, Clone)]
pub(crate) struct Tracked {
    pub node: String,
    pub phase: Phase,
    pub addresses: Addresses,
    /// When the engine stopped seeing the VM in `/cluster/resources`
    /// while it expected it (used to forget finished deletions).
    pub missing_since: Option<Instant>,
    /// When it entered its phase (how long an instance is stuck creating).
    pub phase_since: Instant,
}

impl Tracked {
    fn new(node: &str, phase: Phase) -> Self {
        Self {
            node: node.to_string(),
            phase,
            addresses: Addresses::default(),
            missing_since: None,
            phase_since: Instant::now(),
        }
    }

    /// Moves to `to` when the phase is one of `from` and the table allows it.
    fn step(&mut self, from: &[Phase], to: Phase) -> bool {
        if from.contains(&self.phase) && allowed(self.phase, to) {
            self.phase = to;
            self.phase_since = Instant::now();
            true
        } else {
            false
        }
    }
}

/// What `begin_removal` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Removal {
    /// The instance is now Deleting: the caller runs the deletion.
    Started,
    /// A deletion is already under way.
    AlreadyDeleting,
    /// The registry does not track it.
    Unknown,
}

/// Why `begin_power` refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PowerRefused {
    Unknown,
    /// The instance is in this phase, not the one the action starts from.
    WrongPhase(Phase),
}

/// How one `/cluster/resources` listing was merged: the states for Runner,
/// and the VMs to look at in the background.
#[derive(Debug, Default)]
pub(crate) struct Reconciled {
    pub states: Vec<(String, InstanceState)>,
    /// Our tags, not tracked yet: now Adopting, to be checked.
    pub adopt: Vec<(InstanceId, VmResource)>,
    /// Untagged VMs in the pool not judged yet.
    pub check_foreign: Vec<VmResource>,
}

/// Counts of the registry at one moment (see [`Registry::census`]).
#[derive(Debug, Default, Clone)]
pub(crate) struct Census {
    pub by_phase_and_node: BTreeMap<(Phase, String), usize>,
    /// The longest time an instance has been in each phase.
    pub oldest_in_phase: HashMap<Phase, Duration>,
    pub impostors: usize,
    pub foreign: usize,
}

/// How long a VM under deletion may be absent from the listing before it
/// counts as gone (the listing itself can lag behind).
const GONE_AFTER: Duration = Duration::from_secs(2);
/// How long a ready instance may be missing from the listing (e.g. deleted
/// by hand) before the engine forgets it.
const VANISHED_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    instances: BTreeMap<InstanceId, Tracked>,
    /// VMs in the pool without our tag whose description says they are not
    /// ours: checked once, not on every Update.
    foreign: HashSet<Vmid>,
    /// VMs with our tags whose description names another instance (a copy
    /// made by hand, or another tool's): checked once, then ignored.
    impostors: HashSet<InstanceId>,
}

/// The owner of every tracked instance, impostor and foreign VMID.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    state: Mutex<State>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    // --- Entering and leaving -------------------------------------------

    /// A clone is about to be requested for `id` on `node`.
    pub fn track_creating(&self, id: InstanceId, node: &str) {
        self.lock().instances.insert(id, Tracked::new(node, Phase::Creating));
    }

    /// A VM found (by the takeover) to be checked before it is adopted.
    pub fn track_adopting(&self, id: InstanceId, node: &str) {
        self.lock().instances.insert(id, Tracked::new(node, Phase::Adopting));
    }

    /// A VM found to be ours and to be deleted; `false` (and nothing
    /// changes) when `id` is already tracked.
    pub fn track_deleting(&self, id: InstanceId, node: &str) -> bool {
        let mut state = self.lock();
        if state.instances.contains_key(&id) {
            return false;
        }
        state.instances.insert(id, Tracked::new(node, Phase::Deleting));
        true
    }

    /// Stops tracking `id` (its clone was refused, its deletion found it is
    /// not ours, or a claim failed).
    pub fn forget(&self, id: &InstanceId) {
        self.lock().instances.remove(id);
    }

    // --- Transitions ----------------------------------------------------

    /// Creating → Running with its addresses; the node when it happened,
    /// `None` when the instance is no longer Creating (removal was requested).
    pub fn provisioned(&self, id: &InstanceId, addresses: Addresses) -> Option<String> {
        let mut state = self.lock();
        let tracked = state.instances.get_mut(id)?;
        if !tracked.step(&[Phase::Creating], Phase::Running) {
            return None;
        }
        tracked.addresses = addresses;
        Some(tracked.node.clone())
    }

    /// Adopting → Running with its addresses; whether it happened.
    pub fn adopted(&self, id: &InstanceId, addresses: Addresses) -> bool {
        let mut state = self.lock();
        let Some(tracked) = state.instances.get_mut(id) else { return false };
        if !tracked.step(&[Phase::Adopting], Phase::Running) {
            return false;
        }
        tracked.addresses = addresses;
        true
    }

    /// Adopting → Deleting: a found VM that is not ready; whether it happened.
    pub fn leftover(&self, id: &InstanceId) -> bool {
        self.lock().instances.get_mut(id).is_some_and(|tracked| tracked.step(&[Phase::Adopting], Phase::Deleting))
    }

    /// A found VM that could not be checked yet: forgotten if still
    /// Adopting, so the next Update finds it again.
    pub fn adoption_undecided(&self, id: &InstanceId) {
        let mut state = self.lock();
        if state.instances.get(id).is_some_and(|tracked| tracked.phase == Phase::Adopting) {
            state.instances.remove(id);
        }
    }

    /// A VM with our tags but another instance's marker: forgotten and
    /// ignored until its VMID leaves the listing.
    pub fn impostor(&self, id: InstanceId) {
        let mut state = self.lock();
        state.instances.remove(&id);
        state.impostors.insert(id);
    }

    /// Any live phase → Deleting.
    pub fn begin_removal(&self, id: &InstanceId) -> Removal {
        let mut state = self.lock();
        let Some(tracked) = state.instances.get_mut(id) else { return Removal::Unknown };
        let live =
            [Phase::Creating, Phase::Running, Phase::Suspending, Phase::Suspended, Phase::Resuming, Phase::Adopting];
        if tracked.step(&live, Phase::Deleting) { Removal::Started } else { Removal::AlreadyDeleting }
    }

    /// Deleting → Running: the deletion gave up, so Runner can ask again.
    pub fn removal_failed(&self, id: &InstanceId) {
        if let Some(tracked) = self.lock().instances.get_mut(id) {
            tracked.step(&[Phase::Deleting], Phase::Running);
        }
    }

    /// Running → Suspending or Suspended → Resuming; the node to ask.
    pub fn begin_power(&self, id: &InstanceId, action: PowerAction) -> Result<String, PowerRefused> {
        let (from, during, _) = action.phases();
        let mut state = self.lock();
        let tracked = state.instances.get_mut(id).ok_or(PowerRefused::Unknown)?;
        if !tracked.step(&[from], during) {
            return Err(PowerRefused::WrongPhase(tracked.phase));
        }
        Ok(tracked.node.clone())
    }

    /// Back from Suspending or Resuming when Proxmox refused the request;
    /// the addresses are kept.
    pub fn power_refused(&self, id: &InstanceId, action: PowerAction) {
        let (from, during, _) = action.phases();
        if let Some(tracked) = self.lock().instances.get_mut(id) {
            tracked.step(&[during], from);
        }
    }

    /// The power task ended: on to Suspended or Running when it `succeeded`,
    /// back where it started otherwise. Addresses are not kept across
    /// suspend/resume (a resumed instance keeps the ones it had).
    pub fn end_power(&self, id: &InstanceId, action: PowerAction, succeeded: bool) {
        let (from, during, to) = action.phases();
        if let Some(tracked) = self.lock().instances.get_mut(id) {
            let target = if succeeded { to } else { from };
            if tracked.step(&[during], target) && !(succeeded && to == Phase::Running) {
                tracked.addresses = Addresses::default();
            }
        }
    }

    /// The VM of `id` is on `node` now.
    pub fn moved(&self, id: &InstanceId, node: String) {
        if let Some(tracked) = self.lock().instances.get_mut(id) {
            tracked.node = node;
        }
    }

    // --- Reading --------------------------------------------------------

    /// A copy of what is known about `id`.
    pub fn get(&self, id: &InstanceId) -> Option<Tracked> {
        self.lock().instances.get(id).cloned()
    }

    pub fn node_of(&self, id: &InstanceId) -> Option<String> {
        self.lock().instances.get(id).map(|tracked| tracked.node.clone())
    }

    pub fn phase_of(&self, id: &InstanceId) -> Option<Phase> {
        self.lock().instances.get(id).map(|tracked| tracked.phase)
    }

    /// Every tracked instance, whatever its phase.
    pub fn tracked_ids(&self) -> Vec<InstanceId> {
        self.lock().instances.keys().cloned().collect()
    }

    /// Whether an instance on `vmid` is tracked.
    pub fn tracks_vmid(&self, vmid: Vmid) -> bool {
        self.lock().instances.keys().any(|id| id.vmid == vmid)
    }

    /// Instances not being deleted.
    pub fn count_active(&self) -> usize {
        self.lock().instances.values().filter(|t| t.phase != Phase::Deleting).count()
    }

    /// How many instances are in each phase on each node, and how long the
    /// oldest has been in its phase: what the metrics show.
    pub fn census(&self) -> Census {
        let now = Instant::now();
        let mut census = Census::default();
        let state = self.lock();
        for tracked in state.instances.values() {
            let entry = census.by_phase_and_node.entry((tracked.phase, tracked.node.clone())).or_insert(0);
            *entry += 1;
            let age = now.saturating_duration_since(tracked.phase_since);
            let oldest = census.oldest_in_phase.entry(tracked.phase).or_insert(age);
            *oldest = (*oldest).max(age);
        }
        census.impostors = state.impostors.len();
        census.foreign = state.foreign.len();
        census
    }

    /// Remembers an untagged VM of the pool that is not ours.
    pub fn mark_foreign(&self, vmid: Vmid) {
        self.lock().foreign.insert(vmid);
    }

    // --- Update ---------------------------------------------------------

    /// Merges one `/cluster/resources` listing: tracked VMs get their node,
    /// VMs with our tags not tracked yet become Adopting, untagged pool VMs
    /// not judged yet are returned for a check, and VMs gone from the
    /// listing are forgotten after a grace. `owned` reads our tags;
    /// `untagged_candidate` says whether an untagged VM is one that may be
    /// ours (in our pool, not the template). Neither may take a lock.
    pub fn reconcile(
        &self,
        vms: &[VmResource],
        now: Instant,
        owned: impl Fn(&VmResource) -> Option<InstanceId>,
        untagged_candidate: impl Fn(&VmResource) -> bool,
    ) -> Reconciled {
        let mut reconciled = Reconciled::default();
        let mut state = self.lock();
        let State { instances, foreign, impostors } = &mut *state;
        let mut seen = HashSet::new();
        for vm in vms {
            match owned(vm).filter(|id| !impostors.contains(id)) {
                Some(id) => {
                    seen.insert(id.clone());
                    match instances.get_mut(&id) {
                        Some(tracked) => {
                            tracked.node.clone_from(&vm.node);
                            tracked.missing_since = None;
                        }
                        None => {
                            instances.insert(id.clone(), Tracked::new(&vm.node, Phase::Adopting));
                            reconciled.adopt.push((id, vm.clone()));
                        }
                    }
                }
                None => {
                    // An untagged VM in our pool: a crash between clone and
                    // tagging leaves one; its description decides.
                    let tracked = instances.keys().any(|id| id.vmid == vm.vmid);
                    if untagged_candidate(vm) && !tracked && !foreign.contains(&vm.vmid) {
                        reconciled.check_foreign.push(vm.clone());
                    }
                }
            }
        }
        // A deletion finishes when the VM has been gone for a moment; a VM
        // that vanished otherwise (removed by hand) is forgotten after a
        // longer grace, so Runner stops seeing it. VMs being created are
        // not listed until they are tagged, so they are kept.
        instances.retain(|id, tracked| {
            if seen.contains(id) {
                return true;
            }
            let grace = match tracked.phase {
                Phase::Creating => return true,
                Phase::Deleting => GONE_AFTER,
                _ => VANISHED_AFTER,
            };
            let since = *tracked.missing_since.get_or_insert(now);
            now.duration_since(since) < grace
        });
        // Forget foreign VMs that are gone, so a recycled VMID is judged afresh.
        let listed: HashSet<Vmid> = vms.iter().map(|vm| vm.vmid).collect();
        foreign.retain(|vmid| listed.contains(vmid));
        impostors.retain(|id| listed.contains(&id.vmid));
        // VMs found but not yet verified stay hidden: Runner must not
        // count or remove what may turn out not to be ours.
        reconciled.states = instances
            .iter()
            .filter(|(_, tracked)| tracked.phase != Phase::Adopting)
            .map(|(id, tracked)| (id.to_string(), tracked.phase.state()))
            .collect();
        reconciled
    }
}

#[cfg(test)]
mod tests {
    use super::Phase::*;
    use super::*;

    #[test]
    fn the_transition_table_in_full() {
        let expected = [
            (Creating, Running),
            (Creating, Deleting),
            (Running, Suspending),
            (Running, Deleting),
            (Suspending, Suspended),
            (Suspending, Running),
            (Suspending, Deleting),
            (Suspended, Resuming),
            (Suspended, Deleting),
            (Resuming, Running),
            (Resuming, Suspended),
            (Resuming, Deleting),
            (Deleting, Running),
            (Adopting, Running),
            (Adopting, Deleting),
        ];
        for from in Phase::ALL {
            for to in Phase::ALL {
                assert_eq!(allowed(from, to), expected.contains(&(from, to)), "{from:?} -> {to:?}");
            }
        }
    }

    fn id(vmid: u32) -> InstanceId {
        InstanceId::generate(Vmid(vmid))
    }

    #[test]
    fn provisioned_only_from_creating() {
        let registry = Registry::default();
        let a = id(100);
        registry.track_creating(a.clone(), "pve1");
        assert_eq!(registry.begin_removal(&a), Removal::Started);
        assert_eq!(registry.provisioned(&a, Addresses::default()), None);
        assert_eq!(registry.phase_of(&a), Some(Deleting));
        assert_eq!(registry.begin_removal(&a), Removal::AlreadyDeleting);
        registry.removal_failed(&a);
        assert_eq!(registry.phase_of(&a), Some(Running));
        assert_eq!(registry.begin_removal(&id(101)), Removal::Unknown);
    }

    #[test]
    fn power_round_trip_and_refusals() {
        let registry = Registry::default();
        let a = id(100);
        registry.track_creating(a.clone(), "pve1");
        assert_eq!(registry.begin_power(&a, PowerAction::Suspend), Err(PowerRefused::WrongPhase(Creating)));
        assert_eq!(registry.provisioned(&a, Addresses::default()).as_deref(), Some("pve1"));
        assert_eq!(registry.begin_power(&a, PowerAction::Resume), Err(PowerRefused::WrongPhase(Running)));
        assert_eq!(registry.begin_power(&a, PowerAction::Suspend).as_deref(), Ok("pve1"));
        registry.end_power(&a, PowerAction::Suspend, true);
        assert_eq!(registry.phase_of(&a), Some(Suspended));
        assert_eq!(registry.begin_power(&a, PowerAction::Resume).as_deref(), Ok("pve1"));
        registry.power_refused(&a, PowerAction::Resume);
        assert_eq!(registry.phase_of(&a), Some(Suspended));
        // A removal requested while the power task runs is not undone by it.
        registry.begin_power(&a, PowerAction::Resume).unwrap();
        assert_eq!(registry.begin_removal(&a), Removal::Started);
        registry.end_power(&a, PowerAction::Resume, true);
        assert_eq!(registry.phase_of(&a), Some(Deleting));
    }

    #[test]
    fn adoption_transitions() {
        let registry = Registry::default();
        let (a, b, c) = (id(100), id(101), id(102));
        registry.track_adopting(a.clone(), "pve1");
        registry.track_adopting(b.clone(), "pve1");
        registry.track_adopting(c.clone(), "pve1");
        assert!(registry.adopted(&a, Addresses::default()));
        assert!(!registry.adopted(&a, Addresses::default()));
        assert!(!registry.leftover(&a));
        assert!(registry.leftover(&b));
        assert!(!registry.track_deleting(b.clone(), "pve2"));
        registry.adoption_undecided(&a);
        assert_eq!(registry.phase_of(&a), Some(Running));
        registry.adoption_undecided(&c);
        assert_eq!(registry.phase_of(&c), None);
        assert_eq!(registry.count_active(), 1);
    }
}
