//! Deterministic body patterns and SHA-256 helpers.
//!
//! Bodies are a pseudo-random byte stream with a prime period slightly below
//! 1 MiB, so that any reordering, duplication or loss of blocks whose size is
//! a power of two changes the data. Slices are served from one precomputed
//! buffer (memcpy/memcmp only), which keeps 64 MiB transfers cheap in debug
//! builds.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::{Mutex, OnceLock};

/// Period of the pattern (a prime, deliberately not a power of two).
const PERIOD: usize = 1_048_573;
/// Longest slice `pattern_slice` hands out.
pub const MAX_SLICE: usize = 1 << 20;

fn base() -> &'static [u8] {
    static BASE: OnceLock<Vec<u8>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut v = Vec::with_capacity(PERIOD + MAX_SLICE);
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..PERIOD {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            v.push((x >> 33) as u8);
        }
        for i in 0..MAX_SLICE {
            let b = v[i % PERIOD];
            v.push(b);
        }
        v
    })
}

/// The `len` pattern bytes starting at absolute `offset` (len <= MAX_SLICE).
pub fn pattern_slice(offset: u64, len: usize) -> &'static [u8] {
    assert!(len <= MAX_SLICE);
    let start = (offset % PERIOD as u64) as usize;
    &base()[start..start + len]
}

/// The first `len` bytes of the pattern, as an owned vector.
pub fn pattern_vec(len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let mut off = 0u64;
    while v.len() < len {
        let n = (len - v.len()).min(MAX_SLICE);
        v.extend_from_slice(pattern_slice(off, n));
        off += n as u64;
    }
    v
}

/// Writes the first `len` pattern bytes to `w` in pieces of at most MAX_SLICE.
pub fn write_pattern(w: &mut dyn Write, len: u64) -> io::Result<()> {
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(MAX_SLICE);
        w.write_all(pattern_slice(off, n))?;
        off += n as u64;
    }
    Ok(())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// SHA-256 (hex) of the first `len` pattern bytes; cached per length.
pub fn expected_sha256(len: u64) -> String {
    static CACHE: OnceLock<Mutex<HashMap<u64, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(s) = cache.lock().unwrap().get(&len) {
        return s.clone();
    }
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(MAX_SLICE);
        h.update(pattern_slice(off, n));
        off += n as u64;
    }
    let s = hex(&h.finalize());
    cache.lock().unwrap().insert(len, s.clone());
    s
}

/// Incremental verifier: SHA-256 of everything seen, plus the offset of the
/// first byte that differs from the pattern (for diagnostics).
pub struct BodyCheck {
    hasher: Sha256,
    pub len: u64,
    pub first_mismatch: Option<u64>,
}

impl Default for BodyCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl BodyCheck {
    pub fn new() -> Self {
        BodyCheck {
            hasher: Sha256::new(),
            len: 0,
            first_mismatch: None,
        }
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.hasher.update(data);
        while !data.is_empty() {
            let n = data.len().min(MAX_SLICE);
            if self.first_mismatch.is_none() {
                let expect = pattern_slice(self.len, n);
                if expect != &data[..n] {
                    let i = expect
                        .iter()
                        .zip(&data[..n])
                        .position(|(a, b)| a != b)
                        .unwrap();
                    self.first_mismatch = Some(self.len + i as u64);
                }
            }
            self.len += n as u64;
            data = &data[n..];
        }
    }

    pub fn finish(self) -> (u64, String, Option<u64>) {
        (self.len, hex(&self.hasher.finalize()), self.first_mismatch)
    }
}
