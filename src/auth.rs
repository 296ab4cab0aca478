//! Caller identity: `Authorization: Bearer <client key>` → the configured client.
//!
//! Keys are stored only as SHA-256 digests. A presented key is hashed and looked up by digest,
//! so the comparison never runs over the secret itself and timing reveals nothing useful.

use std::collections::HashMap;

use http::header::{HeaderMap, AUTHORIZATION};
use sha2::{Digest, Sha256};

use crate::config::ClientSettings;

/// A configured client, as the request path sees it.
#[derive(Debug)]
pub struct Client {
    /// Its name (metrics and logs; never its key).
    pub name: String,
    /// The app indices it may use; `None` for all.
    allowed: Option<Vec<usize>>,
}

impl Client {
    /// Whether this client may call the app at `app_index`.
    pub fn may_use(&self, app_index: usize) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|apps| apps.contains(&app_index))
    }
}

/// Every configured client, by key digest.
#[derive(Debug, Default)]
pub struct Clients {
    list: Vec<Client>,
    by_digest: HashMap<[u8; 32], usize>,
}

impl Clients {
    /// Builds the lookup; `app_index` maps an app name to its index.
    pub fn new(settings: &[ClientSettings], app_index: impl Fn(&str) -> Option<usize>) -> Clients {
        let mut clients = Clients::default();
        for (i, c) in settings.iter().enumerate() {
            let allowed = c
                .apps
                .as_ref()
                .map(|names| names.iter().filter_map(|n| app_index(n)).collect());
            clients.list.push(Client {
                name: c.name.clone(),
                allowed,
            });
            clients.by_digest.insert(c.key_sha256, i);
        }
        clients
    }

    /// The client whose key the request carries, if any.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&Client> {
        let key = bearer(headers)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest.get(&digest).map(|&i| &self.list[i])
    }
}

/// The credential of `Authorization: Bearer <credential>` (scheme case-insensitive).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, credential) = value.split_once(' ')?;
    let credential = credential.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !credential.is_empty()).then_some(credential)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn clients() -> Clients {
        let settings = vec![
            ClientSettings {
                name: "all".into(),
                key_sha256: Sha256::digest(b"key-all").into(),
                apps: None,
            },
            ClientSettings {
                name: "one".into(),
                key_sha256: Sha256::digest(b"key-one").into(),
                apps: Some(vec!["b".into()]),
            },
        ];
        Clients::new(&settings, |name| ["a", "b"].iter().position(|n| *n == name))
    }

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn a_known_key_names_its_client() {
        let c = clients();
        assert_eq!(
            c.authenticate(&headers("Bearer key-all")).unwrap().name,
            "all"
        );
        assert_eq!(
            c.authenticate(&headers("bearer  key-one ")).unwrap().name,
            "one"
        );
    }

    #[test]
    fn missing_unknown_or_malformed_credentials_are_refused() {
        let c = clients();
        assert!(c.authenticate(&HeaderMap::new()).is_none());
        assert!(c.authenticate(&headers("Bearer nope")).is_none());
        assert!(c.authenticate(&headers("Basic key-all")).is_none());
        assert!(c.authenticate(&headers("Bearer ")).is_none());
    }

    #[test]
    fn clients_are_limited_to_their_apps() {
        let c = clients();
        let one = c.authenticate(&headers("Bearer key-one")).unwrap();
        assert!(!one.may_use(0) && one.may_use(1));
        let all = c.authenticate(&headers("Bearer key-all")).unwrap();
        assert!(all.may_use(0) && all.may_use(1));
    }
}
