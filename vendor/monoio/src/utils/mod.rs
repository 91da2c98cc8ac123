//! Common utils

pub(crate) mod box_into_inner;
pub(crate) mod linked_list;
#[allow(dead_code)]
pub(crate) mod slab;
#[allow(dead_code)]
pub(crate) mod thread_id;
pub(crate) mod uring_detect;

mod rand;
pub use rand::thread_rng_n;
pub use uring_detect::detect_uring;

pub use crate::driver::op::is_legacy;

/// edgeshard extension (vendor/monoio/PATCHES.md): how many times this thread's io_uring
/// driver has submitted its queue, waited in the kernel for completions (which runs the
/// completion work DEFER_TASKRUN defers) and reaped them; always 0 without one. An op posted
/// when this read `n` has been submitted, and its completion reaped if its event had happened
/// by that wait, once this reads more than `n`.
#[cfg(all(target_os = "linux", feature = "iouring"))]
pub fn uring_reaps() -> u64 {
    crate::driver::uring_reaps()
}

/// edgeshard extension (vendor/monoio/PATCHES.md): registers a provided-buffer ring of
/// `entries` (a power of two) at `ring_addr` as buffer group `group` with this thread's
/// io_uring driver, for [`crate::net::TcpStream::recv_select`]. `Unsupported` without one.
///
/// # Safety
/// `ring_addr` must be page-aligned memory of `entries` 16-byte entries that stays valid, and
/// every buffer put in it must stay valid, until [`unregister_buf_ring`] or the thread's
/// driver is dropped.
#[cfg(all(target_os = "linux", feature = "iouring"))]
pub unsafe fn register_buf_ring(ring_addr: u64, entries: u16, group: u16) -> std::io::Result<()> {
    crate::driver::register_buf_ring(ring_addr, entries, group)
}

/// edgeshard extension: unregisters buffer group `group` ([`register_buf_ring`]).
#[cfg(all(target_os = "linux", feature = "iouring"))]
pub fn unregister_buf_ring(group: u16) -> std::io::Result<()> {
    crate::driver::unregister_buf_ring(group)
}

/// edgeshard extension: moves into `out` the buffer-select receives
/// ([`crate::net::TcpStream::recv_select`]) this thread dropped before they finished and
/// whose completions the driver has since reaped (or that had completed unseen) and that
/// took a buffer, as (group, id of the buffer the kernel filled for it), in reaping order. Every posted receive that takes a buffer is either seen to finish by its
/// owner or reported here once; one that took none is not reported.
pub fn take_dropped_selects(out: &mut Vec<(u16, u16)>) {
    crate::driver::op::select::take_dropped(out);
}

#[cfg(feature = "signal")]
mod ctrlc;
#[cfg(feature = "signal")]
pub use self::ctrlc::{CtrlC, Error as CtrlCError};

#[cfg(feature = "utils")]
mod bind_to_cpu_set;
#[cfg(feature = "utils")]
pub use bind_to_cpu_set::{bind_to_cpu_set, BindError};
