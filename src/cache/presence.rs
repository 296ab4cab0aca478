//! Presence batch gets, cached per (app, user) rather than per request body: a lookup answers
//! the cached users, fetches only the missing ones, and merges the results in request order.
//!
//! Misses from concurrent requests are merged by the [`Batcher`]: the users missing within a
//! short window (default 2 ms, at most 100 users) go to the vendor in one batch call, and a
//! user already on its way in a pending call is waited for rather than asked for again. While
//! a call of the app is in flight, the next batch keeps collecting until that call ends (or
//! the batch is full): under load, calls go out about once per vendor round trip with many
//! users each, rather than once per window with a few.
//!
//! Stale beats slow here too: a lookup whose missing users all have stale entries within
//! `stale_if_error` waits at most `stale_timeout` for the vendor, through the app's presence
//! breaker (see `Breaker` in the parent module), and answers from those entries.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{watch, Notify};

use super::{Body, Cache, CacheStatus, Entry, Fetch, Found, Key, Kind};
use crate::error::GatewayError;
use crate::upstream::VendorResponse;

/// The request body a cached batch get understands; anything else goes to the vendor as is.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    usernames: Vec<String>,
}

/// The users of a batch get body, if it is one the cache can answer (at most `max` users).
pub fn parse_request(body: &[u8], max: usize) -> Option<Vec<String>> {
    let request: BatchRequest = serde_json::from_slice(body).ok()?;
    (request.usernames.len() <= max).then_some(request.usernames)
}

/// How one vendor call for some users ended.
#[derive(Clone)]
pub enum BatchOutcome {
    /// 200: each user's presence entry as the vendor wrote it (users it omitted are absent).
    Found(Arc<HashMap<String, Bytes>>),
    /// The vendor answered something else: passed on to the caller it belongs to.
    Refused(Arc<VendorResponse>),
    /// No answer from the vendor.
    Failed(Arc<GatewayError>),
}

impl BatchOutcome {
    /// Whether the vendor failed (rather than answered): worth a stale answer instead.
    fn is_vendor_failure(&self) -> bool {
        match self {
            BatchOutcome::Found(_) => false,
            BatchOutcome::Refused(r) => super::vendor_failed(r.status),
            BatchOutcome::Failed(e) => e.is_vendor_failure(),
        }
    }
}

/// Whether any of the outcomes of a presence fetch is a vendor failure (for the breaker).
fn outcomes_failed((outcomes, _): &(Vec<BatchOutcome>, bool)) -> bool {
    outcomes.iter().any(BatchOutcome::is_vendor_failure)
}

/// How a merged call ended, for every request that waited on it.
enum Flushed {
    /// The merged call answered 200.
    Found(Arc<HashMap<String, Bytes>>),
    /// It failed in a way that concerns no caller in particular (no answer, or the vendor
    /// over its limit or failing): every waiter gets the same failure, and no call is repeated.
    Shared(BatchOutcome),
    /// The vendor refused it: each requesting caller's own call (its users, under its own
    /// uid), so that no caller ever sees another's error or user ids.
    PerCaller(HashMap<String, (Vec<String>, BatchOutcome)>),
    /// The flush ended without an outcome (it panicked).
    Abandoned,
}

/// Builds the vendor call for some users: the caller uid of the path, and the users.
pub type SendBatch = Arc<dyn Fn(&str, &[String]) -> Fetch + Send + Sync>;

/// The app a presence lookup is for.
#[derive(Debug, Clone, Copy)]
pub struct PresenceApp<'a> {
    /// Its vendor identity (what its entries are keyed by).
    pub key: &'a str,
    /// The running app instance: batches never outlive it, nor mix two instances of one name.
    pub instance: u64,
}

type Done = watch::Sender<Option<Arc<Flushed>>>;
type Wait = watch::Receiver<Option<Arc<Flushed>>>;

struct Batch {
    users: Vec<String>,
    /// Each caller uid that added users, and the users it added.
    requests: Vec<(String, Vec<String>)>,
    send: SendBatch,
    done: Done,
    /// Wakes the flush early when the batch is full.
    full: Arc<Notify>,
    /// The sequence number its call started at (0 until it starts).
    started: Arc<AtomicU64>,
}

impl Batch {
    fn new(send: SendBatch) -> Batch {
        Batch {
            users: Vec::new(),
            requests: Vec::new(),
            send,
            done: watch::channel(None).0,
            full: Arc::new(Notify::new()),
            started: Arc::new(AtomicU64::new(0)),
        }
    }

    fn add(&mut self, caller: &str, user: String) {
        match self.requests.iter_mut().find(|(c, _)| c == caller) {
            Some((_, users)) => users.push(user.clone()),
            None => self.requests.push((caller.to_owned(), vec![user.clone()])),
        }
        self.users.push(user);
    }
}

/// A user whose presence is on its way.
struct Pending {
    done: Wait,
    started: Arc<AtomicU64>,
}

#[derive(Default)]
struct AppBatches {
    open: Option<Batch>,
    pending: HashMap<String, Pending>,
    /// Merged calls of this app in flight.
    in_flight: usize,
    /// Signalled when one of them ends.
    call_ended: Arc<Notify>,
    /// A caller uid the vendor accepted: merged calls of several callers go out under it.
    accepted: Option<String>,
}

impl AppBatches {
    fn is_idle(&self) -> bool {
        self.open.is_none() && self.pending.is_empty() && self.in_flight == 0
    }
}

/// Merges presence lookups into vendor batch calls, per app instance.
pub struct Batcher {
    window: Duration,
    max_users: usize,
    apps: Mutex<HashMap<u64, AppBatches>>,
}

impl Batcher {
    /// A batcher merging lookups that arrive within `window`, at most `max_users` per call.
    pub fn new(window: Duration, max_users: usize) -> Batcher {
        Batcher {
            window,
            max_users,
            apps: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, AppBatches>> {
        self.apps.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The answer to one batch get.
pub struct BatchAnswer {
    /// `{"result":[…]}` in request order.
    pub body: Bytes,
    /// `X-Cache`.
    pub status: CacheStatus,
    /// Age of the oldest cached entry used.
    pub age: Duration,
}

/// What a batch get could not answer from the cache.
pub enum BatchError {
    /// The vendor's own answer to this caller's call (an error status).
    Vendor(Arc<VendorResponse>),
    /// imgate's error.
    Gateway(Arc<GatewayError>),
}

impl Cache {
    /// Answers a batch get of `users` (already validated) for `app`: cached users from the
    /// cache, the others through the batcher. `caller` is the `{uid}` of the request's path.
    /// When every user it lacks has a stale entry (within `stale_if_error`), the vendor gets
    /// `stale_timeout` and the app's presence breaker applies, as for the other cached reads.
    pub async fn presence(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        caller: &str,
        users: &[String],
        send: SendBatch,
        sizes: &prometheus::Histogram,
    ) -> Result<BatchAnswer, BatchError> {
        let policy = *self.policy(Kind::Presence);
        let now = Instant::now();
        let mut found: HashMap<&str, (Arc<Found>, bool)> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        let mut fallback: HashMap<&str, Arc<Found>> = HashMap::new();
        let mut revalidate: Vec<String> = Vec::new();
        for user in unique(users) {
            let key = Key {
                kind: Kind::Presence,
                app: app.key,
                user,
                extra: "",
            };
            let render = |e: &Entry| e.body_bytes("", "", user);
            match self.lookup(&key, now, render).await {
                Some(f) if now < f.entry.fresh_until() => {
                    found.insert(user, (f, false));
                }
                Some(f) if now < f.entry.fresh_until() + policy.stale_while_revalidate => {
                    if !f.entry.refreshing.swap(true, Ordering::AcqRel) {
                        revalidate.push(user.to_owned());
                    }
                    found.insert(user, (f, true));
                }
                Some(f) => {
                    if now < f.entry.fresh_until() + policy.stale_if_error {
                        fallback.insert(user, f);
                    }
                    missing.push(user.to_owned());
                }
                None => missing.push(user.to_owned()),
            }
        }
        // Looked up only off the hit path.
        let breaker = || {
            self.breaker(&Key {
                kind: Kind::Presence,
                app: app.key,
                user: "",
                extra: "",
            })
        };
        if !revalidate.is_empty() {
            let call = self.owned_fetch_presence(app, caller, revalidate, send.clone(), sizes);
            drop(breaker().spawn(call, outcomes_failed));
        }
        let mut status = if found.values().any(|(_, stale)| *stale) {
            CacheStatus::Stale
        } else {
            CacheStatus::Hit
        };
        let mut fetched = HashMap::new();
        if !missing.is_empty() {
            let all_stale = missing.iter().all(|u| fallback.contains_key(u.as_str()));
            // Stale beats slow when every missing user has a stale entry to stand in (`None`:
            // the vendor is slow, or failing and its breaker open).
            let fetched_in_time = if all_stale {
                let call = self.owned_fetch_presence(app, caller, missing, send, sizes);
                breaker()
                    .within(policy.stale_timeout, call, outcomes_failed)
                    .await
            } else {
                Some(self.fetch_presence(app, caller, missing, send, sizes).await)
            };
            let mut serve_stale = fetched_in_time.is_none();
            if let Some((outcomes, led)) = fetched_in_time {
                status = super::led_status(led);
                for outcome in outcomes {
                    match outcome {
                        BatchOutcome::Found(map) => {
                            fetched.extend(map.iter().map(|(u, b)| (u.clone(), b.clone())));
                        }
                        failed if all_stale && failed.is_vendor_failure() => serve_stale = true,
                        BatchOutcome::Refused(r) => return Err(BatchError::Vendor(r)),
                        BatchOutcome::Failed(e) => return Err(BatchError::Gateway(e)),
                    }
                }
            }
            if serve_stale {
                for (user, stale) in fallback.drain() {
                    found.insert(user, (stale, true));
                }
                status = CacheStatus::Stale;
            }
        }
        let mut age = Duration::ZERO;
        let mut body = Vec::with_capacity(16 + users.len() * 96);
        body.extend_from_slice(br#"{"result":["#);
        let mut first = true;
        for user in users {
            let bytes = match (found.get(user.as_str()), fetched.get(user)) {
                (Some((found, _)), _) => {
                    age = age.max(now.saturating_duration_since(found.entry.stored_at));
                    found.body.clone()
                }
                (None, Some(bytes)) => bytes.clone(),
                // The vendor omitted this user: so does the answer.
                (None, None) => continue,
            };
            if !first {
                body.push(b',');
            }
            first = false;
            body.extend_from_slice(&bytes);
        }
        body.extend_from_slice(b"]}");
        Ok(BatchAnswer {
            body: Bytes::from(body),
            status,
            age,
        })
    }

    /// Gets `users` through the batcher: joins the calls already on their way for some (unless
    /// they started before the user's presence was last invalidated), and adds the others to
    /// the open batch. Returns the outcomes that concern this caller, and whether this request
    /// opened a batch it waited on.
    async fn fetch_presence(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        caller: &str,
        users: Vec<String>,
        send: SendBatch,
        sizes: &prometheus::Histogram,
    ) -> (Vec<BatchOutcome>, bool) {
        let mut fences = Vec::with_capacity(users.len());
        for user in &users {
            fences.push(self.fence(Kind::Presence, app.key, user).await);
        }
        let mut waits: Vec<(Wait, Vec<String>)> = Vec::new();
        let mut wait_for = |done: &Wait, user: String| match waits
            .iter_mut()
            .find(|(w, _)| w.same_channel(done))
        {
            Some((_, users)) => users.push(user),
            None => waits.push((done.clone(), vec![user])),
        };
        let mut led = false;
        {
            let mut apps = self.batcher.lock();
            let batches = apps.entry(app.instance).or_default();
            for (user, fence) in users.into_iter().zip(fences) {
                if let Some(pending) = batches.pending.get(&user) {
                    let started = pending.started.load(Ordering::Acquire);
                    if started == 0 || started >= fence {
                        wait_for(&pending.done, user);
                        continue;
                    }
                }
                if batches
                    .open
                    .as_ref()
                    .is_none_or(|b| b.users.len() >= self.batcher.max_users)
                {
                    let batch = Batch::new(send.clone());
                    let (full, receiver) = (batch.full.clone(), batch.done.subscribe());
                    // A full batch is replaced; the flush task finds its own by its channel.
                    if let Some(previous) = batches.open.replace(batch) {
                        batches.in_flight += 1;
                        self.spawn_flush_now(app, previous, sizes);
                    }
                    self.spawn_flush(app, receiver, full, sizes.clone());
                    led = true;
                }
                let Some(open) = batches.open.as_mut() else {
                    continue;
                };
                let pending = Pending {
                    done: open.done.subscribe(),
                    started: open.started.clone(),
                };
                wait_for(&pending.done, user.clone());
                batches.pending.insert(user.clone(), pending);
                open.add(caller, user);
            }
            if let Some(open) = batches
                .open
                .as_ref()
                .filter(|b| b.users.len() >= self.batcher.max_users)
            {
                open.full.notify_one();
            }
        }
        let mut outcomes = Vec::new();
        let mut seen = HashSet::new();
        for (mut wait, users) in waits {
            let flushed = wait
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|f| f.clone());
            let outcome = match flushed.as_deref() {
                None | Some(Flushed::Abandoned) => {
                    BatchOutcome::Failed(Arc::new(GatewayError::BatchAbandoned))
                }
                Some(Flushed::Found(map)) => BatchOutcome::Found(map.clone()),
                Some(Flushed::Shared(failure)) => failure.clone(),
                Some(Flushed::PerCaller(calls)) => match calls.get(caller) {
                    Some((asked, own)) if users.iter().all(|u| asked.contains(u)) => own.clone(),
                    // The merged call failed and this caller's own call did not cover these
                    // users: ask for them alone, under this caller's uid.
                    _ => {
                        let seq = self.current_seq();
                        self.presence_call(app.key, &send, caller, &users, seq)
                            .await
                    }
                },
            };
            // One outcome per call, however many users waited on it.
            let id = match &outcome {
                BatchOutcome::Found(m) => Arc::as_ptr(m) as *const () as usize,
                BatchOutcome::Refused(r) => Arc::as_ptr(r) as *const () as usize,
                BatchOutcome::Failed(e) => Arc::as_ptr(e) as *const () as usize,
            };
            if seen.insert(id) {
                outcomes.push(outcome);
            }
        }
        (outcomes, led)
    }

    /// [`Cache::fetch_presence`] as a future that owns what it needs, so that it can run in a
    /// task of its own (a revalidation, or a call that outlasts the stale timeout).
    fn owned_fetch_presence(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        caller: &str,
        users: Vec<String>,
        send: SendBatch,
        sizes: &prometheus::Histogram,
    ) -> impl Future<Output = (Vec<BatchOutcome>, bool)> + Send + 'static {
        let (cache, key, instance, caller, sizes) = (
            self.clone(),
            app.key.to_owned(),
            app.instance,
            caller.to_owned(),
            sizes.clone(),
        );
        async move {
            let app = PresenceApp {
                key: &key,
                instance,
            };
            cache
                .fetch_presence(app, &caller, users, send, &sizes)
                .await
        }
    }

    /// Flushes the batch whose outcome `receiver` awaits once the window passes (or it fills).
    fn spawn_flush(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        receiver: Wait,
        full: Arc<Notify>,
        sizes: prometheus::Histogram,
    ) {
        let (cache, key, instance) = (self.clone(), app.key.to_owned(), app.instance);
        let window = self.batcher.window;
        tokio::spawn(async move {
            let app = PresenceApp {
                key: &key,
                instance,
            };
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = full.notified() => {}
            }
            loop {
                let call_ended = {
                    let mut apps = cache.batcher.lock();
                    match apps.get_mut(&instance) {
                        // Gone, or already flushed because it filled up.
                        Some(b)
                            if b.open
                                .as_ref()
                                .is_some_and(|o| receiver.same_channel(&o.done.subscribe())) =>
                        {
                            let full = b
                                .open
                                .as_ref()
                                .is_some_and(|o| o.users.len() >= cache.batcher.max_users);
                            if b.in_flight == 0 || full {
                                b.in_flight += 1;
                                Err(b.open.take())
                            } else {
                                Ok(b.call_ended.clone())
                            }
                        }
                        _ => Err(None),
                    }
                };
                let call_ended = match call_ended {
                    Ok(call_ended) => call_ended,
                    Err(batch) => {
                        if let Some(batch) = batch {
                            cache.flush(app, batch, &sizes).await;
                        }
                        return;
                    }
                };
                let ended = call_ended.notified();
                tokio::pin!(ended);
                // Registered before a call can end unseen: re-check under the lock first.
                ended.as_mut().enable();
                let still_busy = cache
                    .batcher
                    .lock()
                    .get(&instance)
                    .is_some_and(|b| b.in_flight > 0);
                if still_busy {
                    tokio::select! {
                        () = ended => {}
                        () = full.notified() => {}
                    }
                }
            }
        });
    }

    /// Sends a full batch at once (the caller holds the lock and counts it in flight).
    fn spawn_flush_now(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        batch: Batch,
        sizes: &prometheus::Histogram,
    ) {
        let (cache, key, instance, sizes) = (
            self.clone(),
            app.key.to_owned(),
            app.instance,
            sizes.clone(),
        );
        tokio::spawn(async move {
            let app = PresenceApp {
                key: &key,
                instance,
            };
            cache.flush(app, batch, &sizes).await;
        });
    }

    /// Sends one merged call (re-issued per caller if it fails), stores what it found, and
    /// wakes everyone waiting on it. The bookkeeping is undone even if this panics.
    async fn flush(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        batch: Batch,
        sizes: &prometheus::Histogram,
    ) {
        sizes.observe(batch.users.len() as f64);
        let seq = self.current_seq();
        batch.started.store(seq, Ordering::Release);
        let mut landing = Landing {
            cache: self,
            instance: app.instance,
            batch: &batch,
            flushed: None,
        };
        let callers: Vec<&str> = batch.requests.iter().map(|(c, _)| c.as_str()).collect();
        let accepted = self
            .batcher
            .lock()
            .get(&app.instance)
            .and_then(|b| b.accepted.clone());
        let uid = match (callers.as_slice(), &accepted) {
            ([only], _) => *only,
            (_, Some(accepted)) => accepted.as_str(),
            (callers, None) => callers.first().copied().unwrap_or(""),
        };
        let merged = self
            .presence_call(app.key, &batch.send, uid, &batch.users, seq)
            .await;
        let flushed = match merged {
            BatchOutcome::Found(map) => {
                if let Some(batches) = self.batcher.lock().get_mut(&app.instance) {
                    batches.accepted = Some(uid.to_owned());
                }
                Flushed::Found(map)
            }
            failure if !refused_for_a_caller(&failure) => Flushed::Shared(failure),
            failure if callers.len() == 1 => {
                let (caller, users) = batch.requests[0].clone();
                Flushed::PerCaller(HashMap::from([(caller, (users, failure))]))
            }
            _ => Flushed::PerCaller(self.per_caller(app, &batch, seq).await),
        };
        landing.flushed = Some(Arc::new(flushed));
    }

    /// Each requesting caller's users under its own uid, concurrently.
    async fn per_caller(
        self: &Arc<Self>,
        app: PresenceApp<'_>,
        batch: &Batch,
        seq: u64,
    ) -> HashMap<String, (Vec<String>, BatchOutcome)> {
        let mut calls = tokio::task::JoinSet::new();
        for (caller, users) in batch.requests.clone() {
            let (cache, key, send) = (self.clone(), app.key.to_owned(), batch.send.clone());
            calls.spawn(async move {
                let outcome = cache.presence_call(&key, &send, &caller, &users, seq).await;
                (caller, (users, outcome))
            });
        }
        let mut outcomes = HashMap::new();
        while let Some(done) = calls.join_next().await {
            if let Ok((caller, outcome)) = done {
                outcomes.insert(caller, outcome);
            }
        }
        outcomes
    }

    /// One vendor call for `users` under `caller`'s uid; stores what it found.
    async fn presence_call(
        &self,
        app: &str,
        send: &SendBatch,
        caller: &str,
        users: &[String],
        seq: u64,
    ) -> BatchOutcome {
        match send(caller, users).await {
            Ok(response) if response.status == StatusCode::OK => {
                match split_result(&response.body) {
                    Some(entries) => {
                        for (user, bytes) in &entries {
                            self.store_presence(app, user, bytes.clone(), seq).await;
                        }
                        BatchOutcome::Found(Arc::new(entries))
                    }
                    None => BatchOutcome::Refused(Arc::new(response)),
                }
            }
            Ok(response) => BatchOutcome::Refused(Arc::new(response)),
            Err(err) => BatchOutcome::Failed(Arc::new(err)),
        }
    }

    /// Stores one user's presence entry, as fetched from sequence `seq` on.
    pub async fn store_presence(&self, app: &str, user: &str, entry: Bytes, seq: u64) {
        let policy = self.policy(Kind::Presence);
        let entry = Entry::new(
            policy.ttl,
            policy,
            seq,
            true,
            self.hashes.app(app),
            Body::Json(entry),
        );
        let key = Key {
            kind: Kind::Presence,
            app,
            user,
            extra: "",
        };
        self.insert(&key, self.hashes.entry(&key), entry).await;
    }

    /// The sequence number a write-through refresh stores its entries with.
    pub fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }
}

/// A flushed batch's bookkeeping, undone on drop (also when the flush panics): the app's
/// in-flight count, its pending users, and the outcome its waiters wake to.
struct Landing<'a> {
    cache: &'a Cache,
    instance: u64,
    batch: &'a Batch,
    flushed: Option<Arc<Flushed>>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        {
            let mut apps = self.cache.batcher.lock();
            if let Some(batches) = apps.get_mut(&self.instance) {
                batches.in_flight = batches.in_flight.saturating_sub(1);
                batches.call_ended.notify_waiters();
                let done = &self.batch.done;
                for user in &self.batch.users {
                    if batches
                        .pending
                        .get(user)
                        .is_some_and(|p| p.done.same_channel(&done.subscribe()))
                    {
                        batches.pending.remove(user);
                    }
                }
                if batches.is_idle() {
                    apps.remove(&self.instance);
                }
            }
        }
        let flushed = self
            .flushed
            .take()
            .unwrap_or_else(|| Arc::new(Flushed::Abandoned));
        self.batch.done.send_replace(Some(flushed));
    }
}

/// Whether the vendor refused a call for something in the request (a 4xx other than 429): an
/// answer that may name the caller's uid or users, and that another caller's call may not get.
fn refused_for_a_caller(outcome: &BatchOutcome) -> bool {
    matches!(outcome, BatchOutcome::Refused(r) if r.status.is_client_error() && !super::vendor_failed(r.status))
}

/// Each requested user once, in request order.
fn unique(users: &[String]) -> impl Iterator<Item = &str> {
    let mut seen = HashSet::new();
    users
        .iter()
        .map(String::as_str)
        .filter(move |u| seen.insert(*u))
}

/// `{"result":[{…"uid":…}, …]}` → each entry's bytes by uid, exactly as the vendor wrote them.
pub fn split_result(body: &[u8]) -> Option<HashMap<String, Bytes>> {
    #[derive(Deserialize)]
    struct Result<'a> {
        #[serde(borrow)]
        result: Vec<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Uid {
        uid: String,
    }
    let parsed: Result<'_> = serde_json::from_slice(body).ok()?;
    let mut entries = HashMap::with_capacity(parsed.result.len());
    for raw in parsed.result {
        let Uid { uid } = serde_json::from_str(raw.get()).ok()?;
        entries.insert(uid, Bytes::copy_from_slice(raw.get().as_bytes()));
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_split_by_uid_byte_for_byte() {
        let body = br#"{"result":[{"uid":"a","last_time":"1","ext":"","status":{"x":"1"}},{"uid":"b","last_time":"2","ext":"e","status":{}}]}"#;
        let entries = split_result(body).unwrap();
        assert_eq!(
            entries["a"],
            &br#"{"uid":"a","last_time":"1","ext":"","status":{"x":"1"}}"#[..]
        );
        assert_eq!(
            entries["b"],
            &br#"{"uid":"b","last_time":"2","ext":"e","status":{}}"#[..]
        );
        assert!(split_result(br#"{"result":"ok"}"#).is_none());
    }

    #[test]
    fn only_plain_batch_bodies_within_the_limit_are_cacheable() {
        assert_eq!(
            parse_request(br#"{"usernames":["a","b"]}"#, 100).unwrap(),
            vec!["a", "b"]
        );
        assert!(parse_request(br#"{"usernames":["a","b"]}"#, 1).is_none());
        assert!(parse_request(br#"{"usernames":"a"}"#, 100).is_none());
        assert!(parse_request(br#"{"usernames":[],"x":1}"#, 100).is_none());
        assert!(parse_request(b"nope", 100).is_none());
    }

    #[test]
    fn duplicates_are_looked_up_once_in_order() {
        let users: Vec<String> = ["b", "a", "b", "c", "a"].map(String::from).to_vec();
        assert_eq!(unique(&users).collect::<Vec<_>>(), vec!["b", "a", "c"]);
    }
}
