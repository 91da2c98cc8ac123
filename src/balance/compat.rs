//! Stage "balance", compatibility: the `Balancer` and `BackendState` that `shard.rs` uses
//! today (`config::Balance` has only `round_robin` and `weighted`), as a thin layer over
//! [`Table`] and [`ShardBalancer`]. To be removed when the proxy is wired to the new API.

use std::time::Instant;

use super::{Algorithm, Member, ShardBalancer, Spec, Table};
use crate::config::{Balance, UpstreamConfig};

/// Per-shard balancing of one upstream, owning its own table.
#[derive(Debug)]
pub struct Balancer {
    table: Table,
    state: ShardBalancer,
}

impl Balancer {
    pub fn new(upstream: &UpstreamConfig, shard: usize) -> Balancer {
        let spec = Spec::new(match upstream.balance {
            Balance::RoundRobin => Algorithm::RoundRobin,
            Balance::Weighted => Algorithm::Weighted,
        });
        let members: Vec<Member> = upstream
            .backends
            .iter()
            .map(|b| Member {
                name: b.address.to_string(),
                weight: b.weight,
                backup: false,
            })
            .collect();
        Balancer {
            table: Table::build(&spec, &members),
            state: ShardBalancer::new(&spec, &members, shard),
        }
    }

    /// Returns the index (within the upstream) of the next backend for which `usable` holds;
    /// `None` also when `n` is not the upstream's backend count.
    pub fn pick(&mut self, n: usize, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if n != self.table.len() {
            return None;
        }
        self.state.pick(&self.table, None, usable)
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
    use std::time::Duration;

    use super::*;
    use crate::config::BackendConfig;

    fn upstream(balance: Balance, weights: &[u32]) -> UpstreamConfig {
        UpstreamConfig {
            name: "u".into(),
            balance,
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| BackendConfig {
                    address: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                    weight,
                })
                .collect(),
            max_idle_per_backend: 1,
            idle_timeout: Duration::from_secs(1),
            fail_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn smooth_weighted_matches_nginx_sequence() {
        // nginx's documented example: weights 5,1,1 give a a b a c a a.
        let mut b = Balancer::new(&upstream(Balance::Weighted, &[5, 1, 1]), 0);
        let seq: Vec<usize> = (0..7).map(|_| b.pick(3, |_| true).unwrap()).collect();
        assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn weighted_distribution_is_exact_per_cycle() {
        let mut b = Balancer::new(&upstream(Balance::Weighted, &[3, 2, 1]), 1);
        let mut counts = [0; 3];
        for _ in 0..6000 {
            counts[b.pick(3, |_| true).unwrap()] += 1;
        }
        assert_eq!(counts, [3000, 2000, 1000]);
    }

    #[test]
    fn round_robin_skips_unusable() {
        let mut b = Balancer::new(&upstream(Balance::RoundRobin, &[1, 1, 1]), 0);
        let seq: Vec<usize> = (0..4).map(|_| b.pick(3, |i| i != 1).unwrap()).collect();
        assert_eq!(seq, vec![0, 2, 0, 2]);
        assert_eq!(b.pick(3, |_| false), None);
        assert_eq!(b.pick(2, |_| true), None);
    }

    #[test]
    fn round_robin_starts_at_the_shard() {
        let mut b = Balancer::new(&upstream(Balance::RoundRobin, &[1, 1, 1]), 4);
        assert_eq!(b.pick(3, |_| true), Some(1));
    }
}
