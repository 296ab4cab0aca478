//! Per-thread copies of what every request writes (counters, histograms), summed when read.
//!
//! A counter that every core increments bounces its cache line between the cores on every
//! request: on the cache-hit path that costs more than the rest of the counting. Each thread
//! writes its own shard instead (threads are given shards in turn, so the runtime's workers get
//! distinct ones), and readers (a scrape, the status page) add the shards up.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_utils::CachePadded;

/// Hands out shard numbers to threads in turn.
static NEXT_THREAD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's number, taken on its first use of any [`Shards`].
    static THREAD: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The cores this process may use (its CPU quota included), 1 when unknown.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn thread_number() -> usize {
    THREAD.with(|n| {
        if n.get() == usize::MAX {
            n.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
        }
        n.get()
    })
}

/// One `T` per shard, each on its own cache lines.
pub struct Shards<T> {
    shards: Box<[CachePadded<T>]>,
}

impl<T> Shards<T> {
    /// Twice as many shards as cores (rounded up to a power of two): the runtime's workers and
    /// the odd other thread (the main thread, the blocking pool) rarely share one.
    pub fn new(mut make: impl FnMut() -> T) -> Shards<T> {
        Self::try_new(|| Ok::<T, std::convert::Infallible>(make()))
            .unwrap_or_else(|never| match never {})
    }

    /// Like [`Shards::new`], with a `make` that may fail.
    pub fn try_new<E>(mut make: impl FnMut() -> Result<T, E>) -> Result<Shards<T>, E> {
        let count = (cores() * 2).next_power_of_two();
        let shards = (0..count)
            .map(|_| make().map(CachePadded::new))
            .collect::<Result<_, E>>()?;
        Ok(Shards { shards })
    }

    /// The calling thread's shard.
    pub fn local(&self) -> &T {
        // `count` is a power of two: the mask picks a shard without a division.
        &self.shards[thread_number() & (self.shards.len() - 1)]
    }

    /// Every shard, to add them up.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|shard| &**shard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_threads_count_is_in_the_sum() {
        let shards = Shards::new(|| AtomicU64::new(0));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        shards.local().fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        let sum: u64 = shards.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        assert_eq!(sum, 8000);
    }
}
