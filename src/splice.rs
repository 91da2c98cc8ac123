//! Stage 6 of the pipeline, *forward*, zero-copy: a body of known length moves socket → pipe
//! → socket inside the kernel with `splice(2)`, never through user space. Each step is a
//! non-blocking `splice` on an `O_NONBLOCK` socket; when it would block, the task waits for
//! readiness (an io_uring `POLL_ADD`, or epoll) and tries again. `IORING_OP_SPLICE` is not
//! used: the kernel hands those to io-wq worker threads (measured: ~130 threads for 64
//! connections, and slower than copying). Pipes come from a per-shard pool; when none can be
//! had, the caller copies instead. A close-delimited response body is spliced until the
//! backend's EOF, re-framed as chunks for an HTTP/1.1 client with [`crate::http::chunked`]'s
//! encoder. The timer, wait bounds, written flag and minimum rate come from the caller's
//! [`crate::relay::Leg`]: every wait goes through `ready`, and every byte moved is
//! credited to the leg, so a slow client is held to the same rule as on the copying path.
//! A cached body kept in the shard's body file goes to the client the same way, with
//! `sendfile(2)` ([`send_file`]).

use std::cell::{Cell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use monoio::net::TcpStream;

use crate::http::chunked::{encode_chunk, encode_chunk_header, encode_last_chunk, CHUNK_DATA_END};
use crate::io::IoFail;
use crate::relay::{Leg, RelayError, Side};
use crate::transport::send_now_with;

/// A pipe used as the in-kernel buffer between two sockets. Only an empty pipe goes back to
/// the pool.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its capacity in bytes (F_GETPIPE_SZ).
    size: usize,
}

impl Pipe {
    /// A non-blocking pipe, grown to `size` bytes when the system allows it.
    pub fn new(size: usize) -> std::io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into the array we own and pass by pointer;
        // on success we take ownership of both exactly once, below.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ / F_GETPIPE_SZ take and return
        // integers only. A refused size (over /proc/sys/fs/pipe-max-size) keeps the default.
        let size = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Ok(Pipe {
            read,
            write,
            size: usize::try_from(size).unwrap_or(65536).max(4096),
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// The read end and the write end, for `splice_once`.
    pub(crate) fn fds(&self) -> (RawFd, RawFd) {
        (self.read.as_raw_fd(), self.write.as_raw_fd())
    }
}

/// Per-shard pool of pipes: at most `max` exist at once (in use or idle).
#[derive(Debug)]
pub struct PipePool {
    idle: RefCell<Vec<Pipe>>,
    live: Cell<usize>,
    max: usize,
    size: usize,
    /// The system granted a pipe far smaller than asked (per-user pipe quota): make no more.
    starved: Cell<bool>,
}

impl PipePool {
    pub fn new(max: usize, size: usize) -> PipePool {
        PipePool {
            idle: RefCell::new(Vec::new()),
            live: Cell::new(0),
            max,
            size,
            starved: Cell::new(false),
        }
    }

    /// An empty pipe, or None when the pool is at its bound or the system refuses one.
    pub fn take(&self) -> Option<Pipe> {
        if let Some(p) = self.idle.borrow_mut().pop() {
            return Some(p);
        }
        if self.live.get() >= self.max || self.starved.get() {
            return None;
        }
        let p = Pipe::new(self.size).ok()?;
        if p.size < self.size.min(64 * 1024) {
            // Past /proc/sys/fs/pipe-user-pages-soft the kernel hands out 2-page pipes, and
            // splicing through 8 KiB costs more than copying: copy from now on.
            self.starved.set(true);
            tracing::warn!(
                granted = p.size,
                asked = self.size,
                "pipe size refused (per-user pipe quota?); large bodies will be copied"
            );
            return None;
        }
        self.live.set(self.live.get() + 1);
        Some(p)
    }

    /// Returns an empty pipe for reuse.
    pub fn give(&self, p: Pipe) {
        self.idle.borrow_mut().push(p);
    }

    /// A pipe that may still hold bytes is closed, not reused.
    pub fn discard(&self, p: Pipe) {
        drop(p);
        self.live.set(self.live.get().saturating_sub(1));
    }

    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.live.get()
    }

    /// Bytes waiting in each idle pipe (tests: a pipe kept for reuse must be empty).
    #[cfg(test)]
    pub(crate) fn idle_contents(&self) -> Vec<usize> {
        self.idle
            .borrow()
            .iter()
            .map(|p| {
                let mut n: libc::c_int = 0;
                // SAFETY: FIONREAD on the read end of a pipe this pool owns writes one c_int
                // into the live local passed by pointer. Exercised by the tunnel tests.
                let rc = unsafe { libc::ioctl(p.read.as_raw_fd(), libc::FIONREAD, &mut n) };
                assert_eq!(rc, 0, "FIONREAD on a pipe");
                n as usize
            })
            .collect()
    }

    /// A pipe on loan, for transfers that may be cancelled mid-way (a future dropped by a
    /// timeout): see [`PipeLoan`].
    pub fn lend(&self) -> Option<PipeLoan<'_>> {
        self.take().map(|p| PipeLoan {
            pool: self,
            pipe: Some(p),
        })
    }
}

/// A pipe taken from a [`PipePool`]: [`PipeLoan::give_back`] returns it once empty; dropped
/// any other way (an error, or the future holding it dropped) it is discarded, since it may
/// hold bytes, and the pool's count stays right.
#[derive(Debug)]
pub struct PipeLoan<'a> {
    pool: &'a PipePool,
    pipe: Option<Pipe>,
}

impl PipeLoan<'_> {
    pub fn pipe(&self) -> &Pipe {
        self.pipe
            .as_ref()
            .expect("a loan holds its pipe until it ends")
    }

    /// Returns the pipe, which must be empty, to the pool for reuse.
    pub fn give_back(mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.give(p);
        }
    }
}

impl Drop for PipeLoan<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.pipe.take() {
            self.pool.discard(p);
        }
    }
}

/// Sets `O_NONBLOCK` on a socket (splice on a blocking socket would block the shard).
pub fn set_nonblocking(s: &TcpStream) -> std::io::Result<()> {
    let fd = s.as_raw_fd();
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor owned by `s`, alive for the call; only
    // integer flags are exchanged. io_uring and epoll both work with non-blocking sockets.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0
            && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// One non-blocking splice of up to `len` bytes; `more` tells TCP that more data follows
/// (like MSG_MORE), so it can send full segments.
pub(crate) fn splice_once(
    from: RawFd,
    to: RawFd,
    len: usize,
    more: bool,
) -> std::io::Result<usize> {
    let more = if more { libc::SPLICE_F_MORE } else { 0 };
    // SAFETY: splice(2) between two descriptors that the callers keep alive for the call
    // (the sockets are borrowed, the pipe is owned); null offsets (sockets and pipes have
    // none); no memory of ours is read or written.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE | more,
        )
    };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

pub(crate) fn would_block(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::WouldBlock
}

/// Sends what TCP holds back after a SPLICE_F_MORE or MSG_MORE: setting `TCP_NODELAY`
/// pushes pending frames (tcp(7)), and the proxy's sockets have it on anyway.
pub(crate) fn push(fd: RawFd) -> std::io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt(2) reads one c_int from a live local on a descriptor the caller
    // keeps open. Exercised by the stalled-source tests in tests/splice.rs.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Moves exactly `len` bytes from `src` to `dst` through `pipe`. On success the pipe is empty
/// again. On error it may hold bytes: the caller must discard it. `leg.written` is set once
/// a byte reached `dst`.
pub async fn splice_exact(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    len: u64,
    leg: &mut Leg<'_>,
) -> Result<u64, RelayError> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let mut remaining = len;
    let mut in_pipe = 0usize;
    // The last splice into `dst` said more follows (SPLICE_F_MORE): TCP may hold a partial
    // segment back, which must be pushed before waiting on a stalled source.
    let mut corked = false;
    while remaining > 0 || in_pipe > 0 {
        // Fill the pipe from the source as far as it goes without blocking.
        let mut src_blocked = false;
        if remaining > 0 && in_pipe < pipe.size {
            let want = (pipe.size - in_pipe).min(usize::try_from(remaining).unwrap_or(usize::MAX));
            match splice_once(src_fd, pipe_w, want, false) {
                Ok(0) => return Err(RelayError::Read(IoFail::Eof)),
                Ok(n) => {
                    in_pipe += n;
                    remaining -= n as u64;
                    leg.moved(Side::Src, n);
                }
                Err(e) if would_block(&e) => src_blocked = true,
                Err(e) => return Err(RelayError::Read(IoFail::Io(e))),
            }
        }
        // Drain it into the destination.
        if in_pipe > 0 {
            let more = remaining > 0 && !src_blocked;
            match splice_once(pipe_r, dst_fd, in_pipe, more) {
                Ok(n) => {
                    in_pipe -= n;
                    *leg.written = true;
                    leg.moved(Side::Dst, n);
                    corked = more;
                    continue;
                }
                Err(e) if would_block(&e) => {
                    ready(dst, Side::Dst, leg).await?;
                    continue;
                }
                Err(e) => return Err(RelayError::Write(IoFail::Io(e))),
            }
        }
        if src_blocked {
            if std::mem::take(&mut corked) {
                push(dst_fd).map_err(|e| RelayError::Write(IoFail::Io(e)))?;
            }
            ready(src, Side::Src, leg).await?;
        }
    }
    Ok(len)
}

/// A body that is spliced, by how its end is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SplicedBody {
    /// `Content-Length`, relayed as it is.
    Length(u64),
    /// Close-delimited (a response only): ends at the backend's EOF; re-framed as chunked
    /// for an HTTP/1.1 client, passed on as close-delimited otherwise.
    UntilClose { chunked: bool },
}

/// How one body is spliced: how its end is known, and the pipe it goes through (on error
/// the pipe may hold bytes: the caller discards it).
#[derive(Clone, Copy)]
pub struct SplicePlan<'a> {
    pub body: SplicedBody,
    pub pipe: &'a Pipe,
}

/// Relays a body to `dst`: `out` (the head) and whatever part of the body is already in
/// `inbuf[*pos..]` are written first, the rest is spliced. On success `*pos` is just past
/// the buffered part and the body's length is returned.
pub async fn relay_spliced(
    src: &TcpStream,
    inbuf: &[u8],
    pos: &mut usize,
    dst: &mut TcpStream,
    out: &mut Vec<u8>,
    plan: SplicePlan<'_>,
    leg: &mut Leg<'_>,
) -> Result<u64, RelayError> {
    // The part already read is copied, with the head: all of it for a close-delimited body
    // (one chunk when re-framed), at most the body's length otherwise.
    let avail = &inbuf[*pos..];
    let (buffered, chunked) = match plan.body {
        SplicedBody::Length(len) => (
            avail.len().min(usize::try_from(len).unwrap_or(usize::MAX)),
            false,
        ),
        SplicedBody::UntilClose { chunked } => (avail.len(), chunked),
    };
    let part = &avail[..buffered];
    if chunked && !part.is_empty() {
        encode_chunk(part, out);
    } else {
        out.extend_from_slice(part);
    }
    *pos += buffered;
    leg.flush(dst, out).await?;
    let spliced = match plan.body {
        SplicedBody::Length(len) => {
            let rest = len - buffered as u64;
            if rest > 0 {
                nonblocking(src, dst)?;
                splice_exact(src, dst, plan.pipe, rest, leg).await?;
            }
            rest
        }
        SplicedBody::UntilClose { chunked } => {
            nonblocking(src, dst)?;
            splice_until_close(src, dst, plan.pipe, chunked, out, leg).await?
        }
    };
    Ok(buffered as u64 + spliced)
}

/// Sets both sockets `O_NONBLOCK` for splicing; a failure is that side's error.
fn nonblocking(src: &TcpStream, dst: &TcpStream) -> Result<(), RelayError> {
    set_nonblocking(src).map_err(|e| RelayError::Read(IoFail::Io(e)))?;
    set_nonblocking(dst).map_err(|e| RelayError::Write(IoFail::Io(e)))
}

/// Splices a close-delimited response body (a backend that ends it by closing) to the
/// client until the backend's EOF, and returns the bytes spliced. With `chunked` (an
/// HTTP/1.1 client, whose connection stays open) each pipe-full goes out as one chunk, its
/// size line and CRLF written (from `out`) around the spliced payload, and the last chunk
/// ends the body; otherwise the bytes go out as they are (the client's connection closes
/// after them). Its length is unknown up front, so there is no threshold: at small sizes
/// splicing costs about what copying does (loadtest/results, splice.md), and it wins on
/// large ones.
async fn splice_until_close(
    src: &TcpStream,
    dst: &TcpStream,
    pipe: &Pipe,
    chunked: bool,
    out: &mut Vec<u8>,
    leg: &mut Leg<'_>,
) -> Result<u64, RelayError> {
    let (src_fd, dst_fd) = (src.as_raw_fd(), dst.as_raw_fd());
    let (pipe_r, pipe_w) = (pipe.read.as_raw_fd(), pipe.write.as_raw_fd());
    let mut total = 0u64;
    let mut in_pipe = 0usize;
    let mut eof = false;
    loop {
        crate::coop::step().await;
        // Fill the pipe as far as the backend's bytes go without blocking.
        let mut src_blocked = false;
        if !eof && in_pipe < pipe.size {
            match splice_once(src_fd, pipe_w, pipe.size - in_pipe, false) {
                Ok(0) => eof = true,
                Ok(n) => {
                    in_pipe += n;
                    leg.moved(Side::Src, n);
                }
                Err(e) if would_block(&e) => src_blocked = true,
                Err(e) => return Err(RelayError::Read(IoFail::Io(e))),
            }
        }
        if in_pipe > 0 {
            // One chunk: what the pipe holds now.
            let len = in_pipe;
            if chunked {
                out.clear();
                encode_chunk_header(len, out);
                send_all(dst, out, true, leg).await?;
            }
            let mut left = len;
            while left > 0 {
                // In chunked framing the CRLF follows at once; it goes without MSG_MORE, so
                // every chunk is pushed whole, however long the backend then pauses.
                match splice_once(pipe_r, dst_fd, left, chunked) {
                    Ok(n) => {
                        left -= n;
                        leg.moved(Side::Dst, n);
                    }
                    Err(e) if would_block(&e) => ready(dst, Side::Dst, leg).await?,
                    Err(e) => return Err(RelayError::Write(IoFail::Io(e))),
                }
            }
            in_pipe = 0;
            total += len as u64;
            if chunked {
                send_all(dst, CHUNK_DATA_END, false, leg).await?;
            }
            continue;
        }
        if eof {
            break;
        }
        if src_blocked {
            ready(src, Side::Src, leg).await?;
        }
    }
    if chunked {
        out.clear();
        encode_last_chunk(b"", &|_| true, out);
        send_all(dst, out, false, leg).await?;
    }
    out.clear();
    Ok(total)
}

/// Sends `head`, then `len` bytes of the file `file` from `off`, to the client socket `dst`
/// with `sendfile(2)`: the file's pages go into the socket's buffers by reference, never
/// through user space (a cached body in the shard's body file, [`crate::cache::body`]). The
/// head goes with MSG_MORE, so TCP sends it in one segment train with the body. `sendfile`
/// has no per-call flag, so `dst` is made non-blocking first unless `nonblocking` says it
/// already is (the connection's memo: an `fcntl` per hit was 2.5 % of a 64 KiB hit's CPU).
pub async fn send_file(
    dst: &TcpStream,
    nonblocking: &mut bool,
    head: &[u8],
    file: RawFd,
    mut off: u64,
    len: usize,
    leg: &mut Leg<'_>,
) -> Result<(), RelayError> {
    if !*nonblocking {
        set_nonblocking(dst).map_err(|e| RelayError::Write(IoFail::Io(e)))?;
        *nonblocking = true;
    }
    send_all(dst, head, len > 0, leg).await?;
    let dst_fd = dst.as_raw_fd();
    let mut left = len;
    while left > 0 {
        let mut at = off as libc::off_t;
        // SAFETY: sendfile(2) between a socket `dst` keeps open and a file the caller keeps
        // open for the call; it reads and advances the offset in a live local. Exercised by
        // tests/cache_file.rs on both engines.
        let n = unsafe { libc::sendfile(dst_fd, file, &mut at, left) };
        if n > 0 {
            let n = n as usize;
            off += n as u64;
            left -= n;
            leg.moved(Side::Dst, n);
            continue;
        }
        let e = if n == 0 {
            // The file is shorter than the body: never, unless it was truncated.
            std::io::ErrorKind::UnexpectedEof.into()
        } else {
            std::io::Error::last_os_error()
        };
        if e.kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        if !would_block(&e) {
            return Err(RelayError::Write(IoFail::Io(e)));
        }
        // The head may be held back by MSG_MORE: out with it before waiting.
        push(dst_fd).map_err(|e| RelayError::Write(IoFail::Io(e)))?;
        ready(dst, Side::Dst, leg).await?;
    }
    Ok(())
}

/// Writes `bytes` to the non-blocking socket `dst` completely, waiting for writability;
/// `more` (MSG_MORE) lets TCP hold a small piece back for the payload that follows.
async fn send_all(
    dst: &TcpStream,
    bytes: &[u8],
    more: bool,
    leg: &mut Leg<'_>,
) -> Result<(), RelayError> {
    let flags = if more { libc::MSG_MORE } else { 0 };
    let mut at = 0;
    while at < bytes.len() {
        let rest = std::io::IoSlice::new(&bytes[at..]);
        match send_now_with(dst.as_raw_fd(), &[rest], flags) {
            Ok(n) => {
                at += n;
                leg.moved(Side::Dst, n);
            }
            Err(e) if would_block(&e) => ready(dst, Side::Dst, leg).await?,
            Err(e) => return Err(RelayError::Write(IoFail::Io(e))),
        }
    }
    Ok(())
}

/// Waits until `s` is ready on `side` (readable for the source, writable for the
/// destination) within the leg's bound for that side ([`Leg::begin`]: its timeout, or what
/// the client's minimum rate leaves): the one place a relay step that would block waits,
/// and maps the wait's error or timeout to that side's [`RelayError`] ([`Leg::end`]).
async fn ready(s: &TcpStream, side: Side, leg: &mut Leg<'_>) -> Result<(), RelayError> {
    let wait = leg.begin(side)?;
    let r = match side {
        Side::Src => leg.deadline.within(wait.timeout, s.readable(false)).await,
        Side::Dst => leg.deadline.within(wait.timeout, s.writable(false)).await,
    };
    let r = match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(IoFail::Io(e)),
        Err(_) => Err(IoFail::Timeout),
    };
    leg.end(wait, r, 0)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::io::Deadline;

    /// Splices bodies of sizes around the pipe size between two real socket pairs, on both
    /// drivers, and checks every byte.
    #[test]
    fn splice_moves_exact_bytes_on_both_drivers() {
        fn run(mut rt_block: impl FnMut(std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>)) {
            rt_block(Box::pin(async {
                let pipe = Pipe::new(64 * 1024).unwrap();
                for len in [1u64, 4095, 65535, 65536, 65537, 1 << 20, (3 << 20) + 7] {
                    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                    let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
                    // Writer thread: sends `len` patterned bytes into the source socket.
                    let writer = std::thread::spawn(move || {
                        use std::io::Write;
                        let (mut s, _) = a.accept().unwrap();
                        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
                        s.write_all(&data).unwrap();
                    });
                    // Reader thread: collects what arrives at the destination.
                    let reader = std::thread::spawn(move || {
                        use std::io::Read;
                        let (mut s, _) = b.accept().unwrap();
                        let mut got = Vec::new();
                        s.read_to_end(&mut got).unwrap();
                        got
                    });
                    let src = TcpStream::connect_addr(aa).await.unwrap();
                    let mut dst = TcpStream::connect_addr(ba).await.unwrap();
                    let mut dl = Deadline::new();
                    let mut written = false;
                    let mut out = b"HEAD".to_vec();
                    let mut pos = 0;
                    let plan = SplicePlan {
                        body: SplicedBody::Length(len),
                        pipe: &pipe,
                    };
                    let t = Duration::from_secs(10);
                    let mut leg = Leg::new(&mut dl, t, t, &mut written);
                    let n = relay_spliced(&src, b"", &mut pos, &mut dst, &mut out, plan, &mut leg)
                        .await
                        .unwrap();
                    assert_eq!(n, len);
                    // On io_uring a dropped socket is closed asynchronously, by the runtime
                    // we are blocking here: half-close it directly instead.
                    use monoio::io::AsyncWriteRent;
                    dst.shutdown().await.unwrap();
                    writer.join().unwrap();
                    let got = reader.join().unwrap();
                    assert_eq!(&got[..4], b"HEAD");
                    assert_eq!(got.len() as u64, len + 4, "len {len}");
                    assert!(got[4..]
                        .iter()
                        .enumerate()
                        .all(|(i, &b)| b == (i % 251) as u8));
                }
            }));
        }
        for engine in crate::test_engines::engines() {
            run(|f| crate::test_engines::block_on(engine, f));
        }
    }

    #[test]
    fn a_loan_dropped_unreturned_is_discarded() {
        let pool = PipePool::new(2, 65536);
        let a = pool.lend().unwrap();
        let b = pool.lend().unwrap();
        assert!(pool.lend().is_none(), "bounded by max");
        a.give_back();
        assert_eq!(pool.live(), 2);
        // Dropped (an error, or its future cancelled): closed, and the count goes down.
        drop(b);
        assert_eq!(pool.live(), 1);
        let (c, d) = (pool.lend().unwrap(), pool.lend().unwrap());
        assert_eq!(pool.live(), 2);
        drop((c, d));
        assert_eq!(pool.live(), 0);
    }

    #[test]
    fn a_source_that_closes_early_is_an_error() {
        for engine in crate::test_engines::engines() {
            crate::test_engines::block_on(engine, async {
                let pipe = Pipe::new(65536).unwrap();
                let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
                std::thread::spawn(move || {
                    use std::io::Write;
                    let (mut s, _) = a.accept().unwrap();
                    s.write_all(&[7u8; 1000]).unwrap();
                });
                let _keep = std::thread::spawn(move || {
                    use std::io::Read;
                    let (mut s, _) = b.accept().unwrap();
                    let mut v = Vec::new();
                    let _ = s.read_to_end(&mut v);
                });
                let src = TcpStream::connect_addr(aa).await.unwrap();
                let mut dst = TcpStream::connect_addr(ba).await.unwrap();
                let mut dl = Deadline::new();
                let mut w = false;
                let mut out = Vec::new();
                let mut pos = 0;
                let plan = SplicePlan {
                    body: SplicedBody::Length(5000),
                    pipe: &pipe,
                };
                let t = Duration::from_secs(5);
                let mut leg = Leg::new(&mut dl, t, t, &mut w);
                let r =
                    relay_spliced(&src, b"", &mut pos, &mut dst, &mut out, plan, &mut leg).await;
                assert!(matches!(r, Err(RelayError::Read(IoFail::Eof))), "{r:?}");
            });
        }
    }
}
