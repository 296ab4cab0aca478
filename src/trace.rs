//! W3C trace context (`traceparent`): the caller's trace goes on to the vendor with imgate's
//! call as a new span, or a new trace starts; its id goes into the access log. `tracestate` is
//! forwarded untouched with the caller's other headers.

use std::cell::RefCell;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};

/// The `traceparent` header.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest caller-supplied request id that is echoed; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The caller's `X-Request-Id` (`header`) and `traceparent` values, the first of each, found in
/// one pass over the request's headers: comparing the names of the few headers a request has
/// costs less than hashing both names for two lookups.
pub fn caller_ids<'h>(
    headers: &'h HeaderMap,
    header: &HeaderName,
) -> (Option<&'h HeaderValue>, Option<&'h HeaderValue>) {
    let (mut id, mut traceparent) = (None, None);
    for (name, value) in headers {
        if name == header {
            id = id.or(Some(value));
        } else if name == TRACEPARENT {
            traceparent = traceparent.or(Some(value));
        }
    }
    (id, traceparent)
}

/// A request's id: the caller's `X-Request-Id` when it is short and printable, else a new
/// random one (32 hex digits, also a valid trace id).
#[derive(Debug, Clone)]
pub enum RequestId {
    /// The caller's, as sent.
    Caller(HeaderValue),
    /// Made by imgate.
    New([u8; 32]),
}

impl RequestId {
    /// The id of a request whose `X-Request-Id` is `value` ([`caller_ids`]).
    pub fn from_value(value: Option<&HeaderValue>) -> RequestId {
        value
            .filter(|v| {
                let bytes = v.as_bytes();
                !bytes.is_empty()
                    && bytes.len() <= MAX_REQUEST_ID
                    && bytes.iter().all(|b| b.is_ascii_graphic())
            })
            .map_or_else(
                || RequestId::New(random_hex()),
                |v| RequestId::Caller(v.clone()),
            )
    }

    /// The id as text (printable ASCII either way).
    pub fn as_str(&self) -> &str {
        let bytes = match self {
            RequestId::Caller(value) => value.as_bytes(),
            RequestId::New(digits) => digits,
        };
        std::str::from_utf8(bytes).unwrap_or("-")
    }

    /// The id as a header value.
    pub fn header_value(&self) -> HeaderValue {
        self.clone().into_header_value()
    }

    /// The id as a header value, taking the caller's own without a copy.
    pub fn into_header_value(self) -> HeaderValue {
        match self {
            RequestId::Caller(value) => value,
            RequestId::New(digits) => {
                HeaderValue::from_bytes(&digits).unwrap_or(HeaderValue::from_static("-"))
            }
        }
    }
}

/// A request's trace: its id and flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: [u8; 32],
    flags: [u8; 2],
}

impl TraceContext {
    /// The caller's trace when its `traceparent` ([`caller_ids`]) is valid (version 00), else a
    /// new one whose id is the request's id when that is a valid trace id (imgate's own request
    /// ids are), so that the two correlate and no second random id is made per request.
    pub fn from_value(traceparent: Option<&HeaderValue>, request_id: &RequestId) -> TraceContext {
        traceparent
            .and_then(|v| parse(v.as_bytes()))
            .unwrap_or_else(|| TraceContext {
                trace_id: match request_id {
                    RequestId::New(digits) => *digits,
                    RequestId::Caller(value) => <[u8; 32]>::try_from(value.as_bytes())
                        .ok()
                        .filter(|id| is_trace_id(id))
                        .unwrap_or_else(random_hex),
                },
                flags: *b"00",
            })
    }

    /// The trace id, 32 hex digits.
    pub fn trace_id(&self) -> &str {
        std::str::from_utf8(&self.trace_id).unwrap_or("-")
    }

    /// A `traceparent` for a call imgate makes in this trace (a new span id).
    pub fn child(&self) -> HeaderValue {
        let span: [u8; 16] = random_hex();
        let mut value = Vec::with_capacity(55);
        value.extend_from_slice(b"00-");
        value.extend_from_slice(&self.trace_id);
        value.push(b'-');
        value.extend_from_slice(&span);
        value.push(b'-');
        value.extend_from_slice(&self.flags);
        HeaderValue::from_bytes(&value).unwrap_or(HeaderValue::from_static("-"))
    }
}

fn parse(value: &[u8]) -> Option<TraceContext> {
    // 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>
    let (version, rest) = value.split_at_checked(3)?;
    if version != b"00-" || rest.len() != 52 || rest[32] != b'-' || rest[49] != b'-' {
        return None;
    }
    let (trace, parent, flags) = (&rest[..32], &rest[33..49], &rest[50..]);
    if !is_trace_id(trace) || !is_trace_id(parent) || !is_lower_hex(flags) {
        return None;
    }
    Some(TraceContext {
        trace_id: trace.try_into().ok()?,
        flags: flags.try_into().ok()?,
    })
}

/// `N` random lower-case hex digits (never all zero: the spec forbids it). Also imgate's
/// request ids and the emulator's ids: the one random-id helper. Ids must be unique, not
/// secret, so they come from a fast per-thread generator seeded from the OS (one per request
/// would otherwise cost a ChaCha block).
pub fn random_hex<const N: usize>() -> [u8; N] {
    const {
        assert!(
            N % 2 == 0 && N <= 64,
            "an even number of digits, at most 64"
        )
    };
    thread_local! {
        static IDS: RefCell<SmallRng> = RefCell::new(SmallRng::from_entropy());
    }
    loop {
        let mut out = [0u8; N];
        let mut random = [0u8; 32];
        IDS.with_borrow_mut(|rng| rng.fill_bytes(&mut random[..N / 2]));
        if hex::encode_to_slice(&random[..N / 2], &mut out).is_ok()
            && out.iter().any(|d| *d != b'0')
        {
            return out;
        }
    }
}

/// Lower-case hex digits only.
fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// A valid trace or parent id: lower-case hex, not all zero.
fn is_trace_id(s: &[u8]) -> bool {
    is_lower_hex(s) && s.iter().any(|b| *b != b'0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(id: &str) -> RequestId {
        RequestId::Caller(HeaderValue::from_str(id).unwrap())
    }

    fn traceparent(headers: &HeaderMap) -> Option<&HeaderValue> {
        caller_ids(headers, &HeaderName::from_static("x-request-id")).1
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn printable_request_ids_are_echoed_and_others_replaced() {
        let x_request_id = HeaderName::from_static("x-request-id");
        let id = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(value) = value {
                h.insert(&x_request_id, HeaderValue::from_str(value).unwrap());
            }
            RequestId::from_value(caller_ids(&h, &x_request_id).0)
        };
        assert_eq!(id(Some("abc-123")).as_str(), "abc-123");
        assert_eq!(id(Some("abc-123")).header_value(), "abc-123");
        for replaced in [Some("has space"), Some(&"x".repeat(200)), None] {
            let new = id(replaced);
            assert!(matches!(new, RequestId::New(_)), "{replaced:?}");
            assert!(is_trace_id(new.as_str().as_bytes()));
            assert_eq!(new.header_value(), new.as_str());
        }
    }

    #[test]
    fn a_valid_traceparent_continues_with_a_new_span() {
        let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let ctx =
            TraceContext::from_value(traceparent(&headers(incoming)), &RequestId::New([b'f'; 32]));
        assert_eq!(ctx.trace_id(), "0af7651916cd43dd8448eb211c80319c");
        let child = ctx.child();
        let child = child.to_str().unwrap();
        assert!(
            child.starts_with("00-0af7651916cd43dd8448eb211c80319c-") && child.ends_with("-01")
        );
        assert_ne!(child, incoming, "a new parent id");
        assert_eq!(parse(child.as_bytes()), Some(ctx));
    }

    #[test]
    fn invalid_or_missing_traceparents_start_a_new_trace() {
        for bad in [
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "garbage",
        ] {
            let ctx =
                TraceContext::from_value(traceparent(&headers(bad)), &caller("caller-chosen-id"));
            assert!(!bad.contains(ctx.trace_id()), "{bad}");
            assert_eq!(ctx.trace_id().len(), 32);
            assert!(is_trace_id(ctx.trace_id().as_bytes()));
        }
        let fresh = TraceContext::from_value(None, &caller("short")).child();
        assert!(parse(fresh.as_bytes()).is_some());
    }

    #[test]
    fn a_new_trace_takes_the_request_id_when_it_is_a_valid_trace_id() {
        let id = random_hex::<32>();
        let ctx = TraceContext::from_value(None, &RequestId::New(id));
        assert_eq!(ctx.trace_id().as_bytes(), id);
        let theirs = "0af7651916cd43dd8448eb211c80319c";
        let ctx = TraceContext::from_value(None, &caller(theirs));
        assert_eq!(ctx.trace_id(), theirs);
        for unusable in [[b'0'; 32], [b'A'; 32]] {
            let unusable_id = RequestId::Caller(HeaderValue::from_bytes(&unusable).unwrap());
            let ctx = TraceContext::from_value(None, &unusable_id);
            assert_ne!(ctx.trace_id().as_bytes(), unusable);
            assert!(is_trace_id(ctx.trace_id().as_bytes()));
        }
    }

    #[test]
    fn one_pass_finds_what_two_lookups_find() {
        let x_request_id = HeaderName::from_static("x-request-id");
        let mut h = HeaderMap::new();
        assert_eq!(caller_ids(&h, &x_request_id), (None, None));
        h.insert("host", HeaderValue::from_static("gw"));
        h.append(&TRACEPARENT, HeaderValue::from_static("first-parent"));
        h.append("x-other", HeaderValue::from_static("x"));
        h.append(&x_request_id, HeaderValue::from_static("first-id"));
        h.append(&x_request_id, HeaderValue::from_static("second-id"));
        h.append(&TRACEPARENT, HeaderValue::from_static("second-parent"));
        let (id, parent) = caller_ids(&h, &x_request_id);
        assert_eq!(id, h.get(&x_request_id));
        assert_eq!(parent, h.get(&TRACEPARENT));
        assert_eq!(id.unwrap(), "first-id");
        assert_eq!(parent.unwrap(), "first-parent");
    }
}
