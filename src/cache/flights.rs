//! Vendor calls in flight, by entry key, so that concurrent misses share one call.
//!
//! Two rules keep a shared call honest:
//! - a call is joined only if it started after the key's last invalidation (its generation
//!   fence): a read that arrives after a write has completed never gets an answer the vendor
//!   may have produced before the write;
//! - a call leaves the table when its last participant is gone, whether it ended or was
//!   abandoned (a caller that disconnects during the permit wait drops its future), through
//!   [`FlightGuard`]'s `Drop`, which also runs when a participant panics.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OnceCell;

use super::Shared;

/// One call in flight.
pub(super) struct Flight {
    /// Its result, once the participant that runs it has it.
    pub(super) result: OnceCell<Shared>,
    /// The sequence number current when it started: what it stores its entry with, and what
    /// the fence compares.
    pub(super) seq: u64,
}

type Shard = HashMap<u128, Arc<Flight>>;

/// The calls in flight, sharded to keep lock contention low.
pub(super) struct Flights {
    shards: Vec<Mutex<Shard>>,
}

impl Flights {
    pub(super) fn new() -> Flights {
        Flights {
            shards: (0..32).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, key: u128) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[(key as usize) % self.shards.len()];
        shard
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Joins the call in flight for `key` if it started at or after `fence` (the key's last
    /// invalidation); otherwise starts a new one at sequence `seq()`, which later readers join.
    pub(super) fn join(&self, key: u128, fence: u64, seq: impl FnOnce() -> u64) -> FlightGuard<'_> {
        let mut shard = self.shard(key);
        let flight = match shard.get(&key) {
            Some(flight) if flight.seq >= fence => flight.clone(),
            _ => {
                let flight = Arc::new(Flight {
                    result: OnceCell::new(),
                    seq: seq(),
                });
                shard.insert(key, flight.clone());
                flight
            }
        };
        FlightGuard {
            flights: self,
            key,
            flight: Some(flight),
        }
    }

    /// Calls in the table now.
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

/// One participant of a call; the last one out removes the call from the table.
pub(super) struct FlightGuard<'a> {
    flights: &'a Flights,
    key: u128,
    flight: Option<Arc<Flight>>,
}

impl Deref for FlightGuard<'_> {
    type Target = Flight;

    fn deref(&self) -> &Flight {
        self.flight.as_deref().expect("present until dropped")
    }
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut shard = self.flights.shard(self.key);
        let Some(mine) = self.flight.take() else {
            return;
        };
        let listed = shard.get(&self.key).is_some_and(|f| Arc::ptr_eq(f, &mine));
        let ended = mine.result.initialized();
        // Dropped under the lock, so that the count below sees every participant that left.
        drop(mine);
        let deserted = shard
            .get(&self.key)
            .is_some_and(|f| Arc::strong_count(f) == 1);
        if listed && (ended || deserted) {
            shard.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_participant_out_removes_an_abandoned_call() {
        let flights = Flights::new();
        let first = flights.join(7, 0, || 1);
        let second = flights.join(7, 0, || 2);
        assert_eq!(second.seq, 1, "joined, not restarted");
        drop(first);
        assert_eq!(flights.len(), 1, "the second participant may still run it");
        drop(second);
        assert_eq!(flights.len(), 0);
    }

    #[test]
    fn a_call_older_than_the_fence_is_not_joined() {
        let flights = Flights::new();
        let old = flights.join(7, 0, || 3);
        let new = flights.join(7, 4, || 5);
        assert_eq!((old.seq, new.seq), (3, 5));
        drop(old);
        assert_eq!(flights.len(), 1, "the old call does not remove the new one");
        assert_eq!(
            flights.join(7, 4, || 9).seq,
            5,
            "later readers join the new one"
        );
    }
}
