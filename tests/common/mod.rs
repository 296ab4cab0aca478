//! Test harness: servers on ephemeral loopback ports and a small HTTP client.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use imgate::config::RawConfig;
use imgate::demo;
use imgate::emulator::{Emulator, EmulatorConfig};
use imgate::token::agora::TokenSpec;

pub mod redis;

/// A running emulator; stops when dropped.
pub struct TestEmulator {
    pub addr: SocketAddr,
    pub emulator: Arc<Emulator>,
    _stop: oneshot::Sender<()>,
}

impl TestEmulator {
    /// Starts an emulator with `config` on 127.0.0.1:0.
    pub async fn start(config: EmulatorConfig) -> TestEmulator {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let emulator = Emulator::new(config);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(emulator.clone().run(listener, async move {
            let _ = stopped.await;
        }));
        TestEmulator {
            addr,
            emulator,
            _stop: stop,
        }
    }

    /// Starts an emulator with the demo identities.
    pub async fn demo() -> TestEmulator {
        TestEmulator::start(EmulatorConfig::demo()).await
    }

    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Agora demo app's prefix URL.
    pub fn agora(&self) -> String {
        agora_prefix(&self.base())
    }

    /// The Easemob demo app's prefix URL.
    pub fn easemob(&self) -> String {
        easemob_prefix(&self.base())
    }

    /// `GET /__emulator/stats`.
    pub async fn stats(&self) -> Value {
        http(
            Method::GET,
            &format!("{}/__emulator/stats", self.base()),
            &[],
            None,
        )
        .await
        .json()
    }

    /// Requests counted for one endpoint name.
    pub async fn requests(&self, endpoint: &str) -> u64 {
        self.stats().await["requests"][endpoint].as_u64().unwrap()
    }

    /// A fresh Easemob token from the emulator's token endpoint.
    pub async fn easemob_token(&self) -> String {
        let body = format!(
            r#"{{"grant_type":"client_credentials","client_id":"{}","client_secret":"{}"}}"#,
            demo::EASEMOB_CLIENT_ID,
            demo::EASEMOB_CLIENT_SECRET
        );
        let resp = http(
            Method::POST,
            &format!("{}/token", self.easemob()),
            &[("content-type", "application/json")],
            Some(&body),
        )
        .await;
        assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
        resp.json()["access_token"].as_str().unwrap().to_owned()
    }
}

/// `base` + the Agora demo app's path prefix.
pub fn agora_prefix(base: &str) -> String {
    format!("{base}/app-id/{}", demo::AGORA_APP_ID)
}

/// `base` + the Easemob demo app's path prefix.
pub fn easemob_prefix(base: &str) -> String {
    format!("{base}/{}/{}", demo::EASEMOB_ORG, demo::EASEMOB_APP)
}

/// A loopback port that was free a moment ago, for a server in a child process (which binds it
/// later, perhaps again after a restart). Taken below the kernel's ephemeral range, which
/// `bind(0)` and every outgoing connection draw from: a port from that range can be taken by
/// one of the test's own connections before the child binds it. A counter shared by the test
/// threads hands each port out once.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let Some((first, span)) = below_ephemeral_range() else {
        return ephemeral_port();
    };
    // Test binaries that run at once start at different places.
    let start = std::process::id();
    for _ in 0..span {
        let offset = start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = first + u16::try_from(offset).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    ephemeral_port()
}

/// The 10,000 ports below the ephemeral range (`ip_local_port_range`), when they are all above
/// the privileged ones.
fn below_ephemeral_range() -> Option<(u16, u32)> {
    const SPAN: u16 = 10_000;
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let low: u16 = range.split_whitespace().next()?.parse().ok()?;
    let first = low.checked_sub(SPAN).filter(|first| *first >= 1024)?;
    Some((first, u32::from(SPAN)))
}

/// A port the kernel picks from its ephemeral range.
fn ephemeral_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped, so a failing test leaves no server behind.
pub struct KillOnDrop(pub std::process::Child);

impl KillOnDrop {
    /// Kills the child and reaps it: what it wrote is complete once this returns.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long `imgate serve` may take to become ready: generous enough for a loaded two-core
/// machine starting several at once, as no test measures it.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// `imgate serve` in a child process on free loopback ports, for what only the binary does
/// (signals, reloads, logging, several replicas); its configuration and log (stdout and
/// stderr) in a folder of its own. Killed, and the folder removed, when dropped.
pub struct Served {
    /// The API listener.
    pub api: SocketAddr,
    /// The admin listener.
    pub admin: SocketAddr,
    name: String,
    dir: PathBuf,
    /// As last written to the configuration file, its listeners on `api` and `admin`.
    raw: RawConfig,
    process: KillOnDrop,
}

impl Served {
    /// Starts `imgate ARGS serve --config FILE` with `raw` on free loopback ports and returns at
    /// once, so that several can start together; `name` appears in its folder's name and in
    /// failure messages.
    pub fn spawn(name: &str, raw: RawConfig, args: &[&str]) -> Served {
        Served::spawn_to(name, raw, args, None)
    }

    /// [`Served::spawn`] with its stdout (where imgate writes its logs) going to `stdout`
    /// instead of the log file, e.g. `Stdio::piped()` ([`Served::take_stdout`]); stderr still
    /// goes to the file.
    pub fn spawn_to(
        name: &str,
        mut raw: RawConfig,
        args: &[&str],
        stdout: Option<Stdio>,
    ) -> Served {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let (api, admin): (SocketAddr, SocketAddr) = (
            ([127, 0, 0, 1], free_port()).into(),
            ([127, 0, 0, 1], free_port()).into(),
        );
        raw.server.listen = api.to_string();
        raw.server.admin_listen = admin.to_string();
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("imgate-serve-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("imgate.toml"), toml::to_string(&raw).unwrap()).unwrap();
        let log = std::fs::File::create(dir.join("imgate.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_imgate"))
            .args(args)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("imgate.toml"))
            // The configuration's `[log] level` decides, not the developer's shell: tests read
            // the logs.
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(stdout.unwrap_or_else(|| log.try_clone().unwrap().into()))
            .stderr(log)
            .spawn()
            .unwrap();
        Served {
            api,
            admin,
            name: name.to_owned(),
            dir,
            raw,
            process: KillOnDrop(child),
        }
    }

    /// [`Served::spawn`], then [`Served::wait_ready`].
    pub async fn start(name: &str, raw: RawConfig, args: &[&str]) -> Served {
        let mut served = Served::spawn(name, raw, args);
        served.wait_ready().await;
        served
    }

    /// Waits until the admin `/readyz` answers 200 (every app holds a token); panics with the
    /// log, at once if the process has exited (with its status), else after [`READY_WITHIN`].
    pub async fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.admin);
        let client = Http::new();
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            let resp = client.try_send(Method::GET, &url, &[], None).await;
            if resp.is_ok_and(|r| r.status == StatusCode::OK) {
                return;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before it was ready:\n{}",
                    self.name,
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready within {READY_WITHIN:?}:\n{}",
                self.name,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://127.0.0.1:port` of the API listener.
    pub fn base(&self) -> String {
        format!("http://{}", self.api)
    }

    /// Rewrites the configuration file after `change` (the listeners stay), for a reload.
    pub fn edit_config(&mut self, change: impl FnOnce(&mut RawConfig)) {
        change(&mut self.raw);
        let text = toml::to_string(&self.raw).unwrap();
        std::fs::write(self.dir.join("imgate.toml"), text).unwrap();
    }

    /// Sends `signal` (`-TERM`, `-HUP`) with kill(1), as an orchestrator or an operator does.
    pub fn signal(&self, signal: &str) {
        let pid = self.process.0.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        assert!(
            sent.is_ok_and(|s| s.success()),
            "kill {signal} {}",
            self.name
        );
    }

    /// Kills it without warning, as a crash looks; its log is complete afterwards.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.0.try_wait().unwrap()
    }

    /// The read end of its stdout, when it was spawned with `Stdio::piped()` (once).
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.process.0.stdout.take()
    }

    /// What it has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("imgate.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // First, so that nothing writes into the folder while it goes.
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the first sample of `name` in a Prometheus text exposition.
pub fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let value = rest.strip_prefix(' ').or_else(|| {
            let (_, after) = rest.strip_prefix('{')?.split_once("} ")?;
            Some(after)
        })?;
        value.trim().parse().ok()
    })
}

/// The first sample of `name` on the admin listener at `admin`.
pub async fn metric(admin: SocketAddr, name: &str) -> Option<f64> {
    let metrics = Http::new()
        .try_send(Method::GET, &format!("http://{admin}/metrics"), &[], None)
        .await
        .ok()?;
    sample(&metrics.text(), name)
}

/// A valid Agora app token for the demo app, issued now for `expire` seconds.
pub fn agora_token(expire: u32) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as u32;
    TokenSpec::app(demo::AGORA_APP_ID, now, expire, 42).build(demo::AGORA_APP_CERTIFICATE)
}

/// A buffered HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON (panics with the body text when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a vendor-shaped error with this status and `error` name; returns the body.
    pub fn assert_error(&self, status: u16, error: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.text());
        let v = self.json();
        assert_eq!(v["error"], error, "{v}");
        for field in ["exception", "error_description"] {
            assert!(v[field].is_string(), "{field} missing in {v}");
        }
        assert!(v["timestamp"].is_u64(), "{v}");
        assert!(v["duration"].is_u64(), "{v}");
        v
    }
}

/// Sends one request with a fresh connection pool.
pub async fn http(method: Method, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    Http::new().send(method, url, headers, body).await
}

/// A pooled HTTP/1.1 client for tests.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Default for Http {
    fn default() -> Self {
        Http::new()
    }
}

impl Http {
    /// A new client.
    pub fn new() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A client that speaks HTTP/2 only, without upgrade (h2c prior knowledge), as gRPC-style
    /// clients and `curl --http2-prior-knowledge` do.
    pub fn h2() -> Http {
        Http {
            client: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build_http(),
        }
    }

    /// Sends a request; panics on a transport error.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Sends a request; a transport error is returned.
    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Resp, hyper_util::client::legacy::Error> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let body = Full::new(Bytes::from(body.unwrap_or("").to_owned()));
        let resp = self.client.request(req.body(body).unwrap()).await?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        Ok(Resp {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

/// A running gateway (API and admin listeners on ephemeral ports); stops when dropped.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub gateway: Arc<imgate::Gateway>,
    _stop: oneshot::Sender<()>,
}

/// The demo configuration with `upstream` as every app's vendor, ready to adjust.
pub fn demo_config(upstream: &str) -> imgate::config::RawConfig {
    let mut raw = imgate::config::RawConfig::parse(imgate::demo::CONFIG).unwrap();
    for app in &mut raw.apps {
        app.upstream = upstream.to_owned();
    }
    raw
}

impl TestGateway {
    /// Starts a gateway with `raw` (listen addresses are replaced by ephemeral ports).
    pub async fn start(raw: imgate::config::RawConfig) -> TestGateway {
        let settings = raw.validate().expect("valid test config");
        let listeners = imgate::Listeners {
            api: TcpListener::bind("127.0.0.1:0").await.unwrap(),
            admin: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let addr = listeners.api.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let gateway = imgate::Gateway::new(settings, prometheus::Registry::new(), None).unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(imgate::run(listeners, gateway.clone(), async move {
            let _ = stopped.await;
        }));
        TestGateway {
            addr,
            admin,
            gateway,
            _stop: stop,
        }
    }

    /// A gateway with the demo configuration in front of `emulator`.
    pub async fn demo(emulator: &TestEmulator) -> TestGateway {
        TestGateway::start(demo_config(&emulator.base())).await
    }

    /// `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Agora demo app's prefix URL.
    pub fn agora(&self) -> String {
        agora_prefix(&self.base())
    }

    /// The Easemob demo app's prefix URL.
    pub fn easemob(&self) -> String {
        easemob_prefix(&self.base())
    }

    /// The admin listener's `/metrics` text.
    pub async fn metrics(&self) -> String {
        http(
            Method::GET,
            &format!("http://{}/metrics", self.admin),
            &[],
            None,
        )
        .await
        .text()
    }
}

/// What must never appear in a response, a metric or a log line of the demo configuration: its
/// vendor credentials, client and admin keys, and the prefixes every vendor token starts with
/// (AccessToken2: "007" + zlib's header in base64; Easemob: "YWMt"), plus `extra`.
pub fn assert_no_secrets(text: &str, extra: &[&str]) {
    let fixed = [
        demo::AGORA_APP_CERTIFICATE,
        demo::EASEMOB_CLIENT_SECRET,
        "demo-key",
        "demo-admin-key",
        "007eJ",
        "YWMt",
    ];
    for secret in fixed.iter().chain(extra) {
        assert!(!text.contains(secret), "{secret} leaked");
    }
}

/// The demo client's credentials header.
pub const DEMO_AUTH: (&str, &str) = ("authorization", "Bearer demo-key");
