//! The process's allocator, under every stage of the pipeline: mimalloc, called through its
//! plain entry points wherever they already give the alignment asked for; and whether the
//! process's memory may use transparent huge pages ([`set_huge_pages`], `server.huge_pages`).
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every request to `mi_malloc_aligned`. In
//! mimalloc 3 that takes a fast path only for blocks up to 1 KiB; anything larger whose
//! rounded size is not a power of two (a boxed request future, a 68 KiB relay buffer, a
//! rustls record) goes through `mi_theap_malloc_zero_aligned_at_overalloc`: a larger block,
//! an offset pointer and a page flagged for the slower free. Callgrind on a keep-alive GET
//! (epoll engine): ~700 instructions of ~19k per request were that path
//! (`loadtest/results/2026-12-05-vm/instructions.md`).
//!
//! Plain `mi_malloc` is enough when the alignment needs no more than mimalloc gives every
//! block: block sizes are multiples of 8 bytes and pages start 16-byte aligned, so every
//! block is 8-byte aligned, and a request whose size is a multiple of 16 lands in a bin
//! whose block size is one too (`mi_good_size`; the bins of odd word counts, 24, 40, 56
//! bytes, take no such request), hence a 16-byte-aligned address. That holds only without
//! mimalloc's padding, which its `secure` and `debug` builds add (16 bytes asked would take
//! a 24-byte block): libmimalloc-sys is built without them (Cargo.toml), and
//! `sizes_that_are_multiples_of_16_get_blocks_that_are` fails if that changes. Larger
//! alignments, and 16 with a size that is not a multiple of it, keep the aligned calls.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// mimalloc with plain calls for the alignments its blocks already have.
pub struct MiAlloc;

/// Whether every block mimalloc's plain `mi_malloc(size)` returns is aligned to `align`.
#[inline(always)]
fn plain_is_aligned(size: usize, align: usize) -> bool {
    align <= 8 || (align == 16 && size % 16 == 0)
}

// SAFETY: every method forwards to mimalloc, which returns null on failure (as GlobalAlloc
// requires) and blocks of at least `size` bytes; the alignment is the layout's, either asked
// for explicitly (`*_aligned`) or guaranteed by the block sizes (`plain_is_aligned`, see the
// module header and the tests). mi_free and mi_realloc accept any pointer mimalloc returned,
// from either family.
unsafe impl GlobalAlloc for MiAlloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl; the caller gives a non-zero size (GlobalAlloc's contract).
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`; the zalloc variants return zeroed blocks.
        unsafe {
            if plain_is_aligned(layout.size(), layout.align()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (GlobalAlloc's contract), so from mimalloc.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc with `layout`; the new block keeps the layout's
        // alignment by the same rule as `alloc`, for the new size. mimalloc keeps the block
        // in place when it fits (its address then has the alignment it was given) or copies.
        unsafe {
            if plain_is_aligned(new_size, layout.align()) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// `server.huge_pages`: whether the process's memory may be backed by transparent huge pages.
/// mimalloc `madvise(MADV_HUGEPAGE)`s the arenas it reserves, so on a host with THP `always` or
/// `madvise` every 2 MiB region the shards touch a little of is resident whole. Measured on the
/// 2-core VM (loadtest/results/2026-12-05-vm-heads/NOTES.md), off against on: RSS at start ~9
/// against ~22 MB, growth under 200 connections fetching 64 KiB 3.7 against 5.3 MB (nginx
/// 2.0), 786 against 3,768 bytes per idle connection at 1,000, for 1.5 % more CPU per 64 KiB
/// response and none measurable on small, 16 KiB or TLS requests. Off by default:
/// `PR_SET_THP_DISABLE`, which the kernel checks at every page fault, set before mimalloc's
/// constructor runs (`main.rs`). `true` clears it again, unless `MIMALLOC_ALLOW_THP` in the
/// environment says no (mimalloc set the flag itself then, and it stays). Start-up only.
pub fn set_huge_pages(enabled: bool) -> std::io::Result<()> {
    if enabled && env_forbids_huge_pages() {
        return Ok(());
    }
    let off = libc::c_ulong::from(!enabled);
    let zero: libc::c_ulong = 0;
    // SAFETY: PR_SET_THP_DISABLE takes the flag and three zero `unsigned long`s, and touches
    // no memory of ours.
    let r = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, off, zero, zero, zero) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// `MIMALLOC_ALLOW_THP` set to a value mimalloc reads as false (`0`, `false`, `no`, `off`).
fn env_forbids_huge_pages() -> bool {
    std::env::var("MIMALLOC_ALLOW_THP").is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_uppercase().as_str(),
            "0" | "FALSE" | "NO" | "OFF"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether transparent huge pages are allowed for the process (`PR_GET_THP_DISABLE` is 0).
    fn huge_pages() -> bool {
        let zero: libc::c_ulong = 0;
        // SAFETY: PR_GET_THP_DISABLE takes four zero `unsigned long`s and returns the flag.
        unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, zero, zero, zero, zero) == 0 }
    }

    /// The setting reaches the kernel both ways (the test process ends with them allowed, as
    /// it started unless its environment said otherwise).
    #[test]
    fn huge_pages_are_turned_off_and_on() {
        let before = huge_pages();
        set_huge_pages(false).unwrap();
        assert!(!huge_pages());
        set_huge_pages(true).unwrap();
        assert!(huge_pages());
        set_huge_pages(before).unwrap();
    }

    #[test]
    fn sizes_that_are_multiples_of_16_get_blocks_that_are() {
        // The plain path's premise for align 16 (module header): every bin a multiple-of-16
        // size lands in has a block size that is a multiple of 16. Padding (mimalloc's
        // secure or debug builds) breaks it: 16 bytes asked would be a 24-byte block, and
        // every other one only 8-byte aligned.
        for size in (16..=(1 << 20)).step_by(16) {
            // SAFETY: mi_good_size is a pure size query; no memory is touched.
            let good = unsafe { mi::mi_good_size(size) };
            assert_eq!(
                good % 16,
                0,
                "a {size}-byte request gets a {good}-byte block"
            );
        }
    }

    /// Every size up to 8 KiB, sizes across the larger bins up to 4 MiB, and every alignment from 1 to
    /// 4 KiB: each block is aligned, writable over its whole size, zeroed where asked, grown
    /// and shrunk by realloc with its contents kept, and freed. (The test binary's allocator
    /// is the system's: this calls `MiAlloc` directly, through the same code the binary uses.)
    #[test]
    fn blocks_have_their_alignment_and_size() {
        let sizes = (1..=8192).chain((8193..4 << 20).step_by(65521)).chain([
            64 << 10,
            68 << 10,
            1 << 20,
            3 << 20,
        ]);
        let a = MiAlloc;
        for size in sizes {
            for shift in 0..=12 {
                let align = 1usize << shift;
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: non-zero sizes; each block is used within its size and freed once
                // with the layout it was allocated (or last reallocated) with.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{size} / {align}");
                    assert_eq!(p as usize % align, 0, "alloc {size} / {align}");
                    p.write_bytes(0xa5, size);
                    let grown = size * 2 + 8;
                    let q = a.realloc(p, layout, grown);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc {size}->{grown} / {align}");
                    assert_eq!(*q, 0xa5);
                    assert_eq!(*q.add(size - 1), 0xa5);
                    q.add(size).write_bytes(0x5a, grown - size);
                    let grown_layout = Layout::from_size_align(grown, align).unwrap();
                    let small = size.div_ceil(2);
                    let r = a.realloc(q, grown_layout, small);
                    assert_eq!(r as usize % align, 0, "shrink {grown}->{small} / {align}");
                    assert_eq!(*r.add(small - 1), 0xa5);
                    a.dealloc(r, Layout::from_size_align(small, align).unwrap());
                    if size <= 4096 || size % 65521 == 8193 {
                        let z = a.alloc_zeroed(layout);
                        assert_eq!(z as usize % align, 0, "zeroed {size} / {align}");
                        assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                        a.dealloc(z, layout);
                    }
                }
            }
        }
    }

    #[test]
    fn the_plain_calls_are_taken_only_where_blocks_are_aligned() {
        assert!(plain_is_aligned(1, 1));
        assert!(plain_is_aligned(12, 4));
        assert!(plain_is_aligned(24, 8));
        assert!(plain_is_aligned(4104, 8));
        assert!(plain_is_aligned(48, 16));
        // Conservative: mimalloc would round 24 up to a 32-byte block, but the rule does not
        // rely on how small sizes are rounded.
        assert!(!plain_is_aligned(24, 16));
        assert!(!plain_is_aligned(64, 32));
        assert!(!plain_is_aligned(4096, 4096));
    }
}
