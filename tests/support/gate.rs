//! A gate a test opens once, for the threads that wait on it: an origin's handler holding a
//! response ([`held_origin`]), a load loop pacing itself. Every wait is bounded.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::{Origin, Reply};

#[derive(Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    pub fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }

    /// Waits up to `within` for the gate; true once it is open.
    pub fn wait(&self, within: Duration) -> bool {
        let (open, cv) = &*self.0;
        let guard = open.lock().unwrap();
        *cv.wait_timeout_while(guard, within, |o| !*o).unwrap().0
    }
}

/// An origin that holds every request for `path` until the gate opens (20 s at most), then
/// answers as [`Origin::start`] does; others are answered at once.
pub fn held_origin(path: &'static str) -> (Origin, Gate) {
    let gate = Gate::default();
    let g = gate.clone();
    let origin = Origin::with_handler("o", move |req| {
        if req.path() == path {
            g.wait(Duration::from_secs(20));
        }
        Reply::Default
    });
    (origin, gate)
}
