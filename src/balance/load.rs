//! Stage "balance", load-aware picks: `least_conn`, `p2c` with peak-EWMA latency, and the
//! walk of the hash algorithms (with or without `bounded_load`). All read only this shard's
//! counts, kept by `ShardBalancer::started` / `finished`; docs/BALANCING.md says how well
//! shard-local counts stand for the real load.

use std::time::Duration;

use super::picker::{ShardBalancer, HASH_TRIES};
use super::{Table, Tier, BACKUP};

/// Draws of `p2c` looking for two usable members before it falls back to a least-loaded scan.
const P2C_DRAWS: usize = 8;
/// Steps a bounded-load walk takes beyond `HASH_TRIES` per member of the tier before it takes
/// the least-loaded member (which always satisfies the bound when any usable member does).
const BOUNDED_STEPS_PER_MEMBER: usize = 8;

impl ShardBalancer {
    /// Recomputes member `i`'s least-conn score and moves it between load levels.
    pub(super) fn update_score(&mut self, i: usize) {
        if !self.keeps_levels {
            return;
        }
        let w = u64::from(self.weights[i].max(1));
        let to = (u64::from(self.in_flight[i]) << 32) / w;
        let t = usize::from(self.tier_of[i]).min(BACKUP);
        self.levels[t].moved(i, self.score[i], to);
        self.score[i] = to;
    }

    /// Peak-EWMA: a slower response than the average takes over at once, a faster one moves
    /// it by 1/8. An average not refreshed for `half_life` P2C picks is halved per such period
    /// (see `ewma`), so a backend that was slow once is tried again later.
    pub(super) fn record_latency(&mut self, i: usize, latency: Duration) {
        let lat = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let e = self.ewma(i);
        self.ewma_ns[i] = if lat >= e { lat } else { e - (e - lat) / 8 };
        self.stamp[i] = self.clock;
    }

    fn ewma(&self, i: usize) -> u64 {
        let halvings = (self.clock - self.stamp[i]) / self.half_life;
        if halvings >= 64 {
            0
        } else {
            self.ewma_ns[i] >> halvings
        }
    }

    /// Whether member `a` costs less than `b` for P2C. The cost estimates the latency a new
    /// request would see: `peak-EWMA × (1 + in-flight / weight)`. Idle members cost their
    /// latency (equal latencies tie, and the first draw wins: an idle shard picks exactly by
    /// weight); under load the in-flight count per unit of weight counts.
    fn cheaper(&self, a: usize, b: usize) -> bool {
        // EWMA capped at 2^50 ns (13 days) so that the products fit in u128.
        let cost = |i: usize, other: usize| {
            let e = u128::from(self.ewma(i).min(1 << 50)) + 1;
            let w = u128::from(self.weights[i].max(1));
            e * (u128::from(self.in_flight[i]) + w) * u128::from(self.weights[other].max(1))
        };
        cost(a, b) < cost(b, a)
    }

    /// Fewest in-flight per unit of weight. Among equals, the first in member order from the
    /// next entry of the smooth weighted order, so ties (an idle shard) follow nginx's weighted
    /// sequence.
    pub(super) fn least_conn<F: Fn(usize) -> bool>(
        &mut self,
        table: &Table,
        tier: &Tier,
        t: usize,
        usable: &F,
    ) -> Option<usize> {
        let n = tier.members.len();
        let seq = &tier.schedule.seq;
        let start = if seq.is_empty() {
            let c = self.cursor[t] % n;
            self.cursor[t] = c + 1;
            c
        } else {
            let c = self.cursor[t] % seq.len();
            self.cursor[t] = c + 1;
            seq[c] as usize
        };
        self.least_loaded(table, t, tier.member(start), usable)
    }

    /// The usable member of tier `t` (and of the table) with the lowest score, the first in
    /// cyclic member order from member `start` among equals.
    pub(super) fn least_loaded<F: Fn(usize) -> bool>(
        &self,
        table: &Table,
        t: usize,
        start: usize,
        usable: &F,
    ) -> Option<usize> {
        debug_assert!(self.keeps_levels, "least_loaded without load levels");
        self.levels[t].first(&table.tier_bits[t], start, usable)
    }

    /// Power of two choices: two weighted random draws, the lower cost wins (the first on a
    /// tie, so an idle shard picks exactly by weight).
    pub(super) fn p2c<F: Fn(usize) -> bool>(
        &mut self,
        table: &Table,
        tier: &Tier,
        t: usize,
        usable: &F,
    ) -> Option<usize> {
        self.clock += 1;
        let mut first: Option<usize> = None;
        for _ in 0..P2C_DRAWS {
            let m = tier.member(tier.schedule.draw(self.next_u64())?);
            if !usable(m) {
                continue;
            }
            match first {
                None => first = Some(m),
                Some(f) => return Some(if self.cheaper(m, f) { m } else { f }),
            }
        }
        first.or_else(|| self.least_loaded(table, t, tier.member(0), usable))
    }

    /// Walks the members a hash algorithm offers for a key (`at(step)`, a tier position).
    /// Plain: the first usable one within [`HASH_TRIES`] steps, then weighted round robin
    /// (nginx). Bounded: the first usable one under the bound, then the least loaded.
    pub(super) fn hash_walk<F: Fn(usize) -> bool>(
        &mut self,
        table: &Table,
        tier: &Tier,
        t: usize,
        len: usize,
        at: impl Fn(usize) -> Option<usize>,
        usable: &F,
    ) -> Option<usize> {
        let Some(c) = table.bound else {
            for step in 0..HASH_TRIES.min(len) {
                let m = tier.member(at(step)?);
                if usable(m) {
                    return Some(m);
                }
            }
            return self.weighted(tier, t, usable);
        };
        // Accept member m while in_flight[m] < c × (tier in-flight + 1) × weight / total.
        // Summed over the tier the bounds exceed the in-flight count, so some member is
        // below its bound; after the pick it holds at most ceil(c × average × weight share).
        let per_weight = c * (self.tier_in_flight[t] + 1) as f64 / tier.total_weight.max(1) as f64;
        let steps = len.min(HASH_TRIES + BOUNDED_STEPS_PER_MEMBER * tier.members.len());
        for step in 0..steps {
            let pos = at(step)?;
            let m = tier.member(pos);
            let bound = per_weight * f64::from(tier.weights[pos]);
            if f64::from(self.in_flight[m]) < bound && usable(m) {
                return Some(m);
            }
        }
        self.least_loaded(table, t, tier.member(0), usable)
    }
}
