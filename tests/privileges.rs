//! `[server] user`/`group`: started as root, edgeshard binds its listeners and the admin
//! socket and opens the access log, then runs as the configured user (src/privs.rs). An
//! unknown name, or a switch a non-root process cannot make, stops start-up with exit 1.

use crate::support::*;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

/// `id -u NAME` or `id -g NAME`; None when there is no such user.
fn id_of(user: &str, flag: &str) -> Option<u32> {
    let out = Command::new("id").args([flag, user]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// The IDs on a `Uid:`/`Gid:`/`Groups:` line of /proc/PID[/task/TID]/status.
fn ids(status_file: &std::path::Path, field: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(status_file)
        .unwrap_or_else(|e| panic!("read {}: {e}", status_file.display()));
    edgeshard::privs::status_ids(&text, field)
}

fn temp_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("edgeshard-privs-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

both_engines! {
    fn runs_as_nobody_after_binding_and_still_serves(engine) {
        if euid() != 0 {
            println!(
                "privileges: this test runs as uid {} (not root), so it cannot check the switch to \
                 `nobody`; CI runs it as root. Only the error paths are checked here.",
                euid()
            );
            return;
        }
        let uid = id_of("nobody", "-u").expect("this host has no user `nobody`");
        let gid = id_of("nobody", "-g").unwrap();
        let origin = Origin::start("o");
        // The access log lives in a directory only root may enter: lines reach it only if the
        // file was opened before the switch.
        let dir = temp_dir(engine.as_str());
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let log = dir.join("access.log");
        let config = Config::single(origin.addr())
            .server("user", "\"nobody\"")
            .admin("")
            .section("log", &format!("access = \"{}\"", log.display()));
        let mut proxy = Proxy::start_shards(&config.render(), engine, 2);
        let proc_dir = PathBuf::from(format!("/proc/{}", proxy.pid()));
        let status = proc_dir.join("status");
        assert_eq!(ids(&status, "Uid:"), vec![uid; 4], "real, effective, saved and fs uid must be nobody's");
        assert_eq!(ids(&status, "Gid:"), vec![gid; 4], "every gid must be nobody's primary group");
        assert!(!ids(&status, "Groups:").contains(&0), "no supplementary group root is left");
        // Every thread (main, shards, admin, prober, log writer), not just the main one.
        let mut tasks = 0;
        for task in std::fs::read_dir(proc_dir.join("task")).unwrap().flatten() {
            let s = task.path().join("status");
            if let Ok(text) = std::fs::read_to_string(&s) {
                assert_eq!(edgeshard::privs::status_ids(&text, "Uid:"), vec![uid; 4], "{}", s.display());
                tasks += 1;
            }
        }
        assert!(tasks >= 4, "main, two shards and the admin thread at least; saw {tasks}");
        // It still serves: the listener, the upstream connection, the admin socket.
        let mut c = Client::connect(proxy.addr());
        c.send(&get("example.test", "/after-switch"));
        assert_eq!(c.read_response().status(), 200);
        assert_eq!(origin.last_request().path(), "/after-switch");
        assert_eq!(admin_get(proxy.admin_addr(), "/status", None).status, 200);
        drop(c);
        proxy.signal(libc::SIGTERM);
        assert_eq!(proxy.wait_exit(Duration::from_secs(15)).code(), Some(0));
        // The writer writes every queued line before the process exits.
        let lines = std::fs::read_to_string(&log).unwrap();
        assert!(lines.contains("/after-switch"), "access log: {lines:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn unknown_user_or_group_exits_1_naming_the_key() {
    let dir = temp_dir("unknown");
    for (server, key, name) in [
        (
            "user = \"edgeshard-no-such-user\"",
            "server.user",
            "edgeshard-no-such-user",
        ),
        (
            "user = \"nobody\"\ngroup = \"edgeshard-no-such-group\"",
            "server.group",
            "edgeshard-no-such-group",
        ),
    ] {
        let file = dir.join("edge.toml");
        let text = format!(
            "[server]\n{server}\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"u\"\n\n\
             [[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        );
        std::fs::write(&file, text).unwrap();
        for args in [
            &["run", "--io-engine", "epoll", "--config"][..],
            &["check", "--config"],
        ] {
            let mut cmd = Command::new(BIN);
            cmd.args(args).arg(&file);
            let (status, out) = run_bounded(cmd, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("{args:?} with {key} = {name:?} did not exit: {e}"));
            assert_eq!(status.code(), Some(1), "{args:?}: {out}");
            assert!(
                out.lines().any(|l| l.contains("edge.toml: ")
                    && l.contains(&format!("{key}: "))
                    && l.contains(name)),
                "{args:?}: a line must name the file, {key} and {name:?}; output:\n{out}"
            );
            assert!(!out.contains("edgeshard: ready"), "{out}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A process that is not root cannot become another user: exit 1 with what to do. As root,
/// the proxy is started as `nobody` (the real non-root case); otherwise as the test's user.
#[test]
fn non_root_cannot_switch_to_another_user() {
    let dir = temp_dir("nonroot");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let target = if id_of("daemon", "-u").is_some_and(|u| u != euid()) {
        "daemon"
    } else {
        "root"
    };
    let file = dir.join("edge.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nuser = \"{target}\"\n\n[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"u\"\n\n\
             [[upstream]]\nname = \"u\"\nbackends = [{{ address = \"127.0.0.1:1\" }}]\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--io-engine", "epoll", "--config"])
        .arg(&file);
    if euid() == 0 {
        let uid = id_of("nobody", "-u").expect("this host has no user `nobody`");
        let gid = id_of("nobody", "-g").unwrap();
        cmd.uid(uid).gid(gid);
    }
    let (status, out) = run_bounded(cmd, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("the proxy did not exit: {e}"));
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("server.user = \"{target}\"")) && out.contains("not root") && out.contains("start it as root"),
        "the error must name server.user, say the process is not root and what to do; output:\n{out}"
    );
    assert!(!out.contains("listening on"), "nothing may be bound: {out}");
    let _ = std::fs::remove_dir_all(&dir);
}
