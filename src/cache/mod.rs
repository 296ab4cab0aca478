//! The read cache (moka): offline counts and statuses, subscription lists, and presence per user
//! ([`presence`]), with request coalescing, stale-while-revalidate, stale-if-error, and
//! invalidation by the writes that pass through imgate.
//!
//! Each file answers one question: [`keys`] what identifies a read (canonical segments and the
//! app's vendor identity, hashed), [`flights`] which vendor call a miss shares (with its
//! generation fence and drop guard), [`entry`] what an entry holds and how it renders, `store`
//! where entries live (bounded by `max_entries`), [`presence`] how presence lookups merge, and
//! `effects` what writes invalidate. This file reads and invalidates.
//!
//! - Concurrent misses for one key make one vendor call ([`Cache::read`]); the others wait for
//!   it and share its answer or its error. Only 200 answers are stored.
//! - Invalidation works by sequence marks: each entry remembers the sequence number current when
//!   its vendor call started; invalidating a user's group records a newer number, which makes
//!   every entry of the group stale at once, keeps a call still in flight from storing its
//!   answer, and keeps later reads from joining that call.
//! - Offline counts are stored as their numbers, not their bodies, and rendered on a hit: a
//!   million entries fit in well under 256 MiB. A body that would not render byte for byte as
//!   the vendor sent it is stored whole instead.

mod effects;
mod entry;
mod flights;
mod invalidation;
mod keys;
pub mod presence;
mod store;

pub use entry::{Body, Entry};
pub use invalidation::{Invalidation, InvalidationSink};
pub use keys::{Key, Kind};

use flights::Flights;
use keys::Hashes;
pub use store::Found;
use store::Store;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::StatusCode;
use moka::future::Cache as Moka;
use serde_json::Value;

use crate::error::GatewayError;
use crate::upstream::VendorResponse;

/// One endpoint's cache policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CachePolicy {
    /// Fresh for this long.
    pub ttl: Duration,
    /// Then served at once while one background call refreshes it.
    pub stale_while_revalidate: Duration,
    /// Then served when the vendor fails.
    pub stale_if_error: Duration,
    /// How long a read with such a stale entry at hand waits for the vendor before serving it.
    pub stale_timeout: Duration,
    /// Most entries.
    pub max_entries: u64,
}

/// The cache's policies, from `[cache]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// Offline counts.
    pub offline_count: CachePolicy,
    /// Offline statuses (`ttl` for `undelivered`).
    pub offline_status: CachePolicy,
    /// How long a `delivered` status (final) is fresh.
    pub delivered_ttl: Duration,
    /// Presence per user.
    pub presence: CachePolicy,
    /// Subscription lists.
    pub sublist: CachePolicy,
    /// How long single presence lookups wait to be merged into one vendor call.
    pub batch_window: Duration,
    /// Most users in one merged presence call.
    pub max_batch_users: usize,
}

/// How an answer was produced: the `X-Cache` header and the `result` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Fresh from the cache.
    Hit,
    /// From the vendor, by this request's own call.
    Miss,
    /// From the cache after its freshness (revalidating, or because the vendor failed).
    Stale,
    /// From the vendor, by another request's call that this one waited for.
    Coalesced,
}

impl CacheStatus {
    /// Every status, in a fixed order.
    pub const ALL: [CacheStatus; 4] = [
        CacheStatus::Hit,
        CacheStatus::Miss,
        CacheStatus::Stale,
        CacheStatus::Coalesced,
    ];

    /// The `X-Cache` value.
    pub const fn header(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Stale => "STALE",
            CacheStatus::Coalesced => "COALESCED",
        }
    }

    /// The metrics label value.
    pub const fn label(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Stale => "stale",
            CacheStatus::Coalesced => "coalesced",
        }
    }
}

/// A cache read's answer.
pub enum Answer {
    /// From the cache.
    Cached(Arc<Found>, CacheStatus),
    /// From the vendor (any status), by this request or one it waited for.
    Vendor(Arc<VendorResponse>, CacheStatus),
}

/// A vendor call the cache may make, owned so that it can run in the background.
pub type Fetch = Pin<Box<dyn Future<Output = Result<VendorResponse, GatewayError>> + Send>>;

/// A vendor result shared with every waiter.
pub type Shared = Result<Arc<VendorResponse>, Arc<GatewayError>>;

/// The read cache of one gateway.
pub struct Cache {
    settings: CacheSettings,
    hashes: Hashes,
    stores: [Store; 4],
    /// Group key → sequence number of its last invalidation.
    marks: Moka<u128, u64>,
    seq: AtomicU64,
    flights: Flights,
    uri_bases: Mutex<Vec<Arc<str>>>,
    /// Circuit breakers per app and kind, made on first use.
    breakers: Mutex<HashMap<u128, Arc<Breaker>>>,
    /// Merges concurrent presence lookups into vendor batch calls.
    pub batcher: presence::Batcher,
    /// The other replicas, in cluster mode ([`Cache::connect`]).
    sink: OnceLock<Arc<dyn InvalidationSink>>,
}

impl Cache {
    /// An empty cache with these policies.
    pub fn new(settings: CacheSettings) -> Cache {
        let store = |p: &CachePolicy| Store::new(p.max_entries);
        let longest = [
            &settings.offline_count,
            &settings.offline_status,
            &settings.presence,
            &settings.sublist,
        ]
        .iter()
        .map(|p| p.ttl + p.stale_while_revalidate.max(p.stale_if_error))
        .max()
        .unwrap_or_default();
        Cache {
            stores: [
                store(&settings.offline_count),
                store(&settings.offline_status),
                store(&settings.sublist),
                store(&settings.presence),
            ],
            // A mark must outlive every entry it may invalidate.
            marks: Moka::builder()
                .max_capacity(1_000_000)
                .time_to_live(longest + Duration::from_secs(1))
                .build(),
            seq: AtomicU64::new(1),
            hashes: Hashes::new(),
            flights: Flights::new(),
            uri_bases: Mutex::new(Vec::new()),
            breakers: Mutex::new(HashMap::new()),
            batcher: presence::Batcher::new(settings.batch_window, settings.max_batch_users),
            sink: OnceLock::new(),
            settings,
        }
    }

    /// The policy of a kind.
    pub fn policy(&self, kind: Kind) -> &CachePolicy {
        match kind {
            Kind::OfflineCount => &self.settings.offline_count,
            Kind::OfflineStatus => &self.settings.offline_status,
            Kind::Sublist => &self.settings.sublist,
            Kind::Presence => &self.settings.presence,
        }
    }

    fn entries(&self, kind: Kind) -> &Store {
        &self.stores[kind as usize]
    }

    /// Entries held, per kind (for `imgate_cache_entries`).
    pub async fn entry_counts(&self) -> [(Kind, u64); 4] {
        let mut counts = Kind::ALL.map(|k| (k, 0));
        for (kind, count) in &mut counts {
            *count = self.entries(*kind).len().await;
        }
        counts
    }

    /// The entry of `key` if it exists, is still servable at `now` and no invalidation made it
    /// stale, with its body as `render` makes it ([`Store::get`]).
    pub async fn lookup(
        &self,
        key: &Key<'_>,
        now: Instant,
        render: impl FnOnce(&Entry) -> Bytes,
    ) -> Option<Arc<Found>> {
        let found = self
            .entries(key.kind)
            .get(self.hashes.entry(key), now, render)
            .await?;
        let entry = &found.entry;
        // Counts and presence are invalidated by removing their one entry (see `insert`), so
        // their hits skip the mark lookup; statuses and lists are invalidated by group.
        if entry.invalidatable && !key.kind.is_exact() {
            let group = self.hashes.group(key.kind, key.app, key.user);
            if let Some(mark) = self.marks.get(&group).await {
                if entry.seq < mark {
                    return None;
                }
            }
        }
        Some(found)
    }

    /// Answers a read: fresh from the cache, stale while one background call revalidates, or
    /// from one vendor call shared by every concurrent request for the same key; a stale entry
    /// stands in when the vendor fails within `stale_if_error`. `now`: when the request
    /// started (one clock read serves the whole request); `render`: an entry's body as the
    /// answer carries it.
    pub async fn read(
        self: &Arc<Self>,
        key: &Key<'_>,
        path: &str,
        now: Instant,
        render: impl FnOnce(&Entry) -> Bytes,
        fetch: impl FnOnce() -> Fetch,
    ) -> Result<Answer, Arc<GatewayError>> {
        let policy = *self.policy(key.kind);
        if policy.ttl.is_zero() {
            let response = fetch().await.map_err(Arc::new)?;
            return Ok(Answer::Vendor(Arc::new(response), CacheStatus::Miss));
        }
        let mut fallback = None;
        if let Some(found) = self.lookup(key, now, render).await {
            let fresh_until = found.entry.fresh_until();
            if now < fresh_until {
                return Ok(Answer::Cached(found, CacheStatus::Hit));
            }
            if now < fresh_until + policy.stale_while_revalidate {
                if !found.entry.refreshing.swap(true, Ordering::AcqRel) {
                    self.revalidate(key, path, fetch());
                }
                return Ok(Answer::Cached(found, CacheStatus::Stale));
            }
            if now < fresh_until + policy.stale_if_error {
                fallback = Some(found);
            }
        }
        // The vendor paths are boxed: the hit path's future stays small.
        let Some(stale) = fallback else {
            let (shared, led) = Box::pin(self.fetch_shared(key, path, fetch)).await;
            return shared.map(|response| Answer::Vendor(response, led_status(led)));
        };
        Box::pin(self.stale_or_vendor(key, path, fetch(), stale, policy.stale_timeout)).await
    }

    /// A read with a stale entry at hand ("stale beats slow"): the vendor's answer if it comes
    /// within `stale_timeout` and is not a failure, else the stale entry (see
    /// [`Breaker::within`]: a slow call goes on in the background for the cache, and while the
    /// app's endpoint keeps failing, one probe call at a time goes to the vendor).
    async fn stale_or_vendor(
        self: &Arc<Self>,
        key: &Key<'_>,
        path: &str,
        fetch: Fetch,
        stale: Arc<Found>,
        stale_timeout: Duration,
    ) -> Result<Answer, Arc<GatewayError>> {
        let call = self.shared_call(key, path, fetch);
        let breaker = self.breaker(key);
        match breaker.within(stale_timeout, call, shared_failed).await {
            None => Ok(Answer::Cached(stale, CacheStatus::Stale)),
            Some((Ok(response), _)) if vendor_failed(response.status) => {
                Ok(Answer::Cached(stale, CacheStatus::Stale))
            }
            Some((Ok(response), led)) => Ok(Answer::Vendor(response, led_status(led))),
            Some((Err(err), _)) if err.is_vendor_failure() => {
                Ok(Answer::Cached(stale, CacheStatus::Stale))
            }
            Some((Err(err), _)) => Err(err),
        }
    }

    /// The breaker of `key`'s app and kind.
    fn breaker(&self, key: &Key<'_>) -> Arc<Breaker> {
        let id = self
            .hashes
            .hash(&[&[key.kind.tag() | 0x40], key.app.as_bytes()]);
        let mut breakers = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        breakers.entry(id).or_default().clone()
    }

    /// One background call refreshing `key` (its entry is being served stale meanwhile).
    fn revalidate(self: &Arc<Self>, key: &Key<'_>, path: &str, fetch: Fetch) {
        let call = self.shared_call(key, path, fetch);
        drop(self.breaker(key).spawn(call, shared_failed));
    }

    /// `fetch` for `key`, shared with concurrent reads ([`Cache::fetch_shared`]), as a future
    /// that owns what it needs, so that it can run in a task of its own.
    fn shared_call(
        self: &Arc<Self>,
        key: &Key<'_>,
        path: &str,
        fetch: Fetch,
    ) -> impl Future<Output = (Shared, bool)> + Send + 'static {
        let cache = self.clone();
        let (kind, app, user, extra) = (
            key.kind,
            key.app.to_owned(),
            key.user.to_owned(),
            key.extra.to_owned(),
        );
        let path = path.to_owned();
        async move {
            let key = Key {
                kind,
                app: &app,
                user: &user,
                extra: &extra,
            };
            cache.fetch_shared(&key, &path, move || fetch).await
        }
    }

    /// Joins (or starts) the call in flight for `key`; returns its result and whether this
    /// request made the call. The maker stores a 200 answer before the waiters wake. A call
    /// that started before the key's last invalidation is not joined.
    async fn fetch_shared(
        &self,
        key: &Key<'_>,
        path: &str,
        fetch: impl FnOnce() -> Fetch,
    ) -> (Shared, bool) {
        let entry_key = self.hashes.entry(key);
        let seq = || self.seq.load(Ordering::Acquire);
        // Joined at once, so that a call that just stored the entry this request missed is
        // still found; then fenced, and replaced if it started before an invalidation.
        let mut flight = self.flights.join(entry_key, 0, seq);
        let fence = self.fence(key.kind, key.app, key.user).await;
        if flight.seq < fence {
            drop(flight);
            flight = self.flights.join(entry_key, fence, seq);
        }
        let led = AtomicBool::new(false);
        let shared = flight
            .result
            .get_or_init(|| async {
                led.store(true, Ordering::Relaxed);
                let result = fetch().await;
                if let Ok(response) = &result {
                    self.store(key, entry_key, path, response, flight.seq).await;
                }
                result.map(Arc::new).map_err(Arc::new)
            })
            .await
            .clone();
        (shared, led.load(Ordering::Relaxed))
    }

    /// The sequence number of the last invalidation of `user`'s reads of `kind` (0: none).
    async fn fence(&self, kind: Kind, app: &str, user: &str) -> u64 {
        let group = self.hashes.group(kind, app, user);
        self.marks.get(&group).await.unwrap_or(0)
    }

    /// Vendor calls in flight for cached reads now (abandoned ones leave at once).
    pub fn calls_in_flight(&self) -> usize {
        self.flights.len()
    }

    /// Stores a 200 answer of the vendor for `key`, fetched from sequence `seq` on.
    async fn store(
        &self,
        key: &Key<'_>,
        entry_key: u128,
        path: &str,
        response: &VendorResponse,
        seq: u64,
    ) {
        if response.status != StatusCode::OK {
            return;
        }
        let policy = self.policy(key.kind);
        let delivered =
            key.kind == Kind::OfflineStatus && entry::is_delivered(&response.body, key.extra);
        let ttl = if delivered {
            self.settings.delivered_ttl
        } else {
            policy.ttl
        };
        let body = match key.kind {
            Kind::OfflineCount => self.compact_count(response, path, key.user),
            _ => None,
        }
        // A copy: the response's bytes may be a slice of the buffer the connection read them
        // into, which an entry kept alive for its whole lifetime (kilobytes per entry).
        .unwrap_or_else(|| Body::Json(Bytes::copy_from_slice(&response.body)));
        let entry = Entry::new(ttl, policy, seq, !delivered, self.hashes.app(key.app), body);
        self.insert(key, entry_key, entry).await;
    }

    /// Inserts an entry. One of a kind invalidated by key (counts, presence) is removed again if
    /// its user was invalidated after its vendor call started: checking after the insert closes
    /// the race with an invalidation that removes the key just before the insert.
    async fn insert(&self, key: &Key<'_>, entry_key: u128, entry: Entry) {
        let seq = entry.seq;
        self.entries(key.kind)
            .insert(entry_key, Arc::new(entry))
            .await;
        if key.kind.is_exact() {
            let group = self.hashes.group(key.kind, key.app, key.user);
            if self.marks.get(&group).await.is_some_and(|mark| seq < mark) {
                self.entries(key.kind).remove(entry_key).await;
            }
        }
    }

    /// The compact form of an offline-count answer, if it renders back byte for byte.
    fn compact_count(&self, response: &VendorResponse, path: &str, user: &str) -> Option<Body> {
        if response.headers.get(CONTENT_TYPE)? != JSON {
            return None;
        }
        let value: Value = serde_json::from_slice(&response.body).ok()?;
        let (uri_base, count, timestamp, duration) =
            entry::parse_count(&response.body, &value, path, user)?;
        Some(Body::OfflineCount {
            uri_base: self.intern(uri_base),
            count,
            timestamp,
            duration,
        })
    }

    fn intern(&self, uri_base: &str) -> Arc<str> {
        let mut bases = self.uri_bases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(base) = bases.iter().find(|b| ***b == *uri_base) {
            return base.clone();
        }
        let base: Arc<str> = Arc::from(uri_base);
        bases.push(base.clone());
        base
    }

    /// Makes every cached read of `kind` about `user` of `app` (its vendor identity) stale now;
    /// calls in flight may finish, but are neither stored nor joined any more.
    pub async fn invalidate(&self, kind: Kind, app: &str, user: &str) {
        let mark = self.seq.fetch_add(1, Ordering::AcqRel) + 1;
        self.marks
            .insert(self.hashes.group(kind, app, user), mark)
            .await;
        if matches!(kind, Kind::OfflineCount | Kind::Presence) {
            let key = Key {
                kind,
                app,
                user,
                extra: "",
            };
            self.entries(kind).remove(self.hashes.entry(&key)).await;
        }
    }

    /// Drops the entries of `kind` that belong to `apps` (vendor identities).
    pub async fn purge_apps(&self, kind: Kind, apps: &[&str]) {
        let hashes: Vec<u64> = apps.iter().map(|a| self.hashes.app(a)).collect();
        self.entries(kind)
            .remove_if(|entry| hashes.contains(&entry.app))
            .await;
    }

    /// Drops every entry.
    pub fn purge_all(&self) {
        for store in &self.stores {
            store.clear();
        }
    }
}

const JSON: &str = "application/json";

/// Consecutive failed or slow vendor calls after which a breaker opens.
const BREAKER_TRIPS_AFTER: u32 = 3;

/// A circuit breaker of one app's endpoint (like Envoy's outlier detection): open after
/// [`BREAKER_TRIPS_AFTER`] consecutive failed or slow calls, closed by the next good answer.
#[derive(Default)]
struct Breaker {
    failures: std::sync::atomic::AtomicU32,
    probing: AtomicBool,
}

impl Breaker {
    fn is_open(&self) -> bool {
        self.failures.load(Ordering::Relaxed) >= BREAKER_TRIPS_AFTER
    }

    /// Whether the caller may send the one probe call (none is in flight).
    fn try_probe(&self) -> bool {
        !self.probing.swap(true, Ordering::AcqRel)
    }

    fn record(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Relaxed);
        } else {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        self.probing.store(false, Ordering::Release);
    }

    /// Runs the vendor call `call` in a task of its own, so that it completes and fills the
    /// cache even when no request waits for it any more; its outcome (judged by `failed`) goes
    /// to this breaker.
    fn spawn<T: Send + 'static>(
        self: &Arc<Self>,
        call: impl Future<Output = T> + Send + 'static,
        failed: fn(&T) -> bool,
    ) -> tokio::task::JoinHandle<T> {
        let breaker = self.clone();
        tokio::spawn(async move {
            let outcome = call.await;
            breaker.record(!failed(&outcome));
            outcome
        })
    }

    /// "Stale beats slow" for a read that has a stale answer at hand: the outcome of `call` if
    /// it comes within `budget`, else `None` (serve the stale answer) while the call goes on in
    /// the background. While the breaker is open, `None` at once, and `call` runs only as the
    /// one probe (if no other is in flight).
    async fn within<T: Send + 'static>(
        self: &Arc<Self>,
        budget: Duration,
        call: impl Future<Output = T> + Send + 'static,
        failed: fn(&T) -> bool,
    ) -> Option<T> {
        if self.is_open() {
            if self.try_probe() {
                drop(self.spawn(call, failed));
            }
            return None;
        }
        match tokio::time::timeout(budget, self.spawn(call, failed)).await {
            Ok(outcome) => outcome.ok(),
            Err(_) => {
                // Slow counts as failed, before the call's own outcome is known.
                self.record(false);
                None
            }
        }
    }
}

/// Whether a shared vendor call failed (rather than answered): counted by the breaker.
fn shared_failed((shared, _): &(Shared, bool)) -> bool {
    match shared {
        Ok(response) => vendor_failed(response.status),
        Err(err) => {
            tracing::debug!(error = %err, "vendor call failed");
            err.is_vendor_failure()
        }
    }
}

/// `MISS` for the request that made the vendor call, `COALESCED` for those that shared it.
fn led_status(led: bool) -> CacheStatus {
    if led {
        CacheStatus::Miss
    } else {
        CacheStatus::Coalesced
    }
}

/// The vendor failed (rather than answered): worth a stale answer instead.
fn vendor_failed(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// The content type of cached JSON answers.
pub fn json_content_type() -> HeaderValue {
    HeaderValue::from_static(JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_entries: u64) -> CacheSettings {
        let policy = CachePolicy {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            stale_timeout: Duration::from_millis(500),
            max_entries,
        };
        CacheSettings {
            offline_count: policy,
            offline_status: policy,
            delivered_ttl: Duration::from_secs(60),
            presence: policy,
            sublist: policy,
            batch_window: Duration::from_millis(2),
            max_batch_users: 100,
        }
    }

    fn key(user: &str) -> Key<'_> {
        Key {
            kind: Kind::OfflineStatus,
            app: "app-id/x",
            user,
            extra: "1",
        }
    }

    fn json_body(entry: &Entry) -> Bytes {
        entry.body_bytes("", "", "")
    }

    fn answer() -> Fetch {
        Box::pin(std::future::ready(Ok(VendorResponse {
            status: StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: Bytes::from_static(br#"{"data":{"1":"undelivered"}}"#),
            elapsed: Duration::ZERO,
        })))
    }

    #[tokio::test]
    async fn a_call_abandoned_by_its_only_caller_leaves_the_table() {
        let cache = Arc::new(Cache::new(settings(100)));
        let abandoned = key("u");
        let read = cache.read(&abandoned, "/p", Instant::now(), json_body, || {
            Box::pin(std::future::pending())
        });
        let waited = tokio::time::timeout(Duration::from_millis(20), read).await;
        assert!(waited.is_err(), "the vendor never answers");
        assert_eq!(cache.calls_in_flight(), 0);
        let answered = cache
            .read(&key("u"), "/p", Instant::now(), json_body, answer)
            .await;
        assert!(matches!(answered, Ok(Answer::Vendor(_, CacheStatus::Miss))));
        assert_eq!(cache.calls_in_flight(), 0);
    }

    #[tokio::test]
    async fn no_more_than_max_entries_are_held() {
        let cache = Arc::new(Cache::new(settings(10)));
        for i in 0..200 {
            let user = format!("user{i}");
            assert!(cache
                .read(&key(&user), "/p", Instant::now(), json_body, answer)
                .await
                .is_ok());
        }
        let held = cache.entry_counts().await[Kind::OfflineStatus as usize].1;
        assert!((1..=10).contains(&held), "{held} held");
    }

    #[tokio::test]
    async fn a_stored_body_does_not_keep_the_buffer_it_was_read_into() {
        let settings = crate::config::RawConfig::parse(crate::demo::CONFIG)
            .expect("the demo config parses")
            .validate()
            .expect("the demo config is valid")
            .cache;
        let cache = Arc::new(Cache::new(settings));
        // A body as hyper hands it over: a slice of a larger read buffer.
        let buffer = Bytes::from(vec![b' '; 16 * 1024]);
        let body = br#"{"result":{"totalnum":"0","sublist":[]}}"#;
        let mut filled = buffer.to_vec();
        filled[..body.len()].copy_from_slice(body);
        let buffer = Bytes::from(filled);
        let sliced = buffer.slice(..body.len());
        let key = Key {
            kind: Kind::Sublist,
            app: "a",
            user: "u",
            extra: "",
        };
        let response = VendorResponse {
            status: StatusCode::OK,
            headers: http::HeaderMap::new(),
            body: sliced,
            elapsed: Duration::ZERO,
        };
        let fetch = move || Box::pin(std::future::ready(Ok(response))) as Fetch;
        cache
            .read(
                &key,
                "/o/a/users/u/presence/sublist",
                Instant::now(),
                json_body,
                fetch,
            )
            .await
            .unwrap();
        let found = cache.lookup(&key, Instant::now(), json_body).await;
        let stored = found.expect("stored").body.clone();
        assert_eq!(&stored[..], &body[..]);
        let within = buffer.as_ptr_range();
        assert!(
            !within.contains(&stored.as_ptr()),
            "the entry pins the read buffer"
        );
    }
}
