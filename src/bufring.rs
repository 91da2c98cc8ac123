//! Stage 5 and 6 of the pipeline, *pool* and *forward*, on io_uring: a provided-buffer ring per
//! shard, which a plain upstream connection's responses are received into. A connection
//! checked into the pool gets a receive posted on it ([`monoio::net::TcpStream::recv_select`],
//! with `POLL_FIRST`: it waits for the socket before it picks a buffer); the checkout looks
//! at it without a syscall (still pending: nothing arrived, the connection is good), and the
//! exchange then awaits it for the response, whose buffer the kernel picks from this ring
//! only when the response arrives. So a connection holds no buffer while it waits, and the
//! response is read with no syscall of the shard's own (it was a readiness wait and then a
//! `recv(2)`, one syscall per request: loadtest/results/2026-12-05-vm-armed/).
//!
//! The ring holds about as many buffers as exchanges await a response (at most
//! [`ENTRIES`]), topped up from the shard's small-buffer list when an exchange takes its
//! receive; a buffer the kernel filled leaves the ring as the exchange's read buffer. The ring
//! keeps what it holds (at most 256 KiB) when the shard goes quiet: its 4 KiB buffers are not
//! page-aligned blocks a `madvise` could give back.
//! Where the ring cannot be registered (an old kernel, or an io_uring without DEFER_TASKRUN:
//! [`runs_deferred`]) the pool posts a readiness wait and
//! the exchange reads directly, as it does when a response arrives while the ring is empty
//! (`ENOBUFS`, counted: [`RingCounters`]).

use std::alloc::Layout;
use std::sync::atomic::{AtomicU16, Ordering};

use monoio::net::tcp::RecvSelect;
use monoio::net::TcpStream;

/// The buffer group id of a thread's first ring; each later registration on the thread takes
/// the next ([`NEXT_GROUP`]).
const GROUP: u16 = 0x6573;

thread_local! {
    /// The group id the thread's next registration takes. A thread has one ring for its
    /// whole life in production (its shard's); a new id for any later one means that a
    /// dropped receive of an earlier ring, reported after it is gone, can never be taken
    /// for one of the new ring's buffers (which would then be in the kernel's ring twice).
    static NEXT_GROUP: std::cell::Cell<u16> = const { std::cell::Cell::new(GROUP) };
}
/// The most buffers a ring holds (a power of two, as the kernel requires): 64 × 4 KiB, at
/// most 256 KiB, held only while (and after) that many exchanges await small responses at
/// once. Beyond it a response is read directly (`RingCounters::empty`): with 16, half the
/// responses under wrk's 50 connections were, 0.96 syscalls per request against 0.18 with 64
/// (loadtest/results/2026-12-05-vm-ring64/); 256 cost 1 % more CPU at 256 connections.
pub const ENTRIES: u16 = 64;
/// The size of the ring's buffers: what a small response (its head and body) fits in. A
/// buffer lent to every exchange awaiting a response would hold memory while the backend
/// works; 68 KiB ones, enough for the larger responses too, held 4.4 MB more under 200
/// connections fetching 64 KiB (8.1 against 3.7 MB of growth; nginx: 2.0).
pub const RING_BUFFER: usize = 4096;

/// Whether a response with `head` fits in one ring buffer: its next one is then received
/// into one (`Backends::small_last`); a larger one is read into a buffer of its size.
pub fn fits(head: &crate::http::parse::ResponseHead) -> bool {
    let body = match (head.content_length, head.chunked) {
        (Some(n), false) => n,
        (None, false) if matches!(head.status, 204 | 304) => 0,
        _ => return false,
    };
    (head.head_len as u64).saturating_add(body) <= RING_BUFFER as u64
}
/// The ring's memory: page-aligned, as `IORING_REGISTER_PBUF_RING` requires.
const RING_ALIGN: usize = 4096;

thread_local! {
    /// This thread's io_uring runs completion work only when it waits (DEFER_TASKRUN): see
    /// [`runs_deferred`].
    static DEFERRED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Says whether the io_uring just built on this thread has DEFER_TASKRUN
/// (`worker::build_uring_runtime`). Rings are registered only where it has: the pool's checks
/// and the cancel of a receive a caller does not await rely on completion work running only
/// while the shard waits in the kernel (without it, a receive may take a response in the
/// return from any syscall, before a cancel reaches the kernel).
pub fn runs_deferred(yes: bool) {
    DEFERRED.with(|d| d.set(yes));
}

/// One ring slot, laid out as the kernel's `struct io_uring_buf`; the first slot's `resv` is
/// the ring's tail.
#[repr(C)]
struct Slot {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

fn ring_layout() -> Layout {
    // ENTRIES × 16 bytes, aligned to a page: both constants, so this cannot fail.
    Layout::from_size_align(
        usize::from(ENTRIES) * std::mem::size_of::<Slot>(),
        RING_ALIGN,
    )
    .expect("constant layout")
}

/// A shard's provided-buffer ring (see the module's header).
pub struct BufRing {
    /// The registered ring's slots; null while none is registered.
    mem: *mut Slot,
    /// By buffer id: the buffer the ring holds under that id (`None`: the id is free).
    bufs: Vec<Option<Vec<u8>>>,
    free_ids: Vec<u16>,
    tail: u16,
    /// Buffers in the ring that no finished receive has taken.
    in_ring: usize,
    /// Exchanges awaiting a response on a receive ([`Receive`]s alive).
    waiting: usize,
    /// Registering failed once: the kernel has no such rings; never tried again.
    unsupported: bool,
    /// This ring's buffer group id (while `mem` is not null).
    group: u16,
    scratch: Vec<(u16, u16)>,
    /// Receives that finished, by what they got: a ring buffer, or an empty ring
    /// (`ENOBUFS`: the response was read directly). `edgeshard_pool_ring_receives_total`.
    pub counters: RingCounters,
}

/// What a shard's [`BufRing`] counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Responses that arrived in a ring buffer.
    pub buffered: u64,
    /// Responses that arrived while the ring was empty (read directly, one `recv` more).
    pub empty: u64,
}

impl Default for BufRing {
    fn default() -> BufRing {
        BufRing {
            mem: std::ptr::null_mut(),
            bufs: Vec::new(),
            free_ids: Vec::new(),
            tail: 0,
            in_ring: 0,
            waiting: 0,
            unsupported: false,
            group: GROUP,
            scratch: Vec::new(),
            counters: RingCounters::default(),
        }
    }
}

impl BufRing {
    /// Posts a receive on `stream` into a buffer of the ring (as much as the buffer holds).
    /// `None` where the ring cannot be had (the caller waits for readiness and reads
    /// directly).
    pub fn post(&mut self, stream: &TcpStream) -> Option<RecvSelect> {
        if self.unsupported || (self.mem.is_null() && !self.register()) {
            return None;
        }
        // Length 0: the buffer's.
        stream.recv_select(self.group, 0).ok()
    }

    /// An exchange is about to await a receive: the ring is topped up (from `spare`) to a
    /// buffer for each exchange awaiting one, and buffers of receives dropped unfinished are
    /// put back in it.
    fn awaiting(&mut self, spare: impl FnMut() -> Vec<u8>) {
        self.reclaim_dropped();
        self.waiting += 1;
        self.top_up(self.waiting, spare);
    }

    /// The buffer a receive the caller does not read finished with (a pooled connection's
    /// stray bytes or close; a receive dropped unfinished), if any: back in the ring.
    ///
    /// # Safety
    /// `bid` must be what the completion of a receive posted through this ring reported (the
    /// kernel is then done with that buffer), each completion's once: any other id may name a
    /// buffer the kernel can still fill, which would then be in the ring twice.
    pub unsafe fn put_back(&mut self, bid: Option<u16>) {
        if let Some(buf) = bid.and_then(|b| self.take(b)) {
            self.provide(buf);
        }
    }

    /// A buffer a finished receive took out of the ring, given back (as the live path does
    /// through the small list and [`BufRing::awaiting`]'s top-up).
    #[cfg(test)]
    fn recycle(&mut self, buf: Vec<u8>) {
        self.provide(buf);
    }

    /// A posted receive finished (`bid`: the buffer the kernel filled, holding `n` bytes):
    /// the buffer leaves the ring for the caller. Only [`Receive`]'s poll calls it, with the
    /// completion's own id and length.
    fn finished(&mut self, bid: Option<u16>, n: usize) -> Option<Vec<u8>> {
        let mut buf = self.take(bid?)?;
        if n == 0 {
            // End of stream with a buffer picked: it goes back in the ring.
            self.provide(buf);
            return None;
        }
        // SAFETY: the kernel wrote `n` bytes at the start of this buffer (the receive's result,
        // never more than the length the ring gave for it: its capacity), and a `Vec<u8>`'s
        // bytes have no invariant beyond being initialised.
        unsafe { buf.set_len(n.min(buf.capacity())) };
        Some(buf)
    }

    /// Buffers the ring holds now.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.in_ring
    }

    fn register(&mut self) -> bool {
        if !DEFERRED.with(|d| d.get()) {
            self.unsupported = true;
            return false;
        }
        let layout = ring_layout();
        // SAFETY: the layout has a non-zero size.
        let mem = unsafe { std::alloc::alloc_zeroed(layout) }.cast::<Slot>();
        if mem.is_null() {
            return false;
        }
        // SAFETY: `mem` is page-aligned memory for ENTRIES slots, zeroed (an empty ring), kept
        // until `drop` unregisters the ring; every buffer put in it is kept in
        // `bufs` until the kernel has given it back (a finished or reported receive).
        let group = NEXT_GROUP.with(|g| g.replace(g.get().wrapping_add(1)));
        let registered =
            unsafe { monoio::utils::register_buf_ring(mem as u64, ENTRIES, group) }.is_ok();
        if !registered {
            // SAFETY: allocated above with this layout; the kernel never saw it.
            unsafe { std::alloc::dealloc(mem.cast(), layout) };
            self.unsupported = true;
            return false;
        }
        self.mem = mem;
        self.group = group;
        self.bufs = (0..ENTRIES).map(|_| None).collect();
        self.free_ids = (0..ENTRIES).rev().collect();
        self.tail = 0;
        self.in_ring = 0;
        true
    }

    /// Gives the ring buffers back from receives that were dropped before they finished
    /// (timeouts, clients that left): the kernel is done with them once their completion was
    /// reaped, and they go back in the ring.
    fn reclaim_dropped(&mut self) {
        monoio::utils::take_dropped_selects(&mut self.scratch);
        let mut scratch = std::mem::take(&mut self.scratch);
        for (group, bid) in scratch.drain(..) {
            if group == self.group {
                // SAFETY: the driver reported `bid` from the completion of a receive posted
                // through this ring: its group id is its own ([`NEXT_GROUP`]), and reports of
                // other groups are dropped here.
                unsafe { self.put_back(Some(bid)) };
            }
        }
        self.scratch = scratch;
    }

    fn top_up(&mut self, want: usize, mut spare: impl FnMut() -> Vec<u8>) {
        let want = want.min(usize::from(ENTRIES));
        while self.in_ring < want && !self.free_ids.is_empty() {
            let buf = spare();
            if buf.capacity() == 0 {
                return;
            }
            self.provide(buf);
        }
    }

    fn take(&mut self, bid: u16) -> Option<Vec<u8>> {
        let buf = self.bufs.get_mut(usize::from(bid))?.take()?;
        self.in_ring -= 1;
        self.free_ids.push(bid);
        Some(buf)
    }

    fn provide(&mut self, mut buf: Vec<u8>) {
        let Some(bid) = self.free_ids.pop() else {
            return;
        };
        buf.clear();
        let index = usize::from(self.tail & (ENTRIES - 1));
        // SAFETY: `mem` is the registered ring of ENTRIES slots and `index` < ENTRIES. The
        // slot at the tail is not the kernel's until the tail moves past it (below); its
        // fields are written through raw pointers, never a reference to the whole slot (the
        // first slot's `resv` is the tail, which the kernel reads meanwhile). The buffer's
        // heap memory stays where it is while `bufs` holds it (moving a `Vec` does not move
        // its allocation).
        unsafe {
            let slot = self.mem.add(index);
            std::ptr::addr_of_mut!((*slot).addr).write(buf.as_mut_ptr() as u64);
            let len = u32::try_from(buf.capacity()).unwrap_or(u32::MAX);
            std::ptr::addr_of_mut!((*slot).len).write(len);
            std::ptr::addr_of_mut!((*slot).bid).write(bid);
        }
        self.bufs[usize::from(bid)] = Some(buf);
        self.in_ring += 1;
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the first slot's `resv`, a u16 the kernel reads concurrently:
        // written as an atomic with release ordering, after the slot it publishes.
        unsafe {
            let tail = std::ptr::addr_of_mut!((*self.mem).resv);
            AtomicU16::from_ptr(tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        if self.mem.is_null() {
            return;
        }
        // The buffers are never freed: a receive the kernel punted to an io-wq worker (after
        // a spurious wake-up of its poll) takes its buffer for good when it starts and may
        // still be writing into it after the ring is unregistered and the op cancelled. They
        // are left to the process (64 x 4 KiB, once per shard, at its end).
        std::mem::forget(std::mem::take(&mut self.bufs));
        if monoio::utils::unregister_buf_ring(self.group).is_ok() {
            // SAFETY: allocated by `register` with this layout; unregistered just now, so the
            // kernel no longer reads or writes the ring itself (a worker that took a buffer
            // holds the buffer, not its slot).
            unsafe { std::alloc::dealloc(self.mem.cast(), ring_layout()) };
        }
        // Otherwise the driver is gone or elsewhere: the kernel may still know the ring, so
        // its memory is left to the process too.
    }
}

/// What a posted receive ([`Receive`]) got.
pub enum Received {
    /// The first bytes, in a buffer that left the ring.
    Data(Vec<u8>),
    /// The peer closed.
    Eof,
    /// Data arrived while the ring was empty: it is there to be read directly.
    NoBuffer,
}

/// A receive posted through a shard's [`BufRing`]. Dropping it unfinished is fine: the ring
/// learns which buffer (if any) it used from the driver (reclaimed when the next exchange
/// awaits a receive).
pub struct Receive<'a> {
    op: RecvSelect,
    ring: &'a std::cell::RefCell<BufRing>,
}

impl<'a> Receive<'a> {
    /// `op` (posted through `ring`), to be awaited by an exchange; `spare` tops the ring up.
    pub fn new(
        op: RecvSelect,
        ring: &'a std::cell::RefCell<BufRing>,
        spare: impl FnMut() -> Vec<u8>,
    ) -> Receive<'a> {
        ring.borrow_mut().awaiting(spare);
        Receive { op, ring }
    }
}

impl Drop for Receive<'_> {
    fn drop(&mut self) {
        let mut ring = self.ring.borrow_mut();
        ring.waiting = ring.waiting.saturating_sub(1);
    }
}

impl std::future::Future for Receive<'_> {
    type Output = std::io::Result<Received>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let (result, bid) = std::task::ready!(std::pin::Pin::new(&mut self.op).poll(cx));
        let n = result.as_ref().map_or(0, |n| *n as usize);
        let mut ring = self.ring.borrow_mut();
        let buf = ring.finished(bid, n);
        let empty = matches!(&result, Err(e) if e.raw_os_error() == Some(libc::ENOBUFS));
        let c = &mut ring.counters;
        if empty {
            c.empty += 1;
        } else if buf.is_some() {
            c.buffered += 1;
        }
        drop(ring);
        std::task::Poll::Ready(match (result, buf) {
            (Ok(0), _) => Ok(Received::Eof),
            (Ok(_), Some(buf)) => Ok(Received::Data(buf)),
            (Ok(_), None) => Err(std::io::Error::other("a receive reported no ring buffer")),
            (Err(e), _) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(Received::NoBuffer),
            (Err(e), _) => Err(e),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use monoio::net::TcpStream;

    use super::*;
    use crate::test_engines::{block_on, engines};

    async fn pair(l: &std::net::TcpListener) -> (TcpStream, std::net::TcpStream) {
        let s = TcpStream::connect_addr(l.local_addr().unwrap())
            .await
            .unwrap();
        (s, l.accept().unwrap().0)
    }

    fn spare() -> Vec<u8> {
        Vec::with_capacity(8192)
    }

    #[test]
    fn responses_land_in_ring_buffers_that_come_back_and_are_reused() {
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let (s, mut peer) = pair(&l).await;
                let Some(op) = ring.borrow_mut().post(&s) else {
                    assert!(
                        monoio::utils::is_legacy(),
                        "io_uring with DEFER_TASKRUN (Linux >= 6.1) has rings"
                    );
                    return;
                };
                // Posted before anything arrived (POLL_FIRST), counted when awaited.
                let receive = Receive::new(op, &ring, spare);
                assert_eq!(ring.borrow().held(), 1, "topped up for the one awaited");
                peer.write_all(b"hello").unwrap();
                let Received::Data(buf) = receive.await.unwrap() else {
                    panic!("data")
                };
                assert_eq!(&buf[..], b"hello");
                assert_eq!(ring.borrow().held(), 0, "the buffer left the ring");
                let first = buf.as_ptr();

                // Given back, it is the next one's buffer.
                ring.borrow_mut().recycle(buf);
                let op = ring.borrow_mut().post(&s).unwrap();
                let receive = Receive::new(op, &ring, || unreachable!("one is in the ring"));
                // More than a buffer holds: the rest stays in the socket.
                peer.write_all(&[b'x'; 10_000]).unwrap();
                let Received::Data(buf) = receive.await.unwrap() else {
                    panic!("data")
                };
                assert_eq!(buf.as_ptr(), first, "the same buffer");
                assert_eq!(buf.len(), 8192, "as much as the buffer holds");
                ring.borrow_mut().recycle(buf);
                let op = ring.borrow_mut().post(&s).unwrap();
                let receive = Receive::new(op, &ring, spare);
                let Received::Data(buf) = receive.await.unwrap() else {
                    panic!("data")
                };
                assert_eq!(buf.len(), 10_000 - 8192, "the rest, in order");
                ring.borrow_mut().recycle(buf);
                drop(peer.shutdown(std::net::Shutdown::Write));
                let op = ring.borrow_mut().post(&s).unwrap();
                let receive = Receive::new(op, &ring, spare);
                assert!(matches!(receive.await.unwrap(), Received::Eof));
                assert_eq!(ring.borrow().held(), 1, "the end of stream kept no buffer");
            });
        }
    }

    #[test]
    fn the_ring_wraps_around_and_every_receive_gets_its_own_bytes() {
        // 300 receive and recycle rounds provide past the ring's 64 slots several times
        // (the slot index wraps at `tail & (ENTRIES - 1)`): each receive gets exactly the
        // bytes sent for it, and the same one buffer keeps coming back.
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let (s, mut peer) = pair(&l).await;
                let mut buffers = std::collections::HashSet::new();
                for round in 0..300u32 {
                    let Some(op) = ring.borrow_mut().post(&s) else {
                        assert!(monoio::utils::is_legacy(), "io_uring has rings");
                        return;
                    };
                    let receive = Receive::new(op, &ring, spare);
                    let sent = format!("round {round}");
                    peer.write_all(sent.as_bytes()).unwrap();
                    let Received::Data(buf) = receive.await.unwrap() else {
                        panic!("round {round}: no data")
                    };
                    assert_eq!(&buf[..], sent.as_bytes(), "round {round}");
                    buffers.insert(buf.as_ptr() as usize);
                    ring.borrow_mut().recycle(buf);
                }
                let tail = ring.borrow().tail;
                assert!(tail > 4 * ENTRIES, "{tail} provides: past the slots' wrap");
                assert_eq!(buffers.len(), 1, "one buffer, given back each round");
            });
        }
    }

    #[test]
    fn a_full_ring_lends_every_buffer_once_and_the_next_receive_reads_directly() {
        // 65 receives await at once: the ring is topped up to its 64 buffers, each lent to
        // one receive, and the 65th finds the ring empty (`NoBuffer`: its bytes are read
        // directly). No buffer goes to two receives.
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let mut conns = Vec::new();
                for _ in 0..=ENTRIES {
                    conns.push(pair(&l).await);
                }
                let mut receives = Vec::new();
                for (s, _) in &conns {
                    let Some(op) = ring.borrow_mut().post(s) else {
                        assert!(monoio::utils::is_legacy(), "io_uring has rings");
                        return;
                    };
                    receives.push(Receive::new(op, &ring, spare));
                }
                assert_eq!(
                    ring.borrow().held(),
                    usize::from(ENTRIES),
                    "topped up to the ring's size"
                );
                for (i, (_, peer)) in conns.iter_mut().enumerate() {
                    peer.write_all(format!("conn {i}").as_bytes()).unwrap();
                }
                let (mut lent, mut direct) = (std::collections::HashSet::new(), 0);
                // Kept until the end: a buffer given back could be lent again meanwhile.
                let mut kept = Vec::new();
                for (i, receive) in receives.into_iter().enumerate() {
                    match receive.await.unwrap() {
                        Received::Data(buf) => {
                            assert_eq!(&buf[..], format!("conn {i}").as_bytes());
                            assert!(lent.insert(buf.as_ptr() as usize), "a buffer lent twice");
                            kept.push(buf);
                        }
                        Received::NoBuffer => direct += 1,
                        Received::Eof => panic!("conn {i}: end of stream"),
                    }
                }
                assert_eq!((lent.len(), direct), (usize::from(ENTRIES), 1));
            });
        }
    }

    #[test]
    fn responses_that_fit_a_ring_buffer() {
        use crate::http::parse::ResponseHead;
        let head = |head_len, content_length, chunked, status| ResponseHead {
            status,
            head_len,
            content_length,
            chunked,
            ..ResponseHead::default()
        };
        assert!(fits(&head(200, Some(3896), false, 200)), "exactly a buffer");
        assert!(!fits(&head(200, Some(3897), false, 200)), "a byte more");
        assert!(
            !fits(&head(200, Some(10), true, 200)),
            "chunked: unknown length"
        );
        assert!(!fits(&head(200, None, false, 200)), "close-delimited");
        assert!(fits(&head(200, None, false, 304)), "bodiless");
        assert!(!fits(&head(5000, None, false, 204)), "a head too large");
    }

    #[test]
    fn a_receive_that_finds_the_ring_empty_says_so_and_leaves_the_data() {
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let (s, mut peer) = pair(&l).await;
                let Some(op) = ring.borrow_mut().post(&s) else {
                    return;
                };
                // A spare list with nothing to give: the ring stays empty.
                let receive = Receive::new(op, &ring, Vec::new);
                peer.write_all(b"ready").unwrap();
                assert!(matches!(receive.await.unwrap(), Received::NoBuffer));
                let counted = RingCounters {
                    buffered: 0,
                    empty: 1,
                };
                assert_eq!(ring.borrow().counters, counted);
                let mut buf = [0u8; 8];
                let n = crate::transport::recv_into(s.as_raw_fd(), &mut buf, 0).unwrap();
                assert_eq!(&buf[..n], b"ready", "still there to be read directly");
                // And the ring works on.
                let op = ring.borrow_mut().post(&s).unwrap();
                let receive = Receive::new(op, &ring, spare);
                peer.write_all(b"again").unwrap();
                let got = receive.await.unwrap();
                assert!(!matches!(got, Received::NoBuffer), "nobuf after nobuf");
                let counted = RingCounters {
                    buffered: 1,
                    empty: 1,
                };
                assert_eq!(ring.borrow().counters, counted);
            });
        }
    }

    #[test]
    fn a_later_ring_on_a_thread_takes_a_group_of_its_own() {
        // A dropped receive of a ring reported after the ring is gone must never be taken for
        // a buffer of the next ring on the thread: each registration has its own group id.
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let (a, _peer) = pair(&l).await;
                let mut first = BufRing::default();
                let Some(r) = first.post(&a) else {
                    return;
                };
                drop(r);
                let old = first.group;
                drop(first);
                let mut second = BufRing::default();
                let r = second.post(&a).expect("a second ring registers");
                drop(r);
                assert_ne!(second.group, old);
                // A report of the old group is not the new ring's.
                second.scratch.clear();
                let before = second.held();
                second.reclaim_dropped();
                assert_eq!(second.held(), before);
            });
        }
    }

    #[test]
    fn receives_dropped_before_anything_arrived_leave_no_report() {
        // Forward auth and cache refreshes drop the receive posted on a pooled connection
        // at every checkout; with nothing to give back, nothing may be kept per drop (each
        // was kept until an exchange awaited a receive: a leak where none ever did).
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let (a, _peer_a) = pair(&l).await;
                let (b, mut peer_b) = pair(&l).await;
                let Some(first) = ring.borrow_mut().post(&a) else {
                    return;
                };
                drop(first);
                for i in 0..100u8 {
                    let group = ring.borrow().group;
                    drop(a.recv_select(group, 0).unwrap());
                    // A turn of the runtime in the kernel: the cancels complete and are
                    // reaped.
                    peer_b.write_all(&[i]).unwrap();
                    b.armed_readable().unwrap().await.unwrap();
                    let mut byte = [0u8; 1];
                    crate::transport::recv_into(b.as_raw_fd(), &mut byte, 0).unwrap();
                }
                let mut reports = Vec::new();
                monoio::utils::take_dropped_selects(&mut reports);
                assert!(reports.is_empty(), "{} reports kept", reports.len());
            });
        }
    }

    #[test]
    fn a_dropped_receive_gives_its_buffer_back() {
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let ring = RefCell::new(BufRing::default());
                let (a, mut peer_a) = pair(&l).await;
                let (b, mut peer_b) = pair(&l).await;
                let Some(op) = ring.borrow_mut().post(&a) else {
                    return;
                };
                let dropped = Receive::new(op, &ring, spare);
                // A's data fills the ring's one buffer, but nobody awaits A's receive any more
                // (a timeout, a client that left).
                peer_a.write_all(b"late").unwrap();
                let watch = a.armed_readable().unwrap();
                watch.await.unwrap();
                drop(dropped);
                // Once its completion is reaped, the ring learns of it: B's receive gets the
                // buffer back without taking a new one.
                let op = ring.borrow_mut().post(&b).unwrap();
                let receive = Receive::new(op, &ring, || unreachable!("A's came back"));
                assert_eq!(ring.borrow().held(), 1);
                peer_b.write_all(b"on time").unwrap();
                let Received::Data(buf) = receive.await.unwrap() else {
                    panic!("data")
                };
                assert_eq!(&buf[..], b"on time");
                ring.borrow_mut().recycle(buf);
            });
        }
    }
}
