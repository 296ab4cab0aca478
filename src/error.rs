//! Every way a gateway request can fail, who is at fault, and the one mapping to a status and a
//! vendor-shaped JSON body (so vendor SDKs and callers parse imgate's errors like the vendor's).

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;

use crate::limit::retry_after_secs;
use crate::route::PathError;
use crate::server::{json_response, HttpResponse};
use crate::token::TokenError;
use crate::upstream::UpstreamError;
use crate::vendor;

/// A request that imgate answers itself with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The path has a dot segment, an encoded slash, a control character or a bad escape.
    #[error("imgate refused the path: {0}")]
    BadPath(PathError),
    /// The path has no vendor app prefix.
    #[error("no vendor API at this path")]
    NoRoute,
    /// The prefix names an app imgate is not configured for.
    #[error("imgate fronts no app at this path")]
    UnknownApp,
    /// No client key, or one imgate does not know.
    #[error("imgate refused the request: missing or invalid client key")]
    Unauthenticated,
    /// The client may not use this app.
    #[error("this client may not use this app")]
    Forbidden,
    /// The request body is larger than `server.max_body_bytes`.
    #[error("request body larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The request body could not be read.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// The request body did not arrive within `server.body_read_timeout_ms`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// The token endpoint got wrong client credentials.
    #[error("client_id or client_secret does not match")]
    InvalidGrant,
    /// The token endpoint was asked for another grant than client credentials (a user login).
    #[error(
        "imgate issues only client_credentials tokens (client_id: an imgate client's name, \
         client_secret: its key); user logins (grant_type password) are not supported"
    )]
    UnsupportedGrant,
    /// A JSON endpoint got another content type.
    #[error("Unsupported Media Type")]
    UnsupportedMediaType,
    /// A body that should be JSON is not.
    #[error("the request body is not valid JSON")]
    BadJson,
    /// An endpoint outside the client's scope (`endpoints`; by default every endpoint imgate
    /// knows, and others only with `upstream.forward_other = true`).
    #[error("this endpoint is not forwarded by imgate for this client")]
    EndpointNotForwarded,
    /// No valid app token could be had.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The call to the vendor failed.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The vendor rejected imgate's own app token.
    #[error("the vendor rejected imgate's app token")]
    UpstreamUnauthorized,
    /// The error of a vendor call that this request shared with others (a coalesced miss).
    #[error(transparent)]
    Shared(Arc<GatewayError>),
    /// A merged call this request waited for ended without an answer (imgate's fault).
    #[error("a merged vendor call was abandoned")]
    BatchAbandoned,
    /// The client is over its own quota on imgate.
    #[error("this client is over its quota of {per_second} requests per second")]
    RateLimited {
        /// Its sustained rate.
        per_second: u32,
        /// When it may try again.
        retry_after: Duration,
    },
    /// Too many wrong client credentials from this source address lately.
    #[error("too many failed attempts from this address; try again later")]
    TooManyFailures {
        /// When the source may try again.
        retry_after: Duration,
    },
    /// No vendor permit within `limits.max_wait_ms`: the vendor's quota is used up.
    #[error("the vendor's quota for this endpoint is used up")]
    VendorQuota {
        /// When the caller may try again.
        retry_after: Duration,
    },
}

/// Who caused an error: decides whether a retry may help and how it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The request itself is wrong.
    Caller,
    /// imgate or its configuration.
    Imgate,
    /// The vendor (or the network to it).
    Vendor,
}

impl GatewayError {
    /// HTTP status of the answer.
    pub fn status(&self) -> u16 {
        self.kind().0
    }

    /// The `error` field: the vendor's own name where callers' SDKs act on it, else `imgate_…`.
    pub fn name(&self) -> &'static str {
        self.kind().1
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        self.kind().2
    }

    /// Status, `error` name and fault: one row per kind of error, so that they are read (and
    /// changed) together.
    fn kind(&self) -> (u16, &'static str, Fault) {
        use Fault::{Caller, Imgate, Vendor};
        match self {
            GatewayError::BadPath(_) => (400, "imgate_bad_path", Caller),
            GatewayError::NoRoute => (404, "imgate_no_route", Caller),
            GatewayError::UnknownApp => (404, "organization_application_not_found", Caller),
            // The vendor's name, so that vendor SDKs refresh their credentials.
            GatewayError::Unauthenticated => (401, "unauthorized", Caller),
            GatewayError::Forbidden => (403, "imgate_forbidden", Caller),
            GatewayError::BodyTooLarge(_) => (413, "imgate_body_too_large", Caller),
            GatewayError::BodyUnreadable => (400, "imgate_bad_request", Caller),
            GatewayError::BodyTimeout => (408, "imgate_body_timeout", Caller),
            // The vendor's names, which vendor SDKs understand.
            GatewayError::InvalidGrant | GatewayError::UnsupportedGrant => {
                (400, "invalid_grant", Caller)
            }
            GatewayError::UnsupportedMediaType => (415, "web_application", Caller),
            GatewayError::BadJson => (400, "json_parse", Caller),
            GatewayError::EndpointNotForwarded => (403, "imgate_endpoint_not_forwarded", Caller),
            GatewayError::RateLimited { .. } | GatewayError::TooManyFailures { .. } => {
                (429, "imgate_rate_limited", Caller)
            }
            GatewayError::Token(_) => (503, "imgate_token_unavailable", Imgate),
            GatewayError::UpstreamUnauthorized => (502, "imgate_upstream_unauthorized", Imgate),
            GatewayError::BatchAbandoned => (500, "imgate_internal_error", Imgate),
            GatewayError::Upstream(UpstreamError::Timeout) => {
                (504, "imgate_upstream_timeout", Vendor)
            }
            GatewayError::Upstream(UpstreamError::Connect(_)) => {
                (502, "imgate_upstream_unavailable", Vendor)
            }
            GatewayError::Upstream(UpstreamError::Tls(_)) => (502, "imgate_upstream_tls", Vendor),
            GatewayError::Upstream(_) => (502, "imgate_upstream_error", Vendor),
            GatewayError::VendorQuota { .. } => (429, "imgate_vendor_quota", Vendor),
            GatewayError::Shared(inner) => inner.kind(),
        }
    }

    /// Whether the vendor failed to answer (connection, timeout, no token from its token
    /// endpoint): a stale cached answer may stand in.
    pub fn is_vendor_failure(&self) -> bool {
        match self {
            GatewayError::Upstream(_)
            | GatewayError::Token(_)
            | GatewayError::VendorQuota { .. } => true,
            GatewayError::Shared(inner) => inner.is_vendor_failure(),
            _ => false,
        }
    }

    /// When the caller may try again, for `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::RateLimited { retry_after, .. }
            | GatewayError::TooManyFailures { retry_after }
            | GatewayError::VendorQuota { retry_after } => Some(*retry_after),
            GatewayError::Shared(inner) => inner.retry_after(),
            _ => None,
        }
    }

    /// The answer to the caller.
    pub fn to_response(&self) -> HttpResponse {
        let mut response = json_response(
            self.status(),
            vendor::error_body(self.name(), "ImgateException", &self.to_string()),
        );
        if let Some(wait) = self.retry_after() {
            response.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs(wait)),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_auth_failures_use_the_vendor_name_so_sdks_refresh() {
        let e = GatewayError::Unauthenticated;
        assert_eq!((e.status(), e.name()), (401, "unauthorized"));
        assert!(e.to_string().contains("imgate refused"));
        assert_eq!(e.to_response().status(), 401);
    }

    /// One error of every kind; the match fails to compile when a variant is added without one.
    fn one_of_each() -> Vec<GatewayError> {
        let all = vec![
            GatewayError::NoRoute,
            GatewayError::UnknownApp,
            GatewayError::Unauthenticated,
            GatewayError::Forbidden,
            GatewayError::BodyTooLarge(1),
            GatewayError::BodyUnreadable,
            GatewayError::BodyTimeout,
            GatewayError::InvalidGrant,
            GatewayError::UnsupportedGrant,
            GatewayError::UnsupportedMediaType,
            GatewayError::BadJson,
            GatewayError::EndpointNotForwarded,
            GatewayError::BadPath(PathError::DotSegment),
            GatewayError::TooManyFailures {
                retry_after: Duration::ZERO,
            },
            GatewayError::Token(TokenError::Unusable),
            GatewayError::Upstream(UpstreamError::Connect(String::new())),
            GatewayError::Upstream(UpstreamError::Tls(String::new())),
            GatewayError::Upstream(UpstreamError::Timeout),
            GatewayError::Upstream(UpstreamError::Failed(String::new())),
            GatewayError::UpstreamUnauthorized,
            GatewayError::BatchAbandoned,
            GatewayError::RateLimited {
                per_second: 1,
                retry_after: Duration::ZERO,
            },
            GatewayError::VendorQuota {
                retry_after: Duration::ZERO,
            },
        ];
        for err in &all {
            match err {
                GatewayError::NoRoute
                | GatewayError::UnknownApp
                | GatewayError::Unauthenticated
                | GatewayError::Forbidden
                | GatewayError::BodyTooLarge(_)
                | GatewayError::BodyUnreadable
                | GatewayError::BodyTimeout
                | GatewayError::InvalidGrant
                | GatewayError::UnsupportedGrant
                | GatewayError::UnsupportedMediaType
                | GatewayError::BadJson
                | GatewayError::EndpointNotForwarded
                | GatewayError::BadPath(_)
                | GatewayError::TooManyFailures { .. }
                | GatewayError::Token(_)
                | GatewayError::Upstream(_)
                | GatewayError::UpstreamUnauthorized
                | GatewayError::Shared(_)
                | GatewayError::BatchAbandoned
                | GatewayError::RateLimited { .. }
                | GatewayError::VendorQuota { .. } => {}
            }
        }
        all
    }

    #[test]
    fn the_readme_error_table_lists_every_error_with_its_status() {
        let readme = include_str!("../README.md");
        for err in one_of_each() {
            let row = format!("| {} | `{}` |", err.status(), err.name());
            assert!(readme.contains(&row), "README lacks {row}");
        }
    }

    #[test]
    fn vendor_failures_map_to_gateway_statuses() {
        assert_eq!(GatewayError::Upstream(UpstreamError::Timeout).status(), 504);
        let connect = GatewayError::Upstream(UpstreamError::Connect("refused".into()));
        assert_eq!(
            (connect.status(), connect.name()),
            (502, "imgate_upstream_unavailable")
        );
        assert_eq!(GatewayError::UpstreamUnauthorized.status(), 502);
        assert_eq!(GatewayError::UpstreamUnauthorized.fault(), Fault::Imgate);
    }
}
