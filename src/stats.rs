//! Per-shard counters and latency histograms. Each shard writes only its own [`Stats`]
//! (plain `Cell`s: no atomics, no sharing); readers merge per-shard snapshots.

use std::cell::{Cell, RefCell};

use hdrhistogram::Histogram;

use crate::http::canned::Canned;

#[derive(Debug)]
pub struct Stats {
    pub accepted: Cell<u64>,
    pub rejected_conn_limit: Cell<u64>,
    pub active: Cell<u64>,
    pub requests: Cell<u64>,
    /// Responses relayed from upstreams by status class 1xx..5xx (index 0..4).
    pub upstream_status: [Cell<u64>; 5],
    /// The proxy's own responses, by [`Canned`] variant.
    pub canned: [Cell<u64>; Canned::ALL.len()],
    pub upstream_connects: Cell<u64>,
    pub upstream_connect_errors: Cell<u64>,
    pub retries: Cell<u64>,
    pub client_aborts: Cell<u64>,
    pub upstream_aborts: Cell<u64>,
    pub bytes_in: Cell<u64>,
    pub bytes_out: Cell<u64>,
    /// Total request latency in microseconds.
    pub latency_us: RefCell<Histogram<u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            accepted: Cell::new(0),
            rejected_conn_limit: Cell::new(0),
            active: Cell::new(0),
            requests: Cell::new(0),
            upstream_status: Default::default(),
            canned: Default::default(),
            upstream_connects: Cell::new(0),
            upstream_connect_errors: Cell::new(0),
            retries: Cell::new(0),
            client_aborts: Cell::new(0),
            upstream_aborts: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            // 1 µs .. 1 hour, 3 significant digits.
            latency_us: RefCell::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("static histogram bounds"),
            ),
        }
    }
}

#[inline]
pub fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

#[inline]
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Stats {
    pub fn canned(&self, c: Canned) {
        let i = Canned::ALL.iter().position(|&x| x == c).unwrap_or(0);
        bump(&self.canned[i]);
    }

    pub fn upstream_status(&self, status: u16) {
        let class = (status / 100).clamp(1, 5) as usize - 1;
        bump(&self.upstream_status[class]);
    }

    pub fn record_latency(&self, micros: u64) {
        // saturating_record clamps outliers into the top bucket instead of failing.
        self.latency_us
            .borrow_mut()
            .saturating_record(micros.max(1));
    }

    /// A one-line human summary, logged at shutdown.
    pub fn summary(&self) -> String {
        let h = self.latency_us.borrow();
        let canned: Vec<String> = Canned::ALL
            .iter()
            .zip(&self.canned)
            .filter(|(_, n)| n.get() > 0)
            .map(|(c, n)| format!("{}={}", c.status(), n.get()))
            .collect();
        format!(
            "accepted={} requests={} upstream_2xx={} upstream_5xx={} own=[{}] connects={} connect_errors={} retries={} p50={}us p99={}us",
            self.accepted.get(),
            self.requests.get(),
            self.upstream_status[1].get(),
            self.upstream_status[4].get(),
            canned.join(" "),
            self.upstream_connects.get(),
            self.upstream_connect_errors.get(),
            self.retries.get(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
        )
    }
}
