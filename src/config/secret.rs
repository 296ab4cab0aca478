//! Secrets in the configuration: resolution of `${ENV_VAR}` and `file:` values, and the
//! printout with every secret masked.

use secrecy::SecretString;

use super::{bad, ConfigError, RawConfig};

const MASK: &str = "********";

impl RawConfig {
    /// The effective configuration as TOML with every secret replaced by a mask.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        let mask = |s: &mut Option<String>| {
            if s.is_some() {
                *s = Some(MASK.into());
            }
        };
        mask(&mut masked.admin.key);
        mask(&mut masked.client_tokens.signing_key);
        for app in &mut masked.apps {
            mask(&mut app.app_certificate);
            mask(&mut app.client_secret);
        }
        for client in &mut masked.clients {
            mask(&mut client.key);
        }
        masked.cluster = masked.cluster.map(|c| c.masked(MASK));
        toml::to_string_pretty(&masked).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

/// Resolves `${ENV_VAR}`, `file:/path` (trailing newline trimmed) or a literal.
pub fn resolve_secret(field: &str, value: &str) -> Result<SecretString, ConfigError> {
    let resolved = if let Some(var) = value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
        std::env::var(var)
            .map_err(|_| bad(field, format!("environment variable {var} is not set")))?
    } else if let Some(path) = value.strip_prefix("file:") {
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad(field, format!("cannot read {path}: {e}")))?;
        text.trim_end_matches(['\n', '\r']).to_owned()
    } else {
        value.to_owned()
    };
    if resolved.is_empty() {
        return Err(bad(field, "secret is empty"));
    }
    Ok(SecretString::from(resolved))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::super::TEST_CONFIG as GOOD;
    use super::*;

    #[test]
    fn secrets_come_from_env_and_files() {
        let path = std::env::temp_dir().join(format!("imgate-secret-{}", std::process::id()));
        std::fs::write(&path, "from-file\n").unwrap();
        let s = resolve_secret("f", &format!("file:{}", path.display())).unwrap();
        assert_eq!(s.expose_secret(), "from-file");
        std::fs::remove_file(&path).unwrap();
        assert!(resolve_secret("f", "${IMGATE_TEST_SURELY_UNSET_VAR}")
            .unwrap_err()
            .to_string()
            .contains("IMGATE_TEST_SURELY_UNSET_VAR"));
        assert_eq!(
            resolve_secret("f", "${PATH}").unwrap().expose_secret(),
            std::env::var("PATH").unwrap()
        );
    }

    #[test]
    fn masked_output_hides_every_secret() {
        let raw = RawConfig::parse(GOOD).unwrap();
        let text = raw.to_masked_toml();
        for secret in [
            "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
            "\"secret\"",
            "svc-key-123",
        ] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(
            text.contains("max_body_bytes = 65536"),
            "defaults are shown:\n{text}"
        );
    }
}
