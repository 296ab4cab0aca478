//! A faithful in-memory fake of the vendor REST API (docs/vendor-api.md) for tests, demos and
//! benchmarks: real state, real token checks, the vendor's quotas, fault injection, and a
//! control API under `/__emulator/` (docs/vendor-api.md, "The emulator").
//!
//! A request goes: control API? → classify → count → faults → app → token endpoint or
//! authenticate → quota → known user → [`api`] handler.

mod api;
pub mod config;
mod control;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{header, Method};
use hyper::body::{Body as _, Incoming};
use hyper::Request;
use rand::Rng;
use tokio::net::TcpListener;

pub use config::{EmulatedApp, EmulatorConfig, Faults};

use crate::route::{AppRef, Endpoint, Path};
use crate::server::{
    self, json_response, ConnLimits, ConnectionReset, HandlerResult, HttpResponse,
};
use crate::token::agora::{ParsedToken, PRIVILEGE_APP};
use crate::vendor::{self, VendorError, VendorKind};
use control::{lock, SlidingWindow, Stats};
use state::AppData;

/// The vendor's own body limit (larger bodies get 413).
const MAX_BODY_BYTES: usize = 1 << 20;

/// One emulated app: its identity, its data, its issued tokens and its quota windows.
struct App {
    config: EmulatedApp,
    application_uuid: String,
    data: Mutex<AppData>,
    /// Easemob tokens issued by the token endpoint → expiry (Unix milliseconds; `None` = never).
    issued: Mutex<HashMap<String, Option<u64>>>,
    /// Credentials that can change at run time (`PUT /__emulator/credentials`).
    secrets: Mutex<Secrets>,
    quotas: Vec<SlidingWindow>,
}

/// An app's current credentials.
#[derive(Debug, Clone)]
struct Secrets {
    /// Agora: every certificate whose signatures are accepted (the console allows a primary and
    /// a secondary one during a rotation).
    certificates: Vec<String>,
    /// Easemob: the client secret the token endpoint accepts.
    client_secret: String,
    /// Agora: tokens issued before this Unix second are revoked.
    not_before: u64,
}

/// The body of `PUT /__emulator/credentials`: the app (by `app_id`, or `org` + `app`) and its
/// new certificate or client secret.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsChange {
    app_id: Option<String>,
    org: Option<String>,
    app: Option<String>,
    app_certificate: Option<String>,
    client_secret: Option<String>,
    /// Agora: keep accepting the previous certificates too (a rotation's overlap).
    #[serde(default)]
    keep_previous: bool,
}

/// The emulator: every app, the counters and the active faults.
pub struct Emulator {
    apps: Vec<App>,
    faults: Mutex<Faults>,
    stats: Stats,
    next_msg_id: AtomicU64,
}

impl Emulator {
    /// Builds an emulator from a validated configuration.
    pub fn new(config: EmulatorConfig) -> Arc<Emulator> {
        let apps = config
            .apps
            .into_iter()
            .map(|app| {
                let quotas = Endpoint::ALL
                    .iter()
                    .map(|e| {
                        let quota = app.quotas.get(e.name()).copied();
                        SlidingWindow::new(quota.unwrap_or(vendor::default_quota(*e)))
                    })
                    .collect();
                App {
                    application_uuid: random_uuid(),
                    secrets: Mutex::new(Secrets {
                        certificates: vec![app.app_certificate.clone()],
                        client_secret: app.client_secret.clone(),
                        not_before: 0,
                    }),
                    config: app,
                    data: Mutex::new(AppData::default()),
                    issued: Mutex::new(HashMap::new()),
                    quotas,
                }
            })
            .collect();
        Arc::new(Emulator {
            apps,
            faults: Mutex::new(config.faults),
            stats: Stats::default(),
            next_msg_id: AtomicU64::new(0),
        })
    }

    /// Serves the emulator on `listener` until `shutdown` completes.
    pub async fn run(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.serve(listener, None, shutdown).await;
    }

    /// Serves the emulator on `listener` over HTTPS (as the vendor does) until `shutdown`.
    pub async fn run_tls(
        self: Arc<Self>,
        listener: TcpListener,
        tls: rustls::ServerConfig,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let tls = Arc::new(arc_swap::ArcSwap::from_pointee(tls));
        self.serve(listener, Some(tls), shutdown).await;
    }

    async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<server::TlsConfig>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let connect = move |_peer: SocketAddr| {
            let emulator = self.clone();
            move |req| {
                let emulator = emulator.clone();
                async move { emulator.handle(req).await }
            }
        };
        server::serve(listener, ConnLimits::default(), tls, connect, shutdown).await;
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request<Incoming>) -> HandlerResult {
        let (parts, body) = req.into_parts();
        if let Some(control) = parts.uri.path().strip_prefix("/__emulator/") {
            return Ok(self.control(&parts.method, control, body).await);
        }
        // Segments are decoded as the vendor decodes them (`b%6Fb` is user `bob`).
        let path = match Path::parse(parts.uri.path()) {
            Ok(path) => path,
            Err(err) => return Ok(bad_request(format!("invalid path: {err}"))),
        };
        let Some(route) = path.classify(&parts.method) else {
            let err = VendorError::new(404, "service_resource_not_found", "no such path");
            return Ok(json_response(err.status, err.body()));
        };
        self.stats.request(route.endpoint);
        if let Some(traceparent) = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
        {
            self.stats.traceparent(traceparent);
        }
        let faults = *lock(&self.faults);
        if faults.latency_ms > 0 {
            tokio::time::sleep(Duration::from_millis(faults.latency_ms)).await;
        }
        if chance(faults.reset_rate) {
            return Err(ConnectionReset);
        }
        let response = if chance(faults.error_rate) {
            let err = VendorError::new(faults.error_status, "server_error", "injected fault");
            json_response(err.status, err.body())
        } else {
            match self.answer(&parts, route, body).await {
                Ok(response) => response,
                Err(err) => json_response(err.status, err.body()),
            }
        };
        self.stats.response(response.status().as_u16());
        Ok(response)
    }

    async fn answer(
        &self,
        parts: &Parts,
        route: crate::route::Route<'_>,
        body: Incoming,
    ) -> Result<HttpResponse, VendorError> {
        let app = self.app(route.app).ok_or_else(|| {
            VendorError::new(
                404,
                "organization_application_not_found",
                "Could not find application",
            )
        })?;
        if route.endpoint == Endpoint::Token && app.config.vendor == VendorKind::Easemob {
            app.admit(Endpoint::Token)?;
            let body = read_body(body).await?;
            return api::issue_token(app, &parts.headers, &body);
        }
        app.authenticate(parts)?;
        if !vendor::content_type_accepted(route.endpoint, &parts.headers, !body.is_end_stream()) {
            return Err(api::unsupported_media_type());
        }
        app.admit(route.endpoint)?;
        if !route.user.is_empty() {
            app.check_user(route.user)?;
        }
        let body = read_body(body).await?;
        let request = api::Call {
            app_data: &app.data,
            route,
            // HTTP/2 carries the authority in the URI (`:authority`), not in a Host header.
            host: parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .or_else(|| parts.uri.authority().map(|a| a.as_str()))
                .unwrap_or("localhost"),
            path: parts.uri.path(),
            query: parts.uri.query().unwrap_or(""),
            body: &body,
        };
        api::dispatch(self, app, request)
    }

    fn app(&self, which: AppRef<'_>) -> Option<&App> {
        self.apps.iter().find(|app| match which {
            AppRef::Agora { app_id } => {
                app.config.vendor == VendorKind::Agora && app.config.app_id == app_id
            }
            AppRef::Easemob { org, app: name } => {
                app.config.vendor == VendorKind::Easemob
                    && app.config.org == org
                    && app.config.app == name
            }
        })
    }

    fn new_message_id(&self) -> String {
        // Snowflake-like: milliseconds in the high bits, a sequence in the low ones.
        let seq = self.next_msg_id.fetch_add(1, Ordering::Relaxed) & 0x3f_ffff;
        ((vendor::now_millis() << 22) | seq).to_string()
    }

    async fn control(&self, method: &Method, path: &str, body: Incoming) -> HttpResponse {
        match (method, path) {
            (&Method::GET, "stats") => json_response(200, self.stats.to_json()),
            (&Method::POST, "reset") => {
                self.stats.reset();
                json_response(200, Bytes::from_static(br#"{"result":"ok"}"#))
            }
            (&Method::GET, "faults") => self.faults_response(),
            (&Method::POST, "revoke-tokens") => {
                self.revoke_tokens();
                json_response(200, Bytes::from_static(br#"{"result":"ok"}"#))
            }
            (&Method::PUT, "credentials") => {
                let change = read_body(body)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<CredentialsChange>(&b).ok());
                match change.map(|c| self.change_credentials(c)) {
                    Some(Ok(())) => json_response(200, Bytes::from_static(br#"{"result":"ok"}"#)),
                    Some(Err(err)) => json_response(err.status, err.body()),
                    None => bad_request("body must be a JSON credentials change".into()),
                }
            }
            (&Method::PUT, "faults") => {
                let parsed = read_body(body)
                    .await
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Faults>(&b).ok());
                match parsed.map(|f| f.validate().map(|()| f)) {
                    Some(Ok(faults)) => {
                        *lock(&self.faults) = faults;
                        self.faults_response()
                    }
                    Some(Err(msg)) => bad_request(msg),
                    None => bad_request("body must be a JSON faults object".into()),
                }
            }
            _ => {
                let err = VendorError::new(
                    404,
                    "service_resource_not_found",
                    "no such control endpoint",
                );
                json_response(404, err.body())
            }
        }
    }

    /// Every Easemob token issued so far, and every Agora token issued before this second,
    /// stops working.
    fn revoke_tokens(&self) {
        let now = vendor::now_secs();
        for app in &self.apps {
            lock(&app.issued).clear();
            lock(&app.secrets).not_before = now;
        }
    }

    fn change_credentials(&self, change: CredentialsChange) -> Result<(), VendorError> {
        let which = match (&change.app_id, &change.org, &change.app) {
            (Some(app_id), None, None) => AppRef::Agora { app_id },
            (None, Some(org), Some(app)) => AppRef::Easemob { org, app },
            _ => {
                return Err(VendorError::new(
                    400,
                    "illegal_argument",
                    "name the app by app_id, or by org and app",
                ))
            }
        };
        let app = self.app(which).ok_or_else(|| {
            VendorError::new(404, "organization_application_not_found", "no such app")
        })?;
        let mut secrets = lock(&app.secrets);
        match (
            app.config.vendor,
            change.app_certificate,
            change.client_secret,
        ) {
            (VendorKind::Agora, Some(certificate), None) => {
                if !change.keep_previous {
                    secrets.certificates.clear();
                }
                secrets.certificates.retain(|c| *c != certificate);
                secrets.certificates.insert(0, certificate);
                Ok(())
            }
            (VendorKind::Easemob, None, Some(secret)) => {
                secrets.client_secret = secret;
                Ok(())
            }
            _ => Err(VendorError::new(
                400,
                "illegal_argument",
                "give app_certificate for an Agora app or client_secret for an Easemob app",
            )),
        }
    }

    fn faults_response(&self) -> HttpResponse {
        let faults = *lock(&self.faults);
        json_response(
            200,
            Bytes::from(serde_json::to_vec(&faults).unwrap_or_default()),
        )
    }
}

impl App {
    fn admit(&self, endpoint: Endpoint) -> Result<(), VendorError> {
        if self.quotas[endpoint.index()].try_admit(Instant::now()) {
            Ok(())
        } else {
            Err(VendorError::new(
                429,
                "reach_limit",
                "This request has reached api limit",
            ))
        }
    }

    fn check_user(&self, user: &str) -> Result<(), VendorError> {
        match &self.config.users {
            Some(known) if !known.iter().any(|u| u == user) => Err(VendorError::new(
                404,
                "service_resource_not_found",
                format!("Service resource not found: user {user} does not exist"),
            )),
            _ => Ok(()),
        }
    }

    fn authenticate(&self, parts: &Parts) -> Result<(), VendorError> {
        let unauthorized =
            || VendorError::new(401, "unauthorized", "Unable to authenticate (OAuth)");
        let corrupt = || {
            VendorError::new(
                401,
                "auth_bad_access_token",
                "Unable to authenticate due to corrupt access token",
            )
        };
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(unauthorized)?;
        match self.config.vendor {
            VendorKind::Agora => {
                let parsed = ParsedToken::parse(token).map_err(|_| corrupt())?;
                let secrets = lock(&self.secrets).clone();
                if parsed.spec.app_id != self.config.app_id
                    || !secrets.certificates.iter().any(|c| parsed.verify(c))
                {
                    return Err(corrupt());
                }
                let now = vendor::now_secs();
                match parsed.valid_until(PRIVILEGE_APP) {
                    None => Err(corrupt()),
                    Some(until) if until <= now => Err(unauthorized()),
                    Some(_) if u64::from(parsed.spec.issue_ts) < secrets.not_before => {
                        Err(unauthorized())
                    }
                    Some(_) => Ok(()),
                }
            }
            VendorKind::Easemob => match lock(&self.issued).get(token) {
                None => Err(corrupt()),
                Some(Some(until)) if *until <= vendor::now_millis() => Err(unauthorized()),
                Some(_) => Ok(()),
            },
        }
    }
}

async fn read_body(body: Incoming) -> Result<Bytes, VendorError> {
    server::read_body(
        body,
        MAX_BODY_BYTES,
        ConnLimits::default().body_read_timeout,
    )
    .await
    .map_err(|err| match err {
        server::BodyError::TooLarge(_) => {
            VendorError::new(413, "Request Entity Too Large", "Request Entity Too Large")
        }
        server::BodyError::Read => {
            VendorError::new(400, "json_parse", "request body could not be read")
        }
        server::BodyError::Timeout(_) => {
            VendorError::new(408, "request_timeout", "request body not received in time")
        }
    })
}

fn bad_request(msg: String) -> HttpResponse {
    json_response(400, VendorError::new(400, "illegal_argument", msg).body())
}

fn chance(rate: f64) -> bool {
    rate > 0.0 && rand::thread_rng().gen_bool(rate.min(1.0))
}

fn random_uuid() -> String {
    let digits: [u8; 32] = crate::trace::random_hex();
    let hex = String::from_utf8_lossy(&digits);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}
