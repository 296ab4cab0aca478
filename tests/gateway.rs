//! The gateway in front of the emulator, both on ephemeral loopback ports: every endpoint under
//! both prefixes, token injection, caller authentication and every gateway error.

mod common;

use std::time::{Duration, Instant};

use common::{assert_no_secrets, demo_config, http, Resp, TestEmulator, TestGateway, DEMO_AUTH};
use http::Method;
use serde_json::{json, Value};

/// Runs `scenario` once per vendor prefix, with a fresh emulator and gateway each time.
macro_rules! for_both_prefixes {
    (|$emu:ident, $gw:ident, $base:ident| $body:block) => {
        for agora in [true, false] {
            let $emu = TestEmulator::demo().await;
            let $gw = TestGateway::demo(&$emu).await;
            let $base = if agora { $gw.agora() } else { $gw.easemob() };
            $body
        }
    };
}

async fn call(method: Method, url: &str, body: Option<&str>) -> Resp {
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    http(method, url, &headers, body).await
}

/// The body without the fields that differ on every call (`timestamp`, `duration`).
fn stable(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        for field in ["timestamp", "duration"] {
            assert!(
                obj.remove(field).is_some() || !obj.contains_key("action"),
                "{field} missing"
            );
        }
    }
    v
}

#[tokio::test]
async fn offline_messages_flow_through_the_gateway_with_the_vendor_bodies() {
    for_both_prefixes!(|emu, gw, base| {
        let sent = call(
            Method::POST,
            &format!("{base}/messages/users"),
            Some(r#"{"from":"alice","to":["bob","carol"],"type":"txt","body":{"msg":"hi"}}"#),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let sent = sent.json();
        assert_eq!(sent["action"], "post");
        assert_eq!(sent["path"], "/messages/users");
        let msg = sent["data"]["bob"].as_str().unwrap().to_owned();
        assert!(
            msg.parse::<u64>().is_ok(),
            "message ids are numeric strings: {msg}"
        );

        let count = call(
            Method::GET,
            &format!("{base}/users/bob/offline_msg_count"),
            None,
        )
        .await;
        let count = stable(count.json());
        assert_eq!(count["data"], json!({"bob": 1}));
        assert_eq!(count["action"], "get");
        assert_eq!(count["entities"], json!([]));
        assert_eq!(count["count"], 0);
        assert_eq!(count["path"], "/users/bob/offline_msg_count");
        assert!(count["uri"]
            .as_str()
            .unwrap()
            .ends_with("/users/bob/offline_msg_count"));

        let status_url = format!("{base}/users/bob/offline_msg_status/{msg}");
        let status = call(Method::GET, &status_url, None).await.json();
        assert_eq!(status["data"], json!({ msg.as_str(): "undelivered" }));

        let online = call(
            Method::POST,
            &format!("{base}/users/bob/presence/android_1/1"),
            Some(r#"{"ext":"on the bus"}"#),
        )
        .await;
        assert_eq!(online.json(), json!({"result": "ok"}));
        let count = call(
            Method::GET,
            &format!("{base}/users/bob/offline_msg_count"),
            None,
        )
        .await;
        assert_eq!(count.json()["data"], json!({"bob": 0}));
        let status = call(Method::GET, &status_url, None).await.json();
        assert_eq!(status["data"], json!({ msg.as_str(): "delivered" }));
        let carol = call(
            Method::GET,
            &format!("{base}/users/carol/offline_msg_count"),
            None,
        )
        .await;
        assert_eq!(
            carol.json()["data"],
            json!({"carol": 1}),
            "carol is still offline"
        );
        assert_eq!(emu.requests("offline_msg_count").await, 3);
    });
}

#[tokio::test]
async fn presence_round_trips_through_the_gateway() {
    for_both_prefixes!(|emu, gw, base| {
        let set = call(
            Method::POST,
            &format!("{base}/users/bob/presence/ios_7/2"),
            Some(r#"{"ext":"in a meeting"}"#),
        )
        .await;
        assert_eq!(set.json(), json!({"result": "ok"}));

        let got = call(
            Method::POST,
            &format!("{base}/users/alice/presence"),
            Some(r#"{"usernames":["bob","nobody"]}"#),
        )
        .await
        .json();
        let bob = &got["result"][0];
        assert_eq!(bob["uid"], "bob");
        assert_eq!(bob["ext"], "in a meeting");
        assert_eq!(bob["status"], json!({"ios_7": "2"}));
        assert!(
            bob["last_time"].as_str().unwrap().parse::<u64>().is_ok(),
            "last_time is a string"
        );
        assert!(bob.get("expiry").is_none(), "batch get carries no expiry");
        assert_eq!(got["result"][1]["uid"], "nobody");

        let subscribed = call(
            Method::POST,
            &format!("{base}/users/alice/presence/3600"),
            Some(r#"{"usernames":["bob","carol"]}"#),
        )
        .await
        .json();
        let expiry = subscribed["result"][0]["expiry"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap();
        assert!(expiry > 1_600_000_000, "absolute expiry as a string");

        let list_url = format!("{base}/users/alice/presence/sublist?pageNum=1&pageSize=1");
        let page = call(Method::GET, &list_url, None).await.json();
        assert_eq!(page["result"]["totalnum"], "2");
        assert_eq!(page["result"]["sublist"].as_array().unwrap().len(), 1);

        let unsub = call(
            Method::DELETE,
            &format!("{base}/users/alice/presence"),
            Some(r#"["bob"]"#),
        )
        .await;
        assert_eq!(unsub.json(), json!({"result": "ok"}));
        let unsub = call(
            Method::DELETE,
            &format!("{base}/users/alice/presence"),
            Some(r#"{"users":["carol"]}"#),
        )
        .await;
        assert_eq!(unsub.json(), json!({"result": "ok"}));
        let page = call(Method::GET, &list_url, None).await.json();
        assert_eq!(page["result"], json!({"totalnum": "0", "sublist": []}));

        let stats = emu.stats().await;
        for endpoint in ["presence_set", "presence_batch_get", "presence_subscribe"] {
            assert_eq!(stats["requests"][endpoint], 1, "{endpoint}: {stats}");
        }
        assert_eq!(stats["requests"]["presence_unsubscribe"], 2);
        assert_eq!(stats["requests"]["presence_sublist"], 2);
    });
}

#[tokio::test]
async fn vendor_errors_are_relayed_verbatim() {
    for_both_prefixes!(|emu, gw, base| {
        let long_ext = format!(r#"{{"ext":"{}"}}"#, "x".repeat(65));
        let resp = call(
            Method::POST,
            &format!("{base}/users/u/presence/web/1"),
            Some(&long_ext),
        )
        .await;
        let body = resp.assert_error(400, "illegal_argument");
        assert_eq!(body["error_description"], "ext is too big");
        let resp = call(
            Method::POST,
            &format!("{base}/users/u/presence"),
            Some("not json"),
        )
        .await;
        resp.assert_error(400, "json_parse");
        let resp = call(
            Method::GET,
            &format!("{base}/users/u/presence/sublist?pageNum=1&pageSize=501"),
            None,
        )
        .await;
        resp.assert_error(400, "illegal_argument");
        // An endpoint imgate does not know is not forwarded by default (see correctness.rs for
        // clients allowed to call them).
        let resp = call(Method::GET, &format!("{base}/chatgroups"), None).await;
        resp.assert_error(403, "imgate_endpoint_not_forwarded");
        assert_eq!(emu.requests("other").await, 0);
    });
}

#[tokio::test]
async fn callers_without_a_valid_key_never_reach_the_vendor() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/u/offline_msg_count", gw.agora());
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong-key")],
        vec![("authorization", "Basic demo-key")],
    ] {
        let resp = http(Method::GET, &url, &headers, None).await;
        let body = resp.assert_error(401, "unauthorized");
        assert!(
            body["error_description"]
                .as_str()
                .unwrap()
                .contains("imgate"),
            "{body}"
        );
    }
    assert_eq!(emu.requests("offline_msg_count").await, 0);
    assert!(
        gw.metrics().await.contains(r#"client="-""#),
        "refused callers are counted without a name"
    );
}

#[tokio::test]
async fn unknown_apps_and_paths_are_404_without_a_vendor_call() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let unknown_agora = format!(
        "{}/app-id/ffffffffffffffffffffffffffffffff/users/u/offline_msg_count",
        gw.base()
    );
    call(Method::GET, &unknown_agora, None)
        .await
        .assert_error(404, "organization_application_not_found");
    let unknown_easemob = format!(
        "{}/other-org/other-app/users/u/offline_msg_count",
        gw.base()
    );
    call(Method::GET, &unknown_easemob, None)
        .await
        .assert_error(404, "organization_application_not_found");
    call(Method::GET, &format!("{}/", gw.base()), None)
        .await
        .assert_error(404, "imgate_no_route");
    let stats = emu.stats().await;
    assert_eq!(stats["requests"]["offline_msg_count"], 0, "{stats}");
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let names: Vec<String> = (0..8000).map(|i| format!("user-{i:05}")).collect();
    let body = json!({ "usernames": names }).to_string();
    assert!(body.len() > 64 * 1024);
    let resp = call(
        Method::POST,
        &format!("{}/users/u/presence", gw.agora()),
        Some(&body),
    )
    .await;
    resp.assert_error(413, "imgate_body_too_large");
    assert_eq!(emu.requests("presence_batch_get").await, 0);
}

#[tokio::test]
async fn an_unreachable_vendor_is_502_and_a_slow_one_504() {
    // A port that was just free: nothing listens there.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gw = TestGateway::start(demo_config(&format!("http://{closed}"))).await;
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.agora()),
        None,
    )
    .await;
    resp.assert_error(502, "imgate_upstream_unavailable");

    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.upstream.timeout_ms = 200;
    let gw = TestGateway::start(raw).await;
    let faults = r#"{"latency_ms":1000}"#;
    http(
        Method::PUT,
        &format!("{}/__emulator/faults", emu.base()),
        &[],
        Some(faults),
    )
    .await;
    let started = Instant::now();
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.agora()),
        None,
    )
    .await;
    resp.assert_error(504, "imgate_upstream_timeout");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "answered at the timeout, not the vendor's pace"
    );
    assert!(gw.metrics().await.contains(r#"status="timeout""#));
}

#[tokio::test]
async fn a_vendor_rejecting_imgates_token_is_502_not_the_callers_401() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    // A certificate the vendor does not know: every minted token is refused.
    raw.apps[0].app_certificate = Some("00000000000000000000000000000000".into());
    let gw = TestGateway::start(raw).await;
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.agora()),
        None,
    )
    .await;
    resp.assert_error(502, "imgate_upstream_unauthorized");
    assert_eq!(
        emu.stats().await["responses"]["401"],
        2,
        "one call, one replay with a renewed token"
    );
}

#[tokio::test]
async fn wrong_easemob_credentials_make_the_token_unavailable() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.apps[1].client_secret = Some("not-the-secret".into());
    let gw = TestGateway::start(raw).await;
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.easemob()),
        None,
    )
    .await;
    let body = resp.assert_error(503, "imgate_token_unavailable");
    assert!(!body.to_string().contains("not-the-secret"));
    assert_eq!(emu.requests("offline_msg_count").await, 0);
}

#[tokio::test]
async fn one_easemob_token_serves_many_concurrent_requests() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    // Twenty users (the vendor quota's burst), so the cache does not merge the calls.
    let calls = (0..20).map(|i| {
        let url = format!("{}/users/u{i}/offline_msg_count", gw.easemob());
        async move { call(Method::GET, &url, None).await }
    });
    for resp in futures_join_all(calls).await {
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    assert_eq!(emu.requests("token").await, 1, "single-flight token fetch");
    assert_eq!(emu.requests("offline_msg_count").await, 20);
}

#[tokio::test]
async fn clients_may_be_limited_to_some_apps() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.clients[0].apps = Some(vec!["easemob-demo".into()]);
    let gw = TestGateway::start(raw).await;
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.agora()),
        None,
    )
    .await;
    resp.assert_error(403, "imgate_forbidden");
    let resp = call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.easemob()),
        None,
    )
    .await;
    assert_eq!(resp.status, 200);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/u/offline_msg_count", gw.agora());
    let resp = http(
        Method::GET,
        &url,
        &[DEMO_AUTH, ("x-request-id", "trace-me-42")],
        None,
    )
    .await;
    assert_eq!(resp.header("x-request-id"), Some("trace-me-42"));
    let resp = http(Method::GET, &url, &[], None).await;
    assert_eq!(
        resp.header("x-request-id").map(str::len),
        Some(32),
        "errors carry one too"
    );
}

#[tokio::test]
async fn health_and_metrics_are_on_the_admin_listener() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let health = http(
        Method::GET,
        &format!("http://{}/healthz", gw.admin),
        &[],
        None,
    )
    .await;
    assert_eq!(health.status, 200);
    call(
        Method::GET,
        &format!("{}/users/u/offline_msg_count", gw.agora()),
        None,
    )
    .await;
    let metrics = gw.metrics().await;
    assert!(metrics.contains(
        r#"imgate_http_requests_total{app="agora-demo",client="demo",endpoint="offline_msg_count",status="200"} 1"#
    ), "{metrics}");
    assert!(metrics.contains(
        r#"imgate_upstream_requests_total{app="agora-demo",endpoint="offline_msg_count",status="200"} 1"#
    ));
    let api_metrics = http(Method::GET, &format!("{}/metrics", gw.base()), &[], None).await;
    assert_eq!(
        api_metrics.status, 404,
        "metrics are not on the API listener"
    );
}

#[tokio::test]
async fn secrets_never_appear_in_responses_or_metrics() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let mut seen = String::new();
    for base in [gw.agora(), gw.easemob()] {
        for url in [
            format!("{base}/users/u/offline_msg_count"),
            format!("{base}/chatgroups"),
        ] {
            seen.push_str(&call(Method::GET, &url, None).await.text());
        }
    }
    seen.push_str(&gw.metrics().await);
    assert_no_secrets(&seen, &[]);
}

#[tokio::test]
async fn http2_callers_are_served_too() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let req = http::Request::get(format!("{}/users/u/offline_msg_count", gw.agora()))
        .header("authorization", "Bearer demo-key")
        .body(http_body_util::Full::default())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
}

async fn futures_join_all<F: std::future::Future<Output = Resp> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) -> Vec<Resp> {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}
