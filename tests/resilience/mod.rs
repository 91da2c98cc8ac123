//! Resilience through the proxy (issue 6): see docs/HEALTH.md. Active health checks (one
//! prober per process), passive outlier detection, circuit breaking and retries, with real
//! backends the tests control: `Origin`s whose answers follow shared switches, `LockStep`,
//! `Misbehave`, and `Killable`, a backend that can die (listener and connections) and come
//! back on the same port.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod active;
mod breaker;
mod config_errors;
mod outlier;
mod retry;

// ---- config --------------------------------------------------------------------------------

/// A whole config: one listener, `[admin]` if asked, a catch-all route to upstream "app"
/// whose body (after `name`) is `upstream`; sub-tables such as `[upstream.retry]` go at its
/// end.
fn config(admin: bool, upstream: &str) -> String {
    let admin = if admin {
        "[admin]\naddress = \"127.0.0.1:0\"\n\n"
    } else {
        ""
    };
    format!(
        "[server]\nshutdown_timeout = \"10s\"\n\n[timeouts]\nupstream_connect = \"2s\"\n\n\
         {admin}[[listener]]\naddress = \"127.0.0.1:0\"\n\n[[route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\n{upstream}\n"
    )
}

/// `backends = [...]`, equal weights, in this order.
fn backends(addrs: &[SocketAddr]) -> String {
    let items: Vec<String> = addrs
        .iter()
        .map(|a| format!("{{ address = \"{a}\" }}"))
        .collect();
    format!("backends = [{}]", items.join(", "))
}

// ---- clients -------------------------------------------------------------------------------

fn get_req(target: &str) -> Vec<u8> {
    request("GET", target, &[("Host", "t")], b"")
}

fn ask(c: &mut Client, target: &str) -> Response {
    c.send(&get_req(target));
    c.read_response()
}

fn ask_new(addr: SocketAddr, target: &str) -> Response {
    let mut c = Client::connect(addr);
    ask(&mut c, target)
}

/// The backend that answered (`X-Backend`), or None for the proxy's own responses.
fn backend_of(r: &Response) -> Option<String> {
    r.header("x-backend").map(str::to_string)
}

/// The backend that served `r`; panics unless it is a 200 from a backend.
fn served_by(r: &Response) -> String {
    assert_eq!(
        r.status(),
        200,
        "expected a 200 from a backend; got:\n{}",
        r.head.raw
    );
    backend_of(r).unwrap_or_else(|| panic!("a 200 without X-Backend:\n{}", r.head.raw))
}

/// Asserts that `r` is the proxy's own 503 (no backend answered it).
fn assert_own_503(r: &Response, why: &str) {
    assert_eq!(r.status(), 503, "{why}; got:\n{}", r.head.raw);
    assert_eq!(
        backend_of(r),
        None,
        "{why}: the 503 must be the proxy's own; got:\n{}",
        r.head.raw
    );
}

// ---- switchable origins --------------------------------------------------------------------

/// What a switchable origin answers: `/health` with `health`, everything else with
/// `status` (200 = the default reply). `hold_health` makes health checks wait (at most
/// 10 s) until it is cleared.
struct Switch {
    health: AtomicU16,
    status: AtomicU16,
    hold_health: Mutex<bool>,
    released: Condvar,
}

impl Switch {
    fn set_health(&self, s: u16) {
        self.health.store(s, Ordering::SeqCst);
    }
    fn set_status(&self, s: u16) {
        self.status.store(s, Ordering::SeqCst);
    }
    fn release_health(&self) {
        *self.hold_health.lock().unwrap() = false;
        self.released.notify_all();
    }
}

fn switchable(name: &str) -> (Origin, Arc<Switch>) {
    let sw = Arc::new(Switch {
        health: AtomicU16::new(200),
        status: AtomicU16::new(200),
        hold_health: Mutex::new(false),
        released: Condvar::new(),
    });
    let s = sw.clone();
    let n = name.to_string();
    let origin = Origin::with_handler(name, move |rec| {
        if rec.path() == "/health" {
            let held = s.hold_health.lock().unwrap();
            let _ = s
                .released
                .wait_timeout_while(held, Duration::from_secs(10), |h| *h);
            return Reply::status(s.health.load(Ordering::SeqCst), "ok");
        }
        match s.status.load(Ordering::SeqCst) {
            200 => Reply::Default,
            st => Reply::Response {
                status: st,
                headers: vec![("X-Backend".into(), n.clone())],
                body: format!("{n} says {st}\n").into_bytes(),
                mode: BodyMode::Length,
                close_after: false,
            },
        }
    });
    (origin, sw)
}

/// An origin that always answers `status` (with `X-Backend`).
fn answering(name: &str, status: u16) -> Origin {
    let (o, sw) = switchable(name);
    sw.set_status(status);
    o
}

/// Requests an origin received, health checks left out.
fn traffic(o: &Origin) -> usize {
    o.requests()
        .iter()
        .filter(|r| r.path() != "/health")
        .count()
}

fn probes(o: &Origin) -> usize {
    o.requests()
        .iter()
        .filter(|r| r.path() == "/health")
        .count()
}

// ---- a backend that dies and comes back ----------------------------------------------------

/// A minimal keep-alive HTTP backend (GET without body) that answers 200 with its name, and
/// that `kill` takes down completely: listener closed, open connections shut down, as when
/// a backend process dies. `restart` listens again on the same port.
struct Killable {
    name: String,
    addr: SocketAddr,
    served: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Killable {
    fn start(name: &str) -> Killable {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut k = Killable {
            name: name.to_string(),
            addr: listener.local_addr().unwrap(),
            served: Arc::new(AtomicUsize::new(0)),
            conns: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            acceptor: None,
        };
        k.serve(listener);
        k
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn served(&self) -> usize {
        self.served.load(Ordering::SeqCst)
    }

    fn serve(&mut self, listener: TcpListener) {
        self.stop.store(false, Ordering::SeqCst);
        let (name, served, conns, stop) = (
            self.name.clone(),
            self.served.clone(),
            self.conns.clone(),
            self.stop.clone(),
        );
        self.acceptor = Some(thread::spawn(move || {
            for s in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(s) = s else { continue };
                if let Ok(c) = s.try_clone() {
                    conns.lock().unwrap().push(c);
                }
                let (name, served) = (name.clone(), served.clone());
                thread::spawn(move || killable_conn(s, &name, &served));
            }
        }));
    }

    fn kill(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(500));
        if let Some(t) = self.acceptor.take() {
            t.join().unwrap();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Listens again on the same port. `kill` has joined the accept thread, so the old
    /// listening socket is closed; what is left on the port (accepted connections being shut,
    /// TIME_WAIT) shares it: std sets SO_REUSEADDR, and Linux refuses a bind only next to a
    /// socket that still listens.
    fn restart(&mut self) {
        let listener = TcpListener::bind(self.addr)
            .unwrap_or_else(|e| panic!("cannot listen on {} again: {e}", self.addr));
        self.serve(listener);
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.kill();
        }
    }
}

fn killable_conn(mut s: TcpStream, name: &str, served: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = Vec::new();
    let mut b = [0u8; 4096];
    loop {
        while let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.drain(..i + 4);
            served.fetch_add(1, Ordering::SeqCst);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nX-Backend: {name}\r\nContent-Length: {}\r\n\r\n{name}",
                name.len()
            );
            if s.write_all(resp.as_bytes()).is_err() {
                return;
            }
        }
        match s.read(&mut b) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&b[..n]),
        }
    }
}

// ---- the health log ------------------------------------------------------------------------

/// `raw` without ANSI colour sequences.
fn strip_ansi(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The health transitions of `backend` to `to` ("healthy", "unhealthy") logged in `output`.
fn transitions_in(output: &str, backend: SocketAddr, to: &str) -> Vec<String> {
    let b = format!("backend={backend} ");
    let t = format!(" to={to} ");
    strip_ansi(output)
        .lines()
        .filter(|l| l.contains("backend health changed") && l.contains(&b) && l.contains(&t))
        .map(str::to_string)
        .collect()
}

/// The logged health transitions of `backend` to `to`.
fn transitions(proxy: &Proxy, backend: SocketAddr, to: &str) -> Vec<String> {
    transitions_in(&proxy.output(), backend, to)
}

/// Waits until the log holds `n` transitions of `backend` to `to` (re-checked on every new
/// line of output); returns the `n`th. Panics with the output after `within`.
fn wait_transition(
    proxy: &Proxy,
    backend: SocketAddr,
    to: &str,
    n: usize,
    within: Duration,
) -> String {
    proxy.wait_for_output_where(
        &format!("{n} transition(s) of {backend} to {to}"),
        within,
        |out| transitions_in(out, backend, to).len() >= n,
    );
    transitions(proxy, backend, to)[n - 1].clone()
}

/// The one sample `name` with exactly `labels` on the admin listener's `/metrics` (panics
/// if there is none).
fn metric(proxy: &Proxy, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = admin_get(proxy.admin_addr(), "/metrics", None);
    assert_eq!(r.status, 200, "GET /metrics:\n{}", r.body);
    parse_quick(&r.body).value(name, labels)
}
