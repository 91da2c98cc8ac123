//! Zero-downtime binary upgrade, beside stage 1 (*accept*): on SIGUSR2 the running process
//! starts its successor (the binary now at the path it was started from, with the same
//! arguments) and hands it every listening socket in force (those a reload added included,
//! those it removed not: [`crate::listening`]) and the admin socket over a Unix socket pair
//! with `SCM_RIGHTS`.
//! Both processes then hold the same kernel sockets, so their accept queues are shared: the
//! old process only stops accepting once the successor says it is ready, and closing its
//! descriptors afterwards loses nothing (a listening socket is destroyed, and its queue
//! dropped, only when its last descriptor closes). A successor that fails to start, or does
//! not say it is ready in time, leaves the old process serving.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The environment variable that tells a process it is a successor, and on which
/// descriptor its predecessor waits.
pub const ENV: &str = "EDGESHARD_UPGRADE_FD";
/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("cannot start the new process {exe}: {source}")]
    Spawn { exe: String, source: io::Error },
    #[error("cannot hand the listening sockets over: {0}")]
    Send(String),
    #[error("the new process exited before it was ready ({0})")]
    Exited(std::process::ExitStatus),
    #[error("the new process did not say it was ready within {0:?}; it was stopped")]
    NotReady(Duration),
    #[error("a stop signal came while the new process was starting; it was stopped")]
    Abandoned,
    #[error("{ENV}: {0}")]
    Receive(String),
}

/// One listening socket as handed over: which `[[listener]]` it served and its address.
pub struct Handed {
    pub listener: usize,
    pub address: SocketAddr,
    pub socket: std::net::TcpListener,
}

/// A successor that received the sockets and said it is ready.
pub struct Successor {
    pub pid: u32,
}

/// Starts `exe args` as the successor, hands it `sockets`, and waits up to `ready_within` for
/// it to say it is ready, asking `abandon` every [`ABANDON_CHECK`] whether to give up (a stop
/// signal came). On any failure the successor is stopped and the caller keeps serving.
pub fn hand_over(
    exe: &std::path::Path,
    args: &[std::ffi::OsString],
    sockets: &[(usize, SocketAddr, RawFd)],
    ready_within: Duration,
    abandon: &mut dyn FnMut() -> bool,
) -> Result<Successor, UpgradeError> {
    let (ours, theirs) = UnixStream::pair().map_err(|e| UpgradeError::Send(e.to_string()))?;
    let theirs_fd: OwnedFd = theirs.into();
    let keep = theirs_fd.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.args(args).env(ENV, keep.to_string());
    // SAFETY: the closure runs in the forked child before exec and makes only
    // async-signal-safe system calls (close_range, fcntl) on descriptor numbers, touching no
    // memory. Exercised by tests/handover.rs.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            only_channel_survives_exec(keep);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|source| UpgradeError::Spawn {
        exe: exe.display().to_string(),
        source,
    })?;
    drop(theirs_fd);
    let outcome =
        send(&ours, sockets).and_then(|()| wait_ready(&ours, &mut child, ready_within, abandon));
    match outcome {
        Ok(()) => Ok(Successor { pid: child.id() }),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// In the forked child: every descriptor but stdin, stdout, stderr and `keep` is closed at
/// exec. Client connections in particular: io_uring's accept does not set close-on-exec, and a
/// successor holding a copy of one would keep it open (no FIN) after this process closes it.
fn only_channel_survives_exec(keep: RawFd) {
    // SAFETY (for both calls): system calls on descriptor numbers only; see the caller.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r != 0 {
        // Kernels before 5.11: mark them one by one, up to the descriptor limit.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `lim`, a valid local.
        let max = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
            lim.rlim_cur.min(1 << 20) as RawFd
        } else {
            1024
        };
        for fd in 3..max {
            // SAFETY: fcntl on a descriptor number; EBADF for those not open.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(keep, libc::F_SETFD, 0) };
}

fn send(sock: &UnixStream, sockets: &[(usize, SocketAddr, RawFd)]) -> Result<(), UpgradeError> {
    let chunks: Vec<_> = sockets.chunks(FDS_PER_MESSAGE).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let mut text = String::new();
        for (listener, addr, _) in *chunk {
            text.push_str(&format!("{listener} {addr}\n"));
        }
        if i + 1 == chunks.len() {
            text.push_str("end\n");
        }
        let fds: Vec<RawFd> = chunk.iter().map(|(_, _, fd)| *fd).collect();
        let iov = [IoSlice::new(text.as_bytes())];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(|e| UpgradeError::Send(e.to_string()))?;
    }
    if sockets.is_empty() {
        (&*sock)
            .write_all(b"end\n")
            .map_err(|e| UpgradeError::Send(e.to_string()))?;
    }
    Ok(())
}

/// How often a successor's start is interrupted to ask whether to abandon it.
pub const ABANDON_CHECK: Duration = Duration::from_millis(100);

fn wait_ready(
    sock: &UnixStream,
    child: &mut Child,
    within: Duration,
    abandon: &mut dyn FnMut() -> bool,
) -> Result<(), UpgradeError> {
    sock.set_read_timeout(Some(ABANDON_CHECK))
        .map_err(|e| UpgradeError::Send(e.to_string()))?;
    let deadline = std::time::Instant::now() + within;
    let mut word = [0u8; 6];
    let mut got = 0;
    while got < word.len() {
        match (&*sock).read(&mut word[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                if abandon() {
                    return Err(UpgradeError::Abandoned);
                }
                if std::time::Instant::now() >= deadline {
                    return Err(UpgradeError::NotReady(within));
                }
            }
            Err(_) => break,
        }
    }
    if &word == b"ready\n" {
        return Ok(());
    }
    // EOF or garbage: it is exiting, or exited.
    match child.wait() {
        Ok(status) => Err(UpgradeError::Exited(status)),
        Err(e) => Err(UpgradeError::Send(e.to_string())),
    }
}

/// In a successor: the sockets handed over by the predecessor, and the channel to tell it
/// when this process is ready. `None` when this process was started normally.
pub struct Inherited {
    channel: UnixStream,
    pub sockets: Vec<Handed>,
}

impl Inherited {
    /// Takes the handed-over sockets, if this process is a successor.
    pub fn take() -> Option<Result<Inherited, UpgradeError>> {
        let v = std::env::var(ENV).ok()?;
        std::env::remove_var(ENV);
        Some(receive(&v))
    }

    /// Tells the predecessor that every shard accepts: it stops accepting and drains.
    pub fn ready(mut self) -> io::Result<()> {
        self.channel.write_all(b"ready\n")
    }
}

fn receive(var: &str) -> Result<Inherited, UpgradeError> {
    let err = |m: String| UpgradeError::Receive(m);
    let fd: RawFd = var
        .parse()
        .map_err(|_| err(format!("{var:?} is not a descriptor number")))?;
    // SAFETY: F_GETFD reads the descriptor's flags and nothing else; a descriptor that is not
    // open gives EBADF. Exercised by the binary-upgrade tests (tests/handover.rs).
    if fd < 3 || unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(err(format!("descriptor {fd} is not open")));
    }
    // What the predecessor passes is an end of a Unix stream socket pair. A variable leaked
    // into another process's environment could name anything open there (a systemd socket,
    // a log file), which this process would then own and close: anything else is refused,
    // and left alone.
    let sock = |opt: libc::c_int| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes one c_int and its length into live locals; on a
        // descriptor that is not a socket it fails with ENOTSOCK and writes nothing.
        // Exercised by the binary-upgrade tests (tests/handover.rs) and the unit test below.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        (rc == 0).then_some(v)
    };
    if sock(libc::SO_DOMAIN) != Some(libc::AF_UNIX)
        || sock(libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return Err(err(format!(
            "descriptor {fd} is not a Unix stream socket: {ENV} names no channel from a predecessor"
        )));
    }
    // SAFETY: the predecessor passed this descriptor (an end of its socket pair) for this
    // process alone, and it was checked open and a Unix stream socket above; it is owned from
    // here on. Exercised by the binary-upgrade tests (tests/handover.rs).
    let channel = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &channel,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    channel
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| err(e.to_string()))?;
    let mut sockets = Vec::new();
    let mut text = String::new();
    loop {
        let mut buf = vec![0u8; 64 * 1024];
        let mut cmsg = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            channel.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| err(format!("receiving the sockets: {e}")))?;
        let n = msg.bytes;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(|e| err(e.to_string()))? {
            if let ControlMessageOwned::ScmRights(f) = c {
                fds.extend(f);
            }
        }
        if n == 0 {
            return Err(err("the predecessor closed the channel".into()));
        }
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        let lines: Vec<&str> = text.lines().filter(|l| *l != "end").collect();
        let described = lines.len() - sockets.len().min(lines.len());
        if described != fds.len() {
            return Err(err(format!(
                "{} sockets described, {} received",
                described,
                fds.len()
            )));
        }
        for (line, fd) in lines[sockets.len()..].iter().zip(fds) {
            // SAFETY: SCM_RIGHTS installed `fd` in this process for us alone; it is a
            // listening TCP socket of the predecessor's and is owned from here on.
            let socket = unsafe { std::net::TcpListener::from_raw_fd(fd) };
            let (l, a) = line
                .split_once(' ')
                .ok_or_else(|| err(format!("bad line {line:?}")))?;
            sockets.push(Handed {
                listener: l.parse().map_err(|_| err(format!("bad line {line:?}")))?,
                address: a.parse().map_err(|_| err(format!("bad line {line:?}")))?,
                socket,
            });
        }
        if text.ends_with("end\n") {
            break;
        }
    }
    for s in &sockets {
        let _ = s.socket.set_nonblocking(true);
    }
    Ok(Inherited { channel, sockets })
}

/// The listener index the admin socket is handed over under.
pub const ADMIN: usize = usize::MAX;

/// What a running process keeps to start its successor: a duplicate of the admin socket,
/// the binary's path as started, and its arguments. The listening sockets in force are kept
/// by the reloader, which changes them ([`crate::listening::Listening`]).
pub struct Handoff {
    admin: Option<std::net::TcpListener>,
    exe: Option<std::path::PathBuf>,
    args: Vec<std::ffi::OsString>,
}

impl Handoff {
    /// Duplicates `admin`'s socket. `exe` is the path this process was started from (read
    /// at start: the file there may be replaced before the upgrade).
    pub fn new(
        admin: Option<&std::net::TcpListener>,
        exe: Option<std::path::PathBuf>,
    ) -> io::Result<Handoff> {
        Ok(Handoff {
            admin: admin.map(std::net::TcpListener::try_clone).transpose()?,
            exe,
            args: std::env::args_os().skip(1).collect(),
        })
    }

    /// Starts the successor and hands it `listening` (every listening socket in force, each
    /// with its listener's position and address; open for the call) and the admin socket
    /// (see [`hand_over`]).
    pub fn start_successor(
        &self,
        listening: &[(usize, SocketAddr, RawFd)],
        ready_within: Duration,
        abandon: &mut dyn FnMut() -> bool,
    ) -> Result<Successor, UpgradeError> {
        let exe = self.exe.as_deref().ok_or_else(|| UpgradeError::Spawn {
            exe: "(unknown)".into(),
            source: io::Error::other("the path of the running binary could not be read at start"),
        })?;
        let mut described = listening.to_vec();
        if let Some(a) = &self.admin {
            if let Ok(addr) = a.local_addr() {
                described.push((ADMIN, addr, a.as_raw_fd()));
            }
        }
        hand_over(exe, &self.args, &described, ready_within, abandon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_descriptor_that_is_no_channel_is_refused_and_left_open() {
        // EDGESHARD_UPGRADE_FD leaked into another process's environment may name any open
        // descriptor: a file is not taken (nor closed), nor is a UDP socket.
        let file = std::fs::File::open("/proc/self/stat").unwrap();
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        for fd in [file.as_raw_fd(), udp.as_raw_fd()] {
            let Err(e) = receive(&fd.to_string()) else {
                panic!("descriptor {fd} taken as the upgrade channel");
            };
            assert!(e.to_string().contains("not a Unix stream socket"), "{e}");
            // SAFETY: F_GETFD only reads the flags of a descriptor this test owns.
            assert!(
                unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0,
                "{fd} was closed"
            );
        }
    }
}
