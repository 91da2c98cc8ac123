//! Config for resilience, per `[[upstream]]`: active health checks
//! (`[upstream.health_check]`), outlier detection (`[upstream.outlier]`), circuit breaking
//! (`[upstream.breaker]`), retries (`[upstream.retry]`) and `slow_start`. Raw serde shapes and
//! their validation into the `health::` specs the proxy runs on.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::raw::Checker;
use crate::health::breaker::BreakerLimits;
use crate::health::check::{CheckKind, CheckSpec, HttpCheck, StatusRanges};
use crate::health::outlier::{FailureKind, FailureKinds, OutlierSpec};
use crate::health::retry::{RetryOn, RetrySpec};
use crate::health::state::InitialState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    jitter: Option<f64>,
    initial: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<String>,
    body_contains: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutlier {
    consecutive: Option<u32>,
    on: Option<Vec<String>>,
    base_ejection: Option<String>,
    max_ejection: Option<String>,
    /// Wider than a percentage, so that 300 gets a message that says so.
    max_ejection_percent: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreaker {
    max_connections: Option<u32>,
    max_pending: Option<u32>,
    max_requests: Option<u32>,
    queue: Option<u32>,
    queue_timeout: Option<String>,
}

/// How long a request over `max_requests` waits in its backend's queue by default:
/// `timeouts.upstream_connect`'s default, as HAProxy's `timeout queue` falls back to its
/// `timeout connect`.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetry {
    attempts: Option<u32>,
    on: Option<Vec<String>>,
    budget: Option<f64>,
    min_retries_per_sec: Option<u32>,
    budget_window: Option<String>,
    per_try_timeout: Option<String>,
    total_timeout: Option<String>,
}

/// The resilience part of one upstream, typed.
#[derive(Clone, Debug)]
pub struct Resilience {
    /// Active checks; None = backends stay Unknown (usable) as far as probes go.
    pub health_check: Option<Arc<CheckSpec>>,
    pub outlier: OutlierSpec,
    pub breaker: BreakerLimits,
    pub retry: RetrySpec,
    /// A backend that comes back ramps its weight up over this long; zero = off.
    pub slow_start: Duration,
}

pub(super) struct RawResilience<'a> {
    pub health_check: Option<&'a RawHealthCheck>,
    pub outlier: Option<&'a RawOutlier>,
    pub breaker: Option<&'a RawBreaker>,
    pub retry: Option<&'a RawRetry>,
    pub slow_start: Option<&'a String>,
    pub fail_timeout: Option<&'a String>,
}

fn optional_duration(c: &mut Checker, path: &str, raw: Option<&String>) -> Option<Duration> {
    raw.map(|r| c.duration(path, Some(r), Duration::from_secs(1)))
}

pub(super) fn resilience(c: &mut Checker, path: &str, raw: RawResilience<'_>) -> Resilience {
    let fail_timeout = c.duration(
        &format!("{path}.fail_timeout"),
        raw.fail_timeout,
        Duration::from_secs(2),
    );

    let health_check = raw.health_check.map(|h| {
        let p = format!("{path}.health_check");
        let d = CheckSpec::default();
        let initial = match h.initial.as_deref() {
            None | Some("unknown") => InitialState::Unknown,
            Some("unhealthy") => InitialState::Unhealthy,
            Some(o) => {
                c.err(
                    format!("{p}.initial"),
                    format!("{o:?}: expected \"unknown\" or \"unhealthy\""),
                );
                InitialState::Unknown
            }
        };
        let http_keys = h.method.is_some()
            || h.path.is_some()
            || h.host.is_some()
            || h.expect_status.is_some()
            || h.body_contains.is_some();
        let kind = match h.kind.as_deref() {
            None | Some("tcp") => {
                if http_keys {
                    c.err(
                        format!("{p}.type"),
                        "method, path, host, expect_status and body_contains need type = \"http\"",
                    );
                }
                CheckKind::Tcp
            }
            Some("http") => {
                let dh = HttpCheck::default();
                let expect = match &h.expect_status {
                    None => dh.expect.clone(),
                    Some(s) => s.parse::<StatusRanges>().unwrap_or_else(|e| {
                        c.err(format!("{p}.expect_status"), e);
                        dh.expect.clone()
                    }),
                };
                CheckKind::Http(HttpCheck {
                    method: h.method.clone().unwrap_or(dh.method),
                    path: h.path.clone().unwrap_or(dh.path),
                    host: h.host.clone(),
                    expect,
                    body_contains: h.body_contains.as_ref().map(|b| b.as_bytes().to_vec()),
                })
            }
            Some(o) => {
                c.err(
                    format!("{p}.type"),
                    format!("{o:?}: expected \"tcp\" or \"http\""),
                );
                CheckKind::Tcp
            }
        };
        let spec = CheckSpec {
            kind,
            interval: c.duration(&format!("{p}.interval"), h.interval.as_ref(), d.interval),
            timeout: c.duration(&format!("{p}.timeout"), h.timeout.as_ref(), d.timeout),
            rise: h.rise.unwrap_or(d.rise),
            fall: h.fall.unwrap_or(d.fall),
            jitter: h.jitter.unwrap_or(d.jitter),
            initial,
        };
        if let Err(e) = spec.validate() {
            c.err(format!("{p}.{}", e.key), e.why);
        }
        Arc::new(spec)
    });

    let outlier = match raw.outlier {
        None => OutlierSpec {
            // Without [upstream.outlier], the classic rule: one failed connect takes a backend
            // out on that shard for fail_timeout.
            consecutive: 1,
            on: FailureKinds::of(&[FailureKind::ConnectFailure]),
            base_ejection: fail_timeout,
            max_ejection: fail_timeout,
            max_ejection_percent: 100,
        },
        Some(o) => {
            let p = format!("{path}.outlier");
            if raw.fail_timeout.is_some() {
                c.err(
                    format!("{path}.fail_timeout"),
                    "conflicts with [upstream.outlier]: set base_ejection there instead",
                );
            }
            let d = OutlierSpec::default();
            let on = match &o.on {
                None => d.on,
                Some(list) => {
                    FailureKinds::parse(list.iter().map(String::as_str)).unwrap_or_else(|e| {
                        c.err(format!("{p}.on"), e);
                        d.on
                    })
                }
            };
            let spec = OutlierSpec {
                consecutive: o.consecutive.unwrap_or(d.consecutive),
                on,
                base_ejection: c.duration(
                    &format!("{p}.base_ejection"),
                    o.base_ejection.as_ref(),
                    d.base_ejection,
                ),
                max_ejection: c.duration(
                    &format!("{p}.max_ejection"),
                    o.max_ejection.as_ref(),
                    d.max_ejection,
                ),
                max_ejection_percent: match o.max_ejection_percent {
                    None => d.max_ejection_percent,
                    Some(v) => u8::try_from(v)
                        .ok()
                        .filter(|&v| v <= 100)
                        .unwrap_or_else(|| {
                            c.err(
                                format!("{p}.max_ejection_percent"),
                                format!("{v} is not a percentage: use 0 to 100"),
                            );
                            d.max_ejection_percent
                        }),
                },
            };
            if let Err(e) = spec.validate() {
                c.err(format!("{p}.{}", e.key), e.why);
            }
            spec
        }
    };

    let breaker = match raw.breaker {
        None => BreakerLimits::default(),
        Some(b) => {
            for (v, k) in [
                (b.max_connections, "max_connections"),
                (b.max_pending, "max_pending"),
                (b.max_requests, "max_requests"),
                (b.queue, "queue"),
            ] {
                if v == Some(0) {
                    c.err(
                        format!("{path}.breaker.{k}"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                }
            }
            if b.queue.is_some() && b.max_requests.is_none() {
                c.err(
                    format!("{path}.breaker.queue"),
                    "needs max_requests: requests wait for one of those to finish",
                );
            }
            if b.queue_timeout.is_some() && b.queue.is_none() {
                c.err(
                    format!("{path}.breaker.queue_timeout"),
                    "needs queue (without one, no request waits)",
                );
            }
            let p = format!("{path}.breaker.queue_timeout");
            BreakerLimits {
                max_connections: b.max_connections,
                max_pending: b.max_pending,
                max_requests: b.max_requests,
                queue: b.queue,
                queue_timeout: c.duration(&p, b.queue_timeout.as_ref(), QUEUE_TIMEOUT),
            }
        }
    };

    let retry = match raw.retry {
        None => RetrySpec::default(),
        Some(r) => {
            let p = format!("{path}.retry");
            let d = RetrySpec::default();
            let mut on = Vec::new();
            for (i, s) in r.on.clone().unwrap_or_default().iter().enumerate() {
                match s.parse::<RetryOn>() {
                    Ok(x) => on.push(x),
                    Err(e) => c.err(format!("{p}.on[{i}]"), e),
                }
            }
            let spec = RetrySpec {
                attempts: r.attempts.unwrap_or(d.attempts),
                on: if r.on.is_some() { on } else { d.on },
                budget: r.budget.unwrap_or(d.budget),
                min_retries_per_sec: r.min_retries_per_sec.unwrap_or(d.min_retries_per_sec),
                budget_window: c.duration(
                    &format!("{p}.budget_window"),
                    r.budget_window.as_ref(),
                    d.budget_window,
                ),
                per_try_timeout: optional_duration(
                    c,
                    &format!("{p}.per_try_timeout"),
                    r.per_try_timeout.as_ref(),
                ),
                total_timeout: optional_duration(
                    c,
                    &format!("{p}.total_timeout"),
                    r.total_timeout.as_ref(),
                ),
            };
            if let Err(e) = spec.validate() {
                c.err(format!("{p}.{}", e.key), e.why);
            }
            spec
        }
    };

    let slow_start = match raw.slow_start.map(|s| s.trim()) {
        None | Some("0" | "0s") => Duration::ZERO,
        Some(_) => c.duration(
            &format!("{path}.slow_start"),
            raw.slow_start,
            Duration::ZERO,
        ),
    };

    Resilience {
        health_check,
        outlier,
        breaker,
        retry,
        slow_start,
    }
}
