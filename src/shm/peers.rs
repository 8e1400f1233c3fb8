//! The hub's peer table: which guest occupies which peer slot. Sans-IO: no system calls, no
//! clock, no runtime; the hub's IO layer drives it and acts on its answers.
//!
//! # Slot life cycle
//!
//! ```text
//!            reserve()              activate(pid, conn)
//!   Free ──────────────► Reserved ─────────────────────► Active
//!    ▲                    │    │                            │
//!    │      cancel()      │    │ on_disconnect(reason)      │ on_disconnect(reason)
//!    ├────────────────────┘    ▼                            ▼
//!    │               Draining { reason } ◄─────────────────┘
//!    │                          │
//!    └──────────────────────────┘ on_buffers_released()
//! ```
//!
//! * **Reserved**: a joining guest (handshake in progress, or a spawned child that has not
//!   connected yet). [`cancel`](PeerTable::cancel) frees it at once: nothing was exchanged.
//! * **Active**: the guest is attached (its process id and the hub's connection id).
//! * **Draining**: the guest is gone; the slot's rings and slab may still be pinned by
//!   buffers (`Bytes`) the hub's application holds. The IO layer calls
//!   [`on_buffers_released`](PeerTable::on_buffers_released) once every such buffer is
//!   dropped and the shared state is reset; only then is the slot reused.
//!
//! # Handles and generations
//!
//! Every reservation gets a [`PeerHandle`]: the slot index and a generation number taken from
//! a table-wide counter, so generations are unique and strictly increase on every reuse of a
//! slot. Every operation takes the handle and checks the generation: a stale handle (its
//! occupancy ended, the slot may have been reused) gets [`PeerError::Stale`] and can never act
//! on the slot's new occupant.
//!
//! Free slots are handed out least-recently-freed first, so a slot is reused as late as
//! possible.

use std::collections::VecDeque;
use std::fmt;

/// Largest supported `max_guests`.
pub const MAX_GUESTS: usize = 4096;

/// Why a guest left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisconnectReason {
    /// It closed its link or said goodbye.
    Clean,
    /// Its connection ended without a goodbye (the process died or dropped everything).
    Crashed,
    /// It misbehaved: corrupted its shared state, or broke the protocol on a socket (a
    /// datagram on its bootstrap connection after the handshake, descriptors sent down a
    /// doorbell or the connection); the hub failed its link.
    Corrupt,
}

/// Identifies one occupancy of one peer slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerHandle {
    slot: u32,
    generation: u64,
}

impl PeerHandle {
    /// The slot index (`0..max_guests`): the guest's peer id.
    pub fn slot(&self) -> u32 {
        self.slot
    }

    /// The generation of this occupancy (unique in the table, never 0).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl fmt::Display for PeerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "peer {}#{}", self.slot, self.generation)
    }
}

/// The state of a peer slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// Nobody: the slot can be reserved.
    Free,
    /// A guest is joining.
    Reserved,
    /// A guest is attached.
    Active {
        /// Its process id.
        pid: u32,
        /// The hub's id for its connection.
        conn: u64,
    },
    /// The guest is gone; waiting for the hub application's buffers to be released.
    Draining {
        /// Why it left.
        reason: DisconnectReason,
    },
}

impl SlotState {
    fn name(&self) -> &'static str {
        match self {
            SlotState::Free => "free",
            SlotState::Reserved => "reserved",
            SlotState::Active { .. } => "active",
            SlotState::Draining { .. } => "draining",
        }
    }
}

/// Errors of the peer table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// `max_guests` is 0 or above [`MAX_GUESTS`].
    #[error("max_guests must be in 1..={MAX_GUESTS}, got {0}")]
    InvalidMaxGuests(usize),
    /// Every slot is reserved, active or draining.
    #[error("all {max_guests} peer slots are in use")]
    Full {
        /// The table's size.
        max_guests: usize,
    },
    /// The handle's occupancy is over (released or cancelled; the slot may have been reused),
    /// or the handle never came from this table.
    #[error("{handle} is stale")]
    Stale {
        /// The handle used.
        handle: PeerHandle,
    },
    /// The operation is not allowed in the slot's current state.
    #[error("cannot {op} {handle}: it is {state}")]
    WrongState {
        /// The handle used.
        handle: PeerHandle,
        /// What was attempted.
        op: &'static str,
        /// The slot's current state.
        state: &'static str,
    },
}

#[derive(Debug, Clone)]
struct Slot {
    /// Generation of the current (or last) occupancy; 0 = never occupied.
    generation: u64,
    state: SlotState,
}

/// The peer table. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct PeerTable {
    slots: Vec<Slot>,
    /// Free slots, least recently freed first.
    free: VecDeque<u32>,
    last_generation: u64,
}

impl PeerTable {
    /// A table of `max_guests` free slots (`1..=`[`MAX_GUESTS`]).
    pub fn new(max_guests: usize) -> Result<PeerTable, PeerError> {
        if max_guests == 0 || max_guests > MAX_GUESTS {
            return Err(PeerError::InvalidMaxGuests(max_guests));
        }
        Ok(PeerTable {
            slots: vec![
                Slot {
                    generation: 0,
                    state: SlotState::Free,
                };
                max_guests
            ],
            free: (0..max_guests as u32).collect(),
            last_generation: 0,
        })
    }

    /// The number of slots.
    pub fn max_guests(&self) -> usize {
        self.slots.len()
    }

    /// The number of free slots.
    pub fn free_count(&self) -> usize {
        self.free.len()
    }

    /// Takes a free slot for a joining guest: `Free → Reserved`, with a new generation.
    /// [`PeerError::Full`] if there is none (draining slots are not free).
    pub fn reserve(&mut self) -> Result<PeerHandle, PeerError> {
        let slot = self.free.pop_front().ok_or(PeerError::Full {
            max_guests: self.slots.len(),
        })?;
        self.last_generation += 1;
        let s = &mut self.slots[slot as usize];
        debug_assert_eq!(s.state, SlotState::Free);
        s.generation = self.last_generation;
        s.state = SlotState::Reserved;
        Ok(PeerHandle {
            slot,
            generation: self.last_generation,
        })
    }

    /// The joining guest is attached: `Reserved → Active`.
    pub fn activate(&mut self, handle: PeerHandle, pid: u32, conn: u64) -> Result<(), PeerError> {
        let s = self.slot_mut(handle)?;
        match s.state {
            SlotState::Reserved => {
                s.state = SlotState::Active { pid, conn };
                Ok(())
            }
            other => Err(wrong(handle, "activate", other)),
        }
    }

    /// The join failed before anything was shared: `Reserved → Free` at once.
    pub fn cancel(&mut self, handle: PeerHandle) -> Result<(), PeerError> {
        let s = self.slot_mut(handle)?;
        match s.state {
            SlotState::Reserved => {
                s.state = SlotState::Free;
                self.free.push_back(handle.slot);
                Ok(())
            }
            other => Err(wrong(handle, "cancel", other)),
        }
    }

    /// The guest is gone: `Active | Reserved → Draining { reason }`. The slot is not reusable
    /// until [`on_buffers_released`](Self::on_buffers_released).
    pub fn on_disconnect(
        &mut self,
        handle: PeerHandle,
        reason: DisconnectReason,
    ) -> Result<(), PeerError> {
        let s = self.slot_mut(handle)?;
        match s.state {
            SlotState::Reserved | SlotState::Active { .. } => {
                s.state = SlotState::Draining { reason };
                Ok(())
            }
            other => Err(wrong(handle, "disconnect", other)),
        }
    }

    /// Every buffer the hub application held from this guest's shared memory is released
    /// and the shared state is reset: `Draining → Free`. The handle is stale from now on.
    pub fn on_buffers_released(&mut self, handle: PeerHandle) -> Result<(), PeerError> {
        let s = self.slot_mut(handle)?;
        match s.state {
            SlotState::Draining { .. } => {
                s.state = SlotState::Free;
                self.free.push_back(handle.slot);
                Ok(())
            }
            other => Err(wrong(handle, "release", other)),
        }
    }

    /// The state of the handle's occupancy; [`PeerError::Stale`] if it is over.
    pub fn state(&self, handle: PeerHandle) -> Result<SlotState, PeerError> {
        match self.slots.get(handle.slot as usize) {
            Some(s) if s.generation == handle.generation && s.state != SlotState::Free => {
                Ok(s.state)
            }
            _ => Err(PeerError::Stale { handle }),
        }
    }

    /// The current handle and state of a slot (`None` if the slot is free or out of range).
    pub fn get(&self, slot: u32) -> Option<(PeerHandle, SlotState)> {
        let s = self.slots.get(slot as usize)?;
        (s.state != SlotState::Free).then_some((
            PeerHandle {
                slot,
                generation: s.generation,
            },
            s.state,
        ))
    }

    /// Every occupied slot (reserved, active or draining) with its handle, by slot index.
    pub fn iter(&self) -> impl Iterator<Item = (PeerHandle, SlotState)> + '_ {
        (0..self.slots.len() as u32).filter_map(|slot| self.get(slot))
    }

    fn slot_mut(&mut self, handle: PeerHandle) -> Result<&mut Slot, PeerError> {
        match self.slots.get_mut(handle.slot as usize) {
            Some(s) if s.generation == handle.generation && s.state != SlotState::Free => Ok(s),
            _ => Err(PeerError::Stale { handle }),
        }
    }
}

fn wrong(handle: PeerHandle, op: &'static str, state: SlotState) -> PeerError {
    PeerError::WrongState {
        handle,
        op,
        state: state.name(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn life_cycle() {
        let mut t = PeerTable::new(2).unwrap();
        let a = t.reserve().unwrap();
        let b = t.reserve().unwrap();
        assert_ne!(a.slot(), b.slot());
        assert_eq!(t.reserve(), Err(PeerError::Full { max_guests: 2 }));
        t.activate(a, 100, 1).unwrap();
        assert_eq!(t.state(a), Ok(SlotState::Active { pid: 100, conn: 1 }));
        t.on_disconnect(a, DisconnectReason::Crashed).unwrap();
        // Draining slots are not free.
        assert!(matches!(t.reserve(), Err(PeerError::Full { .. })));
        assert!(matches!(
            t.activate(a, 1, 1),
            Err(PeerError::WrongState { .. })
        ));
        t.on_buffers_released(a).unwrap();
        let c = t.reserve().unwrap();
        assert_eq!(c.slot(), a.slot());
        assert!(c.generation() > a.generation());
        // The old handle cannot touch the new occupant.
        assert_eq!(t.state(a), Err(PeerError::Stale { handle: a }));
        assert_eq!(
            t.on_disconnect(a, DisconnectReason::Clean),
            Err(PeerError::Stale { handle: a })
        );
        assert_eq!(t.state(c), Ok(SlotState::Reserved));
        t.cancel(b).unwrap();
        assert_eq!(t.free_count(), 1);
        assert_eq!(t.iter().count(), 1);
    }

    #[test]
    fn bounds() {
        assert_eq!(
            PeerTable::new(0).unwrap_err(),
            PeerError::InvalidMaxGuests(0)
        );
        assert!(PeerTable::new(MAX_GUESTS + 1).is_err());
        let t = PeerTable::new(1).unwrap();
        let bogus = PeerHandle {
            slot: 7,
            generation: 1,
        };
        assert_eq!(t.state(bogus), Err(PeerError::Stale { handle: bogus }));
        assert!(t.get(7).is_none());
    }
}
