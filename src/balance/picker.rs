//! Stage "balance", the pick: [`ShardBalancer`], the per-shard, per-upstream state, and the
//! pick of every algorithm over a [`Table`]. A pick takes no lock, touches no shared atomic
//! and allocates nothing: it reads the table and this shard's own vectors.
//!
//! Every algorithm ends with a full fallback, so a tier's pick fails only when none of its
//! members is usable; only then are backups tried.

use std::time::Duration;

use super::levels::Levels;
use super::schedule::below;
use super::{mix64, Algorithm, Spec, Table, Tier, BACKUP, PRIMARY};
use crate::sample::Rng;

/// Schedule entries a `weighted` pick reads past unusable members before it falls back to
/// nginx's scan over the usable ones.
const WEIGHTED_PROBES: usize = 64;
/// Draws of `random` before it falls back to a draw among the usable members (nginx's random
/// module also gives up after 20).
const RANDOM_TRIES: usize = 20;
/// Ring points (or Maglev slots) a hash pick examines, as nginx's `tries > 20`, before it
/// falls back to weighted round robin.
pub(super) const HASH_TRIES: usize = 21;

/// Per-shard, per-upstream balancing state. Build it with the member list of the tables it
/// will pick from (a table of another length makes every pick `None`); it stays valid across
/// tables rebuilt for health changes over the same list.
#[derive(Debug)]
pub struct ShardBalancer {
    pub(super) len: usize,
    pub(super) weights: Vec<u32>,
    pub(super) tier_of: Vec<u8>,
    /// Shard-local in-flight requests per member (`started` − `finished`).
    pub(super) in_flight: Vec<u32>,
    /// `(in_flight << 32) / weight`: the least-conn order, kept by `started`/`finished`.
    pub(super) score: Vec<u64>,
    /// Members of each tier grouped by `score`, lowest first (`levels.rs`).
    pub(super) levels: [Levels; 2],
    /// `score` and `levels` are kept only where a pick can read them (`least_loaded`):
    /// least_conn, p2c's fallback and bounded-load hashing. Moving a member between levels
    /// twice per request cost ~400 instructions under round robin, which never reads them.
    pub(super) keeps_levels: bool,
    /// In-flight requests per tier.
    pub(super) tier_in_flight: [u64; 2],
    /// Peak-EWMA latency per member, in ns, as of `stamp`.
    pub(super) ewma_ns: Vec<u64>,
    pub(super) stamp: Vec<u64>,
    /// P2C picks so far: the clock of the EWMA decay.
    pub(super) clock: u64,
    /// P2C picks after which an EWMA not refreshed is halved.
    pub(super) half_life: u64,
    /// Round-robin / schedule cursor per tier.
    pub(super) cursor: [usize; 2],
    /// nginx's `current_weight` per member, for the scan fallback of smooth weighted picks.
    pub(super) current: Vec<i64>,
    /// False inside [`aside`](ShardBalancer::aside): a pick then leaves the rotation as it was.
    commit: bool,
    rng: Rng,
}

/// The result of [`ShardBalancer::pick_sticky`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StickyPick {
    pub index: usize,
    /// The response should carry the sticky cookie (see [`Table::write_set_cookie`]): the
    /// request had no valid cookie for a usable member.
    pub set_cookie: bool,
}

impl ShardBalancer {
    /// From each member's weight and whether it is a backup: what a shard builds for every
    /// upstream at each reload, without the members' names (each an allocation, which only
    /// the shared tables hash). `shard` seeds the RNG and the start of the round-robin cursors
    /// (so that shards do not move in lock-step; shard 0 starts where nginx starts).
    pub fn with_weights(
        spec: &Spec,
        members: impl Iterator<Item = (u32, bool)>,
        shard: usize,
    ) -> ShardBalancer {
        let (weights, tier_of): (Vec<u32>, Vec<u8>) = members
            .map(|(w, backup)| (w.max(1), u8::from(backup)))
            .unzip();
        let n = weights.len();
        let levels = [0, 1].map(|tier| Levels::new(n, (0..n).filter(|&i| tier_of[i] == tier)));
        ShardBalancer {
            len: n,
            weights,
            tier_of,
            levels,
            in_flight: vec![0; n],
            score: vec![0; n],
            keeps_levels: matches!(spec.algorithm, Algorithm::LeastConn | Algorithm::P2c)
                || (spec.algorithm.is_hash() && spec.bounded_load.is_some()),
            tier_in_flight: [0; 2],
            ewma_ns: vec![0; n],
            stamp: vec![0; n],
            clock: 0,
            half_life: (16 * n as u64).max(64),
            cursor: [shard; 2],
            current: vec![0; n],
            commit: true,
            rng: Rng::seeded(mix64(0x5368_6172_6442_616c ^ shard as u64)),
        }
    }

    /// Picks a member for a request. `key`: [`super::key_hash`] of the request's hash key
    /// (hash algorithms; `None` when the request has none, which picks by weighted round robin
    /// as nginx does for an empty key). `usable(i)`: member `i` may be picked now.
    pub fn pick(
        &mut self,
        table: &Table,
        key: Option<u32>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if table.len != self.len {
            return None;
        }
        // The table and this balancer come from one upstream's spec: only then are the load
        // levels kept for every table that reads them.
        debug_assert!(
            self.keeps_levels
                || !(matches!(table.algorithm(), Algorithm::LeastConn | Algorithm::P2c)
                    || table.bound.is_some()),
            "a {} table picked by a balancer that keeps no load levels",
            table.algorithm().as_str()
        );
        self.pick_tier(table, PRIMARY, key, &usable)
            .or_else(|| self.pick_tier(table, BACKUP, key, &usable))
    }

    /// [`pick`](Self::pick) preferring, within the tier it picks from, a member for which
    /// `room` holds as well (a breaker queue passes over full backends): the backup tier is
    /// still tried only when no primary is usable, full or not.
    pub fn pick_preferring(
        &mut self,
        table: &Table,
        key: Option<u32>,
        usable: impl Fn(usize) -> bool,
        room: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if table.len != self.len {
            return None;
        }
        let with_room = |i: usize| usable(i) && room(i);
        [PRIMARY, BACKUP].into_iter().find_map(|t| {
            self.pick_tier(table, t, key, &with_room)
                .or_else(|| self.pick_tier(table, t, key, &usable))
        })
    }

    /// Runs `f`'s picks aside from the rotation: the cursors are as before it afterwards
    /// (random draws still advance the generator), and round robin and weighted picks (and
    /// a hash algorithm's for a request without a key) are (weighted) random draws among the
    /// usable members, which leave nginx's smooth-weighted state alone. For a second
    /// pick of one request (a retry or connect failover, or slow start's pick without the
    /// ramping backend): committed, it moved the cursor back onto the member the first pick
    /// had just passed, so a backend that failed every request got every next first try; and
    /// from the cursor, all of a failing member's retries went to the member after it.
    pub fn aside<R>(&mut self, f: impl FnOnce(&mut ShardBalancer) -> R) -> R {
        let cursor = self.cursor;
        self.commit = false;
        let r = f(self);
        self.commit = true;
        self.cursor = cursor;
        r
    }

    /// [`pick`](Self::pick) honouring a sticky cookie value: the member it names is kept while
    /// it is usable and in the table (a backup only while no primary is usable).
    pub fn pick_sticky(
        &mut self,
        table: &Table,
        cookie: Option<&[u8]>,
        key: Option<u32>,
        usable: impl Fn(usize) -> bool,
    ) -> Option<StickyPick> {
        if table.len != self.len {
            return None;
        }
        if let Some(i) = cookie.and_then(|v| table.sticky_lookup(v)) {
            let t = usize::from(table.tier_of.get(i).copied().unwrap_or(0)).min(BACKUP);
            let in_table = table.tiers[t].members.binary_search(&(i as u32)).is_ok();
            let allowed = t == PRIMARY
                || !table.tiers[PRIMARY]
                    .members
                    .iter()
                    .any(|&m| usable(m as usize));
            if in_table && allowed && usable(i) {
                return Some(StickyPick {
                    index: i,
                    set_cookie: false,
                });
            }
        }
        let index = self.pick(table, key, usable)?;
        Some(StickyPick {
            index,
            set_cookie: table.sticky_spec.is_some(),
        })
    }

    /// A request to member `i` has started (in-flight + 1).
    pub fn started(&mut self, i: usize) {
        let Some(n) = self.in_flight.get_mut(i) else {
            return;
        };
        *n = n.saturating_add(1);
        let t = usize::from(self.tier_of[i]).min(BACKUP);
        self.tier_in_flight[t] += 1;
        self.update_score(i);
    }

    /// A request to member `i` has finished after `latency` (in-flight − 1, peak-EWMA update).
    pub fn finished(&mut self, i: usize, latency: Duration) {
        let Some(n) = self.in_flight.get_mut(i) else {
            return;
        };
        if *n > 0 {
            *n -= 1;
            let t = usize::from(self.tier_of[i]).min(BACKUP);
            self.tier_in_flight[t] = self.tier_in_flight[t].saturating_sub(1);
        }
        self.update_score(i);
        self.record_latency(i, latency);
    }

    /// A request to member `i` ended without a response to time (its connect failed):
    /// in-flight − 1, no latency sample (a quick failure must not look like a fast backend).
    pub fn abandoned(&mut self, i: usize) {
        let Some(n) = self.in_flight.get_mut(i) else {
            return;
        };
        if *n > 0 {
            *n -= 1;
            let t = usize::from(self.tier_of[i]).min(BACKUP);
            self.tier_in_flight[t] = self.tier_in_flight[t].saturating_sub(1);
        }
        self.update_score(i);
    }

    /// Takes `n` requests in flight to member `i` over from the balancer this one replaces
    /// (a reload): least_conn, p2c and bounded loads see the load that was there.
    pub fn carry_in_flight(&mut self, i: usize, n: u32) {
        let Some(count) = self.in_flight.get_mut(i) else {
            return;
        };
        let t = usize::from(self.tier_of[i]).min(BACKUP);
        self.tier_in_flight[t] =
            self.tier_in_flight[t].saturating_sub(u64::from(*count)) + u64::from(n);
        *count = n;
        self.update_score(i);
    }

    /// Shard-local in-flight requests of member `i`.
    pub fn in_flight(&self, i: usize) -> u32 {
        self.in_flight.get(i).copied().unwrap_or(0)
    }

    fn pick_tier<F: Fn(usize) -> bool>(
        &mut self,
        table: &Table,
        t: usize,
        key: Option<u32>,
        usable: &F,
    ) -> Option<usize> {
        let tier = &table.tiers[t];
        if tier.members.is_empty() {
            return None;
        }
        match (table.algorithm, key) {
            // A pick aside draws among the usable members: from the cursor, every retry of
            // a failing member (or re-pick of a ramping one) went to the member after it.
            (Algorithm::RoundRobin, _) if !self.commit => self.uniform(tier, usable),
            (Algorithm::Weighted, _) | (Algorithm::ConsistentHash | Algorithm::Maglev, None)
                if !self.commit =>
            {
                self.random(tier, usable)
            }
            (Algorithm::RoundRobin, _) => self.round_robin(tier, t, usable),
            (Algorithm::Weighted, _) => self.weighted(tier, t, usable),
            (Algorithm::Random, _) => self.random(tier, usable),
            (Algorithm::LeastConn, _) => self.least_conn(table, tier, t, usable),
            (Algorithm::P2c, _) => self.p2c(table, tier, t, usable),
            (Algorithm::ConsistentHash | Algorithm::Maglev, None) => self.weighted(tier, t, usable),
            (Algorithm::ConsistentHash, Some(k)) => {
                let ring = &tier.ring;
                let start = ring.start(k);
                let at = |step: usize| ring.owner(start.wrapping_add(step));
                self.hash_walk(table, tier, t, ring.len(), at, usable)
            }
            (Algorithm::Maglev, Some(k)) => {
                let mg = &tier.maglev;
                let at = |step: usize| mg.owner(mg.probe(k, step));
                self.hash_walk(table, tier, t, mg.len(), at, usable)
            }
        }
    }

    /// Every usable member in turn from the cursor; weights ignored.
    fn round_robin<F: Fn(usize) -> bool>(
        &mut self,
        tier: &Tier,
        t: usize,
        usable: &F,
    ) -> Option<usize> {
        let n = tier.members.len();
        let mut pos = self.cursor[t];
        if pos >= n {
            pos %= n;
        }
        for _ in 0..n {
            let m = tier.member(pos);
            pos += 1;
            if pos == n {
                pos = 0;
            }
            if usable(m) {
                self.cursor[t] = pos;
                return Some(m);
            }
        }
        None
    }

    /// nginx's smooth weighted round robin, read from the precomputed period. An unusable
    /// member's entries are passed over, which keeps the usable members' shares exactly in
    /// proportion to their weights; after [`WEIGHTED_PROBES`] unusable entries (or without a
    /// stored period) the pick is nginx's own scan over the usable members.
    pub(super) fn weighted<F: Fn(usize) -> bool>(
        &mut self,
        tier: &Tier,
        t: usize,
        usable: &F,
    ) -> Option<usize> {
        let seq = &tier.schedule.seq;
        let l = seq.len();
        if l == 0 {
            return self.smooth_scan(tier, usable);
        }
        let mut c = self.cursor[t];
        if c >= l {
            c %= l;
        }
        for _ in 0..l.min(WEIGHTED_PROBES) {
            let m = tier.member(seq[c] as usize);
            c += 1;
            if c == l {
                c = 0;
            }
            if usable(m) {
                self.cursor[t] = c;
                return Some(m);
            }
        }
        self.cursor[t] = c;
        if l <= WEIGHTED_PROBES {
            return None; // the whole period was read: no member is usable
        }
        self.smooth_scan(tier, usable)
    }

    /// nginx's `ngx_http_upstream_get_peer` over the usable members: O(n).
    fn smooth_scan<F: Fn(usize) -> bool>(&mut self, tier: &Tier, usable: &F) -> Option<usize> {
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for (pos, &m) in tier.members.iter().enumerate() {
            let m = m as usize;
            if !usable(m) {
                continue;
            }
            let w = i64::from(tier.weights[pos]);
            self.current[m] += w;
            total += w;
            if best.is_none_or(|b| self.current[m] > self.current[b]) {
                best = Some(m);
            }
        }
        let b = best?;
        self.current[b] -= total;
        Some(b)
    }

    /// One of the usable members, each as likely; weights ignored (round robin's picks aside).
    fn uniform<F: Fn(usize) -> bool>(&mut self, tier: &Tier, usable: &F) -> Option<usize> {
        let members = || {
            tier.members
                .iter()
                .map(|&m| m as usize)
                .filter(|&m| usable(m))
        };
        let n = members().count() as u64;
        if n == 0 {
            return None;
        }
        let k = below(self.next_u64(), n);
        members().nth(usize::try_from(k).unwrap_or(0))
    }

    /// Weighted random: [`RANDOM_TRIES`] draws, then one draw among the usable members.
    fn random<F: Fn(usize) -> bool>(&mut self, tier: &Tier, usable: &F) -> Option<usize> {
        for _ in 0..RANDOM_TRIES {
            let m = tier.member(tier.schedule.draw(self.next_u64())?);
            if usable(m) {
                return Some(m);
            }
        }
        let total: u64 = tier
            .members
            .iter()
            .zip(&tier.weights)
            .filter(|(&m, _)| usable(m as usize))
            .map(|(_, &w)| u64::from(w))
            .sum();
        let mut x = below(self.next_u64(), total);
        for (&m, &w) in tier.members.iter().zip(&tier.weights) {
            if !usable(m as usize) {
                continue;
            }
            if x < u64::from(w) {
                return Some(m as usize);
            }
            x -= u64::from(w);
        }
        None
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.rng.next_u64()
    }
}
