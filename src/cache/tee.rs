//! The response cache's tee, in *respond*: while a response that will be stored is relayed,
//! `relay::relay_body` pushes each decoded piece of its body here; [`super::Fill`] stores the
//! body once the relay completed. Bounded per response by `max_object` and per route and
//! shard by `fill_memory`; past either, the fetch's [`Claim`] is dropped at once, so the
//! requests waiting on its key go to the backend instead of waiting for the relay's end.

use std::cell::Cell;
use std::rc::Rc;

use super::Claim;

/// A response body as it is relayed, decoded, kept while it fits `max` bytes and the route's
/// `fill_memory` on this shard (what all its responses being stored hold at once).
pub struct Tee {
    body: Vec<u8>,
    max: usize,
    /// Bytes held by the route's tees on this shard (its store's `teeing`), and their cap.
    held: Rc<Cell<u64>>,
    held_max: u64,
    /// More than `max` bytes came, or the route's tees would hold more than `fill_memory`:
    /// nothing is kept.
    pub overflow: bool,
    /// The overflow was `fill_memory`'s (counted by the fill).
    pub over_budget: bool,
    /// The fetch's claim on its key, if this request made it: dropped with the tee (after
    /// the entry is stored) or at the overflow.
    claim: Option<Claim>,
}

impl Tee {
    /// A tee keeping at most `max` bytes, counted in `held` (the route's store's `teeing`)
    /// while all the route's tees on the shard stay within `held_max`.
    pub(super) fn new(max: usize, held: Rc<Cell<u64>>, held_max: u64, claim: Option<Claim>) -> Tee {
        Tee {
            claim,
            body: Vec::new(),
            max,
            held,
            held_max,
            overflow: false,
            over_budget: false,
        }
    }

    /// The relay begins (`Some(now)`) or ends (`None`) a write to its client. Requests
    /// waiting on this fetch see how long one has been waiting ([`super::lookup`]): a
    /// client that stops reading holds the relay, and them with it, until they give up.
    #[inline]
    pub fn client_wait(&self, since: Option<std::time::Instant>) {
        if let Some(c) = &self.claim {
            c.client_wait.set(since);
        }
    }

    /// Keeps `data` (the next piece of the decoded body).
    #[inline]
    pub fn push(&mut self, data: &[u8]) {
        if self.overflow {
            return;
        }
        let n = data.len() as u64;
        if self.body.len() + data.len() > self.max || self.held.get() + n > self.held_max {
            self.overflow = true;
            self.over_budget = self.body.len() + data.len() <= self.max;
            self.take();
            // Nothing will be stored: the waiters go to the backend now.
            self.claim = None;
        } else {
            self.body.extend_from_slice(data);
            self.held.set(self.held.get() + n);
        }
    }

    /// The body kept so far, no longer counted against `fill_memory`.
    pub(super) fn take(&mut self) -> Vec<u8> {
        let body = std::mem::take(&mut self.body);
        self.held
            .set(self.held.get().saturating_sub(body.len() as u64));
        body
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.take();
    }
}
