//! Operations: the metrics catalogue on a live scrape (and `promtool check metrics`), trace
//! context toward the vendor, JSON access logs (and a stdout nobody reads), a draining shutdown
//! of `imgate serve`, and the reload log line.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    agora_prefix, assert_no_secrets, demo_config, http, metric, Http, Served, TestEmulator,
    TestGateway, DEMO_AUTH,
};
use http::Method;
use imgate::emulator::EmulatorConfig;
use serde_json::{json, Value};

/// One call to every endpoint under `base`.
async fn every_endpoint(base: &str) {
    let headers = [DEMO_AUTH, ("content-type", "application/json")];
    let send = |method: Method, path: &str, body: Option<&'static str>| {
        let url = format!("{base}{path}");
        async move { http(method, &url, &headers, body).await }
    };
    let sent = send(
        Method::POST,
        "/messages/users",
        Some(r#"{"from":"a","to":["m"],"type":"txt","body":{}}"#),
    )
    .await;
    let id = sent.json()["data"]["m"].as_str().unwrap().to_owned();
    send(Method::GET, "/users/m/offline_msg_count", None).await;
    send(
        Method::GET,
        &format!("/users/m/offline_msg_status/{id}"),
        None,
    )
    .await;
    send(
        Method::POST,
        "/users/m/presence/web/1",
        Some(r#"{"ext":""}"#),
    )
    .await;
    send(
        Method::POST,
        "/users/a/presence/60",
        Some(r#"{"usernames":["m"]}"#),
    )
    .await;
    send(
        Method::POST,
        "/users/a/presence",
        Some(r#"{"usernames":["m","n"]}"#),
    )
    .await;
    send(
        Method::GET,
        "/users/a/presence/sublist?pageNum=1&pageSize=5",
        None,
    )
    .await;
    send(Method::DELETE, "/users/a/presence", Some(r#"["m"]"#)).await;
    send(Method::GET, "/chatgroups", None).await;
    let body =
        r#"{"grant_type":"client_credentials","client_id":"demo","client_secret":"demo-key"}"#;
    send(Method::POST, "/token", Some(body)).await;
}

/// promtool, from PATH or where `deploy/check.sh` puts it.
fn promtool() -> Option<PathBuf> {
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/imgate-deploy/bin/promtool"));
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("promtool"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .chain(cached)
        .find(|p| p.is_file())
}

#[tokio::test]
async fn the_metrics_catalogue_is_exported_with_bounded_labels_and_passes_promtool() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    for base in [gw.agora(), gw.easemob()] {
        every_endpoint(&base).await;
    }
    http(
        Method::GET,
        &format!("{}/users/x/offline_msg_count", gw.agora()),
        &[],
        None,
    )
    .await;
    let text = gw.metrics().await;
    for family in [
        "imgate_http_requests_total",
        "imgate_http_request_duration_seconds",
        "imgate_cache_lookups_total",
        "imgate_cache_entries",
        "imgate_upstream_requests_total",
        "imgate_upstream_request_duration_seconds",
        "imgate_ratelimit_rejected_total",
        "imgate_ratelimit_wait_seconds",
        "imgate_token_refreshes_total",
        "imgate_token_expiry_timestamp_seconds",
        "imgate_presence_batch_users",
        "imgate_vendor_throttled_total",
        "imgate_build_info",
        "imgate_config_reload_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    // The names the alerts and the dashboard may use (deploy/metrics.txt) are all exported.
    let listed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/metrics.txt"))
            .unwrap();
    // (Cluster metrics exist in cluster mode only: tests/cluster.rs checks those.)
    for name in listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("imgate_cluster_"))
    {
        let exported = text
            .lines()
            .any(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']));
        assert!(
            exported,
            "deploy/metrics.txt names {name}, which /metrics does not export"
        );
    }
    // Every endpoint appears, and label values come from bounded sets only.
    let endpoints: Vec<&str> = imgate::route::Endpoint::ALL
        .iter()
        .map(|e| e.name())
        .collect();
    for endpoint in &endpoints {
        assert!(
            text.contains(&format!(r#"endpoint="{endpoint}""#)),
            "{endpoint}"
        );
    }
    for line in text
        .lines()
        .filter(|l| l.starts_with("imgate_http_requests_total{"))
    {
        for (label, allowed) in [
            ("client", vec!["demo", "demo-limited", "-"]),
            ("app", vec!["agora-demo", "easemob-demo", "-"]),
        ] {
            let value = line
                .split(&format!("{label}=\""))
                .nth(1)
                .and_then(|v| v.split('"').next())
                .unwrap();
            assert!(allowed.contains(&value), "{line}");
        }
    }
    assert_no_secrets(&text, &["imgt1."]);
    match promtool() {
        Some(promtool) => {
            let mut child = Command::new(promtool)
                .args(["check", "metrics"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
            let out = child.wait_with_output().unwrap();
            let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}");
        }
        None if std::env::var("CI").as_deref() == Ok("true") => panic!("promtool is missing in CI"),
        None => eprintln!("skipped: promtool check metrics (promtool not installed; bash deploy/check.sh installs it)"),
    }
}

#[tokio::test]
async fn the_callers_trace_goes_on_to_the_vendor_as_a_new_span() {
    let emu = TestEmulator::demo().await;
    let gw = TestGateway::demo(&emu).await;
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let url = format!("{}/users/t/offline_msg_count", gw.agora());
    let resp = http(
        Method::GET,
        &url,
        &[DEMO_AUTH, ("traceparent", incoming)],
        None,
    )
    .await;
    assert_eq!(resp.status, 200);
    let seen = emu.stats().await["last_traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        seen.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{seen}"
    );
    assert!(seen.ends_with("-01"));
    assert_ne!(seen, incoming, "imgate's call is a span of its own");
    // Without one, a new trace starts.
    http(
        Method::GET,
        &format!("{}/users/t2/offline_msg_count", gw.agora()),
        &[DEMO_AUTH],
        None,
    )
    .await;
    let fresh = emu.stats().await["last_traceparent"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        fresh.starts_with("00-") && !fresh.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
        "{fresh}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_refuses_and_exits_0() {
    const DELAY_MS: u64 = 400;
    const DRAIN_MS: u64 = 5_000;
    let mut config = EmulatorConfig::demo();
    config.apps[0]
        .quotas
        .insert("offline_msg_count".into(), 1000);
    let emu = TestEmulator::start(config).await;
    http(
        Method::PUT,
        &format!("{}/__emulator/faults", emu.base()),
        &[],
        Some(r#"{"latency_ms":500}"#),
    )
    .await;
    let mut raw = demo_config(&emu.base());
    raw.server.shutdown_delay_ms = DELAY_MS;
    raw.server.drain_timeout_ms = DRAIN_MS;
    raw.apps[0]
        .vendor_quotas
        .insert("offline_msg_count".into(), 1000);
    let mut served = Served::start("sigterm", raw, &["--log-format", "json"]).await;
    let client = Http::new();
    let readyz = format!("http://{}/readyz", served.admin);

    let base = agora_prefix(&served.base());
    let in_flight: Vec<_> = (0..50)
        .map(|i| {
            let url = format!("{base}/users/d{i}/offline_msg_count");
            tokio::spawn(async move {
                Http::new()
                    .send(Method::GET, &url, &[DEMO_AUTH], None)
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let signalled = Instant::now();
    served.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let draining = client.send(Method::GET, &readyz, &[], None).await;
    assert_eq!(draining.status, 503, "readiness fails at once");
    assert_eq!(draining.json(), json!({"status": "draining"}));

    for request in in_flight {
        let resp = request.await.unwrap();
        assert_eq!(resp.status, 200, "{}", resp.text());
    }
    tokio::time::sleep(Duration::from_millis(DELAY_MS + 200).saturating_sub(signalled.elapsed()))
        .await;
    let refused = Http::new()
        .try_send(
            Method::GET,
            &format!("{base}/users/late/offline_msg_count"),
            &[DEMO_AUTH],
            None,
        )
        .await;
    assert!(
        refused.is_err(),
        "new connections are refused after the delay"
    );
    let status = loop {
        if let Some(status) = served.exited() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(DELAY_MS + DRAIN_MS),
            "exited within the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));

    let logs = served.logs();
    let access: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "imgate::access")
        .collect();
    assert!(
        access.len() >= 50,
        "one JSON access line per request:\n{logs}"
    );
    let line = access.iter().find(|v| v["status"] == 200).unwrap();
    for field in [
        "request_id",
        "trace_id",
        "client",
        "app",
        "endpoint",
        "method",
        "status",
        "cache",
        "vendor_status",
        "vendor_ms",
        "total_ms",
    ] {
        assert!(line.get(field).is_some(), "{field} missing in {line}");
    }
    assert_eq!(line["client"], "demo");
    for field in ["vendor_ms", "total_ms"] {
        let ms = line[field].to_string();
        let decimals = ms.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= 3, "{field} rounded to the microsecond: {ms}");
    }
    assert!(logs.contains("imgate serving"), "the start-up line");
    assert_no_secrets(&logs, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_carry_no_colour_codes_and_drops_are_a_metric() {
    let emu = TestEmulator::demo().await;
    let mut served =
        Served::start("text", demo_config(&emu.base()), &["--log-format", "text"]).await;
    let client = Http::new();
    assert_eq!(
        dropped_log_lines(&served).await,
        0,
        "the dropped-lines counter is exported"
    );
    let base = agora_prefix(&served.base());
    let resp = client
        .send(
            Method::GET,
            &format!("{base}/users/t1/offline_msg_count"),
            &[DEMO_AUTH],
            None,
        )
        .await;
    assert_eq!(resp.status, 200);
    served.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    while served.exited().is_none() {
        assert!(Instant::now() < deadline, "exited after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = served.logs();
    assert!(logs.contains("imgate serving"), "{logs}");
    assert!(
        logs.contains("imgate::access"),
        "the access line was flushed at exit: {logs}"
    );
    assert!(
        !logs.contains('\x1b'),
        "no ANSI escapes in a file: {logs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reload_line_lists_changed_apps_and_clients_as_json_arrays() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    raw.server.shutdown_delay_ms = 0;
    let mut served = Served::start("reload", raw, &["--log-format", "json"]).await;

    // One app and two clients change, one client goes, one comes.
    served.edit_config(|raw| {
        raw.apps[0].token_expire_secs = Some(3_600);
        raw.clients[0].name = "renamed".into();
        raw.clients[1].key = Some("a-new-limited-key".into());
        raw.clients.push(imgate::config::RawClient {
            name: "newcomer".into(),
            key: Some("newcomer-key-1".into()),
            key_sha256: None,
            apps: None,
            rate_limit: None,
            endpoints: None,
        });
    });
    served.signal("-HUP");
    let metrics = format!("http://{}/metrics", served.admin);
    let mut reloaded = false;
    for _ in 0..100 {
        let text = Http::new()
            .send(Method::GET, &metrics, &[], None)
            .await
            .text();
        if text.contains(r#"imgate_config_reload_total{result="success"} 1"#) {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the reload succeeded");
    let logs = served.logs();
    let line = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "configuration reloaded")
        .unwrap_or_else(|| panic!("no reload line:\n{logs}"));
    assert_eq!(line["apps_changed"], json!(["agora-demo"]), "{line}");
    assert_eq!(line["apps_removed"], json!([]), "{line}");
    assert_eq!(
        line["clients_changed"],
        json!(["renamed", "demo-limited", "newcomer"]),
        "{line}"
    );
    assert_eq!(line["clients_removed"], json!(["demo"]), "{line}");
    assert_no_secrets(&logs, &["a-new-limited-key", "newcomer-key-1"]);
}

/// Requests sent while nothing reads imgate's stdout: their JSON access lines (about 380 bytes
/// each with a 125-character request id, 11 MB in all) fill the pipe, what the stalled writer
/// holds and the connection thread's 4 MiB buffer more than once over.
const STALLED_REQUESTS: usize = 30_000;

/// Reads `imgate_log_lines_dropped_total` off the admin listener.
async fn dropped_log_lines(served: &Served) -> u64 {
    let dropped = metric(served.admin, "imgate_log_lines_dropped_total").await;
    dropped.expect("no dropped-lines counter on /metrics") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stdout_drops_access_lines_counted_and_holds_no_request() {
    let emu = TestEmulator::demo().await;
    let mut raw = demo_config(&emu.base());
    // One connection thread writes every access line into one buffer of the log queue, so the
    // number of requests that overflows it does not depend on the machine's cores.
    raw.server.conn_threads = Some(1);
    // Access lines only (and warnings): a dropped line is then an access line, and the lines
    // that arrive plus those counted as dropped add up to the requests exactly.
    raw.log.level = "warn,imgate::access=info".into();
    let mut served = Served::spawn_to(
        "stalled",
        raw,
        &["--log-format", "json"],
        Some(Stdio::piped()),
    );
    // Held, and not read until the burst is over.
    let reader = served.take_stdout().unwrap();
    served.wait_ready().await;
    let url = format!(
        "{}/users/stall/offline_msg_count",
        agora_prefix(&served.base())
    );

    // Eight callers at once; had a request waited for the log, the first full buffer would
    // have held it for good and its deadline would fail the test.
    let callers = 8;
    let tasks: Vec<_> = (0..callers)
        .map(|caller| {
            let (client, url) = (Http::new(), url.clone());
            tokio::spawn(async move {
                for i in 0..STALLED_REQUESTS / callers {
                    let id = format!("stall-{caller}-{i:06}-{}", "x".repeat(110));
                    let headers = [DEMO_AUTH, ("x-request-id", &id)];
                    let sent = client.send(Method::GET, &url, &headers, None);
                    let resp = tokio::time::timeout(Duration::from_secs(10), sent)
                        .await
                        .unwrap_or_else(|_| {
                            panic!("request {i} of caller {caller} held over 10 s")
                        });
                    assert_eq!(resp.status, 200, "{}", resp.text());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let dropped = dropped_log_lines(&served).await;
    assert!(
        dropped > 0 && dropped < STALLED_REQUESTS as u64,
        "{dropped} of {STALLED_REQUESTS} access lines dropped"
    );

    // The sink drains: every line not counted as dropped arrives, whole, and so do new ones.
    let (lines, mut arriving) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let access_line = |line: &str| -> Option<String> {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        (v["target"] == "imgate::access").then(|| v["request_id"].as_str().unwrap().to_owned())
    };
    let expected = STALLED_REQUESTS - dropped as usize;
    let mut seen = 0;
    while seen < expected {
        let line = tokio::time::timeout(Duration::from_secs(20), arriving.recv())
            .await
            .unwrap_or_else(|_| panic!("{seen} of {expected} access lines arrived"))
            .expect("stdout open");
        if access_line(&line).is_some_and(|id| id.starts_with("stall-")) {
            seen += 1;
        }
    }
    let resp = http(
        Method::GET,
        &url,
        &[DEMO_AUTH, ("x-request-id", "after-the-stall")],
        None,
    )
    .await;
    assert_eq!(resp.status, 200);
    loop {
        let line = tokio::time::timeout(Duration::from_secs(10), arriving.recv())
            .await
            .expect("the line of a request after the stall")
            .expect("stdout open");
        match access_line(&line) {
            Some(id) if id == "after-the-stall" => break,
            Some(id) => assert!(!id.starts_with("stall-"), "more lines than counted: {line}"),
            None => {}
        }
    }
    assert_eq!(
        dropped_log_lines(&served).await,
        dropped,
        "nothing dropped once the sink reads"
    );
}
