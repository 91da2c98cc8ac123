//! Start-up, privileges (`[server] user`, `group`): edgeshard is started as root, binds every
//! listener and the admin socket and opens the access log, then switches to an unprivileged
//! user before any other thread exists: supplementary groups (`initgroups`), then the group
//! (`setgid`), then the user (`setuid`), in that order (after `setuid` the process could no
//! longer change its groups). Then it checks the result: real and effective IDs are the
//! target's, every thread of the process carries them (`/proc/self/task/*/status`), and
//! `setuid(0)` fails.
//!
//! Threads: `libc::setuid`/`setgid` are glibc's (or musl's) wrappers, which apply the change
//! to every thread of the process (glibc's `setxid` signals each thread to make the system
//! call itself; musl's `__synccall` does the same); the raw system calls would change only
//! the calling thread. main.rs calls [`Target::switch`] while it is still the only thread
//! anyway, and the per-thread check above holds whichever way the libc works.

use std::ffi::{CStr, CString};
use std::io;

/// The user and group to run as, looked up in the passwd and group databases.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    pub uid: u32,
    /// `server.group`'s ID, or the user's primary group.
    pub gid: u32,
    /// `server.group` as written, when set.
    pub group: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PrivError {
    #[error("server.user: no user named {name:?} on this host; create it (e.g. useradd --system --no-create-home --shell /usr/sbin/nologin {name}) or name an existing user")]
    UnknownUser { name: String },
    #[error("server.group: no group named {name:?} on this host; create it (groupadd --system {name}), name an existing group, or leave server.group out to use the user's primary group")]
    UnknownGroup { name: String },
    #[error("{key}: cannot look up {name:?}: {source}")]
    Lookup {
        key: &'static str,
        name: String,
        source: io::Error,
    },
    #[error("server.user = {user:?}: edgeshard runs as {current}, not root, and cannot switch to another user; start it as root (it binds the listeners, then runs as {user:?}), or remove server.user and start it as {user:?} (under systemd: User= with AmbientCapabilities=CAP_NET_BIND_SERVICE for ports below 1024)")]
    NotRoot { user: String, current: String },
    #[error("server.user = {user:?}: {step} failed: {source}")]
    Step {
        user: String,
        step: &'static str,
        source: io::Error,
    },
    #[error("server.user = {user:?}: the switch did not take: {what}; refusing to serve")]
    Verify { user: String, what: String },
}

/// What [`Target::switch`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Switched {
    /// The process already ran as the target (a non-root start as that user): nothing to do.
    Already,
    /// It ran as root and now runs as the target.
    Dropped,
}

impl Target {
    /// Looks `user` (and `group`, else the user's primary group) up; an unknown name is an
    /// error naming its key.
    pub fn resolve(user: &str, group: Option<&str>) -> Result<Target, PrivError> {
        let (uid, primary) = lookup_user(user)?.ok_or_else(|| PrivError::UnknownUser {
            name: user.to_string(),
        })?;
        let gid = match group {
            None => primary,
            Some(g) => lookup_group(g)?.ok_or_else(|| PrivError::UnknownGroup {
                name: g.to_string(),
            })?,
        };
        Ok(Target {
            user: user.to_string(),
            uid,
            gid,
            group: group.map(str::to_string),
        })
    }

    /// Switches the whole process to this user and group, then verifies it (see the module
    /// comment). Call it with the listeners bound and before any thread is started.
    pub fn switch(&self) -> Result<Switched, PrivError> {
        if self.permitted()? == Switched::Already {
            return Ok(Switched::Already);
        }
        let step = |step: &'static str| {
            let source = io::Error::last_os_error();
            PrivError::Step {
                user: self.user.clone(),
                step,
                source,
            }
        };
        let name = CString::new(self.user.as_str()).map_err(|_| PrivError::UnknownUser {
            name: self.user.clone(),
        })?;
        // SAFETY: initgroups reads the NUL-terminated `name`, alive for the call, and sets the
        // supplementary groups to the user's groups from the group database plus `gid`.
        // Exercised by tests/privileges.rs (a proxy started as root with user = "nobody").
        if unsafe { libc::initgroups(name.as_ptr(), self.gid as libc::gid_t) } != 0 {
            return Err(step("initgroups (setting the supplementary groups)"));
        }
        // SAFETY: setgid and setuid take plain integers. Called as root, they set the real,
        // effective and saved IDs; the libc wrappers apply them to every thread (module
        // comment). Exercised by tests/privileges.rs.
        if unsafe { libc::setgid(self.gid as libc::gid_t) } != 0 {
            return Err(step("setgid"));
        }
        // SAFETY: as above.
        if unsafe { libc::setuid(self.uid as libc::uid_t) } != 0 {
            return Err(step("setuid"));
        }
        self.verify()?;
        Ok(Switched::Dropped)
    }

    /// Whether [`Target::switch`] can work, before anything is bound: `Already` when the
    /// process runs as the target now, `Dropped` when it runs as root, else the error that
    /// says what to do.
    pub fn permitted(&self) -> Result<Switched, PrivError> {
        // SAFETY: these getters take no arguments and cannot fail.
        let (uid, euid, gid, egid) = unsafe {
            (
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
            )
        };
        if uid == self.uid && euid == self.uid && gid == self.gid && egid == self.gid {
            return Ok(Switched::Already);
        }
        if euid != 0 {
            return Err(PrivError::NotRoot {
                user: self.user.clone(),
                current: describe_uid(euid),
            });
        }
        Ok(Switched::Dropped)
    }

    fn verify(&self) -> Result<(), PrivError> {
        let fail = |what: String| PrivError::Verify {
            user: self.user.clone(),
            what,
        };
        // SAFETY: these getters take no arguments and cannot fail.
        let ids = unsafe {
            [
                libc::getuid(),
                libc::geteuid(),
                libc::getgid(),
                libc::getegid(),
            ]
        };
        let want = [self.uid, self.uid, self.gid, self.gid];
        if ids != want {
            return Err(fail(format!(
                "uid, euid, gid, egid are {ids:?}, expected {want:?}"
            )));
        }
        if self.uid != 0 {
            // SAFETY: setuid takes a plain integer; it must fail now that the process has
            // left root (if it ever succeeded, the process is root again and start-up stops).
            if unsafe { libc::setuid(0) } == 0 {
                return Err(fail("setuid(0) succeeded: root can be regained".into()));
            }
        }
        let tasks = std::fs::read_dir("/proc/self/task")
            .map_err(|e| fail(format!("cannot list /proc/self/task: {e}")))?;
        for task in tasks.flatten() {
            let path = task.path().join("status");
            let Ok(status) = std::fs::read_to_string(&path) else {
                continue; // a thread that ended meanwhile
            };
            for (field, id) in [("Uid:", self.uid), ("Gid:", self.gid)] {
                let found = status_ids(&status, field);
                if found.len() != 4 || found.iter().any(|&v| v != id) {
                    return Err(fail(format!(
                        "{} has {field} {found:?}, expected {id} for real, effective, saved and filesystem IDs",
                        path.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The IDs on a `/proc/PID/status` line such as `Uid:\t0\t0\t0\t0`.
pub fn status_ids(status: &str, field: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// "uid 1000 (alice)" for messages.
fn describe_uid(uid: u32) -> String {
    match lookup_uid_name(uid) {
        Some(name) => format!("uid {uid} ({name})"),
        None => format!("uid {uid}"),
    }
}

/// Calls a `get*_r` function with a growing buffer; `Ok(false)` when there is no entry.
fn with_buffer(mut call: impl FnMut(&mut [libc::c_char]) -> libc::c_int) -> io::Result<bool> {
    let mut size = 1024;
    loop {
        let mut buf = vec![0 as libc::c_char; size];
        match call(&mut buf) {
            0 => return Ok(true),
            libc::ERANGE if size < 1 << 20 => size *= 4,
            // "Not found" is a null result with 0, or one of these (getpwnam_r(3)).
            libc::ENOENT | libc::ESRCH | libc::EBADF | libc::EPERM => return Ok(false),
            e => return Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// (uid, primary gid) of `name`, or None if there is no such user.
fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, PrivError> {
    let err = |source| PrivError::Lookup {
        key: "server.user",
        name: name.to_string(),
        source,
    };
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: `passwd` is plain data; getpwnam_r fills it with pointers into `buf`, which we
    // do not read after the closure returns (only the integer IDs are copied out).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found = None;
    let ok = with_buffer(|buf| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call: `c` is NUL-terminated, `pw` and
        // `result` are ours, `buf` has `buf.len()` bytes. Exercised by the unit tests below.
        let r = unsafe {
            libc::getpwnam_r(
                c.as_ptr(),
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == 0 && !result.is_null() {
            found = Some((pw.pw_uid, pw.pw_gid));
        }
        if r == 0 && result.is_null() {
            libc::ENOENT
        } else {
            r
        }
    })
    .map_err(err)?;
    Ok(if ok { found } else { None })
}

/// The gid of group `name`, or None if there is no such group.
fn lookup_group(name: &str) -> Result<Option<u32>, PrivError> {
    let err = |source| PrivError::Lookup {
        key: "server.group",
        name: name.to_string(),
        source,
    };
    let Ok(c) = CString::new(name) else {
        return Ok(None);
    };
    // SAFETY: as in lookup_user, with `group`.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut found = None;
    let ok = with_buffer(|buf| {
        let mut result: *mut libc::group = std::ptr::null_mut();
        // SAFETY: as in lookup_user. Exercised by the unit tests below.
        let r = unsafe {
            libc::getgrnam_r(
                c.as_ptr(),
                &mut gr,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == 0 && !result.is_null() {
            found = Some(gr.gr_gid);
        }
        if r == 0 && result.is_null() {
            libc::ENOENT
        } else {
            r
        }
    })
    .map_err(err)?;
    Ok(if ok { found } else { None })
}

/// The user name of `uid`, if it has one.
fn lookup_uid_name(uid: u32) -> Option<String> {
    // SAFETY: as in lookup_user; the name is copied out of `buf` inside the closure.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut name = None;
    with_buffer(|buf| {
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: as in lookup_user. Exercised by tests/privileges.rs (the non-root error).
        let r = unsafe {
            libc::getpwuid_r(
                uid as libc::uid_t,
                &mut pw,
                buf.as_mut_ptr(),
                buf.len(),
                &mut result,
            )
        };
        if r == 0 && !result.is_null() && !pw.pw_name.is_null() {
            // SAFETY: getpwuid_r succeeded, so pw_name points at a NUL-terminated string in
            // `buf`, which is alive here.
            name = Some(
                unsafe { CStr::from_ptr(pw.pw_name) }
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        if r == 0 && result.is_null() {
            libc::ENOENT
        } else {
            r
        }
    })
    .ok()?;
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_resolves_with_its_primary_group() {
        let t = Target::resolve("root", None).unwrap();
        assert_eq!((t.uid, t.gid), (0, 0));
        assert_eq!(lookup_uid_name(0).as_deref(), Some("root"));
        assert_eq!(
            Target::resolve("root", Some("root")).unwrap().gid,
            0,
            "group root"
        );
    }

    #[test]
    fn unknown_names_name_their_key() {
        let e = Target::resolve("edgeshard-no-such-user-4711", None).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("server.user: ") && text.contains("edgeshard-no-such-user-4711"),
            "{text}"
        );
        let e = Target::resolve("root", Some("edgeshard-no-such-group-4711")).unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("server.group: ") && text.contains("edgeshard-no-such-group-4711"),
            "{text}"
        );
        assert!(Target::resolve("a\0b", None).is_err());
    }

    #[test]
    fn switching_to_the_current_ids_is_a_no_op() {
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let t = Target {
            user: lookup_uid_name(uid).unwrap_or_default(),
            uid,
            gid,
            group: None,
        };
        assert_eq!(t.switch().unwrap(), Switched::Already);
    }

    #[test]
    fn status_lines_are_parsed() {
        let s = "Name:\tedgeshard\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\n";
        assert_eq!(status_ids(s, "Uid:"), vec![65534; 4]);
        assert_eq!(status_ids(s, "Groups:"), Vec::<u32>::new());
    }
}
