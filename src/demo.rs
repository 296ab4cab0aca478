//! `imgate demo`: the emulator and the gateway in one process, with the demo identities of
//! DESIGN.md (the emulator's default configuration uses them too).

/// Demo Agora App ID.
pub const AGORA_APP_ID: &str = "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6";
/// Demo Agora App Certificate.
pub const AGORA_APP_CERTIFICATE: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// Demo Easemob org name.
pub const EASEMOB_ORG: &str = "demo-org";
/// Demo Easemob app name.
pub const EASEMOB_APP: &str = "demo-app";
/// Demo Easemob client id.
pub const EASEMOB_CLIENT_ID: &str = "demo-client-id";
/// Demo Easemob client secret.
pub const EASEMOB_CLIENT_SECRET: &str = "demo-client-secret";
