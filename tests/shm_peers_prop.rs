//! Property test of the sans-IO peer table against a simple model: random operations with
//! fresh and stale handles; the table must agree with the model on every answer, never hand
//! a slot to two live peers, strictly increase a slot's generation on every reuse, and make
//! every slot reusable once its peers are drained.
#![cfg(unix)]

use std::collections::HashMap;

use actix_tether::shm::peers::{DisconnectReason, PeerError, PeerHandle, PeerTable, SlotState};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum M {
    Free,
    Reserved,
    Active(u32, u64),
    Draining(DisconnectReason),
}

#[derive(Debug, Clone)]
enum Op {
    Reserve,
    Activate(usize, u32),
    Cancel(usize),
    Disconnect(usize, DisconnectReason),
    Released(usize),
    Query(usize),
}

fn reason() -> impl Strategy<Value = DisconnectReason> {
    prop_oneof![
        Just(DisconnectReason::Clean),
        Just(DisconnectReason::Crashed),
        Just(DisconnectReason::Corrupt),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => Just(Op::Reserve),
        3 => (any::<usize>(), any::<u32>()).prop_map(|(h, p)| Op::Activate(h, p)),
        1 => any::<usize>().prop_map(Op::Cancel),
        2 => (any::<usize>(), reason()).prop_map(|(h, r)| Op::Disconnect(h, r)),
        2 => any::<usize>().prop_map(Op::Released),
        1 => any::<usize>().prop_map(Op::Query),
    ]
}

struct Model {
    /// Per slot: current generation and state.
    slots: Vec<(u64, M)>,
}

impl Model {
    fn live(&self, h: PeerHandle) -> Option<M> {
        let (g, s) = *self.slots.get(h.slot() as usize)?;
        (g == h.generation() && s != M::Free).then_some(s)
    }
}

fn to_model(s: SlotState) -> M {
    match s {
        SlotState::Free => M::Free,
        SlotState::Reserved => M::Reserved,
        SlotState::Active { pid, conn } => M::Active(pid, conn),
        SlotState::Draining { reason } => M::Draining(reason),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn peer_table_matches_model(max in 1usize..6, ops in prop::collection::vec(op(), 1..200)) {
        let mut t = PeerTable::new(max).unwrap();
        let mut m = Model { slots: vec![(0, M::Free); max] };
        // Every handle ever issued (most become stale), plus one forged handle per slot.
        let mut handles: Vec<PeerHandle> = Vec::new();
        let mut last_gen: HashMap<u32, u64> = HashMap::new();
        let mut conn = 0u64;

        for op in ops {
            let pick = |i: usize, hs: &Vec<PeerHandle>| (!hs.is_empty()).then(|| hs[i % hs.len()]);
            match op {
                Op::Reserve => {
                    let free_in_model = m.slots.iter().filter(|s| s.1 == M::Free).count();
                    match t.reserve() {
                        Ok(h) => {
                            prop_assert!(free_in_model > 0);
                            let slot = h.slot() as usize;
                            prop_assert!(slot < max);
                            prop_assert_eq!(m.slots[slot].1, M::Free, "reserved a non-free slot");
                            // Generations strictly increase on every reuse of a slot.
                            if let Some(&g) = last_gen.get(&h.slot()) {
                                prop_assert!(h.generation() > g);
                            }
                            last_gen.insert(h.slot(), h.generation());
                            m.slots[slot] = (h.generation(), M::Reserved);
                            handles.push(h);
                        }
                        Err(PeerError::Full { max_guests }) => {
                            prop_assert_eq!(max_guests, max);
                            prop_assert_eq!(free_in_model, 0);
                        }
                        Err(e) => prop_assert!(false, "unexpected {e}"),
                    }
                }
                Op::Activate(i, pid) => {
                    let Some(h) = pick(i, &handles) else { continue };
                    conn += 1;
                    let r = t.activate(h, pid, conn);
                    match m.live(h) {
                        Some(M::Reserved) => {
                            prop_assert!(r.is_ok());
                            m.slots[h.slot() as usize].1 = M::Active(pid, conn);
                        }
                        Some(_) => prop_assert!(
                            matches!(r, Err(PeerError::WrongState { .. })),
                            "expected WrongState, got {:?}", r
                        ),
                        None => prop_assert_eq!(r, Err(PeerError::Stale { handle: h })),
                    }
                }
                Op::Cancel(i) => {
                    let Some(h) = pick(i, &handles) else { continue };
                    let r = t.cancel(h);
                    match m.live(h) {
                        Some(M::Reserved) => {
                            prop_assert!(r.is_ok());
                            m.slots[h.slot() as usize].1 = M::Free;
                        }
                        Some(_) => prop_assert!(
                            matches!(r, Err(PeerError::WrongState { .. })),
                            "expected WrongState, got {:?}", r
                        ),
                        None => prop_assert_eq!(r, Err(PeerError::Stale { handle: h })),
                    }
                }
                Op::Disconnect(i, reason) => {
                    let Some(h) = pick(i, &handles) else { continue };
                    let r = t.on_disconnect(h, reason);
                    match m.live(h) {
                        Some(M::Reserved | M::Active(..)) => {
                            prop_assert!(r.is_ok());
                            m.slots[h.slot() as usize].1 = M::Draining(reason);
                        }
                        Some(_) => prop_assert!(
                            matches!(r, Err(PeerError::WrongState { .. })),
                            "expected WrongState, got {:?}", r
                        ),
                        None => prop_assert_eq!(r, Err(PeerError::Stale { handle: h })),
                    }
                }
                Op::Released(i) => {
                    let Some(h) = pick(i, &handles) else { continue };
                    let r = t.on_buffers_released(h);
                    match m.live(h) {
                        Some(M::Draining(_)) => {
                            prop_assert!(r.is_ok());
                            m.slots[h.slot() as usize].1 = M::Free;
                        }
                        Some(_) => prop_assert!(
                            matches!(r, Err(PeerError::WrongState { .. })),
                            "expected WrongState, got {:?}", r
                        ),
                        None => prop_assert_eq!(r, Err(PeerError::Stale { handle: h })),
                    }
                }
                Op::Query(i) => {
                    let Some(h) = pick(i, &handles) else { continue };
                    match m.live(h) {
                        Some(s) => prop_assert_eq!(t.state(h).map(to_model), Ok(s)),
                        None => prop_assert_eq!(t.state(h), Err(PeerError::Stale { handle: h })),
                    }
                }
            }

            // No slot is held by two live handles; the table's view equals the model's.
            let mut live_per_slot = vec![0usize; max];
            for h in &handles {
                if t.state(*h).is_ok() {
                    live_per_slot[h.slot() as usize] += 1;
                }
            }
            prop_assert!(live_per_slot.iter().all(|&n| n <= 1), "a slot has two live peers");
            for (slot, (g, s)) in m.slots.iter().enumerate() {
                match t.get(slot as u32) {
                    None => prop_assert_eq!(*s, M::Free),
                    Some((h, st)) => {
                        prop_assert_eq!(h.generation(), *g);
                        prop_assert_eq!(to_model(st), *s);
                    }
                }
            }
            prop_assert_eq!(
                t.free_count(),
                m.slots.iter().filter(|s| s.1 == M::Free).count()
            );
        }

        // Every slot becomes reusable: drain whatever is live, then all slots can be taken.
        let live: Vec<_> = t.iter().collect();
        for (h, s) in live {
            match s {
                SlotState::Reserved => t.cancel(h).unwrap(),
                SlotState::Active { .. } => {
                    t.on_disconnect(h, DisconnectReason::Clean).unwrap();
                    t.on_buffers_released(h).unwrap();
                }
                SlotState::Draining { .. } => t.on_buffers_released(h).unwrap(),
                SlotState::Free => prop_assert!(false, "iter yielded a free slot"),
            }
        }
        prop_assert_eq!(t.free_count(), max);
        let mut slots: Vec<u32> = (0..max).map(|_| t.reserve().unwrap().slot()).collect();
        slots.sort_unstable();
        prop_assert_eq!(slots, (0..max as u32).collect::<Vec<_>>());
        let r = t.reserve();
        prop_assert!(matches!(r, Err(PeerError::Full { .. })), "expected Full, got {:?}", r);
    }
}
