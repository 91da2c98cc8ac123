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

#[cfg(feature = "signal")]
mod ctrlc;
#[cfg(feature = "signal")]
pub use self::ctrlc::{CtrlC, Error as CtrlCError};

#[cfg(feature = "utils")]
mod bind_to_cpu_set;
#[cfg(feature = "utils")]
pub use bind_to_cpu_set::{bind_to_cpu_set, BindError};
