//! Control plane, beside stage 1 (*accept*): the listening sockets this process holds, by
//! listener identity ([`ListenerId`], the configured address). The shards own the sockets
//! they accept from; [`Listening`] keeps a duplicate of each, so that the binary upgrade
//! hands the successor the set in force now ([`Listening::described`]), and a reload changes
//! it: a listener whose address remains keeps its sockets and queues; an added one is bound
//! on the reloading thread with start-up's code and checks ([`crate::listener::bind_all`]:
//! one `SO_REUSEPORT` socket per shard, an address another process holds refused) before
//! anything is put in force ([`Listening::open`]); a removed one's duplicates are closed once
//! every shard has stopped accepting on it ([`Listening::apply`]).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use crate::config::Config;
use crate::listener::{bind_all, ListenError, Ownership, ShardSockets};
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

/// An added listener that cannot be opened: the reload is refused, nothing changes.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct OpenError {
    /// `listener[i].address`, in the new file.
    key: String,
    source: ListenError,
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
    /// The added listeners' key paths and bound addresses, for the log.
    pub bound: Vec<(String, SocketAddr)>,
    held: Vec<Held>,
    removed: Vec<ListenerId>,
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
    /// path; the sockets bound before it are closed then.
    pub fn open(&self, changes: Changes, congestion: Option<&str>) -> Result<Opened, OpenError> {
        let mut opened = Opened {
            per_shard: (0..self.shards).map(|_| Vec::new()).collect(),
            bound: Vec::new(),
            held: Vec::new(),
            removed: changes.removed,
        };
        for (index, id) in changes.added {
            let key = format!("listener[{index}].address");
            let (sockets, bound) =
                bind_all(&[id.address], self.shards, congestion, Ownership::Exclusive).map_err(
                    |source| OpenError {
                        key: key.clone(),
                        source,
                    },
                )?;
            let mut dups = Vec::new();
            for (shard, list) in sockets.into_iter().enumerate() {
                for (_, socket) in list {
                    let dup = socket.try_clone().map_err(|e| OpenError {
                        key: key.clone(),
                        source: ListenError::Other {
                            addr: id.address,
                            source: e,
                        },
                    })?;
                    dups.push(dup);
                    opened.per_shard[shard].push((id, socket));
                }
            }
            opened.held.push(Held { id, sockets: dups });
            opened
                .bound
                .extend(bound.first().map(|a| (format!("listener[{index}]"), *a)));
        }
        Ok(opened)
    }

    /// Records a reload's changes once the shards have them: the added listeners' sockets
    /// are held, the removed ones' closed.
    pub fn apply(&mut self, opened: Opened) {
        self.held.retain(|h| !opened.removed.contains(&h.id));
        self.held.extend(opened.held);
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
    use std::path::Path;

    fn config(listeners: &[String]) -> Config {
        let text: String = listeners
            .iter()
            .map(|a| format!("[[listener]]\naddress = \"{a}\"\n"))
            .chain(std::iter::once(
                "[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbackends = [{ address = \"127.0.0.1:1\" }]\n".to_string(),
            ))
            .collect();
        Config::parse(&text, Path::new("t.toml")).unwrap()
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
        let opened = listening.open(changes, None).unwrap();
        assert_eq!(opened.bound, vec![("listener[0]".to_string(), b)]);
        assert!(opened.per_shard.iter().all(|s| s.len() == 1));
        listening.apply(opened);
        let shared2 = Shared::with_shards(second, 2);
        let d = listening.described(&shared2);
        assert_eq!(d.iter().filter(|(i, s, _)| *i == 0 && *s == b).count(), 2);
        assert_eq!(d.iter().filter(|(i, s, _)| *i == 1 && *s == a).count(), 2);

        // A removed: its duplicates are closed (with the shards' sockets gone too, the port
        // is free again).
        let third = config(&[b.to_string()]);
        let changes = Changes::between(&shared2, &third);
        assert_eq!(changes.removed.len(), 1);
        let opened = listening.open(changes, None).unwrap();
        listening.apply(opened);
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
            .open(Changes::between(&shared, &next), None)
            .err()
            .expect("refused");
        let text = e.to_string();
        assert!(text.starts_with("listener[2].address: "), "{text}");
        assert!(text.contains("already in use"), "{text}");
    }
}
