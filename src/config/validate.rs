//! The checks that turn a [`RawConfig`] into [`Settings`].

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use http::Uri;
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};

use super::{
    bad, resolve_secret, AppSettings, ClientSettings, ConfigError, Credentials, RawApp, RawCache,
    RawCachePolicy, RawClient, RawConfig, RawRate, Settings, UpstreamSettings,
};
use crate::cache::{CachePolicy, CacheSettings};
use crate::limit::{LimitPolicy, WaitPolicy};
use crate::route::Endpoint;
use crate::server::ConnLimits;
use crate::token::TokenPolicy;
use crate::vendor::{self, VendorKind};

impl RawConfig {
    /// Checks everything, resolves secrets, and builds typed settings.
    pub fn validate(&self) -> Result<Settings, ConfigError> {
        let s = &self.server;
        let u = &self.upstream;
        let positive = |field: &str, v: u64| {
            if v == 0 {
                Err(bad(field, "must be greater than 0"))
            } else {
                Ok(Duration::from_millis(v))
            }
        };
        if s.max_body_bytes == 0 {
            return Err(bad("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_connections == 0 {
            return Err(bad("server.max_connections", "must be greater than 0"));
        }
        if u.pool_max_idle_per_host == 0 {
            return Err(bad(
                "upstream.pool_max_idle_per_host",
                "must be greater than 0",
            ));
        }
        let conn_limits = ConnLimits {
            first_byte_timeout: positive(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
            )?,
            header_read_timeout: positive(
                "server.header_read_timeout_ms",
                s.header_read_timeout_ms,
            )?,
            max_connections: s.max_connections,
            drain_timeout: Duration::from_millis(s.drain_timeout_ms),
        };
        let upstream = UpstreamSettings {
            connect_timeout: positive("upstream.connect_timeout_ms", u.connect_timeout_ms)?,
            timeout: positive("upstream.timeout_ms", u.timeout_ms)?,
            pool_idle_timeout: positive("upstream.pool_idle_timeout_ms", u.pool_idle_timeout_ms)?,
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            forward_other: u.forward_other,
        };
        if self.apps.is_empty() {
            return Err(bad("apps", "at least one app is required"));
        }
        let apps = self
            .apps
            .iter()
            .enumerate()
            .map(|(i, app)| validate_app(&format!("apps[{i}]"), app))
            .collect::<Result<Vec<_>, _>>()?;
        unique("apps", "name", self.apps.iter().map(|a| a.name.as_str()))?;
        unique(
            "apps",
            "vendor app",
            apps.iter().map(|a| vendor_identity(&a.credentials)),
        )?;
        let app_names: HashSet<&str> = self.apps.iter().map(|a| a.name.as_str()).collect();
        let client_default = self
            .limits
            .client_default
            .map(|r| rate("limits.client_default", r))
            .transpose()?;
        let clients = self
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| validate_client(&format!("clients[{i}]"), c, &app_names, client_default))
            .collect::<Result<Vec<_>, _>>()?;
        unique(
            "clients",
            "name",
            self.clients.iter().map(|c| c.name.as_str()),
        )?;
        unique("clients", "key", clients.iter().map(|c| hex(&c.key_sha256)))?;
        let admin_key = self
            .admin
            .key
            .as_deref()
            .map(|k| resolve_secret("admin.key", k))
            .transpose()?;
        let t = &self.tokens;
        if !(t.refresh_fraction > 0.0 && t.refresh_fraction < 1.0) {
            return Err(bad(
                "tokens.refresh_fraction",
                "must be between 0 and 1 (exclusive)",
            ));
        }
        if !(0.0..1.0).contains(&t.refresh_jitter) {
            return Err(bad(
                "tokens.refresh_jitter",
                "must be at least 0 and below 1",
            ));
        }
        if t.max_fetches_per_minute == 0 {
            return Err(bad(
                "tokens.max_fetches_per_minute",
                "must be greater than 0",
            ));
        }
        if t.retry_max_ms < t.retry_initial_ms {
            return Err(bad(
                "tokens.retry_max_ms",
                "must be at least retry_initial_ms",
            ));
        }
        let token_policy = TokenPolicy {
            refresh_fraction: t.refresh_fraction,
            refresh_jitter: t.refresh_jitter,
            max_fetches_per_minute: t.max_fetches_per_minute,
            retry_initial: Duration::from_millis(t.retry_initial_ms),
            retry_max: Duration::from_millis(t.retry_max_ms),
        };
        let ct = &self.client_tokens;
        if ct.ttl_secs == 0 {
            return Err(bad("client_tokens.ttl_secs", "must be greater than 0"));
        }
        let client_token_key = ct
            .signing_key
            .as_deref()
            .map(|k| resolve_secret("client_tokens.signing_key", k))
            .transpose()?;
        if client_token_key
            .as_ref()
            .is_some_and(|k| k.expose_secret().len() < 32)
        {
            return Err(bad(
                "client_tokens.signing_key",
                "must be at least 32 characters",
            ));
        }
        let cache = validate_cache(&self.cache)?;
        if self.limits.max_waiters == 0 {
            return Err(bad("limits.max_waiters", "must be greater than 0"));
        }
        let vendor_wait = WaitPolicy {
            max_wait: Duration::from_millis(self.limits.max_wait_ms),
            max_waiters: self.limits.max_waiters,
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(bad(
                "log.level",
                "not a log filter (e.g. info, or info,imgate::access=warn)",
            ));
        }
        Ok(Settings {
            shutdown_delay: Duration::from_millis(s.shutdown_delay_ms),
            log_format: self.log.format,
            log_level: self.log.level.clone(),
            cache,
            vendor_wait,
            token_policy,
            client_token_ttl: Duration::from_secs(ct.ttl_secs),
            client_token_key,
            listen: address("server.listen", &s.listen)?,
            admin_listen: address("server.admin_listen", &s.admin_listen)?,
            max_body_bytes: s.max_body_bytes,
            conn_limits,
            upstream,
            admin_key,
            apps,
            clients,
        })
    }
}

fn validate_cache(raw: &RawCache) -> Result<CacheSettings, ConfigError> {
    let policy =
        |name: &str, p: &RawCachePolicy, extras: &[&str]| -> Result<CachePolicy, ConfigError> {
            let present = [
                ("delivered_ttl_ms", p.delivered_ttl_ms.is_some()),
                ("batch_window_ms", p.batch_window_ms.is_some()),
                ("max_batch_users", p.max_batch_users.is_some()),
            ];
            if let Some((field, _)) = present.iter().find(|(f, set)| *set && !extras.contains(f)) {
                return Err(bad(
                    format!("cache.{name}.{field}"),
                    "not used by this cache",
                ));
            }
            if p.max_entries == 0 {
                return Err(bad(
                    format!("cache.{name}.max_entries"),
                    "must be greater than 0",
                ));
            }
            Ok(CachePolicy {
                ttl: Duration::from_millis(p.ttl_ms),
                stale_while_revalidate: Duration::from_millis(p.stale_while_revalidate_ms),
                stale_if_error: Duration::from_millis(p.stale_if_error_ms),
                max_entries: p.max_entries,
            })
        };
    let presence = &raw.presence;
    let max_batch_users = presence.max_batch_users.unwrap_or(vendor::MAX_USERNAMES);
    if !(1..=vendor::MAX_USERNAMES).contains(&max_batch_users) {
        return Err(bad(
            "cache.presence.max_batch_users",
            "must be between 1 and 100",
        ));
    }
    let batch_window = Duration::from_millis(presence.batch_window_ms.unwrap_or(2));
    if batch_window > Duration::from_secs(1) {
        return Err(bad("cache.presence.batch_window_ms", "at most 1000"));
    }
    Ok(CacheSettings {
        offline_count: policy("offline_count", &raw.offline_count, &[])?,
        offline_status: policy("offline_status", &raw.offline_status, &["delivered_ttl_ms"])?,
        delivered_ttl: Duration::from_millis(
            raw.offline_status.delivered_ttl_ms.unwrap_or(3_600_000),
        ),
        presence: policy(
            "presence",
            presence,
            &["batch_window_ms", "max_batch_users"],
        )?,
        sublist: policy("sublist", &raw.sublist, &[])?,
        batch_window,
        max_batch_users,
    })
}

fn vendor_identity(credentials: &Credentials) -> String {
    match credentials {
        Credentials::Agora { app_id, .. } => format!("app-id/{}", app_id.to_ascii_lowercase()),
        Credentials::Easemob { org, app, .. } => format!("{org}/{app}"),
    }
}

fn unique<T: Eq + std::hash::Hash + std::fmt::Display>(
    list: &str,
    what: &str,
    items: impl Iterator<Item = T>,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for (i, item) in items.enumerate() {
        if !seen.insert(item) {
            return Err(bad(format!("{list}[{i}]"), format!("duplicate {what}")));
        }
    }
    Ok(())
}

fn address(field: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| bad(field, format!("not an IP address with port: {text:?}")))
}

fn required<'a>(
    field: &str,
    value: &'a Option<String>,
    vendor: &str,
) -> Result<&'a str, ConfigError> {
    match value.as_deref() {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(field, format!("required for a {vendor} app"))),
    }
}

fn validate_app(at: &str, app: &RawApp) -> Result<AppSettings, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    if app.name.is_empty()
        || !app
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(bad(
            field("name"),
            "must be non-empty letters, digits, '-' or '_'",
        ));
    }
    let upstream = upstream_base(&field("upstream"), &app.upstream)?;
    let only = |name: &str, value: bool, vendor: &str| {
        if value {
            Err(bad(field(name), format!("not used by a {vendor} app")))
        } else {
            Ok(())
        }
    };
    let credentials = match app.vendor {
        VendorKind::Agora => {
            for (name, set) in [
                ("org", app.org.is_some()),
                ("app", app.app.is_some()),
                ("client_id", app.client_id.is_some()),
                ("client_secret", app.client_secret.is_some()),
                ("token_ttl_secs", app.token_ttl_secs.is_some()),
            ] {
                only(name, set, "agora")?;
            }
            let app_id = required(&field("app_id"), &app.app_id, "agora")?;
            if !vendor::is_agora_hex(app_id) {
                return Err(bad(field("app_id"), "must be 32 hex characters"));
            }
            let certificate = resolve_secret(
                &field("app_certificate"),
                required(&field("app_certificate"), &app.app_certificate, "agora")?,
            )?;
            if !vendor::is_agora_hex(certificate.expose_secret()) {
                return Err(bad(field("app_certificate"), "must be 32 hex characters"));
            }
            let expire_secs = app
                .token_expire_secs
                .unwrap_or(vendor::MAX_AGORA_EXPIRE_SECS);
            if !(1..=vendor::MAX_AGORA_EXPIRE_SECS).contains(&expire_secs) {
                return Err(bad(
                    field("token_expire_secs"),
                    "must be between 1 and 86400",
                ));
            }
            Credentials::Agora {
                app_id: app_id.to_owned(),
                certificate,
                expire_secs,
            }
        }
        VendorKind::Easemob => {
            for (name, set) in [
                ("app_id", app.app_id.is_some()),
                ("app_certificate", app.app_certificate.is_some()),
                ("token_expire_secs", app.token_expire_secs.is_some()),
            ] {
                only(name, set, "easemob")?;
            }
            let segment = |name: &str, value: &Option<String>| -> Result<String, ConfigError> {
                let v = required(&field(name), value, "easemob")?;
                if v.contains('/') || v == "app-id" {
                    return Err(bad(
                        field(name),
                        "must be a single path segment other than app-id",
                    ));
                }
                Ok(v.to_owned())
            };
            let client_secret = resolve_secret(
                &field("client_secret"),
                required(&field("client_secret"), &app.client_secret, "easemob")?,
            )?;
            Credentials::Easemob {
                org: segment("org", &app.org)?,
                app: segment("app", &app.app)?,
                client_id: required(&field("client_id"), &app.client_id, "easemob")?.to_owned(),
                client_secret,
                ttl_secs: app.token_ttl_secs,
            }
        }
    };
    let share = app.vendor_quota_share.unwrap_or(1.0);
    if !(share > 0.0 && share <= 1.0) {
        return Err(bad(
            field("vendor_quota_share"),
            "must be above 0 and at most 1",
        ));
    }
    let mut vendor_quotas = Endpoint::ALL.map(vendor::default_quota);
    for (name, quota) in &app.vendor_quotas {
        let endpoint = Endpoint::from_name(name)
            .ok_or_else(|| bad(field(&format!("vendor_quotas.{name}")), "unknown endpoint"))?;
        if *quota == 0 {
            return Err(bad(
                field(&format!("vendor_quotas.{name}")),
                "must be greater than 0",
            ));
        }
        vendor_quotas[endpoint.index()] = *quota;
    }
    // The share never rounds a quota down to nothing.
    let vendor_quotas = vendor_quotas.map(|q| ((f64::from(q) * share).floor() as u32).max(1));
    Ok(AppSettings {
        name: app.name.clone(),
        upstream,
        credentials,
        vendor_quotas,
    })
}

fn upstream_base(field: &str, text: &str) -> Result<Uri, ConfigError> {
    let uri: Uri = text
        .parse()
        .map_err(|_| bad(field, format!("not a URL: {text:?}")))?;
    match uri.scheme_str() {
        Some("https" | "http") => {}
        _ => {
            return Err(bad(
                field,
                "must start with https:// (or http:// for the emulator)",
            ))
        }
    }
    if uri.authority().is_none() {
        return Err(bad(field, "must name a host"));
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(bad(field, "must be scheme and host only, without a path"));
    }
    Ok(uri)
}

fn validate_client(
    at: &str,
    client: &RawClient,
    apps: &HashSet<&str>,
    default_rate: Option<LimitPolicy>,
) -> Result<ClientSettings, ConfigError> {
    let field = |name: &str| format!("{at}.{name}");
    if client.name.is_empty() {
        return Err(bad(field("name"), "must not be empty"));
    }
    let key_sha256 = match (&client.key, &client.key_sha256) {
        (Some(key), None) => {
            let key = resolve_secret(&field("key"), key)?;
            if key.expose_secret().len() < 8 {
                return Err(bad(field("key"), "must be at least 8 characters"));
            }
            Sha256::digest(key.expose_secret().as_bytes()).into()
        }
        (None, Some(hash)) => parse_sha256(hash)
            .ok_or_else(|| bad(field("key_sha256"), "must be 64 hex characters"))?,
        _ => return Err(bad(field("key"), "give exactly one of key and key_sha256")),
    };
    if let Some(list) = &client.apps {
        if let Some(unknown) = list.iter().find(|a| !apps.contains(a.as_str())) {
            return Err(bad(field("apps"), format!("no app named {unknown:?}")));
        }
    }
    let rate_limit = match client.rate_limit {
        Some(r) => Some(rate(&field("rate_limit"), r)?),
        None => default_rate,
    };
    Ok(ClientSettings {
        name: client.name.clone(),
        key_sha256,
        apps: client.apps.clone(),
        rate_limit,
    })
}

fn rate(field: &str, raw: RawRate) -> Result<LimitPolicy, ConfigError> {
    let burst = raw.burst.unwrap_or(raw.per_second);
    if raw.per_second == 0 || burst == 0 {
        return Err(bad(field, "per_second and burst must be greater than 0"));
    }
    Ok(LimitPolicy {
        per_second: raw.per_second,
        burst,
    })
}

fn parse_sha256(hex_text: &str) -> Option<[u8; 32]> {
    if hex_text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex_text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::TEST_CONFIG as GOOD;
    use super::*;

    fn error_of(text: &str) -> String {
        RawConfig::parse(text)
            .and_then(|c| c.validate())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn a_complete_config_validates_with_defaults() {
        let s = RawConfig::parse(GOOD).unwrap().validate().unwrap();
        assert_eq!(s.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(s.max_body_bytes, 65536);
        assert_eq!(s.apps.len(), 2);
        assert!(matches!(
            s.apps[0].credentials,
            Credentials::Agora {
                expire_secs: 86400,
                ..
            }
        ));
        assert_eq!(
            s.clients[0].key_sha256,
            <[u8; 32]>::from(Sha256::digest(b"svc-key-123"))
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad_id = GOOD.replace("a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6", "xyz");
        assert_eq!(
            error_of(&bad_id),
            "apps[0].app_id: must be 32 hex characters"
        );
        let no_secret = GOOD.replace("client_secret = \"secret\"", "");
        assert_eq!(
            error_of(&no_secret),
            "apps[1].client_secret: required for a easemob app"
        );
        let bad_url = GOOD.replace("http://127.0.0.1:8081", "ftp://x");
        assert!(error_of(&bad_url).starts_with("apps[1].upstream:"));
        let bad_client_app = GOOD.replace("apps = [\"a\"]", "apps = [\"zz\"]");
        assert!(error_of(&bad_client_app).starts_with("clients[0].apps:"));
        assert!(error_of("[server]\nlisten = 5").starts_with("config:"));
        assert!(error_of(&format!("{GOOD}\n[server]\nmax_body_bytes = 0"))
            .starts_with("server.max_body_bytes"));
    }

    #[test]
    fn client_keys_may_be_given_as_sha256() {
        let hash = hex(&Sha256::digest(b"svc-key-123"));
        let text = GOOD.replace("key = \"svc-key-123\"", &format!("key_sha256 = \"{hash}\""));
        let s = RawConfig::parse(&text).unwrap().validate().unwrap();
        assert_eq!(hex(&s.clients[0].key_sha256), hash);
    }
}
