//! A route's `mirror = { upstream, sample, max_in_flight }` (nginx's `mirror`), checked
//! into [`Mirror`]; the copies are sent by [`crate::mirror`].

use serde::Deserialize;

use super::raw::{Checker, Size};
use super::UpstreamConfig;

/// Default `mirror.max_in_flight`: copies per shard for the route.
pub const MAX_IN_FLIGHT: usize = 64;

/// Default `mirror.max_body`: the largest request body copied.
pub const MAX_BODY: u64 = 64 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMirror {
    upstream: String,
    sample: Option<f64>,
    max_in_flight: Option<usize>,
    max_body: Option<Size>,
}

/// Where a route's requests are copied to, and how many.
#[derive(Clone, Debug)]
pub struct Mirror {
    /// Index into [`super::Config::upstreams`].
    pub upstream: usize,
    /// [`crate::sample::threshold`] of `mirror.sample`, the share of the route's forwarded
    /// requests copied (0 to 1).
    pub sample_below: u64,
    /// Copies under way on a shard for the route; a request past it is not copied.
    pub max_in_flight: usize,
    /// The largest request body copied; a request with a larger one is not copied.
    pub max_body: u64,
}

pub(super) fn route_mirror(
    c: &mut Checker,
    path: &str,
    raw: Option<RawMirror>,
    upstreams: &[UpstreamConfig],
    route_upstream: Option<usize>,
    forwards: bool,
) -> Option<Mirror> {
    let raw = raw?;
    let path = format!("{path}.mirror");
    if !forwards {
        c.err(
            &path,
            "the route answers itself (redirect or respond), so it has no request to copy",
        );
    }
    let upstream_path = format!("{path}.upstream");
    let upstream = c.upstream_named(upstream_path.clone(), &raw.upstream, upstreams);
    // Every request twice to the same backends, the copies taking their breaker permits
    // and counting in their passive checks: not a mirror.
    if forwards && upstream.is_some() && upstream == route_upstream {
        c.err(
            upstream_path,
            format!(
                "{:?} is the route's own upstream: a mirror is another one",
                raw.upstream
            ),
        );
    }
    let upstream = upstream.unwrap_or(0);
    let sample = match raw.sample {
        None => 1.0,
        Some(s) if s > 0.0 && s <= 1.0 => s,
        Some(s) => {
            c.err(
                format!("{path}.sample"),
                format!("{s} is out of range: write a fraction greater than 0 and at most 1"),
            );
            1.0
        }
    };
    let max_in_flight = c.count(
        &format!("{path}.max_in_flight"),
        raw.max_in_flight,
        MAX_IN_FLIGHT,
        1,
        1 << 20,
    );
    let max_body = c.size(
        &format!("{path}.max_body"),
        raw.max_body.as_ref(),
        MAX_BODY,
        0,
        64 << 20,
    );
    Some(Mirror {
        upstream,
        sample_below: crate::sample::threshold(sample),
        max_in_flight,
        max_body,
    })
}
