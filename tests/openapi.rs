//! `docs/openapi.yaml` against `imgate demo`, checked by schemathesis (from PyPI; `.ci/run`
//! installs it; ignored unless run with `--include-ignored`): a short, seeded run over the API
//! listener and one over the admin listener, with valid and invalid calls generated from the
//! spec, must find no 5xx answer and no answer the spec does not describe (status, content
//! type, required headers, body schema).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{free_port, KillOnDrop};

/// What every answer is checked for.
const CHECKS: &str = "not_a_server_error,status_code_conformance,content_type_conformance,\
                      response_headers_conformance,response_schema_conformance";
/// The longest one schemathesis run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(240);

/// The schemathesis command: `$SCHEMATHESIS`, else `st` on the PATH.
fn schemathesis() -> Option<PathBuf> {
    let st = std::env::var_os("SCHEMATHESIS").map_or_else(|| PathBuf::from("st"), PathBuf::from);
    let works = Command::new(&st)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(st)
}

/// Waits until something listens on `port`.
fn wait_for(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "nothing listens on {port}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs schemathesis on the operations tagged `tag` at `url`; returns its report when it finds
/// nothing, else fails with it.
fn run(st: &Path, dir: &Path, tag: &str, url: &str, key: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let report = dir.join(format!("{tag}.txt"));
    let out = File::create(&report).expect("a report file");
    let child = Command::new(st)
        .current_dir(dir)
        .arg("--config-file")
        .arg(root.join("tests/data/schemathesis.toml"))
        .arg("run")
        .arg(root.join("docs/openapi.yaml"))
        .args(["--url", url, "--include-tag", tag])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .args(["--checks", CHECKS, "--phases", "coverage,fuzzing"])
        .args(["--max-examples", "5", "--seed", "1"])
        // One worker: the coverage phase of this schemathesis trips over itself with more.
        .args(["-w", "1", "--request-timeout", "10", "--no-color"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::from(out.try_clone().expect("a second handle")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("starts schemathesis");
    let mut child = KillOnDrop(child);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("schemathesis runs") {
            break status;
        }
        assert!(
            started.elapsed() < RUN_LIMIT,
            "schemathesis ran over {RUN_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&report).unwrap_or_default();
    assert!(
        status.success(),
        "schemathesis on {tag} ({status}):\n{text}"
    );
    text
}

/// How many test cases a report says were generated.
fn generated(report: &str) -> usize {
    report
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_suffix(" passed")?
                .split_once(" generated")?
                .0
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "needs schemathesis (.ci/run installs it; run with --include-ignored)"]
fn the_demo_serves_what_the_openapi_spec_says() {
    let st = schemathesis()
        .expect("schemathesis is not installed (pip install schemathesis, or set $SCHEMATHESIS)");
    let [api, admin, emulator] = [free_port(), free_port(), free_port()];
    let child = Command::new(env!("CARGO_BIN_EXE_imgate"))
        .args(["demo", "--listen", &format!("127.0.0.1:{api}")])
        .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
        .args(["--emulator-listen", &format!("127.0.0.1:{emulator}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .spawn()
        .expect("starts imgate demo");
    let _demo = KillOnDrop(child);
    wait_for(api);
    wait_for(admin);
    let dir = std::env::temp_dir().join(format!("imgate-openapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a work directory");
    let runs = [
        ("api", api, "demo-key", 500),
        ("admin", admin, "demo-admin-key", 50),
    ];
    for (tag, port, key, at_least) in runs {
        let report = run(&st, &dir, tag, &format!("http://127.0.0.1:{port}"), key);
        let cases = generated(&report);
        assert!(cases >= at_least, "{tag}: only {cases} cases:\n{report}");
        assert!(report.contains("Tested: "), "{report}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
