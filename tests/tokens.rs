//! App-token lifecycle and caller identity: renewal under load, revocation, rotation by SIGHUP
//! and by the admin API, and the SDK-compatible client tokens.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    assert_no_secrets, demo_config, http, Http, Resp, Served, TestEmulator, TestGateway, DEMO_AUTH,
};
use http::Method;
use imgate::demo;
use imgate::emulator::EmulatorConfig;
use serde_json::{json, Value};

/// The value of one sample in a Prometheus exposition, 0 when absent.
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn agora_refreshes(metrics: &str) -> f64 {
    sample(
        metrics,
        r#"imgate_token_refreshes_total{app="agora-demo",result="success"}"#,
    )
}

/// `workers` callers sending offline-count reads to `urls` (round robin) for `duration`;
/// returns every status that was not 200, with its body. `{i}` in a URL becomes a number that
/// grows with every call, so that each read is a cache miss and reaches the vendor.
async fn steady_traffic(
    urls: Vec<String>,
    workers: usize,
    duration: Duration,
    auth: (&'static str, &'static str),
) -> Vec<String> {
    let client = Http::new();
    let deadline = Instant::now() + duration;
    let sent = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (client, urls, sent) = (client.clone(), urls.clone(), sent.clone());
            tokio::spawn(async move {
                let mut failures = Vec::new();
                let mut i = w;
                while Instant::now() < deadline {
                    let url = urls[i % urls.len()].replace("{i}", &i.to_string());
                    i += workers;
                    match client.try_send(Method::GET, &url, &[auth], None).await {
                        Ok(resp) if resp.status == 200 => {}
                        Ok(resp) => failures.push(format!("{} {}", resp.status, resp.text())),
                        Err(err) => failures.push(format!("transport: {err}")),
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    // 40 calls per second per worker: below the vendor quota of 100/s per app.
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                failures
            })
        })
        .collect();
    let mut failures = Vec::new();
    for task in tasks {
        failures.extend(task.await.unwrap());
    }
    let expected = workers as f64 * duration.as_secs_f64() * 5.0;
    assert!(
        sent.load(Ordering::Relaxed) as f64 >= expected,
        "the traffic really ran"
    );
    failures
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_renewed_ahead_of_expiry_under_steady_traffic() {
    const LIFETIME: f64 = 2.0;
    const DURATION: f64 = 20.0;
    let mut config = EmulatorConfig::demo();
    config.apps[1].token_expires_in = LIFETIME as u64;
    let emu = TestEmulator::start(config).await;
    let mut raw = demo_config(&emu.base());
    raw.apps[0].token_expire_secs = Some(LIFETIME as u32);
    raw.tokens.max_fetches_per_minute = 120;
    let (fraction, jitter) = (raw.tokens.refresh_fraction, raw.tokens.refresh_jitter);
    let gw = TestGateway::start(raw).await;
    // Each renewal comes at fraction × (1 − jitter × U[0,1]) of the life a token has left when
    // obtained: on average fraction × (1 − jitter / 2) of it; plus the first token.
    let predicted = |life: f64| 1.0 + DURATION / (life * fraction * (1.0 - jitter / 2.0));

    let started = Instant::now();
    let urls = vec![
        format!("{}/users/u{{i}}/offline_msg_count", gw.agora()),
        format!("{}/users/u{{i}}/offline_msg_count", gw.easemob()),
    ];
    let failures = steady_traffic(urls, 4, Duration::from_secs_f64(DURATION), DEMO_AUTH).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );

    let easemob = emu.requests("token").await as f64;
    let agora = agora_refreshes(&gw.metrics().await);
    // The run lasted a little longer than DURATION; scale the predictions to it.
    let scale = elapsed / DURATION;
    let easemob_predicted = predicted(LIFETIME) * scale;
    assert!(
        (easemob - easemob_predicted).abs() <= 1.5,
        "easemob: {easemob} token fetches, predicted {easemob_predicted:.1}"
    );
    // An Agora token counts whole seconds from the second it is minted in, so it has up to a
    // second less to live than it says: between the prediction for LIFETIME and LIFETIME − 1.
    let (fewest, most) = (
        predicted(LIFETIME) * scale - 1.0,
        predicted(LIFETIME - 1.0) * scale + 1.0,
    );
    assert!(
        (fewest..=most).contains(&agora),
        "agora: {agora} token mints, expected {fewest:.1}..={most:.1}"
    );
    assert_eq!(
        emu.stats().await["responses"].get("401"),
        None,
        "no expired token was ever sent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_every_token_mid_flight_costs_one_fetch_and_no_failed_call() {
    // 100 calls and their 100 replays within a second: above the vendor's offline quota of
    // 100/s, so this test raises it on both sides (quotas have tests of their own).
    let mut config = EmulatorConfig::demo();
    for app in &mut config.apps {
        app.quotas.insert("offline_msg_count".into(), 1000);
    }
    let emu = TestEmulator::start(config).await;
    let mut raw = demo_config(&emu.base());
    for app in &mut raw.apps {
        app.vendor_quotas.insert("offline_msg_count".into(), 1000);
    }
    let gw = TestGateway::start(raw).await;
    let urls = [gw.agora(), gw.easemob()].map(|base| format!("{base}/users/u/offline_msg_count"));
    for url in &urls {
        assert_eq!(http(Method::GET, url, &[DEMO_AUTH], None).await.status, 200);
    }
    // Agora revocation applies to tokens issued before the current second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let easemob_before = emu.requests("token").await;
    let agora_before = agora_refreshes(&gw.metrics().await);
    http(
        Method::PUT,
        &format!("{}/__emulator/faults", emu.base()),
        &[],
        Some(r#"{"latency_ms":300}"#),
    )
    .await;

    let client = Http::new();
    let calls: Vec<_> = (0..100)
        .map(|i| {
            // Distinct users: every call goes to the vendor (none is merged by the cache).
            let url = urls[i % 2].replace("/users/u/", &format!("/users/r{i}/"));
            let client = client.clone();
            tokio::spawn(async move { client.send(Method::GET, &url, &[DEMO_AUTH], None).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let revoked = http(
        Method::POST,
        &format!("{}/__emulator/revoke-tokens", emu.base()),
        &[],
        None,
    )
    .await;
    assert_eq!(revoked.status, 200);
    for call in calls {
        let resp = call.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    let stats = emu.stats().await;
    assert!(
        stats["responses"]["401"].as_u64().unwrap() >= 100,
        "every call met the revocation: {stats}"
    );
    assert_eq!(emu.requests("token").await, easemob_before + 1);
    assert_eq!(agora_refreshes(&gw.metrics().await), agora_before + 1.0);
}

#[tokio::test]
async fn the_admin_api_rotates_tokens_and_requires_the_admin_key() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let url = format!("{}/users/u/offline_msg_count", gw.easemob());
    assert_eq!(call(&url).await.status, 200);
    let before = emu.requests("token").await;
    let rotate = format!("http://{}/admin/tokens/rotate", gw.admin);
    let admin = ("authorization", "Bearer demo-admin-key");

    let resp = http(
        Method::POST,
        &format!("{rotate}?app=easemob-demo"),
        &[admin],
        None,
    )
    .await;
    assert_eq!(resp.json(), json!({"rotated": ["easemob-demo"]}));
    assert_eq!(emu.requests("token").await, before + 1);
    let resp = http(Method::POST, &rotate, &[admin], None).await;
    assert_eq!(
        resp.json(),
        json!({"rotated": ["agora-demo", "easemob-demo"]})
    );
    assert_eq!(call(&url).await.status, 200, "the new token works");

    http(Method::POST, &rotate, &[], None)
        .await
        .assert_error(401, "unauthorized");
    http(Method::POST, &rotate, &[DEMO_AUTH], None)
        .await
        .assert_error(401, "unauthorized");
    http(Method::POST, &format!("{rotate}?app=nope"), &[admin], None)
        .await
        .assert_error(404, "imgate_unknown_app");
    assert_eq!(emu.requests("token").await, before + 2);

    let mut raw = demo_config(&emu.base());
    raw.admin.key = None;
    let no_admin = TestGateway::start(raw).await;
    let rotate = format!("http://{}/admin/tokens/rotate", no_admin.admin);
    http(Method::POST, &rotate, &[admin], None)
        .await
        .assert_error(403, "imgate_admin_disabled");
}

#[tokio::test]
async fn readiness_reports_apps_without_a_valid_token_as_degraded() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let ready = wait_ready(&gw).await;
    assert_eq!(
        ready.json(),
        json!({"status":"ready","apps":{"agora-demo":"ok","easemob-demo":"ok"}})
    );

    let mut raw = demo_config(&emu.base());
    raw.apps[1].client_secret = Some("wrong-secret".into());
    let gw = TestGateway::start(raw).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = http(
        Method::GET,
        &format!("http://{}/readyz", gw.admin),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 503);
    assert_eq!(
        resp.json()["apps"],
        json!({"agora-demo":"ok","easemob-demo":"degraded"})
    );
    let metrics = gw.metrics().await;
    assert!(
        sample(
            &metrics,
            r#"imgate_token_refreshes_total{app="easemob-demo",result="error"}"#
        ) >= 1.0
    );
}

async fn wait_ready(gw: &TestGateway) -> Resp {
    let url = format!("http://{}/readyz", gw.admin);
    for _ in 0..50 {
        let resp = http(Method::GET, &url, &[], None).await;
        if resp.status == 200 {
            return resp;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never ready");
}

async fn call(url: &str) -> Resp {
    http(Method::GET, url, &[DEMO_AUTH], None).await
}

/// `POST {prefix}/token` as a vendor SDK sends it.
async fn sdk_token(base: &str, client_id: &str, secret: &str, ttl: Option<u64>) -> Resp {
    let mut body =
        json!({"grant_type":"client_credentials","client_id":client_id,"client_secret":secret});
    if let Some(ttl) = ttl {
        body["ttl"] = ttl.into();
    }
    http(
        Method::POST,
        &format!("{base}/token"),
        &[("content-type", "application/json")],
        Some(&body.to_string()),
    )
    .await
}

#[tokio::test]
async fn a_user_login_is_refused_saying_imgate_issues_only_client_credentials_tokens() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    for base in [gw.agora(), gw.easemob()] {
        // What vendor SDKs send to log a user (or an app admin) in.
        let body = json!({"grant_type": "password", "username": "demo", "password": "demo-key"});
        let refused = http(
            Method::POST,
            &format!("{base}/token"),
            &[("content-type", "application/json")],
            Some(&body.to_string()),
        )
        .await
        .assert_error(400, "invalid_grant");
        let description = refused["error_description"].as_str().unwrap();
        assert!(
            description.contains("only client_credentials tokens")
                && description.contains("grant_type password"),
            "{description}"
        );
        // Wrong client credentials still say so.
        let wrong = sdk_token(&base, "demo", "not-the-key", None)
            .await
            .assert_error(400, "invalid_grant");
        assert_eq!(
            wrong["error_description"],
            "client_id or client_secret does not match"
        );
    }
    assert!(
        emu.requests("token").await <= 1,
        "nothing forwarded: at most imgate's own token fetch"
    );
}

#[tokio::test]
async fn a_vendor_sdk_logs_in_to_imgate_and_uses_every_endpoint() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    for base in [gw.agora(), gw.easemob()] {
        let resp = sdk_token(&base, "demo", "demo-key", None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let body = resp.json();
        assert_eq!(body["expires_in"], 86400);
        assert!(body["application"].is_string());
        let token = body["access_token"].as_str().unwrap().to_owned();
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        let send = |method: Method, path: &str, body: Option<&'static str>| {
            let url = format!("{base}{path}");
            async move { http(method, &url, &headers, body).await }
        };
        let sent = send(
            Method::POST,
            "/messages/users",
            Some(r#"{"from":"a","to":["sdkuser"],"type":"txt","body":{"msg":"x"}}"#),
        )
        .await;
        assert_eq!(sent.status, 200, "{}", sent.text());
        let msg = sent.json()["data"]["sdkuser"].as_str().unwrap().to_owned();
        let calls = [
            send(Method::GET, "/users/sdkuser/offline_msg_count", None).await,
            send(
                Method::GET,
                &format!("/users/sdkuser/offline_msg_status/{msg}"),
                None,
            )
            .await,
            send(
                Method::POST,
                "/users/sdkuser/presence/web_1/1",
                Some(r#"{"ext":""}"#),
            )
            .await,
            send(
                Method::POST,
                "/users/a/presence/60",
                Some(r#"{"usernames":["sdkuser"]}"#),
            )
            .await,
            send(
                Method::POST,
                "/users/a/presence",
                Some(r#"{"usernames":["sdkuser"]}"#),
            )
            .await,
            send(
                Method::GET,
                "/users/a/presence/sublist?pageNum=1&pageSize=10",
                None,
            )
            .await,
            send(Method::DELETE, "/users/a/presence", Some(r#"["sdkuser"]"#)).await,
        ];
        for resp in calls {
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
        let forged = format!("Bearer {}x", &token[..token.len() - 1]);
        let url = format!("{base}/users/a/offline_msg_count");
        http(Method::GET, &url, &[("authorization", &forged)], None)
            .await
            .assert_error(401, "unauthorized");
    }
    let metrics = gw.metrics().await;
    assert!(metrics.contains(r#"client="demo",endpoint="presence_sublist",status="200""#));
}

#[tokio::test]
async fn client_tokens_expire_and_wrong_credentials_get_the_vendors_errors() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let base = gw.easemob();
    sdk_token(&base, "demo", "wrong", None)
        .await
        .assert_error(400, "invalid_grant");
    sdk_token(&base, "nobody", "demo-key", None)
        .await
        .assert_error(400, "invalid_grant");
    sdk_token(&base, "demo-limited", "demo-key", None)
        .await
        .assert_error(400, "invalid_grant");
    let url = format!("{base}/token");
    http(Method::POST, &url, &[], Some("{}"))
        .await
        .assert_error(415, "web_application");
    http(
        Method::POST,
        &url,
        &[("content-type", "application/json")],
        Some("nope"),
    )
    .await
    .assert_error(400, "json_parse");
    assert_eq!(
        emu.requests("token").await,
        1,
        "only imgate's own fetch reached the vendor"
    );

    let short = sdk_token(&base, "demo", "demo-key", Some(1)).await.json();
    assert_eq!(short["expires_in"], 1);
    let auth = format!("Bearer {}", short["access_token"].as_str().unwrap());
    let count = format!("{base}/users/u/offline_msg_count");
    assert_eq!(
        http(Method::GET, &count, &[("authorization", &auth)], None)
            .await
            .status,
        200
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    http(Method::GET, &count, &[("authorization", &auth)], None)
        .await
        .assert_error(401, "unauthorized");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_credentials_without_failing_a_request_and_nothing_leaks() {
    const NEW_CERT: &str = "0123456789abcdef0123456789abcdef";
    const NEW_SECRET: &str = "rotated-easemob-secret-canary";
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    // Debug lines too are searched for secrets below.
    raw.log.level = "debug".into();
    let mut served = Served::start("sighup", raw, &[]).await;
    let base = served.base();
    let metrics_url = format!("http://{}/metrics", served.admin);
    let client = Http::new();

    let urls = vec![
        format!(
            "{base}/app-id/{}/users/u/offline_msg_count",
            demo::AGORA_APP_ID
        ),
        format!(
            "{base}/{}/{}/users/u/offline_msg_count",
            demo::EASEMOB_ORG,
            demo::EASEMOB_APP
        ),
    ];
    let traffic = tokio::spawn(steady_traffic(
        urls.clone(),
        4,
        Duration::from_secs(4),
        DEMO_AUTH,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The vendor side of a rotation: a second certificate, a new client secret.
    let credentials = format!("{}/__emulator/credentials", emu.base());
    let change = |body: Value| {
        let url = credentials.clone();
        async move { http(Method::PUT, &url, &[], Some(&body.to_string())).await }
    };
    let added = change(
        json!({"app_id": demo::AGORA_APP_ID, "app_certificate": NEW_CERT, "keep_previous": true}),
    )
    .await;
    assert_eq!(added.status, 200, "{}", added.text());
    let changed = change(
        json!({"org": demo::EASEMOB_ORG, "app": demo::EASEMOB_APP, "client_secret": NEW_SECRET}),
    )
    .await;
    assert_eq!(changed.status, 200);
    let fetches_before = emu.requests("token").await;

    // imgate's side: the new credentials in the file, then SIGHUP.
    served.edit_config(|raw| {
        raw.apps[0].app_certificate = Some(NEW_CERT.into());
        raw.apps[1].client_secret = Some(NEW_SECRET.into());
    });
    served.signal("-HUP");
    let mut reloaded = false;
    for _ in 0..100 {
        let metrics = client
            .send(Method::GET, &metrics_url, &[], None)
            .await
            .text();
        if sample(&metrics, r#"imgate_config_reload_total{result="success"}"#) >= 1.0 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(reloaded, "the reload completed");
    assert_eq!(
        emu.requests("token").await,
        fetches_before + 1,
        "fetched with the new secret"
    );
    // The vendor now refuses the old certificate; imgate no longer uses it.
    let removed = change(json!({"app_id": demo::AGORA_APP_ID, "app_certificate": NEW_CERT})).await;
    assert_eq!(removed.status, 200);

    let failures = traffic.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    let after = steady_traffic(urls, 2, Duration::from_millis(500), DEMO_AUTH).await;
    assert!(after.is_empty(), "{after:?}");
    assert_eq!(
        emu.stats().await["responses"].get("401"),
        None,
        "no call was refused"
    );

    // Nothing secret in the logs, the metrics or a response.
    let mut seen = client
        .send(Method::GET, &metrics_url, &[], None)
        .await
        .text();
    for url in [format!("{base}/app-id/{}/chatgroups", demo::AGORA_APP_ID)] {
        seen.push_str(
            &client
                .send(Method::GET, &url, &[DEMO_AUTH], None)
                .await
                .text(),
        );
    }
    served.kill();
    let logs = served.logs();
    assert!(
        logs.contains("configuration reloaded"),
        "logs were captured:\n{logs}"
    );
    seen.push_str(&logs);
    assert_no_secrets(&seen, &[NEW_CERT, NEW_SECRET]);
}
