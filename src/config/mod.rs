//! Configuration: raw TOML ([`RawConfig`], every field optional where a default makes sense)
//! → [`RawConfig::validate`] → typed [`Settings`]. Secrets may be given as `${ENV_VAR}` or
//! `file:/path`; they are resolved during validation and held as [`SecretString`].
//!
//! - [`raw`]: the file as written, with its defaults.
//! - [`validate`]: the checks that turn it into [`Settings`].
//! - [`secret`]: secret resolution and the masked printout.
//! - [`settings`]: the typed result.
//!
//! [`SecretString`]: secrecy::SecretString

mod raw;
mod secret;
mod settings;
mod validate;

pub use raw::*;
pub use secret::resolve_secret;
pub use settings::*;
pub use validate::vendor_identity;

/// A configuration problem, naming the field at fault (`apps[1].app_id: …`).
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    /// Dotted path of the field, or the file for syntax errors.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// Every error a configuration has (at least one), one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl std::fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        message: message.into(),
    }
}

/// A complete two-app, one-client configuration shared by the unit tests of the submodules.
#[cfg(test)]
const TEST_CONFIG: &str = r#"
        [[apps]]
        name = "a"
        vendor = "agora"
        upstream = "https://a41.chat.agora.io"
        app_id = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6"
        app_certificate = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"

        [[apps]]
        name = "e"
        vendor = "easemob"
        upstream = "http://127.0.0.1:8081"
        org = "o"
        app = "p"
        client_id = "id"
        client_secret = "secret"

        [[clients]]
        name = "svc"
        key = "svc-key-123"
        apps = ["a"]
    "#;
