//! Agora AccessToken2 ("007…") chat tokens: the one implementation that `imgate token agora`,
//! the gateway's token source and the emulator's verifier share (layout in docs/vendor-api.md).

use std::io::{Read, Write};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use flate2::Compression;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const VERSION: &str = "007";
const SERVICE_CHAT: u16 = 5;
/// Privilege of a chat user token.
pub const PRIVILEGE_USER: u16 = 1;
/// Privilege of a chat app token (what the REST API accepts).
pub const PRIVILEGE_APP: u16 = 2;
/// Largest inflated payload accepted when parsing, so a hostile token cannot inflate without bound.
const MAX_PAYLOAD: u64 = 4096;

/// Everything that goes into a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    /// The App ID (32 hex characters).
    pub app_id: String,
    /// Issue time, Unix seconds.
    pub issue_ts: u32,
    /// Lifetime in seconds, relative to `issue_ts`.
    pub expire: u32,
    /// Random salt, 1..=99999999.
    pub salt: u32,
    /// `None` for an app token, `Some(user id)` for a user token.
    pub user_id: Option<String>,
}

/// A parsed token: its spec, its chat privileges and the signature it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedToken {
    /// App id, times, salt and user id as carried.
    pub spec: TokenSpec,
    /// The chat service's privileges: (privilege, expire relative to `issue_ts`).
    pub privileges: Vec<(u16, u32)>,
    signature: Vec<u8>,
    signing_info: Vec<u8>,
}

/// Why a string is not a well-formed AccessToken2.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// Does not start with `007`.
    #[error("not an AccessToken2 (version prefix)")]
    Version,
    /// Not base64, not zlib, or truncated.
    #[error("malformed AccessToken2")]
    Malformed,
}

impl TokenSpec {
    /// An app-token spec (privilege 2).
    pub fn app(app_id: &str, issue_ts: u32, expire: u32, salt: u32) -> Self {
        TokenSpec {
            app_id: app_id.to_owned(),
            issue_ts,
            expire,
            salt,
            user_id: None,
        }
    }

    fn privilege(&self) -> u16 {
        if self.user_id.is_some() {
            PRIVILEGE_USER
        } else {
            PRIVILEGE_APP
        }
    }

    fn signing_info(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        put_str(&mut out, self.app_id.as_bytes());
        out.extend_from_slice(&self.issue_ts.to_le_bytes());
        out.extend_from_slice(&self.expire.to_le_bytes());
        out.extend_from_slice(&self.salt.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&SERVICE_CHAT.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&self.privilege().to_le_bytes());
        out.extend_from_slice(&self.expire.to_le_bytes());
        put_str(&mut out, self.user_id.as_deref().unwrap_or("").as_bytes());
        out
    }

    /// The inflated token body: `str(signature) ‖ signing_info`.
    pub fn payload(&self, app_certificate: &str) -> Vec<u8> {
        let info = self.signing_info();
        let signature = sign(app_certificate, self.issue_ts, self.salt, &info);
        let mut out = Vec::with_capacity(info.len() + 34);
        put_str(&mut out, &signature);
        out.extend_from_slice(&info);
        out
    }

    /// The token string: `"007" + base64(zlib(payload))`.
    pub fn build(&self, app_certificate: &str) -> String {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::default());
        // Writing into a Vec cannot fail.
        let compressed = encoder
            .write_all(&self.payload(app_certificate))
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        let mut token = String::from(VERSION);
        STANDARD.encode_string(compressed, &mut token);
        token
    }
}

impl ParsedToken {
    /// Parses a token string; does not check the signature (see [`ParsedToken::verify`]).
    pub fn parse(token: &str) -> Result<ParsedToken, ParseError> {
        let encoded = token.strip_prefix(VERSION).ok_or(ParseError::Version)?;
        let compressed = STANDARD
            .decode(encoded)
            .map_err(|_| ParseError::Malformed)?;
        let mut payload = Vec::new();
        ZlibDecoder::new(compressed.as_slice())
            .take(MAX_PAYLOAD)
            .read_to_end(&mut payload)
            .map_err(|_| ParseError::Malformed)?;
        parse_payload(&payload).ok_or(ParseError::Malformed)
    }

    /// Whether the signature was made with `app_certificate`.
    pub fn verify(&self, app_certificate: &str) -> bool {
        let key = signing_key(app_certificate, self.spec.issue_ts, self.spec.salt);
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
        mac.update(&self.signing_info);
        // verify_slice compares in constant time.
        mac.verify_slice(&self.signature).is_ok()
    }

    /// The Unix time after which the token is no longer valid, for `privilege`; `None` when the
    /// token does not grant it.
    pub fn valid_until(&self, privilege: u16) -> Option<u64> {
        let (_, privilege_expire) = self.privileges.iter().find(|(p, _)| *p == privilege)?;
        let issue = u64::from(self.spec.issue_ts);
        Some((issue + u64::from(self.spec.expire)).min(issue + u64::from(*privilege_expire)))
    }
}

/// A salt as the official builder draws it: uniform in 1..=99999999.
pub fn random_salt() -> u32 {
    rand::Rng::gen_range(&mut rand::thread_rng(), 1..=99_999_999)
}

fn signing_key(app_certificate: &str, issue_ts: u32, salt: u32) -> [u8; 32] {
    let inner = hmac(&issue_ts.to_le_bytes(), app_certificate.as_bytes());
    hmac(&salt.to_le_bytes(), &inner)
}

fn sign(app_certificate: &str, issue_ts: u32, salt: u32, info: &[u8]) -> [u8; 32] {
    hmac(&signing_key(app_certificate, issue_ts, salt), info)
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

fn put_str(out: &mut Vec<u8>, bytes: &[u8]) {
    // Every string here (app id, signature, user id) is far below u16::MAX bytes.
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A little-endian reader over the inflated payload.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn str(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

fn parse_payload(payload: &[u8]) -> Option<ParsedToken> {
    let mut r = Reader(payload);
    let signature = r.str()?.to_vec();
    let signing_info = r.0.to_vec();
    let app_id = String::from_utf8(r.str()?.to_vec()).ok()?;
    let issue_ts = r.u32()?;
    let expire = r.u32()?;
    let salt = r.u32()?;
    let services = r.u16()?;
    let mut privileges = Vec::new();
    let mut user_id = None;
    for _ in 0..services {
        let service = r.u16()?;
        let count = r.u16()?;
        let mut these = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            these.push((r.u16()?, r.u32()?));
        }
        // Other services (RTC, RTM…) carry fields of their own after the map; a chat token has
        // only the chat service, so anything else is not a token the chat API accepts.
        if service != SERVICE_CHAT {
            return None;
        }
        let user = String::from_utf8(r.str()?.to_vec()).ok()?;
        user_id = Some(user).filter(|u| !u.is_empty());
        privileges = these;
    }
    if !r.0.is_empty() {
        return None;
    }
    Some(ParsedToken {
        spec: TokenSpec {
            app_id,
            issue_ts,
            expire,
            salt,
            user_id,
        },
        privileges,
        signature,
        signing_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Vec<Value> {
        let text = include_str!("../../tests/data/agora-token-vectors.json");
        let doc: Value = serde_json::from_str(text).unwrap();
        doc["vectors"].as_array().unwrap().clone()
    }

    fn spec_of(v: &Value) -> TokenSpec {
        let input = &v["input"];
        TokenSpec {
            app_id: input["appId"].as_str().unwrap().to_owned(),
            issue_ts: input["issueTs"].as_u64().unwrap() as u32,
            expire: input["expire"].as_u64().unwrap() as u32,
            salt: input["salt"].as_u64().unwrap() as u32,
            user_id: input["userId"].as_str().map(str::to_owned),
        }
    }

    #[test]
    fn payload_matches_the_official_library_vectors() {
        for v in vectors() {
            let spec = spec_of(&v);
            let cert = v["input"]["appCertificate"].as_str().unwrap();
            assert_eq!(
                hex::encode(spec.payload(cert)),
                v["payload_hex"].as_str().unwrap(),
                "{}",
                v["name"]
            );
        }
    }

    #[test]
    fn official_tokens_parse_and_verify_with_the_right_certificate_only() {
        for v in vectors() {
            let cert = v["input"]["appCertificate"].as_str().unwrap();
            let parsed = ParsedToken::parse(v["token"].as_str().unwrap()).unwrap();
            assert_eq!(parsed.spec, spec_of(&v));
            assert!(parsed.verify(cert));
            assert!(!parsed.verify("00000000000000000000000000000000"));
        }
    }

    #[test]
    fn built_tokens_round_trip() {
        let spec = TokenSpec::app("0123456789abcdef0123456789abcdef", 1_700_000_000, 3600, 7);
        let parsed = ParsedToken::parse(&spec.build("cert")).unwrap();
        assert_eq!(parsed.spec, spec);
        assert_eq!(parsed.privileges, vec![(PRIVILEGE_APP, 3600)]);
        assert_eq!(parsed.valid_until(PRIVILEGE_APP), Some(1_700_003_600));
        assert_eq!(parsed.valid_until(PRIVILEGE_USER), None);
        assert!(parsed.verify("cert"));
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        assert_eq!(ParsedToken::parse("abc"), Err(ParseError::Version));
        assert_eq!(ParsedToken::parse("007!!!"), Err(ParseError::Malformed));
        assert_eq!(
            ParsedToken::parse("007eJwDAAAAAAE="),
            Err(ParseError::Malformed)
        );
        let mut token = TokenSpec::app("a", 1, 1, 1).build("c");
        token.truncate(token.len() - 8);
        assert!(ParsedToken::parse(&token).is_err());
    }
}
