//! Where a cached body lives, between *respond* (which stores it) and the next hit (which
//! writes it): small bodies in memory, large ones in the shard's body file, a `memfd` that
//! the kernel sends from with `sendfile(2)` (page references into the socket's buffers, no
//! copy), as nginx sends its cache files. A body in memory goes out in one vectored write with
//! the head; that write copies the body into the socket's buffers, which at 64 KiB is most of
//! a hit's cost (loadtest/results/2026-12-04-vm/edge.md).
//!
//! A file's offsets are never reused: each body is written at the end (in whole pages), and a
//! body no longer referenced (evicted, purged, replaced, and no hit still sending it) has its
//! pages punched out (`FALLOC_FL_PUNCH_HOLE`), which gives the memory back. Pages a `sendfile`
//! already put in a socket's buffers stay alive, unchanged, until the peer has them: a punched
//! range's pages leave the file, and a later body is written to fresh pages, never over bytes
//! in flight. That holds for whole base pages only, so the file is not used where shared
//! memory may have large pages (a hole punched in part of one zeroes that part in place):
//! [`Setup::decide`] reads the transparent huge page settings once. Past 1 TiB of offsets, or
//! the process's file size limit, a new file is started; the old one closes with its last
//! body.

use std::cell::{Cell, OnceCell, RefCell};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;

/// Bodies from this size go to the body file. Below it a copy costs about what the extra
/// system call of sending the head and the body separately does.
pub const FILE_MIN: usize = 32 * 1024;

/// A body file is replaced by a new one when its offsets reach this (or the process's
/// `RLIMIT_FSIZE`, past which a write would raise SIGXFSZ); the old one closes with its last
/// body.
const FILE_SPAN: u64 = 1 << 40;

/// A stored body, shared by its entry and the hits writing it.
#[derive(Debug, Clone)]
pub enum Body {
    Memory(Rc<[u8]>),
    File(Rc<Extent>),
}

impl Body {
    /// Bytes it holds: its length, in the file rounded up to whole pages.
    pub fn charge(&self) -> u64 {
        match self {
            Body::Memory(b) => b.len() as u64,
            Body::File(e) => e.span,
        }
    }

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
    /// Its page-aligned length in the file.
    span: u64,
}

impl Extent {
    /// The body file's descriptor, for `sendfile` and `pread`.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Appends the body's bytes `range` (clamped to the body) to `out`: a TLS client's path
    /// (its bytes are encrypted in user space anyway), a piece at a time.
    pub fn read_into(
        &self,
        range: std::ops::Range<usize>,
        out: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let (from, to) = (range.start.min(self.len), range.end.min(self.len));
        let want = to.saturating_sub(from);
        let start = out.len();
        out.reserve(want);
        let mut done = 0;
        while done < want {
            let dst = &mut out.spare_capacity_mut()[..want - done];
            // SAFETY: pread(2) writes at most `dst.len()` bytes into the vector's spare
            // capacity (reserved above, exclusively borrowed); the length is raised below by
            // what it wrote. The descriptor is kept open by `self.file`. Exercised by
            // `body_file_round_trip` and by the TLS hit in tests/cache_file.rs.
            let n = unsafe {
                libc::pread(
                    self.fd(),
                    dst.as_mut_ptr().cast(),
                    dst.len(),
                    (self.off + (from + done) as u64) as libc::off_t,
                )
            };
            match n {
                n if n > 0 => {
                    done += n as usize;
                    // SAFETY: the `n` bytes after the old length were just written by pread.
                    unsafe { out.set_len(start + done) };
                }
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
        // SAFETY: fallocate(2) on a descriptor kept open by `self.file`; it only changes the
        // file: this extent's range, whole base pages that no other extent shares (the file
        // is used only where shared memory has no large pages, `BodyFile::open`). A failure
        // leaves the pages allocated until the file closes: nothing to undo.
        unsafe {
            libc::fallocate(
                self.fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                self.off as libc::off_t,
                self.span as libc::off_t,
            );
        }
    }
}

/// A shard's body file; opened at the first large body.
#[derive(Debug, Default)]
pub struct BodyFile {
    file: RefCell<Option<Rc<OwnedFd>>>,
    /// Page size and offset limit, decided at the first large body; `None` there: bodies stay
    /// in memory.
    setup: OnceCell<Option<Setup>>,
    /// Where the next body is written (page-aligned).
    next: Cell<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Setup {
    page: u64,
    limit: u64,
}

impl BodyFile {
    /// Where `body` is kept: in the file when it is large and the file can be had.
    pub fn store(&self, body: Vec<u8>) -> Body {
        if body.len() < FILE_MIN {
            return body.into();
        }
        let Some(setup) = *self.setup.get_or_init(Setup::decide) else {
            return body.into();
        };
        match self.put(&body, setup) {
            Ok(e) => Body::File(Rc::new(e)),
            Err(e) => {
                // Kept in memory; tried again with the next large body (a transient lack of
                // descriptors or memory passes).
                tracing::warn!(error = %e, "cache: a large body could not go to the body file; kept in memory");
                body.into()
            }
        }
    }

    fn put(&self, body: &[u8], setup: Setup) -> std::io::Result<Extent> {
        let span = (body.len() as u64).div_ceil(setup.page) * setup.page;
        if span > setup.limit {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        let mut slot = self.file.borrow_mut();
        if slot.is_some() && self.next.get() + span > setup.limit {
            // The old file closes when its last body goes.
            *slot = None;
        }
        let file = match &*slot {
            Some(f) => f.clone(),
            None => {
                let f = Rc::new(memfd()?);
                *slot = Some(f.clone());
                self.next.set(0);
                f
            }
        };
        drop(slot);
        let off = self.next.get();
        // The extent owns its range from here: a failed write punches it again.
        self.next.set(off + span);
        let extent = Extent {
            file,
            off,
            len: body.len(),
            span,
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

impl Setup {
    /// The page size and offset limit, or `None` where punching a freed body out could
    /// touch another body's bytes or bytes still in flight: shared memory with large pages
    /// (a hole punched in part of a large page zeroes that part in place).
    fn decide() -> Option<Setup> {
        if let Some(why) = large_shmem_pages() {
            tracing::warn!("cache: large cached bodies stay in memory ({why})");
            return None;
        }
        // SAFETY: sysconf(3) and getrlimit(2) read integers into live locals.
        let (page, fsize) = unsafe {
            let mut rl: libc::rlimit = std::mem::zeroed();
            let fsize = if libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl) == 0 {
                rl.rlim_cur
            } else {
                0
            };
            (libc::sysconf(libc::_SC_PAGESIZE), fsize)
        };
        let page = u64::try_from(page).ok().filter(|p| p.is_power_of_two())?;
        let limit = FILE_SPAN.min(fsize) / page * page;
        (limit >= page).then_some(Setup { page, limit })
    }
}

/// Why shared memory may use pages larger than the base page, or `None`: the transparent
/// huge page settings for shmem (the top one and each per-size one) are all `never`,
/// `advise` or `deny` (the body file is never mapped, so `advise` gives it none), or the
/// kernel has no such settings. Public for tests/cache_file.rs, whose tests of the file need
/// a host where it is used.
pub fn large_shmem_pages() -> Option<String> {
    large_pages_in(std::path::Path::new("/sys/kernel/mm/transparent_hugepage"))
}

/// [`large_shmem_pages`] for the settings under `dir`.
fn large_pages_in(dir: &std::path::Path) -> Option<String> {
    let chosen = |path: &std::path::Path| -> Option<String> {
        let text = std::fs::read_to_string(path).ok()?;
        let (_, rest) = text.split_once('[')?;
        Some(rest.split_once(']')?.0.to_string())
    };
    let top = chosen(&dir.join("shmem_enabled"));
    let off = |v: &str| matches!(v, "never" | "advise" | "deny");
    if let Some(t) = &top {
        if !off(t) {
            return Some(format!("shmem_enabled is {t}"));
        }
    }
    for d in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = d.path().join("shmem_enabled");
        if let Some(v) = chosen(&path) {
            let inherited_off = v == "inherit" && top.as_deref().is_none_or(off);
            if !off(&v) && !inherited_off {
                return Some(format!("{} is {v}", path.display()));
            }
        }
    }
    None
}

/// `MFD_NOEXEC_SEAL` (Linux 6.3): the file can never be made executable. Older kernels
/// refuse the flag (EINVAL); the file is then made without it.
const MFD_NOEXEC_SEAL: libc::c_uint = 0x0008;

fn memfd() -> std::io::Result<OwnedFd> {
    let name = c"edgeshard-cache";
    let mut fd = -1;
    for flags in [libc::MFD_CLOEXEC | MFD_NOEXEC_SEAL, libc::MFD_CLOEXEC] {
        // SAFETY: memfd_create(2) reads a NUL-terminated name from a static C string.
        fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
        if fd >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created by memfd_create and is owned by nobody else;
    // it is taken exactly once.
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

    fn page() -> u64 {
        // SAFETY: sysconf(3) returns an integer.
        unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
    }

    /// A body file used whatever this host's huge page settings, with offsets up to `limit`.
    fn file(limit: u64) -> BodyFile {
        let f = BodyFile::default();
        let _ = f.setup.set(Some(Setup {
            page: page(),
            limit,
        }));
        f
    }

    #[test]
    fn body_file_round_trip() {
        let f = file(FILE_SPAN);
        assert!(matches!(f.store(vec![1; FILE_MIN - 1]), Body::Memory(_)));
        let a: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let b: Vec<u8> = (0..FILE_MIN as u32).map(|i| (i % 241) as u8).collect();
        let (Body::File(ea), Body::File(eb)) = (f.store(a.clone()), f.store(b.clone())) else {
            panic!("large bodies go to the file");
        };
        assert_eq!((ea.off % page(), eb.off % page()), (0, 0), "page-aligned");
        assert!(eb.off >= ea.off + a.len() as u64, "no overlap");
        assert_eq!(
            Body::File(ea.clone()).charge() % page(),
            0,
            "charged by whole pages"
        );
        let mut got = b"prefix".to_vec();
        ea.read_into(0..ea.len, &mut got).unwrap();
        assert_eq!(&got[6..], &a[..]);
        let mut got = Vec::new();
        eb.read_into(0..eb.len, &mut got).unwrap();
        assert_eq!(got, b);
        // A piece, and a range past the end clamped to it.
        let mut got = Vec::new();
        ea.read_into(70_000..80_000, &mut got).unwrap();
        ea.read_into(99_990..200_000, &mut got).unwrap();
        assert_eq!(got, [&a[70_000..80_000], &a[99_990..]].concat());
        let fd = ea.fd();
        let before = allocated(fd);
        assert!(before >= (a.len() + b.len()) as u64);
        drop(ea);
        let after = allocated(fd);
        assert!(
            before - after >= 100_000 / page() * page(),
            "a dropped body's pages are punched out: {before} -> {after}"
        );
        // A new body goes after the old ones, never over them.
        let Body::File(ec) = f.store(a.clone()) else {
            panic!()
        };
        assert!(ec.off > eb.off);
        let mut got = Vec::new();
        eb.read_into(0..eb.len, &mut got).unwrap();
        assert_eq!(got, b, "the remaining body is intact");
    }

    /// Past its offset limit the shard starts a new file; the old one stays open while a
    /// body in it lives, and its bodies keep their bytes.
    #[test]
    fn a_full_file_is_replaced_and_closes_with_its_last_body() {
        let body = |seed: u8| -> Vec<u8> { (0..FILE_MIN).map(|i| (i as u8) ^ seed).collect() };
        let f = file(2 * FILE_MIN as u64);
        let stored: Vec<Rc<Extent>> = (0..3u8)
            .map(|i| match f.store(body(i)) {
                Body::File(e) => e,
                Body::Memory(_) => panic!("in the file"),
            })
            .collect();
        assert_eq!(stored[0].fd(), stored[1].fd());
        assert_ne!(
            stored[1].fd(),
            stored[2].fd(),
            "a third body starts a new file"
        );
        assert_eq!(stored[2].off, 0);
        for (i, e) in stored.iter().enumerate() {
            let mut got = Vec::new();
            e.read_into(0..e.len, &mut got).unwrap();
            assert_eq!(got, body(i as u8));
        }
        let old = Rc::downgrade(&stored[0].file);
        drop(stored);
        assert!(
            old.upgrade().is_none(),
            "the old file closed with its last body"
        );
        assert!(
            matches!(f.store(vec![0; FILE_MIN * 3]), Body::Memory(_)),
            "over the limit"
        );
    }

    #[test]
    fn huge_page_settings_are_read() {
        let root = std::env::temp_dir().join(format!("edgeshard-thp-{}", std::process::id()));
        let set = |top: &str, sized: &str| {
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(root.join("hugepages-64kB")).unwrap();
            std::fs::write(root.join("shmem_enabled"), top).unwrap();
            std::fs::write(root.join("hugepages-64kB/shmem_enabled"), sized).unwrap();
            large_pages_in(&root)
        };
        let top_never = "always within_size advise [never] deny force\n";
        assert_eq!(
            set(top_never, "always inherit within_size advise [never]\n"),
            None
        );
        assert_eq!(
            set(top_never, "always [inherit] within_size advise never\n"),
            None
        );
        assert_eq!(
            set("always within_size [advise] never deny force\n", "[advise]"),
            None
        );
        let why = set(top_never, "always inherit [within_size] advise never\n").unwrap();
        assert!(
            why.contains("hugepages-64kB") && why.contains("within_size"),
            "{why}"
        );
        let why = set(
            "[always] within_size advise never deny force\n",
            "[inherit]",
        )
        .unwrap();
        assert!(why.contains("always"), "{why}");
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(large_pages_in(&root), None, "a kernel without the settings");
    }
}
