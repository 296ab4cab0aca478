//! The repository speaks for itself: every document that the code, the README, the docs, the
//! configs and the deploy kit cite exists in the repository, and nothing cites a design
//! document that lives elsewhere.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every text file under the cited folders, with its path relative to the root.
fn sources() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_owned()];
    for dir in ["src", "tests", "docs", "config", "deploy", "benches", ".ci"] {
        collect(&root(), Path::new(dir), &mut files);
    }
    files
        .into_iter()
        .filter_map(|f| Some((std::fs::read_to_string(root().join(&f)).ok()?, f)))
        .map(|(text, f)| (f, text))
        .collect()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let rel = dir.join(entry.file_name());
        let name = entry.file_name().to_string_lossy().into_owned();
        if matches!(name.as_str(), "node" | "python" | "node_modules") {
            continue; // installed third-party packages
        }
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect(root, &rel, out);
        } else {
            out.push(rel.to_string_lossy().into_owned());
        }
    }
}

/// The `.md` paths a text names: `docs/x.md`, `README.md`, Markdown links.
fn cited_documents(text: &str) -> Vec<String> {
    let mut cited = Vec::new();
    for (i, _) in text.match_indices(".md") {
        let start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "/._-".contains(c)))
            .map_or(0, |s| s + 1);
        let path = &text[start..i + 3];
        if path.len() > 3 && !path.starts_with('.') {
            cited.push(path.to_owned());
        }
    }
    cited
}

#[test]
fn every_cited_document_exists() {
    let mut missing = Vec::new();
    let mut count = 0;
    for (file, text) in sources().into_iter().filter(|(f, _)| f != "tests/docs.rs") {
        let dir = Path::new(&file).parent().unwrap_or(Path::new(""));
        for cited in cited_documents(&text) {
            count += 1;
            // Relative to the repository root, or to the citing file (Markdown links).
            let exists = root().join(&cited).is_file() || root().join(dir).join(&cited).is_file();
            if !exists {
                missing.push(format!("{file}: {cited}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "cited but not in the repository: {missing:#?}"
    );
    assert!(
        count > 20,
        "only {count} citations found: is the scan broken?"
    );
}

#[test]
fn nothing_cites_a_design_document_outside_the_repository() {
    for (file, text) in sources().into_iter().filter(|(f, _)| f != "tests/docs.rs") {
        for foreign in ["DESIGN.md", "../shared", "shared/vendor-api"] {
            assert!(!text.contains(foreign), "{file} cites {foreign}");
        }
    }
}

#[test]
fn the_docs_hold_the_metric_catalogue_and_it_names_every_exported_metric() {
    let catalogue = std::fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let exported = std::fs::read_to_string(root().join("deploy/metrics.txt")).unwrap();
    for name in exported
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("imgate_"))
    {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            catalogue.contains(&format!("`{base}`")),
            "docs/metrics.md does not explain {base}"
        );
    }
}
