//! Request-path correctness through a real gateway: no answer crosses callers, apps or writes,
//! and nothing reaches the vendor that should not. Each test is the regression test of one
//! finding; several use a small stand-in vendor where the emulator cannot misbehave the way a
//! real vendor (or a proxy in front of it) may.

mod common;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{demo_config, http, Http, Resp, TestEmulator, TestGateway, DEMO_AUTH};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use imgate::config::RawConfig;
use imgate::demo;
use imgate::emulator::{EmulatedApp, EmulatorConfig};
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// What a stand-in vendor saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
}

type Answer = Box<dyn Fn(&Seen, &[u8]) -> Response<Full<Bytes>> + Send + Sync>;

/// A stand-in vendor on a loopback port: answers with `answer` and records every request.
struct StandIn {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl StandIn {
    async fn start(answer: Answer) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (answer, log) = (Arc::new(answer), seen.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, log) = (answer.clone(), log.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (answer, log) = (answer.clone(), log.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.map(|b| b.to_bytes());
                        let seen = Seen {
                            method: parts.method,
                            path: parts.uri.path().to_owned(),
                            headers: parts.headers,
                        };
                        let response = answer(&seen, &body.unwrap_or_default());
                        log.lock().unwrap().push(seen);
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        StandIn { addr, seen }
    }

    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn json_answer(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap()
}

/// The vendor's offline-count body for `user` at `path`.
fn count_body(path: &str, user: &str, count: u64) -> Value {
    let suffix = path.splitn(4, '/').nth(3).unwrap_or("");
    json!({"action":"get","uri":format!("http://vendor{path}"),"path":format!("/{suffix}"),
        "entities":[],"data":{user: count},"timestamp":1,"duration":0,"count":0})
}

fn x_cache(resp: &Resp) -> &str {
    resp.header("x-cache").unwrap_or("-")
}

async fn gateway_with(upstream: &str, edit: impl FnOnce(&mut RawConfig)) -> TestGateway {
    let mut raw = demo_config(upstream);
    edit(&mut raw);
    TestGateway::start(raw).await
}

async fn faults(emu: &TestEmulator, body: Value) {
    let url = format!("{}/__emulator/faults", emu.base());
    let resp = http(Method::PUT, &url, &[], Some(&body.to_string())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
}

/// Calls that reached the emulator, but for imgate's own app-token requests.
async fn forwarded_requests(emu: &TestEmulator) -> u64 {
    let stats = emu.stats().await;
    stats["requests"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(endpoint, _)| *endpoint != "token")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

// 1. Encoded bodies in the cache.
#[tokio::test]
async fn a_cached_read_is_served_decoded_to_callers_that_asked_for_no_encoding() {
    let vendor = StandIn::start(Box::new(|seen, _| {
        let body = count_body(&seen.path, "u1", 7).to_string();
        let gzip = seen
            .headers
            .get("accept-encoding")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
        let mut response = Response::builder()
            .status(200)
            .header("content-type", "application/json");
        let bytes = if gzip {
            response = response.header("content-encoding", "gzip");
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(body.as_bytes()).unwrap();
            encoder.finish().unwrap()
        } else {
            body.into_bytes()
        };
        response.body(Full::new(Bytes::from(bytes))).unwrap()
    }))
    .await;
    let gw = gateway_with(&vendor.base(), |_| {}).await;
    let url = format!("{}/users/u1/offline_msg_count", gw.agora());
    let first = http(
        Method::GET,
        &url,
        &[DEMO_AUTH, ("accept-encoding", "gzip")],
        None,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.text());
    let second = http(Method::GET, &url, &[DEMO_AUTH], None).await;
    assert_eq!(x_cache(&second), "HIT");
    assert!(second.header("content-encoding").is_none());
    assert_eq!(second.json()["data"]["u1"], 7, "{}", second.text());
}

// 2. Presence batches mix callers.
#[tokio::test]
async fn a_failed_merged_presence_call_never_answers_another_caller() {
    let mut config = EmulatorConfig::demo();
    config.apps[0].users = Some(["alice", "bob", "carol"].map(String::from).to_vec());
    let emu = TestEmulator::start(config).await;
    let gw = gateway_with(&emu.base(), |raw| {
        raw.cache.presence.batch_window_ms = Some(150);
    })
    .await;
    let base = gw.agora();
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    let client = Http::new();
    let ghost = {
        let (client, url) = (client.clone(), format!("{base}/users/ghost/presence"));
        tokio::spawn(async move {
            client
                .send(
                    Method::POST,
                    &url,
                    &headers,
                    Some(r#"{"usernames":["carol"]}"#),
                )
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let alice = client
        .send(
            Method::POST,
            &format!("{base}/users/alice/presence"),
            &headers,
            Some(r#"{"usernames":["bob"]}"#),
        )
        .await;
    let ghost = ghost.await.unwrap();
    assert_eq!(alice.status, 200, "{}", alice.text());
    assert!(!alice.text().contains("ghost"), "{}", alice.text());
    let ghost_error = ghost.assert_error(404, "service_resource_not_found");
    assert!(!ghost_error.to_string().contains("alice"), "{ghost_error}");
}

// 3. Cache keys survive reloads.
#[tokio::test]
async fn a_reload_pointing_an_app_name_at_another_app_serves_nothing_of_the_old_one() {
    const OTHER_ID: &str = "00112233445566778899aabbccddeeff";
    const OTHER_CERT: &str = "ffeeddccbbaa99887766554433221100";
    let mut config = EmulatorConfig::demo();
    let other = EmulatedApp {
        app_id: OTHER_ID.into(),
        app_certificate: OTHER_CERT.into(),
        ..config.apps[0].clone()
    };
    config.apps.push(other);
    let emu = TestEmulator::start(config).await;
    let text = demo::CONFIG.replace("http://127.0.0.1:8081", &emu.base());
    let dir = std::env::temp_dir().join(format!("imgate-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("imgate.toml");
    std::fs::write(&path, &text).unwrap();
    let settings = RawConfig::parse(&text).unwrap().validate().unwrap();
    let gateway =
        imgate::Gateway::new(settings, prometheus::Registry::new(), Some(path.clone())).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let listeners = imgate::Listeners {
        api: listener,
        admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
    };
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(imgate::run(listeners, gateway.clone(), async move {
        let _ = stopped.await;
    }));
    let read = |id: &str| {
        let url = format!("{base}/app-id/{id}/users/u1/offline_msg_count");
        async move { http(Method::GET, &url, &[DEMO_AUTH], None).await }
    };
    assert_eq!(x_cache(&read(demo::AGORA_APP_ID).await), "MISS");
    assert_eq!(x_cache(&read(demo::AGORA_APP_ID).await), "HIT");
    let moved = text
        .replace(demo::AGORA_APP_ID, OTHER_ID)
        .replace(demo::AGORA_APP_CERTIFICATE, OTHER_CERT);
    std::fs::write(&path, moved).unwrap();
    gateway.reload().await.unwrap();
    let after = read(OTHER_ID).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(x_cache(&after), "MISS", "the old app's entry was served");
    assert!(after.text().contains(OTHER_ID), "{}", after.text());
    let _ = std::fs::remove_dir_all(dir);
}

// 4. Read-after-write.
#[tokio::test]
async fn a_read_after_a_completed_write_does_not_join_a_call_that_started_before_it() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/u1/offline_msg_count", gw.agora());
    faults(&emu, json!({"latency_ms": 1500})).await;
    let before = {
        let url = url.clone();
        tokio::spawn(async move { http(Method::GET, &url, &[DEMO_AUTH], None).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    faults(&emu, json!({"latency_ms": 0})).await;
    let sent = http(
        Method::POST,
        &format!("{}/messages/users", gw.agora()),
        &[DEMO_AUTH, ("content-type", "application/json")],
        Some(r#"{"from":"admin","to":["u1"],"type":"txt","body":{"msg":"hi"}}"#),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let after = http(Method::GET, &url, &[DEMO_AUTH], None).await;
    assert_eq!(after.status, 200, "{}", after.text());
    assert_eq!(
        x_cache(&after),
        "MISS",
        "joined a call from before the write"
    );
    assert_eq!(after.json()["data"]["u1"], 1, "{}", after.text());
    assert_eq!(before.await.unwrap().status, 200);
}

// 5. Canonical keys.
#[tokio::test]
async fn percent_encoded_and_differently_cased_paths_share_one_canonical_entry() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let get = |path: String| async move { http(Method::GET, &path, &[DEMO_AUTH], None).await };
    let encoded = format!("{}/users/b%6Fb/offline_msg_count", gw.agora());
    let plain = format!("{}/users/bob/offline_msg_count", gw.agora());
    let first = get(encoded.clone()).await;
    assert_eq!((first.status.as_u16(), x_cache(&first)), (200, "MISS"));
    assert_eq!(first.json()["data"]["bob"], 0, "{}", first.text());
    assert_eq!(x_cache(&get(plain.clone()).await), "HIT");
    let sent = http(
        Method::POST,
        &format!("{}/messages/users", gw.agora()),
        &[DEMO_AUTH, ("content-type", "application/json")],
        Some(r#"{"from":"admin","to":["bob"],"type":"txt","body":{"msg":"hi"}}"#),
    )
    .await;
    assert_eq!(sent.status, 200, "{}", sent.text());
    let after = get(encoded).await;
    assert_eq!(
        x_cache(&after),
        "MISS",
        "the message did not invalidate b%6Fb"
    );
    assert_eq!(after.json()["data"]["bob"], 1);
    // The app id is matched in any case and forwarded as configured.
    let upper = format!(
        "{}/app-id/{}/users/bob/offline_msg_count",
        gw.base(),
        demo::AGORA_APP_ID.to_ascii_uppercase()
    );
    let resp = get(upper).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(x_cache(&resp), "HIT");
}

// 6. Path traversal with the app token.
#[tokio::test]
async fn dot_segments_encoded_slashes_and_control_characters_are_400_before_routing() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let agora = format!("/app-id/{}", demo::AGORA_APP_ID);
    let paths = [
        format!("{agora}/../../admin/anything"),
        format!("{agora}/users/%2e%2e/offline_msg_count"),
        format!("{agora}/users/./offline_msg_count"),
        format!("{agora}/users/a%2Fb/offline_msg_count"),
        format!("{agora}/users/a%5Cb/offline_msg_count"),
        format!("{agora}/users/a%00b/offline_msg_count"),
        format!("{agora}/users/a%0Ab/offline_msg_count"),
        format!("{agora}/users/a%zzb/offline_msg_count"),
        "/demo-org/%2E%2E/users/u/offline_msg_count".to_owned(),
    ];
    for path in paths {
        for method in [Method::GET, Method::DELETE] {
            let url = format!("{}{path}", gw.base());
            let resp = http(method.clone(), &url, &[DEMO_AUTH], None).await;
            resp.assert_error(400, "imgate_bad_path");
        }
    }
    assert_eq!(forwarded_requests(&emu).await, 0);
}

// 7. Any endpoint for any client.
#[tokio::test]
async fn endpoints_outside_a_clients_scope_are_403_before_any_vendor_call() {
    let emu = TestEmulator::demo().await;
    let text = format!(
        "{}\n[[clients]]\nname = \"counts-only\"\nkey = \"counts-only-key\"\nendpoints = [\"offline_msg_*\"]\n\n[[clients]]\nname = \"admin-tool\"\nkey = \"admin-tool-key\"\nendpoints = [\"other\"]\n",
        demo::CONFIG.replace("http://127.0.0.1:8081", &emu.base())
    );
    let gw = TestGateway::start(RawConfig::parse(&text).unwrap()).await;
    let base = gw.agora();
    let as_client =
        |key: &'static str| [("authorization", key), ("content-type", "application/json")];
    // By default only the endpoints imgate knows are forwarded.
    let delete = http(
        Method::DELETE,
        &format!("{base}/users/bob"),
        &as_client("Bearer demo-key"),
        None,
    )
    .await;
    delete.assert_error(403, "imgate_endpoint_not_forwarded");
    let counts = as_client("Bearer counts-only-key");
    let count = http(
        Method::GET,
        &format!("{base}/users/bob/offline_msg_count"),
        &counts,
        None,
    )
    .await;
    assert_eq!(count.status, 200, "{}", count.text());
    for (method, path, body) in [
        (
            Method::POST,
            "/users/bob/presence",
            r#"{"usernames":["a"]}"#,
        ),
        (Method::POST, "/messages/users", r#"{"to":["a"]}"#),
        (Method::DELETE, "/users/bob", ""),
    ] {
        let resp = http(method, &format!("{base}{path}"), &counts, Some(body)).await;
        resp.assert_error(403, "imgate_endpoint_not_forwarded");
    }
    let other = http(
        Method::GET,
        &format!("{base}/chatgroups"),
        &as_client("Bearer admin-tool-key"),
        None,
    )
    .await;
    other.assert_error(404, "service_resource_not_found");
    let stats = emu.stats().await;
    assert_eq!(stats["requests"]["other"], 1, "{stats}");
    assert_eq!(stats["requests"]["presence_batch_get"], 0, "{stats}");
    assert_eq!(stats["requests"]["messages_users"], 0, "{stats}");
}

// 8. Headers toward the vendor.
#[tokio::test]
async fn only_allow_listed_caller_headers_reach_the_vendor() {
    let vendor = StandIn::start(Box::new(|_, _| json_answer(200, json!({"data": {}})))).await;
    let gw = gateway_with(&vendor.base(), |_| {}).await;
    let resp = http(
        Method::POST,
        &format!("{}/messages/users", gw.agora()),
        &[
            DEMO_AUTH,
            ("content-type", "application/json"),
            ("accept", "application/json"),
            ("user-agent", "backend/1.0"),
            ("tracestate", "vendor=1"),
            ("cookie", "session=caller-secret"),
            ("x-forwarded-for", "10.9.8.7"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=10.9.8.7"),
            ("x-real-ip", "10.9.8.7"),
            ("x-internal-debug", "1"),
            ("proxy-authorization", "Basic eDp5"),
        ],
        Some(r#"{"from":"admin","to":["u1"],"type":"txt","body":{"msg":"hi"}}"#),
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let seen = vendor.seen();
    let call = seen
        .iter()
        .find(|s| s.method == Method::POST && s.path.ends_with("/messages/users"))
        .expect("the message reached the vendor");
    for kept in [
        "content-type",
        "accept",
        "user-agent",
        "tracestate",
        "traceparent",
        "x-request-id",
    ] {
        assert!(call.headers.contains_key(kept), "{kept} not forwarded");
    }
    let token = call.headers["authorization"].to_str().unwrap();
    assert!(token.starts_with("Bearer 007"), "the app token is injected");
    for dropped in [
        "cookie",
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
        "x-internal-debug",
        "proxy-authorization",
    ] {
        assert!(!call.headers.contains_key(dropped), "{dropped} forwarded");
    }
}

// 9. Vendor values cannot crash a request.
#[tokio::test]
async fn an_overflowing_token_lifetime_neither_panics_nor_stalls_presence() {
    let vendor = StandIn::start(Box::new(|seen, body| {
        if seen.path.ends_with("/token") {
            return json_answer(
                200,
                json!({"access_token": "YWMtoverflow", "expires_in": u64::MAX, "application": "x"}),
            );
        }
        let asked: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let result: Vec<Value> = asked["usernames"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|u| json!({"uid": u, "last_time": "1", "ext": "", "status": {}}))
            .collect();
        json_answer(200, json!({ "result": result }))
    }))
    .await;
    let gw = gateway_with(&vendor.base(), |_| {}).await;
    let client = Http::new();
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    for user in ["a", "b", "c"] {
        let url = format!("{}/users/u/presence", gw.easemob());
        let body = format!(r#"{{"usernames":["{user}"]}}"#);
        let resp = tokio::time::timeout(
            Duration::from_secs(5),
            client.try_send(Method::POST, &url, &headers, Some(&body)),
        )
        .await
        .expect("presence stalled")
        .expect("the request was dropped");
        assert_eq!(resp.status, 200, "{}", resp.text());
        assert_eq!(resp.json()["result"][0]["uid"], user);
    }
}

// 10. Bounded by configuration.
#[tokio::test]
async fn the_cache_holds_at_most_max_entries() {
    let emu = TestEmulator::demo().await;
    let gw = gateway_with(&emu.base(), |raw| {
        raw.cache.offline_count.max_entries = 8;
        raw.cache.offline_count.ttl_ms = 60_000;
    })
    .await;
    let client = Http::new();
    for i in 0..40 {
        let url = format!("{}/users/user{i}/offline_msg_count", gw.agora());
        let resp = client.send(Method::GET, &url, &[DEMO_AUTH], None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let counts = gw.gateway.cache.entry_counts().await;
    let held = counts
        .iter()
        .find(|(kind, _)| kind.name() == "offline_count")
        .unwrap()
        .1;
    assert!((1..=8).contains(&held), "{held} entries held");
}

// Also: 401 before 404, and a limit on guessing client secrets.
#[tokio::test]
async fn unauthenticated_callers_cannot_tell_which_apps_exist() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let unknown = format!(
        "{}/app-id/ffffffffffffffffffffffffffffffff/users/u/offline_msg_count",
        gw.base()
    );
    let known = format!("{}/users/u/offline_msg_count", gw.agora());
    for url in [&unknown, &known] {
        http(Method::GET, url, &[], None)
            .await
            .assert_error(401, "unauthorized");
    }
    http(Method::GET, &unknown, &[DEMO_AUTH], None)
        .await
        .assert_error(404, "organization_application_not_found");
}

#[tokio::test]
async fn wrong_client_secrets_are_limited_per_source() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/token", gw.agora());
    let attempt = |secret: &str| {
        let body =
            json!({"grant_type":"client_credentials","client_id":"demo","client_secret":secret});
        let url = url.clone();
        async move {
            http(
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                Some(&body.to_string()),
            )
            .await
        }
    };
    let mut limited = None;
    for i in 0..50 {
        let resp = attempt(&format!("guess-{i}")).await;
        if resp.status == 429 {
            limited = Some(i);
            resp.assert_error(429, "imgate_rate_limited");
            assert!(resp.header("retry-after").is_some());
            break;
        }
        resp.assert_error(400, "invalid_grant");
    }
    let limited = limited.expect("50 wrong secrets in a row were all checked");
    assert!(limited >= 3, "limited after {limited} failures");
    let good = attempt(demo::CLIENT_KEY).await;
    good.assert_error(429, "imgate_rate_limited");
}
