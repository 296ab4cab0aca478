//! Cluster mode: several replicas on one Redis behave as one gateway. Each test starts its own
//! `redis-server`, the emulator (in this process) and `imgate serve` processes; the tests run
//! one at a time (they measure rates on a shared machine).

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use tokio::sync::Mutex;

use common::redis::TestRedis;
use common::{
    agora_prefix, demo_config, metric, sample, Http, Resp, Served, TestEmulator, TestGateway,
    DEMO_AUTH,
};
use imgate::cluster::{Cluster, RawCluster};
use imgate::config::RawConfig;

/// One test at a time: they measure rates, and three replicas already fill two cores.
static SERIAL: Mutex<()> = Mutex::const_new(());

const LIMITED_AUTH: (&str, &str) = ("authorization", "Bearer demo-limited-key");

/// The cluster settings of the tests: `redis`, keys under `prefix`.
fn raw_cluster(redis: &TestRedis, prefix: &str) -> RawCluster {
    RawCluster {
        redis_url: redis.url(),
        key_prefix: prefix.into(),
        // Generous: a loaded test machine must not trip the breaker by accident.
        timeout_ms: 250,
    }
}

/// `raw` in cluster mode on `redis`.
fn clustered(mut raw: RawConfig, redis: &TestRedis) -> RawConfig {
    raw.cluster = Some(raw_cluster(redis, "test:"));
    raw.server.shutdown_delay_ms = 0;
    raw
}

/// A replica's in-process cluster handle on `redis` (keys under `prefix`), its membership task
/// started, once Redis counts it.
async fn joined_cluster(redis: &TestRedis, prefix: &str) -> Arc<Cluster> {
    let settings = raw_cluster(redis, prefix)
        .validate()
        .expect("cluster settings");
    let cluster = Cluster::new(&settings, &prometheus::Registry::new()).expect("cluster");
    cluster.start();
    let count = format!("ZCARD {prefix}{{cluster}}:replicas");
    assert!(
        eventually(Duration::from_secs(5), || async {
            redis.command(&count).as_deref() == Some(":1\r\n")
        })
        .await,
        "never joined: {:?}",
        redis.command(&count)
    );
    cluster
}

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One `imgate serve` process of a fleet.
struct Replica {
    served: Served,
}

impl Replica {
    fn agora(&self) -> String {
        agora_prefix(&self.served.base())
    }

    async fn metric(&self, name: &str) -> Option<f64> {
        metric(self.served.admin, name).await
    }

    async fn status(&self) -> Value {
        Http::new()
            .send(
                Method::GET,
                &format!("http://{}/status.json", self.served.admin),
                &[],
                None,
            )
            .await
            .json()
    }
}

/// Replicas of one configuration.
struct Fleet {
    replicas: Vec<Replica>,
    raw: RawConfig,
    /// The test's name, in the replicas' names.
    test: &'static str,
}

impl Fleet {
    /// `n` replicas of the demo configuration in front of `emu`, clustered on `redis`, after
    /// `adjust`.
    async fn start(
        test: &'static str,
        n: usize,
        emu: &TestEmulator,
        redis: &TestRedis,
        adjust: impl FnOnce(&mut RawConfig),
    ) -> Fleet {
        let mut raw = clustered(demo_config(&emu.base()), redis);
        // Warnings only: these tests measure rates, and an access line per request is extra work.
        raw.log.level = "warn".into();
        adjust(&mut raw);
        let mut fleet = Fleet {
            replicas: Vec::new(),
            raw,
            test,
        };
        for _ in 0..n {
            fleet.add().await;
        }
        fleet
    }

    /// One more replica.
    async fn add(&mut self) -> &Replica {
        let name = format!("cluster-{}-r{}", self.test, self.replicas.len());
        let served = Served::start(&name, self.raw.clone(), &[]).await;
        self.replicas.push(Replica { served });
        &self.replicas[self.replicas.len() - 1]
    }

    /// Waits until every replica reports `value` for `name`.
    async fn all_report(&self, name: &str, value: f64, within: Duration) -> bool {
        eventually(within, || async {
            for r in &self.replicas {
                if r.metric(name).await != Some(value) {
                    return false;
                }
            }
            true
        })
        .await
    }

    /// Every replica's log, for failure messages.
    fn logs(&self) -> String {
        self.replicas
            .iter()
            .map(|r| r.served.logs())
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

/// What callers saw during a load run.
#[derive(Debug, Default)]
struct Seen {
    sent: u64,
    /// When the last request was sent, from the start: the offered rate is `sent / sending`.
    sending: Duration,
    ok: u64,
    refused: u64,
    /// Anything but 200, or 429 with `Retry-After`: (status, body).
    other: Vec<(u16, String)>,
}

impl Seen {
    fn record(&mut self, resp: &Resp) {
        self.sent += 1;
        match resp.status.as_u16() {
            200 => self.ok += 1,
            429 if resp.header("retry-after").is_some() => self.refused += 1,
            status => self.other.push((status, resp.text())),
        }
    }
}

/// What one load request is: method, URL and body, from the worker and request numbers.
type MakeRequest = Arc<dyn Fn(usize, usize) -> (Method, String, Option<String>) + Send + Sync>;

/// `rate` requests a second for `length`, each sent on schedule whatever the earlier ones are
/// still waiting for (an open load: it does not slow down when imgate makes callers wait, and
/// it does not saturate the machine); returns what callers saw and how long it all took.
async fn load(rate: u32, length: Duration, make: MakeRequest) -> (Seen, Duration) {
    let started = Instant::now();
    let total = (f64::from(rate) * length.as_secs_f64()) as usize;
    let client = Http::new();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    let mut calls = Vec::with_capacity(total);
    for i in 0..total {
        ticks.tick().await;
        let (method, url, body) = make(i % 16, i);
        let client = client.clone();
        calls.push(tokio::spawn(async move {
            let headers = [DEMO_AUTH, ("content-type", "application/json")];
            client
                .try_send(method, &url, &headers, body.as_deref())
                .await
        }));
    }
    let mut seen = Seen {
        sending: started.elapsed(),
        ..Seen::default()
    };
    for call in calls {
        match call.await.unwrap() {
            Ok(resp) => seen.record(&resp),
            Err(err) => seen.other.push((0, err.to_string())),
        }
    }
    (seen, started.elapsed())
}

/// Distinct offline-count reads spread over the replicas' Agora prefixes.
fn offline_reads(prefixes: Vec<String>, tag: &'static str) -> MakeRequest {
    Arc::new(move |w, i| {
        let base = &prefixes[(w + i) % prefixes.len()];
        (
            Method::GET,
            format!("{base}/users/{tag}{w}x{i}/offline_msg_count"),
            None,
        )
    })
}

/// The vendor quotas of the overload tests, calls per second: lower than the vendor's (100 and
/// 50) so that a loaded two-core machine can still offer well above them.
const OFFLINE_QUOTA: u32 = 40;
const BATCH_QUOTA: u32 = 20;

/// An emulator whose Agora app has the overload tests' quotas.
async fn emulator_with_quotas() -> TestEmulator {
    let mut config = imgate::emulator::EmulatorConfig::demo();
    config.apps[0]
        .quotas
        .insert("offline_msg_count".into(), OFFLINE_QUOTA);
    config.apps[0]
        .quotas
        .insert("presence_batch_get".into(), BATCH_QUOTA);
    TestEmulator::start(config).await
}

/// imgate configured with the same quotas as [`emulator_with_quotas`].
fn with_quotas(raw: &mut RawConfig) {
    raw.apps[0]
        .vendor_quotas
        .insert("offline_msg_count".into(), OFFLINE_QUOTA);
    raw.apps[0]
        .vendor_quotas
        .insert("presence_batch_get".into(), BATCH_QUOTA);
}

/// The emulator's answers with `status` so far.
async fn vendor_answers(emu: &TestEmulator, status: &str) -> u64 {
    emu.stats().await["responses"][status].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_under_overload_keep_the_vendor_within_its_quota() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = emulator_with_quotas().await;
    let fleet = Fleet::start("overload", 3, &emu, &redis, with_quotas).await;
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 3.0, Duration::from_secs(5))
            .await
    );
    let prefixes: Vec<String> = fleet.replicas.iter().map(Replica::agora).collect();
    let reset = format!("{}/__emulator/reset", emu.base());
    Http::new().send(Method::POST, &reset, &[], None).await;

    // Distinct offline reads, well above the vendor's quota.
    let (seen, took) = load(
        3 * OFFLINE_QUOTA,
        Duration::from_secs(2),
        offline_reads(prefixes.clone(), "o"),
    )
    .await;
    let rate = seen.sent as f64 / seen.sending.as_secs_f64();
    let quota = f64::from(OFFLINE_QUOTA);
    assert!(
        rate > 2.0 * quota,
        "not an overload: {rate:.0}/s ({seen:?})"
    );
    assert!(
        seen.other.is_empty(),
        "{:?}\n{}",
        &seen.other[..seen.other.len().min(5)],
        fleet.logs()
    );
    assert!(seen.refused > 0, "{seen:?}");
    let calls = emu.requests("offline_msg_count").await;
    let bound = quota * took.as_secs_f64() + quota;
    assert!((calls as f64) <= bound, "{calls} vendor calls in {took:?}");
    // And it used the whole quota, not a replica's third of it.
    assert!(
        calls as f64 >= quota * (took.as_secs_f64() - 1.0),
        "the fleet used its quota: {calls} calls in {took:?}"
    );

    // Presence batch gets of 100 new users each, well above the vendor's quota.
    Http::new().send(Method::POST, &reset, &[], None).await;
    let batch: MakeRequest = Arc::new(move |w, i| {
        let users: Vec<String> = (0..100).map(|k| format!("\"p{w}x{i}x{k}\"")).collect();
        (
            Method::POST,
            format!("{}/users/w{w}/presence", prefixes[(w + i) % prefixes.len()]),
            Some(format!(r#"{{"usernames":[{}]}}"#, users.join(","))),
        )
    });
    let (seen, took) = load(3 * BATCH_QUOTA, Duration::from_secs(2), batch).await;
    let rate = seen.sent as f64 / seen.sending.as_secs_f64();
    let quota = f64::from(BATCH_QUOTA);
    assert!(
        rate > 2.0 * quota,
        "not an overload: {rate:.0}/s ({seen:?})"
    );
    assert!(
        seen.other.is_empty(),
        "{:?}\n{}",
        &seen.other[..seen.other.len().min(5)],
        fleet.logs()
    );
    let calls = emu.requests("presence_batch_get").await;
    let bound = quota * took.as_secs_f64() + quota;
    assert!((calls as f64) <= bound, "{calls} vendor calls in {took:?}");
    assert_eq!(vendor_answers(&emu, "429").await, 0, "{}", fleet.logs());

    // Every key imgate wrote carries the prefix and one app's hash tag.
    let keys = redis.command("KEYS *").unwrap();
    let keys: Vec<&str> = keys
        .lines()
        .filter(|l| !l.starts_with(['*', '$']))
        .collect();
    assert!(!keys.is_empty());
    for key in keys {
        assert!(key.starts_with("test:{") && key.contains("}:"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_quota_holds_for_the_fleet() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let fleet = Fleet::start("limited", 3, &emu, &redis, |_| {}).await;
    assert!(
        fleet
            .all_report("imgate_cluster_redis_up", 1.0, Duration::from_secs(5))
            .await
    );
    // demo-limited: 10/s, burst 10. 60 quick calls spread over the three replicas.
    let calls: Vec<_> = (0..60)
        .map(|i| {
            let url = format!(
                "{}/users/alice/offline_msg_count",
                fleet.replicas[i % 3].agora()
            );
            tokio::spawn(async move {
                Http::new()
                    .send(Method::GET, &url, &[LIMITED_AUTH], None)
                    .await
            })
        })
        .collect();
    let mut seen = Seen::default();
    for call in calls {
        seen.record(&call.await.unwrap());
    }
    assert!(seen.other.is_empty(), "{:?}", seen.other);
    assert!(
        (8..=18).contains(&seen.ok),
        "{} of 60 answered (one replica alone admits 10 or more)",
        seen.ok
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_429_on_one_replica_pauses_the_endpoint_for_the_fleet() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let fleet = Fleet::start("pause", 2, &emu, &redis, |raw| {
        // Refused at once rather than waiting out the pause.
        raw.limits.max_wait_ms = 0;
    })
    .await;
    assert!(
        fleet
            .all_report("imgate_cluster_redis_up", 1.0, Duration::from_secs(5))
            .await
    );
    let (a, b) = (&fleet.replicas[0], &fleet.replicas[1]);
    let faults = format!("{}/__emulator/faults", emu.base());
    // Every vendor answer a 429 without Retry-After: imgate pauses adaptively, 100 ms first.
    Http::new()
        .send(
            Method::PUT,
            &faults,
            &[],
            Some(r#"{"error_rate":1.0,"error_status":429}"#),
        )
        .await;
    let through_a = Http::new()
        .send(
            Method::GET,
            &format!("{}/users/pa/offline_msg_count", a.agora()),
            &[DEMO_AUTH],
            None,
        )
        .await;
    assert_eq!(through_a.status, 429, "{}", through_a.text());
    let vendor_calls = emu.requests("offline_msg_count").await;
    let through_b = Http::new()
        .send(
            Method::GET,
            &format!("{}/users/pb/offline_msg_count", b.agora()),
            &[DEMO_AUTH],
            None,
        )
        .await;
    through_b.assert_error(429, "imgate_vendor_quota");
    assert!(through_b.header("retry-after").is_some());
    assert_eq!(
        emu.requests("offline_msg_count").await,
        vendor_calls,
        "B held off the vendor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_overload_degrades_to_local_shares_and_the_fleet_rejoins() {
    let _serial = SERIAL.lock().await;
    let mut redis = TestRedis::start();
    let emu = emulator_with_quotas().await;
    let fleet = Fleet::start("outage", 3, &emu, &redis, with_quotas).await;
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 3.0, Duration::from_secs(5))
            .await
    );
    let prefixes: Vec<String> = fleet.replicas.iter().map(Replica::agora).collect();
    let reset = format!("{}/__emulator/reset", emu.base());
    Http::new().send(Method::POST, &reset, &[], None).await;

    let overload = tokio::spawn(load(
        3 * OFFLINE_QUOTA,
        Duration::from_secs(4),
        offline_reads(prefixes, "d"),
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.kill();
    assert!(
        fleet
            .all_report("imgate_cluster_redis_up", 0.0, Duration::from_secs(2))
            .await,
        "{}",
        fleet.logs()
    );
    // Cached reads still answer, from every replica.
    for r in &fleet.replicas {
        let url = format!("{}/users/cached/offline_msg_count", r.agora());
        let client = Http::new();
        let first = client.send(Method::GET, &url, &[DEMO_AUTH], None).await;
        assert!(
            [200, 429].contains(&first.status.as_u16()),
            "{}",
            first.text()
        );
        if first.status == 200 {
            let again = client.send(Method::GET, &url, &[DEMO_AUTH], None).await;
            assert_eq!(again.status, 200);
            assert_eq!(again.header("x-cache"), Some("HIT"));
        }
        let status = r.status().await;
        assert_eq!(status["cluster"]["redis_up"], false, "{status}");
        assert_eq!(status["cluster"]["mode"], "degraded", "{status}");
    }
    let (seen, took) = overload.await.unwrap();
    assert!(
        seen.other.is_empty(),
        "{:?}\n{}",
        &seen.other[..seen.other.len().min(5)],
        fleet.logs()
    );
    assert!(seen.ok > 0 && seen.refused > 0, "{seen:?}");
    assert_eq!(vendor_answers(&emu, "429").await, 0, "{}", fleet.logs());
    let calls = emu.requests("offline_msg_count").await;
    let quota = f64::from(OFFLINE_QUOTA);
    let bound = quota * took.as_secs_f64() + quota;
    assert!((calls as f64) <= bound, "{calls} vendor calls in {took:?}");

    redis.restart();
    assert!(
        fleet
            .all_report("imgate_cluster_redis_up", 1.0, Duration::from_secs(5))
            .await,
        "rejoined within 5 s: {}",
        fleet.logs()
    );
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 3.0, Duration::from_secs(3))
            .await
    );
    let status = fleet.replicas[0].status().await;
    assert_eq!(status["cluster"]["mode"], "shared", "{status}");
    assert!(
        fleet.replicas[0]
            .metric("imgate_cluster_fallbacks_total")
            .await
            .is_some(),
        "fallbacks counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_count_each_other_and_a_dead_one_drops_out() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let mut fleet = Fleet::start("members", 3, &emu, &redis, |_| {}).await;
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 3.0, Duration::from_secs(5))
            .await
    );
    let status = fleet.replicas[1].status().await;
    assert_eq!(status["cluster"]["replicas"], 3, "{status}");
    assert_eq!(status["cluster"]["mode"], "shared", "{status}");

    // Killed without a word: its entry expires.
    let mut dead = fleet.replicas.pop().unwrap();
    dead.served.kill();
    let started = Instant::now();
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 2.0, Duration::from_secs(6))
            .await
    );
    assert!(started.elapsed() < Duration::from_secs(6));
    // SIGTERM: it leaves at once.
    fleet.add().await;
    assert!(
        fleet
            .all_report("imgate_cluster_replicas", 3.0, Duration::from_secs(5))
            .await
    );
    let leaving = fleet.replicas.pop().unwrap();
    #[cfg(unix)]
    {
        leaving.served.signal("-TERM");
        let left = fleet
            .all_report("imgate_cluster_replicas", 2.0, Duration::from_secs(2))
            .await;
        assert!(
            left,
            "still counted after SIGTERM; its log: {}",
            leaving.served.logs()
        );
    }
    drop(leaving);
}

/// A replica that has left is not added back by its own next heartbeat: before the fix, the
/// membership task went on beating after `leave` until the process ended, and a beat in that
/// window put the entry back for the whole liveness period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_left_stays_out_while_its_process_lives_on() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let cluster = joined_cluster(&redis, "left:").await;
    let members = || redis.command("ZCARD left:{cluster}:replicas");
    cluster.leave().await;
    assert_eq!(members().as_deref(), Some(":0\r\n"));
    // Two heartbeat periods with the handle alive: no beat may add the entry back.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(members().as_deref(), Some(":0\r\n"));
}

/// Leaving waits for a heartbeat in flight, and a heartbeat waits for Redis at most the
/// cluster timeout: with Redis frozen (it accepts nothing and answers nothing), `leave` still
/// returns within about two timeouts, and shutdown is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_while_redis_hangs_takes_no_longer_than_its_timeouts() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let cluster = joined_cluster(&redis, "frozen:").await;
    redis.freeze();
    // Past the next heartbeat (every second): it is waiting on Redis, or has just given up.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let started = Instant::now();
    let left = tokio::time::timeout(Duration::from_secs(5), cluster.leave()).await;
    let took = started.elapsed();
    redis.thaw();
    assert!(left.is_ok(), "leave() hung while Redis was frozen");
    assert!(took < Duration::from_millis(1_500), "leave() took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_started_without_redis_serves_degraded_and_joins_when_redis_appears() {
    let _serial = SERIAL.lock().await;
    let mut redis = TestRedis::start();
    redis.kill();
    let emu = TestEmulator::demo().await;
    let fleet = Fleet::start("late", 1, &emu, &redis, |_| {}).await;
    let r = &fleet.replicas[0];
    assert_eq!(r.metric("imgate_cluster_redis_up").await, Some(0.0));
    let url = format!("{}/users/early/offline_msg_count", r.agora());
    let resp = Http::new()
        .send(Method::GET, &url, &[DEMO_AUTH], None)
        .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let limited = Http::new()
        .send(Method::GET, &url, &[LIMITED_AUTH], None)
        .await;
    assert_eq!(limited.status, 200, "{}", limited.text());
    redis.restart();
    assert!(
        fleet
            .all_report("imgate_cluster_redis_up", 1.0, Duration::from_secs(5))
            .await,
        "{}",
        fleet.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_metrics_of_the_catalogue_are_exported() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::start(clustered(demo_config(&emu.base()), &redis)).await;
    let up = || metric(gw.admin, "imgate_cluster_redis_up");
    assert!(eventually(Duration::from_secs(3), || async { up().await == Some(1.0) }).await);
    let url = format!("{}/users/m/offline_msg_count", gw.agora());
    Http::new()
        .send(Method::GET, &url, &[LIMITED_AUTH], None)
        .await;
    let text = gw.metrics().await;
    let listed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metrics.txt"))
            .unwrap();
    let cluster_names: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("imgate_cluster_"))
        .collect();
    assert!(cluster_names.len() >= 4, "{cluster_names:?}");
    for name in cluster_names {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' '])),
            "{name} not exported"
        );
    }
    for op in ["vendor_quota", "client_lease", "heartbeat"] {
        assert!(
            text.contains(&format!(
                "imgate_cluster_redis_duration_seconds_count{{operation=\"{op}\"}}"
            )),
            "{op}"
        );
    }
    assert!(!text.contains(&redis.url()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_hits_spend_leased_permits_without_a_redis_round_trip_each() {
    let _serial = SERIAL.lock().await;
    let redis = TestRedis::start();
    let emu = TestEmulator::demo().await;
    let mut raw = clustered(demo_config(&emu.base()), &redis);
    // 400/s: leases of 20 permits.
    raw.clients.push(imgate::config::RawClient {
        name: "bulk".into(),
        key: Some("bulk-key".into()),
        key_sha256: None,
        apps: None,
        rate_limit: Some(imgate::config::RawRate {
            per_second: 400,
            burst: Some(400),
        }),
        endpoints: None,
    });
    let gw = TestGateway::start(raw).await;
    let up = || metric(gw.admin, "imgate_cluster_redis_up");
    assert!(eventually(Duration::from_secs(3), || async { up().await == Some(1.0) }).await);
    let url = format!("{}/users/hot/offline_msg_count", gw.agora());
    let client = Http::new();
    for _ in 0..100 {
        let resp = client
            .send(
                Method::GET,
                &url,
                &[("authorization", "Bearer bulk-key")],
                None,
            )
            .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let leases = sample(
        &gw.metrics().await,
        "imgate_cluster_redis_duration_seconds_count{operation=\"client_lease\"}",
    )
    .unwrap();
    assert!(
        (5.0..=8.0).contains(&leases),
        "{leases} leases for 100 requests"
    );
}

#[test]
fn check_config_refuses_a_malformed_redis_url_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("imgate-cluster-{}-check", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let check = |url: &str| {
        let mut raw = demo_config("http://127.0.0.1:1");
        raw.cluster = Some(RawCluster {
            redis_url: url.into(),
            key_prefix: "imgate:".into(),
            timeout_ms: 50,
        });
        let path = dir.join("check.toml");
        std::fs::write(&path, toml::to_string(&raw).unwrap()).unwrap();
        Command::new(env!("CARGO_BIN_EXE_imgate"))
            .args(["check-config", "--config", path.to_str().unwrap()])
            .output()
            .unwrap()
    };
    let bad = check("redis//:hunter22@127.0.0.1:6379");
    let said = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success());
    assert!(said.contains("cluster.redis_url"), "{said}");
    assert!(!said.contains("hunter22"), "{said}");
    let good = check("redis://:hunter22@127.0.0.1:6379/0");
    let printed = String::from_utf8_lossy(&good.stdout);
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    assert!(printed.contains("[cluster]"), "{printed}");
    assert!(!printed.contains("hunter22"), "{printed}");
}
