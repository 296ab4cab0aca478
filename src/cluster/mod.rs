//! Cluster mode: several replicas on one Redis behave as one gateway.
//!
//! [`Cluster`] is the one handle on Redis: every call goes through [`Cluster::call`] (or
//! [`Cluster::script`]), which bounds it by `timeout_ms` and trips a breaker on any error or
//! timeout. While the breaker is open no call reaches Redis: callers take their local decision
//! (a share of each quota, see [`quota`]) and count a fallback. A background task heartbeats into
//! Redis (membership, [`Cluster::replicas`]) and, while the breaker is open, probes Redis and
//! reconnects, closing the breaker within a probe period of Redis's return. A replica started
//! while Redis is unreachable starts with the breaker open.
//!
//! Keys are `key_prefix` + `{tag}` + `:`-joined parts ([`Cluster::key`]): the tag (an app name,
//! or a client's) keeps every key of one app in one Redis Cluster slot, so its scripts may
//! touch several keys; every part is bounded in length.

pub mod bus;
mod config;
pub mod quota;
pub mod token_store;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, RedisResult, Script, ToRedisArgs};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, Mutex};

pub use config::{ClusterSettings, RawCluster};

/// How often a replica heartbeats while Redis answers.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// A replica without a heartbeat for this long no longer counts as live.
const LIVENESS: Duration = Duration::from_secs(3);
/// How often Redis is probed while the breaker is open (rejoin well within 5 s of its return).
const PROBE: Duration = Duration::from_millis(500);
/// Longest wait for a new connection to Redis (the background task's, never a request's).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest key part kept as written; longer ones are replaced by a digest.
const MAX_PART: usize = 64;

/// Why a Redis call was not made or did not succeed (the caller then decides locally).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The breaker is open: Redis failed recently and has not answered a probe since.
    #[error("Redis is unavailable")]
    Down,
    /// The call took longer than `timeout_ms`.
    #[error("Redis did not answer in time")]
    Timeout,
    /// Redis or the connection failed.
    #[error("Redis call failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// The cluster metrics could not be registered.
    #[error("cannot register the cluster metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What a Redis call is for: the `operation` label of the cluster metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A vendor quota permit (GCRA script).
    VendorQuota,
    /// A shared pause after a vendor 429.
    VendorPause,
    /// A lease of a client's quota.
    ClientLease,
    /// The membership heartbeat (also the probe while Redis is down).
    Heartbeat,
    /// A message on the invalidation bus.
    Invalidation,
    /// The shared app token (read, lock, store).
    AppToken,
}

impl Op {
    /// Every operation, in label order.
    pub const ALL: [Op; 6] = [
        Op::VendorQuota,
        Op::VendorPause,
        Op::ClientLease,
        Op::Heartbeat,
        Op::Invalidation,
        Op::AppToken,
    ];

    /// The metrics label.
    pub const fn label(self) -> &'static str {
        match self {
            Op::VendorQuota => "vendor_quota",
            Op::VendorPause => "vendor_pause",
            Op::ClientLease => "client_lease",
            Op::Heartbeat => "heartbeat",
            Op::Invalidation => "invalidation",
            Op::AppToken => "app_token",
        }
    }
}

/// The cluster metrics, resolved once per operation.
struct ClusterMetrics {
    redis_up: IntGauge,
    replicas: IntGauge,
    round_trips: [prometheus::Histogram; Op::ALL.len()],
    fallbacks: [prometheus::IntCounter; Op::ALL.len()],
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> Result<ClusterMetrics, prometheus::Error> {
        let redis_up = IntGauge::new(
            "imgate_cluster_redis_up",
            "1 while this replica reaches the cluster's Redis, 0 while it enforces its local share.",
        )?;
        let replicas = IntGauge::new(
            "imgate_cluster_replicas",
            "Live replicas this replica sees (the last known number while Redis is down).",
        )?;
        let round_trips = HistogramVec::new(
            HistogramOpts::new(
                "imgate_cluster_redis_duration_seconds",
                "Redis round trips, by operation.",
            )
            .buckets(vec![
                0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ]),
            &["operation"],
        )?;
        let fallbacks = IntCounterVec::new(
            Opts::new(
                "imgate_cluster_fallbacks_total",
                "Decisions taken locally because Redis was unavailable, by operation.",
            ),
            &["operation"],
        )?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(replicas.clone()))?;
        registry.register(Box::new(round_trips.clone()))?;
        registry.register(Box::new(fallbacks.clone()))?;
        Ok(ClusterMetrics {
            redis_up,
            replicas,
            round_trips: Op::ALL.map(|op| round_trips.with_label_values(&[op.label()])),
            fallbacks: Op::ALL.map(|op| fallbacks.with_label_values(&[op.label()])),
        })
    }
}

/// The replica's handle on the cluster's Redis (share it as `Arc<Cluster>`).
pub struct Cluster {
    client: redis::Client,
    /// `None` until the first connection succeeds (and again after repeated failures).
    connection: ArcSwapOption<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    /// The breaker: `true` while Redis answers (read on every call, without a lock).
    up: AtomicBool,
    /// The same state for those who wait for a change (e.g. to resubscribe after an outage).
    up_changes: watch::Sender<bool>,
    replicas: AtomicU32,
    id: String,
    /// Held by each heartbeat and by [`Cluster::leave`]; `true` once this replica has left.
    /// A heartbeat in flight when the replica leaves would otherwise add its entry back after
    /// the removal, and the others would count it until the entry expired.
    left: Mutex<bool>,
    metrics: ClusterMetrics,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may hold a password.
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .field("prefix", &self.prefix)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// A handle on the Redis of `settings`, its metrics in `registry`; not connected yet (the
    /// breaker starts open). Call [`Cluster::start`] within a Tokio runtime to connect.
    pub fn new(
        settings: &ClusterSettings,
        registry: &Registry,
    ) -> Result<Arc<Cluster>, ClusterError> {
        let client = redis::Client::open(settings.redis_url.expose_secret())?;
        let metrics = ClusterMetrics::new(registry)?;
        metrics.replicas.set(1);
        Ok(Arc::new(Cluster {
            client,
            connection: ArcSwapOption::empty(),
            prefix: settings.key_prefix.clone(),
            timeout: settings.timeout,
            up: AtomicBool::new(false),
            up_changes: watch::channel(false).0,
            replicas: AtomicU32::new(1),
            id: format!("{:016x}", rand::random::<u64>()),
            left: Mutex::new(false),
            metrics,
        }))
    }

    /// Starts the background task: connect, heartbeat, probe while down. It ends when the
    /// replica leaves or the last handle is dropped.
    pub fn start(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move { membership(weak).await });
    }

    /// Whether Redis answered the last call (the breaker is closed).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Wakes on every change of [`Cluster::is_up`].
    pub fn up_changes(&self) -> watch::Receiver<bool> {
        self.up_changes.subscribe()
    }

    /// Live replicas, this one included (the last known number while Redis is down; at least 1).
    pub fn replicas(&self) -> u32 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// This replica's random id (its membership entry).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The Redis client, for connections of one's own (e.g. a pub/sub subscription).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// `prefix{tag}:part:part…`: one app's keys share the hash tag `{tag}`; a tag or part that
    /// is long or holds `{`/`}` is replaced by a digest, so no input makes keys unbounded.
    pub fn key(&self, tag: &str, parts: &[&str]) -> String {
        let mut key =
            String::with_capacity(self.prefix.len() + 2 + (MAX_PART + 1) * (parts.len() + 1));
        key.push_str(&self.prefix);
        key.push('{');
        push_bounded(&mut key, tag);
        key.push('}');
        for part in parts {
            key.push(':');
            push_bounded(&mut key, part);
        }
        key
    }

    /// Counts a decision taken locally because Redis was unavailable.
    pub fn fallback(&self, op: Op) {
        self.metrics.fallbacks[op as usize].inc();
    }

    /// Runs `call` on the connection within `timeout_ms`; any failure trips the breaker. While
    /// the breaker is open, fails at once with [`ClusterError::Down`] without touching Redis.
    pub async fn call<T, F, Fut>(&self, op: Op, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(ClusterError::Down);
        }
        self.call_anyway(op, call).await
    }

    /// Runs `script` (by hash; loaded again when Redis lost it, e.g. after a restart) on `keys`
    /// and `args`, as [`Cluster::call`] does.
    pub async fn script<T: FromRedisValue>(
        &self,
        op: Op,
        script: &Script,
        keys: &[&str],
        args: &[impl ToRedisArgs],
    ) -> Result<T, ClusterError> {
        self.call(op, |mut connection| async move {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(*key);
            }
            for arg in args {
                invocation.arg(arg);
            }
            invocation.invoke_async(&mut connection).await
        })
        .await
    }

    /// [`Cluster::call`] even while the breaker is open (the probe).
    async fn call_anyway<T, F, Fut>(&self, op: Op, call: F) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(connection) = self.connection.load_full() else {
            return Err(ClusterError::Down);
        };
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call((*connection).clone())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(ClusterError::Redis(err)),
            Err(_) => Err(ClusterError::Timeout),
        };
        self.metrics.round_trips[op as usize].observe(started.elapsed().as_secs_f64());
        if let Err(err) = &result {
            self.set_up(false, Some(err));
        }
        result
    }

    fn set_up(&self, up: bool, why: Option<&ClusterError>) {
        if self.up.swap(up, Ordering::AcqRel) == up {
            return;
        }
        self.metrics.redis_up.set(i64::from(up));
        self.up_changes.send_replace(up);
        match why {
            Some(err) => tracing::warn!(
                error = %err,
                replicas = self.replicas(),
                "cluster: Redis unavailable; enforcing this replica's share of each quota"
            ),
            None => tracing::info!(
                replicas = self.replicas(),
                "cluster: Redis reached; quotas shared again"
            ),
        }
    }

    /// Connects when there is no connection yet.
    async fn connect(&self) -> Result<(), ClusterError> {
        if self.connection.load().is_some() {
            return Ok(());
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(PROBE);
        let manager = tokio::time::timeout(
            CONNECT_TIMEOUT,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| ClusterError::Timeout)??;
        self.connection.store(Some(Arc::new(manager)));
        Ok(())
    }

    /// One heartbeat: this replica's entry refreshed on the Redis clock, stale ones dropped,
    /// the live ones counted; `None` once this replica has left.
    async fn heartbeat(&self) -> Result<Option<u32>, ClusterError> {
        static HEARTBEAT_SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
        let script = HEARTBEAT_SCRIPT.get_or_init(|| Script::new(include_str!("heartbeat.lua")));
        let key = self.key("cluster", &["replicas"]);
        let liveness = LIVENESS.as_millis() as u64;
        let left = self.left.lock().await;
        if *left {
            return Ok(None);
        }
        self.call_anyway(Op::Heartbeat, |mut connection| async move {
            script
                .key(&key)
                .arg(&self.id)
                .arg(liveness)
                .invoke_async(&mut connection)
                .await
        })
        .await
        .map(Some)
    }

    /// Leaves the membership at once (on shutdown), so the others' shares grow without waiting
    /// for this replica's entry to expire.
    pub async fn leave(&self) {
        // Waits for a heartbeat in flight (its Redis timeout at most), and stops the next ones.
        let mut left = self.left.lock().await;
        *left = true;
        let key = self.key("cluster", &["replicas"]);
        let _ = self
            .call(Op::Heartbeat, |mut connection| async move {
                redis::cmd("ZREM")
                    .arg(&key)
                    .arg(&self.id)
                    .query_async::<i64>(&mut connection)
                    .await
            })
            .await;
    }
}

/// Connects, heartbeats every [`HEARTBEAT`] while Redis answers, probes every [`PROBE`] while
/// it does not, until the replica leaves or the cluster handle is gone.
async fn membership(cluster: Weak<Cluster>) {
    loop {
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let beat = match cluster.connect().await {
            Ok(()) => cluster.heartbeat().await,
            Err(err) => Err(err),
        };
        match beat {
            Ok(None) => return,
            Ok(Some(live)) => {
                cluster.replicas.store(live.max(1), Ordering::Relaxed);
                cluster.metrics.replicas.set(i64::from(live.max(1)));
                cluster.set_up(true, None);
            }
            Err(err) => {
                cluster.set_up(false, Some(&err));
                // A fresh connection on the next probe: a manager whose server went away may
                // keep waiting on its own reconnection schedule.
                if !matches!(err, ClusterError::Down) {
                    cluster.connection.store(None);
                }
            }
        }
        let period = if cluster.is_up() { HEARTBEAT } else { PROBE };
        drop(cluster);
        tokio::time::sleep(period).await;
    }
}

fn push_bounded(key: &mut String, part: &str) {
    if part.len() <= MAX_PART && !part.contains(['{', '}']) {
        key.push_str(part);
    } else {
        let digest = Sha256::digest(part.as_bytes());
        for byte in &digest[..16] {
            key.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            key.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(prefix: &str) -> Arc<Cluster> {
        let settings = RawCluster {
            redis_url: "redis://127.0.0.1:1/0".into(),
            key_prefix: prefix.into(),
            timeout_ms: 50,
        }
        .validate()
        .unwrap();
        Cluster::new(&settings, &Registry::new()).unwrap()
    }

    #[test]
    fn keys_carry_the_prefix_and_one_hash_tag_and_stay_bounded() {
        let c = cluster("imgate:");
        assert_eq!(
            c.key("agora-demo", &["quota", "offline_msg_count"]),
            "imgate:{agora-demo}:quota:offline_msg_count"
        );
        let long = "u".repeat(10_000);
        let key = c.key("app", &[&long, "x{y}"]);
        assert!(key.len() < 120, "{key}");
        assert_eq!(key.matches('{').count(), 1, "{key}");
        assert_ne!(
            c.key("app", &["a".repeat(65).as_str()]),
            c.key("app", &["a".repeat(66).as_str()])
        );
    }

    #[tokio::test]
    async fn calls_fail_fast_while_down_and_the_debug_form_hides_the_url() {
        let c = cluster("p:");
        assert!(!c.is_up());
        let result = c
            .call(Op::VendorQuota, |mut conn| async move {
                redis::cmd("PING").query_async::<String>(&mut conn).await
            })
            .await;
        assert!(matches!(result, Err(ClusterError::Down)));
        assert_eq!(c.replicas(), 1);
        assert!(!format!("{c:?}").contains("127.0.0.1"));
    }
}
