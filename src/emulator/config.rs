//! The emulator's TOML configuration: which apps exist, their credentials, known users, quotas
//! and faults. Without a file the emulator serves the demo identities (docs/vendor-api.md).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::demo;
use crate::route::Endpoint;
use crate::vendor::VendorKind;

/// The emulator configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatorConfig {
    /// Address to listen on when none is given on the command line.
    #[serde(default)]
    pub listen: Option<String>,
    /// The emulated apps.
    #[serde(default)]
    pub apps: Vec<EmulatedApp>,
    /// Faults active from the start (also settable at run time via `/__emulator/faults`).
    #[serde(default)]
    pub faults: Faults,
}

/// One emulated app.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmulatedApp {
    /// `agora` or `easemob`.
    pub vendor: VendorKind,
    /// Agora App ID (Agora apps).
    #[serde(default)]
    pub app_id: String,
    /// Agora App Certificate that tokens must be signed with (Agora apps).
    #[serde(default)]
    pub app_certificate: String,
    /// Easemob org name (Easemob apps).
    #[serde(default)]
    pub org: String,
    /// Easemob app name (Easemob apps).
    #[serde(default)]
    pub app: String,
    /// Easemob client id accepted by the token endpoint.
    #[serde(default)]
    pub client_id: String,
    /// Easemob client secret accepted by the token endpoint.
    #[serde(default)]
    pub client_secret: String,
    /// `expires_in` of issued Easemob tokens when the request names no `ttl`, in seconds.
    #[serde(default = "default_token_expires_in")]
    pub token_expires_in: u64,
    /// When set, only these users exist; others get 404 `service_resource_not_found`.
    #[serde(default)]
    pub users: Option<Vec<String>>,
    /// Per-endpoint quotas in calls per second (by endpoint name, docs/metrics.md); others use the
    /// vendor's defaults. `0` disables the quota of that endpoint.
    #[serde(default)]
    pub quotas: BTreeMap<String, u32>,
}

fn default_token_expires_in() -> u64 {
    5_184_000
}

/// Fault injection, applied to vendor endpoints (never to `/__emulator/`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added latency before answering, in milliseconds.
    pub latency_ms: u64,
    /// Fraction of requests (0..=1) answered with `error_status`.
    pub error_rate: f64,
    /// The status of injected errors.
    pub error_status: u16,
    /// Fraction of requests (0..=1) whose connection is dropped without an answer.
    pub reset_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            latency_ms: 0,
            error_rate: 0.0,
            error_status: 503,
            reset_rate: 0.0,
        }
    }
}

impl Faults {
    /// Checks rates and status; names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("reset_rate", self.reset_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("faults.{name}: must be between 0 and 1"));
            }
        }
        if !(400..=599).contains(&self.error_status) {
            return Err("faults.error_status: must be a 4xx or 5xx status".into());
        }
        if self.latency_ms > 60_000 {
            return Err("faults.latency_ms: at most 60000".into());
        }
        Ok(())
    }
}

impl EmulatorConfig {
    /// The demo identities: one Agora app and one Easemob app.
    pub fn demo() -> Self {
        let base = EmulatedApp {
            vendor: VendorKind::Agora,
            app_id: demo::AGORA_APP_ID.into(),
            app_certificate: demo::AGORA_APP_CERTIFICATE.into(),
            org: String::new(),
            app: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            token_expires_in: default_token_expires_in(),
            users: None,
            quotas: BTreeMap::new(),
        };
        let easemob = EmulatedApp {
            vendor: VendorKind::Easemob,
            app_id: String::new(),
            app_certificate: String::new(),
            org: demo::EASEMOB_ORG.into(),
            app: demo::EASEMOB_APP.into(),
            client_id: demo::EASEMOB_CLIENT_ID.into(),
            client_secret: demo::EASEMOB_CLIENT_SECRET.into(),
            ..base.clone()
        };
        EmulatorConfig {
            listen: None,
            apps: vec![base, easemob],
            faults: Faults::default(),
        }
    }

    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let config: EmulatorConfig =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every app and the faults; the error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        if self.apps.is_empty() {
            return Err("apps: at least one app is required".into());
        }
        for (i, app) in self.apps.iter().enumerate() {
            let field = |name: &str| format!("apps[{i}].{name}");
            let required: &[(&str, &str)] = match app.vendor {
                VendorKind::Agora => &[
                    ("app_id", &app.app_id),
                    ("app_certificate", &app.app_certificate),
                ],
                VendorKind::Easemob => &[
                    ("org", &app.org),
                    ("app", &app.app),
                    ("client_id", &app.client_id),
                    ("client_secret", &app.client_secret),
                ],
            };
            if let Some((name, _)) = required.iter().find(|(_, v)| v.is_empty()) {
                return Err(format!(
                    "{}: required for a {:?} app",
                    field(name),
                    app.vendor
                ));
            }
            if let Some(name) = app.quotas.keys().find(|k| Endpoint::from_name(k).is_none()) {
                return Err(format!(
                    "{}: unknown endpoint",
                    field(&format!("quotas.{name}"))
                ));
            }
        }
        self.faults.validate()
    }
}
