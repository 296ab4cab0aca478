//! Hostile clients and a faulty vendor, on loopback with small configured timeouts: connections
//! that stall are cut off while honest requests pass, callers without a key never get their
//! body read, stale answers beat a hanging vendor, readiness tells the truth, and HTTPS toward
//! the vendor and on the API listener works with certificates made here.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{demo_config, http, Resp, TestEmulator, TestGateway, DEMO_AUTH};
use http::{Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use imgate::config::{RawCache, RawCachePolicy};
use imgate::demo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The HTTP/2 connection preface and an empty SETTINGS frame: what an h2c client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";

/// Reads from `stream` until the peer closes it (EOF or reset); returns when, or `None` if it is
/// still open after `limit`.
async fn closed_at(mut stream: TcpStream, limit: Duration) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Everything `stream` sends until it closes, within `limit` (panics if it stays open).
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => panic!(
                "connection still open after {limit:?}; got {} bytes: {:?}",
                out.len(),
                String::from_utf8_lossy(&out[..out.len().min(200)])
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&out).into_owned(),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

fn path_of(url: &str) -> &str {
    let rest = url.strip_prefix("http://").unwrap();
    &rest[rest.find('/').unwrap()..]
}

async fn count(url: &str) -> Resp {
    http(Method::GET, url, &[DEMO_AUTH], None).await
}

/// PUTs `body` to the emulator's control endpoint `/__emulator/{what}`.
async fn put_control(emu: &TestEmulator, what: &str, body: Value) {
    let url = format!("{}/__emulator/{what}", emu.base());
    let resp = http(Method::PUT, &url, &[], Some(&body.to_string())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

async fn put_faults(emu: &TestEmulator, faults: Value) {
    put_control(emu, "faults", faults).await;
}

#[tokio::test]
async fn stalled_and_idle_connections_are_closed_in_time_while_honest_requests_pass() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.header_read_timeout_ms = 1000;
    raw.server.idle_timeout_ms = 1000;
    let gw = TestGateway::start(raw).await;

    let opened = Instant::now();
    let mut watchers = tokio::task::JoinSet::new();
    for i in 0..150 {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        // 100 send one byte and stop; 50 are h2c connections that never open a stream.
        let first: &[u8] = if i < 100 { b"P" } else { H2_PREFACE };
        stream.write_all(first).await.unwrap();
        watchers.spawn(closed_at(stream, Duration::from_secs(4)));
    }
    let honest = Instant::now();
    let resp = count(&format!("{}/users/alice/offline_msg_count", gw.agora())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let honest = honest.elapsed();
    assert!(
        honest < Duration::from_millis(500),
        "honest request took {honest:?}"
    );

    let mut latest = Duration::ZERO;
    while let Some(closed) = watchers.join_next().await {
        let closed = closed
            .unwrap()
            .expect("a stalled connection was never closed");
        latest = latest.max(closed - opened);
    }
    // The header-read timeout is 1 s; allow for the time taken to open 150 connections.
    assert!(
        latest >= Duration::from_millis(900) && latest < Duration::from_millis(2000),
        "last stalled connection closed after {latest:?}"
    );
    println!(
        "150 stalled connections all closed {latest:?} after opening; honest request {honest:?}"
    );
}

/// Sends one request on a fresh HTTP/1.1 or HTTP/2 (h2c) connection, then waits for the server
/// to close the idle connection; returns how long after the answer that took.
async fn idle_close_after_one_request(gw: &TestGateway, h2: bool) -> Duration {
    let io = TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let url = format!("{}/users/alice/offline_msg_count", gw.agora());
    let request = || {
        Request::get(path_of(&url))
            .header("host", "imgate")
            .header("authorization", DEMO_AUTH.1)
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    // The request senders stay alive: dropping one would close the connection from this side.
    let (status, conn, _sender): (_, _, Box<dyn std::any::Any + Send>) = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let conn = tokio::spawn(conn);
        (
            send.send_request(request()).await.unwrap().status(),
            conn,
            Box::new(send),
        )
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let conn = tokio::spawn(conn);
        (
            send.send_request(request()).await.unwrap().status(),
            conn,
            Box::new(send),
        )
    };
    assert_eq!(status, StatusCode::OK);
    let answered = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("idle connection still open after 5 s")
        .unwrap()
        .ok();
    answered.elapsed()
}

#[tokio::test]
async fn idle_keep_alive_and_h2_connections_are_closed_after_the_idle_timeout() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.idle_timeout_ms = 1000;
    raw.server.header_read_timeout_ms = 5000;
    let gw = TestGateway::start(raw).await;
    for h2 in [true, false] {
        let idle = idle_close_after_one_request(&gw, h2).await;
        assert!(
            idle >= Duration::from_millis(900) && idle < Duration::from_millis(2000),
            "h2={h2}: idle connection closed after {idle:?}"
        );
    }
}

#[tokio::test]
async fn the_next_http1_request_gets_the_header_read_timeout_and_h2_keeps_the_idle_timeout() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.header_read_timeout_ms = 1000;
    raw.server.idle_timeout_ms = 30_000;
    let gw = TestGateway::start(raw).await;
    let url = format!("{}/users/alice/offline_msg_count", gw.agora());

    // HTTP/1: one answered request, then the start of a second one that never completes.
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: imgate\r\nAuthorization: {}\r\n\r\n",
        path_of(&url),
        DEMO_AUTH.1
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("\"count\":0}") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        assert!(n > 0, "closed before answering");
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    let answered = Instant::now();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: i")
        .await
        .unwrap();
    let closed = closed_at(stream, Duration::from_secs(5))
        .await
        .expect("a half-sent second request is cut off");
    let after = closed - answered;
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "closed {after:?} after the first answer"
    );

    // HTTP/2: no request open is idleness, and idle_timeout (30 s) applies, not 1 s.
    let io = TokioIo::new(TcpStream::connect(gw.addr).await.unwrap());
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .unwrap();
    let conn = tokio::spawn(conn);
    let request = Request::get(path_of(&url))
        .header("host", "imgate")
        .header("authorization", DEMO_AUTH.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send.send_request(request).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !conn.is_finished(),
        "h2 connection closed while idle under 30 s"
    );
    assert!(send.ready().await.is_ok());
}

#[tokio::test]
async fn a_keyless_request_is_refused_on_its_headers_and_its_pending_body_never_read() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.body_read_timeout_ms = 5000;
    let gw = TestGateway::start(raw).await;
    let path = format!("{}/users/alice/presence", path_of(&gw.agora()));
    for auth in ["", "Authorization: Bearer wrong-key\r\n"] {
        let mut stream = TcpStream::connect(gw.addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: imgate\r\n{auth}Content-Type: application/json\r\n\
             Content-Length: 10\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let started = Instant::now();
        // The body never comes: the answer must not wait for it (nor for the body timeout).
        let answer = read_until_closed(&mut stream, Duration::from_secs(2)).await;
        assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close"),
            "{answer}"
        );
        assert!(answer.contains(r#""error":"unauthorized""#), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(emu.requests("presence_batch_get").await, 0);
}

#[tokio::test]
async fn a_dribbled_body_is_cut_off_at_the_body_read_timeout() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.body_read_timeout_ms = 1000;
    let gw = TestGateway::start(raw).await;
    let path = format!("{}/users/alice/presence", path_of(&gw.agora()));
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: imgate\r\nAuthorization: {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n",
        DEMO_AUTH.1
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let dribble = tokio::spawn(async move {
        // One byte every 200 ms: the whole body would take 20 s.
        for _ in 0..100 {
            if writer.write_all(b" ").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), reader.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    dribble.abort();
    assert!(read.is_ok(), "connection still open after 3 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains(r#""error":"imgate_body_timeout""#),
        "{answer}"
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2000),
        "{elapsed:?}"
    );
    assert_eq!(emu.requests("presence_batch_get").await, 0);
}

#[tokio::test]
async fn other_or_missing_content_types_on_json_bodies_get_415_without_a_vendor_call() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let cases = [
        (
            Method::POST,
            "/users/alice/presence",
            r#"{"usernames":["bob"]}"#,
        ),
        (
            Method::POST,
            "/users/alice/presence/web_1/1",
            r#"{"ext":"x"}"#,
        ),
        (
            Method::POST,
            "/users/alice/presence/60",
            r#"{"usernames":["bob"]}"#,
        ),
        (Method::DELETE, "/users/alice/presence", r#"["bob"]"#),
        (
            Method::POST,
            "/messages/users",
            r#"{"from":"alice","to":["bob"],"type":"txt","body":{"msg":"hi"}}"#,
        ),
    ];
    for base in [gw.agora(), gw.easemob()] {
        for (method, suffix, body) in &cases {
            // None: no Content-Type at all, which the vendor requires with a JSON body.
            for content_type in [
                Some("text/plain"),
                Some("application/x-www-form-urlencoded"),
                None,
            ] {
                let mut headers = vec![DEMO_AUTH];
                headers.extend(content_type.map(|t| ("content-type", t)));
                let url = format!("{base}{suffix}");
                http(method.clone(), &url, &headers, Some(body))
                    .await
                    .assert_error(415, "web_application");
            }
        }
    }
    let stats = emu.stats().await;
    for endpoint in [
        "presence_batch_get",
        "presence_set",
        "presence_subscribe",
        "presence_unsubscribe",
        "messages_users",
    ] {
        assert_eq!(stats["requests"][endpoint], 0, "{endpoint}: {stats}");
    }
    // JSON with parameters is JSON.
    let headers = [
        DEMO_AUTH,
        ("content-type", "Application/JSON; charset=utf-8"),
    ];
    let url = format!("{}/users/alice/presence", gw.easemob());
    let resp = http(Method::POST, &url, &headers, Some(cases[0].2)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    // A request without a body has no media type to refuse: it reaches the vendor, whose own
    // answer (here: no JSON to parse) comes back.
    let resp = http(Method::DELETE, &url, &[DEMO_AUTH], None).await;
    resp.assert_error(400, "json_parse");
    assert_eq!(emu.requests("presence_unsubscribe").await, 1);

    // The emulator answers as the vendor does.
    let token = format!("Bearer {}", common::agora_token(600));
    let url = format!("{}/users/alice/presence", emu.agora());
    for content_type in [Some("text/plain"), None] {
        let mut headers = vec![("authorization", token.as_str())];
        headers.extend(content_type.map(|t| ("content-type", t)));
        http(Method::POST, &url, &headers, Some(cases[0].2))
            .await
            .assert_error(415, "web_application");
    }
}

#[tokio::test]
async fn stale_reads_beat_a_hanging_vendor_and_uncached_reads_time_out() {
    let emu = TestEmulator::demo().await;
    let gw = stale_beats_slow_gateway(&emu, |cache| &mut cache.offline_count).await;
    let alice = format!("{}/users/alice/offline_msg_count", gw.agora());
    let first = count(&alice).await;
    assert_eq!(
        (first.status, first.header("x-cache")),
        (StatusCode::OK, Some("MISS"))
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    put_faults(&emu, json!({"latency_ms": 4000})).await;

    let mut took = Vec::new();
    for _ in 0..6 {
        let started = Instant::now();
        let resp = count(&alice).await;
        took.push(started.elapsed());
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-cache"), Some("STALE"));
        assert_eq!(resp.body, first.body, "the stale answer is the cached one");
    }
    println!("stale reads with a hanging vendor took {took:?}");
    assert!(
        took.iter().all(|t| *t <= Duration::from_millis(600)),
        "{took:?}"
    );
    // The breaker has opened: stale answers come at once.
    assert!(
        took[3..].iter().all(|t| *t < Duration::from_millis(100)),
        "{took:?}"
    );

    let started = Instant::now();
    count(&format!("{}/users/bob/offline_msg_count", gw.agora()))
        .await
        .assert_error(504, "imgate_upstream_timeout");
    let uncached = started.elapsed();
    assert!(
        uncached >= Duration::from_millis(1500) && uncached < Duration::from_millis(2500),
        "{uncached:?}"
    );

    // The vendor recovers: a probe closes the breaker and the cache is fresh again.
    let resp = recovered(&emu, || count(&alice)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// A gateway whose cache `policy` keeps answers fresh 100 ms, stale for 60 s when the vendor
/// fails, and waits 500 ms for the vendor before a stale answer; vendor calls time out after
/// 1.5 s.
async fn stale_beats_slow_gateway(
    emu: &TestEmulator,
    policy: fn(&mut RawCache) -> &mut RawCachePolicy,
) -> TestGateway {
    let mut raw = demo_config(&emu.base());
    raw.upstream.timeout_ms = 1500;
    let policy = policy(&mut raw.cache);
    policy.ttl_ms = 100;
    policy.stale_while_revalidate_ms = 0;
    policy.stale_if_error_ms = 60_000;
    policy.stale_timeout_ms = 500;
    TestGateway::start(raw).await
}

/// Clears the emulator's faults, then reads until an answer is no longer `STALE` (within 8 s),
/// and returns it.
async fn recovered<F: std::future::Future<Output = Resp>>(
    emu: &TestEmulator,
    read: impl Fn() -> F,
) -> Resp {
    put_faults(emu, json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let resp = read().await;
        if resp.header("x-cache") != Some("STALE") {
            return resp;
        }
        assert!(
            Instant::now() < deadline,
            "still stale 8 s after the vendor recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn batch_get(base: &str, caller: &str, users: &[&str]) -> Resp {
    let url = format!("{base}/users/{caller}/presence");
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    let body = json!({ "usernames": users }).to_string();
    http(Method::POST, &url, &headers, Some(&body)).await
}

/// The `uid`s a batch get answered, in order.
fn uids(resp: &Resp) -> Vec<String> {
    let result = resp.json()["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    result
        .iter()
        .map(|entry| entry["uid"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn stale_presence_beats_a_hanging_vendor_for_each_caller_and_its_breaker_sends_one_probe() {
    let emu = TestEmulator::demo().await;
    let gw = stale_beats_slow_gateway(&emu, |cache| &mut cache.presence).await;
    let base = gw.agora();
    // Two callers, each with its own users.
    let (alice_users, erin_users) = (["bob", "carol"], ["dave"]);
    let alice_first = batch_get(&base, "alice", &alice_users).await;
    let erin_first = batch_get(&base, "erin", &erin_users).await;
    for (first, users) in [
        (&alice_first, &alice_users[..]),
        (&erin_first, &erin_users[..]),
    ] {
        assert_eq!(first.status, 200, "{}", first.text());
        assert_eq!(first.header("x-cache"), Some("MISS"));
        assert_eq!(uids(first), users);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    put_faults(&emu, json!({"latency_ms": 4000})).await;

    // Both callers at once: their lookups may merge into one vendor call, but each answer has
    // only the caller's own users, from the stale entries.
    let started = Instant::now();
    let (alice, erin) = tokio::join!(
        batch_get(&base, "alice", &alice_users),
        batch_get(&base, "erin", &erin_users)
    );
    let together = started.elapsed();
    for (resp, first) in [(&alice, &alice_first), (&erin, &erin_first)] {
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-cache"), Some("STALE"));
        assert_eq!(resp.body, first.body, "the stale answer is the cached one");
    }
    let mut took = vec![together];
    for _ in 0..5 {
        let started = Instant::now();
        let resp = batch_get(&base, "alice", &alice_users).await;
        took.push(started.elapsed());
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.header("x-cache"), Some("STALE"));
        assert_eq!(resp.body, alice_first.body);
    }
    println!("stale presence batch gets with a hanging vendor took {took:?}");
    assert!(
        took.iter().all(|t| *t <= Duration::from_millis(600)),
        "{took:?}"
    );
    // The breaker has opened: stale answers come at once, and one probe at a time goes out.
    assert!(
        took[3..].iter().all(|t| *t < Duration::from_millis(100)),
        "{took:?}"
    );
    let calls = emu.requests("presence_batch_get").await;
    for _ in 0..10 {
        let resp = batch_get(&base, "alice", &alice_users).await;
        assert_eq!(resp.header("x-cache"), Some("STALE"));
    }
    let probes = emu.requests("presence_batch_get").await - calls;
    assert!(
        probes <= 1,
        "{probes} vendor calls for 10 reads with the breaker open"
    );

    // The vendor recovers: a probe closes the breaker and answers are fresh again.
    let resp = recovered(&emu, || batch_get(&base, "alice", &alice_users)).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(uids(&resp), alice_users);
}

async fn readyz(gw: &TestGateway) -> Resp {
    http(
        Method::GET,
        &format!("http://{}/readyz", gw.admin),
        &[],
        None,
    )
    .await
}

async fn set_easemob_secret(emu: &TestEmulator, secret: &str) {
    let change =
        json!({"org": demo::EASEMOB_ORG, "app": demo::EASEMOB_APP, "client_secret": secret});
    put_control(emu, "credentials", change).await;
}

async fn wait_for_readyz(gw: &TestGateway, status: u16, within: Duration) -> Resp {
    let deadline = Instant::now() + within;
    loop {
        let resp = readyz(gw).await;
        if resp.status.as_u16() == status {
            return resp;
        }
        assert!(Instant::now() < deadline, "readyz: {}", resp.text());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `/readyz` is 503 with `app` the one degraded demo app, its reason naming `why`, and still
/// 503 half a second later.
async fn assert_degraded_alone(gw: &TestGateway, app: &str, why: &str) {
    let degraded = readyz(gw).await;
    assert_eq!(degraded.status, 503, "{}", degraded.text());
    let body = degraded.json();
    let mut apps = json!({"agora-demo": "ok", "easemob-demo": "ok"});
    apps[app] = json!("degraded");
    assert_eq!(body["apps"], apps);
    let reason = body["reasons"][app].as_str().unwrap();
    assert!(reason.contains(why), "{reason}");
    assert_eq!(body["reasons"].as_object().unwrap().len(), 1, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(readyz(gw).await.status, 503);
}

#[tokio::test]
async fn readyz_is_503_naming_the_app_while_its_token_is_revoked_and_200_once_it_recovers() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.tokens.retry_initial_ms = 100;
    raw.tokens.retry_max_ms = 200;
    raw.tokens.max_fetches_per_minute = 60;
    let gw = TestGateway::start(raw).await;
    wait_for_readyz(&gw, 200, Duration::from_secs(2)).await;

    set_easemob_secret(&emu, "changed-by-the-vendor-console").await;
    let url = format!("{}/__emulator/revoke-tokens", emu.base());
    assert_eq!(http(Method::POST, &url, &[], None).await.status, 200);
    count(&format!("{}/users/alice/offline_msg_count", gw.easemob()))
        .await
        .assert_error(503, "imgate_token_unavailable");
    // It stays degraded while renewals keep failing.
    assert_degraded_alone(&gw, "easemob-demo", "invalid_grant").await;

    set_easemob_secret(&emu, demo::EASEMOB_CLIENT_SECRET).await;
    let ready = wait_for_readyz(&gw, 200, Duration::from_secs(3)).await;
    assert_eq!(ready.json()["status"], "ready");
    let resp = count(&format!("{}/users/alice/offline_msg_count", gw.easemob())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

async fn set_agora_certificate(emu: &TestEmulator, certificate: &str) {
    let change = json!({"app_id": demo::AGORA_APP_ID, "app_certificate": certificate});
    put_control(emu, "credentials", change).await;
}

#[tokio::test]
async fn readyz_is_503_naming_an_agora_app_whose_renewed_token_is_refused_and_200_once_taken() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.tokens.retry_initial_ms = 100;
    raw.tokens.retry_max_ms = 200;
    let gw = TestGateway::start(raw).await;
    wait_for_readyz(&gw, 200, Duration::from_secs(2)).await;
    let alice = format!("{}/users/alice/offline_msg_count", gw.agora());
    assert_eq!(count(&alice).await.status, 200);

    // The certificate changed in the vendor's console: imgate's re-signed token is refused too.
    set_agora_certificate(&emu, "00112233445566778899aabbccddeeff").await;
    // An uncached read (alice's count is cached now).
    let bob = format!("{}/users/bob/offline_msg_count", gw.agora());
    count(&bob)
        .await
        .assert_error(502, "imgate_upstream_unauthorized");
    // It stays degraded while the vendor keeps refusing (the probes see 401 too).
    assert_degraded_alone(&gw, "agora-demo", "401").await;

    // Restored: imgate finds out by itself, without any API call.
    let probes_before = emu.requests("offline_msg_count").await;
    set_agora_certificate(&emu, demo::AGORA_APP_CERTIFICATE).await;
    let started = Instant::now();
    let ready = wait_for_readyz(&gw, 200, Duration::from_secs(3)).await;
    println!(
        "ready again {:?} after the certificate was restored",
        started.elapsed()
    );
    assert_eq!(ready.json()["status"], "ready");
    assert!(emu.requests("offline_msg_count").await > probes_before);
    let resp = count(&bob).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

#[tokio::test]
async fn admin_rotations_have_their_own_budget_and_leave_renewals_for_a_revocation() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    wait_for_readyz(&gw, 200, Duration::from_secs(2)).await;
    let rotate = format!("http://{}/admin/tokens/rotate?app=easemob-demo", gw.admin);
    let admin = ("authorization", "Bearer demo-admin-key");
    for _ in 0..3 {
        let resp = http(Method::POST, &rotate, &[admin], None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let refused = http(Method::POST, &rotate, &[admin], None).await;
    refused.assert_error(429, "imgate_rotation_limited");
    let retry_after: u64 = refused.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");

    // A revocation still finds the renewal it needs.
    let url = format!("{}/__emulator/revoke-tokens", emu.base());
    assert_eq!(http(Method::POST, &url, &[], None).await.status, 200);
    let resp = count(&format!("{}/users/alice/offline_msg_count", gw.easemob())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(readyz(&gw).await.status, 200);
}

/// A certificate for 127.0.0.1 made now, written as PEM files under a fresh directory.
struct TestCert {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestCert {
    fn new(name: &str) -> TestCert {
        let made = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
        let dir = std::env::temp_dir().join(format!("imgate-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert = TestCert {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        cert.write(&made);
        cert
    }

    fn write(&self, made: &rcgen::CertifiedKey) {
        std::fs::write(&self.cert, made.cert.pem()).unwrap();
        std::fs::write(&self.key, made.key_pair.serialize_pem()).unwrap();
    }

    fn path(&self) -> String {
        self.cert.display().to_string()
    }
}

impl Drop for TestCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// An HTTPS-only client trusting `ca` (and webpki's roots), offering HTTP/2 unless `http1_only`.
fn https_client(ca: &Path, http1_only: bool) -> HttpsClient {
    let tls = imgate::tls::client_config(Some(ca)).unwrap();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1();
    let connector = if http1_only {
        builder.build()
    } else {
        builder.enable_http2().build()
    };
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn https_send(
    client: &HttpsClient,
    method: Method,
    url: &str,
    body: Option<&str>,
) -> Result<(StatusCode, Version, Value), String> {
    let request = Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", DEMO_AUTH.1)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok((parts.status, parts.version, json))
}

/// An emulator with the demo identities serving HTTPS with `cert`; stops when the sender drops.
async fn https_emulator(cert: &TestCert) -> (String, tokio::sync::oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let tls = imgate::tls::server_config(&cert.cert, &cert.key).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let emulator = imgate::emulator::Emulator::new(imgate::emulator::EmulatorConfig::demo());
    tokio::spawn(emulator.run_tls(listener, tls, async move {
        let _ = stopped.await;
    }));
    (base, stop)
}

#[tokio::test]
async fn the_api_flow_runs_over_https_to_the_vendor_and_an_untrusted_certificate_is_refused() {
    let cert = TestCert::new("vendor");
    let (vendor, _stop) = https_emulator(&cert).await;
    let mut raw = demo_config(&vendor);
    raw.upstream.ca_file = Some(cert.path());
    let gw = TestGateway::start(raw).await;
    // The Easemob app token comes from the vendor's token endpoint, over HTTPS too.
    wait_for_readyz(&gw, 200, Duration::from_secs(3)).await;
    for base in [gw.agora(), gw.easemob()] {
        let send = format!("{base}/messages/users");
        let message = r#"{"from":"alice","to":["bob"],"type":"txt","body":{"msg":"hi"}}"#;
        let headers = [DEMO_AUTH, ("content-type", "application/json")];
        let sent = http(Method::POST, &send, &headers, Some(message)).await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        assert!(sent.json()["uri"]
            .as_str()
            .unwrap()
            .contains("/messages/users"));
        let counted = count(&format!("{base}/users/bob/offline_msg_count")).await;
        assert_eq!(counted.status, 200, "{}", counted.text());
        assert_eq!(counted.json()["data"]["bob"], 1);
        let presence = format!("{base}/users/alice/presence");
        let resp = http(
            Method::POST,
            &presence,
            &headers,
            Some(r#"{"usernames":["bob"]}"#),
        )
        .await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let stats_url = format!("{vendor}/__emulator/stats");
    let client = https_client(&cert.cert, false);
    let (_, _, stats) = https_send(&client, Method::GET, &stats_url, None)
        .await
        .unwrap();
    let before = stats["requests"]["offline_msg_count"].as_u64().unwrap();
    assert_eq!(before, 2);

    // Without the CA, the vendor's certificate is not trusted: 502, and no plain-HTTP retry.
    let untrusting = TestGateway::start(demo_config(&vendor)).await;
    count(&format!(
        "{}/users/bob/offline_msg_count",
        untrusting.agora()
    ))
    .await
    .assert_error(502, "imgate_upstream_tls");
    let (_, _, stats) = https_send(&client, Method::GET, &stats_url, None)
        .await
        .unwrap();
    assert_eq!(stats["requests"]["offline_msg_count"], before, "{stats}");
}

#[tokio::test]
async fn the_api_listener_serves_https_by_alpn_and_rereads_its_certificate_on_reload() {
    let emu = TestEmulator::demo().await;
    let cert = TestCert::new("listener");
    let mut raw = demo_config(&emu.base());
    raw.server.tls_cert = Some(cert.path());
    raw.server.tls_key = Some(cert.key.display().to_string());
    let config = cert.dir.join("imgate.toml");
    std::fs::write(&config, toml::to_string(&raw).unwrap()).unwrap();
    let listeners = imgate::Listeners {
        api: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let addr = listeners.api.local_addr().unwrap();
    let settings = raw.validate().unwrap();
    let gateway =
        imgate::Gateway::new(settings, prometheus::Registry::new(), Some(config)).unwrap();
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(imgate::run(listeners, gateway.clone(), async move {
        let _ = stopped.await;
    }));
    let url = format!(
        "https://{addr}/app-id/{}/users/alice/offline_msg_count",
        demo::AGORA_APP_ID
    );
    for (http1_only, version) in [(false, Version::HTTP_2), (true, Version::HTTP_11)] {
        let client = https_client(&cert.cert, http1_only);
        let (status, got, body) = https_send(&client, Method::GET, &url, None).await.unwrap();
        assert_eq!((status, got), (StatusCode::OK, version), "{body}");
        assert_eq!(body["data"]["alice"], 0);
    }
    // Plain HTTP on the TLS listener gets no answer.
    let plain = plain_http_answer(addr).await;
    assert!(!plain.starts_with("HTTP/1.1 200"), "{plain}");

    // A new certificate in the same files, then a reload (what SIGHUP does).
    let old = cert.dir.join("old.pem");
    std::fs::copy(&cert.cert, &old).unwrap();
    cert.write(&rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap());
    gateway.reload().await.unwrap();
    let (status, _, _) = https_send(&https_client(&cert.cert, false), Method::GET, &url, None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let refused = https_send(&https_client(&old, false), Method::GET, &url, None).await;
    assert!(refused.is_err(), "the old certificate is still served");
}

/// What a listener answers to a plain-text HTTP/1.1 request on a raw connection.
async fn plain_http_answer(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: imgate\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut stream, Duration::from_secs(12)).await
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_after_the_write_timeout() {
    const BODY: usize = 16 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = imgate::server::ConnLimits {
        write_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    // An answer far larger than the socket buffers hold.
    let handler = |_peer| {
        |_req| async {
            Ok(imgate::server::json_response(
                200,
                Bytes::from(vec![b' '; BODY]),
            ))
        }
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(imgate::server::serve(
        listener,
        limits,
        None,
        handler,
        async move {
            let _ = stopped.await;
        },
    ));
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: imgate\r\n\r\n")
        .await
        .unwrap();
    // Read nothing for twice the write timeout, then everything that is left.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    assert!(
        read.is_ok(),
        "connection still open 7 s after the client stopped reading"
    );
    assert!(
        received.len() < BODY,
        "all {} bytes were delivered: the stalled write was never cut",
        received.len()
    );
    println!(
        "stalled reader dropped with {} of {BODY} bytes sent",
        received.len()
    );
}

#[tokio::test]
async fn the_emulator_command_serves_https_with_the_given_certificate() {
    let cert = TestCert::new("emulator-cli");
    let port = common::free_port();
    let _emulator = common::KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_imgate"))
            .args(["emulator", "--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&cert.cert)
            .arg("--tls-key")
            .arg(&cert.key)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = https_client(&cert.cert, false);
    let url = format!("https://127.0.0.1:{port}/__emulator/stats");
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, version, stats) = loop {
        match https_send(&client, Method::GET, &url, None).await {
            Ok(answer) => break answer,
            Err(err) => assert!(Instant::now() < deadline, "no HTTPS answer: {err}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
    assert!(stats["requests"].is_object(), "{stats}");
}
