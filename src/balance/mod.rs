//! Stage 4 of the pipeline, *balance*: picks a backend of the routed upstream.
//!
//! Two halves, split by who may write them:
//! - [`Table`]: immutable, built once per config or health change from a [`Spec`] and the
//!   upstream's [`Member`]s, shared read-only by every shard in an `Arc`. It holds the weighted
//!   schedule, the ketama ring, the Maglev table and the sticky cookie values.
//! - [`ShardBalancer`]: per shard and per upstream, mutable, never shared: round-robin
//!   cursors, shard-local in-flight counts, peak-EWMA latencies, an RNG seeded from the shard
//!   id. A pick reads the table and this state: **no lock, no atomic, no allocation**.
//!
//! ```text
//! let table = Arc::new(Table::build(&spec, &members));          // config / health change
//! let mut b = ShardBalancer::with_weights(&spec, weights, shard); // once per shard
//! let key = key::request_key(&hash_key, KeySource { .. });       // hash algorithms only
//! let i = b.pick(&table, key, |i| usable(i))?;                   // or pick_sticky(..)
//! b.started(i);  ...  b.finished(i, latency);                     // around the exchange
//! ```
//!
//! `pick` returns a member index (into the `members` the table was built from). `usable(i)`
//! is the caller's view of the moment (passive failures, the request's own tries). Backups
//! (`backup = true`) are considered only when no primary is usable. Members marked down by
//! health checks can be left out of the table itself with [`Table::build_with`]: the ring,
//! Maglev table and schedule are then built without them.
//!
//! Algorithms (docs/BALANCING.md has the details and the measured quality):
//! - `RoundRobin`: every usable member in turn, weights ignored.
//! - `Weighted`: nginx's smooth weighted round robin, read from a precomputed period.
//! - `Random`: weighted random.
//! - `LeastConn`: fewest shard-local in-flight requests per unit of weight; ties broken by the
//!   smooth weighted order.
//! - `P2c`: two weighted random draws, the one with the lower in-flight × peak-EWMA cost.
//! - `ConsistentHash`: nginx's `hash $key consistent` ketama ring, pick for pick.
//! - `Maglev`: Maglev lookup table.
//!
//! `bounded_load = c` (hash algorithms): a member takes a new request only while its
//! in-flight count is below `c × (in-flight + 1) × weight / total weight` of its tier; the
//! search moves on along the ring (or table), and ends at the least-loaded usable member.
//!
//! Sticky sessions: [`ShardBalancer::pick_sticky`] honours a cookie value from
//! [`Table::sticky_value`] while its member is usable, and otherwise picks and asks for the
//! cookie to be set ([`Table::write_set_cookie`]).
//!
//! Wiring: `snapshot::Shared` builds one `Table` per upstream at start-up; each shard owns a
//! `ShardBalancer` per upstream (in `upstream::state::Backends`); `proxy::prepare` computes
//! the key and resolves the sticky cookie while the head is still in its buffer.

mod ketama;
pub mod key;
mod levels;
mod load;
mod maglev;
mod picker;
mod schedule;
mod sticky;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod hash_tests;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use key::{key_hash, request_key, KeySource};
pub use picker::{ShardBalancer, StickyPick};
pub use sticky::SameSite;

/// The `balance = ...` algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    RoundRobin,
    Weighted,
    Random,
    LeastConn,
    P2c,
    ConsistentHash,
    Maglev,
}

impl Algorithm {
    /// The name as written in the configuration (`balance = "..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::Weighted => "weighted",
            Algorithm::Random => "random",
            Algorithm::LeastConn => "least_conn",
            Algorithm::P2c => "p2c",
            Algorithm::ConsistentHash => "consistent_hash",
            Algorithm::Maglev => "maglev",
        }
    }

    /// Whether picks follow a request key (`hash_key`, `bounded_load` apply).
    pub fn is_hash(self) -> bool {
        matches!(self, Algorithm::ConsistentHash | Algorithm::Maglev)
    }
}

/// What a hash algorithm hashes (`hash_key = ...`); see [`key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    /// Lower-case field name.
    Header(String),
    Cookie(String),
    Path,
    Uri,
    Query(String),
}

/// `sticky = { cookie = "NAME", ttl = "1h", secret = "...", secure, same_site }`.
#[derive(Clone, PartialEq, Eq)]
pub struct StickySpec {
    pub cookie: String,
    /// The cookie's `Max-Age`; `None`: a session cookie (`ttl = "session"`).
    pub ttl: Option<Duration>,
    /// `Secure`: `None` sets it on responses to TLS clients (and always with
    /// `SameSite=None`, which browsers take only with it).
    pub secure: Option<bool>,
    pub same_site: Option<SameSite>,
    /// Keys the cookie values ([`sticky`]): without it a value is a public hash of the
    /// backend's name, which names that can be guessed (addresses) give away.
    pub secret: Option<String>,
}

impl std::fmt::Debug for StickySpec {
    // The secret stays out of logs and of the reload's settings comparison text.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StickySpec")
            .field("cookie", &self.cookie)
            .field("ttl", &self.ttl)
            .field("secure", &self.secure)
            .field("same_site", &self.same_site)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .finish()
    }
}

/// An upstream's balancing settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Spec {
    pub algorithm: Algorithm,
    pub hash_key: Option<HashKey>,
    /// `c` of consistent hashing with bounded loads (hash algorithms only; values below 1
    /// act as 1).
    pub bounded_load: Option<f64>,
    pub sticky: Option<StickySpec>,
}

impl Spec {
    pub fn new(algorithm: Algorithm) -> Spec {
        Spec {
            algorithm,
            hash_key: None,
            bounded_load: None,
            sticky: None,
        }
    }
}

/// One backend of the upstream, in configuration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The address as written (`127.0.0.1:8081`): ketama hashes this text, as nginx hashes
    /// its `server` argument; Maglev and sticky cookies hash it too.
    pub name: String,
    /// 1..=10000 in config; 0 is treated as 1.
    pub weight: u32,
    pub backup: bool,
}

pub(crate) const PRIMARY: usize = 0;
pub(crate) const BACKUP: usize = 1;

/// The members of one tier (primaries or backups) and what the algorithm needs over them.
/// "Position" below means an index into `members`.
#[derive(Debug, Default)]
struct Tier {
    /// Member indices, in configuration order.
    members: Vec<u32>,
    weights: Vec<u32>,
    total_weight: u64,
    schedule: schedule::Schedule,
    ring: ketama::Ring,
    maglev: maglev::Maglev,
}

impl Tier {
    fn build(algorithm: Algorithm, members: &[Member], picked: &[u32]) -> Tier {
        let weights: Vec<u32> = picked
            .iter()
            .map(|&i| members[i as usize].weight.max(1))
            .collect();
        let names: Vec<&str> = picked
            .iter()
            .map(|&i| members[i as usize].name.as_str())
            .collect();
        let ring = if algorithm == Algorithm::ConsistentHash {
            ketama::Ring::build(&names, &weights)
        } else {
            ketama::Ring::default()
        };
        let maglev = if algorithm == Algorithm::Maglev {
            maglev::Maglev::build(&names, &weights)
        } else {
            maglev::Maglev::default()
        };
        Tier {
            members: picked.to_vec(),
            total_weight: weights.iter().map(|&w| u64::from(w)).sum(),
            schedule: schedule::Schedule::build(&weights),
            weights,
            ring,
            maglev,
        }
    }

    #[inline]
    fn member(&self, pos: usize) -> usize {
        self.members.get(pos).map_or(usize::MAX, |&m| m as usize)
    }
}

/// Immutable balancing data of one upstream; see the module documentation.
#[derive(Debug)]
pub struct Table {
    algorithm: Algorithm,
    /// `c` of bounded loads, ≥ 1, when enabled for a hash algorithm.
    bound: Option<f64>,
    /// Number of members the table was built from.
    len: usize,
    /// Per member: 0 primary, 1 backup.
    tier_of: Vec<u8>,
    /// Per tier, bitset (by member index) of the members in the table's tier.
    tier_bits: [Vec<u64>; 2],
    tiers: [Tier; 2],
    sticky: sticky::Sticky,
    sticky_spec: Option<StickySpec>,
}

impl Table {
    /// A table over all `members`.
    pub fn build(spec: &Spec, members: &[Member]) -> Table {
        Table::build_with(spec, members, |_| true)
    }

    /// A table over the members for which `up(i)` holds (the others are never picked; indices
    /// stay those of `members`). Call again on every health change.
    pub fn build_with(spec: &Spec, members: &[Member], up: impl Fn(usize) -> bool) -> Table {
        let pick = |backup: bool| -> Vec<u32> {
            (0..members.len())
                .filter(|&i| members[i].backup == backup && up(i))
                .map(|i| i as u32)
                .collect()
        };
        let bound = match spec.bounded_load {
            Some(c) if spec.algorithm.is_hash() => Some(if c >= 1.0 { c } else { 1.0 }),
            _ => None,
        };
        let tiers = [
            Tier::build(spec.algorithm, members, &pick(false)),
            Tier::build(spec.algorithm, members, &pick(true)),
        ];
        let tier_bits = [0, 1].map(|t| {
            let mut bits = vec![0u64; members.len().div_ceil(64)];
            for &m in &tiers[t].members {
                bits[m as usize / 64] |= 1u64 << (m % 64);
            }
            bits
        });
        Table {
            algorithm: spec.algorithm,
            bound,
            len: members.len(),
            tier_of: members.iter().map(|m| u8::from(m.backup)).collect(),
            tier_bits,
            tiers,
            sticky: sticky::Sticky::build(
                members.iter().map(|m| m.name.as_str()),
                spec.sticky.as_ref().and_then(|s| s.secret.as_deref()),
            ),
            sticky_spec: spec.sticky.clone(),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The opaque sticky cookie value of member `i` ("" when out of range).
    pub fn sticky_value(&self, i: usize) -> &str {
        self.sticky.value(i)
    }

    /// The member a sticky cookie value names, if it names one of this table.
    pub fn sticky_lookup(&self, value: &[u8]) -> Option<usize> {
        self.sticky.lookup(value)
    }

    /// The sticky settings, when the upstream has them.
    pub fn sticky(&self) -> Option<&StickySpec> {
        self.sticky_spec.as_ref()
    }

    /// Appends the `Set-Cookie` value naming member `i`
    /// (`NAME=VALUE; Max-Age=SECS; Path=/; HttpOnly`); nothing without sticky settings.
    /// `tls`: the response goes to a TLS client (the cookie is `Secure` unless `secure` says).
    pub fn write_set_cookie(&self, i: usize, tls: bool, out: &mut Vec<u8>) {
        if let Some(s) = &self.sticky_spec {
            let secure = s.secure.unwrap_or(tls) || s.same_site == Some(SameSite::None);
            let cookie = (s.cookie.as_str(), self.sticky_value(i));
            let ttl = s.ttl.map(|t| t.as_secs());
            sticky::write_set_cookie(cookie, ttl, secure, s.same_site, out);
        }
    }
}

/// Seeded 64-bit hash of a name (FNV-1a, then the splitmix64 finaliser): stable across
/// builds, restarts and shards. Used for Maglev permutations and sticky values.
pub(crate) fn hash64(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

pub(crate) fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
