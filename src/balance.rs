//! Stage 4 of the pipeline, *balance*: picks a backend of the routed upstream. State is
//! per shard (each shard has its own cursor), so a pick takes no lock and touches no shared
//! memory. Backends that just failed a connect on this shard are skipped for a short while.

use std::time::Instant;

use crate::config::{Balance, UpstreamConfig};

/// Per-shard balancing state for one upstream.
#[derive(Debug)]
pub enum Balancer {
    /// Every usable backend in turn, weights ignored.
    RoundRobin { next: usize },
    /// nginx's smooth weighted round robin: each pick adds every weight to its backend's
    /// `current`, takes the largest and subtracts the total from it.
    Weighted {
        weights: Vec<i64>,
        current: Vec<i64>,
    },
}

impl Balancer {
    pub fn new(upstream: &UpstreamConfig, shard: usize) -> Balancer {
        match upstream.balance {
            // Start each shard at a different backend so that shards do not move in lock-step.
            Balance::RoundRobin => Balancer::RoundRobin {
                next: shard % upstream.backends.len().max(1),
            },
            Balance::Weighted => Balancer::Weighted {
                weights: upstream
                    .backends
                    .iter()
                    .map(|b| i64::from(b.weight))
                    .collect(),
                current: vec![0; upstream.backends.len()],
            },
        }
    }

    /// Returns the index (within the upstream) of the next backend for which `usable` holds.
    pub fn pick(&mut self, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if n == 0 {
            return None;
        }
        match self {
            Balancer::RoundRobin { next } => {
                for k in 0..n {
                    let i = (*next + k) % n;
                    if usable(i) {
                        *next = (i + 1) % n;
                        return Some(i);
                    }
                }
                None
            }
            Balancer::Weighted { weights, current } => {
                let mut total = 0;
                let mut best: Option<usize> = None;
                for i in 0..n {
                    if !usable(i) {
                        continue;
                    }
                    current[i] += weights[i];
                    total += weights[i];
                    if best.is_none_or(|b| current[i] > current[b]) {
                        best = Some(i);
                    }
                }
                let b = best?;
                current[b] -= total;
                Some(b)
            }
        }
    }
}

/// Shard-local passive state of one backend: after a failed connect it is avoided until
/// `retry_at`, unless every backend is in that state.
#[derive(Debug, Clone, Copy, Default)]
pub struct BackendState {
    pub retry_at: Option<Instant>,
}

impl BackendState {
    pub fn usable(&self, now: Instant) -> bool {
        self.retry_at.is_none_or(|t| now >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighted(ws: &[i64]) -> Balancer {
        Balancer::Weighted {
            weights: ws.to_vec(),
            current: vec![0; ws.len()],
        }
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        // nginx's documented example: weights 5,1,1 give a a b a c a a.
        let mut b = weighted(&[5, 1, 1]);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(3, |_| true).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_distribution_is_exact_per_cycle() {
        let mut b = weighted(&[3, 2, 1]);
        let mut counts = [0; 3];
        for _ in 0..6000 {
            counts[b.pick(3, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [3000, 2000, 1000]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let mut b = Balancer::RoundRobin { next: 0 };
        let seq: Vec<usize> = (0..4).map(|_| b.pick(3, |i| i != 1).unwrap()).collect();
        assert_eq!(seq, vec![0, 2, 0, 2]);
        assert_eq!(b.pick(3, |_| false), None);
    }
}
