//! One call to the vendor on behalf of callers: the app token injected, a vendor 401 answered by
//! renewing the token once and replaying the (buffered) request once, and the call's metrics.
//!
//! A [`VendorCall`] owns everything it needs, so the cache can run it in the background (a
//! revalidation) or on behalf of several requests (a coalesced miss, a merged presence batch).

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, ACCEPT_ENCODING, AUTHORIZATION};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::Full;

use crate::error::GatewayError;
use crate::gateway::{App, Gateway};
use crate::metrics::Scope;
use crate::route::Endpoint;
use crate::upstream::{decode_body, status_label, vendor_uri, UpstreamError, VendorResponse};

/// The request-id header, sent on to the vendor.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A call to make to the vendor.
pub struct VendorCall {
    gateway: Arc<Gateway>,
    app: Arc<App>,
    endpoint: Endpoint,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
    /// Whether the answer is shared or cached: asked for and delivered unencoded.
    identity: bool,
}

impl VendorCall {
    /// The call `request` describes (its URI: the path and query under the app's vendor base
    /// URL; its headers: the caller's forwardable ones), tagged with the caller's request id.
    pub fn new(
        gateway: &Arc<Gateway>,
        app: &Arc<App>,
        endpoint: Endpoint,
        request: Request<Bytes>,
        request_id: &HeaderValue,
    ) -> Result<VendorCall, GatewayError> {
        let (mut parts, body) = request.into_parts();
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), request_id.clone());
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        Ok(VendorCall {
            gateway: gateway.clone(),
            app: app.clone(),
            endpoint,
            uri: vendor_uri(&app.base, path)?,
            method: parts.method,
            headers: parts.headers,
            body,
            identity: false,
        })
    }

    /// The same call, for an answer that is shared or cached: the vendor is asked for no
    /// content encoding, and an encoded answer is decoded anyway, so that no caller ever gets
    /// an encoding it did not ask for.
    pub fn identity(mut self) -> VendorCall {
        self.headers
            .insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
        self.identity = true;
        self
    }

    /// Makes the call. A 401 means the vendor refused imgate's token (the caller's credentials
    /// were fine): the token is renewed once, for all the requests that saw it refused, and the
    /// call replayed once; a second 401 is [`GatewayError::UpstreamUnauthorized`], and the app
    /// is not ready until the vendor takes its token again.
    pub async fn send(mut self) -> Result<VendorResponse, GatewayError> {
        let mut token = self.app.tokens.token().await?;
        let quota = self.app.quota(self.endpoint);
        let metrics = &self.gateway.metrics;
        for attempt in 0..2 {
            // 5. limit (vendor): every call that really goes to the vendor takes a permit.
            match quota.acquire().await {
                Ok(waited) => metrics.rate_wait(Scope::Vendor, waited),
                Err(exhausted) => {
                    metrics.rate_limited(Scope::Vendor);
                    return Err(GatewayError::VendorQuota {
                        retry_after: exhausted.retry_after,
                    });
                }
            }
            self.headers.insert(AUTHORIZATION, token.header.clone());
            let mut request = Request::new(Full::new(self.body.clone()));
            *request.method_mut() = self.method.clone();
            *request.uri_mut() = self.uri.clone();
            *request.headers_mut() = self.headers.clone();
            let started = std::time::Instant::now();
            let result = self.gateway.upstream.send(request).await;
            self.record(&result, started.elapsed().as_secs_f64());
            let response = result.inspect_err(|_| quota.no_answer())?;
            let response = if self.identity {
                decode_body(response)?
            } else {
                response
            };
            if matches!(
                response.status,
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
            ) {
                // Over the vendor's limit after all (a misconfigured quota, or other callers of
                // the same app): pause this endpoint, as long as the vendor asks if it says.
                quota.throttled(retry_after(&response.headers)).await;
                self.app.throttled(self.endpoint).inc();
            } else {
                quota.succeeded();
            }
            // A 401 to the replacement token (attempt 1) makes the app not ready.
            self.app
                .tokens
                .note_answer(response.status, &response.body, attempt == 1);
            if response.status != StatusCode::UNAUTHORIZED {
                return Ok(response);
            }
            if attempt == 0 {
                token = self.app.tokens.replace_rejected(&token).await?;
            }
        }
        Err(GatewayError::UpstreamUnauthorized)
    }

    fn record(&self, result: &Result<VendorResponse, UpstreamError>, seconds: f64) {
        self.gateway.metrics.upstream(
            &self.app.name,
            self.endpoint.name(),
            status_label(result),
            seconds,
        );
    }
}

/// A `Retry-After` of whole seconds (the HTTP-date form is not used by the vendor).
fn retry_after(headers: &HeaderMap) -> Option<std::time::Duration> {
    let secs: u64 = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::Duration::from_secs(secs.min(300)))
}
