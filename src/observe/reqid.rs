//! Observability, request ids: each request gets an id, passed to the backend, logged, and
//! (by default) returned to the client. Ids are 32 lower-case hex digits: a random 64-bit
//! process prefix mixed with the shard number, then a per-shard counter, so they are unique
//! without any coordination between shards.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

/// Per-shard id generator.
#[derive(Debug)]
pub struct RequestIds {
    /// The prefix's 16 hex digits, written once (not per request).
    prefix: [u8; 16],
    next: Cell<u64>,
}

/// A generated id.
pub type RequestId = [u8; 32];

impl RequestIds {
    pub fn new(shard: usize) -> RequestIds {
        // std's RandomState is seeded from the OS's random source once per process.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(std::process::id().into());
        let mut prefix = [0u8; 16];
        hex(h.finish() ^ ((shard as u64) << 48), &mut prefix);
        RequestIds {
            prefix,
            next: Cell::new(1),
        }
    }

    pub fn generate(&self) -> RequestId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut out = [0u8; 32];
        out[..16].copy_from_slice(&self.prefix);
        hex(n, &mut out[16..]);
        out
    }
}

fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, o) in out.iter_mut().enumerate() {
        *o = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// Whether an incoming id is acceptable to keep: 1..=200 visible ASCII characters.
pub fn valid_incoming(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_and_distinct_across_shards() {
        let a = RequestIds::new(0);
        let b = RequestIds::new(1);
        let x = a.generate();
        let y = a.generate();
        let z = b.generate();
        assert_ne!(x, y);
        assert_ne!(x, z);
        assert!(x.iter().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(&x[16..], b"0000000000000001");
        assert!(valid_incoming(b"abc-123"));
        assert!(!valid_incoming(b""));
        assert!(!valid_incoming(b"a b"));
    }
}
