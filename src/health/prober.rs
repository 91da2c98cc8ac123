//! Feeds stage 4, *balance*: the active health prober. **One thread per process** (not one
//! prober per shard per backend) runs a small monoio runtime (epoll driver: a few sockets per
//! interval do not need io_uring) with one task per checked backend, all probing
//! concurrently. Each task feeds its [`HealthState`] and, on a transition, publishes the new
//! state on the [`HealthBoard`] that every shard reads, logs one line (upstream, backend,
//! old → new state, cause, last probe result) and reports a [`HealthEvent`] to an optional
//! channel (tests, later the admin API).
//!
//! A probe is bounded as a whole by the check's `timeout` (connect, send, response); the
//! next one starts `interval × (1 ± jitter)` after it ended. The first probe of a backend in
//! use starts anywhere in its task's first interval, so the probes of many backends are spread
//! from the first round on; one out of use is probed within `jitter × interval` ([`first_delay`]).
//!
//! Configuration changes (a reload, a DNS answer change, an admin weight change) keep the
//! thread: [`ProberHandle::hold`] makes every task keep its next result to itself while the
//! reloader copies the board into the next snapshot's, then [`ProberHandle::retarget`] hands
//! over the new board and targets. A backend whose identity (upstream name and address) and
//! check (spec, `proxy_protocol`, upstream TLS settings) are unchanged keeps its task, re-pointed
//! at its new slot: its probe in flight, its count towards `rise`/`fall` and its schedule go
//! on, so changes however frequent cannot keep a slow failure from being counted. Tasks start
//! only for new or changed backends (resuming from the carried state) and stop only for
//! removed or changed ones.
//!
//! Stopping: [`ProberHandle::stop`] (or dropping the handle) closes the command channel that
//! the runtime awaits; every task races its sleep and its probe against its stop
//! notification, so the thread ends at once, never after a whole interval, and the handle
//! joins it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_channel::mpsc::{UnboundedReceiver, UnboundedSender};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::notify::Notify;
use crate::sample::Rng;
use crate::transport::Transport;

use super::board::HealthBoard;
use super::check::{CheckKind, CheckSpec, HttpCheck, ProbeFailure};
use super::matcher::{ResponseMatcher, Verdict};
use super::state::{Health, HealthState, Transition};

/// One backend to probe.
#[derive(Clone, Debug)]
pub struct ProbeTarget {
    /// The backend's slot on the board (its index in the flat backend list).
    pub backend: usize,
    /// The upstream's name, for log lines (with `address`, the backend's identity).
    pub upstream: String,
    pub address: SocketAddr,
    /// The upstream's check (shared by its backends).
    pub spec: Arc<CheckSpec>,
    /// The upstream's TLS, when it has `tls`: probes go over TLS like requests.
    pub tls: Option<Arc<crate::tls::upstream::UpstreamTlsClient>>,
    /// The upstream's `proxy_protocol`: probes start with the proxy's own header (v1
    /// `UNKNOWN`, v2 `LOCAL`), as a backend expecting one requires.
    pub proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// After a reload, the state and the run of probe results
    /// ([`super::board::SlotView::streak`]) the board carried over for this backend: a task
    /// started for it resumes from them (`None`: from the check's initial state, published at
    /// once). A kept task ignores it: its own count is the board's.
    pub resume: Option<(Health, i64)>,
}

impl ProbeTarget {
    /// Whether a task probing `self` may go on probing `next`: the same backend (upstream
    /// name and address) checked the same way.
    fn probes_like(&self, next: &ProbeTarget) -> bool {
        let same_tls = match (&self.tls, &next.tls) {
            (None, None) => true,
            (Some(a), Some(b)) => a.settings() == b.settings(),
            _ => false,
        };
        self.upstream == next.upstream
            && self.address == next.address
            && *self.spec == *next.spec
            && self.proxy_protocol == next.proxy_protocol
            && same_tls
    }
}

/// A published transition, as reported on the events channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthEvent {
    pub backend: usize,
    pub upstream: String,
    pub address: SocketAddr,
    pub transition: Transition,
    /// The last probe's result: "check passed" or why it failed.
    pub reason: String,
    /// The board's generation after publishing.
    pub generation: u64,
}

/// What the handle asks of the prober's runtime; each is answered on `done` once done.
enum Command {
    /// Keep probe results from the board until the next `Retarget`.
    Hold { done: mpsc::Sender<()> },
    /// Probe `targets`, publishing on `board`, then publish again.
    Retarget {
        board: Arc<HealthBoard>,
        targets: Vec<ProbeTarget>,
        done: mpsc::Sender<()>,
    },
}

/// Owns the prober thread; stopping or dropping it ends the thread promptly.
#[derive(Debug)]
pub struct ProberHandle {
    commands: Option<UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
    /// The events channel, for a thread started again by [`ProberHandle::retarget`].
    events: Option<mpsc::Sender<HealthEvent>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Hold { .. } => f.write_str("Hold"),
            Command::Retarget { targets, .. } => write!(f, "Retarget({} targets)", targets.len()),
        }
    }
}

impl ProberHandle {
    /// Stops the prober and waits for its thread (promptly: in-flight probes are cancelled).
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Makes every task keep its probe results from the board until the next
    /// [`ProberHandle::retarget`], and returns once none can write to it any more: the board
    /// can then be copied into the next snapshot's without losing a transition. Probes go on
    /// meanwhile. No-op without a thread.
    pub fn hold(&self) {
        let (done, answered) = mpsc::channel();
        if let Some(tx) = &self.commands {
            if tx.unbounded_send(Command::Hold { done }).is_ok() {
                let _ = answered.recv();
            }
        }
    }

    /// Probes `targets` from now on, publishing on `board` (see the module header for what
    /// is kept), and lifts a [`ProberHandle::hold`]. Starts the thread if there was none;
    /// with no targets, stops it. Fails as [`spawn`] does; the prober is stopped then.
    pub fn retarget(
        &mut self,
        board: Arc<HealthBoard>,
        targets: Vec<ProbeTarget>,
    ) -> std::io::Result<()> {
        if let Err(e) = validate(&board, &targets) {
            self.shutdown();
            return Err(e);
        }
        if targets.is_empty() {
            self.shutdown();
            return Ok(());
        }
        if let Some(tx) = &self.commands {
            let (done, answered) = mpsc::channel();
            let cmd = Command::Retarget {
                board: board.clone(),
                targets: targets.clone(),
                done,
            };
            if tx.unbounded_send(cmd).is_ok() && answered.recv().is_ok() {
                return Ok(());
            }
        }
        // No thread, or it ended (a panic, logged when joined): a fresh one.
        self.shutdown();
        *self = spawn(board, targets, self.events.take())?;
        Ok(())
    }

    fn shutdown(&mut self) {
        // The runtime stops once the channel is closed.
        self.commands = None;
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("health prober thread panicked");
            }
        }
    }
}

impl Drop for ProberHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Refuses an invalid spec, a slot outside the board or one probed twice (one writer per
/// slot, see [`HealthBoard`]).
fn validate(board: &HealthBoard, targets: &[ProbeTarget]) -> std::io::Result<()> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let mut seen = vec![false; board.len()];
    for t in targets {
        if seen.get(t.backend).copied().unwrap_or(false) {
            return Err(invalid(format!(
                "upstream {}: backend slot {} is probed twice",
                t.upstream, t.backend
            )));
        }
        if let Some(s) = seen.get_mut(t.backend) {
            *s = true;
        }
        t.spec
            .validate()
            .map_err(|e| invalid(format!("upstream {}: {e}", t.upstream)))?;
        if t.backend >= board.len() {
            return Err(invalid(format!(
                "upstream {}: backend slot {} is outside the health board ({} slots)",
                t.upstream,
                t.backend,
                board.len()
            )));
        }
    }
    Ok(())
}

/// Starts the prober thread for `targets`, publishing on `board` (and on `events` if given).
/// Fails if a spec is invalid, a target's slot is outside the board or appears twice (one
/// writer per slot, see [`HealthBoard`]), or the thread or its
/// runtime cannot be created. With no targets, no thread is started.
pub fn spawn(
    board: Arc<HealthBoard>,
    targets: Vec<ProbeTarget>,
    events: Option<mpsc::Sender<HealthEvent>>,
) -> std::io::Result<ProberHandle> {
    validate(&board, &targets)?;
    if targets.is_empty() {
        return Ok(ProberHandle {
            commands: None,
            thread: None,
            events,
        });
    }
    let (tx, rx) = futures_channel::mpsc::unbounded::<Command>();
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
    let thread_events = events.clone();
    let thread = std::thread::Builder::new()
        .name("health-prober".to_owned())
        .spawn(move || {
            let mut rt = match monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .enable_timer()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            rt.block_on(run(board, targets, thread_events, rx));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ProberHandle {
            commands: Some(tx),
            thread: Some(thread),
            events,
        }),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => {
            let _ = thread.join();
            Err(std::io::Error::other(
                "health prober thread ended at start-up",
            ))
        }
    }
}

/// Where a task publishes: its target (slot, TLS client) and the board in force. Replaced
/// by a retarget; never borrowed across an `.await`.
struct Live {
    target: ProbeTarget,
    board: Arc<HealthBoard>,
}

/// One backend's task, as the runtime's main task keeps it.
struct Task {
    live: Rc<RefCell<Live>>,
    stop: Rc<Notify>,
    handle: monoio::task::JoinHandle<()>,
}

/// Closed while a reload copies the board: tasks wait before publishing.
#[derive(Default)]
struct Gate {
    /// Fired (and cleared) when the gate opens.
    held: RefCell<Option<Rc<Notify>>>,
}

impl Gate {
    fn close(&self) {
        let mut held = self.held.borrow_mut();
        if held.is_none() {
            *held = Some(Rc::new(Notify::default()));
        }
    }

    fn open(&self) {
        let held = self.held.borrow_mut().take();
        if let Some(n) = held {
            n.notify_all();
        }
    }

    /// Returns once the gate is open (at once if it is): checked again after each wake-up,
    /// as another hold may have come before this task ran.
    async fn passed(&self) {
        loop {
            let held = self.held.borrow().clone();
            match held {
                Some(n) => n.notified().await,
                None => return,
            }
        }
    }
}

/// The runtime's tasks by backend identity (upstream name, address), and what they share.
struct Tasks {
    by_id: HashMap<(String, SocketAddr), Task>,
    gate: Rc<Gate>,
    events: Option<mpsc::Sender<HealthEvent>>,
    seed: u64,
    /// Tasks started so far, mixed into each one's seed.
    started: u64,
}

impl Tasks {
    /// Keeps the task of every backend of `targets` that probes as before (re-pointed at
    /// its new slot and `board`), stops the others and starts tasks for the rest; then
    /// opens the gate.
    fn retarget(&mut self, board: Arc<HealthBoard>, targets: Vec<ProbeTarget>) {
        let mut old = std::mem::take(&mut self.by_id);
        for t in targets {
            let id = (t.upstream.clone(), t.address);
            let kept = old.remove(&id).and_then(|task| {
                let same = task.live.borrow().target.probes_like(&t);
                if !same {
                    task.stop.notify_all();
                }
                same.then_some(task)
            });
            let task = match kept {
                Some(task) => {
                    *task.live.borrow_mut() = Live {
                        target: t,
                        board: board.clone(),
                    };
                    task
                }
                None => self.start(t, board.clone()),
            };
            self.by_id.insert(id, task);
        }
        for task in old.into_values() {
            task.stop.notify_all();
        }
        self.gate.open();
    }

    fn start(&mut self, target: ProbeTarget, board: Arc<HealthBoard>) -> Task {
        let spec = &target.spec;
        let state = match target.resume {
            Some((h, streak)) => HealthState::resumed(h, streak, spec.rise, spec.fall),
            None => {
                let st = HealthState::new(spec.initial, spec.rise, spec.fall);
                // The board may have been created with another initial state: align it
                // quietly (now, on this thread: no hold can be under way).
                board.publish(target.backend, st.current(), Instant::now());
                st
            }
        };
        self.started += 1;
        let rng = Rng::seeded(self.seed ^ self.started.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let live = Rc::new(RefCell::new(Live { target, board }));
        let stop = Rc::new(Notify::default());
        let handle = monoio::spawn(probe_loop(
            live.clone(),
            state,
            self.events.clone(),
            self.gate.clone(),
            stop.clone(),
            rng,
        ));
        Task { live, stop, handle }
    }
}

/// The prober runtime's main task: runs the handle's commands until its channel closes, then
/// stops every task.
async fn run(
    board: Arc<HealthBoard>,
    targets: Vec<ProbeTarget>,
    events: Option<mpsc::Sender<HealthEvent>>,
    mut commands: UnboundedReceiver<Command>,
) {
    let mut tasks = Tasks {
        by_id: HashMap::new(),
        gate: Rc::default(),
        events,
        seed: seed_from_clock(),
        started: 0,
    };
    tasks.retarget(board, targets);
    // A closed channel (the handle stopped or dropped, or the process is going down) stops.
    while let Some(cmd) = next_command(&mut commands).await {
        match cmd {
            Command::Hold { done } => {
                tasks.gate.close();
                let _ = done.send(());
            }
            Command::Retarget {
                board,
                targets,
                done,
            } => {
                tasks.retarget(board, targets);
                let _ = done.send(());
            }
        }
    }
    for task in tasks.by_id.values() {
        task.stop.notify_all();
    }
    for (_, task) in tasks.by_id.drain() {
        task.handle.await;
    }
}

async fn next_command(rx: &mut UnboundedReceiver<Command>) -> Option<Command> {
    std::future::poll_fn(|cx| futures_core::Stream::poll_next(std::pin::Pin::new(&mut *rx), cx))
        .await
}

/// Probes one backend every interval until `stop` fires, publishing where `live` says.
async fn probe_loop(
    live: Rc<RefCell<Live>>,
    mut state: HealthState,
    events: Option<mpsc::Sender<HealthEvent>>,
    gate: Rc<Gate>,
    stop: Rc<Notify>,
    rng: Rng,
) {
    // A kept task's check is unchanged (`ProbeTarget::probes_like`).
    let spec = live.borrow().target.spec.clone();
    let mut delay = first_delay(&spec, state.current().is_usable(), rng.unit());
    loop {
        monoio::select! {
            _ = monoio::time::sleep(delay) => {}
            _ = stop.notified() => return,
        }
        let (address, tls, proxy_protocol) = {
            let l = live.borrow();
            (
                l.target.address,
                l.target.tls.clone(),
                l.target.proxy_protocol,
            )
        };
        let result = monoio::select! {
            r = probe(address, &spec, tls.as_deref(), proxy_protocol) => r,
            _ = stop.notified() => return,
        };
        // While a reload copies the board, the result waits; then it goes to the slot in
        // force, unless the backend was removed or its check changed meanwhile.
        monoio::select! {
            _ = gate.passed() => {}
            _ = stop.notified() => return,
        }
        if stop.is_fired() {
            return;
        }
        if let Err(ProbeFailure::NoDescriptors) = result {
            // The proxy's shortage, not the backend's: counted neither way.
            skipped_for_descriptors(&live.borrow().target);
            delay = jittered(spec.interval, spec.jitter, rng.unit());
            continue;
        }
        {
            let l = live.borrow();
            l.board.count_check(l.target.backend, result.is_ok());
            if let Some(t) = state.observe(result.is_ok()) {
                report(&l.target, &l.board, events.as_ref(), t, &result);
            }
        }
        delay = jittered(spec.interval, spec.jitter, rng.unit());
    }
}

thread_local! {
    /// Probes skipped for want of descriptors since the last line saying so, and when that
    /// was: every task of the prober's thread shares them.
    static SKIPPED: std::cell::Cell<(u64, Option<Instant>)> = const { std::cell::Cell::new((0, None)) };
}

/// Counts a probe the proxy could not make for want of descriptors and logs, at most once a
/// second for the whole prober, how many were skipped: a start-up burst of tens of thousands
/// of checked backends would otherwise log a line each.
fn skipped_for_descriptors(target: &ProbeTarget) {
    SKIPPED.with(|c| {
        let (n, last) = c.get();
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            c.set((n + 1, last));
            return;
        }
        tracing::warn!(
            upstream = %target.upstream,
            backend = %target.address,
            skipped = n + 1,
            "health check skipped: out of file descriptors (not counted against the backend)"
        );
        c.set((0, Some(now)));
    });
}

/// Publishes a transition, logs it and sends it to the events channel.
fn report(
    target: &ProbeTarget,
    board: &HealthBoard,
    events: Option<&mpsc::Sender<HealthEvent>>,
    t: Transition,
    result: &Result<(), ProbeFailure>,
) {
    board.publish(target.backend, t.to, Instant::now());
    let generation = board.generation();
    let reason = match result {
        Ok(()) => "check passed".to_owned(),
        Err(f) => f.to_string(),
    };
    if t.to == Health::Unhealthy {
        tracing::warn!(
            upstream = %target.upstream,
            backend = %target.address,
            from = %t.from,
            to = %t.to,
            cause = %t.cause,
            last_check = %reason,
            "backend health changed"
        );
    } else {
        tracing::info!(
            upstream = %target.upstream,
            backend = %target.address,
            from = %t.from,
            to = %t.to,
            cause = %t.cause,
            last_check = %reason,
            "backend health changed"
        );
    }
    if let Some(tx) = events {
        let _ = tx.send(HealthEvent {
            backend: target.backend,
            upstream: target.upstream.clone(),
            address: target.address,
            transition: t,
            reason,
            generation,
        });
    }
}

/// One probe, bounded as a whole by the check's timeout.
pub async fn probe(
    address: SocketAddr,
    spec: &CheckSpec,
    tls: Option<&crate::tls::upstream::UpstreamTlsClient>,
    proxy_protocol: Option<crate::proxy_protocol::Version>,
) -> Result<(), ProbeFailure> {
    let unbounded = probe_unbounded(address, &spec.kind, tls, proxy_protocol);
    match monoio::time::timeout(spec.timeout, unbounded).await {
        Ok(r) => r,
        Err(_) => Err(ProbeFailure::Timeout {
            after: spec.timeout,
        }),
    }
}

async fn probe_unbounded(
    address: SocketAddr,
    kind: &CheckKind,
    tls: Option<&crate::tls::upstream::UpstreamTlsClient>,
    proxy_protocol: Option<crate::proxy_protocol::Version>,
) -> Result<(), ProbeFailure> {
    let mut tcp = TcpStream::connect_addr(address).await.map_err(|e| {
        match matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
            true => ProbeFailure::NoDescriptors,
            false => ProbeFailure::Connect { error: e.kind() },
        }
    })?;
    if let Some(v) = proxy_protocol {
        let (res, _) = tcp.write_all(crate::proxy_protocol::encode(v, None)).await;
        res.map_err(|e| ProbeFailure::Connect { error: e.kind() })?;
    }
    // Over TLS a `tcp` check includes the handshake: a backend whose certificate does not
    // verify is as unusable as one that refuses connections.
    let mut stream = match tls {
        None => Transport::Plain(tcp),
        Some(t) => Transport::Tls(Box::new(t.connect(tcp, address).await.map_err(|e| {
            ProbeFailure::Tls {
                error: e.to_string(),
            }
        })?)),
    };
    let verdict = match kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http(check) => http_probe(&mut stream, address, check).await,
    };
    // A plain probe's socket ends with a reset (`SO_LINGER` 0), as HAProxy ends its checks:
    // closed first by the proxy (a `tcp` check always, an `http` one that did not read to
    // the backend's close), each probe left a TIME_WAIT on this host for 60 s, and the same
    // backend in many upstreams (2,000 with `tcp` checks every 5 s: ~24,000 at once) takes
    // most of the ~28,000 ephemeral ports to its address, which requests to it need too.
    stream.reset_on_close();
    // A probe that got its answer (good or bad) ends in order: over TLS with close_notify,
    // which a backend does not log as a truncation at every interval.
    if !matches!(verdict, Err(ProbeFailure::Io { .. })) {
        stream.close_now();
    }
    verdict
}

/// Sends the check request and feeds the response to the matcher until it decides.
async fn http_probe(
    stream: &mut Transport,
    address: SocketAddr,
    check: &HttpCheck,
) -> Result<(), ProbeFailure> {
    let (res, _) = stream.write_all(check.request(address)).await;
    res.map_err(|e| ProbeFailure::Io { error: e.kind() })?;
    let mut matcher = ResponseMatcher::new(check);
    let mut buf = Vec::with_capacity(8192);
    loop {
        buf.clear();
        let (res, b) = stream.read(buf).await;
        buf = b;
        let n = res.map_err(|e| ProbeFailure::Io { error: e.kind() })?;
        let verdict = match buf.get(..n) {
            Some(bytes) if n > 0 => matcher.feed(bytes),
            _ => matcher.finish(),
        };
        match verdict {
            Verdict::NeedMore => {}
            Verdict::Pass => return Ok(()),
            Verdict::Fail(f) => return Err(f),
        }
    }
}

/// A seed that differs between processes, so that proxies started together do not probe in
/// lock-step.
fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()).rotate_left(32)
}

/// The wait before a task's first probe, placed by `unit` (a draw from [0, 1)): anywhere in
/// the first interval for a backend in use (Unknown or Healthy), so the probes of thousands
/// of backends started together are spread over the whole interval from the first round on
/// (HAProxy spreads its first checks so: within `jitter × interval` they all fired in the
/// same tenth of it and stayed in phase, and 60,000 checked backends took the p99 of
/// requests from 9 to 150 ms); within `jitter × interval` for one out of use, which waits
/// for its probes to come back; at once with `jitter = 0` (probes in phase, as asked).
fn first_delay(spec: &CheckSpec, usable: bool, unit: f64) -> Duration {
    let spread = if usable {
        1.0
    } else {
        spec.jitter.clamp(0.0, 1.0)
    };
    if spec.jitter <= 0.0 {
        return Duration::ZERO;
    }
    spec.interval.mul_f64(spread * unit)
}

/// The wait before the next probe: `interval × (1 ± jitter)`, placed in that range by `unit`
/// (a draw from [0, 1)); a jitter outside [0, 1] is clamped, so the wait is never negative.
fn jittered(interval: Duration, jitter: f64, unit: f64) -> Duration {
    let j = jitter.clamp(0.0, 1.0);
    interval.mul_f64(1.0 + j * (2.0 * unit - 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_probe_of_a_backend_in_use_is_spread_over_the_interval() {
        let mut spec = CheckSpec {
            interval: Duration::from_secs(10),
            jitter: 0.1,
            ..CheckSpec::default()
        };
        assert_eq!(first_delay(&spec, true, 0.9), Duration::from_secs(9));
        assert_eq!(first_delay(&spec, false, 0.9), Duration::from_millis(900));
        spec.jitter = 0.0;
        assert_eq!(
            first_delay(&spec, true, 0.9),
            Duration::ZERO,
            "no jitter: at once"
        );
    }

    #[test]
    fn jitter_places_the_wait_within_the_interval_times_one_plus_or_minus_jitter() {
        let ten = Duration::from_secs(10);
        assert_eq!(jittered(ten, 0.1, 0.0), Duration::from_secs(9));
        assert_eq!(jittered(ten, 0.1, 0.5), ten);
        let top = jittered(ten, 0.1, 0.999);
        assert!(top <= Duration::from_secs(11) && top > Duration::from_millis(10_990));
        assert_eq!(jittered(ten, 0.0, 0.9), ten);
        // Clamped: never below zero, never above twice the interval.
        assert_eq!(jittered(Duration::from_secs(1), 5.0, 0.0), Duration::ZERO);
        assert!(jittered(Duration::from_secs(1), 5.0, 0.99) < Duration::from_secs(2));
    }
}
