//! Where a DNS name's new address set goes among its backend slots.
//!
//! A name holds a fixed number of slots, each with an address or none. A new
//! set keeps every address that stays in the slot it has (so its pool,
//! health and latency stay with it), empties the slots of addresses that
//! left, and puts new addresses in empty slots, lowest first. The plan
//! depends only on the slots and the set, so every worker that starts from
//! the same slots and applies the same sets in the same order ends with the
//! same address in the same slot. No I/O, no allocation beyond the plan.

/// One step of a plan, by slot index within the name's slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotChange<A> {
    /// The slot's address stays; `weight` is its (possibly new) weight.
    Keep { slot: usize, weight: u32 },
    /// The slot's address left: the slot empties.
    Remove { slot: usize, addr: A },
    /// An empty slot takes a new address.
    Add { slot: usize, addr: A, weight: u32 },
}

/// The changes that turn `slots` into holders of `set` (distinct
/// addresses). Removals come first, so their slots are free for the
/// additions. Addresses of `set` beyond the free slots are left out, in
/// `set` order: the caller bounds `set` by the slot count.
pub fn plan<A: PartialEq + Copy>(slots: &[Option<A>], set: &[(A, u32)]) -> Vec<SlotChange<A>> {
    let mut changes = Vec::with_capacity(slots.len() + set.len());
    let mut free: Vec<bool> = slots.iter().map(Option::is_none).collect();
    for (slot, held) in slots.iter().enumerate() {
        let Some(addr) = *held else { continue };
        match set.iter().find(|(a, _)| *a == addr) {
            Some(&(_, weight)) => changes.push(SlotChange::Keep { slot, weight }),
            None => {
                changes.push(SlotChange::Remove { slot, addr });
                free[slot] = true;
            }
        }
    }
    for &(addr, weight) in set {
        if slots.contains(&Some(addr)) {
            continue;
        }
        let Some(slot) = free.iter().position(|&f| f) else {
            break;
        };
        free[slot] = false;
        changes.push(SlotChange::Add { slot, addr, weight });
    }
    changes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn apply(slots: &mut [Option<u8>], changes: &[SlotChange<u8>]) {
        for c in changes {
            match *c {
                SlotChange::Keep { .. } => {}
                SlotChange::Remove { slot, .. } => slots[slot] = None,
                SlotChange::Add { slot, addr, .. } => slots[slot] = Some(addr),
            }
        }
    }

    #[test]
    fn two_then_three_then_one() {
        let mut slots = [None; 4];
        let c = plan(&slots, &[(1, 1), (2, 1)]);
        apply(&mut slots, &c);
        assert_eq!(slots, [Some(1), Some(2), None, None]);
        let c = plan(&slots, &[(1, 1), (2, 5), (3, 1)]);
        assert_eq!(
            c,
            vec![
                SlotChange::Keep { slot: 0, weight: 1 },
                SlotChange::Keep { slot: 1, weight: 5 },
                SlotChange::Add {
                    slot: 2,
                    addr: 3,
                    weight: 1
                },
            ]
        );
        apply(&mut slots, &c);
        let c = plan(&slots, &[(3, 1)]);
        apply(&mut slots, &c);
        assert_eq!(slots, [None, None, Some(3), None]);
        // A slot freed by a removal is reused at once.
        let c = plan(&slots, &[(4, 1)]);
        apply(&mut slots, &c);
        assert_eq!(slots, [Some(4), None, None, None]);
    }

    proptest! {
        /// Whatever the slots held and the set says: every address that
        /// stays keeps its slot, the slots end up holding exactly the set
        /// (as much of it as fits), and nothing is held twice.
        #[test]
        fn a_plan_keeps_stayers_in_place_and_holds_the_set(
            start in proptest::collection::vec(proptest::option::of(0u8..12), 1..8),
            set in proptest::collection::btree_set(0u8..12, 0..10),
        ) {
            // Distinct addresses in the starting slots, as plans make them.
            let mut slots = start.clone();
            for i in 0..slots.len() {
                if slots[..i].contains(&slots[i]) { slots[i] = None; }
            }
            let set: Vec<(u8, u32)> = set.into_iter().map(|a| (a, 1)).collect();
            let before = slots.clone();
            let changes = plan(&before, &set);
            apply(&mut slots, &changes);
            for (i, held) in before.iter().enumerate() {
                if let Some(a) = held {
                    if set.iter().any(|(s, _)| s == a) {
                        prop_assert_eq!(slots[i], Some(*a));
                    }
                }
            }
            let held: Vec<u8> = slots.iter().flatten().copied().collect();
            let mut distinct = held.clone();
            distinct.sort_unstable();
            distinct.dedup();
            prop_assert_eq!(distinct.len(), held.len());
            prop_assert!(held.iter().all(|a| set.iter().any(|(s, _)| s == a)));
            prop_assert_eq!(held.len(), set.len().min(slots.len()));
        }
    }
}
