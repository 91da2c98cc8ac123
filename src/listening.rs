//! Control plane, beside stage 1 (*accept*): the listening sockets this process holds, by
//! listener identity ([`ListenerId`], the configured address). The shards own the sockets
//! they accept from; [`Listening`] keeps a duplicate of each, so that the binary upgrade
//! hands the successor the set in force now ([`Listening::described`]), and a reload changes
//! it: a listener whose address remains keeps its sockets and queues; an added one is bound
//! on the reloading thread with start-up's code and checks ([`crate::listener::bind_all`]:
//! one `SO_REUSEPORT` socket per shard, an address another process holds refused, and first
//! an address that overlaps one of this process's own listeners in force) before anything is
//! put in force ([`Listening::open`]); once the shards have answered, a removed one's
//! duplicates are closed, and an added socket that its shard did not take is shut down with
//! its duplicate, so that no socket nobody accepts from stays in the port's group
//! ([`Listening::apply`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use crate::config::Config;
use crate::listener::{bind_all, close_listening, overlaps, ListenError, Ownership, ShardSockets};
use crate::snapshot::{ListenerId, Shared};

/// One listener's sockets, as held here: duplicates of the shards' own.
struct Held {
    id: ListenerId,
    sockets: Vec<std::net::TcpListener>,
}

/// The listening sockets this process holds (see the module header).
pub struct Listening {
    held: Vec<Held>,
    shards: usize,
}

/// An added listener that cannot be opened: the reload is refused, nothing changes. Each
/// names the listener's key path (`listener[i].address`, in the new file).
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{key}: {source}")]
    Bind { key: String, source: ListenError },
    /// A socket on `address` cannot listen while this process's own `in_force` one does (see
    /// [`crate::listener::overlaps`]), and the old one is only closed once the shards switch.
    #[error("{key}: {address} overlaps listener[{index}].address ({in_force}) in force (the same port on the same or a wildcard address); remove the old one in one reload and add the new one in the next, or restart")]
    Overlaps {
        key: String,
        address: SocketAddr,
        /// The position of the listener in force, in the file in force.
        index: usize,
        in_force: SocketAddr,
    },
}

/// An added socket that its shard does not accept from (see [`Listening::apply`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub shard: usize,
    pub listener: ListenerId,
    /// Why, for the reload's caller: "shard 1 is stopping", ...
    pub why: String,
}

/// The listeners a new file adds (with their position in it) and removes, by identity.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<(usize, ListenerId)>,
    pub removed: Vec<ListenerId>,
}

impl Changes {
    pub fn between(old: &Shared, new: &Config) -> Changes {
        let ids = ListenerId::all(&new.listeners);
        Changes {
            added: ids
                .iter()
                .enumerate()
                .filter(|(_, id)| old.listener(**id).is_none())
                .map(|(i, id)| (i, *id))
                .collect(),
            removed: old
                .listener_ids
                .iter()
                .filter(|id| !ids.contains(id))
                .copied()
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// What a reload changes in the listener set, its sockets bound.
pub struct Opened {
    /// Per shard: its socket of each added listener (sent to the shard).
    pub per_shard: Vec<Vec<(ListenerId, std::net::TcpListener)>>,
    added: Vec<Added>,
    removed: Vec<ListenerId>,
}

/// One added listener: its position in the new file, its bound address, and the duplicate
/// of each shard's socket, by shard.
struct Added {
    index: usize,
    id: ListenerId,
    bound: SocketAddr,
    dups: Vec<(usize, std::net::TcpListener)>,
}

impl Opened {
    pub fn removed(&self) -> &[ListenerId] {
        &self.removed
    }
}

impl Listening {
    /// Holds a duplicate of every shard's sockets; `ids` names the listeners by the index
    /// each socket carries.
    pub fn new(ids: &[ListenerId], sockets: &ShardSockets) -> io::Result<Listening> {
        let mut held: Vec<Held> = Vec::new();
        for (index, socket) in sockets.iter().flatten() {
            let Some(&id) = ids.get(*index) else {
                continue;
            };
            let dup = socket.try_clone()?;
            match held.iter_mut().find(|h| h.id == id) {
                Some(h) => h.sockets.push(dup),
                None => held.push(Held {
                    id,
                    sockets: vec![dup],
                }),
            }
        }
        Ok(Listening {
            held,
            shards: sockets.len(),
        })
    }

    /// Binds every listener `changes` adds (one socket per shard each, `congestion` set on
    /// them as at start-up), or fails on the first that cannot be bound, naming its key
    /// path; the sockets bound before it are closed then. An added address that overlaps a
    /// listener in force (`old`'s, whose sockets are held here; a removed one's too, since
    /// they close only once the shards switch) is refused before it is probed: the probe
    /// would find this very process holding the port.
    pub fn open(
        &self,
        old: &Shared,
        changes: Changes,
        congestion: Option<&str>,
    ) -> Result<Opened, OpenError> {
        let mut opened = Opened {
            per_shard: (0..self.shards).map(|_| Vec::new()).collect(),
            added: Vec::new(),
            removed: changes.removed,
        };
        let dual_stack = crate::listener::dual_stack();
        for (index, id) in changes.added {
            let key = format!("listener[{index}].address");
            for h in &self.held {
                let Some(in_force) = h.sockets.first().and_then(|s| s.local_addr().ok()) else {
                    continue;
                };
                if overlaps(id.address, in_force, dual_stack) {
                    return Err(OpenError::Overlaps {
                        key,
                        address: id.address,
                        index: old.listener(h.id).unwrap_or_default(),
                        in_force,
                    });
                }
            }
            let bind_error = |source| OpenError::Bind {
                key: key.clone(),
                source,
            };
            let (sockets, bound) =
                bind_all(&[id.address], self.shards, congestion, Ownership::Exclusive)
                    .map_err(bind_error)?;
            let mut dups = Vec::new();
            for (shard, list) in sockets.into_iter().enumerate() {
                for (_, socket) in list {
                    let dup = socket.try_clone().map_err(|e| {
                        bind_error(ListenError::Other {
                            addr: id.address,
                            source: e,
                        })
                    })?;
                    dups.push((shard, dup));
                    opened.per_shard[shard].push((id, socket));
                }
            }
            opened.added.push(Added {
                index,
                id,
                bound: bound.first().copied().unwrap_or(id.address),
                dups,
            });
        }
        Ok(opened)
    }

    /// Records a reload's changes once the shards have answered: the removed listeners'
    /// duplicates are closed, the added ones' held, except the sockets in `failed` (a shard
    /// that could not register its socket, was stopping, or did not answer in time): those
    /// are shut down ([`close_listening`]) with their duplicate, since a socket left in the
    /// port's `SO_REUSEPORT` group with nobody accepting from it would take its share of new
    /// connections and never answer them. Logs what changed; returns one line per added
    /// listener some shard does not serve, with its key path, for the reload's caller.
    pub fn apply(&mut self, opened: Opened, failed: &[Failed]) -> Vec<String> {
        for id in &opened.removed {
            tracing::info!("reload: stopped listening on {id}");
        }
        self.held.retain(|h| !opened.removed.contains(&h.id));
        let mut errors = Vec::new();
        for added in opened.added {
            let mut why = Vec::new();
            let mut sockets = Vec::new();
            for (shard, dup) in added.dups {
                match failed
                    .iter()
                    .find(|f| f.shard == shard && f.listener == added.id)
                {
                    Some(f) => {
                        close_listening(dup);
                        why.push(f.why.clone());
                    }
                    None => sockets.push(dup),
                }
            }
            let key = format!("listener[{}].address", added.index);
            let serving = sockets.len();
            if serving > 0 {
                tracing::info!(listener = %key, "reload: listening on {}", added.bound);
                self.held.push(Held {
                    id: added.id,
                    sockets,
                });
            }
            if !why.is_empty() {
                errors.push(format!(
                    "{key}: {} is served by {serving} of {} shards ({}): their sockets were closed; a restart or binary upgrade opens it on every shard",
                    added.bound,
                    serving + why.len(),
                    why.join("; ")
                ));
            }
        }
        errors
    }

    /// Every socket held, labelled with its listener's position in `shared` (the snapshot
    /// in force) and its bound address, for the binary upgrade. The descriptors stay open
    /// for as long as `self` is not changed.
    pub fn described(&self, shared: &Shared) -> Vec<(usize, SocketAddr, RawFd)> {
        let mut out = Vec::new();
        for h in &self.held {
            let Some(index) = shared.listener(h.id) else {
                continue;
            };
            for s in &h.sockets {
                if let Ok(a) = s.local_addr() {
                    out.push((index, a, s.as_raw_fd()));
                }
            }
        }
        out
    }

    /// Closes every duplicate (the process is stopping; the shards close their own).
    pub fn clear(&mut self) {
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listeners: &[String]) -> Config {
        crate::config::with_listeners(listeners)
    }

    fn free_port() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn a_reload_binds_added_listeners_keeps_the_others_and_closes_removed_ones() {
        let (a, b) = (free_port(), free_port());
        let first = config(&[a.to_string()]);
        let (sockets, _) = bind_all(&[a], 2, None, Ownership::Exclusive).unwrap();
        let shared = Shared::with_shards(first, 2);
        let mut listening = Listening::new(&shared.listener_ids, &sockets).unwrap();
        assert_eq!(listening.described(&shared).len(), 2);

        // B added before A: A keeps its sockets (nothing bound for it), B gets one per shard.
        let second = config(&[b.to_string(), a.to_string()]);
        let changes = Changes::between(&shared, &second);
        assert_eq!(changes.removed, vec![]);
        assert_eq!(changes.added.len(), 1);
        let opened = listening.open(&shared, changes, None).unwrap();
        assert_eq!(opened.added.len(), 1);
        assert_eq!((opened.added[0].index, opened.added[0].bound), (0, b));
        assert!(opened.per_shard.iter().all(|s| s.len() == 1));
        assert_eq!(listening.apply(opened, &[]), Vec::<String>::new());
        let shared2 = Shared::with_shards(second, 2);
        let d = listening.described(&shared2);
        assert_eq!(d.iter().filter(|(i, s, _)| *i == 0 && *s == b).count(), 2);
        assert_eq!(d.iter().filter(|(i, s, _)| *i == 1 && *s == a).count(), 2);

        // A removed: its duplicates are closed (with the shards' sockets gone too, the port
        // is free again).
        let third = config(&[b.to_string()]);
        let changes = Changes::between(&shared2, &third);
        assert_eq!(changes.removed.len(), 1);
        let opened = listening.open(&shared2, changes, None).unwrap();
        listening.apply(opened, &[]);
        drop(sockets);
        let shared3 = Shared::with_shards(third, 2);
        assert!(listening
            .described(&shared3)
            .iter()
            .all(|(_, s, _)| *s == b));
        std::net::TcpListener::bind(a).expect("A is closed");
    }

    #[test]
    fn an_address_held_elsewhere_refuses_the_reload_with_its_key_path() {
        let a = free_port();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held = taken.local_addr().unwrap();
        let (sockets, _) = bind_all(&[a], 1, None, Ownership::Exclusive).unwrap();
        let shared = Shared::new(config(&[a.to_string()]));
        let listening = Listening::new(&shared.listener_ids, &sockets).unwrap();
        let next = config(&[a.to_string(), "127.0.0.1:0".into(), held.to_string()]);
        let e = listening
            .open(&shared, Changes::between(&shared, &next), None)
            .err()
            .expect("refused");
        // (The holder is this test process itself, so the error says that rather than
        // naming another process.)
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("listener[2].address: cannot listen on {held}: ")),
            "{text}"
        );
    }

    /// A shard that did not take its socket of an added listener (here: shard 1's was
    /// dropped, as when `TcpListener::from_std` fails): the duplicate held here must not keep
    /// that socket in the port's group, or about half of the new connections would wait in a
    /// queue nobody accepts from. Every connection reaches shard 0's socket, and the caller
    /// is told, with the key path.
    #[test]
    fn a_socket_its_shard_did_not_take_leaves_the_port_with_its_duplicate() {
        let (a, b) = (free_port(), free_port());
        let (sockets, _) = bind_all(&[a], 2, None, Ownership::Exclusive).unwrap();
        let shared = Shared::with_shards(config(&[a.to_string()]), 2);
        let mut listening = Listening::new(&shared.listener_ids, &sockets).unwrap();
        let next = config(&[a.to_string(), b.to_string()]);
        let mut opened = listening
            .open(&shared, Changes::between(&shared, &next), None)
            .unwrap();
        let id = opened.per_shard[0][0].0;
        let (_, taken) = opened.per_shard[0].pop().unwrap();
        drop(opened.per_shard[1].pop());
        let failed = Failed {
            shard: 1,
            listener: id,
            why: "shard 1 is stopping".into(),
        };
        let errors = listening.apply(opened, &[failed]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with(&format!(
                "listener[1].address: {b} is served by 1 of 2 shards (shard 1 is stopping)"
            )),
            "{}",
            errors[0]
        );
        let shared2 = Shared::with_shards(next, 2);
        assert_eq!(
            listening
                .described(&shared2)
                .iter()
                .filter(|(_, s, _)| *s == b)
                .count(),
            1,
            "only shard 0's socket is held (and handed over by an upgrade)"
        );
        // 16 connections: with shard 1's socket still in the group, 1 in 65,536 runs would
        // see them all reach shard 0's. The accept timeout only bounds a failing run.
        taken.set_nonblocking(false).unwrap();
        socket2::SockRef::from(&taken)
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..16 {
            let c = std::net::TcpStream::connect(b).unwrap();
            let (s, _) = taken
                .accept()
                .unwrap_or_else(|e| panic!("connection {i} did not reach shard 0's socket: {e}"));
            assert_eq!(s.peer_addr().unwrap(), c.local_addr().unwrap());
        }
    }

    #[test]
    fn an_address_overlapping_a_listener_in_force_is_refused_naming_both() {
        let a = free_port();
        let (sockets, _) = bind_all(&[a], 1, None, Ownership::Exclusive).unwrap();
        let shared = Shared::new(config(&[a.to_string()]));
        let listening = Listening::new(&shared.listener_ids, &sockets).unwrap();
        // The same port on the wildcard: refused before anything is bound, even though the
        // new file removes the old listener (it closes only once the shards switch).
        let wildcard = format!("0.0.0.0:{}", a.port());
        let next = config(std::slice::from_ref(&wildcard));
        let text = listening
            .open(&shared, Changes::between(&shared, &next), None)
            .err()
            .expect("refused")
            .to_string();
        assert!(
            text.starts_with(&format!(
                "listener[0].address: {wildcard} overlaps listener[0].address ({a}) in force"
            )),
            "{text}"
        );
        assert!(text.contains("in the next, or restart"), "{text}");
    }
}
