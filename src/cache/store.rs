//! Where cache entries live: moka, with several entries per moka entry.
//!
//! moka costs about 350 bytes of bookkeeping per entry (measured here: a million `u128 → Arc`
//! entries take 380–450 MiB), which alone would break the budget of a million offline counts
//! in 256 MiB. So entries are grouped by their key's low bits into buckets of about eight, and
//! moka holds the buckets: it still bounds the size, expires what is idle and evicts by
//! frequency, while its per-entry cost is shared. Each bucket weighs as many entries as it
//! holds, so moka's bound is `max_entries` itself, not a number of buckets. A bucket expires
//! when its longest-lived entry dies, not after a fixed lifetime: a bucket of entries that
//! nobody rewrites (statuses of messages never asked for again) would otherwise keep dead
//! entries for the longest lifetime any entry may have (an hour for delivered statuses). A
//! bucket is replaced whole on every change, through moka's per-key serialised
//! `and_compute_with`, so that no concurrent change is lost.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::future::Cache as Moka;
use moka::ops::compute::Op;
use moka::Expiry;

use super::Entry;

/// Average entries per bucket the store is sized for.
const PER_BUCKET: u64 = 8;
/// Most entries one bucket keeps (the oldest go first), so an unlucky bucket stays small.
const MAX_PER_BUCKET: u64 = 64;

/// A bucket: its entries and their full keys, replaced whole on every change.
type Bucket = Arc<[(u128, Arc<Entry>)]>;

/// Expires a bucket when the last of its entries stops being servable.
struct UntilLastEntryDies;

impl UntilLastEntryDies {
    fn remaining(bucket: &Bucket, now: Instant) -> Option<Duration> {
        let last = bucket.iter().map(|(_, e)| e.alive_until()).max()?;
        Some(last.saturating_duration_since(now))
    }
}

impl Expiry<u64, Bucket> for UntilLastEntryDies {
    fn expire_after_create(&self, _: &u64, bucket: &Bucket, now: Instant) -> Option<Duration> {
        Self::remaining(bucket, now)
    }

    fn expire_after_update(
        &self,
        _: &u64,
        bucket: &Bucket,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(bucket, now)
    }
}

/// Hashes a bucket number for moka's table. Bucket numbers are bits of a keyed SipHash (see
/// `keys`), unpredictable to callers already: a multiply spreads them over the hash's high
/// bits (which moka's segments use) without hashing them again with SipHash.
#[derive(Default)]
struct BucketHasher(u64);

impl Hasher for BucketHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the key is a u64); bytes are folded in all the same.
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

/// A bounded store of entries by 128-bit key.
pub struct Store {
    buckets: Moka<u64, Bucket, BuildHasherDefault<BucketHasher>>,
    mask: u64,
    /// Most entries per bucket: never more than the whole store may hold.
    per_bucket: usize,
}

impl Store {
    /// A store of at most `max_entries` entries, each kept while it is alive.
    pub fn new(max_entries: u64) -> Store {
        let buckets = (max_entries / PER_BUCKET).max(1).next_power_of_two();
        Store {
            buckets: Moka::builder()
                .max_capacity(max_entries)
                .weigher(|_, bucket: &Bucket| u32::try_from(bucket.len()).unwrap_or(u32::MAX))
                .expire_after(UntilLastEntryDies)
                .build_with_hasher(BuildHasherDefault::default()),
            mask: buckets - 1,
            per_bucket: max_entries.clamp(1, MAX_PER_BUCKET) as usize,
        }
    }

    fn bucket(&self, key: u128) -> u64 {
        (key as u64) & self.mask
    }

    /// The entry of `key`, unless it has outlived its stale windows at `now`.
    pub async fn get(&self, key: u128, now: Instant) -> Option<Arc<Entry>> {
        let bucket = self.buckets.get(&self.bucket(key)).await?;
        let entry = bucket.iter().find(|(k, _)| *k == key)?.1.clone();
        entry.is_alive(now).then_some(entry)
    }

    /// Stores `entry` under `key`, replacing any older one.
    pub async fn insert(&self, key: u128, entry: Arc<Entry>) {
        let per_bucket = self.per_bucket;
        self.rewrite(key, move |slots| {
            if slots.len() >= per_bucket {
                let oldest = slots
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, (_, e))| e.stored_at)
                    .map(|(i, _)| i);
                if let Some(i) = oldest {
                    slots.swap_remove(i);
                }
            }
            slots.push((key, entry));
        })
        .await;
    }

    /// Drops the entry of `key`.
    pub async fn remove(&self, key: u128) {
        self.rewrite(key, |_| {}).await;
    }

    /// Rebuilds the bucket of `key` without that key and without dead entries, lets `change`
    /// add to it, and stores it (or drops it when empty).
    async fn rewrite(&self, key: u128, change: impl FnOnce(&mut Vec<(u128, Arc<Entry>)>)) {
        let now = Instant::now();
        self.buckets
            .entry(self.bucket(key))
            .and_compute_with(|current| {
                let mut slots: Vec<(u128, Arc<Entry>)> = current
                    .map(|e| {
                        e.into_value()
                            .iter()
                            .filter(|(k, e)| *k != key && e.is_alive(now))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                change(&mut slots);
                let op = if slots.is_empty() {
                    Op::Remove
                } else {
                    Op::Put(Bucket::from(slots))
                };
                std::future::ready(op)
            })
            .await;
    }

    /// Drops every entry for which `doomed` holds.
    pub async fn remove_if(&self, doomed: impl Fn(&Entry) -> bool) {
        let affected: Vec<u64> = self
            .buckets
            .iter()
            .filter(|(_, bucket)| bucket.iter().any(|(_, e)| doomed(e)))
            .map(|(id, _)| *id)
            .collect();
        for id in affected {
            self.buckets
                .entry(id)
                .and_compute_with(|current| {
                    let slots: Vec<(u128, Arc<Entry>)> = current
                        .map(|e| {
                            e.into_value()
                                .iter()
                                .filter(|(_, e)| !doomed(e))
                                .cloned()
                                .collect()
                        })
                        .unwrap_or_default();
                    std::future::ready(if slots.is_empty() {
                        Op::Remove
                    } else {
                        Op::Put(Bucket::from(slots))
                    })
                })
                .await;
        }
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.buckets.invalidate_all();
    }

    /// Live entries (walks every bucket: for metrics, not for requests); pending evictions
    /// are applied first.
    pub async fn len(&self) -> u64 {
        self.buckets.run_pending_tasks().await;
        let now = Instant::now();
        self.buckets
            .iter()
            .map(|(_, bucket)| bucket.iter().filter(|(_, e)| e.is_alive(now)).count() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::Body;
    use crate::cache::CachePolicy;

    fn entry(ttl_ms: u64) -> Arc<Entry> {
        let policy = CachePolicy {
            ttl: Duration::from_millis(ttl_ms),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_timeout: Duration::ZERO,
            max_entries: 1000,
        };
        let ttl = policy.ttl;
        Arc::new(Entry::new(
            ttl,
            &policy,
            1,
            true,
            0,
            Body::Json(Default::default()),
        ))
    }

    #[tokio::test]
    async fn a_bucket_leaves_when_its_last_entry_dies_not_after_the_longest_lifetime() {
        let store = Store::new(1000);
        for key in 0..200u128 {
            store.insert(key, entry(50)).await;
        }
        // One long-lived entry keeps its own bucket, and only that one.
        store.insert(1000, entry(60_000)).await;
        store.buckets.run_pending_tasks().await;
        let before = store.buckets.entry_count();
        // moka's expiry timers tick at about one second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        store.buckets.run_pending_tasks().await;
        assert!(before > 1, "{before} buckets before expiry");
        assert_eq!(store.buckets.entry_count(), 1);
        assert!(store.get(1000, Instant::now()).await.is_some());
        assert_eq!(store.len().await, 1);
    }
}
