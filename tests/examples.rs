//! Every configuration shipped in `examples/` is valid: `edgeshard check --config FILE` exits 0
//! for each `examples/*.toml`. The README and docs/CONFIG.md point readers at these files, so
//! a key renamed or a default tightened in `src/config/` must not leave them broken.

use crate::support::*;
use std::path::{Path, PathBuf};

/// `examples/*.toml`, sorted, so a failure names the same file on every run.
fn example_configs() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_config_passes_check() {
    let files = example_configs();
    let basic = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/basic.toml");
    assert!(
        files.contains(&basic),
        "examples/basic.toml (linked from README.md and docs/CONFIG.md) is missing; found {files:?}"
    );
    for file in &files {
        let (code, out) = check_file(file);
        assert_eq!(
            code,
            Some(0),
            "edgeshard check --config {} must exit 0; output:\n{out}",
            file.display()
        );
        assert!(
            out.contains("configuration is valid"),
            "edgeshard check --config {} exited 0 without saying the file is valid; output:\n{out}",
            file.display()
        );
    }
}
