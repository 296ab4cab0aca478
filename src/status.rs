//! The status page on the admin listener: `GET /` serves one self-contained HTML page (inline
//! CSS and JS, no external assets) that fetches `GET /status.json` every 2 seconds and computes
//! rates from two successive snapshots of the counters.
//!
//! The JSON is built from the gateway's own state (apps, tokens, quotas) and from its metrics
//! registry, gathered (never parsed from text). Counters are totals since the gateway started;
//! the page divides their differences by the difference of `uptime_secs`.
//!
//! ```text
//! {"version","uptime_secs","draining",
//!  "totals":{"requests","errors","client_errors","vendor_calls","vendor_throttled",
//!            "cache":{"hit","miss","stale","coalesced"},"rejected":{"client","vendor"}},
//!  "apps":[{"name","vendor","ready","token_expires_in_secs","token_never_expires",
//!           "endpoints":[{"endpoint","requests","errors","client_errors","vendor_calls",
//!                         "vendor_quota_per_sec","vendor_throttled","cache"}]}],
//!  "cache":[{"endpoint","hit","miss","stale","coalesced","entries"}]}
//! ```
//!
//! - `errors`: answers with status 429 or ≥ 500 (the caller did not get what it asked for:
//!   refused by a quota, or failed by imgate or the vendor); `client_errors`: every other 4xx (the
//!   request itself was wrong: unknown user, bad key, bad body). `totals` also count requests
//!   that named no configured app, which belong to no app's row.
//! - `vendor_throttled`: vendor answers 429 or 503 (`imgate_vendor_throttled_total`);
//!   `rejected.vendor`: requests imgate refused itself to keep within the vendor's quota
//!   (`imgate_ratelimit_rejected_total{scope="vendor"}`, not labelled by app).
//! - `cache`: `imgate_cache_lookups_total` is labelled by endpoint only (docs/metrics.md),
//!   so the top-level `cache` sums every app; an endpoint row's own `cache` comes from the
//!   counts each app keeps itself, and is `null` while the endpoint saw no cached read.
//! - `draining`: shutdown has begun (`/readyz` answers 503; the listeners close soon).
//! - `token_expires_in_secs`: `null` while the app holds no token, 0 once it expired;
//!   `token_never_expires` for Easemob tokens issued without expiry.
//!
//! Unauthenticated like `/metrics`: it names apps and endpoints, never a key, token or secret.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue};
use prometheus::proto::{Metric, MetricFamily};
use serde_json::{json, Value};

use crate::cache::Kind;
use crate::gateway::{App, Gateway};
use crate::route::Endpoint;
use crate::server::{json_response, HttpResponse};
use crate::token::Credentials;

/// The page: HTML with its CSS and JS inline.
pub const PAGE: &str = include_str!("status.html");

/// The build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A token valid for longer than this was issued without expiry.
const NEVER_EXPIRES: Duration = Duration::from_secs(50 * 365 * 24 * 3600);

/// The page's policy: everything inline, data only from this listener.
const CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                   connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
                   frame-ancestors 'none'";

/// `GET /`: the status page.
pub fn page() -> HttpResponse {
    let mut response = json_response(200, Bytes::from_static(PAGE.as_bytes()));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /status.json`: the snapshot the page polls.
pub async fn snapshot_json(gateway: &Gateway) -> HttpResponse {
    let body = snapshot(gateway).await;
    let mut response = json_response(200, Bytes::from(body.to_string()));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Counters of one (app, endpoint) pair, or of everything.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    requests: u64,
    errors: u64,
    client_errors: u64,
    vendor_calls: u64,
    vendor_throttled: u64,
    /// hit, miss, stale, coalesced.
    cache: [u64; 4],
    /// Whether any cache lookup was attributed here.
    cached: bool,
}

impl Counts {
    fn cache_json(&self) -> Value {
        let [hit, miss, stale, coalesced] = self.cache;
        json!({"hit": hit, "miss": miss, "stale": stale, "coalesced": coalesced})
    }
}

/// What the registry holds, summed by the keys the page shows.
#[derive(Debug, Default)]
struct Gathered {
    /// By (app, endpoint).
    rows: HashMap<(String, String), Counts>,
    /// Cache lookups by endpoint, across apps.
    cache: HashMap<String, [u64; 4]>,
    /// `imgate_cache_entries` by cache name.
    entries: HashMap<String, u64>,
    totals: Counts,
    rejected_client: u64,
    rejected_vendor: u64,
}

/// (app, endpoint) of a sample.
fn row_key(metric: &Metric) -> (String, String) {
    (
        label(metric, "app").to_owned(),
        label(metric, "endpoint").to_owned(),
    )
}

fn label<'m>(metric: &'m Metric, name: &str) -> &'m str {
    metric
        .get_label()
        .iter()
        .find(|pair| pair.name() == name)
        .map_or("", |pair| pair.value())
}

/// A counter's or gauge's value as a count (they only ever hold whole numbers here).
fn count(value: f64) -> u64 {
    if value.is_finite() && value > 0.0 {
        value.round() as u64
    } else {
        0
    }
}

fn cache_slot(result: &str) -> Option<usize> {
    match result {
        "hit" => Some(0),
        "miss" => Some(1),
        "stale" => Some(2),
        "coalesced" => Some(3),
        _ => None,
    }
}

impl Gathered {
    fn from(families: &[MetricFamily]) -> Gathered {
        let mut g = Gathered::default();
        for family in families {
            for metric in family.get_metric() {
                g.add(family.name(), metric);
            }
        }
        g
    }

    fn row(&mut self, metric: &Metric) -> &mut Counts {
        self.rows.entry(row_key(metric)).or_default()
    }

    fn add(&mut self, family: &str, metric: &Metric) {
        match family {
            "imgate_http_requests_total" => {
                let n = count(metric.get_counter().get_value());
                let status: u16 = label(metric, "status").parse().unwrap_or(0);
                let error = status == 429 || status >= 500;
                let client_error = !error && (400..500).contains(&status);
                let row = self.rows.entry(row_key(metric)).or_default();
                for c in [&mut self.totals, row] {
                    c.requests += n;
                    c.errors += if error { n } else { 0 };
                    c.client_errors += if client_error { n } else { 0 };
                }
            }
            "imgate_upstream_requests_total" => {
                let n = count(metric.get_counter().get_value());
                self.totals.vendor_calls += n;
                self.row(metric).vendor_calls += n;
            }
            "imgate_vendor_throttled_total" => {
                let n = count(metric.get_counter().get_value());
                self.totals.vendor_throttled += n;
                self.row(metric).vendor_throttled += n;
            }
            "imgate_cache_lookups_total" => {
                let Some(slot) = cache_slot(label(metric, "result")) else {
                    return;
                };
                let n = count(metric.get_counter().get_value());
                self.totals.cache[slot] += n;
                let endpoint = label(metric, "endpoint").to_owned();
                self.cache.entry(endpoint).or_default()[slot] += n;
                if !label(metric, "app").is_empty() {
                    let row = self.row(metric);
                    row.cache[slot] += n;
                    row.cached = true;
                }
            }
            "imgate_cache_entries" => {
                let n = count(metric.get_gauge().get_value());
                *self
                    .entries
                    .entry(label(metric, "cache").to_owned())
                    .or_default() += n;
            }
            "imgate_ratelimit_rejected_total" => {
                let n = count(metric.get_counter().get_value());
                match label(metric, "scope") {
                    "client" => self.rejected_client += n,
                    "vendor" => self.rejected_vendor += n,
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

fn app_json(app: &App, gathered: &Gathered) -> Value {
    let expires_in = app.tokens.expires_in();
    let never_expires = expires_in.is_some_and(|left| left >= NEVER_EXPIRES);
    let endpoints: Vec<Value> = Endpoint::ALL
        .iter()
        .map(|endpoint| {
            let key = (app.name.clone(), endpoint.name().to_owned());
            let mut c = gathered.rows.get(&key).copied().unwrap_or_default();
            if !c.cached && Kind::cached_by(*endpoint).is_some() {
                // The app keeps its own cache results (the metric has no app label).
                c.cache = app.cache_results(*endpoint);
                c.cached = c.cache.iter().any(|n| *n > 0);
            }
            json!({
                "endpoint": endpoint.name(),
                "requests": c.requests,
                "errors": c.errors,
                "client_errors": c.client_errors,
                "vendor_calls": c.vendor_calls,
                "vendor_quota_per_sec": app.quota_limit(*endpoint),
                "vendor_throttled": c.vendor_throttled,
                "cache": if c.cached { c.cache_json() } else { Value::Null },
            })
        })
        .collect();
    json!({
        "name": app.name,
        "vendor": match app.tokens.credentials() {
            Credentials::Agora { .. } => "agora",
            Credentials::Easemob { .. } => "easemob",
        },
        "ready": app.tokens.is_ready(),
        "token_expires_in_secs": match expires_in {
            Some(_) if never_expires => Value::Null,
            Some(left) => Value::from(left.as_secs()),
            None => Value::Null,
        },
        "token_never_expires": never_expires,
        "endpoints": endpoints,
    })
}

/// Cluster mode: `single` (no `[cluster]`), `shared` (Redis answers) or `degraded` (this
/// replica enforces its share of each quota until Redis answers again).
fn cluster_json(gateway: &Gateway) -> Value {
    match &gateway.cluster {
        None => json!({"mode": "single"}),
        Some(cluster) => json!({
            "mode": if cluster.is_up() { "shared" } else { "degraded" },
            "redis_up": cluster.is_up(),
            "replicas": cluster.replicas(),
            "replica_id": cluster.id(),
        }),
    }
}

/// The status snapshot of `gateway` now.
pub async fn snapshot(gateway: &Gateway) -> Value {
    // As on a scrape of /metrics: entry counts are read when asked for.
    gateway
        .metrics
        .cache_entries(&gateway.cache.entry_counts().await);
    let gathered = Gathered::from(&gateway.metrics.gather());
    let snapshot = gateway.snapshot();
    let apps: Vec<Value> = snapshot
        .apps
        .iter()
        .map(|app| app_json(app, &gathered))
        .collect();
    let cache: Vec<Value> = Endpoint::ALL
        .iter()
        .filter_map(|endpoint| Some((endpoint, Kind::cached_by(*endpoint)?)))
        .map(|(endpoint, kind)| {
            let [hit, miss, stale, coalesced] = gathered
                .cache
                .get(endpoint.name())
                .copied()
                .unwrap_or_default();
            json!({
                "endpoint": endpoint.name(),
                "hit": hit,
                "miss": miss,
                "stale": stale,
                "coalesced": coalesced,
                "entries": gathered.entries.get(kind.name()).copied().unwrap_or(0),
            })
        })
        .collect();
    let t = gathered.totals;
    let uptime = gateway.started.elapsed().as_secs_f64();
    json!({
        "version": VERSION,
        "uptime_secs": (uptime * 1000.0).round() / 1000.0,
        "draining": gateway.is_draining(),
        "cluster": cluster_json(gateway),
        "totals": {
            "requests": t.requests,
            "errors": t.errors,
            "client_errors": t.client_errors,
            "vendor_calls": t.vendor_calls,
            "vendor_throttled": t.vendor_throttled,
            "cache": t.cache_json(),
            "rejected": {"client": gathered.rejected_client, "vendor": gathered.rejected_vendor},
        },
        "apps": apps,
        "cache": cache,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

    fn counter(registry: &Registry, name: &str, labels: &[&str]) -> IntCounterVec {
        let vec = IntCounterVec::new(Opts::new(name, "h"), labels).unwrap();
        registry.register(Box::new(vec.clone())).unwrap();
        vec
    }

    #[test]
    fn counters_are_summed_per_app_and_endpoint_and_errors_are_429_or_5xx() {
        let r = Registry::new();
        let http = counter(
            &r,
            "imgate_http_requests_total",
            &["client", "app", "endpoint", "status"],
        );
        http.with_label_values(&["a", "x", "offline_msg_count", "200"])
            .inc_by(5);
        http.with_label_values(&["b", "x", "offline_msg_count", "200"])
            .inc_by(2);
        http.with_label_values(&["a", "x", "offline_msg_count", "429"])
            .inc();
        http.with_label_values(&["a", "x", "offline_msg_count", "503"])
            .inc();
        http.with_label_values(&["a", "x", "offline_msg_count", "404"])
            .inc();
        http.with_label_values(&["-", "-", "-", "404"]).inc();
        let up = counter(
            &r,
            "imgate_upstream_requests_total",
            &["app", "endpoint", "status"],
        );
        up.with_label_values(&["x", "offline_msg_count", "200"])
            .inc_by(3);
        up.with_label_values(&["x", "offline_msg_count", "timeout"])
            .inc();
        let throttled = counter(&r, "imgate_vendor_throttled_total", &["app", "endpoint"]);
        throttled
            .with_label_values(&["x", "offline_msg_count"])
            .inc();
        let lookups = counter(&r, "imgate_cache_lookups_total", &["endpoint", "result"]);
        lookups
            .with_label_values(&["offline_msg_count", "hit"])
            .inc_by(4);
        lookups
            .with_label_values(&["offline_msg_count", "miss"])
            .inc();
        let entries = IntGaugeVec::new(Opts::new("imgate_cache_entries", "h"), &["cache"]).unwrap();
        r.register(Box::new(entries.clone())).unwrap();
        entries.with_label_values(&["offline_count"]).set(7);
        let rejected = counter(&r, "imgate_ratelimit_rejected_total", &["scope"]);
        rejected.with_label_values(&["vendor"]).inc_by(2);

        let g = Gathered::from(&r.gather());
        let row = g.rows[&("x".to_owned(), "offline_msg_count".to_owned())];
        assert_eq!(row.requests, 10);
        assert_eq!(row.errors, 2, "429 and 503");
        assert_eq!(row.client_errors, 1);
        assert_eq!(row.vendor_calls, 4);
        assert_eq!(row.vendor_throttled, 1);
        assert!(
            !row.cached,
            "lookups without an app label stay per endpoint"
        );
        assert_eq!(g.cache["offline_msg_count"], [4, 1, 0, 0]);
        assert_eq!(g.entries["offline_count"], 7);
        assert_eq!(g.totals.requests, 11, "totals include requests for no app");
        assert_eq!(g.totals.client_errors, 2);
        assert_eq!(g.rejected_vendor, 2);
    }

    #[test]
    fn cache_lookups_labelled_by_app_are_attributed_to_the_app() {
        let r = Registry::new();
        let lookups = counter(
            &r,
            "imgate_cache_lookups_total",
            &["app", "endpoint", "result"],
        );
        lookups
            .with_label_values(&["x", "presence_batch_get", "coalesced"])
            .inc_by(3);
        let g = Gathered::from(&r.gather());
        let row = g.rows[&("x".to_owned(), "presence_batch_get".to_owned())];
        assert!(row.cached);
        assert_eq!(row.cache, [0, 0, 0, 3]);
        assert_eq!(g.cache["presence_batch_get"], [0, 0, 0, 3]);
    }

    #[test]
    fn the_page_is_self_contained() {
        assert!(!PAGE.contains("<script src"));
        assert!(!PAGE.contains("<link"));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
        assert!(PAGE.contains("status.json"));
    }
}
