//! What a token source needs to know about its app: the vendor credentials that mint or fetch
//! its tokens, and the keys derived from them (so that other parts never handle the raw secrets).

use secrecy::{ExposeSecret, SecretString};

use crate::route::encode_segment;
use crate::vendor::VendorKind;

/// The credentials of an app, per vendor.
#[derive(Debug)]
pub enum Credentials {
    /// Agora: AccessToken2 minted from App ID + App Certificate.
    Agora {
        /// App ID.
        app_id: String,
        /// App Certificate.
        certificate: SecretString,
        /// Token lifetime, seconds.
        expire_secs: u32,
    },
    /// Easemob: client credentials exchanged at the token endpoint.
    Easemob {
        /// Org name.
        org: String,
        /// App name.
        app: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: SecretString,
        /// Requested `ttl`, seconds.
        ttl_secs: Option<u64>,
    },
}

impl Credentials {
    /// Whether both name the same app with the same secrets (a reload keeps the app's token).
    pub fn same_as(&self, other: &Credentials) -> bool {
        match (self, other) {
            (
                Credentials::Agora {
                    app_id,
                    certificate,
                    expire_secs,
                },
                Credentials::Agora {
                    app_id: id2,
                    certificate: cert2,
                    expire_secs: exp2,
                },
            ) => {
                app_id == id2
                    && certificate.expose_secret() == cert2.expose_secret()
                    && expire_secs == exp2
            }
            (
                Credentials::Easemob {
                    org,
                    app,
                    client_id,
                    client_secret,
                    ttl_secs,
                },
                Credentials::Easemob {
                    org: o2,
                    app: a2,
                    client_id: id2,
                    client_secret: s2,
                    ttl_secs: t2,
                },
            ) => {
                org == o2
                    && app == a2
                    && client_id == id2
                    && client_secret.expose_secret() == s2.expose_secret()
                    && ttl_secs == t2
            }
            _ => false,
        }
    }

    /// The app's path prefix as the vendor knows it (`/app-id/{id}` or `/{org}/{app}`),
    /// percent-encoded: what every call of the app starts with.
    pub fn prefix(&self) -> String {
        match self {
            Credentials::Agora { app_id, .. } => format!("/app-id/{}", encode_segment(app_id)),
            Credentials::Easemob { org, app, .. } => {
                format!("/{}/{}", encode_segment(org), encode_segment(app))
            }
        }
    }

    /// The vendor these credentials belong to.
    pub fn vendor(&self) -> VendorKind {
        match self {
            Credentials::Agora { .. } => VendorKind::Agora,
            Credentials::Easemob { .. } => VendorKind::Easemob,
        }
    }
}

impl Credentials {
    /// Easemob credentials of app `o/a` with `secret`, for unit tests.
    #[cfg(test)]
    pub(crate) fn easemob_for_tests(secret: &str) -> Credentials {
        Credentials::Easemob {
            org: "o".into(),
            app: "a".into(),
            client_id: "id".into(),
            client_secret: SecretString::from(secret.to_owned()),
            ttl_secs: None,
        }
    }

    /// A 32-byte key for `purpose`, derived (HKDF-SHA256) from the app's secret and bound to
    /// its identity: stable as long as the credentials are, different for every purpose and app,
    /// and useless for recovering the secret.
    pub fn derive_key(&self, purpose: &str) -> [u8; 32] {
        let (secret, identity) = match self {
            Credentials::Agora {
                app_id,
                certificate,
                ..
            } => (
                certificate,
                format!("agora\0{}", app_id.to_ascii_lowercase()),
            ),
            Credentials::Easemob {
                org,
                app,
                client_id,
                client_secret,
                ..
            } => (client_secret, format!("easemob\0{org}\0{app}\0{client_id}")),
        };
        let mut key = [0u8; 32];
        hkdf::Hkdf::<sha2::Sha256>::new(
            Some(purpose.as_bytes()),
            secret.expose_secret().as_bytes(),
        )
        .expand(identity.as_bytes(), &mut key)
        .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_are_stable_and_differ_by_secret_and_purpose() {
        let a = Credentials::easemob_for_tests("secret-1");
        assert_eq!(
            a.derive_key("p"),
            Credentials::easemob_for_tests("secret-1").derive_key("p")
        );
        assert_ne!(
            a.derive_key("p"),
            Credentials::easemob_for_tests("secret-2").derive_key("p")
        );
        assert_ne!(a.derive_key("p"), a.derive_key("q"));
        let agora = Credentials::Agora {
            app_id: "AB".into(),
            certificate: SecretString::from("secret-1"),
            expire_secs: 1,
        };
        assert_ne!(agora.derive_key("p"), a.derive_key("p"));
        assert!(!a.derive_key("p").windows(8).any(|w| w == b"secret-1"));
    }
}
