//! The gateway's shared state ([`Gateway`]) and its one entry point, [`run`], which `main` and
//! the integration tests both call with listeners they bound themselves.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Uri};
use hyper::body::Incoming;
use hyper::Request;
use prometheus::Registry;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::auth::Clients;
use crate::config::{Credentials, Settings};
use crate::metrics::Metrics;
use crate::pipeline;
use crate::route::AppRef;
use crate::server::{self, json_response, ConnLimits, HttpResponse};
use crate::token::TokenSource;
use crate::upstream::Upstream;

/// One fronted vendor app.
pub struct App {
    /// imgate's name for it (the `app` label).
    pub name: String,
    /// Vendor base URL (scheme + authority).
    pub base: Uri,
    /// The vendor's identifiers, as the path prefix carries them.
    identity: Identity,
    /// Its app token.
    pub tokens: TokenSource,
}

enum Identity {
    Agora { app_id: String },
    Easemob { org: String, app: String },
}

/// Everything a request needs, built once from validated settings.
pub struct Gateway {
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Forward endpoints imgate does not know.
    pub forward_other: bool,
    /// Connection guards of both listeners.
    pub conn_limits: ConnLimits,
    /// Admin API key (used by the admin endpoints of later versions).
    pub admin_key: Option<SecretString>,
    /// The apps, in configuration order.
    pub apps: Vec<App>,
    /// The callers.
    pub clients: Clients,
    /// The pooled vendor client.
    pub upstream: Upstream,
    /// The metrics.
    pub metrics: Metrics,
}

/// The two listeners the gateway serves.
pub struct Listeners {
    /// The API listener that callers use.
    pub api: TcpListener,
    /// The admin listener (`/healthz`, `/metrics`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds both addresses.
    pub async fn bind(api: SocketAddr, admin: SocketAddr) -> std::io::Result<Listeners> {
        Ok(Listeners {
            api: TcpListener::bind(api).await?,
            admin: TcpListener::bind(admin).await?,
        })
    }
}

impl Gateway {
    /// Builds the gateway from settings; its metrics go into `registry`.
    pub fn new(settings: Settings, registry: Registry) -> Result<Arc<Gateway>, prometheus::Error> {
        let apps: Vec<App> = settings
            .apps
            .into_iter()
            .map(|app| {
                let identity = match &app.credentials {
                    Credentials::Agora { app_id, .. } => Identity::Agora {
                        app_id: app_id.clone(),
                    },
                    Credentials::Easemob { org, app, .. } => Identity::Easemob {
                        org: org.clone(),
                        app: app.clone(),
                    },
                };
                App {
                    name: app.name,
                    tokens: TokenSource::new(app.credentials, app.upstream.clone()),
                    base: app.upstream,
                    identity,
                }
            })
            .collect();
        let clients = Clients::new(&settings.clients, |name| {
            apps.iter().position(|a| a.name == name)
        });
        Ok(Arc::new(Gateway {
            max_body_bytes: settings.max_body_bytes,
            forward_other: settings.upstream.forward_other,
            conn_limits: settings.conn_limits,
            admin_key: settings.admin_key,
            upstream: Upstream::new(&settings.upstream),
            metrics: Metrics::new(registry)?,
            apps,
            clients,
        }))
    }

    /// The app a path prefix addresses, with its index.
    pub fn app(&self, which: AppRef<'_>) -> Option<(usize, &App)> {
        self.apps
            .iter()
            .enumerate()
            .find(|(_, app)| match (&app.identity, which) {
                // Agora App IDs are hex; callers may write them in either case.
                (Identity::Agora { app_id }, AppRef::Agora { app_id: asked }) => {
                    app_id.eq_ignore_ascii_case(asked)
                }
                (Identity::Easemob { org, app }, AppRef::Easemob { org: o, app: a }) => {
                    org == o && app == a
                }
                _ => false,
            })
    }

    async fn admin(&self, req: Request<Incoming>) -> HttpResponse {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => {
                json_response(200, Bytes::from_static(br#"{"status":"ok"}"#))
            }
            (&Method::GET, "/metrics") => {
                let mut response = json_response(200, Bytes::from(self.metrics.encode()));
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            _ => json_response(
                404,
                crate::vendor::error_body(
                    "imgate_no_route",
                    "ImgateException",
                    "no admin endpoint at this path",
                ),
            ),
        }
    }
}

/// Serves the API and admin listeners until `shutdown` completes, then drains both.
pub async fn run(listeners: Listeners, gateway: Arc<Gateway>, shutdown: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api_gateway = gateway.clone();
    let api = server::serve(
        listeners.api,
        gateway.conn_limits.clone(),
        move |req, _peer| {
            let gateway = api_gateway.clone();
            async move { Ok(pipeline::handle(&gateway, req).await) }
        },
        signal(stopped.clone()),
    );
    let admin_gateway = gateway.clone();
    let admin = server::serve(
        listeners.admin,
        gateway.conn_limits.clone(),
        move |req, _peer| {
            let gateway = admin_gateway.clone();
            async move { Ok(gateway.admin(req).await) }
        },
        signal(stopped),
    );
    let trigger = async move {
        shutdown.await;
        let _ = stop.send(true);
    };
    tokio::join!(api, admin, trigger);
}
