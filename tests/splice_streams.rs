//! Spliced bodies whose source pauses, and close-delimited responses (issue 7): a backend
//! that ends its body by closing is spliced too, re-framed as chunked for HTTP/1.1 clients;
//! whatever a paused backend has sent reaches the client before it sends more (nothing is
//! held back behind a "more follows" hint); a reset mid-body is never passed off as a
//! complete body.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::support::{admin_get, read_head_bytes, Config};

fn pattern(from: usize, len: usize) -> Vec<u8> {
    (from..from + len).map(|i| (i % 251) as u8).collect()
}

fn spliced_count(admin: SocketAddr) -> u64 {
    admin_get(admin, "/metrics", None)
        .body
        .lines()
        .find_map(|l| l.strip_prefix("edgeshard_spliced_responses_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("edgeshard_spliced_responses_total in /metrics")
}

/// How a staged backend ends its response.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Close,
    Reset,
}

/// A backend that answers each request (one per connection) with `head`, then the pattern
/// in parts of `parts` bytes; before every part after the first it waits for a go from the
/// test. It then closes (or resets) the connection.
fn staged_backend(head: String, parts: Vec<usize>, end: End) -> (SocketAddr, mpsc::Sender<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let _request = read_head_bytes(&mut s);
            if s.write_all(head.as_bytes()).is_err() {
                continue;
            }
            let mut at = 0;
            for (i, &n) in parts.iter().enumerate() {
                if i > 0 && go_rx.recv_timeout(Duration::from_secs(20)).is_err() {
                    return;
                }
                if s.write_all(&pattern(at, n)).is_err() {
                    break;
                }
                at += n;
            }
            if end == End::Reset {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }
    });
    (addr, go_tx)
}

/// A client reading one response: head, then body bytes on demand (chunked decoded).
struct Reader {
    s: TcpStream,
    raw: Vec<u8>,
    head: String,
    chunked: bool,
    /// Decoded body bytes so far.
    body: Vec<u8>,
    /// Chunked: bytes left in the current chunk (None: a size line is next).
    left: Option<usize>,
    done: bool,
    eof: bool,
}

impl Reader {
    fn get(addr: SocketAddr, version: &str) -> Reader {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /f HTTP/{version}\r\nHost: t\r\n\r\n").unwrap();
        let mut r = Reader {
            s,
            raw: Vec::new(),
            head: String::new(),
            chunked: false,
            body: Vec::new(),
            left: None,
            done: false,
            eof: false,
        };
        let end = loop {
            if let Some(p) = r.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break p + 4;
            }
            assert!(r.fill(), "closed before the head");
        };
        r.head = String::from_utf8_lossy(&r.raw[..end]).to_ascii_lowercase();
        r.raw.drain(..end);
        r.chunked = r.head.contains("transfer-encoding: chunked\r\n");
        r
    }

    /// Reads more raw bytes; false at EOF. A read timeout fails the test: bytes the backend
    /// sent were held back.
    fn fill(&mut self) -> bool {
        let mut buf = vec![0u8; 1 << 16];
        let read = loop {
            match self.s.read(&mut buf) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match read {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                self.eof = true;
                false
            }
            Err(e) => panic!("read: {e} with {} body bytes (held back?)", self.body.len()),
        }
    }

    /// Decodes what `raw` holds into `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while !self.done {
            match self.left {
                None => {
                    let Some(p) = self.raw.windows(2).position(|w| w == b"\r\n") else {
                        return;
                    };
                    let line = std::str::from_utf8(&self.raw[..p]).unwrap();
                    let n = usize::from_str_radix(line, 16).expect("chunk size line");
                    if n == 0 {
                        // The last chunk: its size line, then (no trailers) an empty line.
                        if self.raw.len() < p + 4 {
                            return;
                        }
                        assert_eq!(&self.raw[p + 2..p + 4], b"\r\n", "no trailers expected");
                        self.raw.drain(..p + 4);
                        self.done = true;
                        return;
                    }
                    self.raw.drain(..p + 2);
                    self.left = Some(n);
                }
                Some(0) => {
                    if self.raw.len() < 2 {
                        return;
                    }
                    assert_eq!(&self.raw[..2], b"\r\n", "chunk data ends with CRLF");
                    self.raw.drain(..2);
                    self.left = None;
                }
                Some(n) => {
                    let take = n.min(self.raw.len());
                    if take == 0 {
                        return;
                    }
                    self.body.extend(self.raw.drain(..take));
                    self.left = Some(n - take);
                }
            }
        }
    }

    /// Reads until `len` body bytes are in (or the end).
    fn body_until(&mut self, len: usize) {
        self.decode();
        while self.body.len() < len && !self.done && self.fill() {
            self.decode();
        }
    }

    /// Reads to the end of the body (the last chunk, or EOF when close-delimited).
    fn read_to_end(&mut self) {
        self.decode();
        while !self.done && self.fill() {
            self.decode();
        }
    }
}

both_engines! {
    fn a_paused_backend_s_bytes_all_reach_the_client(engine) {
        // Content-Length 3 MiB (spliced); the backend sends 1 MiB + 123 bytes, then 77
        // bytes on their own, and waits each time for the client to have every byte so far.
        // A splice that said "more follows" just before the backend paused let TCP hold the
        // 77 bytes back (nothing else in flight, so no ACK would push them): the client
        // waited forever.
        let len = 3 << 20;
        let first = (1 << 20) + 123;
        let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
        let parts = vec![first, 77, len - first - 77];
        let (backend, go) = staged_backend(head, parts, End::Close);
        let proxy = Config::single(backend).admin("").start(engine);
        let mut r = Reader::get(proxy.addr(), "1.1");
        r.body_until(first);
        assert_eq!(r.body.len(), first);
        go.send(()).unwrap();
        r.body_until(first + 77);
        assert_eq!(r.body.len(), first + 77);
        go.send(()).unwrap();
        r.body_until(len);
        assert!(r.body == pattern(0, len));
        assert_eq!(spliced_count(proxy.admin_addr()), 1);
    }

    fn close_delimited_bodies_are_spliced_and_chunked_for_http11(engine) {
        // No Content-Length, no chunking: the body ends when the backend closes. An HTTP/1.1
        // client gets it chunked (its connection stays open), byte-identical, at sizes from
        // empty to 64 MiB; all of them spliced.
        for len in [0usize, 10, 65537, 64 << 20] {
            let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string();
            let (backend, _go) = staged_backend(head, vec![len], End::Close);
            let proxy = Config::single(backend).admin("").start(engine);
            let mut r = Reader::get(proxy.addr(), "1.1");
            assert!(r.chunked, "len {len}: {}", r.head);
            r.read_to_end();
            assert!(r.done, "len {len}: no last chunk");
            assert_eq!(r.body.len(), len);
            assert!(r.body == pattern(0, len), "len {len}: body differs");
            // The client connection is still usable.
            r.s.write_all(b"GET /f HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut b = [0u8; 12];
            r.s.read_exact(&mut b).unwrap();
            assert_eq!(&b, b"HTTP/1.1 200");
            assert_eq!(spliced_count(proxy.admin_addr()), 2, "len {len}");
        }
    }

    fn close_delimited_bodies_stay_close_delimited_for_http10(engine) {
        let len = 8 << 20;
        let head = "HTTP/1.1 200 OK\r\n\r\n".to_string();
        let (backend, _go) = staged_backend(head, vec![len], End::Close);
        let proxy = Config::single(backend).start(engine);
        let mut r = Reader::get(proxy.addr(), "1.0");
        assert!(!r.chunked && !r.head.contains("content-length"), "{}", r.head);
        r.read_to_end();
        assert!(r.eof);
        assert!(r.body == pattern(0, len));
    }

    fn a_paused_close_delimited_backend_s_bytes_all_arrive(engine) {
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string();
        let (backend, go) = staged_backend(head, vec![200_000, 100], End::Close);
        let proxy = Config::single(backend).start(engine);
        let mut r = Reader::get(proxy.addr(), "1.1");
        r.body_until(200_000);
        assert_eq!(r.body.len(), 200_000);
        go.send(()).unwrap();
        r.read_to_end();
        assert!(r.done);
        assert!(r.body == pattern(0, 200_100));
    }

    fn a_reset_mid_close_delimited_body_is_not_a_complete_body(engine) {
        // The backend resets after 1 MiB: the HTTP/1.1 client gets the bytes, then a closed
        // connection without the last chunk, so it can tell the body is cut short.
        let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_string();
        let (backend, go) = staged_backend(head, vec![1 << 20, 0], End::Reset);
        let proxy = Config::single(backend).start(engine);
        let mut r = Reader::get(proxy.addr(), "1.1");
        r.body_until(1 << 20);
        go.send(()).unwrap();
        r.read_to_end();
        assert!(!r.done, "a reset body was ended with the last chunk");
        assert!(r.eof);
        assert!(r.body == pattern(0, 1 << 20));
    }
}
