//! App tokens: how imgate obtains the vendor credential it injects into every forwarded call.
//!
//! One [`TokenSource`] per app holds the current token and renews it before it expires:
//! Agora tokens are minted locally ([`agora`]); Easemob tokens come from the vendor's token
//! endpoint with the app's client credentials. Renewal is single-flight, so a burst of requests
//! needing a new token causes one mint or fetch.

pub mod agora;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};

use crate::config::Credentials;
use crate::upstream::{vendor_uri, Upstream, UpstreamError};
use crate::vendor;

/// Renew a token once this fraction of its lifetime has passed.
const REFRESH_FRACTION: f64 = 0.5;
/// Easemob tokens that never expire (`expires_in` 0) are still renewed this often.
const NEVER_EXPIRES_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Why no app token is available.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The vendor's token endpoint could not be reached.
    #[error("the vendor token endpoint failed: {0}")]
    Upstream(#[from] UpstreamError),
    /// The token endpoint refused the credentials or answered something unusable.
    #[error("the vendor token endpoint answered {status}: {error}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// The vendor's `error` name, or a description of what was wrong.
        error: String,
    },
    /// A token would not fit an HTTP header (never for well-formed vendor tokens).
    #[error("the vendor token is not a valid header value")]
    Unusable,
}

/// A token ready to inject.
pub struct AppToken {
    /// `Bearer <token>`, marked sensitive so that it is never logged by hyper or us.
    pub header: HeaderValue,
    /// When the token stops being valid.
    pub expires_at: Instant,
    refresh_at: Instant,
}

impl std::fmt::Debug for AppToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppToken")
            .field("header", &"[REDACTED]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The current token of one app, renewed on demand.
pub struct TokenSource {
    credentials: Credentials,
    base: Uri,
    current: ArcSwapOption<AppToken>,
    renewing: tokio::sync::Mutex<()>,
}

impl TokenSource {
    /// A source with no token yet; the first request mints or fetches one.
    pub fn new(credentials: Credentials, base: Uri) -> TokenSource {
        TokenSource {
            credentials,
            base,
            current: ArcSwapOption::empty(),
            renewing: tokio::sync::Mutex::new(()),
        }
    }

    /// The token to use now, renewing it first when it is due.
    pub async fn token(&self, upstream: &Upstream) -> Result<Arc<AppToken>, TokenError> {
        if let Some(token) = self.fresh(Instant::now()) {
            return Ok(token);
        }
        let _single_flight = self.renewing.lock().await;
        // Someone else may have renewed it while this request waited.
        let now = Instant::now();
        if let Some(token) = self.fresh(now) {
            return Ok(token);
        }
        match self.obtain(upstream).await {
            Ok(token) => {
                let token = Arc::new(token);
                self.current.store(Some(token.clone()));
                Ok(token)
            }
            Err(err) => match self.current.load_full() {
                // A failed renewal is not an outage while the old token is still valid.
                Some(old) if old.expires_at > now => {
                    tracing::warn!(error = %err, "app token renewal failed; using the current token");
                    Ok(old)
                }
                _ => Err(err),
            },
        }
    }

    /// Drops `rejected` (the vendor answered 401 to it) so the next request renews.
    pub fn invalidate(&self, rejected: &Arc<AppToken>) {
        let current = self.current.load();
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, rejected)) {
            self.current.compare_and_swap(&*current, None);
        }
    }

    fn fresh(&self, now: Instant) -> Option<Arc<AppToken>> {
        self.current.load_full().filter(|t| now < t.refresh_at)
    }

    async fn obtain(&self, upstream: &Upstream) -> Result<AppToken, TokenError> {
        match &self.credentials {
            Credentials::Agora {
                app_id,
                certificate,
                expire_secs,
            } => {
                let issue_ts = u32::try_from(vendor::now_secs()).unwrap_or(u32::MAX);
                let spec =
                    agora::TokenSpec::app(app_id, issue_ts, *expire_secs, agora::random_salt());
                let lifetime = Duration::from_secs(u64::from(*expire_secs));
                app_token(&spec.build(certificate.expose_secret()), Some(lifetime))
            }
            Credentials::Easemob {
                org,
                app,
                client_id,
                client_secret,
                ttl_secs,
            } => {
                self.fetch_easemob(upstream, org, app, client_id, client_secret, *ttl_secs)
                    .await
            }
        }
    }

    async fn fetch_easemob(
        &self,
        upstream: &Upstream,
        org: &str,
        app: &str,
        client_id: &str,
        client_secret: &SecretString,
        ttl_secs: Option<u64>,
    ) -> Result<AppToken, TokenError> {
        let mut body = json!({
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": client_secret.expose_secret(),
        });
        if let Some(ttl) = ttl_secs {
            body["ttl"] = ttl.into();
        }
        let request = Request::builder()
            .method(Method::POST)
            .uri(vendor_uri(&self.base, &format!("/{org}/{app}/token"))?)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|_| TokenError::Unusable)?;
        let response = upstream.send(request).await?;
        let parsed: Value = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        if !response.status.is_success() {
            return Err(TokenError::Rejected {
                status: response.status.as_u16(),
                error: parsed["error"]
                    .as_str()
                    .unwrap_or("no error name")
                    .to_owned(),
            });
        }
        let rejected = |what: &str| TokenError::Rejected {
            status: response.status.as_u16(),
            error: what.to_owned(),
        };
        let token = parsed["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| rejected("no access_token in the answer"))?;
        let expires_in = vendor::lenient_u64(&parsed["expires_in"])
            .ok_or_else(|| rejected("no expires_in in the answer"))?;
        // expires_in 0 means the token never expires.
        let lifetime = (expires_in > 0).then(|| Duration::from_secs(expires_in));
        app_token(token, lifetime)
    }
}

fn app_token(token: &str, lifetime: Option<Duration>) -> Result<AppToken, TokenError> {
    let mut header =
        HeaderValue::try_from(format!("Bearer {token}")).map_err(|_| TokenError::Unusable)?;
    header.set_sensitive(true);
    let now = Instant::now();
    let (expires_at, refresh_after) = match lifetime {
        Some(life) => (now + life, life.mul_f64(REFRESH_FRACTION)),
        None => (
            now + Duration::from_secs(100 * 365 * 24 * 3600),
            NEVER_EXPIRES_REFRESH,
        ),
    };
    Ok(AppToken {
        header,
        expires_at,
        refresh_at: now + refresh_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_halfway_and_never_shown_in_debug_output() {
        let t = app_token("secret-token", Some(Duration::from_secs(100))).unwrap();
        let half = t.refresh_at.duration_since(Instant::now());
        assert!(half <= Duration::from_secs(50) && half > Duration::from_secs(49));
        assert!(t.header.is_sensitive());
        assert!(!format!("{t:?}").contains("secret-token"));
    }

    #[test]
    fn a_token_that_never_expires_is_still_renewed_daily() {
        let t = app_token("x", None).unwrap();
        assert!(t.refresh_at.duration_since(Instant::now()) <= NEVER_EXPIRES_REFRESH);
    }
}
