//! Observability, read side: the `/metrics` families per route, from stage 3 *route* on
//! (requests by the status class the client got, and the copies a route's `mirror` sent,
//! [`crate::mirror`]), written by [`super::metrics::render`].

use std::fmt::Write;

use super::metrics::{esc, family, CLASSES};
use crate::config::Config;
use crate::mirror::Copied;
use crate::stats::Snapshot;

/// Requests by route and class, and each mirroring route's copies.
pub(super) fn routes(o: &mut String, cfg: &Config, all: &Snapshot) {
    family(o, "edgeshard_route_requests_total", "counter", "Requests by route and the status class the client got; class=\"aborted\" when it got none.");
    let route_name = |i: usize| {
        cfg.routes
            .get(i)
            .map_or(crate::config::NO_ROUTE, |r| r.name.as_str())
    };
    for (i, r) in all.routes.iter().enumerate() {
        let route = esc(route_name(i));
        for (c, n) in CLASSES.iter().zip(r.status) {
            let _ = writeln!(
                o,
                "edgeshard_route_requests_total{{route=\"{route}\",class=\"{c}\"}} {n}"
            );
        }
        let _ = writeln!(
            o,
            "edgeshard_route_requests_total{{route=\"{route}\",class=\"aborted\"}} {}",
            r.aborted
        );
    }
    let mirroring = || {
        let routes = all.routes.iter().enumerate();
        routes.filter(|(i, _)| cfg.routes.get(*i).is_some_and(|r| r.mirror.is_some()))
    };
    if mirroring().next().is_none() {
        return;
    }
    family(o, "edgeshard_mirror_requests_total", "counter", "Copies of a route's requests for its mirror: answered (any status: the mirror's backends count them), failed (no response), and those not sent: busy (mirror.max_in_flight copies under way), unbuffered (the body was not whole in hand) or too_large (a body over mirror.max_body).");
    for (i, r) in mirroring() {
        let route = esc(route_name(i));
        for (c, n) in Copied::ALL.iter().zip(r.mirror) {
            let result = c.label();
            let _ = writeln!(
                o,
                "edgeshard_mirror_requests_total{{route=\"{route}\",result=\"{result}\"}} {n}"
            );
        }
    }
    family(
        o,
        "edgeshard_mirror_in_flight",
        "gauge",
        "Copies of a route's requests under way to its mirror.",
    );
    for (i, r) in mirroring() {
        let route = esc(route_name(i));
        let n = r.mirror_in_flight;
        let _ = writeln!(o, "edgeshard_mirror_in_flight{{route=\"{route}\"}} {n}");
    }
}
