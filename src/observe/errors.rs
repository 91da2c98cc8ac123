//! Observability, error log: a per-shard rate limit on the log lines that clients and
//! backends can cause (bad requests, failed connects), so a flood of bad input cannot flood
//! the log. What is held back is counted (`edgeshard_log_suppressed_total`) and summarised in
//! one line per second. The lines themselves where no stage logs them: a backend's failure
//! behind a `502` or `504` ([`upstream_failed`]), and one that broke a response body off on
//! an IO error ([`body_failed`]).

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::shard::ShardCtx;
use crate::stats::{bump, Stats};
use crate::trace::Trace;

/// A fixed one-second window of at most `rate` lines, per shard (no sharing, no atomics).
#[derive(Debug)]
pub struct ErrorLimiter {
    /// What its lines are, for the summary line.
    what: &'static str,
    rate: u32,
    window: Cell<Option<Instant>>,
    used: Cell<u32>,
    /// Held back since the last summary.
    held: Cell<u64>,
}

impl ErrorLimiter {
    pub fn new(rate: u32) -> ErrorLimiter {
        ErrorLimiter::of("error log lines", rate)
    }

    /// A budget of its own for one kind of line: refused logins ([`ShardCtx::logins`]) are
    /// what fail2ban reads, so a flood of failing backends must not hide them, nor a
    /// password flood the lines of failing backends.
    pub fn of(what: &'static str, rate: u32) -> ErrorLimiter {
        ErrorLimiter {
            what,
            rate,
            window: Cell::new(None),
            used: Cell::new(0),
            held: Cell::new(0),
        }
    }

    /// Whether one more line may be written now; a refusal is counted.
    pub fn allow(&self, stats: &Stats) -> bool {
        self.allow_at(Instant::now(), stats)
    }

    pub fn allow_at(&self, now: Instant, stats: &Stats) -> bool {
        let fresh = self
            .window
            .get()
            .is_none_or(|w| now.duration_since(w) >= Duration::from_secs(1));
        if fresh {
            self.window.set(Some(now));
            self.used.set(0);
        }
        if self.used.get() < self.rate {
            self.used.set(self.used.get() + 1);
            true
        } else {
            self.held.set(self.held.get() + 1);
            bump(&stats.log_suppressed);
            false
        }
    }

    /// Writes one summary line if anything was held back since the last call.
    pub fn report(&self, shard: usize, _stats: &Stats) {
        let held = self.held.replace(0);
        if held > 0 {
            tracing::warn!(
                shard,
                suppressed = held,
                "{} suppressed by log.error_rate",
                self.what
            );
        }
    }
}

/// Error-log lines dropped because stderr would have blocked ([`Stderr`]).
pub static STDERR_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The error log's writer: stderr, but never blocking. A shard writes its log lines on its
/// own thread; with stderr a pipe or a stream socket whose reader stalls (a stopped
/// `journald`, a container log driver), a blocking write would stop the shard and every
/// connection on it once the pipe is full (found by the session 12 resource review:
/// requests timed out 20 s after the reader stopped). So a line is written only while stderr
/// can take it now (`poll` with no wait); the rest of it is dropped and counted
/// (`edgeshard_log_lines_dropped_total`). The descriptor itself stays blocking: its file
/// description may be shared with a shell or a supervisor.
pub struct Stderr;

impl std::io::Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One writer at a time between the look and the write: two shards that both saw
        // room for one more line must not both write into it (the second would block).
        let mut stderr = std::io::stderr().lock();
        // At most what a pipe takes at once when it has room (PIPE_BUF): a longer line's
        // rest is written the same way, or dropped.
        let buf = &buf[..buf.len().min(libc::PIPE_BUF)];
        let mut fd = libc::pollfd {
            fd: libc::STDERR_FILENO,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll reads and writes the one `pollfd` we own, for the call only.
        // Exercised by every log line (and by the stalled-reader test).
        let ready = unsafe { libc::poll(&mut fd, 1, 0) } == 1 && fd.revents & libc::POLLOUT != 0;
        if !ready {
            STDERR_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Taken whole: the caller does not retry, the line is gone.
            return Ok(buf.len());
        }
        stderr.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Logs, within `log.error_rate`, a backend that failed a request the client is answered
/// `502` or `504` for: it timed out, closed, or broke HTTP framing, and at which step (a
/// failed connect is logged where it fails, `upstream::connect`), as nginx's "upstream timed
/// out ... while reading response header from upstream" line.
pub fn upstream_failed(ctx: &ShardCtx, e: &ProxyError, trace: &Trace) {
    use crate::error::{Kind, Stage};
    let what = match e.kind {
        Kind::Timeout => "timed out",
        Kind::Closed => "closed the connection",
        Kind::Framing => "sent a malformed response",
        _ => return,
    };
    let step = match e.stage {
        Stage::Send => "while sending the request",
        Stage::Head => "while the response head was awaited",
        _ => return,
    };
    if !ctx.errors.allow(&ctx.stats) {
        return;
    }
    let shared = &ctx.shared;
    let backend = trace.backend.and_then(|b| shared.backends.get(b as usize));
    let route = trace
        .route()
        .map_or("", |r| shared.config.routes[r].name.as_str());
    // The system's reason, where an IO error was behind it (nginx's "recv() failed (104:
    // Connection reset by peer)"); `-` for an end of stream, a timeout or a bad head.
    let error = (e.os_error != 0).then(|| std::io::Error::from_raw_os_error(e.os_error.into()));
    let error =
        tracing::field::display(error.as_ref().map_or(&"-" as &dyn std::fmt::Display, |e| e));
    match backend {
        Some(b) => tracing::warn!(backend = %b.address, route, error, "upstream {what} {step}"),
        None => tracing::warn!(route, error, "upstream {what} {step}"),
    }
}

/// Logs, within `log.error_rate`, a backend whose response body broke off on an IO error, with
/// the system's reason (`error=Connection reset by peer (os error 104)`), as nginx's "recv()
/// failed (104: Connection reset by peer) while reading upstream". The client's response is
/// cut (or, with nothing relayed yet, a `502`: not logged again by [`upstream_failed`]).
/// Called on that error only: a body relayed whole formats nothing.
pub fn body_failed(
    errors: &ErrorLimiter,
    stats: &Stats,
    backend: std::net::SocketAddr,
    route: &str,
    e: &std::io::Error,
) {
    if errors.allow(stats) {
        tracing::warn!(%backend, route, error = %e, "upstream failed while the response body was relayed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_rate_lines_per_second() {
        let stats = Stats::new(0, 0);
        let l = ErrorLimiter::new(3);
        let t0 = Instant::now();
        let allowed = (0..10).filter(|_| l.allow_at(t0, &stats)).count();
        assert_eq!(allowed, 3);
        assert_eq!(stats.log_suppressed.get(), 7);
        assert!(!l.allow_at(t0 + Duration::from_millis(999), &stats));
        assert!(l.allow_at(t0 + Duration::from_secs(1), &stats));
        assert_eq!(l.held.get(), 8);
        l.report(0, &stats);
        assert_eq!(l.held.get(), 0);
    }
}
