//! systemd integration: with `$NOTIFY_SOCKET` set, edgeshard sends `READY=1` once it serves
//! and `STOPPING=1` when it drains (`Type=notify` in examples/edgeshard.service).

use crate::support::*;
use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The next datagram on `sock`, waiting at most `within` (reads interrupted by a signal, such
/// as another test's child exiting, are retried until then).
fn next_state(sock: &UnixDatagram, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "no sd_notify datagram within {within:?}");
        sock.set_read_timeout(Some(left)).unwrap();
        match sock.recv(&mut buf) {
            Ok(n) => return String::from_utf8_lossy(&buf[..n]).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no sd_notify datagram within {within:?}: {e}"),
        }
    }
}

both_engines! {
    fn notifies_ready_then_stopping(engine) {
        let origin = Origin::start("o");
        let dir = std::env::temp_dir().join(format!("edgeshard-notify-{}-{}", std::process::id(), engine.as_str()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock_path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&sock_path);
        let sock = UnixDatagram::bind(&sock_path).unwrap();
        let config = dir.join("edge.toml");
        std::fs::write(&config, Config::single(origin.addr()).render()).unwrap();
        let child = Command::new(BIN)
            .args(["run", "--shards", "1", "--io-engine", engine.as_str(), "--config"])
            .arg(&config)
            .env("NOTIFY_SOCKET", &sock_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let exited = watch_exit(child);
        assert_eq!(next_state(&sock, READY_TIMEOUT), "READY=1");
        // SAFETY: kill(2) on our own child, not reaped yet (its exit has not been reported).
        assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
        assert_eq!(next_state(&sock, Duration::from_secs(10)), "STOPPING=1");
        let status = exited.recv_timeout(Duration::from_secs(15)).expect("edgeshard did not exit after SIGTERM");
        assert_eq!(status.code(), Some(0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
