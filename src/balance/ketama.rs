//! Stage "balance", `consistent_hash`: the ketama ring of nginx's `hash $key consistent`
//! (`ngx_http_upstream_hash_module.c`, `ngx_http_upstream_init_chash`), built once per table
//! and read by every shard. The construction is copied exactly, so that for the same server
//! list a key lands on the same backend as in nginx; `tests/golden/nginx_chash/` proves it.
//!
//! Per backend, in upstream order: split the name as written at its last `:` when only digits
//! follow (`unix:` names have no port), `base = crc32(host ++ "\0" ++ port)` (a running CRC,
//! not finalised), then `weight × 160` points, each `crc32(base ++ prev)` where `prev` is the
//! previous point of this backend as 4 little-endian bytes (0 for the first). All points are
//! sorted by hash and a point equal to its predecessor is dropped. A key's search starts at
//! the first point `>= crc32(key)`, wrapping to point 0 past the end.
//!
//! What a pick does with the ring (nginx `ngx_http_upstream_get_chash_peer`) lives in
//! `picker.rs`: an unusable owner moves the search to the next point, 21 points at most
//! (`tries > 20`), then nginx falls back to its weighted round robin, and so do we.

use crc32fast::Hasher;

/// Points per unit of weight, as nginx.
pub(super) const POINTS_PER_WEIGHT: u64 = 160;

/// Most points a ring holds (8 bytes each: 32 MiB). nginx has no limit; a tier whose
/// `total weight × 160` exceeds this gets its weights scaled down to fit (each ≥ 1), and then
/// no longer maps keys as nginx would. That takes a total weight above 26,214.
pub(super) const MAX_RING_POINTS: u64 = 1 << 22;

/// Sorted, de-duplicated ring: `hashes[i]` is owned by tier position `owners[i]`.
#[derive(Debug, Default)]
pub(super) struct Ring {
    hashes: Vec<u32>,
    owners: Vec<u32>,
    /// `index[b]` = first point `>= b << shift`: narrows the search to one bucket of the top
    /// `32 - shift` bits of the key (about one point per bucket; up to 2^16 + 1 entries).
    index: Vec<u32>,
    shift: u32,
}

impl Ring {
    /// `names[i]` and `weights[i]` (≥ 1) describe tier position `i`.
    pub fn build(names: &[&str], weights: &[u32]) -> Ring {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        let scaled = |w: u32| -> u64 {
            let w = u64::from(w);
            if total * POINTS_PER_WEIGHT <= MAX_RING_POINTS {
                w
            } else {
                (w * (MAX_RING_POINTS / POINTS_PER_WEIGHT) / total).max(1)
            }
        };
        let npoints: u64 = weights.iter().map(|&w| scaled(w) * POINTS_PER_WEIGHT).sum();
        let mut points: Vec<(u32, u32)> = Vec::with_capacity(npoints as usize);
        for (pos, (name, &weight)) in names.iter().zip(weights).enumerate() {
            let (host, port) = split_host_port(name.as_bytes());
            let mut base = Hasher::new();
            base.update(host);
            base.update(b"\0");
            base.update(port);
            let mut prev = 0u32;
            for _ in 0..scaled(weight) * POINTS_PER_WEIGHT {
                let mut h = base.clone();
                h.update(&prev.to_le_bytes());
                prev = h.finalize();
                points.push((prev, pos as u32));
            }
        }
        // A stable sort keeps, among equal hashes, the point of the earlier backend, which the
        // de-duplication then keeps. nginx uses libc qsort (glibc: a merge sort, also stable);
        // a 32-bit collision between two backends is needed for this to matter.
        points.sort_by_key(|&(h, _)| h);
        points.dedup_by_key(|&mut (h, _)| h);
        let hashes: Vec<u32> = points.iter().map(|&(h, _)| h).collect();
        let bits = (usize::BITS - hashes.len().leading_zeros()).clamp(1, 16);
        let shift = 32 - bits;
        let index = (0..=(1u64 << bits))
            .map(|b| hashes.partition_point(|&h| u64::from(h) < b << shift) as u32)
            .collect();
        Ring {
            owners: points.iter().map(|&(_, o)| o).collect(),
            hashes,
            index,
            shift,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Index of the first point `>= key` (may be `len()`: callers take it modulo `len()`, as
    /// nginx does with `hp->hash % points->number`).
    pub fn start(&self, key: u32) -> usize {
        let b = (key >> self.shift) as usize;
        match (self.index.get(b), self.index.get(b + 1)) {
            (Some(&lo), Some(&hi)) => {
                let (lo, hi) = (lo as usize, (hi as usize).min(self.hashes.len()));
                lo + self.hashes[lo.min(hi)..hi].partition_point(|&h| h < key)
            }
            _ => self.hashes.partition_point(|&h| h < key),
        }
    }

    /// Owner (tier position) of point `i % len()`; `None` for an empty ring.
    #[inline]
    pub fn owner(&self, i: usize) -> Option<usize> {
        let n = self.owners.len();
        if n == 0 {
            return None;
        }
        self.owners.get(i % n).map(|&o| o as usize)
    }
}

/// nginx's split of a `server` name: `unix:PATH` has no port; otherwise the text after the
/// last `:` is the port when it is all digits (possibly empty), and the host is what precedes.
fn split_host_port(name: &[u8]) -> (&[u8], &[u8]) {
    if name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"unix:") {
        return (&name[5..], b"");
    }
    for j in 0..name.len() {
        let i = name.len() - j - 1;
        match name[i] {
            b':' => return (&name[..i], &name[i + 1..]),
            b'0'..=b'9' => {}
            _ => break,
        }
    }
    (name, b"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_split_as_nginx() {
        assert_eq!(
            split_host_port(b"127.0.0.1:8080"),
            (&b"127.0.0.1"[..], &b"8080"[..])
        );
        assert_eq!(split_host_port(b"[::1]:80"), (&b"[::1]"[..], &b"80"[..]));
        assert_eq!(split_host_port(b"backend"), (&b"backend"[..], &b""[..]));
        assert_eq!(split_host_port(b"a:b"), (&b"a:b"[..], &b""[..]));
        assert_eq!(split_host_port(b"host:"), (&b"host"[..], &b""[..]));
        assert_eq!(split_host_port(b"UNIX:/tmp/s"), (&b"/tmp/s"[..], &b""[..]));
        assert_eq!(split_host_port(b""), (&b""[..], &b""[..]));
    }

    #[test]
    fn ring_has_160_points_per_weight_sorted() {
        let r = Ring::build(&["10.0.0.1:80", "10.0.0.2:80"], &[1, 3]);
        assert_eq!(r.len(), 640);
        assert!(r.hashes.windows(2).all(|w| w[0] < w[1]));
        let first = r.owners.iter().filter(|&&o| o == 0).count();
        assert_eq!(first, 160);
        assert_eq!(r.owner(r.len()), r.owner(0));
        assert_eq!(Ring::default().owner(3), None);
        assert_eq!(Ring::default().start(3), 0);
        for key in (0..=u32::MAX).step_by(65_537).chain([0, 1, u32::MAX]) {
            assert_eq!(
                r.start(key),
                r.hashes.partition_point(|&h| h < key),
                "{key}"
            );
        }
        for &h in &r.hashes {
            assert_eq!(r.hashes[r.start(h)], h);
        }
    }
}
