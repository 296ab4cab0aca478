//! Every metric of the catalogue (docs/metrics.md, with each metric's meaning), defined in one
//! place and registered in a registry that is passed in (no global registry: tests run side by
//! side).
//!
//! Label values are bounded: configured client and app names, endpoint names and status codes,
//! with `-` where a request never got that far. Never a user id, key or token.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{MetricFamily, MetricType};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::cache::{CacheStatus, Kind};
use crate::route::Endpoint;
use crate::shards::Shards;
use crate::token::TokenMetrics;

/// Endpoints whose reads go through the cache.
const CACHED_ENDPOINTS: [Endpoint; 4] = [
    Endpoint::OfflineMsgCount,
    Endpoint::OfflineMsgStatus,
    Endpoint::PresenceBatchGet,
    Endpoint::PresenceSublist,
];

/// Buckets in seconds: sub-millisecond cache hits up to multi-second vendor calls.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The gateway's metrics.
pub struct Metrics {
    registry: Registry,
    /// What every request records, per thread (see [`crate::shards`]).
    per_request: Arc<Shards<RequestMetrics>>,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    token_refreshes: IntCounterVec,
    token_expiry: GaugeVec,
    config_reloads: IntCounterVec,
    cache_entries: IntGaugeVec,
    presence_batch_users: Histogram,
    /// `imgate_ratelimit_rejected_total` for scope client, vendor.
    rejected: [IntCounter; 2],
    /// `imgate_ratelimit_wait_seconds` for scope client, vendor.
    waits: [Histogram; 2],
    vendor_throttled: IntCounterVec,
}

/// Which limit refused or delayed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The client's own quota.
    Client,
    /// The vendor's quota.
    Vendor,
}

impl Scope {
    const fn label(self) -> &'static str {
        match self {
            Scope::Client => "client",
            Scope::Vendor => "vendor",
        }
    }
}

/// The metrics every request records: one set per shard, added up when scraped.
struct RequestMetrics {
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    cache_lookups_vec: IntCounterVec,
    /// `imgate_cache_lookups_total` handles, resolved once: by [`Endpoint::index`] (cached
    /// endpoints only), then by [`CacheStatus`].
    cache_lookups: [Option<[IntCounter; 4]>; Endpoint::ALL.len()],
    /// The series this shard's last request went to (only this shard's thread locks it).
    last: Mutex<Option<LastSeries>>,
}

/// The handles of one request series: a caller's steady traffic to one endpoint finds them
/// here instead of hashing its four labels (and locking the vec) on every request.
struct LastSeries {
    /// Client, app, endpoint, status.
    labels: [String; 4],
    requests: IntCounter,
    duration: Histogram,
}

impl RequestMetrics {
    fn new() -> Result<RequestMetrics, prometheus::Error> {
        let http_requests = IntCounterVec::new(
            Opts::new(
                "imgate_http_requests_total",
                "Requests answered, by client, app, endpoint and status.",
            ),
            &["client", "app", "endpoint", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "imgate_http_request_duration_seconds",
                "Time from request to response, by endpoint.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["endpoint"],
        )?;
        let cache_lookups_vec = IntCounterVec::new(
            Opts::new(
                "imgate_cache_lookups_total",
                "Cached reads, by endpoint and result (hit, miss, stale, coalesced).",
            ),
            &["endpoint", "result"],
        )?;
        let cache_lookups = Endpoint::ALL.map(|e| {
            CACHED_ENDPOINTS.contains(&e).then(|| {
                CacheStatus::ALL
                    .map(|r| cache_lookups_vec.with_label_values(&[e.name(), r.label()]))
            })
        });
        Ok(RequestMetrics {
            http_requests,
            http_duration,
            cache_lookups_vec,
            cache_lookups,
            last: Mutex::new(None),
        })
    }

    fn collectors(&self) -> [&dyn Collector; 3] {
        [
            &self.http_requests,
            &self.http_duration,
            &self.cache_lookups_vec,
        ]
    }
}

/// Exposes the request metrics of every shard as one: series with the same labels added up.
struct SummedShards(Arc<Shards<RequestMetrics>>);

impl Collector for SummedShards {
    fn desc(&self) -> Vec<&Desc> {
        self.0
            .iter()
            .next()
            .map(|shard| {
                shard
                    .collectors()
                    .into_iter()
                    .flat_map(|c| c.desc())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut families: Vec<Option<MetricFamily>> = Vec::new();
        let mut series: Vec<BTreeMap<Vec<(String, String)>, prometheus::proto::Metric>> =
            Vec::new();
        for shard in self.0.iter() {
            let collected = shard.collectors().into_iter().flat_map(|c| c.collect());
            for (i, mut family) in collected.enumerate() {
                if families.len() <= i {
                    families.push(None);
                    series.push(BTreeMap::new());
                }
                let kind = family.get_field_type();
                for metric in family.take_metric() {
                    let labels = metric
                        .get_label()
                        .iter()
                        .map(|l| (l.name().to_owned(), l.value().to_owned()))
                        .collect();
                    match series[i].entry(labels) {
                        std::collections::btree_map::Entry::Vacant(slot) => {
                            slot.insert(metric);
                        }
                        std::collections::btree_map::Entry::Occupied(mut sum) => {
                            add_metric(sum.get_mut(), &metric, kind);
                        }
                    }
                }
                families[i].get_or_insert(family);
            }
        }
        families
            .into_iter()
            .zip(series)
            .filter_map(|(family, series)| {
                let mut family = family?;
                family.set_metric(series.into_values().collect());
                Some(family)
            })
            .collect()
    }
}

/// Adds `more` (a counter or a histogram with the same buckets) to `sum`.
fn add_metric(
    sum: &mut prometheus::proto::Metric,
    more: &prometheus::proto::Metric,
    kind: MetricType,
) {
    match kind {
        MetricType::COUNTER => {
            let mut counter = sum.get_counter().clone();
            counter.set_value(counter.get_value() + more.get_counter().get_value());
            sum.set_counter(counter);
        }
        MetricType::HISTOGRAM => {
            let (a, b) = (sum.get_histogram(), more.get_histogram());
            let mut histogram = a.clone();
            histogram.set_sample_count(a.get_sample_count() + b.get_sample_count());
            histogram.set_sample_sum(a.get_sample_sum() + b.get_sample_sum());
            let buckets = a
                .get_bucket()
                .iter()
                .zip(b.get_bucket())
                .map(|(x, y)| {
                    let mut bucket = x.clone();
                    bucket.set_cumulative_count(x.cumulative_count() + y.cumulative_count());
                    bucket
                })
                .collect();
            histogram.set_bucket(buckets);
            sum.set_histogram(histogram);
        }
        _ => {}
    }
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: Registry) -> Result<Metrics, prometheus::Error> {
        let upstream_requests = IntCounterVec::new(
            Opts::new(
                "imgate_upstream_requests_total",
                "Calls made to the vendor, by app, endpoint and vendor status (or error kind).",
            ),
            &["app", "endpoint", "status"],
        )?;
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "imgate_upstream_request_duration_seconds",
                "Duration of vendor calls, by app and endpoint.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["app", "endpoint"],
        )?;
        let token_refreshes = IntCounterVec::new(
            Opts::new(
                "imgate_token_refreshes_total",
                "App token mints and fetches, by app and result (success or error).",
            ),
            &["app", "result"],
        )?;
        let token_expiry = GaugeVec::new(
            Opts::new(
                "imgate_token_expiry_timestamp_seconds",
                "Unix time at which the current app token expires.",
            ),
            &["app"],
        )?;
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "imgate_config_reload_total",
                "Configuration reloads (SIGHUP), by result (success or error).",
            ),
            &["result"],
        )?;
        let cache_entries = IntGaugeVec::new(
            Opts::new("imgate_cache_entries", "Entries held, by cache."),
            &["cache"],
        )?;
        let presence_batch_users = Histogram::with_opts(
            HistogramOpts::new(
                "imgate_presence_batch_users",
                "Users per presence batch call sent to the vendor.",
            )
            .buckets(vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]),
        )?;
        let rejected_vec = IntCounterVec::new(
            Opts::new(
                "imgate_ratelimit_rejected_total",
                "Requests refused with 429, by the limit that refused them (client or vendor).",
            ),
            &["scope"],
        )?;
        let waits_vec = HistogramVec::new(
            HistogramOpts::new(
                "imgate_ratelimit_wait_seconds",
                "Time spent waiting for a permit, by limit (client or vendor).",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["scope"],
        )?;
        let vendor_throttled = IntCounterVec::new(
            Opts::new(
                "imgate_vendor_throttled_total",
                "Vendor answers 429 (reach_limit) or 503, after which imgate paused that endpoint.",
            ),
            &["app", "endpoint"],
        )?;
        let scopes = [Scope::Client, Scope::Vendor];
        let rejected = scopes.map(|s| rejected_vec.with_label_values(&[s.label()]));
        let waits = scopes.map(|s| waits_vec.with_label_values(&[s.label()]));
        let build_info = IntGaugeVec::new(
            Opts::new("imgate_build_info", "Always 1; the version of this imgate."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // Both results exist from the start, so an alert on errors has a series to watch.
        for result in ["success", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(build_info))?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        registry.register(Box::new(rejected_vec))?;
        registry.register(Box::new(waits_vec))?;
        registry.register(Box::new(vendor_throttled.clone()))?;
        let per_request = Arc::new(Shards::try_new(RequestMetrics::new)?);
        registry.register(Box::new(SummedShards(per_request.clone())))?;
        registry.register(Box::new(cache_entries.clone()))?;
        registry.register(Box::new(presence_batch_users.clone()))?;
        registry.register(Box::new(upstream_requests.clone()))?;
        registry.register(Box::new(upstream_duration.clone()))?;
        registry.register(Box::new(token_refreshes.clone()))?;
        registry.register(Box::new(token_expiry.clone()))?;
        registry.register(Box::new(config_reloads.clone()))?;
        Ok(Metrics {
            registry,
            per_request,
            upstream_requests,
            upstream_duration,
            token_refreshes,
            token_expiry,
            config_reloads,
            cache_entries,
            presence_batch_users,
            rejected,
            waits,
            vendor_throttled,
        })
    }

    /// Records one answered request.
    pub fn request(&self, client: &str, app: &str, endpoint: &str, status: &str, seconds: f64) {
        let shard = self.per_request.local();
        let labels = [client, app, endpoint, status];
        let mut last = shard.last.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |series: &LastSeries| series.labels.iter().zip(labels).all(|(a, b)| a == b);
        if !last.as_ref().is_some_and(same) {
            *last = Some(LastSeries {
                labels: labels.map(str::to_owned),
                requests: shard.http_requests.with_label_values(&labels),
                duration: shard.http_duration.with_label_values(&[endpoint]),
            });
        }
        if let Some(series) = last.as_ref() {
            series.requests.inc();
            series.duration.observe(seconds);
        }
    }

    /// Records one vendor call; `status` is the vendor's status or `error`/`timeout`.
    pub fn upstream(&self, app: &str, endpoint: &str, status: &str, seconds: f64) {
        self.upstream_requests
            .with_label_values(&[app, endpoint, status])
            .inc();
        self.upstream_duration
            .with_label_values(&[app, endpoint])
            .observe(seconds);
    }

    /// Records one cached read of `endpoint`.
    pub fn cache_lookup(&self, endpoint: Endpoint, result: CacheStatus) {
        if let Some(counters) = &self.per_request.local().cache_lookups[endpoint.index()] {
            counters[result as usize].inc();
        }
    }

    /// Sets `imgate_cache_entries` (called when metrics are scraped).
    pub fn cache_entries(&self, counts: &[(Kind, u64)]) {
        for (kind, count) in counts {
            self.cache_entries
                .with_label_values(&[kind.name()])
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
    }

    /// The histogram of users per presence batch call.
    pub fn presence_batch_users(&self) -> &Histogram {
        &self.presence_batch_users
    }

    /// Records a 429 from one of the limits.
    pub fn rate_limited(&self, scope: Scope) {
        self.rejected[scope as usize].inc();
    }

    /// Records a wait for a permit.
    pub fn rate_wait(&self, scope: Scope, waited: std::time::Duration) {
        self.waits[scope as usize].observe(waited.as_secs_f64());
    }

    /// The counter of vendor 429s and 503s for one app and endpoint (resolved once per app,
    /// so the series exist from the start).
    pub fn vendor_throttled(&self, app: &str, endpoint: &str) -> IntCounter {
        self.vendor_throttled.with_label_values(&[app, endpoint])
    }

    /// The token metrics of one app.
    pub fn token(&self, app: &str) -> TokenMetrics {
        TokenMetrics {
            success: self.token_refreshes.with_label_values(&[app, "success"]),
            error: self.token_refreshes.with_label_values(&[app, "error"]),
            expiry: self.token_expiry.with_label_values(&[app]),
            fetches: self.upstream_requests.clone(),
            durations: self.upstream_duration.clone(),
            app: app.to_owned(),
        }
    }

    /// Records a configuration reload.
    pub fn config_reload(&self, success: bool) {
        let result = if success { "success" } else { "error" };
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// Every registered metric family, as `/metrics` would expose it now.
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec fails only on metric families that violate the format.
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_requests_appear_in_the_exposition() {
        let m = Metrics::new(Registry::new()).unwrap();
        m.request("svc", "app", "offline_msg_count", "200", 0.0004);
        m.upstream("app", "offline_msg_count", "200", 0.002);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.contains(
            r#"imgate_http_requests_total{app="app",client="svc",endpoint="offline_msg_count",status="200"} 1"#
        ));
        assert!(text.contains(r#"imgate_upstream_requests_total{app="app",endpoint="offline_msg_count",status="200"} 1"#));
        assert!(text.contains("imgate_http_request_duration_seconds_bucket"));
    }

    #[test]
    fn requests_recorded_on_several_threads_are_one_series() {
        let m = Metrics::new(Registry::new()).unwrap();
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    m.request("svc", "app", "offline_msg_count", "200", 0.0004);
                    m.cache_lookup(Endpoint::OfflineMsgCount, CacheStatus::Hit);
                });
            }
        });
        let text = String::from_utf8(m.encode()).unwrap();
        let lines = |prefix: &str| -> Vec<String> {
            text.lines()
                .filter(|l| l.starts_with(prefix))
                .map(str::to_owned)
                .collect()
        };
        assert_eq!(
            lines("imgate_http_requests_total{"),
            [
                r#"imgate_http_requests_total{app="app",client="svc",endpoint="offline_msg_count",status="200"} 6"#
            ]
        );
        assert_eq!(
            lines("imgate_http_request_duration_seconds_count"),
            [r#"imgate_http_request_duration_seconds_count{endpoint="offline_msg_count"} 6"#]
        );
        assert!(text.contains(
            r#"imgate_http_request_duration_seconds_bucket{endpoint="offline_msg_count",le="0.0005"} 6"#
        ));
        assert!(text.contains(
            r#"imgate_cache_lookups_total{endpoint="offline_msg_count",result="hit"} 6"#
        ));
    }

    #[test]
    fn a_thread_switching_between_series_counts_each_in_its_own() {
        let m = Metrics::new(Registry::new()).unwrap();
        for (client, status) in [
            ("a", "200"),
            ("a", "200"),
            ("b", "200"),
            ("a", "429"),
            ("a", "200"),
        ] {
            m.request(client, "app", "offline_msg_count", status, 0.002);
        }
        let text = String::from_utf8(m.encode()).unwrap();
        for (client, status, count) in [("a", "200", 3), ("b", "200", 1), ("a", "429", 1)] {
            let line = format!(
                r#"imgate_http_requests_total{{app="app",client="{client}",endpoint="offline_msg_count",status="{status}"}} {count}"#
            );
            assert!(text.contains(&line), "{line}\n{text}");
        }
        assert!(text.contains(
            r#"imgate_http_request_duration_seconds_count{endpoint="offline_msg_count"} 5"#
        ));
    }

    #[test]
    fn separate_registries_do_not_collide() {
        assert!(Metrics::new(Registry::new()).is_ok());
        assert!(Metrics::new(Registry::new()).is_ok());
    }
}
