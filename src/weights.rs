//! Control plane, beside the pipeline: backend weights set at run time through the admin API
//! (`POST /upstreams/NAME/backends/ADDR/weight/N`, HAProxy's `set server weight`), for a
//! canary's ramp or a backend being warmed by hand. They are laid over the file's weights
//! each time [`crate::reload::Reloader`] builds a snapshot (the API call itself, a reload, a
//! DNS change), so they last, as a drain does, while their backend is in the file; the
//! shards pick with them from their next request as after any reload.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::balance::Algorithm;
use crate::config::Config;

/// The highest weight, as in the file (`weight` is `1..=10000`).
pub const MAX_WEIGHT: u32 = 10_000;

/// Why a weight was not set.
#[derive(Debug, thiserror::Error)]
pub enum WeightError {
    #[error("no backend {addr} in upstream {upstream:?}")]
    NoBackend { upstream: String, addr: String },
    #[error("{0:?} is not a weight: write a whole number in 1..={MAX_WEIGHT}, or \"file\" for the file's (to take a backend out of rotation, drain it)")]
    Value(String),
    #[error("upstream {0:?} balances with round_robin, which ignores weights: set its balance to \"weighted\" (or another algorithm) in the file first")]
    Ignored(String),
    #[error("the process is draining: its backends' weights no longer change")]
    Stopping,
}

/// `N`, or `file` (back to the file's weight: `None`).
pub fn parse(value: &str) -> Result<Option<u32>, WeightError> {
    if value == "file" {
        return Ok(None);
    }
    let digits = !value.is_empty() && value.len() <= 5 && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse::<u32>() {
        Ok(w) if digits && (1..=MAX_WEIGHT).contains(&w) => Ok(Some(w)),
        _ => Err(WeightError::Value(value.to_owned())),
    }
}

/// The weights set through the API, by upstream name and backend address.
#[derive(Default)]
pub struct Weights {
    set: BTreeMap<(String, SocketAddr), u32>,
}

impl Weights {
    /// Sets (`Some`) or forgets (`None`) the weight of a backend of `config` (the resolved
    /// file, before [`Weights::lay_over`]); returns the file's weight for it.
    pub fn set(
        &mut self,
        config: &Config,
        upstream: &str,
        addr: &str,
        weight: Option<u32>,
    ) -> Result<u32, WeightError> {
        let missing = || WeightError::NoBackend {
            upstream: upstream.to_owned(),
            addr: addr.to_owned(),
        };
        let u = config
            .upstreams
            .iter()
            .find(|u| u.name == upstream)
            .ok_or_else(missing)?;
        let at: SocketAddr = addr.parse().map_err(|_| missing())?;
        let b = u
            .backends
            .iter()
            .find(|b| b.address == at)
            .ok_or_else(missing)?;
        if weight.is_some() && u.balance.algorithm == Algorithm::RoundRobin {
            return Err(WeightError::Ignored(upstream.to_owned()));
        }
        let key = (upstream.to_owned(), at);
        match weight {
            Some(w) => self.set.insert(key, w),
            None => self.set.remove(&key),
        };
        Ok(b.weight)
    }

    /// Lays the weights set over `config`'s (the resolved file), and forgets those of
    /// backends it no longer has (or whose upstream balances with round robin now).
    pub fn lay_over(&mut self, config: &mut Config) {
        let mut seen = Vec::new();
        for u in &mut config.upstreams {
            if u.balance.algorithm == Algorithm::RoundRobin {
                continue;
            }
            for b in &mut u.backends {
                if let Some(&w) = self.set.get(&(u.name.clone(), b.address)) {
                    b.weight = w;
                    seen.push((u.name.clone(), b.address));
                }
            }
        }
        self.set.retain(|k, _| seen.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(balance: &str) -> Config {
        let text = format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[[route]]\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nbalance = \"{balance}\"\nbackends = [{{ address = \"127.0.0.1:1\", weight = 3 }}, {{ address = \"127.0.0.1:2\" }}]\n"
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn weights_are_parsed_strictly() {
        assert_eq!(parse("1").unwrap(), Some(1));
        assert_eq!(parse("10000").unwrap(), Some(MAX_WEIGHT));
        assert_eq!(parse("file").unwrap(), None);
        for bad in ["0", "10001", "", "+5", "5 ", "1e3", "99999999999", "-1"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn set_weights_last_while_their_backend_does() {
        let file = config("weighted");
        let mut w = Weights::default();
        assert_eq!(w.set(&file, "u", "127.0.0.1:1", Some(7)).unwrap(), 3);
        assert!(matches!(
            w.set(&file, "u", "127.0.0.1:9", Some(7)),
            Err(WeightError::NoBackend { .. })
        ));
        assert!(matches!(
            w.set(&file, "v", "127.0.0.1:1", Some(7)),
            Err(WeightError::NoBackend { .. })
        ));
        let mut next = file.clone();
        w.lay_over(&mut next);
        assert_eq!(next.upstreams[0].backends[0].weight, 7);
        assert_eq!(next.upstreams[0].backends[1].weight, 1);
        // A file without that backend forgets it: it does not come back with the backend.
        let mut gone = file.clone();
        gone.upstreams[0].backends.remove(0);
        w.lay_over(&mut gone);
        assert!(w.set.is_empty());
        let mut back = file.clone();
        w.lay_over(&mut back);
        assert_eq!(back.upstreams[0].backends[0].weight, 3);
        // `file` forgets it too.
        w.set(&file, "u", "127.0.0.1:2", Some(9)).unwrap();
        w.set(&file, "u", "127.0.0.1:2", None).unwrap();
        let mut again = file.clone();
        w.lay_over(&mut again);
        assert_eq!(again.upstreams[0].backends[1].weight, 1);
    }

    #[test]
    fn round_robin_ignores_weights_so_none_is_set() {
        let file = config("round_robin");
        let mut w = Weights::default();
        assert!(matches!(
            w.set(&file, "u", "127.0.0.1:1", Some(2)),
            Err(WeightError::Ignored(_))
        ));
        assert_eq!(w.set(&file, "u", "127.0.0.1:1", None).unwrap(), 3);
    }
}
