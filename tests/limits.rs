//! Rate limits through a real gateway and emulator (whose quotas are enforced in a sliding
//! one-second window): per-client quotas, and a vendor quota that overload never exceeds.

mod common;

use std::time::{Duration, Instant};

use common::{demo_config, Http, Resp, TestEmulator, TestGateway};
use http::Method;
use imgate::config::{RawClient, RawRate};
use imgate::emulator::EmulatorConfig;
use serde_json::json;

/// One caller's results: status and elapsed time of each request, and the 429s themselves.
struct Outcome {
    statuses: Vec<(u16, Duration)>,
    refused: Vec<Resp>,
}

/// Sends `make(i)` every `interval` for `duration` with `auth`; returns what came back.
async fn paced(
    duration: Duration,
    interval: Duration,
    auth: String,
    make: impl Fn(usize) -> (Method, String, Option<String>) + Send + 'static,
) -> Outcome {
    let client = Http::new();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(interval);
    let mut pending = Vec::new();
    let mut i = 0;
    while started.elapsed() < duration {
        ticks.tick().await;
        let (method, url, body) = make(i);
        i += 1;
        let (client, auth) = (client.clone(), auth.clone());
        pending.push(tokio::spawn(async move {
            let sent = Instant::now();
            let headers = [
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            let resp = client.send(method, &url, &headers, body.as_deref()).await;
            (resp, sent.elapsed())
        }));
    }
    let mut outcome = Outcome {
        statuses: Vec::new(),
        refused: Vec::new(),
    };
    for task in pending {
        let (resp, took) = task.await.unwrap();
        outcome.statuses.push((resp.status.as_u16(), took));
        if resp.status == 429 {
            outcome.refused.push(resp);
        }
    }
    outcome
}

impl Outcome {
    fn count(&self, status: u16) -> usize {
        self.statuses.iter().filter(|(s, _)| *s == status).count()
    }

    fn slowest(&self) -> Duration {
        self.statuses
            .iter()
            .map(|(_, t)| *t)
            .max()
            .unwrap_or_default()
    }
}

fn client(name: &str, key: &str, per_second: u32) -> RawClient {
    RawClient {
        name: name.into(),
        key: Some(key.into()),
        key_sha256: None,
        apps: None,
        rate_limit: Some(RawRate {
            per_second,
            burst: Some(per_second),
        }),
        endpoints: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_quota_gets_429s_while_another_client_is_unaffected() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.clients.push(client("busy", "busy-key-123", 20));
    raw.clients.push(client("calm", "calm-key-123", 10));
    let gw = TestGateway::start(raw).await;
    // Cache hits after the first: they count against the caller's quota all the same.
    let url = format!("{}/users/q/offline_msg_count", gw.agora());
    let (busy_url, calm_url) = (url.clone(), url);
    let seconds = Duration::from_secs(5);
    let busy = tokio::spawn(paced(
        seconds,
        Duration::from_millis(10),
        "Bearer busy-key-123".into(),
        move |_| (Method::GET, busy_url.clone(), None),
    ));
    let calm = tokio::spawn(paced(
        seconds,
        Duration::from_millis(200),
        "Bearer calm-key-123".into(),
        move |_| (Method::GET, calm_url.clone(), None),
    ));
    let (busy, calm) = (busy.await.unwrap(), calm.await.unwrap());

    assert_eq!(
        calm.count(200),
        calm.statuses.len(),
        "the calm client is unaffected"
    );
    let ok = busy.count(200);
    eprintln!(
        "client quota: {ok} of {} answered, {} refused",
        busy.statuses.len(),
        busy.count(429)
    );
    // 20/s for 5 s, plus a burst of 20 at the start.
    assert!(
        (80..=125).contains(&ok),
        "{ok} successes of {}",
        busy.statuses.len()
    );
    assert_eq!(
        ok + busy.count(429),
        busy.statuses.len(),
        "only 200s and 429s"
    );
    for resp in &busy.refused {
        let body = resp.assert_error(429, "imgate_rate_limited");
        assert!(body["error_description"].as_str().unwrap().contains("20"));
        let retry: u64 = resp.header("retry-after").unwrap().parse().unwrap();
        assert!(retry >= 1, "whole seconds, rounded up");
        assert_eq!(
            resp.header("ratelimit-policy"),
            Some("\"client\";q=20;w=1;burst=20")
        );
        assert!(resp
            .header("ratelimit")
            .unwrap()
            .starts_with("\"client\";r=0;t="));
    }
    let metrics = gw.metrics().await;
    let rejected = format!(
        r#"imgate_ratelimit_rejected_total{{scope="client"}} {}"#,
        busy.count(429)
    );
    assert!(metrics.contains(&rejected), "{rejected}\n{metrics}");
}

#[tokio::test]
async fn successful_answers_on_limited_routes_carry_the_ratelimit_headers() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/h/offline_msg_count", gw.easemob());
    let resp = Http::new()
        .send(
            Method::GET,
            &url,
            &[("authorization", "Bearer demo-limited-key")],
            None,
        )
        .await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("ratelimit-policy"),
        Some("\"client\";q=10;w=1;burst=10")
    );
    assert_eq!(resp.header("ratelimit"), Some("\"client\";r=9;t=0"));
    // The same read again is a cache hit, whose headers are made another way.
    let hit = Http::new()
        .send(
            Method::GET,
            &url,
            &[
                ("authorization", "Bearer demo-limited-key"),
                ("x-request-id", "hit-1"),
            ],
            None,
        )
        .await;
    assert_eq!(hit.header("x-cache"), Some("HIT"));
    assert_eq!(hit.header("x-request-id"), Some("hit-1"));
    assert_eq!(
        hit.header("ratelimit-policy"),
        Some("\"client\";q=10;w=1;burst=10")
    );
    assert_eq!(hit.header("ratelimit"), Some("\"client\";r=8;t=0"));
    assert_eq!(hit.header("content-type"), Some("application/json"));
    for unlimited_read in ["miss", "hit"] {
        let unlimited = Http::new()
            .send(
                Method::GET,
                &format!("{}/users/unlimited/offline_msg_count", gw.easemob()),
                &[("authorization", "Bearer demo-key")],
                None,
            )
            .await;
        assert_eq!(unlimited.status, 200, "{unlimited_read}");
        assert!(
            unlimited.header("ratelimit").is_none()
                && unlimited.header("ratelimit-policy").is_none(),
            "the demo client has no quota ({unlimited_read})"
        );
        assert_eq!(unlimited.header("x-request-id").map(str::len), Some(32));
    }
}

/// The vendor's presence calls seen in the emulator's stats.
async fn presence_stats(emu: &TestEmulator) -> (u64, u64) {
    let stats = emu.stats().await;
    let calls = stats["requests"]["presence_batch_get"].as_u64().unwrap();
    let refused = stats["responses"]["429"].as_u64().unwrap_or(0);
    (calls, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_never_makes_the_vendor_exceed_its_quota() {
    const SECONDS: u64 = 10;
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let started = Instant::now();
    // 20 callers, each 25 uncached presence lookups per second: 10× the 50/s quota.
    let callers: Vec<_> = (0..20)
        .map(|c| {
            let url = format!("{}/users/caller{c}/presence", gw.agora());
            tokio::spawn(paced(
                Duration::from_secs(SECONDS),
                Duration::from_millis(40),
                "Bearer demo-key".into(),
                move |i| {
                    let body = json!({ "usernames": [format!("c{c}u{i}")] }).to_string();
                    (Method::POST, url.clone(), Some(body))
                },
            ))
        })
        .collect();
    let mut outcomes = Vec::new();
    for caller in callers {
        outcomes.push(caller.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (calls, refused) = presence_stats(&emu).await;
    assert_eq!(refused, 0, "the vendor never answered 429");
    let policy = imgate::limit::LimitPolicy::within_each_second(50);
    let most = (50.0 * elapsed).ceil() as u64 + u64::from(policy.burst);
    assert!(
        calls <= most,
        "{calls} vendor calls in {elapsed:.1} s, at most {most}"
    );
    let (mut ok, mut limited) = (0, 0);
    for outcome in &outcomes {
        ok += outcome.count(200);
        limited += outcome.count(429);
        assert_eq!(
            outcome.count(200) + outcome.count(429),
            outcome.statuses.len()
        );
        for resp in &outcome.refused {
            resp.assert_error(429, "imgate_vendor_quota");
            assert!(resp.header("retry-after").is_some());
        }
        // max_wait (250 ms) + one merged call in flight + the vendor's latency, with room
        // for a loaded 2-core machine.
        assert!(
            outcome.slowest() < Duration::from_millis(900),
            "{:?}",
            outcome.slowest()
        );
    }
    eprintln!("overload: {calls} vendor calls in {elapsed:.1} s (at most {most}), {ok} answered, {limited} refused");
    assert!(
        ok > 0 && ok + limited > 4000,
        "{ok} answered, {limited} refused"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains("imgate_presence_batch_users_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_quota_below_imgates_is_backed_off_and_stale_entries_are_served() {
    // The emulator allows 10/s; imgate believes 50/s.
    let mut config = EmulatorConfig::demo();
    config.apps[0].quotas.insert("offline_msg_count".into(), 10);
    let emu = TestEmulator::start(config).await;
    let mut raw = demo_config(&emu.base());
    raw.apps[0]
        .vendor_quotas
        .insert("offline_msg_count".into(), 50);
    raw.cache.offline_count.ttl_ms = 200;
    raw.cache.offline_count.stale_while_revalidate_ms = 0;
    raw.cache.offline_count.stale_if_error_ms = 60_000;
    let gw = TestGateway::start(raw).await;
    let users: Vec<String> = (0..10).map(|i| format!("s{i}")).collect();
    for user in &users {
        let url = format!("{}/users/{user}/offline_msg_count", gw.agora());
        let resp = Http::new()
            .send(
                Method::GET,
                &url,
                &[("authorization", "Bearer demo-key")],
                None,
            )
            .await;
        assert_eq!(resp.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let base = gw.agora();
    let outcome = paced(
        Duration::from_secs(4),
        Duration::from_millis(10),
        "Bearer demo-key".into(),
        move |i| {
            let url = format!("{base}/users/s{}/offline_msg_count", i % 10);
            (Method::GET, url, None)
        },
    )
    .await;
    let stats = emu.stats().await;
    let vendor_429 = stats["responses"]["429"].as_u64().unwrap_or(0);
    // Each 429 pauses the endpoint for longer (100 ms doubling): a handful at most.
    eprintln!(
        "misconfigured quota: {vendor_429} vendor 429s over {} calls",
        outcome.statuses.len()
    );
    assert!(
        (1..=12).contains(&vendor_429),
        "{vendor_429} vendor 429s: {stats}"
    );
    assert_eq!(
        outcome.count(200),
        outcome.statuses.len(),
        "stale entries stood in"
    );
    let metrics = gw.metrics().await;
    assert!(metrics.contains(
        r#"imgate_vendor_throttled_total{app="agora-demo",endpoint="offline_msg_count"}"#
    ));
    assert!(metrics
        .contains(r#"imgate_cache_lookups_total{endpoint="offline_msg_count",result="stale"}"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_caller_waits_longer_than_max_wait_for_a_permit() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.limits.max_wait_ms = 250;
    let gw = TestGateway::start(raw).await;
    let base = gw.easemob();
    let outcome = paced(
        Duration::from_secs(2),
        Duration::from_millis(2),
        "Bearer demo-key".into(),
        move |i| {
            (
                Method::GET,
                format!("{base}/users/w{i}/offline_msg_count"),
                None,
            )
        },
    )
    .await;
    assert!(outcome.count(429) > 0, "the quota was really exceeded");
    let metrics = gw.metrics().await;
    let bucket = |le: &str| {
        let series =
            format!(r#"imgate_ratelimit_wait_seconds_bucket{{scope="vendor",le="{le}"}} "#);
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{series} missing"))
    };
    assert_eq!(
        bucket("0.25"),
        bucket("+Inf"),
        "every wait ended within 250 ms"
    );
    for (status, took) in &outcome.statuses {
        if *status == 429 {
            assert!(
                *took < Duration::from_millis(400),
                "a refusal took {took:?}"
            );
        }
    }
}
