//! Every configuration shipped in `examples/` is valid: `edgeshard check --config FILE` exits 0
//! for each `examples/*.toml`. The README and docs/CONFIG.md point readers at these files, so
//! a key renamed or a default tightened in `src/config/` must not leave them broken.

use crate::support::*;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

/// How long one `check` may take before the test kills it (it reads one small file).
const CHECK_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Runs `edgeshard check --config FILE` on the file in place; returns (exit code, output).
/// The child is killed if it has not exited within [`CHECK_TIMEOUT`].
fn check_file(path: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let pid = child.id();
    let exited = watch_exit(child);
    let status = match exited.recv_timeout(CHECK_TIMEOUT) {
        Ok(status) => status,
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid. `watch_exit`'s thread has not reaped it
            // (no status arrived), so the pid still names that child and cannot be reused.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!(
                "edgeshard check --config {} did not exit within {CHECK_TIMEOUT:?}",
                path.display()
            );
        }
    };
    let text = format!("{}{}", out.join().unwrap(), err.join().unwrap());
    (status.code(), text)
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
