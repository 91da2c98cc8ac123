//! Stage 4 of the pipeline, *balance*: this shard's balancers for one snapshot, and what
//! links them to the next snapshot's. A request counts against its backend from the pick to
//! its end on the balancer of the snapshot it started on; after a reload (a SIGHUP, a DNS
//! change, a weight set through the admin API) the next snapshot's balancers start with the
//! counts of the backends that remain, and every start and end on the old ones is passed on
//! to them, so least_conn, p2c and bounded loads keep seeing the requests and tunnels still
//! open on the old snapshot (nginx's workers lose them at a reload).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use crate::balance::ShardBalancer;

/// One snapshot's balancers (per upstream) and, once a reload replaced it, the next one.
pub struct Loads {
    pub balancers: RefCell<Vec<ShardBalancer>>,
    next: RefCell<Option<Next>>,
}

/// Where the counts of a replaced snapshot's balancers go on.
struct Next {
    loads: Rc<Loads>,
    /// `[upstream][local]` here → `(upstream, local)` there, for backends that remain.
    map: Vec<Vec<Option<(usize, usize)>>>,
}

/// What happened to a request counted on a balancer.
#[derive(Clone, Copy)]
pub enum Change {
    Started,
    /// Ended after its request was sent: a latency sample.
    Finished(Duration),
    /// Ended without a response to time.
    Abandoned,
}

impl Loads {
    pub fn new(balancers: Vec<ShardBalancer>) -> Rc<Loads> {
        Rc::new(Loads {
            balancers: RefCell::new(balancers),
            next: RefCell::new(None),
        })
    }

    /// Counts `change` for member `local` of `upstream`, here and on every snapshot that
    /// replaced this one (and still has the backend).
    pub fn count(&self, upstream: usize, local: usize, change: Change) {
        if let Some(b) = self.balancers.borrow_mut().get_mut(upstream) {
            match change {
                Change::Started => b.started(local),
                Change::Finished(latency) => b.finished(local, latency),
                Change::Abandoned => b.abandoned(local),
            }
        }
        let next = self.next.borrow();
        if let Some(next) = next.as_ref() {
            let to = next
                .map
                .get(upstream)
                .and_then(|m| m.get(local))
                .copied()
                .flatten();
            if let Some((u, l)) = to {
                next.loads.count(u, l, change);
            }
        }
    }

    /// Makes `next` this snapshot's successor: `map[upstream][local]` names where each
    /// backend that remains is there. `next` starts with their counts.
    pub fn hand_over(&self, next: Rc<Loads>, map: Vec<Vec<Option<(usize, usize)>>>) {
        {
            let old = self.balancers.borrow();
            let mut new = next.balancers.borrow_mut();
            for (u, members) in map.iter().enumerate() {
                for (l, to) in members.iter().enumerate() {
                    let (Some((nu, nl)), Some(b)) = (*to, old.get(u)) else {
                        continue;
                    };
                    if let Some(n) = new.get_mut(nu) {
                        n.carry_in_flight(nl, b.in_flight(l));
                    }
                }
            }
        }
        *self.next.borrow_mut() = Some(Next { loads: next, map });
    }
}
