//! The read cache through a real gateway and emulator: coalescing, stale serving, presence split
//! and merge, write-through invalidation, purges and metrics. Vendor calls are counted with the
//! emulator's `/__emulator/stats`.

mod common;

use std::time::{Duration, Instant};

use common::{agora_token, demo_config, http, Http, Resp, TestEmulator, TestGateway, DEMO_AUTH};
use http::Method;
use imgate::config::RawConfig;
use serde_json::{json, Value};

async fn get(url: &str) -> Resp {
    http(Method::GET, url, &[DEMO_AUTH], None).await
}

async fn post(url: &str, body: &str) -> Resp {
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    http(Method::POST, url, &headers, Some(body)).await
}

fn x_cache(resp: &Resp) -> &str {
    resp.header("x-cache").unwrap_or("-")
}

async fn faults(emu: &TestEmulator, body: Value) {
    let url = format!("{}/__emulator/faults", emu.base());
    let resp = http(Method::PUT, &url, &[], Some(&body.to_string())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

async fn reset(emu: &TestEmulator) {
    http(
        Method::POST,
        &format!("{}/__emulator/reset", emu.base()),
        &[],
        None,
    )
    .await;
}

/// A gateway whose cache policies are adjusted by `edit`.
async fn gateway_with(emu: &TestEmulator, edit: impl FnOnce(&mut RawConfig)) -> TestGateway {
    let mut raw = demo_config(&emu.base());
    edit(&mut raw);
    TestGateway::start(raw).await
}

/// `n` identical reads sent at once; returns the answers and the slowest answer's time.
async fn concurrent_gets(url: &str, n: usize) -> (Vec<Resp>, Duration) {
    let client = Http::new();
    let started = Instant::now();
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let (client, url) = (client.clone(), url.to_owned());
            tokio::spawn(async move {
                let resp = client.send(Method::GET, &url, &[DEMO_AUTH], None).await;
                (resp, started.elapsed())
            })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    let mut slowest = Duration::ZERO;
    for task in tasks {
        let (resp, took) = task.await.unwrap();
        slowest = slowest.max(took);
        answers.push(resp);
    }
    (answers, slowest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_misses_make_one_vendor_call_for_new_and_expired_keys() {
    const LATENCY_MS: u64 = 300;
    let emu = TestEmulator::demo().await;
    let gw = gateway_with(&emu, |raw| {
        raw.cache.offline_count.ttl_ms = 300;
        raw.cache.offline_count.stale_while_revalidate_ms = 0;
    })
    .await;
    let url = format!("{}/users/hot/offline_msg_count", gw.agora());
    // Open the pool's connections first, so the measured round is about the cache.
    let _ = concurrent_gets(&format!("{}/users/warm/offline_msg_count", gw.agora()), 200).await;
    faults(&emu, json!({ "latency_ms": LATENCY_MS })).await;
    for round in ["new key", "expired key"] {
        reset(&emu).await;
        let (answers, slowest) = concurrent_gets(&url, 200).await;
        assert_eq!(
            emu.requests("offline_msg_count").await,
            1,
            "{round}: one vendor call"
        );
        let first = answers[0].json();
        assert_eq!(first["data"], json!({"hot": 0}));
        for resp in &answers {
            assert_eq!(resp.status, 200, "{round}: {}", resp.text());
            assert_eq!(resp.body, answers[0].body, "{round}: identical answers");
        }
        // Requests that arrived after the answer are plain hits.
        let missed = answers.iter().filter(|r| x_cache(r) == "MISS").count();
        let others = answers
            .iter()
            .filter(|r| matches!(x_cache(r), "COALESCED" | "HIT"))
            .count();
        assert_eq!((missed, others), (1, 199), "{round}");
        // Waiters are woken with the answer (no polling): within the vendor's latency plus a
        // margin for 200 requests on a small test machine.
        assert!(
            slowest < Duration::from_millis(LATENCY_MS + 150),
            "{round}: slowest answer after {slowest:?}"
        );
        // Past the TTL (and no stale window): the next round finds an expired entry.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test]
async fn hits_use_no_vendor_call_and_carry_x_cache_and_age() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    for base in [gw.agora(), gw.easemob()] {
        reset(&emu).await;
        let url = format!("{base}/users/amy/offline_msg_count");
        let miss = get(&url).await;
        assert_eq!((miss.status.as_u16(), x_cache(&miss)), (200, "MISS"));
        let hit = get(&url).await;
        assert_eq!(x_cache(&hit), "HIT");
        assert_eq!(hit.header("age"), Some("0"));
        assert_eq!(
            hit.body, miss.body,
            "a hit renders the vendor's body byte for byte"
        );
        assert_eq!(hit.header("content-type"), Some("application/json"));
        assert_eq!(emu.requests("offline_msg_count").await, 1);
    }
    // The same body the vendor gives directly.
    let direct = http(
        Method::GET,
        &format!("{}/users/amy/offline_msg_count", emu.agora()),
        &[("authorization", &format!("Bearer {}", agora_token(600)))],
        None,
    )
    .await
    .json();
    let cached = get(&format!("{}/users/amy/offline_msg_count", gw.agora()))
        .await
        .json();
    for field in ["action", "uri", "path", "entities", "data", "count"] {
        assert_eq!(cached[field], direct[field], "{field}");
    }
}

#[tokio::test]
async fn stale_entries_are_served_at_once_while_one_call_revalidates() {
    let emu = TestEmulator::demo().await;
    let gw = gateway_with(&emu, |raw| {
        raw.cache.offline_status.ttl_ms = 200;
        raw.cache.offline_status.stale_while_revalidate_ms = 5_000;
    })
    .await;
    let sent = post(
        &format!("{}/messages/users", gw.agora()),
        r#"{"from":"a","to":["sam"],"type":"txt","body":{"msg":"x"}}"#,
    )
    .await
    .json();
    let msg = sent["data"]["sam"].as_str().unwrap().to_owned();
    let url = format!("{}/users/sam/offline_msg_status/{msg}", gw.agora());
    assert_eq!(x_cache(&get(&url).await), "MISS");
    tokio::time::sleep(Duration::from_millis(300)).await;
    reset(&emu).await;
    let stale = get(&url).await;
    assert_eq!(x_cache(&stale), "STALE");
    assert_eq!(stale.json()["data"][&msg], "undelivered");
    let again = get(&url).await;
    assert!(
        matches!(x_cache(&again), "STALE" | "HIT"),
        "{}",
        x_cache(&again)
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        emu.requests("offline_msg_status").await,
        1,
        "one background revalidation"
    );
    assert_eq!(
        x_cache(&get(&url).await),
        "HIT",
        "the revalidated entry is fresh"
    );
}

#[tokio::test]
async fn stale_entries_stand_in_when_the_vendor_fails_and_uncached_keys_fail_clearly() {
    let emu = TestEmulator::demo().await;
    let gw = gateway_with(&emu, |raw| {
        raw.cache.offline_count.ttl_ms = 100;
        raw.cache.offline_count.stale_while_revalidate_ms = 0;
        raw.cache.offline_count.stale_if_error_ms = 60_000;
        raw.cache.presence.ttl_ms = 100;
        raw.cache.presence.stale_while_revalidate_ms = 0;
        raw.upstream.timeout_ms = 300;
    })
    .await;
    let count = format!("{}/users/kim/offline_msg_count", gw.easemob());
    let presence = format!("{}/users/kim/presence", gw.easemob());
    let fresh_count = get(&count).await;
    let fresh_presence = post(&presence, r#"{"usernames":["kim"]}"#).await;
    assert_eq!(fresh_presence.status, 200);
    tokio::time::sleep(Duration::from_millis(150)).await;

    faults(&emu, json!({"error_rate": 1.0, "error_status": 503})).await;
    let stale = get(&count).await;
    assert_eq!((stale.status.as_u16(), x_cache(&stale)), (200, "STALE"));
    assert_eq!(stale.body, fresh_count.body);
    let stale = post(&presence, r#"{"usernames":["kim"]}"#).await;
    assert_eq!((stale.status.as_u16(), x_cache(&stale)), (200, "STALE"));
    assert_eq!(stale.body, fresh_presence.body);
    let uncached = get(&format!("{}/users/new/offline_msg_count", gw.easemob())).await;
    uncached.assert_error(503, "server_error");

    faults(&emu, json!({"latency_ms": 1000})).await;
    assert_eq!(
        x_cache(&get(&count).await),
        "STALE",
        "a timeout is a failure too"
    );
    let uncached = get(&format!("{}/users/new2/offline_msg_count", gw.easemob())).await;
    uncached.assert_error(504, "imgate_upstream_timeout");
}

/// The vendor's own answer to a batch get, with a valid app token.
async fn direct_batch(emu: &TestEmulator, users: &[String]) -> Resp {
    let body = json!({ "usernames": users }).to_string();
    let auth = format!("Bearer {}", agora_token(600));
    let headers = [
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    http(
        Method::POST,
        &format!("{}/users/x/presence", emu.agora()),
        &headers,
        Some(&body),
    )
    .await
}

#[tokio::test]
async fn a_batch_get_fetches_only_the_users_not_cached_and_merges_in_request_order() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let users: Vec<String> = (0..100).map(|i| format!("p{i:03}")).collect();
    for user in users.iter().step_by(10) {
        let url = format!("{}/users/{user}/presence/web_1/{}", gw.agora(), user.len());
        assert_eq!(post(&url, r#"{"ext":"set"}"#).await.status, 200);
    }
    let cached: Vec<String> = users.iter().step_by(2).cloned().collect();
    let warm = post(
        &format!("{}/users/x/presence", gw.agora()),
        &json!({ "usernames": cached }).to_string(),
    )
    .await;
    assert_eq!(x_cache(&warm), "MISS");
    reset(&emu).await;

    // Request order shuffled, with a duplicate.
    let mut asked: Vec<String> = users.iter().rev().cloned().collect();
    asked.push(users[3].clone());
    asked.truncate(100);
    let resp = post(
        &format!("{}/users/y/presence", gw.agora()),
        &json!({ "usernames": asked }).to_string(),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let stats = emu.stats().await;
    let expected_fetch = asked
        .iter()
        .filter(|u| !cached.contains(u))
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(stats["requests"]["presence_batch_get"], 1, "{stats}");
    assert_eq!(stats["presence_batch_sizes"], json!([expected_fetch]));
    let direct = direct_batch(&emu, &asked).await;
    assert_eq!(
        resp.text(),
        direct.text(),
        "byte for byte the vendor's answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_user_lookups_are_merged_into_batch_calls() {
    let emu = TestEmulator::demo().await;
    // "Together" on a 2-core machine running the other tests of this file at the same time is
    // tens of milliseconds from the first request to the last, not the default 2 ms.
    let gw = gateway_with(&emu, |raw| raw.cache.presence.batch_window_ms = Some(50)).await;
    // Open the pool's connections first.
    let warm: Vec<_> = (0..100)
        .map(|i| {
            let url = format!("{}/users/w{i}/offline_msg_count", gw.agora());
            tokio::spawn(async move { get(&url).await })
        })
        .collect();
    for task in warm {
        task.await.unwrap();
    }
    reset(&emu).await;
    let url = format!("{}/users/me/presence", gw.agora());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(
                async move { post(&url, &format!(r#"{{"usernames":["solo{i}"]}}"#)).await },
            )
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let resp = task.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["result"][0]["uid"], format!("solo{i}"));
    }
    let stats = emu.stats().await;
    let calls = stats["requests"]["presence_batch_get"].as_u64().unwrap();
    assert!(calls <= 2, "{calls} vendor calls: {stats}");
    let sizes: u64 = stats["presence_batch_sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(sizes, 100);
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains("imgate_presence_batch_users_count"),
        "{metrics}"
    );
}

#[tokio::test]
async fn writes_through_imgate_keep_the_cache_true() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let base = gw.easemob();
    let batch = |users: &str| format!(r#"{{"usernames":[{users}]}}"#);
    let presence = format!("{base}/users/viewer/presence");

    // A presence set invalidates the user's entry.
    assert_eq!(post(&presence, &batch(r#""ann""#)).await.status, 200);
    assert_eq!(x_cache(&post(&presence, &batch(r#""ann""#)).await), "HIT");
    post(
        &format!("{base}/users/ann/presence/ios_1/2"),
        r#"{"ext":"busy"}"#,
    )
    .await;
    let after = post(&presence, &batch(r#""ann""#)).await;
    assert_eq!(x_cache(&after), "MISS");
    assert_eq!(after.json()["result"][0]["status"], json!({"ios_1": "2"}));

    // A message invalidates the recipient's count.
    let count = format!("{base}/users/ann/offline_msg_count");
    assert_eq!(get(&count).await.json()["data"]["ann"], 0);
    post(
        &format!("{base}/messages/users"),
        r#"{"from":"z","to":["ann"],"type":"txt","body":{}}"#,
    )
    .await;
    assert_eq!(get(&count).await.json()["data"]["ann"], 1);
    // So does the legacy send (`POST {prefix}/messages`) to users, but not to a group.
    assert_eq!(x_cache(&get(&count).await), "HIT");
    let legacy = post(
        &format!("{base}/messages"),
        r#"{"target_type":"users","target":["ann"],"msg":{"type":"txt","msg":"x"},"from":"z"}"#,
    )
    .await;
    assert_eq!(legacy.json()["data"], json!({"ann": "success"}));
    let counted = get(&count).await;
    assert_eq!(
        (x_cache(&counted), counted.json()["data"]["ann"].clone()),
        ("MISS", json!(2))
    );
    post(
        &format!("{base}/messages"),
        r#"{"target_type":"chatgroups","target":["ann"],"msg":{"type":"txt","msg":"x"}}"#,
    )
    .await;
    assert_eq!(x_cache(&get(&count).await), "HIT");

    // Coming online invalidates the count and undelivered statuses.
    let sent = post(
        &format!("{base}/messages/users"),
        r#"{"from":"z","to":"ann","type":"txt","body":{}}"#,
    )
    .await;
    let msg = sent.json()["data"]["ann"].as_str().unwrap().to_owned();
    let status = format!("{base}/users/ann/offline_msg_status/{msg}");
    assert_eq!(get(&status).await.json()["data"][&msg], "undelivered");
    assert_eq!(x_cache(&get(&status).await), "HIT");
    post(
        &format!("{base}/users/ann/presence/android_1/1"),
        r#"{"ext":""}"#,
    )
    .await;
    assert_eq!(get(&status).await.json()["data"][&msg], "delivered");
    assert_eq!(get(&count).await.json()["data"]["ann"], 0);

    // A subscription refreshes the subscribed users' presence and invalidates the list.
    let list = format!("{base}/users/viewer/presence/sublist?pageNum=1&pageSize=10");
    assert_eq!(get(&list).await.json()["result"]["totalnum"], "0");
    assert_eq!(x_cache(&get(&list).await), "HIT");
    post(
        &format!("{base}/users/bob/presence/web_1/1"),
        r#"{"ext":"hi"}"#,
    )
    .await;
    post(
        &format!("{base}/users/viewer/presence/600"),
        &batch(r#""bob""#),
    )
    .await;
    reset(&emu).await;
    let bob = post(&presence, &batch(r#""bob""#)).await;
    assert_eq!(
        x_cache(&bob),
        "HIT",
        "refreshed by the subscription's answer"
    );
    assert_eq!(bob.json()["result"][0]["ext"], "hi");
    assert!(bob.json()["result"][0].get("expiry").is_none());
    assert_eq!(emu.requests("presence_batch_get").await, 0);
    assert_eq!(get(&list).await.json()["result"]["totalnum"], "1");
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    let unsub = http(Method::DELETE, &presence, &headers, Some(r#"["bob"]"#)).await;
    assert_eq!(unsub.status, 200);
    assert_eq!(get(&list).await.json()["result"]["totalnum"], "0");
}

#[tokio::test]
async fn the_admin_api_purges_by_app_endpoint_and_user() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let count = |base: &str, user: &str| format!("{base}/users/{user}/offline_msg_count");
    let urls = [
        count(&gw.agora(), "a"),
        count(&gw.agora(), "b"),
        count(&gw.easemob(), "a"),
    ];
    for url in &urls {
        get(url).await;
    }
    let purge = |query: &str| {
        let url = format!("http://{}/admin/cache/purge{query}", gw.admin);
        async move {
            http(
                Method::POST,
                &url,
                &[("authorization", "Bearer demo-admin-key")],
                None,
            )
            .await
        }
    };
    let statuses = || async {
        let mut out = Vec::new();
        for url in &urls {
            out.push(x_cache(&get(url).await).to_owned());
        }
        out
    };
    assert_eq!(purge("?app=agora-demo&user=a").await.status, 200);
    assert_eq!(statuses().await, ["MISS", "HIT", "HIT"]);
    assert_eq!(purge("?app=agora-demo").await.status, 200);
    assert_eq!(statuses().await, ["MISS", "MISS", "HIT"]);
    assert_eq!(purge("?endpoint=offline_msg_count").await.status, 200);
    assert_eq!(statuses().await, ["MISS", "MISS", "MISS"]);
    assert_eq!(purge("").await.status, 200);
    assert_eq!(statuses().await, ["MISS", "MISS", "MISS"]);
    purge("?app=nope")
        .await
        .assert_error(404, "imgate_unknown_app");
    purge("?endpoint=messages_users")
        .await
        .assert_error(400, "imgate_bad_request");
    let unauthorized = http(
        Method::POST,
        &format!("http://{}/admin/cache/purge", gw.admin),
        &[],
        None,
    )
    .await;
    unauthorized.assert_error(401, "unauthorized");
}

#[tokio::test]
async fn cache_metrics_count_lookups_and_entries() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/m/offline_msg_count", gw.agora());
    get(&url).await;
    get(&url).await;
    let metrics = gw.metrics().await;
    for line in [
        r#"imgate_cache_lookups_total{endpoint="offline_msg_count",result="miss"} 1"#,
        r#"imgate_cache_lookups_total{endpoint="offline_msg_count",result="hit"} 1"#,
        r#"imgate_cache_entries{cache="offline_count"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

#[tokio::test]
async fn a_ttl_of_zero_turns_an_endpoints_cache_off() {
    let emu = TestEmulator::demo().await;
    let gw = gateway_with(&emu, |raw| raw.cache.offline_count.ttl_ms = 0).await;
    let url = format!("{}/users/z/offline_msg_count", gw.agora());
    get(&url).await;
    get(&url).await;
    assert_eq!(emu.requests("offline_msg_count").await, 2);
}
