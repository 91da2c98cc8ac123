//! Resilience building blocks that feed stage 4 of the pipeline, *balance*
//! (accept → parse → route → **balance** → pool → forward → respond): which backends are
//! usable and how much traffic each may take. See `docs/HEALTH.md` for the design.
//!
//! - [`state`]: the pure active-health state machine (rise/fall thresholds).
//! - [`board`]: [`HealthBoard`], the lock-free publication of health states to all shards.
//! - [`check`]: typed probe specs ([`check::CheckSpec`]) and probe failures.
//! - [`matcher`]: the pure, incremental matcher of an HTTP check response.
//! - [`prober`]: the one prober thread per process that runs the checks.
//! - [`outlier`]: passive outlier detection (shard-local ejection with back-off).
//! - [`breaker`]: shard-local circuit breaker (connections, pending, in-flight requests).
//! - [`retry`]: which failed attempts may be retried, and the retry budget.
//! - [`slow_start`]: the weight ramp of a recovered backend.
//!
//! Everything here except [`prober`] is pure or shard-local (`Cell`, `&mut self`) and takes
//! `now` as an argument, so it is unit-tested without sockets or clocks.

pub mod board;
pub mod breaker;
pub mod check;
pub mod matcher;
pub mod outlier;
pub mod prober;
pub mod retry;
pub mod slow_start;
pub mod state;

#[cfg(test)]
mod prober_tests;

pub use board::HealthBoard;
pub use state::Health;

/// A spec value out of range: its key in the configuration table (`interval`, `rise`, ...)
/// and why, so a config error names the field.
#[derive(Debug, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub why: String,
}

impl Invalid {
    fn new(key: &'static str, why: impl Into<String>) -> Invalid {
        Invalid {
            key,
            why: why.into(),
        }
    }
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.why)
    }
}

/// How one attempt to reach a backend ended, as the proxy saw it. Shared by outlier detection
/// ([`outlier`]) and the retry policy ([`retry`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The TCP connect was refused, unreachable or timed out: nothing reached the backend.
    ConnectFailure,
    /// The connection was reset or closed before a complete response head arrived.
    Reset,
    /// A per-try deadline (response head) expired.
    Timeout,
    /// A response head arrived with this status.
    Response { status: u16 },
}
