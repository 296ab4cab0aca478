//! `[cluster]`: the Redis that several replicas share. Absent: one process, no Redis.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{resolve_secret, ConfigError};

/// Longest key prefix: every key imgate writes starts with it.
const MAX_PREFIX: usize = 64;

/// `[cluster]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    /// `redis://[user:password@]host[:port][/db]`, `rediss://…` (TLS) or `unix:///path`; a
    /// secret (it may hold a password): `${ENV}` or `file:` like every secret.
    pub redis_url: String,
    /// Every key imgate writes starts with this.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Longest wait for one Redis call, ms; past it the call counts as failed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_prefix() -> String {
    "imgate:".into()
}

fn default_timeout_ms() -> u64 {
    50
}

/// Validated `[cluster]`.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    /// Where Redis is (holds a password when the URL does).
    pub redis_url: SecretString,
    /// The prefix of every key.
    pub key_prefix: String,
    /// Longest wait for one Redis call.
    pub timeout: Duration,
}

fn bad(field: &str, message: &str) -> ConfigError {
    ConfigError {
        field: format!("cluster.{field}"),
        message: message.into(),
    }
}

impl RawCluster {
    /// Checks the section and resolves the URL; errors never repeat the URL (it may hold a
    /// password).
    pub fn validate(&self) -> Result<ClusterSettings, ConfigError> {
        let redis_url = resolve_secret("cluster.redis_url", &self.redis_url)?;
        check_url(redis_url.expose_secret()).map_err(|message| bad("redis_url", message))?;
        let prefix = &self.key_prefix;
        if prefix.is_empty()
            || prefix.len() > MAX_PREFIX
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(bad(
                "key_prefix",
                "must be 1 to 64 printable characters without spaces, '{' or '}'",
            ));
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err(bad("timeout_ms", "must be between 1 and 10000"));
        }
        Ok(ClusterSettings {
            redis_url,
            key_prefix: prefix.clone(),
            timeout: Duration::from_millis(self.timeout_ms),
        })
    }

    /// This section with its URL masked.
    pub fn masked(&self, mask: &str) -> RawCluster {
        RawCluster {
            redis_url: mask.into(),
            ..self.clone()
        }
    }
}

/// Why `url` is not a Redis URL imgate can use (a fixed message: never the URL itself).
fn check_url(url: &str) -> Result<(), &'static str> {
    const SHAPE: &str =
        "not a Redis URL: redis://[user:password@]host[:port][/db], rediss://… or unix:///path";
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    if !matches!(scheme, Some("redis" | "rediss" | "unix" | "redis+unix")) {
        return Err(SHAPE);
    }
    redis::IntoConnectionInfo::into_connection_info(url)
        .map(drop)
        .map_err(|_| SHAPE)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(url: &str) -> RawCluster {
        RawCluster {
            redis_url: url.into(),
            key_prefix: default_prefix(),
            timeout_ms: default_timeout_ms(),
        }
    }

    #[test]
    fn good_urls_are_accepted_with_defaults() {
        for url in [
            "redis://127.0.0.1:6379/0",
            "redis://:s3cret@redis.internal:6380/2",
            "rediss://user:pw@redis.example.com",
            "unix:///run/redis.sock",
        ] {
            let settings = raw(url).validate().unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(settings.key_prefix, "imgate:");
            assert_eq!(settings.timeout, Duration::from_millis(50));
        }
    }

    #[test]
    fn malformed_urls_are_refused_naming_the_field_but_not_the_password() {
        for url in [
            "127.0.0.1:6379",
            "http://:hunter22@127.0.0.1:6379",
            "redis://:hunter22@127.0.0.1:notaport",
            "redis://",
        ] {
            let err = raw(url).validate().unwrap_err();
            assert_eq!(err.field, "cluster.redis_url", "{url}");
            assert!(!err.to_string().contains("hunter22"), "{err}");
        }
    }

    #[test]
    fn the_prefix_and_timeout_are_checked() {
        let mut r = raw("redis://127.0.0.1");
        r.key_prefix = "a{b}".into();
        assert_eq!(r.validate().unwrap_err().field, "cluster.key_prefix");
        r.key_prefix = String::new();
        assert_eq!(r.validate().unwrap_err().field, "cluster.key_prefix");
        r.key_prefix = "x:".into();
        r.timeout_ms = 0;
        assert_eq!(r.validate().unwrap_err().field, "cluster.timeout_ms");
    }

    #[test]
    fn the_url_comes_from_the_environment_and_is_masked() {
        std::env::set_var("IMGATE_TEST_REDIS_URL", "redis://:pw@127.0.0.1:1/0");
        let r = raw("${IMGATE_TEST_REDIS_URL}");
        let settings = r.validate().unwrap();
        assert_eq!(
            settings.redis_url.expose_secret(),
            "redis://:pw@127.0.0.1:1/0"
        );
        assert_eq!(r.masked("***").redis_url, "***");
        assert!(!format!("{settings:?}").contains("pw@"));
    }
}
