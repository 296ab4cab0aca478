//! A cached answer ([`Entry`]): its body (the vendor's JSON, or an offline count kept as its
//! numbers and rendered back byte for byte on a hit) and its lifetimes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::CachePolicy;

/// What a cached answer holds.
#[derive(Debug)]
pub enum Body {
    /// The vendor's JSON body as sent (decoded, whatever encoding it travelled in).
    Json(Bytes),
    /// An offline count, rendered on a hit exactly as the vendor sent it.
    OfflineCount {
        /// The vendor's `uri` up to the request path (shared by every entry of an app).
        uri_base: Arc<str>,
        /// `data.{user}`.
        count: u64,
        /// `timestamp`.
        timestamp: u64,
        /// `duration`.
        duration: u64,
    },
}

/// A cached 200 answer. Kept small: a million of them must fit in the memory budget.
#[derive(Debug)]
pub struct Entry {
    /// When the vendor answered (for `Age`).
    pub stored_at: Instant,
    /// Fresh for this many milliseconds after `stored_at`…
    fresh_ms: u32,
    /// …and servable (stale) for this many.
    alive_ms: u32,
    /// Sequence number current when the vendor call started (see the module notes).
    pub(super) seq: u64,
    /// Whether group invalidations apply (a `delivered` status is final: they do not).
    pub(super) invalidatable: bool,
    /// Hash of the app's identity, for purges by app.
    pub(super) app: u64,
    /// Set while one background call refreshes the entry.
    pub(super) refreshing: AtomicBool,
    /// The answer.
    pub body: Body,
}

impl Entry {
    /// An entry stored now: fresh for `ttl`, then servable for the policy's stale windows.
    pub(super) fn new(
        ttl: Duration,
        policy: &CachePolicy,
        seq: u64,
        invalidatable: bool,
        app: u64,
        body: Body,
    ) -> Entry {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let stale = policy.stale_while_revalidate.max(policy.stale_if_error);
        Entry {
            stored_at: Instant::now(),
            fresh_ms: ms(ttl),
            alive_ms: ms(ttl.saturating_add(stale)),
            seq,
            invalidatable,
            app,
            refreshing: AtomicBool::new(false),
            body,
        }
    }

    /// The end of the entry's freshness.
    pub(super) fn fresh_until(&self) -> Instant {
        self.stored_at + Duration::from_millis(u64::from(self.fresh_ms))
    }

    /// Whether the entry may still be served at `now` (fresh, or within a stale window).
    pub(super) fn is_alive(&self, now: Instant) -> bool {
        now < self.alive_until()
    }

    /// When the entry stops being servable.
    pub(super) fn alive_until(&self) -> Instant {
        self.stored_at + Duration::from_millis(u64::from(self.alive_ms))
    }

    /// The body bytes; `path`, `suffix` and `user` are the request's canonical ones (for a
    /// rendered count).
    pub fn body_bytes(&self, path: &str, suffix: &str, user: &str) -> Bytes {
        match &self.body {
            Body::Json(bytes) => bytes.clone(),
            Body::OfflineCount {
                uri_base,
                count,
                timestamp,
                duration,
            } => Bytes::from(render_count(
                uri_base, path, suffix, user, *count, *timestamp, *duration,
            )),
        }
    }
}

/// The numbers of an offline-count body and its `uri` up to `path`, if it renders back byte
/// for byte (else the body is stored whole).
pub(super) fn parse_count<'b>(
    body: &'b [u8],
    value: &'b Value,
    path: &str,
    user: &str,
) -> Option<(&'b str, u64, u64, u64)> {
    let uri = value.get("uri")?.as_str()?;
    let uri_base = uri.strip_suffix(path)?;
    let suffix = value.get("path")?.as_str()?;
    let count = value.get("data")?.get(user)?.as_u64()?;
    let timestamp = value.get("timestamp")?.as_u64()?;
    let duration = value.get("duration")?.as_u64()?;
    let rendered = render_count(uri_base, path, suffix, user, count, timestamp, duration);
    (rendered == body).then_some((uri_base, count, timestamp, duration))
}

/// Whether an offline-status body says `msg_id` was delivered (final).
pub(super) fn is_delivered(body: &[u8], msg_id: &str) -> bool {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.get("data")?
                .get(msg_id)?
                .as_str()
                .map(|s| s == "delivered")
        })
        .unwrap_or(false)
}

/// The vendor's offline-count body, field by field as the vendor writes it.
fn render_count(
    uri_base: &str,
    path: &str,
    suffix: &str,
    user: &str,
    count: u64,
    timestamp: u64,
    duration: u64,
) -> Vec<u8> {
    let (mut c, mut t, mut d) = (
        itoa::Buffer::new(),
        itoa::Buffer::new(),
        itoa::Buffer::new(),
    );
    let parts: [&[u8]; 14] = [
        br#"{"action":"get","uri":""#,
        uri_base.as_bytes(),
        path.as_bytes(),
        br#"","path":""#,
        suffix.as_bytes(),
        br#"","entities":[],"data":{""#,
        user.as_bytes(),
        br#"":"#,
        c.format(count).as_bytes(),
        br#"},"timestamp":"#,
        t.format(timestamp).as_bytes(),
        br#","duration":"#,
        d.format(duration).as_bytes(),
        br#","count":0}"#,
    ];
    // Exactly sized: a `Vec` whose length is its capacity becomes `Bytes` without another
    // allocation.
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}
