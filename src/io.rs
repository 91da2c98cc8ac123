//! The IO steps every stage uses, each bounded by a deadline: read more bytes into a buffer,
//! write a buffer range (or two ranges of two buffers in one vectored write), write static
//! bytes. Buffers are owned and moved into the operation
//! (monoio's rent model) and handed back afterwards.
//!
//! Deadlines use one reusable timer per client connection ([`Deadline`]): an exchange does one
//! IO step at a time, so each step resets the same timer. Creating a fresh `monoio` timeout per
//! step cost about 500 instructions per request (callgrind), a third of the engine's own work.

use std::future::Future;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Sleep;

/// Why an IO step failed.
#[derive(Debug)]
pub enum IoFail {
    Eof,
    Timeout,
    Io(std::io::Error),
}

/// A reusable timer bounding one IO step at a time.
///
/// The timer is re-armed lazily: a step whose end is later than the armed instant leaves the
/// timer where it is, and when it fires early the step checks the clock and re-arms it for its
/// own end. A keep-alive exchange's steps end later and later (its hot window, then the
/// backend's and the client's timeouts), so most steps arm nothing; resetting monoio's timer
/// on every step cost ~440 instructions per request (callgrind), a timer firing early costs
/// one wake per armed period.
pub struct Deadline {
    /// Boxed (one pointer in the connection's state) and pinned (monoio's timer entry is).
    timer: Pin<Box<Timer>>,
}

/// How often a watched client ([`Deadline::watch`]) is looked at while the exchange waits for
/// its backend: nginx notices a client that left at once (`proxy_ignore_client_abort off`);
/// here a wait that lasts is checked once a second, so a fast exchange pays nothing.
pub const WATCH_EVERY: Duration = Duration::from_secs(1);

pin_project_lite::pin_project! {
    #[project = TimerProj]
    struct Timer {
        #[pin]
        sleep: Sleep,
        // When `sleep` fires (or fired).
        armed: Instant,
        // The end of the step in progress (one at a time: `Within` borrows the deadline).
        end: Instant,
        // The client socket looked at when the timer fires early ([`Deadline::watch`]), and
        // from when.
        watch: Option<(RawFd, Instant)>,
        // A watched client was found gone: the step ended early, as if timed out.
        gone: bool,
    }
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl Deadline {
    /// Must be called inside a runtime with the timer enabled.
    pub fn new() -> Deadline {
        let armed = crate::clock::now() + Duration::from_secs(3600);
        Deadline {
            timer: Box::pin(Timer {
                sleep: monoio::time::sleep_until(monoio::time::Instant::from_std(armed)),
                armed,
                end: armed,
                watch: None,
                gone: false,
            }),
        }
    }

    /// From [`WATCH_EVERY`] from now until [`Deadline::unwatch`], a step that is still waiting
    /// looks at the client socket `fd` every [`WATCH_EVERY`] without reading it
    /// ([`peer_gone`]): a client that closed or reset ends the step as a timeout would, and
    /// `unwatch` says so. Like nginx (`proxy_ignore_client_abort off`), a client that
    /// half-closed after its request counts as gone once the wait lasts. The exchange watches
    /// its client while it waits for the backend's answer, so a backend connection (and its
    /// breaker permit) is not held for a client that left.
    pub fn watch(&mut self, fd: RawFd) {
        let at = crate::clock::now() + WATCH_EVERY;
        let t = self.timer.as_mut().project();
        *t.watch = Some((fd, at));
        *t.gone = false;
        if at < *t.armed {
            arm(t, at);
        }
    }

    /// Ends [`Deadline::watch`]; whether the client was found gone.
    pub fn unwatch(&mut self) -> bool {
        let t = self.timer.as_mut().project();
        *t.watch = None;
        std::mem::take(t.gone)
    }

    /// Runs `fut` to completion unless `timeout` passes first. Inlined: an out-of-line call
    /// moves the step's future (often ~100 bytes) through memory once more.
    #[inline(always)]
    pub fn within<F: Future>(&mut self, timeout: Duration, fut: F) -> Within<'_, F> {
        let end = crate::clock::now() + timeout;
        let t = self.timer.as_mut().project();
        *t.end = end;
        if end < *t.armed {
            arm(t, end);
        }
        Within {
            fut,
            timer: self.timer.as_mut(),
        }
    }
}

#[inline]
fn arm(t: TimerProj<'_>, at: Instant) {
    t.sleep.reset(monoio::time::Instant::from_std(at));
    *t.armed = at;
}

pin_project_lite::pin_project! {
    /// The future returned by [`Deadline::within`]: the operation first, then the timer.
    pub struct Within<'a, F> {
        #[pin]
        fut: F,
        timer: Pin<&'a mut Timer>,
    }
}

/// The deadline passed before the operation completed.
#[derive(Debug)]
pub struct Elapsed;

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        if let Poll::Ready(v) = me.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        loop {
            let t = me.timer.as_mut().project();
            match t.sleep.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    // Armed for an earlier step: the clock itself (not the poll's cached
                    // reading) says whether this step's own end has come.
                    let t = me.timer.as_mut().project();
                    let end = *t.end;
                    let now = Instant::now();
                    if now >= end {
                        return Poll::Ready(Err(Elapsed));
                    }
                    let mut next = end;
                    if let Some((fd, from)) = *t.watch {
                        if now < from {
                            next = next.min(from);
                        } else if peer_gone(fd) {
                            *t.gone = true;
                            return Poll::Ready(Err(Elapsed));
                        } else {
                            next = next.min(now + WATCH_EVERY);
                        }
                    }
                    arm(t, next);
                }
            }
        }
    }
}

/// Whether the peer of socket `fd` has closed or reset it, looked at without taking a byte
/// (`recv(MSG_PEEK | MSG_DONTWAIT)`): end of stream or an error is gone; bytes waiting (a
/// pipelined request, a body, TLS records) or none yet is not.
pub fn peer_gone(fd: RawFd) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match crate::transport::recv_now(fd, &mut byte, libc::MSG_PEEK) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !crate::transport::would_wait(&e),
    }
}

/// Reads more bytes into `buf` after its current contents, waiting at most `timeout`.
/// On timeout the buffer is lost with the cancelled read and `buf` is left empty.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<usize, IoFail> {
    read_more_at_most(stream, buf, dl, timeout, usize::MAX).await
}

/// [`read_more`], reading at most `max` bytes. Response heads are read this way: a pooled
/// buffer may have grown large, and a head read into all of it would pull a large body's
/// first part through user space (a copy in, a copy out) instead of leaving it to splice.
pub async fn read_more_at_most<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    dl: &mut Deadline,
    timeout: Duration,
    max: usize,
) -> Result<usize, IoFail> {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity().max(4096));
    }
    let len = buf.len();
    let end = len.saturating_add(max.max(1)).min(buf.capacity());
    let owned = std::mem::take(buf);
    match dl
        .within(timeout, stream.read(owned.slice_mut(len..end)))
        .await
    {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            match res {
                Ok(0) => Err(IoFail::Eof),
                Ok(n) => Ok(n),
                Err(e) => Err(IoFail::Io(e)),
            }
        }
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

/// Writes `buf[from..to]` completely, waiting at most `timeout`; `buf` is handed back.
pub async fn write_from<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    if from == to {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    match dl
        .within(timeout, stream.write_all(owned.slice(from..to)))
        .await
    {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ()).map_err(IoFail::Io)
        }
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

/// Bytes whose heap storage stays at one address for as long as the value lives, moved or
/// not: what a vectored write may point into while the runtime holds it.
///
/// # Safety
/// `as_ref()` must return the same address and length for the value's whole life, however
/// often it is moved, and nothing may write those bytes meanwhile.
pub(crate) unsafe trait StableBytes: AsRef<[u8]> + Unpin + 'static {}
// SAFETY: a Vec's bytes are on the heap; moving the Vec moves only its pointer, and
// `TwoRanges` owns it privately, never resizing it.
unsafe impl StableBytes for Vec<u8> {}
// SAFETY: an `Rc<[u8]>`'s bytes are on the heap, immutable while shared (a cache entry's
// body, shared with the store while it is written).
unsafe impl StableBytes for std::rc::Rc<[u8]> {}

/// Ranges of two owned buffers as one `writev`: a response head and the body bytes that
/// arrived with it (or a cached body) go out together without the body being copied behind
/// the head (a 64 KiB body copied there cost 38 % of a shard's CPU,
/// loadtest/results/2026-12-03-vm/headbody.md).
struct TwoRanges<B: StableBytes> {
    head: Vec<u8>,
    body: B,
    /// Heap-allocated so its address stays put while the runtime holds the value.
    iov: Box<[libc::iovec; 2]>,
}

impl<B: StableBytes> TwoRanges<B> {
    fn new(
        head: Vec<u8>,
        hr: std::ops::Range<usize>,
        body: B,
        br: std::ops::Range<usize>,
    ) -> TwoRanges<B> {
        let iov = |b: &[u8], r: std::ops::Range<usize>| libc::iovec {
            iov_base: b[r.clone()].as_ptr() as *mut libc::c_void,
            iov_len: r.len(),
        };
        let iov = Box::new([iov(&head, hr), iov(body.as_ref(), br)]);
        TwoRanges { head, body, iov }
    }

    fn remaining(&self) -> usize {
        self.iov.iter().map(|v| v.iov_len).sum()
    }

    /// Drops `n` written bytes from the front.
    fn advance(&mut self, mut n: usize) {
        for v in self.iov.iter_mut() {
            let k = n.min(v.iov_len);
            // SAFETY: `k <= iov_len`, so the base stays within (or one past) its range of the
            // buffer it points into.
            v.iov_base = unsafe { v.iov_base.cast::<u8>().add(k) }.cast();
            v.iov_len -= k;
            n -= k;
        }
    }
}

// SAFETY: the iovecs point into the heap storage of `head` and `body`, which is neither
// resized nor dropped while the value exists (the fields are private, only `advance` changes
// the iovecs, within their ranges, and `StableBytes` owners keep their bytes at one address
// when moved); the array itself is boxed, so its address does not change when the value
// moves. Exercised by the unit tests below, by every response whose body arrives with its
// head (tests/proxy.rs, tests/tls.rs) and by every cache hit with a body (tests/cache.rs).
unsafe impl<B: StableBytes> monoio::buf::IoVecBuf for TwoRanges<B> {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// Writes `two`'s ranges completely; hands back the owners and the result.
async fn write_two<S: AsyncWriteRent, B: StableBytes>(
    stream: &mut S,
    mut two: TwoRanges<B>,
    dl: &mut Deadline,
    timeout: Duration,
) -> (Result<(), IoFail>, Option<(Vec<u8>, B)>) {
    while two.remaining() > 0 {
        let (r, back) = match dl.within(timeout, stream.writev(two)).await {
            Ok(done) => done,
            Err(Elapsed) => return (Err(IoFail::Timeout), None),
        };
        two = back;
        match r {
            Ok(0) => {
                let e = Err(IoFail::Io(std::io::ErrorKind::WriteZero.into()));
                return (e, Some((two.head, two.body)));
            }
            Ok(n) => two.advance(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return (Err(IoFail::Io(e)), Some((two.head, two.body))),
        }
    }
    (Ok(()), Some((two.head, two.body)))
}

/// Writes `a[ar]` then `b[br]` to `stream` with vectored writes, each wait bounded by
/// `timeout`; the buffers are handed back unchanged (emptied on a timeout, like
/// [`write_from`]).
pub async fn write_two_from<S: AsyncWriteRent>(
    stream: &mut S,
    a: &mut Vec<u8>,
    ar: std::ops::Range<usize>,
    b: &mut Vec<u8>,
    br: std::ops::Range<usize>,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    let two = TwoRanges::new(std::mem::take(a), ar, std::mem::take(b), br);
    let (res, back) = write_two(stream, two, dl, timeout).await;
    if let Some((a_back, b_back)) = back {
        (*a, *b) = (a_back, b_back);
    }
    res
}

/// Writes `head[hr]` then `body[br]` of a shared body (a cache entry's) with vectored writes, each
/// wait bounded by `timeout`: the body goes from where the store keeps it to the socket with
/// no copy in user space. `head` is handed back (emptied on a timeout).
pub async fn write_head_and_shared<S: AsyncWriteRent>(
    stream: &mut S,
    head: &mut Vec<u8>,
    hr: std::ops::Range<usize>,
    body: std::rc::Rc<[u8]>,
    br: std::ops::Range<usize>,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    let two = TwoRanges::new(std::mem::take(head), hr, body, br);
    let (res, back) = write_two(stream, two, dl, timeout).await;
    if let Some((h, _)) = back {
        *head = h;
    }
    res
}

/// Writes static bytes (canned responses, `100 Continue`).
pub async fn write_static<S: AsyncWriteRent>(
    stream: &mut S,
    bytes: &'static [u8],
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    match dl.within(timeout, stream.write_all(bytes)).await {
        Ok((res, _)) => res.map(|_| ()).map_err(IoFail::Io),
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_reusable_and_times_out() {
        for engine in crate::test_engines::engines() {
            crate::test_engines::block_on(engine, async {
                let mut dl = Deadline::new();
                // A step that finishes first, then one that cannot, then one that does again.
                assert!(dl.within(Duration::from_secs(5), async { 1 }).await.is_ok());
                let never = std::future::pending::<()>();
                assert!(dl.within(Duration::from_millis(5), never).await.is_err());
                let ok = dl
                    .within(
                        Duration::from_secs(5),
                        monoio::time::sleep(Duration::from_millis(1)),
                    )
                    .await;
                assert!(ok.is_ok(), "a reset deadline must not fire early");
                // Lazily re-armed: a short step on a fresh deadline arms the timer and
                // finishes at once; a longer step after it leaves the timer armed early, and
                // its firing during the longer step (at 30 of its 60 ms) must not end it.
                let mut dl = Deadline::new();
                let short = dl.within(Duration::from_millis(30), async { 1 }).await;
                assert!(short.is_ok());
                let ok = dl
                    .within(
                        Duration::from_secs(30),
                        monoio::time::sleep(Duration::from_millis(60)),
                    )
                    .await;
                assert!(ok.is_ok(), "an early-armed timer ended a later step");
                // And a step that ends earlier than the armed instant re-arms it: within
                // 20 ms, not the 30 s still armed (bounded by an outer 10 s timeout).
                let never = std::future::pending::<()>();
                let inner = dl.within(Duration::from_millis(20), never);
                let outer = monoio::time::timeout(Duration::from_secs(10), inner).await;
                assert!(
                    matches!(outer, Ok(Err(Elapsed))),
                    "an earlier deadline did not re-arm the timer"
                );
            });
        }
    }

    #[test]
    fn two_ranges_go_out_whole_and_in_order_through_partial_writes() {
        for engine in crate::test_engines::engines() {
            two_ranges_through_partial_writes(engine);
        }
    }

    fn two_ranges_through_partial_writes(engine: crate::test_engines::TestEngine) {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let head: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let body: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 253) as u8).collect();
        let expected = [
            &head[7..290],
            &body[13..body.len() - 5],
            &head[..10],
            &body[3..],
        ]
        .concat();
        // 2 MiB through a socket whose buffers are far smaller: writev returns short and
        // the ranges must be advanced across both iovecs; then a head and a shared body (a
        // cache hit's) the same way.
        let reader = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).unwrap();
            got
        });
        crate::test_engines::block_on(engine, async move {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_send_buffer_size(8192).unwrap();
            sock.connect(&addr.into()).unwrap();
            sock.set_nonblocking(true).unwrap();
            let mut stream = monoio::net::TcpStream::from_std(sock.into()).unwrap();
            let (mut a, mut b) = (head.clone(), body.clone());
            let mut dl = Deadline::new();
            let br = 13..b.len() - 5;
            write_two_from(
                &mut stream,
                &mut a,
                7..290,
                &mut b,
                br,
                &mut dl,
                Duration::from_secs(20),
            )
            .await
            .unwrap();
            assert_eq!((&a, &b), (&head, &body), "the buffers come back unchanged");
            let shared: std::rc::Rc<[u8]> = body.clone().into();
            let t = Duration::from_secs(20);
            let sr = 3..shared.len();
            write_head_and_shared(&mut stream, &mut a, 0..10, shared, sr, &mut dl, t)
                .await
                .unwrap();
            assert_eq!(a, head, "the head comes back unchanged");
            // On io_uring a dropped socket is closed asynchronously, by the runtime we are
            // blocking here: half-close it directly, so the reader sees the end.
            stream.shutdown().await.unwrap();
        });
        let got = reader.join().unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order or lost");
    }
}
