//! Tests of the health prober (feeding stage 4, *balance*) against real sockets on
//! 127.0.0.1: tiny TCP and HTTP backends on std threads, killed and restarted on the same
//! port. Tests synchronise on the prober's events channel with deadlines (`recv_timeout`),
//! never on fixed sleeps; intervals are 50 ms so that each test takes well under a second
//! when the machine is idle.
//!
//! What the tests assert is counted, not timed: a transition's cause says how many probes
//! in a row made it (`Cause::Fall { failures }`, `Cause::Rise { successes }`). The only
//! bounds are deadlines far from what they guard: [`WAIT`] for an event, [`STOP`] for a
//! stop (against a 30 s interval it must not wait out).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::check::{CheckKind, CheckSpec, HttpCheck};
use super::prober::{self, HealthEvent, ProbeTarget, ProberHandle};
use super::state::{Cause, Health, InitialState};
use super::HealthBoard;

const INTERVAL: Duration = Duration::from_millis(50);
const JITTER: f64 = 0.1;
/// How long a test waits for an event before failing.
const WAIT: Duration = Duration::from_secs(5);
/// How long a stop (or a retarget to nothing) may take: milliseconds when prompt, the
/// interval (30 s in `stop_is_prompt_with_a_long_interval`) when not.
const STOP: Duration = Duration::from_secs(5);

fn spec(kind: CheckKind, timeout_ms: u64, rise: u32, fall: u32) -> Arc<CheckSpec> {
    Arc::new(CheckSpec {
        kind,
        interval: INTERVAL,
        timeout: Duration::from_millis(timeout_ms),
        rise,
        fall,
        jitter: JITTER,
        initial: InitialState::Unknown,
    })
}

fn http(expect: &str, body: Option<&str>) -> CheckKind {
    CheckKind::Http(HttpCheck {
        path: "/healthz".to_owned(),
        expect: expect.parse().unwrap(),
        body_contains: body.map(|b| b.as_bytes().to_vec()),
        ..HttpCheck::default()
    })
}

fn target(backend: usize, address: SocketAddr, spec: &Arc<CheckSpec>) -> ProbeTarget {
    ProbeTarget {
        backend,
        upstream: "app".to_owned(),
        address,
        spec: spec.clone(),
        tls: None,
        proxy_protocol: None,
        resume: None,
    }
}

fn start(
    n: usize,
    targets: Vec<ProbeTarget>,
) -> (Arc<HealthBoard>, Receiver<HealthEvent>, ProberHandle) {
    let board = Arc::new(HealthBoard::all_unknown(n));
    let (tx, rx) = mpsc::channel();
    let handle = prober::spawn(board.clone(), targets, Some(tx)).unwrap();
    (board, rx, handle)
}

/// Waits for backend `backend` to be published as `to`; returns the event.
fn wait_for(rx: &Receiver<HealthEvent>, backend: usize, to: Health) -> HealthEvent {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(ev) if ev.backend == backend && ev.transition.to == to => {
                return ev;
            }
            Ok(_) => {}
            Err(e) => panic!("backend {backend} did not become {to} within {WAIT:?}: {e}"),
        }
    }
}

fn listen() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").unwrap()
}

/// Binds `addr` again after its listener was dropped (retrying briefly in case a client
/// socket of another test holds the port for a moment).
fn rebind(addr: SocketAddr) -> TcpListener {
    let deadline = Instant::now() + WAIT;
    loop {
        match TcpListener::bind(addr) {
            Ok(l) => return l,
            Err(_) if Instant::now() < deadline => {
                std::thread::park_timeout(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Read the request head, answer these bytes, close.
    Respond(&'static [u8]),
    /// Accept and never answer.
    Hang,
}

/// A one-thread backend serving connections one at a time.
struct TestBackend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TestBackend {
    fn start(behaviour: Behaviour) -> TestBackend {
        let listener = listen();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                match behaviour {
                    Behaviour::Hang => held.push(conn),
                    Behaviour::Respond(bytes) => {
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        assert!(head.starts_with(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:"));
                        let _ = conn.write_all(bytes);
                    }
                }
            }
        });
        TestBackend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TestBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn tcp_backend_killed_and_restarted_on_the_same_port() {
    let listener = listen();
    let addr = listener.local_addr().unwrap();
    let s = spec(CheckKind::Tcp, 200, 2, 2);
    let (board, rx, handle) = start(1, vec![target(0, addr, &s)]);

    // The kernel completes the handshake on a listening socket: no accept needed.
    let ev = wait_for(&rx, 0, Health::Healthy);
    assert_eq!(ev.transition.from, Health::Unknown);
    assert_eq!(ev.transition.cause, Cause::Rise { successes: 1 });
    assert_eq!(board.state(0), Health::Healthy);
    assert_eq!(ev.generation, board.generation());

    drop(listener);
    let ev = wait_for(&rx, 0, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Fall { failures: 2 });
    assert!(ev.reason.contains("connect failed"), "{}", ev.reason);
    assert!(!board.is_usable(0));

    let listener = rebind(addr);
    let ev = wait_for(&rx, 0, Health::Healthy);
    assert_eq!(ev.transition.from, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Rise { successes: 2 });
    assert_eq!(ev.reason, "check passed");
    // Recovered: slow start has an origin.
    assert!(board.ramp_from(0).is_some());
    let view = board.slot(0).unwrap();
    assert_eq!(view.transitions, 3);
    assert!(view.checks_ok >= 3 && view.checks_failed >= 2);
    stop_promptly(handle);
    drop(listener);
}

#[test]
fn http_status_outside_the_range_is_unhealthy() {
    let ok = TestBackend::start(Behaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let down = TestBackend::start(Behaviour::Respond(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    ));
    let s = spec(http("200-399", None), 500, 2, 2);
    // Both backends are probed concurrently by the same prober.
    let (board, rx, handle) = start(2, vec![target(0, ok.addr, &s), target(1, down.addr, &s)]);
    let ev = wait_for(&rx, 1, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Fall { failures: 2 });
    assert!(ev.reason.contains("unexpected status 503"), "{}", ev.reason);
    assert_eq!(ev.upstream, "app");
    assert_eq!(ev.address, down.addr);
    wait_for_state(&board, 0, Health::Healthy, &rx);
    assert_eq!(board.state(1), Health::Unhealthy);
    stop_promptly(handle);
}

#[test]
fn http_backend_that_never_answers_times_out() {
    let hang = TestBackend::start(Behaviour::Hang);
    let s = spec(http("200-399", None), 100, 1, 2);
    let (board, rx, handle) = start(1, vec![target(0, hang.addr, &s)]);
    let ev = wait_for(&rx, 0, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Fall { failures: 2 });
    assert!(ev.reason.contains("no answer within"), "{}", ev.reason);
    assert_eq!(board.state(0), Health::Unhealthy);
    // Stopping cancels a probe that is waiting on the hanging backend.
    stop_promptly(handle);
}

/// A reload's retarget keeps the task of a backend probed as before: its probe in flight
/// ends and counts, on the slot the backend has by then, however often the targets change
/// (here every 20 ms, against a 300 ms timeout; a restarted prober never finished a probe).
#[test]
fn retargets_faster_than_the_timeout_still_take_a_hung_backend_out() {
    let hang = TestBackend::start(Behaviour::Hang);
    let up = listen();
    let up_addr = up.local_addr().unwrap();
    let s = spec(http("200-399", None), 300, 1, 2);
    let tcp = spec(CheckKind::Tcp, 300, 1, 2);
    let (mut board, rx, mut handle) = start(1, vec![target(0, hang.addr, &s)]);
    let deadline = Instant::now() + WAIT;
    let mut slot = 0;
    let mut changes = 0;
    let ev = loop {
        // The next snapshot's board: the hung backend moves to the other slot, the other
        // backend (added by the first change) takes its place.
        handle.hold();
        let next = Arc::new(HealthBoard::all_unknown(2));
        let moved = 1 - slot;
        next.adopt(moved, &board, slot, true);
        next.adopt(slot, &board, moved, true);
        let targets = vec![target(moved, hang.addr, &s), target(slot, up_addr, &tcp)];
        handle.retarget(next.clone(), targets).unwrap();
        (board, slot) = (next, moved);
        changes += 1;
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(ev) if ev.address == hang.addr && ev.transition.to == Health::Unhealthy => break ev,
            _ => assert!(
                Instant::now() < deadline,
                "still not unhealthy after {changes} retargets"
            ),
        }
    };
    // The event names the slot in force when it was published, which may be the one before
    // the last retarget (it waited in the channel meanwhile): the board in force is what
    // must show it.
    assert!(ev.backend < 2);
    assert_eq!(ev.transition.cause, Cause::Fall { failures: 2 });
    assert!(ev.reason.contains("no answer within"), "{}", ev.reason);
    assert_eq!(board.state(slot), Health::Unhealthy);
    assert!(board.slot(slot).unwrap().checks_failed >= 2);
    // The other backend was probed all along, on its own moving slot.
    wait_for_state(&board, 1 - slot, Health::Healthy, &rx);
    stop_promptly(handle);
    drop(up);
}

#[test]
fn retarget_starts_and_stops_the_thread() {
    let listener = listen();
    let s = spec(CheckKind::Tcp, 200, 1, 1);
    let board = Arc::new(HealthBoard::all_unknown(1));
    let (tx, rx) = mpsc::channel();
    let mut handle = prober::spawn(board.clone(), Vec::new(), Some(tx)).unwrap();
    // A check added by a reload: a thread starts, with the events channel kept.
    let targets = vec![target(0, listener.local_addr().unwrap(), &s)];
    handle.retarget(board.clone(), targets).unwrap();
    wait_for(&rx, 0, Health::Healthy);
    // Every check removed: the thread ends (promptly, as a stop does).
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        handle.retarget(board, Vec::new()).unwrap();
        let _ = done_tx.send(handle);
    });
    let handle = done_rx
        .recv_timeout(STOP)
        .expect("retarget to nothing took too long");
    stop_promptly(handle);
}

#[test]
fn http_body_substring_mismatch_is_unhealthy() {
    let good = TestBackend::start(Behaviour::Respond(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"ok\r\n7\r\n\":true}\r\n0\r\n\r\n",
    ));
    let bad = TestBackend::start(Behaviour::Respond(
        b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n{\"ok\":false}",
    ));
    let s = spec(http("200", Some("\"ok\":true")), 500, 1, 1);
    let (board, rx, handle) = start(2, vec![target(0, good.addr, &s), target(1, bad.addr, &s)]);
    let ev = wait_for(&rx, 1, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Fall { failures: 1 });
    assert!(ev.reason.contains("body does not contain"), "{}", ev.reason);
    wait_for_state(&board, 0, Health::Healthy, &rx);
    stop_promptly(handle);
}

#[test]
fn mandatory_initial_state_waits_for_rise() {
    let listener = listen();
    let addr = listener.local_addr().unwrap();
    let s = Arc::new(CheckSpec {
        initial: InitialState::Unhealthy,
        ..(*spec(CheckKind::Tcp, 200, 3, 1)).clone()
    });
    let (board, rx, handle) = start(1, vec![target(0, addr, &s)]);
    let ev = wait_for(&rx, 0, Health::Healthy);
    assert_eq!(ev.transition.from, Health::Unhealthy);
    assert_eq!(ev.transition.cause, Cause::Rise { successes: 3 });
    assert!(board.slot(0).unwrap().checks_ok >= 3);
    assert!(board.ramp_from(0).is_some());
    stop_promptly(handle);
}

#[test]
fn stop_is_prompt_with_a_long_interval() {
    let listener = listen();
    let s = Arc::new(CheckSpec {
        interval: Duration::from_secs(30),
        jitter: 0.0,
        ..CheckSpec::default()
    });
    let (_board, rx, handle) = start(1, vec![target(0, listener.local_addr().unwrap(), &s)]);
    // jitter 0: the first probe runs at once.
    wait_for(&rx, 0, Health::Healthy);
    stop_promptly(handle);
}

#[test]
fn spawn_refuses_bad_targets() {
    let board = Arc::new(HealthBoard::all_unknown(1));
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let good = spec(CheckKind::Tcp, 100, 1, 1);
    let bad = Arc::new(CheckSpec {
        rise: 0,
        ..CheckSpec::default()
    });
    let err = |targets| {
        prober::spawn(board.clone(), targets, None)
            .unwrap_err()
            .to_string()
    };
    assert!(err(vec![target(0, addr, &bad)]).contains("rise"));
    assert!(err(vec![target(1, addr, &good)]).contains("outside"));
    assert!(err(vec![target(0, addr, &good), target(0, addr, &good)]).contains("twice"));
    // No targets: nothing to run, and stopping is a no-op.
    prober::spawn(board, Vec::new(), None).unwrap().stop();
}

/// Waits until the board shows `to` for `backend`, consuming events meanwhile.
fn wait_for_state(board: &HealthBoard, backend: usize, to: Health, rx: &Receiver<HealthEvent>) {
    if board.state(backend) != to {
        wait_for(rx, backend, to);
    }
    assert_eq!(board.state(backend), to);
}

/// Stops the prober on a helper thread and fails (instead of hanging) if that takes longer
/// than [`STOP`].
fn stop_promptly(handle: ProberHandle) {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        handle.stop();
        let _ = tx.send(());
    });
    assert!(
        rx.recv_timeout(STOP).is_ok(),
        "stop took longer than {STOP:?}"
    );
}
