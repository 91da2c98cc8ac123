//! Stage 4 of the pipeline, *balance*: this shard's balancers for one snapshot, and what
//! links a replaced snapshot's to the newest. A request counts against its backend from the
//! pick to its end on the balancer of the snapshot it started on; after a reload (a SIGHUP,
//! a DNS change, a weight set through the admin API) the next snapshot's balancers start with
//! the counts of the backends that remain, and every later start and end on a replaced
//! snapshot is passed on to the shard's newest one (found by
//! [`crate::snapshot::BackendId`]), so least_conn, p2c and bounded loads keep seeing the
//! requests and tunnels still open on old snapshots (nginx's workers lose them at a reload).
//! A replaced snapshot holds no link to the ones after it: one tunnel open across a thousand
//! reloads keeps its own snapshot alive, not the thousand.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::Duration;

use crate::balance::ShardBalancer;
use crate::carry::BackendIndex;
use crate::snapshot::Shared;

/// The shard's newest [`Loads`], shared by every snapshot's.
type Newest = Rc<RefCell<Weak<Loads>>>;

/// One snapshot's balancers (per upstream), and the way to the shard's newest ones.
pub struct Loads {
    pub balancers: RefCell<Vec<ShardBalancer>>,
    /// The snapshot's backends by identity (built once per snapshot, shared by the shards):
    /// each member's identity, to find it in the newest snapshot, and the way back.
    index: Arc<BackendIndex>,
    /// A newer snapshot replaced this one: counts go on to [`Loads::newest`] too.
    superseded: Cell<bool>,
    newest: Newest,
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
    /// The loads of snapshot `shared` with `balancers` (per upstream); `after`: the loads of
    /// the snapshot it replaces (their shard's newest is this one's from
    /// [`Loads::hand_over`] on).
    pub fn new(balancers: Vec<ShardBalancer>, shared: &Shared, after: Option<&Loads>) -> Rc<Loads> {
        let newest = after.map_or_else(Newest::default, |a| a.newest.clone());
        let loads = Rc::new(Loads {
            balancers: RefCell::new(balancers),
            index: shared.index.clone(),
            superseded: Cell::new(false),
            newest,
        });
        if after.is_none() {
            *loads.newest.borrow_mut() = Rc::downgrade(&loads);
        }
        loads
    }

    fn apply(&self, upstream: usize, local: usize, change: Change) {
        if let Some(b) = self.balancers.borrow_mut().get_mut(upstream) {
            match change {
                Change::Started => b.started(local),
                Change::Finished(latency) => b.finished(local, latency),
                Change::Abandoned => b.abandoned(local),
            }
        }
    }

    /// Counts `change` for member `local` of `upstream`, here and, once a reload replaced
    /// this snapshot, on the shard's newest one (when it still has the backend).
    pub fn count(&self, upstream: usize, local: usize, change: Change) {
        self.apply(upstream, local, change);
        if !self.superseded.get() {
            return;
        }
        let Some(newest) = self.newest.borrow().upgrade() else {
            return;
        };
        let id = self.index.id(upstream, local);
        let at = id.and_then(|id| newest.index.get(id));
        if let Some((u, l)) = at.and_then(|i| newest.index.place(i)) {
            newest.apply(u, l, change);
        }
    }

    /// `next` replaces this snapshot, the shard's newest so far: it starts with the counts of
    /// the backends that remain (`map`: per backend of `next`, its index here), and becomes
    /// the newest.
    pub fn hand_over(&self, next: &Rc<Loads>, map: &[Option<usize>]) {
        {
            let old = self.balancers.borrow();
            let mut new = next.balancers.borrow_mut();
            for (i, m) in map.iter().enumerate() {
                let (Some(j), Some((nu, nl))) = (*m, next.index.place(i)) else {
                    continue;
                };
                let Some((u, l)) = self.index.place(j) else {
                    continue;
                };
                if let (Some(n), Some(b)) = (new.get_mut(nu), old.get(u)) {
                    n.carry_in_flight(nl, b.in_flight(l));
                }
            }
        }
        self.superseded.set(true);
        *self.newest.borrow_mut() = Rc::downgrade(next);
    }
}
