//! Feeds stage 4, *balance*: the [`HealthBoard`] publishes each backend's [`Health`] from
//! the one prober thread to every shard. It is created once, shared as an `Arc`, and read
//! on the request path with one atomic load per candidate backend: no lock, no
//! read-modify-write, no cache line written on the request path.
//!
//! ## Layout
//! Slot `i` is backend `i` of the flat backend list (`shard::Shared::backends`). The hot part
//! (`state: AtomicU8` per backend, and `generation`) is written only on a transition, which
//! is rare, so the cache lines the shards read stay shared in every core's cache. The probe
//! counters, written after every probe, live in a separate allocation so that they never
//! invalidate those lines.
//!
//! ## Memory ordering
//! A writer (the prober; later the admin API, through the prober's thread) publishes a
//! transition as: store `changed_ms` and `ramp_ms` (Relaxed), swap `state` (Release), then
//! `generation.fetch_add(1, Release)`.
//! - A pick needs only the state byte of each candidate, and nothing else depends on it:
//!   [`HealthBoard::state`] is a Relaxed load (a plain `mov` on x86-64 and a plain `ldr` on
//!   AArch64). The store becomes visible to every shard within the cache-coherence latency
//!   (well under a microsecond); no ordering with other data is needed for the decision.
//! - Whoever reads the timestamps with the state (slow start) uses [`HealthBoard::slot`],
//!   which loads `state` with Acquire and then the timestamps: it sees timestamps at least
//!   as new as the transition that produced the state it read (it may see a newer timestamp
//!   with the older state while a transition is being published, which only delays a ramp
//!   by one pick).
//! - A shard that caches something derived from the whole board (for example a list of
//!   usable backends or ramped weights) loads [`HealthBoard::generation`] (Acquire); if it
//!   differs from the value it cached, it re-reads the slots. The Release increment comes
//!   after the slot stores, so every slot written before that generation is visible.
//!
//! Transitions of one slot must come from one thread at a time (the prober): two writers
//! racing on the same slot would each publish, and the timestamps could be the older one's.

use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use super::state::Health;

/// The hot, per-backend part of the board.
#[derive(Debug)]
struct Slot {
    state: AtomicU8,
    /// Milliseconds after `epoch` of the last transition, plus one; 0 = never changed.
    changed_ms: AtomicU64,
    /// Milliseconds after `epoch`, plus one, at which the backend last became usable after
    /// being unusable (the slow-start origin); 0 = usable from the start, no ramp.
    ramp_ms: AtomicU64,
}

/// Per-backend probe counters (written by the prober after every probe, read by operators).
#[derive(Debug, Default)]
struct Counters {
    checks_ok: AtomicU64,
    checks_failed: AtomicU64,
    transitions: AtomicU64,
    /// The current run of probe results: `n > 0` successes or `-n` failures in a row (the
    /// prober's `rise`/`fall` count, so that a task a reload starts resumes it).
    streak: AtomicI64,
}

/// A consistent-enough view of one slot, for slow start and operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotView {
    pub state: Health,
    /// When the state last changed; `None` if it never has since the board was created.
    pub changed_at: Option<Instant>,
    /// When the backend last became usable after being unusable: the slow-start origin.
    pub ramp_from: Option<Instant>,
    pub checks_ok: u64,
    pub checks_failed: u64,
    pub transitions: u64,
    /// Consecutive probe results: `n > 0` successes, `-n` failures.
    pub streak: i64,
}

/// The health of every backend of the process, shared by all shards.
#[derive(Debug)]
pub struct HealthBoard {
    slots: Box<[Slot]>,
    counters: Box<[Counters]>,
    generation: AtomicU64,
    epoch: Instant,
}

impl HealthBoard {
    /// A board for `initial.len()` backends, each in its initial state.
    pub fn new(initial: &[Health]) -> HealthBoard {
        HealthBoard::with_epoch(initial, Instant::now())
    }

    /// A board whose timestamps count from `epoch` (a reload's board keeps its
    /// predecessor's, so that copied timestamps stay exact).
    pub fn with_epoch(initial: &[Health], epoch: Instant) -> HealthBoard {
        HealthBoard {
            slots: initial
                .iter()
                .map(|h| Slot {
                    state: AtomicU8::new(h.as_u8()),
                    changed_ms: AtomicU64::new(0),
                    ramp_ms: AtomicU64::new(0),
                })
                .collect(),
            counters: initial.iter().map(|_| Counters::default()).collect(),
            generation: AtomicU64::new(0),
            epoch,
        }
    }

    /// A board for `n` backends, all `Unknown` (usable).
    #[cfg(test)]
    pub fn all_unknown(n: usize) -> HealthBoard {
        HealthBoard::new(&vec![Health::Unknown; n])
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The state of backend `i` (Relaxed; the request-path read). An index outside the board
    /// reads as `Unknown`, which leaves the balancer's decision unchanged.
    #[inline]
    pub fn state(&self, i: usize) -> Health {
        match self.slots.get(i) {
            Some(s) => Health::from_u8(s.state.load(Ordering::Relaxed)),
            None => Health::Unknown,
        }
    }

    /// Whether backend `i` may be picked.
    #[inline]
    pub fn is_usable(&self, i: usize) -> bool {
        self.state(i).is_usable()
    }

    /// Bumped (Release) after every published transition; load it (Acquire) to know whether
    /// anything derived from the board is stale.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The instant the board's timestamps count from.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// State, timestamps and counters of backend `i` (state loaded with Acquire first).
    pub fn slot(&self, i: usize) -> Option<SlotView> {
        let s = self.slots.get(i)?;
        let c = self.counters.get(i)?;
        let state = Health::from_u8(s.state.load(Ordering::Acquire));
        Some(SlotView {
            state,
            changed_at: self.instant(s.changed_ms.load(Ordering::Relaxed)),
            ramp_from: self.instant(s.ramp_ms.load(Ordering::Relaxed)),
            checks_ok: c.checks_ok.load(Ordering::Relaxed),
            checks_failed: c.checks_failed.load(Ordering::Relaxed),
            transitions: c.transitions.load(Ordering::Relaxed),
            streak: c.streak.load(Ordering::Relaxed),
        })
    }

    /// When backend `i` last became usable after being unusable (the slow-start origin), or
    /// `None` if it has been usable since the start or is not usable now.
    pub fn ramp_from(&self, i: usize) -> Option<Instant> {
        self.slot(i)
            .filter(|v| v.state.is_usable())
            .and_then(|v| v.ramp_from)
    }

    /// Publishes `to` for backend `i` at `now`. Returns the previous state, or `None` if `i` is
    /// outside the board or the state did not change (then nothing is written).
    pub fn publish(&self, i: usize, to: Health, now: Instant) -> Option<Health> {
        let s = self.slots.get(i)?;
        let current = Health::from_u8(s.state.load(Ordering::Relaxed));
        if current == to {
            return None;
        }
        let ms = self.ms_since_epoch(now);
        s.changed_ms.store(ms, Ordering::Relaxed);
        if to.is_usable() && !current.is_usable() {
            s.ramp_ms.store(ms, Ordering::Relaxed);
        }
        let from = Health::from_u8(s.state.swap(to.as_u8(), Ordering::Release));
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(c) = self.counters.get(i) {
            c.transitions.fetch_add(1, Ordering::Relaxed);
        }
        Some(from)
    }

    /// Copies backend `j` of `from` into slot `i` of this board, before it is published: a
    /// reload keeps the active-check state of backends that remain. The counters always; the
    /// state, its timestamps and the run of probe results only when `checked` (the backend's
    /// upstream still has a check): without one, nothing would ever change a copied Unhealthy again, and the
    /// backend stays at its built state (Unknown, usable).
    pub fn adopt(&self, i: usize, from: &HealthBoard, j: usize, checked: bool) {
        let (Some(s), Some(c), Some(view)) =
            (self.slots.get(i), self.counters.get(i), from.slot(j))
        else {
            return;
        };
        if checked {
            let encode = |t: Option<Instant>| t.map_or(0, |t| self.ms_since_epoch(t));
            s.changed_ms
                .store(encode(view.changed_at), Ordering::Relaxed);
            s.ramp_ms.store(encode(view.ramp_from), Ordering::Relaxed);
            s.state.store(view.state.as_u8(), Ordering::Release);
            c.streak.store(view.streak, Ordering::Relaxed);
        }
        c.checks_ok.store(view.checks_ok, Ordering::Relaxed);
        c.checks_failed.store(view.checks_failed, Ordering::Relaxed);
        c.transitions.store(view.transitions, Ordering::Relaxed);
    }

    /// Counts one probe of backend `i` and its run of equal results (prober only, one
    /// thread per slot; off the request path).
    pub fn count_check(&self, i: usize, ok: bool) {
        if let Some(c) = self.counters.get(i) {
            let counter = if ok { &c.checks_ok } else { &c.checks_failed };
            counter.fetch_add(1, Ordering::Relaxed);
            let run = c.streak.load(Ordering::Relaxed);
            let run = match (ok, run) {
                (true, n) if n > 0 => n.saturating_add(1),
                (true, _) => 1,
                (false, n) if n < 0 => n.saturating_sub(1),
                (false, _) => -1,
            };
            c.streak.store(run, Ordering::Relaxed);
        }
    }

    /// Encodes `now` as milliseconds after the epoch, plus one (0 is "never").
    fn ms_since_epoch(&self, now: Instant) -> u64 {
        let ms = now.saturating_duration_since(self.epoch).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX - 1).saturating_add(1)
    }

    fn instant(&self, encoded: u64) -> Option<Instant> {
        let ms = encoded.checked_sub(1)?;
        self.epoch.checked_add(Duration::from_millis(ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn initial_states_and_out_of_range() {
        let b = HealthBoard::new(&[Health::Unknown, Health::Unhealthy]);
        assert_eq!(b.len(), 2);
        assert!(!b.is_empty());
        assert!(b.is_usable(0));
        assert!(!b.is_usable(1));
        assert_eq!(b.state(7), Health::Unknown);
        assert!(b.slot(7).is_none());
        assert_eq!(b.publish(7, Health::Healthy, Instant::now()), None);
        assert_eq!(b.generation(), 0);
        let v = b.slot(0).unwrap();
        assert_eq!((v.changed_at, v.ramp_from, v.transitions), (None, None, 0));
    }

    #[test]
    fn publish_bumps_generation_and_timestamps() {
        let b = HealthBoard::all_unknown(1);
        let t0 = b.epoch() + Duration::from_millis(1500);
        assert_eq!(b.publish(0, Health::Healthy, t0), Some(Health::Unknown));
        assert_eq!(b.generation(), 1);
        // Unknown → Healthy was usable all along: no ramp.
        assert_eq!(b.ramp_from(0), None);
        assert_eq!(b.slot(0).unwrap().changed_at, Some(t0));
        // Same state again: nothing written.
        assert_eq!(b.publish(0, Health::Healthy, t0), None);
        assert_eq!(b.generation(), 1);

        let t1 = t0 + Duration::from_secs(2);
        b.publish(0, Health::Unhealthy, t1);
        assert_eq!(b.ramp_from(0), None);
        let t2 = t1 + Duration::from_secs(3);
        b.publish(0, Health::Healthy, t2);
        assert_eq!(b.ramp_from(0), Some(t2));
        assert_eq!(b.generation(), 3);
        let v = b.slot(0).unwrap();
        assert_eq!(
            (v.state, v.changed_at, v.transitions),
            (Health::Healthy, Some(t2), 3)
        );
    }

    #[test]
    fn timestamps_before_epoch_saturate() {
        let b = HealthBoard::all_unknown(1);
        let early = b.epoch().checked_sub(Duration::from_secs(1));
        if let Some(early) = early {
            b.publish(0, Health::Unhealthy, early);
            assert_eq!(b.slot(0).unwrap().changed_at, Some(b.epoch()));
        }
    }

    #[test]
    fn counters_count() {
        let b = HealthBoard::all_unknown(1);
        b.count_check(0, true);
        b.count_check(0, false);
        b.count_check(0, false);
        b.count_check(9, false);
        let v = b.slot(0).unwrap();
        assert_eq!((v.checks_ok, v.checks_failed, v.streak), (1, 2, -2));
        b.count_check(0, true);
        assert_eq!(b.slot(0).unwrap().streak, 1);
    }

    /// A reader thread that sees generation g also sees every slot published before it.
    #[test]
    fn generation_publishes_slots_to_other_threads() {
        let b = Arc::new(HealthBoard::all_unknown(64));
        let reader = {
            let b = b.clone();
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(10);
                loop {
                    let g = b.generation();
                    // Slots 0..g are Unhealthy by the time g is visible.
                    for i in 0..(g as usize).min(64) {
                        assert_eq!(b.state(i), Health::Unhealthy, "slot {i} at generation {g}");
                    }
                    if g >= 64 || Instant::now() > deadline {
                        return g;
                    }
                    std::hint::spin_loop();
                }
            })
        };
        for i in 0..64 {
            b.publish(i, Health::Unhealthy, Instant::now());
        }
        assert_eq!(reader.join().unwrap(), 64);
    }
}
