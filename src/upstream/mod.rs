//! The vendor side: one pooled keep-alive client (hyper-util + rustls) shared by every app, the
//! header rules of a forwarding proxy, and the mapping of transport failures to errors.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamSettings;

/// Largest vendor response imgate buffers (vendor bodies are small JSON documents).
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// Why a call to the vendor produced no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// TCP connection to the vendor failed.
    #[error("cannot connect to the vendor: {0}")]
    Connect(String),
    /// The TLS handshake failed: the vendor's certificate is not trusted or not valid.
    #[error("TLS toward the vendor failed: {0}")]
    Tls(String),
    /// No complete response within `upstream.timeout_ms`.
    #[error("the vendor did not answer in time")]
    Timeout,
    /// The connection failed mid-call, or the response was unreadable or too large.
    #[error("the vendor call failed: {0}")]
    Failed(String),
}

/// The `status` label of a vendor call in `imgate_upstream_requests_total`: the vendor's status
/// code, or the kind of failure.
pub fn status_label(result: &Result<VendorResponse, UpstreamError>) -> &str {
    match result {
        Ok(response) => response.status.as_str(),
        Err(UpstreamError::Timeout) => "timeout",
        Err(_) => "error",
    }
}

/// A buffered vendor response.
#[derive(Debug)]
pub struct VendorResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers, hop-by-hop ones removed.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// How long the call took.
    pub elapsed: Duration,
}

/// The pooled client toward every vendor host.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Upstream {
    /// Builds the client: HTTPS via rustls with the configured roots, plain HTTP for the emulator.
    pub fn new(settings: &UpstreamSettings) -> Upstream {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.connect_timeout));
        http.set_keepalive(Some(Duration::from_secs(60)));
        // The scheme of each app's URL decides: an https:// vendor is never called over plain HTTP.
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*settings.tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(settings.pool_idle_timeout)
            .pool_max_idle_per_host(settings.pool_max_idle_per_host)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(https);
        Upstream {
            client,
            timeout: settings.timeout,
        }
    }

    /// Sends a request and buffers the response, within the configured timeout.
    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> Result<VendorResponse, UpstreamError> {
        let started = std::time::Instant::now();
        let call = async {
            let response = self.client.request(request).await.map_err(|err| {
                if crate::tls::is_tls_failure(&err) {
                    UpstreamError::Tls(error_chain(&err))
                } else if err.is_connect() {
                    UpstreamError::Connect(error_chain(&err))
                } else {
                    UpstreamError::Failed(error_chain(&err))
                }
            })?;
            let (mut parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|err| UpstreamError::Failed(format!("reading the body: {err}")))?
                .to_bytes();
            strip_hop_by_hop(&mut parts.headers);
            parts.headers.remove(header::CONTENT_LENGTH);
            Ok(VendorResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                elapsed: started.elapsed(),
            })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or(Err(UpstreamError::Timeout))
    }
}

/// `base` (scheme + authority) joined with the caller's path and query.
pub fn vendor_uri(base: &Uri, path_and_query: &str) -> Result<Uri, UpstreamError> {
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| UpstreamError::Failed("unusable request path".into()))?,
    );
    Uri::from_parts(parts).map_err(|_| UpstreamError::Failed("unusable request path".into()))
}

/// The caller's headers that may go on to the vendor: those that describe the request's body
/// and what answer it accepts, the trace state and the user agent. Anything else (cookies, the
/// caller's credentials, `Proxy-*`, hop-by-hop, `Forwarded` and `X-Forwarded-*`, private
/// headers) stays with imgate: the call carries imgate's app token, not the caller's identity.
/// `traceparent`, `X-Request-Id` and the app token are set per call.
static FORWARDED: [HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::ACCEPT,
    header::ACCEPT_ENCODING,
    header::ACCEPT_LANGUAGE,
    header::USER_AGENT,
    HeaderName::from_static("tracestate"),
];

/// The allow-listed caller headers ([`FORWARDED`]) to send on to the vendor.
pub fn forward_headers(incoming: &HeaderMap) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(FORWARDED.len() + 4);
    for name in &FORWARDED {
        for value in incoming.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    headers
}

/// The answer with its body decoded from the `Content-Encoding` the vendor chose (gzip or
/// deflate), within the same size limit as any answer; identity answers are returned as is.
pub fn decode_body(mut response: VendorResponse) -> Result<VendorResponse, UpstreamError> {
    use std::io::Read;
    let Some(encoding) = response.headers.get(header::CONTENT_ENCODING) else {
        return Ok(response);
    };
    let encoding = encoding.to_str().unwrap_or("").trim().to_ascii_lowercase();
    let body: &[u8] = &response.body;
    let mut decoded = Vec::new();
    let read = match encoding.as_str() {
        "identity" | "" => Ok(0),
        "gzip" | "x-gzip" => flate2::read::GzDecoder::new(body)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_to_end(&mut decoded),
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(MAX_RESPONSE_BYTES as u64 + 1)
            .read_to_end(&mut decoded),
        other => {
            return Err(UpstreamError::Failed(format!(
                "the vendor answered in an unasked content encoding: {other}"
            )))
        }
    };
    match read {
        Ok(_) if encoding == "identity" || encoding.is_empty() => {}
        Ok(n) if n <= MAX_RESPONSE_BYTES => response.body = Bytes::from(decoded),
        Ok(_) => {
            return Err(UpstreamError::Failed(
                "the decoded answer is too large".into(),
            ))
        }
        Err(err) => return Err(UpstreamError::Failed(format!("decoding the answer: {err}"))),
    }
    response.headers.remove(header::CONTENT_ENCODING);
    Ok(response)
}

/// Removes the hop-by-hop headers of RFC 9110 §7.6.1, including those `Connection` names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn encoded_answers_are_decoded_and_unknown_encodings_refused() {
        use std::io::Write;
        let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gzip.write_all(br#"{"a":1}"#).unwrap();
        let answer = |encoding: &'static str, body: Vec<u8>| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
            VendorResponse {
                status: StatusCode::OK,
                headers,
                body: Bytes::from(body),
                elapsed: Duration::ZERO,
            }
        };
        let decoded = decode_body(answer("gzip", gzip.finish().unwrap())).unwrap();
        assert_eq!(decoded.body, &br#"{"a":1}"#[..]);
        assert!(decoded.headers.get(header::CONTENT_ENCODING).is_none());
        assert!(decode_body(answer("br", b"x".to_vec())).is_err());
        assert!(decode_body(answer("gzip", b"not gzip".to_vec())).is_err());
    }

    #[test]
    fn forwarded_headers_drop_hop_by_hop_and_caller_credentials() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer caller-key"),
        );
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::HOST, HeaderValue::from_static("imgate"));
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.insert(header::COOKIE, HeaderValue::from_static("session=1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        let out = forward_headers(&h);
        assert!(out.get(header::AUTHORIZATION).is_none());
        assert_eq!(out.get(header::ACCEPT).unwrap(), "application/json");
        for gone in [
            "connection",
            "x-private",
            "keep-alive",
            "host",
            "cookie",
            "x-forwarded-for",
        ] {
            assert!(out.get(gone).is_none(), "{gone} forwarded");
        }
    }

    #[test]
    fn vendor_uri_keeps_path_and_query() {
        let base: Uri = "https://a1.easemob.com".parse().unwrap();
        let uri = vendor_uri(&base, "/o/a/users/u/presence/sublist?pageNum=1&pageSize=5").unwrap();
        assert_eq!(
            uri.to_string(),
            "https://a1.easemob.com/o/a/users/u/presence/sublist?pageNum=1&pageSize=5"
        );
    }
}
