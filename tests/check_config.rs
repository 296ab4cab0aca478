//! `imgate check-config` and `imgate serve` on configuration files: exit codes and masking.

use std::path::PathBuf;
use std::process::{Command, Output};

fn imgate(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_imgate"));
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("runs imgate")
}

fn example() -> String {
    format!("{}/config/imgate.example.toml", env!("CARGO_MANIFEST_DIR"))
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("imgate-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_example_config_is_valid_and_printed_with_secrets_masked() {
    let secret_file = temp_file("easemob-secret", "canary-easemob-secret\n");
    let text = std::fs::read_to_string(example()).unwrap().replace(
        "/run/secrets/easemob-client-secret",
        secret_file.to_str().unwrap(),
    );
    let config = temp_file("example.toml", &text);
    let out = imgate(
        &["check-config", "--config", config.to_str().unwrap()],
        &[
            ("IMGATE_ADMIN_KEY", "canary-admin-key"),
            ("AGORA_APP_CERTIFICATE", "0f1e2d3c4b5a69788796a5b4c3d2e1f0"),
            ("OPS_TOOLS_KEY", "canary-ops-key"),
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("name = \"agora-prod\""), "{stdout}");
    assert!(stdout.contains("********"));
    for secret in [
        "canary",
        "0f1e2d3c4b5a69788796a5b4c3d2e1f0",
        "${AGORA_APP_CERTIFICATE}",
    ] {
        assert!(!stdout.contains(secret), "{secret} printed:\n{stdout}");
    }
    std::fs::remove_file(config).unwrap();
    std::fs::remove_file(secret_file).unwrap();
}

#[test]
fn a_missing_secret_exits_2_naming_the_field() {
    let out = imgate(&["check-config", "--config", &example()], &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("apps[0].app_certificate") && stderr.contains("AGORA_APP_CERTIFICATE"),
        "{stderr}"
    );
}

#[test]
fn bad_configs_exit_2_for_check_and_serve_alike() {
    let bad = temp_file("bad.toml", "[[apps]]\nname = \"x\"\nvendor = \"agora\"\nupstream = \"https://h\"\napp_id = \"nothex\"\n");
    for command in ["check-config", "serve"] {
        let out = imgate(&[command, "--config", bad.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("apps[0].app_id"), "{command}: {stderr}");
    }
    let out = imgate(&["serve", "--config", "/nonexistent/imgate.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let out = imgate(&["serve"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing flag is a usage error"
    );
    std::fs::remove_file(bad).unwrap();
}
