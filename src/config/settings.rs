//! The validated, typed configuration.

use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use secrecy::{ExposeSecret, SecretString};

use super::LogFormat;
use crate::cache::CacheSettings;
use crate::cluster::ClusterSettings;
use crate::limit::{LimitPolicy, WaitPolicy};
use crate::route::{Endpoint, EndpointSet};
use crate::server::ConnLimits;
use crate::token::TokenPolicy;
use crate::vendor::VendorKind;

/// Validated, typed settings.
#[derive(Debug)]
pub struct Settings {
    /// API listener address.
    pub listen: SocketAddr,
    /// Admin listener address.
    pub admin_listen: SocketAddr,
    /// Largest request body, bytes.
    pub max_body_bytes: usize,
    /// Connection guards for both listeners.
    pub conn_limits: ConnLimits,
    /// How long the listeners keep accepting after a shutdown signal.
    pub shutdown_delay: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (when `RUST_LOG` is not set).
    pub log_level: String,
    /// Upstream client settings.
    pub upstream: UpstreamSettings,
    /// Admin API key.
    pub admin_key: Option<SecretString>,
    /// App-token renewal policy.
    pub token_policy: TokenPolicy,
    /// Lifetime of issued client tokens.
    pub client_token_ttl: Duration,
    /// Key that signs client tokens, when configured.
    pub client_token_key: Option<SecretString>,
    /// Wrong client credentials per source address and minute at the token endpoint.
    pub client_token_failures: u32,
    /// The read cache's policies.
    pub cache: CacheSettings,
    /// How long and how many calls wait for vendor permits.
    pub vendor_wait: WaitPolicy,
    /// The apps.
    pub apps: Vec<AppSettings>,
    /// The clients.
    pub clients: Vec<ClientSettings>,
    /// What works but is risky in production (`check-config` prints them, `serve` logs them).
    pub warnings: Vec<super::ConfigError>,
    /// The shared Redis of several replicas (`None`: one process on its own).
    pub cluster: Option<ClusterSettings>,
}

/// Typed `[upstream]`.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Whole-call timeout.
    pub timeout: Duration,
    /// Idle connection lifetime.
    pub pool_idle_timeout: Duration,
    /// Idle connections per host.
    pub pool_max_idle_per_host: usize,
    /// Forward unknown endpoints.
    pub forward_other: bool,
}

/// A validated app.
#[derive(Debug)]
pub struct AppSettings {
    /// imgate's name for it.
    pub name: String,
    /// Vendor base URL: scheme and authority only.
    pub upstream: Uri,
    /// How its app token is obtained.
    pub credentials: Credentials,
    /// The vendor quota imgate may use per endpoint ([`Endpoint::index`]), calls per second.
    pub vendor_quotas: [u32; Endpoint::ALL.len()],
}

/// The credentials of an app, per vendor.
#[derive(Debug)]
pub enum Credentials {
    /// Agora: AccessToken2 minted from App ID + App Certificate.
    Agora {
        /// App ID.
        app_id: String,
        /// App Certificate.
        certificate: SecretString,
        /// Token lifetime, seconds.
        expire_secs: u32,
    },
    /// Easemob: client credentials exchanged at the token endpoint.
    Easemob {
        /// Org name.
        org: String,
        /// App name.
        app: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
        /// Requested `ttl`, seconds.
        ttl_secs: Option<u64>,
    },
}

impl Credentials {
    /// Whether both name the same app with the same secrets (a reload keeps the app's token).
    pub fn same_as(&self, other: &Credentials) -> bool {
        match (self, other) {
            (
                Credentials::Agora {
                    app_id,
                    certificate,
                    expire_secs,
                },
                Credentials::Agora {
                    app_id: id2,
                    certificate: cert2,
                    expire_secs: exp2,
                },
            ) => {
                app_id == id2
                    && certificate.expose_secret() == cert2.expose_secret()
                    && expire_secs == exp2
            }
            (
                Credentials::Easemob {
                    org,
                    app,
                    client_id,
                    client_secret,
                    ttl_secs,
                },
                Credentials::Easemob {
                    org: o2,
                    app: a2,
                    client_id: id2,
                    client_secret: s2,
                    ttl_secs: t2,
                },
            ) => {
                org == o2
                    && app == a2
                    && client_id == id2
                    && client_secret.expose_secret() == s2.expose_secret()
                    && ttl_secs == t2
            }
            _ => false,
        }
    }

    /// The vendor these credentials belong to.
    pub fn vendor(&self) -> VendorKind {
        match self {
            Credentials::Agora { .. } => VendorKind::Agora,
            Credentials::Easemob { .. } => VendorKind::Easemob,
        }
    }
}

/// A validated client.
#[derive(Debug)]
pub struct ClientSettings {
    /// Its name.
    pub name: String,
    /// SHA-256 of its key.
    pub key_sha256: [u8; 32],
    /// Apps it may use (`None`: all).
    pub apps: Option<Vec<String>>,
    /// Its quota (`None`: unlimited).
    pub rate_limit: Option<LimitPolicy>,
    /// The endpoints it may call.
    pub endpoints: EndpointSet,
}
