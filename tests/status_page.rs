//! The status page on the admin listener: `GET /status.json` counts what the gateway did, `GET /`
//! is one self-contained HTML page, and a headless Chromium renders the figures from it.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};

use common::{assert_no_secrets, http, Http, TestEmulator, TestGateway, DEMO_AUTH};

/// A gateway in front of the demo emulator whose offline counts stay cached for the whole test
/// (so the hits below are hits however slow the machine), once both apps hold a token.
async fn gateway(emu: &TestEmulator) -> TestGateway {
    let mut raw = common::demo_config(&emu.base());
    raw.cache.offline_count.ttl_ms = 60_000;
    raw.cache.presence.ttl_ms = 60_000;
    let gw = TestGateway::start(raw).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = http(
            Method::GET,
            &format!("http://{}/readyz", gw.admin),
            &[],
            None,
        )
        .await;
        if ready.status == 200 {
            return gw;
        }
        assert!(Instant::now() < deadline, "not ready: {}", ready.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(gw: &TestGateway) -> Value {
    let resp = http(
        Method::GET,
        &format!("http://{}/status.json", gw.admin),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.header("content-type"), Some("application/json"));
    resp.json()
}

/// The row of `endpoint` in `app`'s table of a `/status.json` snapshot.
fn row<'s>(status: &'s Value, app: &str, endpoint: &str) -> &'s Value {
    let app = status["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == app)
        .unwrap_or_else(|| panic!("no app {app} in {status}"));
    app["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["endpoint"] == endpoint)
        .unwrap_or_else(|| panic!("no endpoint {endpoint} in {app}"))
}

/// `n` reads of bob's offline count through the Agora app: 1 miss, then `n - 1` hits.
async fn offline_reads(gw: &TestGateway, n: usize) {
    let client = Http::new();
    let url = format!("{}/users/bob/offline_msg_count", gw.agora());
    for i in 0..n {
        let resp = client.send(Method::GET, &url, &[DEMO_AUTH], None).await;
        assert_eq!(resp.status, 200, "{}", resp.text());
        let expected = if i == 0 { "MISS" } else { "HIT" };
        assert_eq!(resp.header("x-cache"), Some(expected));
    }
}

#[tokio::test]
async fn status_json_counts_requests_errors_cache_and_vendor_calls() {
    let emu = TestEmulator::demo().await;
    let gw = gateway(&emu).await;
    let before = status(&gw).await;
    assert_eq!(before["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(before["draining"], false);
    assert_eq!(before["totals"]["requests"], 0, "{before}");

    // 1 miss and 2 hits; a wrong key (a caller's mistake: a client error, not an error).
    offline_reads(&gw, 3).await;
    let url = format!("{}/users/bob/offline_msg_count", gw.agora());
    let refused = http(
        Method::GET,
        &url,
        &[("authorization", "Bearer not-a-key")],
        None,
    )
    .await;
    assert_eq!(refused.status, 401);
    // A vendor failure: one 503 relayed from the vendor (an error, and vendor throttling).
    let faults = format!("{}/__emulator/faults", emu.base());
    let set = |body: Value| {
        let faults = faults.clone();
        async move {
            let resp = http(Method::PUT, &faults, &[], Some(&body.to_string())).await;
            assert_eq!(resp.status, 200, "{}", resp.text());
        }
    };
    set(json!({"error_rate": 1.0, "error_status": 503})).await;
    let failed = http(
        Method::POST,
        &format!("{}/users/alice/presence/android/1", gw.easemob()),
        &[DEMO_AUTH, ("content-type", "application/json")],
        Some(r#"{"ext":"online"}"#),
    )
    .await;
    set(json!({"error_rate": 0.0})).await;
    assert_eq!(failed.status, 503, "{}", failed.text());

    let s = status(&gw).await;
    let count = row(&s, "agora-demo", "offline_msg_count");
    assert_eq!(count["requests"], 4, "{count}");
    assert_eq!(count["errors"], 0, "{count}");
    assert_eq!(count["client_errors"], 1, "{count}");
    assert_eq!(count["vendor_calls"], 1, "{count}");
    assert_eq!(count["vendor_quota_per_sec"], 100);
    assert_eq!(count["vendor_throttled"], 0);
    // The app's own cache results: one miss, then two hits (the refused read made no lookup).
    assert_eq!(
        count["cache"],
        json!({"hit": 2, "miss": 1, "stale": 0, "coalesced": 0}),
        "{count}"
    );
    assert_eq!(row(&s, "agora-demo", "presence_set")["cache"], Value::Null);
    let set_row = row(&s, "easemob-demo", "presence_set");
    assert_eq!(set_row["requests"], 1, "{set_row}");
    assert_eq!(set_row["errors"], 1, "{set_row}");
    assert_eq!(set_row["vendor_calls"], 1, "{set_row}");
    assert_eq!(set_row["vendor_quota_per_sec"], 50);
    assert_eq!(set_row["vendor_throttled"], 1, "{set_row}");
    assert_eq!(row(&s, "easemob-demo", "offline_msg_count")["requests"], 0);

    let cache = s["cache"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["endpoint"] == "offline_msg_count")
        .unwrap();
    assert_eq!(cache["hit"], 2, "{cache}");
    assert_eq!(cache["miss"], 1, "{cache}");
    assert_eq!(cache["entries"], 1, "{cache}");

    // Easemob app tokens are fetched from the vendor: those calls count on the token row.
    // Agora's are minted locally, with no vendor call.
    let fetches = emu.requests("token").await;
    assert!(fetches >= 1, "the Easemob app holds a fetched token");
    let token_row = row(&s, "easemob-demo", "token");
    assert_eq!(token_row["vendor_calls"], fetches, "{token_row}");
    assert_eq!(token_row["requests"], 0, "no caller asked: {token_row}");
    assert_eq!(row(&s, "agora-demo", "token")["vendor_calls"], 0);

    let totals = &s["totals"];
    assert_eq!(totals["requests"], 5, "{totals}");
    assert_eq!(totals["errors"], 1, "{totals}");
    assert_eq!(totals["client_errors"], 1, "{totals}");
    assert_eq!(totals["vendor_calls"], 2 + fetches, "{totals}");
    assert_eq!(totals["vendor_throttled"], 1, "{totals}");
    assert_eq!(totals["cache"]["hit"], 2, "{totals}");
    assert_eq!(totals["rejected"]["vendor"], 0, "{totals}");
    assert!(s["uptime_secs"].as_f64().unwrap() > 0.0);

    for app in s["apps"].as_array().unwrap() {
        assert_eq!(app["ready"], true, "{app}");
        let left = app["token_expires_in_secs"].as_u64().unwrap_or_else(|| {
            panic!("{app}: a token with a lifetime is held");
        });
        assert!(left > 60 && left <= 90 * 86_400, "{app}");
        assert_eq!(app["endpoints"].as_array().unwrap().len(), 10, "{app}");
    }
    assert_eq!(s["apps"][0]["vendor"], "agora");
    assert_eq!(s["apps"][1]["vendor"], "easemob");

    // Nothing secret: no key, app credential or token.
    assert_no_secrets(&s.to_string(), &["Bearer", "access_token"]);
}

#[tokio::test]
async fn the_page_is_one_self_contained_html_document() {
    let emu = TestEmulator::demo().await;
    let gw = gateway(&emu).await;
    let resp = http(Method::GET, &format!("http://{}/", gw.admin), &[], None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let csp = resp.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let page = resp.text();
    assert!(page.starts_with("<!doctype html>"));
    assert!(page.contains("status.json"), "it polls the JSON snapshot");
    let lower = page.to_ascii_lowercase();
    for external in [
        "http://",
        "https://",
        "//cdn",
        "<script src",
        "<link",
        "@import",
        "url(",
    ] {
        assert!(!lower.contains(external), "the page refers to {external:?}");
    }
    // Every script and style is inline.
    assert_eq!(lower.matches("<script").count(), 1);
    assert!(!lower.contains(" src="));
    // No admin key needed, as for /metrics; other methods are not served.
    let post = http(Method::POST, &format!("http://{}/", gw.admin), &[], None).await;
    assert_eq!(post.status, 404);
}

/// Chromium, if installed: `$CHROMIUM` when set, else Debian's `/usr/bin/chromium` (or
/// `chromium-browser`).
fn chromium() -> Option<PathBuf> {
    let candidates = match std::env::var_os("CHROMIUM") {
        Some(path) => vec![PathBuf::from(path)],
        None => vec![
            "/usr/bin/chromium".into(),
            "/usr/bin/chromium-browser".into(),
        ],
    };
    candidates.into_iter().find(|p| p.is_file())
}

/// The text of the `col` cell in the first `endpoint` row of a piece of dumped DOM.
fn row_cell(html: &str, endpoint: &str, col: &str) -> Option<String> {
    let row = &html[html.find(&format!(r#"data-endpoint="{endpoint}""#))?..];
    let row = &row[..row.find("</tr>")?];
    let cell = &row[row.find(&format!(r#"data-col="{col}""#))?..];
    Some(cell[cell.find('>')? + 1..cell.find("</td>")?].to_owned())
}

/// The text of the `col` cell in the `endpoint` row of `app`'s table in a dumped DOM.
fn cell(dom: &str, app: &str, endpoint: &str, col: &str) -> Option<String> {
    let section = &dom[dom.find(&format!(r#"data-app="{app}""#))?..];
    let end = section[1..]
        .find("data-app=")
        .map_or(section.len(), |e| e + 1);
    row_cell(&section[..end], endpoint, col)
}

/// The text of the element with `id` (no nested elements) in a dumped DOM.
fn by_id(dom: &str, id: &str) -> Option<String> {
    let el = &dom[dom.find(&format!(r#"id="{id}""#))?..];
    Some(el[el.find('>')? + 1..el.find('<')?].to_owned())
}

/// Runs `chromium --dump-dom url`, killing the browser (its whole process group) if it takes
/// longer than `limit`.
async fn dump_dom(chromium: &PathBuf, url: &str, limit: Duration) -> String {
    let profile = std::env::temp_dir().join(format!(
        "imgate-status-chromium-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    ));
    std::fs::create_dir_all(&profile).unwrap();
    let mut command = tokio::process::Command::new(chromium);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-breakpad",
            "--disable-crash-reporter",
            "--virtual-time-budget=5000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", url])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().expect("start chromium");
    let group = child.id().expect("chromium's pid");
    let output = tokio::time::timeout(limit, child.wait_with_output()).await;
    if output.is_err() {
        // The browser and its helpers (renderer, zygote) share its process group.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{group}")])
            .status();
    }
    let _ = std::fs::remove_dir_all(&profile);
    let output = output
        .unwrap_or_else(|_| panic!("chromium did not finish within {limit:?}"))
        .expect("chromium runs");
    assert!(
        output.status.success(),
        "chromium failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
#[ignore = "needs Chromium (.ci/run installs it; run with --include-ignored)"]
async fn chromium_renders_the_figures() {
    let chromium = chromium()
        .expect("chromium is not installed (apt-get install -y chromium, or set $CHROMIUM)");
    let emu = TestEmulator::demo().await;
    let gw = gateway(&emu).await;
    // 7 reads of one offline count (1 miss, 6 hits) and 3 refused by imgate (429: errors).
    offline_reads(&gw, 7).await;
    let client = Http::new();
    let url = format!("{}/users/bob/offline_msg_count", gw.easemob());
    let limited = ("authorization", "Bearer demo-limited-key");
    let mut refused = 0;
    for _ in 0..40 {
        let resp = client.send(Method::GET, &url, &[limited], None).await;
        if resp.status == 429 {
            refused += 1;
            if refused == 3 {
                break;
            }
        }
    }
    assert_eq!(refused, 3, "demo-limited allows 10/s with a burst of 10");
    let s = status(&gw).await;
    let easemob_requests = row(&s, "easemob-demo", "offline_msg_count")["requests"]
        .as_u64()
        .unwrap();

    let dom = dump_dom(
        &chromium,
        &format!("http://{}/", gw.admin),
        Duration::from_secs(60),
    )
    .await;
    let show = |what: &str| format!("{what} in:\n{dom}");
    assert_no_secrets(&dom, &["Bearer"]);
    assert!(dom.contains("live · updated"), "{}", show("not live"));
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    assert_eq!(by_id(&dom, "version"), Some(version), "{}", show("version"));
    for app in ["agora-demo", "easemob-demo"] {
        assert!(dom.contains(&format!(">{app}<")), "{}", show(app));
    }
    let agora = |col| cell(&dom, "agora-demo", "offline_msg_count", col);
    assert_eq!(
        agora("requests").as_deref(),
        Some("7"),
        "{}",
        show("requests")
    );
    assert_eq!(agora("errors").as_deref(), Some("0"), "{}", show("errors"));
    assert_eq!(
        agora("vendor_calls").as_deref(),
        Some("1"),
        "{}",
        show("calls")
    );
    let easemob = |col| cell(&dom, "easemob-demo", "offline_msg_count", col);
    assert_eq!(
        easemob("requests"),
        Some(easemob_requests.to_string()),
        "{}",
        show("requests")
    );
    assert_eq!(
        easemob("errors").as_deref(),
        Some("3"),
        "{}",
        show("errors")
    );
    // The cache table (all apps): the Agora app's 1 miss and 6 hits, plus the Easemob reads.
    let cache_table = &dom[dom.find(r#"id="cache""#).expect("cache table")..];
    let cache = |col| row_cell(cache_table, "offline_msg_count", col);
    let json = &s["cache"][0];
    assert_eq!(json["endpoint"], "offline_msg_count");
    assert_eq!(
        cache("hit"),
        Some(json["hit"].to_string()),
        "{}",
        show("hits")
    );
    assert_eq!(
        cache("miss"),
        Some(json["miss"].to_string()),
        "{}",
        show("misses")
    );
    // Totals at the top.
    let total = s["totals"]["requests"].as_u64().unwrap();
    assert!(total >= 7 + easemob_requests);
    assert!(
        by_id(&dom, "t-rps-sub")
            .is_some_and(|t| t.ends_with(" · avg since start") || t.contains(" · last ")),
        "{}",
        show("totals")
    );
    assert!(by_id(&dom, "t-err").is_some_and(|t| t.ends_with(" %")));
    assert!(by_id(&dom, "t-hit").is_some_and(|t| t.ends_with(" %")));
    // The demo's Agora tokens live 24 h.
    let token = &dom[dom.find(r#"data-token-app="agora-demo""#).expect("token")..];
    assert!(
        token[..token.find('<').unwrap()].contains(">expires in 23 h "),
        "{}",
        show("the Agora token's expiry")
    );
}
