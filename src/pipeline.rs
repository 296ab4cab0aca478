//! The request path, as named phases in a fixed order (DESIGN.md):
//!
//! 1. classify: method + path → app, endpoint, parameters (unknown app → 404)
//! 2. authenticate: client key or imgate client token → client (401), may use the app (403);
//!    `POST {prefix}/token` is answered here with a client token, never forwarded
//! 3. limit (client): per-client quota (a later version)
//! 4. cache: answer reads from the cache (a later version)
//! 5. limit (vendor): the vendor's per-app quota (a later version)
//! 6. upstream: inject the app token, forward over the pooled client; on a vendor 401 renew
//!    the token once and replay the (buffered) request once
//! 7. effects: writes that invalidate cache entries (a later version)
//! 8. respond: the vendor's answer, verbatim
//!
//! A request works with the configuration snapshot it started with, whatever reloads happen.
//! Every request, answered or refused, ends in [`handle`]: one metrics record, one access-log line,
//! and `X-Request-Id` on the response. An error becomes a response in one place:
//! [`GatewayError::to_response`].

use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;

use serde_json::{json, Value};

use crate::error::GatewayError;
use crate::gateway::{App, Gateway, Snapshot};
use crate::route::{self, Endpoint};
use crate::server::{self, BodyError, HttpResponse};
use crate::upstream::{forward_headers, vendor_uri, UpstreamError, VendorResponse};
use crate::vendor;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Longest caller-supplied request id that is echoed; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// What one request did, for its metrics and access-log line.
struct Trace<'g> {
    client: &'g str,
    app: &'g str,
    endpoint: &'static str,
    vendor_status: Option<u16>,
    vendor_seconds: f64,
}

/// Answers one API request; never fails (errors become vendor-shaped responses).
pub async fn handle(gateway: &Gateway, req: Request<Incoming>) -> HttpResponse {
    let started = Instant::now();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    let snapshot = gateway.snapshot();
    let mut trace = Trace {
        client: "-",
        app: "-",
        endpoint: "-",
        vendor_status: None,
        vendor_seconds: 0.0,
    };
    let mut response = match process(gateway, &snapshot, req, &request_id, &mut trace).await {
        Ok(response) => response,
        Err(err) => {
            if err.fault() != crate::error::Fault::Caller {
                tracing::warn!(error = %err, app = trace.app, endpoint = trace.endpoint, "request failed");
            }
            err.to_response()
        }
    };
    let status = response.status();
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    let seconds = started.elapsed().as_secs_f64();
    gateway.metrics.request(
        trace.client,
        trace.app,
        trace.endpoint,
        status.as_str(),
        seconds,
    );
    tracing::info!(
        target: "imgate::access",
        request_id = request_id.to_str().unwrap_or("-"),
        client = trace.client,
        app = trace.app,
        endpoint = trace.endpoint,
        method = %method,
        status = status.as_u16(),
        vendor_status = trace.vendor_status,
        vendor_ms = trace.vendor_seconds * 1e3,
        total_ms = seconds * 1e3,
    );
    response
}

async fn process<'s>(
    gateway: &Gateway,
    snapshot: &'s Snapshot,
    req: Request<Incoming>,
    request_id: &HeaderValue,
    trace: &mut Trace<'s>,
) -> Result<HttpResponse, GatewayError> {
    let (parts, body) = req.into_parts();

    // 1. classify
    let route = route::classify(&parts.method, parts.uri.path()).ok_or(GatewayError::NoRoute)?;
    let (app_index, app) = snapshot.app(route.app).ok_or(GatewayError::UnknownApp)?;
    trace.app = &app.name;
    trace.endpoint = route.endpoint.name();
    let body = server::read_body(body, snapshot.max_body_bytes)
        .await
        .map_err(|err| match err {
            BodyError::TooLarge(limit) => GatewayError::BodyTooLarge(limit),
            BodyError::Read => GatewayError::BodyUnreadable,
        })?;

    // 2. authenticate
    if route.endpoint == Endpoint::Token {
        // Never forwarded: the vendor's client credentials are imgate's alone.
        return issue_client_token(snapshot, app_index, app, &parts, &body, trace);
    }
    let client = snapshot
        .clients
        .authenticate(&parts.headers, &snapshot.client_tokens, vendor::now_secs())
        .ok_or(GatewayError::Unauthenticated)?;
    trace.client = &client.name;
    if !client.may_use(app_index) {
        return Err(GatewayError::Forbidden);
    }
    if route.endpoint == Endpoint::Other && !snapshot.forward_other {
        return Err(GatewayError::OtherNotForwarded);
    }

    // 6. upstream
    let vendor = forward(
        gateway,
        app,
        route.endpoint,
        &parts,
        body,
        request_id,
        trace,
    )
    .await?;

    // 8. respond
    Ok(respond(vendor))
}

/// `POST {prefix}/token` with the client's name and key, as vendor SDKs send it: answered with
/// an imgate client token in the vendor's response shape.
fn issue_client_token<'s>(
    snapshot: &'s Snapshot,
    app_index: usize,
    app: &App,
    parts: &Parts,
    body: &[u8],
    trace: &mut Trace<'s>,
) -> Result<HttpResponse, GatewayError> {
    let is_json = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Err(GatewayError::UnsupportedMediaType);
    }
    let request: Value = serde_json::from_slice(body).map_err(|_| GatewayError::BadJson)?;
    let field = |name: &str| request.get(name).and_then(Value::as_str).unwrap_or("");
    if field("grant_type") != "client_credentials" {
        return Err(GatewayError::InvalidGrant);
    }
    let client = snapshot
        .clients
        .by_name(field("client_id"))
        .filter(|c| c.has_key(field("client_secret")))
        .ok_or(GatewayError::InvalidGrant)?;
    trace.client = &client.name;
    if !client.may_use(app_index) {
        return Err(GatewayError::Forbidden);
    }
    let max = snapshot.client_token_ttl;
    let ttl = match request.get("ttl").and_then(vendor::lenient_u64) {
        Some(asked) if asked > 0 => max.min(std::time::Duration::from_secs(asked)),
        _ => max,
    };
    let token = snapshot
        .client_tokens
        .issue(client, vendor::now_secs(), ttl);
    let body = json!({"access_token": token, "expires_in": ttl.as_secs(), "application": app.name});
    Ok(server::json_response(200, Bytes::from(body.to_string())))
}

/// Sends the call to the vendor with the app token. A 401 means the vendor refused imgate's
/// token (the caller's credentials were fine): the token is renewed once, for all the requests
/// that saw it refused, and the call replayed once; a second 401 gives the caller 502.
async fn forward(
    gateway: &Gateway,
    app: &App,
    endpoint: Endpoint,
    parts: &Parts,
    body: Bytes,
    request_id: &HeaderValue,
    trace: &mut Trace<'_>,
) -> Result<VendorResponse, GatewayError> {
    let mut token = app.tokens.token().await?;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = vendor_uri(&app.base, path)?;
    let mut headers = forward_headers(&parts.headers, &token.header);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    for attempt in 0..2 {
        let mut request = Request::new(Full::new(body.clone()));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers.clone();

        let started = Instant::now();
        let result = gateway.upstream.send(request).await;
        trace.vendor_seconds += started.elapsed().as_secs_f64();
        let status_label = match &result {
            Ok(response) => response.status.as_str(),
            Err(UpstreamError::Timeout) => "timeout",
            Err(_) => "error",
        };
        gateway.metrics.upstream(
            &app.name,
            endpoint.name(),
            status_label,
            started.elapsed().as_secs_f64(),
        );
        let response = result?;
        trace.vendor_status = Some(response.status.as_u16());
        if response.status != http::StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        if attempt == 0 {
            token = app.tokens.replace_rejected(&token).await?;
            headers.insert(http::header::AUTHORIZATION, token.header.clone());
        }
    }
    Err(GatewayError::UpstreamUnauthorized)
}

fn respond(vendor: VendorResponse) -> HttpResponse {
    let mut response = Response::new(Full::new(vendor.body));
    *response.status_mut() = vendor.status;
    *response.headers_mut() = vendor.headers;
    response
}

/// The caller's `X-Request-Id` when it is short and printable, else a new random one.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    headers
        .get(&X_REQUEST_ID)
        .filter(|v| {
            let bytes = v.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= MAX_REQUEST_ID
                && bytes.iter().all(|b| b.is_ascii_graphic())
        })
        .cloned()
        .unwrap_or_else(|| {
            let id: u128 = rand::random();
            HeaderValue::try_from(format!("{id:032x}")).unwrap_or(HeaderValue::from_static("-"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_request_ids_are_echoed_and_others_replaced() {
        let mut h = HeaderMap::new();
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("has space"));
        assert_eq!(request_id(&h).len(), 32);
        assert_eq!(request_id(&HeaderMap::new()).len(), 32);
        h.insert(
            &X_REQUEST_ID,
            HeaderValue::try_from("x".repeat(200)).unwrap(),
        );
        assert_eq!(request_id(&h).len(), 32);
    }
}
