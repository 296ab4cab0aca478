//! `imgate demo` as a new user meets it: start the binary, paste the curl commands it prints.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

mod common;

use common::{free_port, KillOnDrop};
use std::time::{Duration, Instant};

#[test]
fn the_printed_curl_commands_work_as_pasted() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let [api, admin, emulator] = [free_port(), free_port(), free_port()];
    let child = Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{api}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--emulator-listen", &format!("127.0.0.1:{emulator}")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("starts imgate demo");
    let mut child = KillOnDrop(child);
    let stdout = child.0.stdout.take().unwrap();
    let mut commands = Vec::new();
    let started = Instant::now();
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.starts_with("curl ") || line.starts_with("MSG=") {
            commands.push(line.clone());
        }
        if line.contains("/metrics") || started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    assert!(
        commands.len() >= 20,
        "both prefixes and the metrics: {commands:#?}"
    );
    // The servers are listening before the commands are printed.
    let script = commands.join("\n");
    let out = Command::new("bash")
        .args(["-c", &script])
        .output()
        .expect("runs bash");
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        r#""data":{"bob":1}"#,
        r#""data":{"bob":0}"#,
        r#":"undelivered"}"#,
        r#":"delivered"}"#,
        r#""totalnum":"2""#,
        r#""ext":"on the bus""#,
        r#"imgate_http_requests_total{app="easemob-demo",client="demo",endpoint="presence_sublist",status="200"} 1"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("\"error\""), "no command failed:\n{text}");
    drop(lines);
}
