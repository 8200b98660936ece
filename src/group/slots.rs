//! Bounded pressure on Proxmox: how many clones (`max_parallel_clones*`)
//! and starts (`max_parallel_starts*`) run at once, in total and per node.
//!
//! A slot counts against both bounds and is taken for both at once or not
//! at all, so an instance waiting for a busy node holds nothing another
//! instance could use. Waiting ends when the engine is cancelled (Shutdown
//! never waits for a queued instance). The counts sit behind one private
//! leaf lock, taken and released inside each synchronous method.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Slots of one kind of work (clones or starts).
#[derive(Debug)]
pub struct SlotGate {
    total: Option<u32>,
    per_node: Option<u32>,
    counts: Mutex<Counts>,
    freed: Notify,
}

#[derive(Debug, Default)]
struct Counts {
    active: u32,
    active_per_node: HashMap<String, u32>,
    waiting: u32,
}

/// What a gate holds right now (for metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotUse {
    pub active: u32,
    pub waiting: u32,
}

/// A taken slot; dropping it frees it and wakes the waiters.
#[derive(Debug)]
pub struct Slot {
    gate: Arc<SlotGate>,
    node: String,
}

impl SlotGate {
    /// `None` bounds nothing.
    pub fn new(total: Option<u32>, per_node: Option<u32>) -> Arc<Self> {
        Arc::new(Self { total, per_node, counts: Mutex::new(Counts::default()), freed: Notify::new() })
    }

    /// A slot on `node` if both bounds have room now.
    pub fn try_acquire(self: &Arc<Self>, node: &str) -> Option<Slot> {
        let mut counts = self.counts.lock().unwrap();
        let on_node = counts.active_per_node.get(node).copied().unwrap_or(0);
        let room = self.total.is_none_or(|max| counts.active < max) && self.per_node.is_none_or(|max| on_node < max);
        if !room {
            return None;
        }
        counts.active += 1;
        *counts.active_per_node.entry(node.to_string()).or_default() += 1;
        Some(Slot { gate: self.clone(), node: node.to_string() })
    }

    /// Waits for a slot on `node`; `None` when `cancel` fires first.
    pub async fn acquire(self: &Arc<Self>, node: &str, cancel: &CancellationToken) -> Option<Slot> {
        if let Some(slot) = self.try_acquire(node) {
            return Some(slot);
        }
        let _waiting = Waiting::new(self);
        loop {
            // Registered before the check, so a slot freed in between still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(slot) = self.try_acquire(node) {
                return Some(slot);
            }
            tokio::select! {
                () = &mut freed => {}
                () = cancel.cancelled() => return None,
            }
        }
    }

    pub fn usage(&self) -> SlotUse {
        let counts = self.counts.lock().unwrap();
        SlotUse { active: counts.active, waiting: counts.waiting }
    }

    fn release(&self, node: &str) {
        {
            let mut counts = self.counts.lock().unwrap();
            counts.active = counts.active.saturating_sub(1);
            if let Some(on_node) = counts.active_per_node.get_mut(node) {
                *on_node = on_node.saturating_sub(1);
                if *on_node == 0 {
                    counts.active_per_node.remove(node);
                }
            }
        }
        // Every waiter looks again: the one freed may be on another node's bound.
        self.freed.notify_waiters();
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gate.release(&self.node);
    }
}

/// Counts one waiter for as long as it waits.
struct Waiting<'a>(&'a SlotGate);

impl<'a> Waiting<'a> {
    fn new(gate: &'a SlotGate) -> Self {
        gate.counts.lock().unwrap().waiting += 1;
        Self(gate)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().unwrap();
        counts.waiting = counts.waiting.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn both_bounds_hold_and_a_freed_slot_is_reused() {
        let gate = SlotGate::new(Some(3), Some(2));
        let a1 = gate.try_acquire("a").unwrap();
        let _a2 = gate.try_acquire("a").unwrap();
        assert!(gate.try_acquire("a").is_none(), "per node");
        let _b1 = gate.try_acquire("b").unwrap();
        assert!(gate.try_acquire("c").is_none(), "in total");
        drop(a1);
        assert!(gate.try_acquire("a").is_some());
        let unbounded = SlotGate::new(None, None);
        let slots: Vec<_> = (0..100).map(|_| unbounded.try_acquire("a").unwrap()).collect();
        assert_eq!(unbounded.usage().active, 100);
        drop(slots);
        assert_eq!(unbounded.usage(), SlotUse::default());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_freed_slot_and_cancel_ends_the_wait() {
        let gate = SlotGate::new(Some(1), None);
        let cancel = CancellationToken::new();
        let held = gate.try_acquire("a").unwrap();
        let waiter = {
            let (gate, cancel) = (gate.clone(), cancel.clone());
            tokio::spawn(async move { gate.acquire("b", &cancel).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(gate.usage(), SlotUse { active: 1, waiting: 1 });
        drop(held);
        assert!(waiter.await.unwrap());

        let held = gate.try_acquire("a").unwrap();
        let waiter = {
            let (gate, cancel) = (gate.clone(), cancel.clone());
            tokio::spawn(async move { gate.acquire("a", &cancel).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        cancel.cancel();
        assert!(!waiter.await.unwrap(), "cancelled, no slot");
        assert_eq!(gate.usage(), SlotUse { active: 1, waiting: 0 });
        drop(held);
    }
}
