//! Where a cached body lives, between *respond* (which stores it) and the next hit (which
//! writes it): small bodies in memory, large ones in the shard's body file, a `memfd` that
//! the kernel sends from with `sendfile(2)` (page references into the socket's buffers, no
//! copy), as nginx sends its cache files. A body in memory goes out in one vectored write with
//! the head; that write copies the body into the socket's buffers, which at 64 KiB is most of
//! a hit's cost (loadtest/results/2026-12-04-vm/edge.md).
//!
//! The file's offsets are never reused: each body is written at the end, and a body no longer
//! referenced (evicted, purged, replaced, and no hit still sending it) has its pages punched out
//! (`FALLOC_FL_PUNCH_HOLE`), which gives the memory back. Pages a `sendfile` already put in a
//! socket's buffers stay alive, unchanged, until the peer has them: a punched range's pages
//! leave the file, and a later body is written to fresh pages, never over bytes in flight.

use std::cell::{Cell, OnceCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Bodies from this size go to the body file. Below it a copy costs about what the extra
/// system call of sending the head and the body separately does.
pub const FILE_MIN: usize = 32 * 1024;

/// Offsets stop growing here (2^62 bytes written, centuries at any real rate): bodies then
/// stay in memory.
const OFFSET_LIMIT: u64 = 1 << 62;

const PAGE: u64 = 4096;

/// A stored body, shared by its entry and the hits writing it.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(Rc<[u8]>),
    File(Rc<Extent>),
}

impl Body {
    pub fn len(&self) -> usize {
        match self {
            Body::Memory(b) => b.len(),
            Body::File(e) => e.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body::Memory(v.into())
    }
}

/// One body's bytes in the body file.
#[derive(Debug)]
pub struct Extent {
    file: Rc<OwnedFd>,
    pub off: u64,
    pub len: usize,
}

impl Extent {
    /// The body file's descriptor, for `sendfile` and `pread`.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Copies the body into `out` (a TLS client's path: its bytes are encrypted in user
    /// space anyway).
    pub fn read_into(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        let start = out.len();
        out.resize(start + self.len, 0);
        let mut done = 0;
        while done < self.len {
            let dst = &mut out[start + done..];
            // SAFETY: pread(2) writes at most `dst.len()` bytes into a live, exclusively
            // borrowed slice; the descriptor is kept open by `self.file`. Exercised by
            // `body_file_round_trip` and by the TLS hit in tests/cache_file.rs.
            let n = unsafe {
                libc::pread(
                    self.fd(),
                    dst.as_mut_ptr().cast(),
                    dst.len(),
                    (self.off + done as u64) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => done += n as usize,
                0 => {
                    out.truncate(start);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                _ => {
                    let e = std::io::Error::last_os_error();
                    if e.kind() != std::io::ErrorKind::Interrupted {
                        out.truncate(start);
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }
}

impl Drop for Extent {
    fn drop(&mut self) {
        let len = (self.len as u64).div_ceil(PAGE) * PAGE;
        // SAFETY: fallocate(2) on a descriptor kept open by `self.file`; it only changes the
        // file (this extent's page-aligned range, which no other extent shares). A failure
        // leaves the pages allocated until the shard's file closes: nothing to undo.
        unsafe {
            libc::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.off as libc::off_t,
                len as libc::off_t,
            );
        }
    }
}

/// A shard's body file; opened at the first large body.
#[derive(Debug, Default)]
pub struct BodyFile {
    file: OnceCell<Rc<OwnedFd>>,
    /// `memfd_create` failed once: bodies stay in memory.
    unavailable: Cell<bool>,
    /// Where the next body is written (page-aligned).
    next: Cell<u64>,
}

impl BodyFile {
    /// Where `body` is kept: in the file when it is large and the file can be had.
    pub fn store(&self, body: Vec<u8>) -> Body {
        if body.len() < FILE_MIN || self.unavailable.get() {
            return body.into();
        }
        match self.put(&body) {
            Ok(e) => Body::File(Rc::new(e)),
            Err(e) => {
                if self.file.get().is_none() {
                    tracing::warn!(error = %e, "cache: no body file (memfd_create), large cached bodies stay in memory and are copied when served");
                    self.unavailable.set(true);
                }
                body.into()
            }
        }
    }

    fn put(&self, body: &[u8]) -> std::io::Result<Extent> {
        let file = match self.file.get() {
            Some(f) => f.clone(),
            None => {
                let f = Rc::new(memfd()?);
                // Empty (checked above), on this shard's thread alone.
                let _ = self.file.set(f.clone());
                f
            }
        };
        let off = self.next.get();
        let span = (body.len() as u64).div_ceil(PAGE) * PAGE;
        if off + span > OFFSET_LIMIT {
            return Err(std::io::ErrorKind::StorageFull.into());
        }
        // The extent owns its range from here: a failed write punches it again.
        self.next.set(off + span);
        let extent = Extent {
            file,
            off,
            len: body.len(),
        };
        let mut done = 0;
        while done < body.len() {
            let src = &body[done..];
            // SAFETY: pwrite(2) reads `src.len()` bytes from a live slice; the descriptor is
            // kept open by `extent.file`. Exercised by `body_file_round_trip`.
            let n = unsafe {
                libc::pwrite(
                    extent.fd(),
                    src.as_ptr().cast(),
                    src.len(),
                    (off + done as u64) as libc::off_t,
                )
            };
            if n > 0 {
                done += n as usize;
                continue;
            }
            let e = std::io::Error::last_os_error();
            if n < 0 && e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(if n == 0 {
                std::io::ErrorKind::WriteZero.into()
            } else {
                e
            });
        }
        Ok(extent)
    }
}

fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: memfd_create(2) reads a NUL-terminated name from a static C string; on success
    // the new descriptor is owned by nobody else and taken exactly once.
    let fd = unsafe { libc::memfd_create(c"edgeshard-cache".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: see above.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes allocated to the file (st_blocks × 512).
    fn allocated(fd: RawFd) -> u64 {
        // SAFETY: fstat(2) fills a zeroed stat we own.
        unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            assert_eq!(libc::fstat(fd, &mut st), 0);
            st.st_blocks as u64 * 512
        }
    }

    #[test]
    fn body_file_round_trip() {
        let f = BodyFile::default();
        assert!(matches!(f.store(vec![1; FILE_MIN - 1]), Body::Memory(_)));
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..FILE_MIN as u32).map(|i| (i % 241) as u8).collect();
        let (Body::File(ea), Body::File(eb)) = (f.store(a.clone()), f.store(b.clone())) else {
            panic!("large bodies go to the file");
        };
        assert_eq!((ea.off % PAGE, eb.off % PAGE), (0, 0), "page-aligned");
        assert!(eb.off >= ea.off + a.len() as u64, "no overlap");
        let mut got = b"prefix".to_vec();
        ea.read_into(&mut got).unwrap();
        assert_eq!(&got[6..], &a[..]);
        let mut got = Vec::new();
        eb.read_into(&mut got).unwrap();
        assert_eq!(got, b);
        let fd = ea.fd();
        let before = allocated(fd);
        assert!(before >= (a.len() + b.len()) as u64);
        drop(ea);
        let after = allocated(fd);
        assert!(
            before - after >= 98_304,
            "a dropped body's pages are punched out: {before} -> {after}"
        );
        // A new body goes after the old ones, never over them.
        let Body::File(ec) = f.store(a.clone()) else {
            panic!()
        };
        assert!(ec.off > eb.off);
        let mut got = Vec::new();
        eb.read_into(&mut got).unwrap();
        assert_eq!(got, b, "the remaining body is intact");
    }
}
