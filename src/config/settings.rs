//! The validated, typed configuration.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use secrecy::SecretString;

use super::LogFormat;
use crate::cache::CacheSettings;
use crate::cluster::ClusterSettings;
use crate::limit::{LimitPolicy, WaitPolicy};
use crate::route::{Endpoint, EndpointSet};
use crate::server::ConnLimits;
pub use crate::token::Credentials;
use crate::token::TokenPolicy;

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
    /// TLS of the API listener, when it serves HTTPS (read from `tls_cert` and `tls_key`).
    pub api_tls: Option<Arc<rustls::ServerConfig>>,
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
    /// TLS toward the vendor: the roots it trusts.
    pub tls: Arc<rustls::ClientConfig>,
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
