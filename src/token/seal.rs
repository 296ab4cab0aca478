//! App tokens sealed for a shared store: ChaCha20-Poly1305 under a key derived from the app's
//! credentials, so that whoever can read the store but not the configuration never holds a
//! usable vendor token. The generation is authenticated too (as associated data): a sealed
//! token cannot be replayed under another generation or for another app.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use secrecy::{ExposeSecret, SecretString};

use super::{Credentials, IssuedToken};

/// The HKDF purpose of the sealing key (a new label makes every stored token unreadable).
const PURPOSE: &str = "imgate app-token seal v1";
const NONCE_LEN: usize = 12;
/// Issued-at and expiry, milliseconds since the Unix epoch, before the token itself.
const TIMES_LEN: usize = 16;

/// Seals and opens one app's shared tokens.
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([REDACTED])")
    }
}

impl Sealer {
    /// The sealer of the app with these credentials.
    pub fn new(credentials: &Credentials) -> Sealer {
        let key = credentials.derive_key(PURPOSE);
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// `nonce ‖ ciphertext` of the token's times and text, bound to its generation.
    pub fn seal(&self, token: &IssuedToken) -> Vec<u8> {
        let mut plain = Vec::with_capacity(TIMES_LEN + token.token.expose_secret().len());
        plain.extend_from_slice(&token.issued_unix_ms.to_le_bytes());
        plain.extend_from_slice(&token.expires_unix_ms.unwrap_or(0).to_le_bytes());
        plain.extend_from_slice(token.token.expose_secret().as_bytes());
        let nonce: [u8; NONCE_LEN] = rand::random();
        let aad = token.generation.to_le_bytes();
        let sealed = self
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// The token sealed in `bytes` for `generation`; `None` when it was sealed with other
    /// credentials, for another generation, or altered.
    pub fn open(&self, generation: u64, bytes: &[u8]) -> Option<IssuedToken> {
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let aad = generation.to_le_bytes();
        let plain = self
            .cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .ok()?;
        let time = |at: usize| Some(u64::from_le_bytes(plain.get(at..at + 8)?.try_into().ok()?));
        let issued_unix_ms = time(0)?;
        let expires_unix_ms = Some(time(8)?).filter(|ms| *ms != 0);
        let token = String::from_utf8(plain.get(TIMES_LEN..)?.to_vec()).ok()?;
        Some(IssuedToken {
            generation,
            issued_unix_ms,
            expires_unix_ms,
            token: SecretString::from(token),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials(secret: &str) -> Credentials {
        Credentials::easemob_for_tests(secret)
    }

    fn token() -> IssuedToken {
        IssuedToken {
            generation: 7,
            issued_unix_ms: 1_000,
            expires_unix_ms: Some(2_000),
            token: SecretString::from("YWMt-the-vendor-token"),
        }
    }

    #[test]
    fn a_sealed_token_opens_with_the_same_credentials_only() {
        let sealer = Sealer::new(&credentials("s1"));
        let sealed = sealer.seal(&token());
        assert!(!sealed.windows(4).any(|w| w == b"YWMt"), "sealed in clear");
        let opened = sealer.open(7, &sealed).unwrap();
        assert_eq!(opened.token.expose_secret(), "YWMt-the-vendor-token");
        assert_eq!(
            (
                opened.generation,
                opened.issued_unix_ms,
                opened.expires_unix_ms
            ),
            (7, 1_000, Some(2_000))
        );
        assert!(Sealer::new(&credentials("s2")).open(7, &sealed).is_none());
    }

    #[test]
    fn another_generation_or_an_altered_byte_is_refused() {
        let sealer = Sealer::new(&credentials("s1"));
        let sealed = sealer.seal(&token());
        assert!(
            sealer.open(8, &sealed).is_none(),
            "replayed as generation 8"
        );
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut altered = sealed.clone();
            altered[i] ^= 1;
            assert!(sealer.open(7, &altered).is_none(), "byte {i} altered");
        }
        assert!(sealer.open(7, &sealed[..5]).is_none());
        assert!(sealer.open(7, &[]).is_none());
    }

    #[test]
    fn tokens_without_expiry_and_fresh_nonces() {
        let sealer = Sealer::new(&credentials("s1"));
        let forever = IssuedToken {
            expires_unix_ms: None,
            ..token()
        };
        let (a, b) = (sealer.seal(&forever), sealer.seal(&forever));
        assert_ne!(a, b, "every seal draws a new nonce");
        assert_eq!(sealer.open(7, &a).unwrap().expires_unix_ms, None);
    }
}
