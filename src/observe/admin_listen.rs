//! Observability, the admin listener's connections: the accept loop, the bound on
//! connections (`[admin] max_connections`), reading a request head within
//! `admin.header_timeout` of the accept, and writing the answer [`super::admin`] routes.
//!
//! Slow clients must not lock the probes out: at the bound, a new connection closes the
//! oldest one that has not sent its whole head yet, passing over those whose whole head is
//! in their socket, unread (a probe sends its head at once, but under a flood of connections
//! the accept loop runs ahead of the tasks that read); accept waits only while every
//! connection is past its head, and those are answering (bounded). Failed accepts are logged within
//! `log.error_rate`, as the shards' are. Single-threaded (the admin thread's runtime):
//! `Rc`/`Cell`, and no borrow is held across an `.await`.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use futures_channel::oneshot;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::admin::{reply, route, AdminState};
use super::errors::ErrorLimiter;
use super::metrics::family;
use crate::config::AdminConfig;
use crate::notify::Notify;
use crate::stats::Stats;

/// Largest admin request head.
const MAX_HEAD: usize = 8192;
/// The pause after a failed accept (out of descriptors, it fails again at once).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// `[admin]`'s bounds, as the snapshot in force says at an accept (a reload applies them to
/// the connections accepted after it).
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    header_timeout: Duration,
    send_timeout: Duration,
}

impl Limits {
    fn now(state: &AdminState) -> Limits {
        match &state.snapshot.load().config.admin {
            Some(a) => Limits {
                max_connections: a.max_connections,
                header_timeout: a.header_timeout,
                send_timeout: a.send_timeout,
            },
            // A reloaded file without `[admin]`: the listener stays, with the defaults.
            None => Limits {
                max_connections: AdminConfig::DEFAULT_MAX_CONNECTIONS,
                header_timeout: AdminConfig::DEFAULT_HEADER_TIMEOUT,
                send_timeout: AdminConfig::DEFAULT_SEND_TIMEOUT,
            },
        }
    }
}

/// The admin thread's own counters, added to `/metrics`.
pub(crate) struct Counters {
    /// Closed because the head did not arrive within `admin.header_timeout`.
    header_timeouts: Cell<u64>,
    /// Closed, head unfinished, to admit a new connection at `admin.max_connections`.
    evicted: Cell<u64>,
    accept_errors: Cell<u64>,
    /// `log.error_rate` (as at start, as the shards' limiters are) for accept failures.
    errors: ErrorLimiter,
    /// Where `errors` counts the lines it holds back (`log_suppressed`).
    stats: Stats,
    /// Held back since the last line written.
    held: Cell<u64>,
}

impl Counters {
    fn new(error_rate: u32) -> Counters {
        Counters {
            header_timeouts: Cell::new(0),
            evicted: Cell::new(0),
            accept_errors: Cell::new(0),
            errors: ErrorLimiter::new(error_rate),
            stats: Stats::new(0, 0),
            held: Cell::new(0),
        }
    }

    /// Error lines this thread held back, for `edgeshard_log_suppressed_total`.
    pub(crate) fn log_suppressed(&self) -> u64 {
        self.stats.log_suppressed.get()
    }

    fn accept_failed(&self, e: &std::io::Error) {
        self.accept_errors.set(self.accept_errors.get() + 1);
        if self.errors.allow(&self.stats) {
            tracing::warn!(
                error = %e,
                suppressed = self.held.replace(0),
                "admin: accept failed; out of file descriptors? raise LimitNOFILE / ulimit -n"
            );
        } else {
            self.held.set(self.held.get() + 1);
        }
    }

    /// After failures: says how many lines were held back since the last one written.
    fn accepted(&self) {
        let held = self.held.replace(0);
        if held > 0 {
            tracing::warn!(
                suppressed = held,
                "admin: accept failures suppressed by log.error_rate"
            );
        }
    }

    /// The admin listener's families, appended to the shards' (Prometheus text).
    pub(crate) fn render(&self, o: &mut String) {
        family(
            o,
            "edgeshard_admin_connections_closed_total",
            "counter",
            "Admin connections closed before their request head was read, by reason.",
        );
        for (reason, n) in [
            ("header_timeout", &self.header_timeouts),
            ("evicted", &self.evicted),
        ] {
            let _ = writeln!(
                o,
                "edgeshard_admin_connections_closed_total{{reason=\"{reason}\"}} {}",
                n.get()
            );
        }
        family(
            o,
            "edgeshard_admin_accept_errors_total",
            "counter",
            "Failed accepts on the admin listener.",
        );
        let _ = writeln!(
            o,
            "edgeshard_admin_accept_errors_total {}",
            self.accept_errors.get()
        );
    }
}

/// The connections being served, and which of them are still reading their head.
#[derive(Default)]
struct Conns {
    active: Cell<usize>,
    next_id: Cell<u64>,
    /// Connections whose head has not all been read, oldest (lowest id) first: their
    /// socket, and their signal to close.
    heads: RefCell<BTreeMap<u64, (RawFd, Rc<Notify>)>>,
    /// Fires when a connection ends; a one-shot, replaced each time it fires.
    freed: RefCell<Rc<Notify>>,
}

/// A connection's place in [`Conns`]; dropping it gives the place back.
struct Slot {
    conns: Rc<Conns>,
    id: u64,
    /// Fired when the connection is closed to admit a newer one.
    evict: Rc<Notify>,
}

impl Conns {
    fn admit(self: &Rc<Self>, fd: RawFd) -> Slot {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        self.active.set(self.active.get() + 1);
        let evict = Rc::new(Notify::default());
        self.heads.borrow_mut().insert(id, (fd, evict.clone()));
        Slot {
            conns: self.clone(),
            id,
            evict,
        }
    }

    /// Closes the connection that has waited longest for its head, giving its place back
    /// now, passing over those whose whole head waits in their socket ([`head_waits`]: their
    /// task has yet to read it) unless all do; false when every connection's head is read.
    fn evict_oldest(&self) -> bool {
        let mut heads = self.heads.borrow_mut();
        let id = match heads.iter().find(|(_, (fd, _))| !head_waits(*fd)) {
            Some((&id, _)) => id,
            None => match heads.first_key_value() {
                Some((&id, _)) => id,
                None => return false,
            },
        };
        let Some((_, evict)) = heads.remove(&id) else {
            return false;
        };
        drop(heads);
        self.active.set(self.active.get() - 1);
        evict.notify_all();
        true
    }

    fn freed(&self) -> Rc<Notify> {
        self.freed.borrow().clone()
    }
}

/// Whether a whole request head (up to its empty line) waits unread in the socket `fd`: a
/// peek of up to [`MAX_HEAD`] bytes, without taking them.
fn head_waits(fd: RawFd) -> bool {
    let mut buf = [MaybeUninit::<u8>::uninit(); MAX_HEAD];
    let Ok(n) = crate::transport::recv_now(fd, &mut buf, libc::MSG_PEEK) else {
        return false;
    };
    // SAFETY: `recv_now` wrote the first `n` bytes of `buf` (bytes the kernel received), so
    // they are initialised; `n <= buf.len()`. Exercised by
    // tests/observability/admin_limits.rs (a probe queued behind a connect flood).
    let peeked = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), n) };
    peeked.windows(2).any(|w| w == b"\n\n") || peeked.windows(4).any(|w| w == b"\r\n\r\n")
}

impl Slot {
    /// The head is in: from now on the connection is answered, not evicted.
    fn head_done(&self) {
        self.conns.heads.borrow_mut().remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // An evicted connection's place was given back when it was evicted.
        if !self.evict.is_fired() {
            self.conns.heads.borrow_mut().remove(&self.id);
            self.conns.active.set(self.conns.active.get() - 1);
        }
        let fired = std::mem::take(&mut *self.conns.freed.borrow_mut());
        fired.notify_all();
    }
}

pub(super) async fn serve(
    listener: std::net::TcpListener,
    state: Rc<AdminState>,
    mut stop: oneshot::Receiver<()>,
) {
    // monoio's drivers need a non-blocking socket (std binds it blocking).
    let listener = match listener
        .set_nonblocking(true)
        .and_then(|()| TcpListener::from_std(listener))
    {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "admin: cannot register its listener");
            return;
        }
    };
    let counters = Rc::new(Counters::new(state.snapshot.load().config.log.error_rate));
    let conns = Rc::new(Conns::default());
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = &mut stop => return,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                counters.accept_failed(&e);
                monoio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        counters.accepted();
        let limits = Limits::now(&state);
        // At the bound, make room by closing the oldest connection still sending its head
        // (slow or silent clients), so a probe always gets in. When every connection has
        // sent its head (they are being answered, within bounds), this one waits for a
        // place and later ones wait in the listen backlog.
        while conns.active.get() >= limits.max_connections {
            if conns.evict_oldest() {
                counters.evicted.set(counters.evicted.get() + 1);
                continue;
            }
            let freed = conns.freed();
            monoio::select! {
                _ = freed.notified() => {}
                _ = &mut stop => return,
            }
        }
        let slot = conns.admit(stream.as_raw_fd());
        let state = state.clone();
        let counters = counters.clone();
        monoio::spawn(async move {
            handle(stream, slot, &state, &counters, limits).await;
        });
    }
}

/// What a complete head asks for: method, target, `Authorization`; or the status that
/// refuses it.
type Head = Result<(String, String, Option<Vec<u8>>), &'static str>;

async fn handle(
    mut stream: TcpStream,
    slot: Slot,
    state: &AdminState,
    counters: &Counters,
    limits: Limits,
) {
    // A local, dropped before `stream`: the socket is open while `Conns` may peek at it.
    let slot = slot;
    // The whole head within `header_timeout` of the accept, not each read: a client sending
    // a byte at a time cannot hold its place for longer.
    let read = monoio::time::timeout(limits.header_timeout, read_head(&mut stream, state));
    let parsed = monoio::select! {
        r = read => match r {
            Ok(Some(parsed)) => parsed,
            // Closed, or a read error.
            Ok(None) => return,
            Err(_) => {
                counters.header_timeouts.set(counters.header_timeouts.get() + 1);
                return;
            }
        },
        // Counted when evicted.
        _ = slot.evict.notified() => return,
    };
    slot.head_done();
    let (r, head_only) = match parsed {
        Err(status @ "403 Forbidden") => (reply(status, "not for browsers\n"), false),
        Err(status) => (reply(status, "bad request\n"), false),
        Ok((method, path, auth)) => (
            route(state, counters, &method, &path, auth.as_deref()).await,
            method == "HEAD",
        ),
    };
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        r.status,
        r.content_type,
        r.body.len(),
        r.extra
    );
    // A large body (a big configuration's /metrics is megabytes) goes as it was rendered,
    // after the head, not copied behind it: each scrape in flight would hold it twice. A
    // small one goes with the head, in one write (two small writes would meet Nagle).
    let mut bytes = head.into_bytes();
    let body = match head_only {
        true => None,
        false if r.body.len() < 64 * 1024 => {
            bytes.extend_from_slice(r.body.as_bytes());
            None
        }
        false => Some(r.body.into_bytes()),
    };
    let send = async {
        let (sent, _) = stream.write_all(bytes).await;
        if let (Ok(_), Some(body)) = (sent, body) {
            let _ = stream.write_all(body).await;
        }
    };
    let _ = monoio::time::timeout(limits.send_timeout, send).await;
}

/// Reads the head (bounded); a body, if any, is ignored: the connection closes after the
/// answer. `None`: the client closed (or the read failed) first.
async fn read_head(stream: &mut TcpStream, state: &AdminState) -> Option<Head> {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_HEAD {
            return Some(Err("431 Request Header Fields Too Large"));
        }
        let spare = Vec::with_capacity(MAX_HEAD - buf.len());
        let (res, chunk) = stream.read(spare).await;
        match res {
            Ok(0) | Err(_) => return None,
            Ok(_) => buf.extend_from_slice(&chunk),
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let method = req.method.unwrap_or("").to_string();
                let path = req.path.unwrap_or("").to_string();
                let mut auths = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("authorization"));
                let auth = auths.next().map(|h| h.value.to_vec());
                // Two credentials: which one counts is a guess; none is served.
                if auths.next().is_some() {
                    return Some(Err("400 Bad Request"));
                }
                if from_a_web_page(req.headers, &path, state.token.is_none()) {
                    return Some(Err("403 Forbidden"));
                }
                return Some(Ok((method, path, auth)));
            }
            Ok(httparse::Status::Partial) => continue,
            Err(httparse::Error::TooManyHeaders) => {
                return Some(Err("431 Request Header Fields Too Large"))
            }
            Err(_) => return Some(Err("400 Bad Request")),
        }
    }
}

/// A request a web page made the operator's browser send: cross-site request forgery (it
/// carries an `Origin`, or a `Sec-Fetch-Site` other than `none`, what a typed URL gets), or,
/// to an admin without a token, a name of the page's own rebound to this address (a `Host`
/// other than `localhost` or an address: browsers send no `Origin` and, to a plain-http
/// site, no `Sec-Fetch-Site` on such a page's GETs, which would read `/status`). Curl,
/// Prometheus and `edgeshard reload` send none of these; a page needs no answer to make a
/// `POST /cache/purge?all` or `/reload` (a "simple" request). The liveness and readiness
/// probes answer whatever the `Host` (services probe them by name; their answer tells nothing).
fn from_a_web_page(headers: &[httparse::Header<'_>], path: &str, tokenless: bool) -> bool {
    let probe = matches!(path.split('?').next(), Some("/healthz" | "/ready"));
    headers.iter().any(|h| {
        let name = h.name.as_bytes();
        name.eq_ignore_ascii_case(b"origin")
            || (name.eq_ignore_ascii_case(b"sec-fetch-site") && h.value.trim_ascii() != b"none")
            || (tokenless && !probe && name.eq_ignore_ascii_case(b"host") && !local_host(h.value))
    })
}

/// `localhost` (or `localhost.`) or an IP address, with or without a port: what a tool given
/// the address sends as `Host`.
fn local_host(v: &[u8]) -> bool {
    let Ok(v) = std::str::from_utf8(v.trim_ascii()) else {
        return false;
    };
    if v.parse::<std::net::SocketAddr>().is_ok() {
        return true;
    }
    let host = match v.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    };
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    matches!(
        host.to_ascii_lowercase().as_str(),
        "localhost" | "localhost."
    ) || host.parse::<std::net::Ipv4Addr>().is_ok()
        || bare.is_some_and(|h| h.parse::<std::net::Ipv6Addr>().is_ok())
        || v.parse::<std::net::Ipv6Addr>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_are_logged_within_the_error_rate_and_counted() {
        let c = Counters::new(10);
        let e = std::io::Error::from_raw_os_error(24); // EMFILE
        for _ in 0..100 {
            c.accept_failed(&e);
        }
        // 10 lines written, 90 held back: counted with the shards' suppressed lines.
        assert_eq!(c.log_suppressed(), 90);
        assert_eq!(c.held.get(), 90);
        c.accepted();
        assert_eq!(c.held.get(), 0);
        let mut o = String::new();
        c.render(&mut o);
        assert!(
            o.contains("edgeshard_admin_accept_errors_total 100\n"),
            "{o}"
        );
    }

    #[test]
    fn at_the_bound_the_oldest_unfinished_head_goes_first() {
        let conns = Rc::new(Conns::default());
        // A socket with nothing to peek at (a listener): no head waits in it.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let slots: Vec<Slot> = (0..3).map(|_| conns.admit(l.as_raw_fd())).collect();
        slots[0].head_done();
        assert_eq!(conns.active.get(), 3);
        // Slot 0 is answering: slot 1 is the oldest still reading its head.
        assert!(conns.evict_oldest());
        assert!(slots[1].evict.is_fired() && !slots[0].evict.is_fired());
        assert_eq!(conns.active.get(), 2);
        assert!(conns.evict_oldest());
        assert!(!conns.evict_oldest(), "only answering connections are left");
        drop(slots);
        assert_eq!(conns.active.get(), 0);
    }
}
