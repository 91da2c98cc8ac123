//! Feeds stage 4, *balance*: the active health prober. **One thread per process** (not one
//! prober per shard per backend) runs a small monoio runtime (epoll driver: a few sockets per
//! interval do not need io_uring) with one task per checked backend, all probing
//! concurrently. Each task feeds its [`HealthState`] and, on a transition, publishes the new
//! state on the [`HealthBoard`] that every shard reads, logs one line (upstream, backend,
//! old → new state, cause, last probe result) and reports a [`HealthEvent`] to an optional
//! channel (tests, later the admin API).
//!
//! A probe is bounded as a whole by the check's `timeout` (connect, send, response); the
//! next one starts `interval × (1 ± jitter)` after it ended. The first probe of each backend
//! starts within `jitter × interval` of start-up, so states settle quickly but probes of many
//! backends are still spread out.
//!
//! Stopping: [`ProberHandle::stop`] (or dropping the handle) fires a oneshot that the runtime
//! awaits; every task races its sleep and its probe against a shared notification, so the
//! thread ends at once, never after a whole interval, and the handle joins it.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    /// The upstream's name, for log lines.
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
    /// ([`super::board::SlotView::streak`]) the board carried over for this backend: probing
    /// resumes from them (`None`: from the check's initial state, published at once).
    pub resume: Option<(Health, i64)>,
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

/// Owns the prober thread; stopping or dropping it ends the thread promptly.
#[derive(Debug)]
pub struct ProberHandle {
    stop: Option<futures_channel::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProberHandle {
    /// Stops the prober and waits for its thread (promptly: in-flight probes are cancelled).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
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

/// Starts the prober thread for `targets`, publishing on `board` (and on `events` if given).
/// Fails if a spec is invalid, a target's slot is outside the board or appears twice (one
/// writer per slot, see [`HealthBoard`]), or the thread or its
/// runtime cannot be created. With no targets, no thread is started.
pub fn spawn(
    board: Arc<HealthBoard>,
    targets: Vec<ProbeTarget>,
    events: Option<mpsc::Sender<HealthEvent>>,
) -> std::io::Result<ProberHandle> {
    let invalid = |msg: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, msg);
    let mut seen = vec![false; board.len()];
    for t in &targets {
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
    if targets.is_empty() {
        return Ok(ProberHandle {
            stop: None,
            thread: None,
        });
    }
    let (stop_tx, stop_rx) = futures_channel::oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<std::io::Result<()>>();
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
            rt.block_on(run(board, targets, events, stop_rx));
        })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok(ProberHandle {
            stop: Some(stop_tx),
            thread: Some(thread),
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

/// The prober runtime's main task: one task per target, until told to stop.
async fn run(
    board: Arc<HealthBoard>,
    targets: Vec<ProbeTarget>,
    events: Option<mpsc::Sender<HealthEvent>>,
    stop_rx: futures_channel::oneshot::Receiver<()>,
) {
    let stop = Rc::new(Notify::default());
    let seed = seed_from_clock();
    let tasks: Vec<_> = targets
        .into_iter()
        .map(|t| {
            let rng = Rng::seeded(seed ^ (t.backend as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            monoio::spawn(probe_loop(
                t,
                board.clone(),
                events.clone(),
                stop.clone(),
                rng,
            ))
        })
        .collect();
    // A dropped sender (the handle was leaked or the process is going down) stops too.
    let _ = stop_rx.await;
    stop.notify_all();
    for t in tasks {
        t.await;
    }
}

/// Probes one backend every interval until `stop` fires.
async fn probe_loop(
    target: ProbeTarget,
    board: Arc<HealthBoard>,
    events: Option<mpsc::Sender<HealthEvent>>,
    stop: Rc<Notify>,
    rng: Rng,
) {
    let spec = target.spec.clone();
    let mut state = match target.resume {
        Some((h, streak)) => HealthState::resumed(h, streak, spec.rise, spec.fall),
        None => {
            let st = HealthState::new(spec.initial, spec.rise, spec.fall);
            // The board may have been created with another initial state: align it quietly.
            board.publish(target.backend, st.current(), Instant::now());
            st
        }
    };
    let mut delay = spec.interval.mul_f64(spec.jitter * rng.unit());
    loop {
        monoio::select! {
            _ = monoio::time::sleep(delay) => {}
            _ = stop.notified() => return,
        }
        let result = monoio::select! {
            r = probe(target.address, &spec, target.tls.as_deref(), target.proxy_protocol) => r,
            _ = stop.notified() => return,
        };
        board.count_check(target.backend, result.is_ok());
        if let Some(t) = state.observe(result.is_ok()) {
            report(&target, &board, events.as_ref(), t, &result);
        }
        delay = jittered(spec.interval, spec.jitter, rng.unit());
    }
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
    let mut tcp = TcpStream::connect_addr(address)
        .await
        .map_err(|e| ProbeFailure::Connect { error: e.kind() })?;
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
