//! Replays the fuzz seed corpora (`fuzz/seeds/<target>/`, findings included) through the fuzz
//! targets' own bodies, on the stable toolchain, so that every input that ever broke a target
//! keeps being checked by `cargo test`.

#[path = "../fuzz/src/lib.rs"]
mod targets;

use std::path::Path;

/// Feeds every file of `fuzz/seeds/<name>/` to `target`; returns how many there were.
fn replay(name: &str, target: fn(&[u8])) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(name);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a readable directory").path())
        .collect();
    files.sort();
    for file in &files {
        let data = std::fs::read(file).expect("a readable seed");
        let outcome = std::panic::catch_unwind(|| target(&data));
        assert!(outcome.is_ok(), "{name}: {} fails", file.display());
    }
    files.len()
}

#[test]
fn route_seeds_classify_consistently() {
    assert!(replay("route", targets::route) >= 5);
}

#[test]
fn body_seeds_parse_merge_and_invalidate_as_cached() {
    assert!(replay("bodies", targets::bodies) >= 5);
}

#[test]
fn token_seeds_parse_and_round_trip() {
    assert!(replay("token", targets::token) >= 5);
}

#[test]
fn config_seeds_load_and_mask_their_secrets() {
    assert!(replay("config", targets::config) >= 5);
}
