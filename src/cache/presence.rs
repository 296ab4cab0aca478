//! Presence batch gets, cached per (app, user) rather than per request body: a lookup answers
//! the cached users, fetches only the missing ones, and merges the results in request order.
//!
//! Misses from concurrent requests are merged by the [`Batcher`]: the users missing within a
//! short window (default 2 ms, at most 100 users) go to the vendor in one batch call, and a
//! user already on its way in a pending call is waited for rather than asked for again. While
//! a call of the app is in flight, the next batch keeps collecting until that call ends (or
//! the batch is full): under load, calls go out about once per vendor round trip with many
//! users each, rather than once per window with a few.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::{Body, Cache, CacheStatus, Entry, Fetch, Key, Kind};
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

/// How a merged vendor call ended.
#[derive(Clone)]
pub enum BatchOutcome {
    /// 200: each user's presence entry as the vendor wrote it (users it omitted are absent).
    Found(Arc<HashMap<String, Bytes>>),
    /// The vendor answered something else: passed on to the callers.
    Refused(Arc<VendorResponse>),
    /// No answer from the vendor.
    Failed(Arc<GatewayError>),
}

/// Builds the vendor call for a merged batch: the caller uid of the path, and the users.
pub type SendBatch = Arc<dyn Fn(&str, &[String]) -> Fetch + Send + Sync>;

struct Batch {
    users: Vec<String>,
    caller: String,
    send: SendBatch,
    done: watch::Sender<Option<BatchOutcome>>,
    /// Wakes the flush early when the batch is full.
    full: Arc<tokio::sync::Notify>,
}

#[derive(Default)]
struct AppBatches {
    open: Option<Batch>,
    /// Users whose presence is on its way, and the outcome to wait for.
    pending: HashMap<String, watch::Receiver<Option<BatchOutcome>>>,
    /// Merged calls of this app in flight.
    in_flight: usize,
    /// Signalled when one of them ends.
    call_ended: Arc<tokio::sync::Notify>,
}

/// Merges presence lookups into vendor batch calls, per app.
pub struct Batcher {
    window: Duration,
    max_users: usize,
    apps: Mutex<HashMap<String, AppBatches>>,
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
    /// The vendor's own answer to the merged call (an error status).
    Vendor(Arc<VendorResponse>),
    /// imgate's error.
    Gateway(Arc<GatewayError>),
}

impl Cache {
    /// Answers a batch get of `users` (already validated) for `app`: cached users from the
    /// cache, the others through the batcher. `caller` is the `{uid}` of the request's path.
    pub async fn presence(
        self: &Arc<Self>,
        app: &str,
        caller: &str,
        users: &[String],
        send: SendBatch,
        sizes: &prometheus::Histogram,
    ) -> Result<BatchAnswer, BatchError> {
        let policy = *self.policy(Kind::Presence);
        let now = Instant::now();
        let mut found: HashMap<&str, (Arc<Entry>, bool)> = HashMap::new();
        let mut missing: Vec<String> = Vec::new();
        let mut fallback: HashMap<&str, Arc<Entry>> = HashMap::new();
        let mut revalidate: Vec<String> = Vec::new();
        for user in unique(users) {
            let key = Key {
                kind: Kind::Presence,
                app,
                user,
                extra: "",
            };
            match self.lookup(&key).await {
                Some(e) if now < e.fresh_until() => {
                    found.insert(user, (e, false));
                }
                Some(e) if now < e.fresh_until() + policy.stale_while_revalidate => {
                    if !e.refreshing.swap(true, std::sync::atomic::Ordering::AcqRel) {
                        revalidate.push(user.to_owned());
                    }
                    found.insert(user, (e, true));
                }
                Some(e) => {
                    if now < e.fresh_until() + policy.stale_if_error {
                        fallback.insert(user, e);
                    }
                    missing.push(user.to_owned());
                }
                None => missing.push(user.to_owned()),
            }
        }
        if !revalidate.is_empty() {
            let (cache, app, caller, send, sizes) = (
                self.clone(),
                app.to_owned(),
                caller.to_owned(),
                send.clone(),
                sizes.clone(),
            );
            tokio::spawn(async move {
                cache
                    .fetch_presence(&app, &caller, revalidate, send, &sizes)
                    .await;
            });
        }
        let mut status = if found.values().any(|(_, stale)| *stale) {
            CacheStatus::Stale
        } else {
            CacheStatus::Hit
        };
        let mut fetched = HashMap::new();
        if !missing.is_empty() {
            let (outcomes, led) = self
                .fetch_presence(app, caller, missing.clone(), send, sizes)
                .await;
            status = if led {
                CacheStatus::Miss
            } else {
                CacheStatus::Coalesced
            };
            for outcome in outcomes {
                match outcome {
                    BatchOutcome::Found(map) => {
                        fetched.extend(map.iter().map(|(u, b)| (u.clone(), b.clone())))
                    }
                    failure => {
                        // The vendor failed: stale entries may stand in for every missing user.
                        let vendor_failed = match &failure {
                            BatchOutcome::Refused(r) => super::vendor_failed(r.status),
                            BatchOutcome::Failed(e) => e.is_vendor_failure(),
                            BatchOutcome::Found(_) => false,
                        };
                        if vendor_failed
                            && missing.iter().all(|u| fallback.contains_key(u.as_str()))
                        {
                            for (user, entry) in fallback.drain() {
                                found.insert(user, (entry, true));
                            }
                            status = CacheStatus::Stale;
                            continue;
                        }
                        return Err(match failure {
                            BatchOutcome::Refused(r) => BatchError::Vendor(r),
                            BatchOutcome::Failed(e) => BatchError::Gateway(e),
                            BatchOutcome::Found(_) => unreachable!("handled above"),
                        });
                    }
                }
            }
        }
        let mut age = Duration::ZERO;
        let mut body = Vec::with_capacity(16 + users.len() * 96);
        body.extend_from_slice(br#"{"result":["#);
        let mut first = true;
        for user in users {
            let bytes = match (found.get(user.as_str()), fetched.get(user)) {
                (Some((entry, _)), _) => {
                    age = age.max(now.saturating_duration_since(entry.stored_at));
                    entry.body_bytes("", "", user)
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

    /// Gets `users` through the batcher: joins the calls already on their way for some, and
    /// adds the others to the open batch. Returns the outcomes to combine, and whether this
    /// request opened a batch it waited on.
    async fn fetch_presence(
        self: &Arc<Self>,
        app: &str,
        caller: &str,
        users: Vec<String>,
        send: SendBatch,
        sizes: &prometheus::Histogram,
    ) -> (Vec<BatchOutcome>, bool) {
        let mut waits: Vec<watch::Receiver<Option<BatchOutcome>>> = Vec::new();
        let mut led = false;
        {
            let mut apps = self.batcher.apps.lock().unwrap_or_else(|p| p.into_inner());
            let batches = apps.entry(app.to_owned()).or_default();
            for user in users {
                if let Some(pending) = batches.pending.get(&user) {
                    waits.push(pending.clone());
                    continue;
                }
                if batches
                    .open
                    .as_ref()
                    .is_none_or(|b| b.users.len() >= self.batcher.max_users)
                {
                    let (done, _) = watch::channel(None);
                    let batch = Batch {
                        users: Vec::new(),
                        caller: caller.to_owned(),
                        send: send.clone(),
                        done,
                        full: Arc::new(tokio::sync::Notify::new()),
                    };
                    let (full, receiver) = (batch.full.clone(), batch.done.subscribe());
                    // A full batch is replaced; the flush task finds its own by its channel.
                    if let Some(previous) = batches.open.replace(batch) {
                        batches.in_flight += 1;
                        self.spawn_flush_now(app, previous, sizes);
                    }
                    self.spawn_flush(app.to_owned(), receiver, full, sizes.clone());
                    led = true;
                }
                let open = batches.open.as_mut().expect("just opened");
                let receiver = open.done.subscribe();
                if !waits.iter().any(|w| w.same_channel(&receiver)) {
                    waits.push(receiver.clone());
                }
                batches.pending.insert(user.clone(), receiver);
                open.users.push(user);
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
        for mut wait in waits {
            let outcome = wait
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|o| o.clone());
            let outcome = outcome
                .unwrap_or_else(|| BatchOutcome::Failed(Arc::new(GatewayError::BatchAbandoned)));
            // One outcome per batch, however many users waited on it.
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

    /// Flushes the batch whose outcome `receiver` awaits once the window passes (or it fills).
    fn spawn_flush(
        self: &Arc<Self>,
        app: String,
        receiver: watch::Receiver<Option<BatchOutcome>>,
        full: Arc<tokio::sync::Notify>,
        sizes: prometheus::Histogram,
    ) {
        let cache = self.clone();
        let window = self.batcher.window;
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(window) => {}
                () = full.notified() => {}
            }
            loop {
                let call_ended = {
                    let mut apps = cache.batcher.apps.lock().unwrap_or_else(|p| p.into_inner());
                    match apps.get_mut(&app) {
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
                            cache.flush(&app, batch, &sizes).await;
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
                    .apps
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&app)
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
    fn spawn_flush_now(self: &Arc<Self>, app: &str, batch: Batch, sizes: &prometheus::Histogram) {
        let (cache, app, sizes) = (self.clone(), app.to_owned(), sizes.clone());
        tokio::spawn(async move { cache.flush(&app, batch, &sizes).await });
    }

    /// Sends one merged call, stores what it found, and wakes everyone waiting on it.
    async fn flush(&self, app: &str, batch: Batch, sizes: &prometheus::Histogram) {
        sizes.observe(batch.users.len() as f64);
        let seq = self.seq.load(std::sync::atomic::Ordering::Acquire);
        let outcome = match (batch.send)(&batch.caller, &batch.users).await {
            Ok(response) if response.status == StatusCode::OK => match split_result(&response.body)
            {
                Some(entries) => {
                    for (user, bytes) in &entries {
                        self.store_presence(app, user, bytes.clone(), seq).await;
                    }
                    BatchOutcome::Found(Arc::new(entries))
                }
                None => BatchOutcome::Refused(Arc::new(response)),
            },
            Ok(response) => BatchOutcome::Refused(Arc::new(response)),
            Err(err) => BatchOutcome::Failed(Arc::new(err)),
        };
        {
            let mut apps = self.batcher.apps.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(batches) = apps.get_mut(app) {
                batches.in_flight = batches.in_flight.saturating_sub(1);
                batches.call_ended.notify_waiters();
                for user in &batch.users {
                    if batches
                        .pending
                        .get(user)
                        .is_some_and(|r| r.same_channel(&batch.done.subscribe()))
                    {
                        batches.pending.remove(user);
                    }
                }
            }
        }
        batch.done.send_replace(Some(outcome));
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
        self.seq.load(std::sync::atomic::Ordering::Acquire)
    }
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
