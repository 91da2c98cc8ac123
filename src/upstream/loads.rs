//! Stage 4 of the pipeline, *balance*: this shard's balancers for one snapshot, and what
//! links a replaced snapshot's to the newest. A request counts against its backend from the
//! pick to its end on the balancer of the snapshot it started on; after a reload (a SIGHUP,
//! a DNS change, a weight set through the admin API) the next snapshot's balancers start with
//! the counts of the backends that remain, and every later start and end on a replaced
//! snapshot is passed on to the shard's newest one (found by [`BackendId`]), so least_conn,
//! p2c and bounded loads keep seeing the requests and tunnels still open on old snapshots
//! (nginx's workers lose them at a reload). A replaced snapshot holds no link to the ones
//! after it: one tunnel open across a thousand reloads keeps its own snapshot alive, not
//! the thousand.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::balance::ShardBalancer;
use crate::snapshot::{BackendId, Shared};

/// The shard's newest [`Loads`], shared by every snapshot's.
type Newest = Rc<RefCell<Weak<Loads>>>;

/// One snapshot's balancers (per upstream), and the way to the shard's newest ones.
pub struct Loads {
    pub balancers: RefCell<Vec<ShardBalancer>>,
    /// `[upstream][local]`: each member's identity, to find it in the newest snapshot.
    ids: Vec<Vec<BackendId>>,
    /// Identity → `(upstream, local)` here.
    index: HashMap<BackendId, (usize, usize)>,
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
        let mut ids: Vec<Vec<BackendId>> = vec![Vec::new(); shared.config.upstreams.len()];
        let mut index = HashMap::with_capacity(shared.backends.len());
        // `shared.backends` lists each upstream's members in order (`local`).
        for b in shared.backends.iter() {
            if let Some(members) = ids.get_mut(b.upstream) {
                debug_assert_eq!(members.len(), b.local);
                index.insert(b.id.clone(), (b.upstream, b.local));
                members.push(b.id.clone());
            }
        }
        let newest = after.map_or_else(Newest::default, |a| a.newest.clone());
        let loads = Rc::new(Loads {
            balancers: RefCell::new(balancers),
            ids,
            index,
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
        let id = self.ids.get(upstream).and_then(|m| m.get(local));
        if let Some(&(u, l)) = id.and_then(|id| newest.index.get(id)) {
            newest.apply(u, l, change);
        }
    }

    /// `next` replaces this snapshot, the shard's newest so far: it starts with the counts of
    /// the backends that remain, and becomes the newest.
    pub fn hand_over(&self, next: &Rc<Loads>) {
        {
            let old = self.balancers.borrow();
            let mut new = next.balancers.borrow_mut();
            for (u, members) in self.ids.iter().enumerate() {
                for (l, id) in members.iter().enumerate() {
                    let (Some(&(nu, nl)), Some(b)) = (next.index.get(id), old.get(u)) else {
                        continue;
                    };
                    if let Some(n) = new.get_mut(nu) {
                        n.carry_in_flight(nl, b.in_flight(l));
                    }
                }
            }
        }
        self.superseded.set(true);
        *self.newest.borrow_mut() = Rc::downgrade(next);
    }
}
