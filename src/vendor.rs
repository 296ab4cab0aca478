//! What imgate knows about the vendors, in one place: their kinds, error bodies, envelopes,
//! default quotas and limits (docs/vendor-api.md). The gateway and the emulator both speak
//! through it.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::route::Endpoint;

/// Which vendor an app belongs to; decides the path prefix and how app tokens are obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VendorKind {
    /// Agora Chat / 声网 IM: `/app-id/{app_id}`, AccessToken2 minted locally.
    Agora,
    /// Easemob / 环信: `/{org}/{app}`, token from `POST /{org}/{app}/token`.
    Easemob,
}

/// Longest presence `ext` the vendor accepts, in bytes.
pub const MAX_EXT_BYTES: usize = 64;
/// Most user names in one presence batch get, subscribe or unsubscribe.
pub const MAX_USERNAMES: usize = 100;
/// Longest presence subscription, in seconds (30 days).
pub const MAX_SUBSCRIPTION_SECS: u64 = 2_592_000;
/// Most subscriptions one user may hold.
pub const MAX_SUBSCRIPTIONS: usize = 3_000;
/// Largest `pageSize` of a subscription list.
pub const MAX_PAGE_SIZE: u64 = 500;
/// Longest life of an Agora app token the vendor honours, in seconds (24 h).
pub const MAX_AGORA_EXPIRE_SECS: u32 = 86_400;

/// The vendor's default quota of an endpoint, in calls per second per app.
pub const fn default_quota(endpoint: Endpoint) -> u32 {
    match endpoint {
        Endpoint::Token => 300,
        Endpoint::OfflineMsgCount | Endpoint::OfflineMsgStatus => 100,
        Endpoint::PresenceSet
        | Endpoint::PresenceSubscribe
        | Endpoint::PresenceBatchGet
        | Endpoint::PresenceUnsubscribe
        | Endpoint::PresenceSublist => 50,
        Endpoint::MessagesSend | Endpoint::Other => 100,
    }
}

/// Whether the vendor accepts a request to `endpoint` with these headers' content type: its
/// JSON endpoints refuse any other type (415 `web_application`), and a missing one when a body
/// comes (`has_body`; the token endpoint always): the vendor documents `Content-Type:
/// application/json` as required and 415 for a missing JSON content type. A request without a
/// body has no media type to refuse.
pub fn content_type_accepted(
    endpoint: Endpoint,
    headers: &http::HeaderMap,
    has_body: bool,
) -> bool {
    let takes_json = matches!(
        endpoint,
        Endpoint::Token
            | Endpoint::PresenceSet
            | Endpoint::PresenceSubscribe
            | Endpoint::PresenceBatchGet
            | Endpoint::PresenceUnsubscribe
            | Endpoint::MessagesSend
    );
    if !takes_json {
        return true;
    }
    match headers.get(http::header::CONTENT_TYPE) {
        None => !has_body && endpoint != Endpoint::Token,
        Some(value) => value.to_str().is_ok_and(|v| {
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json")
        }),
    }
}

/// Whether `s` has the shape of an Agora App ID or App Certificate (32 hex characters).
pub fn is_agora_hex(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Milliseconds since the Unix epoch, as the vendor's `timestamp` fields carry.
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Seconds since the Unix epoch.
pub fn now_secs() -> u64 {
    now_millis() / 1000
}

/// A vendor-shaped error: the `error` name, the Java exception the vendor names, and a description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VendorError {
    /// HTTP status.
    pub status: u16,
    /// The `error` field, e.g. `unauthorized`.
    pub error: &'static str,
    /// The `exception` field.
    pub exception: &'static str,
    /// The `error_description` field.
    pub description: String,
}

impl VendorError {
    /// A vendor error with the exception the vendor uses for that `error` name.
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> Self {
        VendorError {
            status,
            error,
            exception: exception_for(error),
            description: description.into(),
        }
    }

    /// The JSON body: `{"error","exception","timestamp","duration","error_description"}`.
    pub fn body(&self) -> Bytes {
        error_body(self.error, self.exception, &self.description)
    }
}

/// Builds a vendor-shaped error body.
pub fn error_body(error: &str, exception: &str, description: &str) -> Bytes {
    let body = json!({
        "error": error,
        "exception": exception,
        "timestamp": now_millis(),
        "duration": 0,
        "error_description": description,
    });
    Bytes::from(body.to_string())
}

/// The exception class the vendor reports with each `error` name.
pub fn exception_for(error: &str) -> &'static str {
    match error {
        "unauthorized" => "EasemobSecurityException",
        "auth_bad_access_token" => "EasemobSecurityException",
        "illegal_argument" => "java.lang.IllegalArgumentException",
        "json_parse" => "com.fasterxml.jackson.core.JsonParseException",
        "invalid_grant" => "EasemobInvalidGrantException",
        "service_resource_not_found" => "ServiceResourceNotFoundException",
        "organization_application_not_found" => "ApplicationNotFoundException",
        "web_application" => "javax.ws.rs.WebApplicationException",
        "reach_limit" => "EasemobRateLimitException",
        "Request Entity Too Large" => "RequestEntityTooLargeException",
        _ => "ImgateException",
    }
}

/// Reads a number the vendor may send as a JSON number or as a string of digits.
pub fn lenient_u64(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_the_vendor_fields() {
        let e = VendorError::new(401, "unauthorized", "Unable to authenticate (OAuth)");
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"], "unauthorized");
        assert_eq!(v["exception"], "EasemobSecurityException");
        assert_eq!(v["duration"], 0);
        assert_eq!(v["error_description"], "Unable to authenticate (OAuth)");
        assert!(v["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    }

    #[test]
    fn lenient_numbers_accept_strings_and_numbers() {
        assert_eq!(lenient_u64(&json!(5)), Some(5));
        assert_eq!(lenient_u64(&json!("17")), Some(17));
        assert_eq!(lenient_u64(&json!("x")), None);
        assert_eq!(lenient_u64(&json!(-1)), None);
    }

    #[test]
    fn default_quotas_follow_the_vendor_table() {
        assert_eq!(default_quota(Endpoint::Token), 300);
        assert_eq!(default_quota(Endpoint::OfflineMsgStatus), 100);
        assert_eq!(default_quota(Endpoint::PresenceSublist), 50);
        assert_eq!(default_quota(Endpoint::Other), 100);
    }
}
