//! Beside stage 3½ (*admit* by rate), off the request path: the fleet store. With
//! `rate_limits.store = "redis://[USER:PASSWORD@]HOST:PORT"`, several edgeshard processes (hosts behind ECMP
//! or DNS) share each key's rate. Each process keeps admitting from its own buckets
//! ([`crate::ratelimit`], no round trip per request); this thread, every
//! `rate_limits.sync_interval`, adds what the process admitted per key since the last sync to a
//! counter in Redis (`INCRBY`, one pipeline for all active keys) and learns from the reply how
//! much the *other* processes admitted meanwhile, which it charges to the local bucket
//! ([`RateTable::charge`]). Every bucket thus drains at the fleet's pace, a sync interval
//! late: together the processes admit the rate plus about rate × interval / 2, plus one burst
//! per process when a key starts.
//!
//! When Redis cannot be reached the processes simply keep their local buckets (each admits
//! the full rate on its own): the failure is counted (`edgeshard_rate_limit_store_syncs_total
//! {result="failed"}`), logged once per outage, and the connection is retried every second.
//! What was admitted during the outage is not reported afterwards (it would charge the others
//! for the past).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ratelimit::RateTable;

/// A key stays synced this many rounds after its process last admitted one of its requests
/// (so the others' spending keeps reaching a bucket that is still in use).
const KEEP_ROUNDS: u64 = 100;

/// Counters in Redis expire this long after their last update.
const KEY_TTL_MS: u64 = 120_000;

/// Keys per pipeline: a round with more sends several, so no single one holds Redis up.
const PIPELINE_KEYS: usize = 4096;

/// One key to sync: its slot's tag, its fleet name, the tokens spent since the last sync.
#[derive(Clone, Copy)]
struct Entry {
    tag: u64,
    name: u64,
    spent: u64,
}

/// What the thread remembers of a key between syncs.
struct Known {
    /// The fleet's total for the key at the last sync.
    total: u64,
    /// The last round in which this process spent tokens of it.
    active: u64,
}

/// Starts the store thread for `table`, syncing with the Redis server `store` every
/// `every`. It runs until the process exits.
pub fn spawn(
    table: Arc<RateTable>,
    store: crate::config::RateStore,
    every: Duration,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ratelimit-store".into())
        .spawn(move || Store::new(table, store, every).run())
}

struct Store {
    table: Arc<RateTable>,
    /// `HOST:PORT`, for the log.
    addr: String,
    /// Where and as whom to connect.
    info: redis::RedisResult<redis::ConnectionInfo>,
    every: Duration,
    conn: Option<redis::Connection>,
    known: HashMap<u64, Known>,
    round: u64,
    /// No connection attempt before this (after a failure).
    retry_at: Instant,
    /// The store was reachable at the last attempt (for logging transitions only).
    up: bool,
}

impl Store {
    fn new(table: Arc<RateTable>, store: crate::config::RateStore, every: Duration) -> Store {
        use redis::IntoConnectionInfo;
        let info = format!("redis://{}/", store.addr)
            .into_connection_info()
            .map(|info| {
                let mut settings = info.redis_settings().clone();
                if let Some(user) = &store.username {
                    settings = settings.set_username(user);
                }
                if let Some(password) = &store.password {
                    settings = settings.set_password(password);
                }
                info.set_redis_settings(settings)
            });
        Store {
            table,
            addr: store.addr,
            info,
            every,
            conn: None,
            known: HashMap::new(),
            round: 0,
            retry_at: Instant::now(),
            up: true,
        }
    }

    fn run(mut self) {
        loop {
            std::thread::sleep(self.every);
            self.round += 1;
            let batch = self.collect();
            if batch.is_empty() || Instant::now() < self.retry_at {
                continue;
            }
            match self.sync(&batch) {
                Ok(totals) => {
                    self.table.store_ok.fetch_add(1, Ordering::Relaxed);
                    if !self.up {
                        tracing::info!(store = %self.addr, "rate-limit store reachable again: buckets shared with the fleet");
                        self.up = true;
                    }
                    self.apply(&batch, &totals);
                }
                Err(e) => {
                    self.table.store_failed.fetch_add(1, Ordering::Relaxed);
                    if self.up {
                        tracing::warn!(store = %self.addr, error = %e, "rate-limit store unreachable: each process limits on its own until it is back");
                        self.up = false;
                    }
                    self.conn = None;
                    self.retry_at = Instant::now() + Duration::from_secs(1);
                    // The next sync only takes a new baseline: what the others spent meanwhile
                    // (and what this process did, if Redis took it before the reply was lost)
                    // is not charged after the fact.
                    for k in self.known.values_mut() {
                        k.total = u64::MAX;
                    }
                }
            }
        }
    }

    /// Every key to sync, with what it spent since the last sync.
    fn collect(&mut self) -> Vec<Entry> {
        let mut batch = Vec::new();
        for slot in self.table.slots.iter() {
            let tag = slot.tag.load(Ordering::Acquire);
            if tag == 0 {
                continue;
            }
            // A load first: most slots spent nothing, and a swap would write their line.
            let spent = match slot.spent.load(Ordering::Relaxed) {
                0 => 0,
                _ => slot.spent.swap(0, Ordering::Relaxed),
            };
            let round = self.round;
            let keep = if spent > 0 {
                self.known
                    .entry(tag)
                    .or_insert(Known {
                        total: u64::MAX,
                        active: round,
                    })
                    .active = round;
                true
            } else {
                self.known
                    .get(&tag)
                    .is_some_and(|k| round - k.active < KEEP_ROUNDS)
            };
            if keep {
                batch.push(Entry {
                    tag,
                    name: slot.name.load(Ordering::Relaxed),
                    spent,
                });
            }
        }
        // Forget keys no longer synced.
        let round = self.round;
        self.known.retain(|_, k| round - k.active < KEEP_ROUNDS);
        // Bounded under churn: never more keys than slots for long.
        if self.known.len() > self.table.slots.len() {
            self.known.retain(|_, k| round - k.active < 2);
        }
        batch
    }

    /// `INCRBY` (and a fresh expiry) per key, in pipelines of [`PIPELINE_KEYS`]; the fleet's
    /// new totals.
    fn sync(&mut self, batch: &[Entry]) -> redis::RedisResult<Vec<u64>> {
        let timeout = self.every.max(Duration::from_millis(200));
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => {
                let info = self.info.as_ref().map_err(Clone::clone)?;
                let client = redis::Client::open(info.clone())?;
                let conn = client.get_connection_with_timeout(timeout)?;
                conn.set_read_timeout(Some(timeout))?;
                conn.set_write_timeout(Some(timeout))?;
                self.conn.insert(conn)
            }
        };
        let mut totals = Vec::with_capacity(batch.len());
        for part in batch.chunks(PIPELINE_KEYS) {
            let mut pipe = redis::pipe();
            for e in part {
                let key = format!("edgeshard:rl:{:016x}", e.name);
                pipe.cmd("INCRBY").arg(&key).arg(e.spent);
                pipe.cmd("PEXPIRE").arg(&key).arg(KEY_TTL_MS).ignore();
            }
            totals.extend(pipe.query::<Vec<u64>>(conn)?);
        }
        Ok(totals)
    }

    /// Charges each key what the rest of the fleet spent since the last sync.
    fn apply(&mut self, batch: &[Entry], totals: &[u64]) {
        let now = self.table.now_ns();
        for (e, &total) in batch.iter().zip(totals) {
            let known = self.known.entry(e.tag).or_insert(Known {
                total: u64::MAX,
                active: self.round,
            });
            // First sight (or the counter expired and started again): nothing to charge.
            let others = match known.total {
                u64::MAX => 0,
                before => total.saturating_sub(before).saturating_sub(e.spent),
            };
            known.total = total;
            if others > 0 {
                self.table.charge(e.tag, others, now);
            }
        }
    }
}
