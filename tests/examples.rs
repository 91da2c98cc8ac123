//! Every configuration shipped in `examples/` is valid: `edgeshard check --config FILE` exits 0
//! for each `examples/*.toml`. The README and docs/CONFIG.md point readers at these files, so
//! a key renamed or a default tightened in `src/config/` must not leave them broken. And the
//! README's first command, `edgeshard demo`, serves traffic.

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

/// A running `edgeshard demo ARGS`, and the first stdout line starting with `prefix` (within
/// 20 s).
fn demo_until(args: &[&str], prefix: &str) -> (std::process::Child, String) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut child = Command::new(BIN)
        .arg("demo")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn edgeshard demo");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the demo did not print `{prefix}` in time");
        };
        if let Some(rest) = line.strip_prefix(prefix) {
            return (child, rest.to_string());
        }
    }
}

/// The README's first command: `edgeshard demo` serves real traffic with no other setup, in
/// front of its two built-in origins, in turn; a taken address is refused in the demo's own
/// terms (`--listen`).
#[test]
fn the_demo_serves_both_built_in_origins_in_turn() {
    use std::process::Command;
    let (mut child, addr) = demo_until(&["--listen", "127.0.0.1:0"], "edgeshard: listening on ");
    let pid = child.id();
    let addr: std::net::SocketAddr = addr.trim().parse().unwrap();
    let mut c = Client::connect(addr);
    let mut origins = Vec::new();
    for _ in 0..2 {
        c.send(&get("demo.test", "/"));
        let r = c.read_response();
        assert_eq!(r.status(), 200);
        origins.push(r.header("X-Origin").unwrap_or("?").to_owned());
    }
    origins.sort();
    assert_eq!(origins, ["A", "B"]);
    terminate_pid(pid);
    let _ = child.wait();

    // A taken address (held here): refused, naming --listen, before anything starts.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .args(["demo", "--listen", &held.local_addr().unwrap().to_string()])
        .output()
        .expect("run edgeshard demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--listen") && !stderr.contains("try: curl"),
        "{stderr}"
    );

    // A non-loopback --admin: refused with advice the demo can follow (it has no token).
    let out = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "0.0.0.0:0"])
        .output()
        .expect("run edgeshard demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--admin 127.0.0.1:"), "{stderr}");
}

#[test]
fn the_demo_runs_one_shard_on_each_cpu_given() {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--cpus",
        "0,1",
        "--io-engine",
        "epoll",
    ];
    let (mut child, ready) = demo_until(&args, "edgeshard: ready ");
    let pid = child.id();
    terminate_pid(pid);
    let _ = child.wait();
    assert!(ready.contains("shards=2"), "{ready}");
}
