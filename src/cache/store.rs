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
//!
//! In front of moka each thread keeps the entries it found last, in a small table of its own
//! ([`Front`]), each with the body it rendered for it ([`Found`]): a hit there renders nothing
//! and touches no memory that other threads write (moka's read log, the bucket's or the entry's
//! reference count, its access time), which on a hot key cost more than the rest of the
//! lookup. A copy is good while the generation of its key's slot is the one it was found
//! under: every change to a key (insert, remove) bumps its slot's generation once moka holds
//! the change, and a change to many (`remove_if`, `clear`) bumps them all; a copy is taken
//! under the generation read before moka was asked, so it can only be older than a change that
//! bumped it. Hits served from a thread's table are not reported to moka, which may then evict
//! a hot bucket first when the store is full: the copies stay servable (they are not stale,
//! only out of moka's count) until their key changes.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache as Moka;
use moka::ops::compute::Op;
use moka::Expiry;

use super::Entry;
use crate::shards::Shards;

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

/// Generation slots: keys share one when their bits say so (a change to one key then only
/// costs the others a trip to moka).
const GENERATIONS: usize = 4096;
/// Entries in each thread's table, in sets of [`FRONT_WAYS`]. A thousand keys read at random
/// found their copy 64 % of the time in 1,024 direct-mapped slots and 89 % in 4,096, where two
/// keys of one slot kept evicting each other; two ways per set keep both. A full table of offline
/// counts holds about 1 MiB (their rendered bodies included).
const FRONT_SLOTS: usize = 4096;
/// Entries per set of a thread's table.
const FRONT_WAYS: usize = 2;

/// An entry found, with its body as an answer carries it. A thread's hits share its table's
/// `Arc<Found>`: they write a reference count that no other thread writes (cloning the entry
/// itself would, on every hit of a hot key, from every core).
pub struct Found {
    /// The entry.
    pub entry: Arc<Entry>,
    /// Its body, made by the caller's `render` when the entry was first found on this thread.
    pub body: Bytes,
}

/// One thread's last-found entries, by key bits in sets of [`FRONT_WAYS`], each with the
/// generation it was found under.
#[derive(Default)]
struct Front {
    slots: Vec<Option<(u128, u64, Arc<Found>)>>,
}

impl Front {
    /// Where the set of `key` starts in `slots`.
    fn set(key: u128) -> usize {
        ((key >> 96) as usize & (FRONT_SLOTS / FRONT_WAYS - 1)) * FRONT_WAYS
    }

    fn get(&self, key: u128, generation: u64) -> Option<Arc<Found>> {
        let start = Self::set(key);
        self.slots
            .get(start..start + FRONT_WAYS)?
            .iter()
            .flatten()
            .find(|(k, g, _)| *k == key && *g == generation)
            .map(|(_, _, found)| found.clone())
    }

    /// Puts `found` first in its set: an older copy of the key is replaced, else the set's
    /// other entries move one way down and the last one leaves.
    fn put(&mut self, key: u128, generation: u64, found: Arc<Found>) {
        if self.slots.is_empty() {
            self.slots.resize(FRONT_SLOTS, None);
        }
        let start = Self::set(key);
        let set = &mut self.slots[start..start + FRONT_WAYS];
        let end = set
            .iter()
            .position(|slot| matches!(slot, Some((k, _, _)) if *k == key))
            .unwrap_or(FRONT_WAYS - 1);
        set[..=end].rotate_right(1);
        set[0] = Some((key, generation, found));
    }
}

/// A bounded store of entries by 128-bit key.
pub struct Store {
    buckets: Moka<u64, Bucket, BuildHasherDefault<BucketHasher>>,
    mask: u64,
    /// Most entries per bucket: never more than the whole store may hold.
    per_bucket: usize,
    /// Each thread's last-found entries (a shard's, when threads share one; see the module
    /// notes).
    front: Shards<Mutex<Front>>,
    /// Bumped by every change to a key of the slot.
    generations: Box<[AtomicU64]>,
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
            front: Shards::new(Mutex::default),
            generations: (0..GENERATIONS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bucket(&self, key: u128) -> u64 {
        (key as u64) & self.mask
    }

    fn generation(&self, key: u128) -> &AtomicU64 {
        &self.generations[(key >> 64) as usize & (GENERATIONS - 1)]
    }

    /// The entry of `key`, unless it has outlived its stale windows at `now`, with its body
    /// as `render` makes it. A thread's copy keeps the body it rendered, so that a hit there
    /// renders nothing (an offline count is kept as numbers) and shares no reference count
    /// with other threads' hits.
    pub async fn get(
        &self,
        key: u128,
        now: Instant,
        render: impl FnOnce(&Entry) -> Bytes,
    ) -> Option<Arc<Found>> {
        // Read before moka is asked: a change that lands meanwhile makes the copy old.
        let generation = self.generation(key).load(Ordering::Acquire);
        // Never waits: a table that another thread sharing the shard holds is skipped.
        let copy = self
            .front
            .local()
            .try_lock()
            .ok()
            .and_then(|f| f.get(key, generation));
        let found = match copy {
            Some(found) => found,
            // Boxed: moka's lookup is most of this future's size, which every request's future
            // would otherwise carry (and copy) although a thread's table answers hot keys.
            None => Box::pin(self.get_from_moka(key, generation, render)).await?,
        };
        found.entry.is_alive(now).then_some(found)
    }

    /// The entry of `key` from moka, copied into the calling thread's table under
    /// `generation`.
    async fn get_from_moka(
        &self,
        key: u128,
        generation: u64,
        render: impl FnOnce(&Entry) -> Bytes,
    ) -> Option<Arc<Found>> {
        let bucket = self.buckets.get(&self.bucket(key)).await?;
        let entry = bucket.iter().find(|(k, _)| *k == key)?.1.clone();
        let found = Arc::new(Found {
            body: render(&entry),
            entry,
        });
        if let Ok(mut front) = self.front.local().try_lock() {
            front.put(key, generation, found.clone());
        }
        Some(found)
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
        self.generation(key).fetch_add(1, Ordering::Release);
    }

    /// Makes every thread's copies old (after a change to many keys).
    fn bump_all(&self) {
        for generation in &*self.generations {
            generation.fetch_add(1, Ordering::Release);
        }
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
        self.bump_all();
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.buckets.invalidate_all();
        self.bump_all();
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

    /// Runs `f` on a thread of its own (its own front table) and waits for it.
    fn on_another_thread<T: Send>(f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|s| s.spawn(f).join().unwrap())
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn a_threads_copy_never_outlives_a_change_made_on_another_thread() {
        let store = Store::new(1000);
        let (a, b) = (entry(60_000), entry(60_000));
        let (pa, pb) = (Arc::as_ptr(&a) as usize, Arc::as_ptr(&b) as usize);
        // Keys that share a bucket or a generation slot with one another.
        let keys = [7u128, 7 | (1 << 96), 7 | (5 << 64)];
        for key in keys {
            block_on(store.insert(key, a.clone()));
        }
        let seen = |store: &Store, key| {
            block_on(store.get(key, Instant::now(), no_body))
                .map(|f| Arc::as_ptr(&f.entry) as usize)
        };
        // Both threads hold copies; a hit from the table is the same entry.
        for key in keys {
            assert_eq!(seen(&store, key), Some(pa));
            assert_eq!(seen(&store, key), Some(pa));
            assert_eq!(on_another_thread(|| seen(&store, key)), Some(pa));
        }
        // Replaced elsewhere: every thread sees the new entry at once.
        on_another_thread(|| block_on(store.insert(keys[0], b.clone())));
        assert_eq!(seen(&store, keys[0]), Some(pb));
        block_on(store.remove(keys[1]));
        assert_eq!(on_another_thread(|| seen(&store, keys[1])), None);
        assert_eq!(seen(&store, keys[1]), None);
        // Untouched keys are still served, from the tables or moka alike.
        assert_eq!(seen(&store, keys[2]), Some(pa));
        block_on(store.remove_if(|_| true));
        assert_eq!(seen(&store, keys[0]), None);
        assert_eq!(on_another_thread(|| seen(&store, keys[2])), None);
        block_on(store.insert(keys[2], b.clone()));
        assert_eq!(seen(&store, keys[2]), Some(pb));
        store.clear();
        assert_eq!(seen(&store, keys[2]), None);
        assert_eq!(on_another_thread(|| seen(&store, keys[2])), None);
    }

    fn no_body(_: &Entry) -> Bytes {
        Bytes::new()
    }

    #[test]
    fn a_thread_renders_a_body_once_until_its_entry_changes() {
        let store = Store::new(1000);
        let renders = std::sync::atomic::AtomicUsize::new(0);
        let body = |store: &Store| {
            let render = |_: &Entry| {
                let n = renders.fetch_add(1, Ordering::Relaxed);
                Bytes::from(n.to_string())
            };
            block_on(store.get(9, Instant::now(), render)).map(|f| f.body.clone())
        };
        block_on(store.insert(9, entry(60_000)));
        assert_eq!(body(&store).as_deref(), Some(&b"0"[..]));
        assert_eq!(body(&store).as_deref(), Some(&b"0"[..]), "rendered again");
        // Another thread renders its copy, unless it shares this one's table.
        assert!(on_another_thread(|| body(&store)).is_some());
        let renders_so_far = renders.load(Ordering::Relaxed);
        assert!(renders_so_far <= 2);
        assert_eq!(body(&store).as_deref(), Some(&b"0"[..]));
        // A new entry is rendered anew.
        block_on(store.insert(9, entry(60_000)));
        let anew = renders_so_far.to_string();
        assert_eq!(body(&store).as_deref(), Some(anew.as_bytes()));
        assert_eq!(body(&store).as_deref(), Some(anew.as_bytes()));
        assert_eq!(renders.load(Ordering::Relaxed), renders_so_far + 1);
    }

    #[test]
    fn a_set_of_a_threads_table_keeps_its_two_latest_keys() {
        let found = || {
            Arc::new(Found {
                entry: entry(60_000),
                body: Bytes::new(),
            })
        };
        // One set: the keys differ only outside the bits that pick it.
        let (a, b, c) = (1u128, 2u128, 3u128);
        let mut front = Front::default();
        let held = |front: &Front, key, generation| front.get(key, generation).is_some();
        front.put(a, 0, found());
        front.put(b, 0, found());
        assert!(held(&front, a, 0) && held(&front, b, 0));
        // A third key evicts the one put first.
        front.put(c, 0, found());
        assert!(!held(&front, a, 0) && held(&front, b, 0) && held(&front, c, 0));
        // A newer copy of a key replaces its old one; the other key stays.
        front.put(b, 1, found());
        assert!(held(&front, b, 1) && !held(&front, b, 0) && held(&front, c, 0));
        front.put(b, 2, found());
        assert!(held(&front, b, 2) && held(&front, c, 0));
        // Another set is untouched by all this.
        let elsewhere = a | (1 << 96);
        front.put(elsewhere, 0, found());
        assert!(held(&front, elsewhere, 0) && held(&front, c, 0));
    }

    #[tokio::test]
    async fn a_copy_of_a_dead_entry_is_not_served() {
        let store = Store::new(1000);
        store.insert(3, entry(30)).await;
        assert!(store.get(3, Instant::now(), no_body).await.is_some());
        let later = Instant::now() + Duration::from_millis(31);
        assert!(store.get(3, later, no_body).await.is_none());
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
        assert!(store.get(1000, Instant::now(), no_body).await.is_some());
        assert_eq!(store.len().await, 1);
    }
}
