//! Deterministic raw backends.
//!
//! `LockStep` (sozu style): the test itself accepts a connection, reads the
//! bytes the proxy forwarded and writes the response bytes, step by step.
//! `Misbehave`: a backend that closes or resets every connection.
//! `dead_addr`, `dead_addrs`: addresses with nothing listening (connection refused).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// An address on which nothing listens (see [`dead_addrs`]).
pub fn dead_addr() -> SocketAddr {
    dead_addrs::<1>()[0]
}

/// `N` distinct addresses on which nothing listens, on ports the kernel never hands to a
/// `bind` on port 0: below its ephemeral range (`net.ipv4.ip_local_port_range`). A port
/// drawn from that range and given back could come back as one the proxy under test binds on
/// port 0 (its admin API: a "dead" backend once answered 404, a reload once found its new
/// listener's port taken by the admin). Every call takes ports no other call of this process
/// took (the tests run in parallel), each checked free by a bind.
pub fn dead_addrs<const N: usize>() -> [SocketAddr; N] {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const FIRST: usize = 10_000;
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32_768);
    let span = low.saturating_sub(FIRST).max(1);
    // Another process's tests (a second checkout) start elsewhere in the range.
    let offset = std::process::id() as usize * 7_919 % span;
    std::array::from_fn(|_| {
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = (FIRST + (offset + n) % span) as u16;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if TcpListener::bind(addr).is_ok() {
                return addr;
            }
        }
        panic!("no free port below the ephemeral range ({FIRST}..{low})");
    })
}

pub struct LockStep {
    addr: SocketAddr,
    rx: Mutex<Receiver<TcpStream>>,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl LockStep {
    pub fn bind() -> LockStep {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind lock-step backend");
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(s) = s {
                    acc.fetch_add(1, Ordering::SeqCst);
                    if tx.send(s).is_err() {
                        break;
                    }
                }
            }
        });
        LockStep {
            addr,
            rx: Mutex::new(rx),
            accepted,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The next connection from the proxy, or None if none arrives in time.
    pub fn try_accept(&self, within: Duration) -> Option<LockConn> {
        match self.rx.lock().unwrap().recv_timeout(within) {
            Ok(s) => {
                s.set_nodelay(true).ok();
                s.set_write_timeout(Some(Duration::from_secs(15))).ok();
                Some(LockConn {
                    stream: s,
                    buf: Vec::new(),
                })
            }
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    pub fn accept(&self) -> LockConn {
        self.try_accept(Duration::from_secs(10))
            .expect("lock-step backend: the proxy did not connect within 10s")
    }
}

impl Drop for LockStep {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}

pub struct LockConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl LockConn {
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "lock-step read deadline",
            ));
        }
        self.stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        let mut b = [0u8; 65536];
        let n = loop {
            match self.stream.read(&mut b) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buf.extend_from_slice(&b[..n]);
        Ok(n)
    }

    /// Reads up to and including the blank line ending a request head.
    pub fn read_head(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = self.buf.drain(..i + 4).collect();
                return String::from_utf8_lossy(&head).into_owned();
            }
            match self.fill(deadline) {
                Ok(0) => panic!(
                    "lock-step: EOF before a complete request head; got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "lock-step: no complete request head ({e}); got {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads exactly n bytes (after the head).
    pub fn read_exact(&mut self, n: usize) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.buf.len() < n {
            match self.fill(deadline) {
                Ok(0) => panic!("lock-step: EOF after {} of {n} bytes", self.buf.len()),
                Ok(_) => {}
                Err(e) => panic!(
                    "lock-step: read of {n} bytes failed after {}: {e}",
                    self.buf.len()
                ),
            }
        }
        self.buf.drain(..n).collect()
    }

    /// Reads until EOF/RST within `within`; returns everything not yet consumed.
    /// None if the connection stays open.
    pub fn read_to_close(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            match self.fill(deadline) {
                Ok(0) => return Some(std::mem::take(&mut self.buf)),
                Ok(_) => {}
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return None
                }
                Err(_) => return Some(std::mem::take(&mut self.buf)),
            }
        }
    }

    pub fn write(&mut self, data: &[u8]) {
        self.stream.write_all(data).expect("lock-step write");
    }

    pub fn close(self) {
        let _ = self.stream.shutdown(Shutdown::Both);
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Misbehaviour {
    /// Accept and close at once (FIN before any byte is read).
    CloseOnAccept,
    /// Wait until request bytes arrive, then close without reading them:
    /// the kernel answers with a RST.
    ResetOnRequest,
}

pub struct Misbehave {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Misbehave {
    pub fn start(kind: Misbehaviour) -> Misbehave {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, st) = (accepted.clone(), stop.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                acc.fetch_add(1, Ordering::SeqCst);
                match kind {
                    Misbehaviour::CloseOnAccept => drop(s),
                    Misbehaviour::ResetOnRequest => {
                        thread::spawn(move || {
                            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                            let mut b = [0u8; 1];
                            let _ = s.peek(&mut b);
                            drop(s); // unread data => RST
                        });
                    }
                }
            }
        });
        Misbehave {
            addr,
            accepted,
            stop,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Misbehave {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
    }
}
