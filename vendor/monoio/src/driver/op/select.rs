//! edgeshard extension (vendor/monoio/PATCHES.md): a receive whose buffer the kernel picks
//! from a provided-buffer ring (`IOSQE_BUFFER_SELECT`) when data arrives, so a posted read
//! holds no buffer while it waits. io_uring only: the legacy driver has no such thing.

use std::io;

#[cfg(all(target_os = "linux", feature = "iouring"))]
use io_uring::{opcode, squeue, types};

use super::{super::shared_fd::SharedFd, Op, OpAble};
#[cfg(any(feature = "legacy", feature = "poll-io"))]
use crate::driver::ready::Direction;

thread_local! {
    /// Receives dropped before their owner saw them finish that took a buffer, as (group,
    /// buffer id), in the order their completions were reaped: see
    /// `crate::utils::take_dropped_selects`. One that took none (cancelled while it waited,
    /// the common case) is not recorded: nothing to give back, and a list nobody drains
    /// would grow by one entry per drop. So it holds at most one entry per buffer of the
    /// rings its owner registered.
    static DROPPED: std::cell::RefCell<Vec<(u16, u16)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Records that a dropped receive of `group` finished with CQE `flags` (called by the
/// driver when it reaps the completion of a dropped op, or drops a completed one).
#[cfg(all(target_os = "linux", feature = "iouring"))]
pub(crate) fn dropped(data: &dyn std::any::Any, flags: u32) {
    if let Some(op) = data.downcast_ref::<RecvSelect>() {
        if let Some(bid) = io_uring::cqueue::buffer_select(flags) {
            DROPPED.with(|d| d.borrow_mut().push((op.group, bid)));
        }
    }
}

/// Moves the dropped receives recorded so far into `out`.
pub(crate) fn take_dropped(out: &mut Vec<(u16, u16)>) {
    DROPPED.with(|d| out.append(&mut d.borrow_mut()));
}

/// `IORING_RECVSEND_POLL_FIRST` (Linux 5.19).
#[cfg(all(target_os = "linux", feature = "iouring"))]
const POLL_FIRST: u16 = 1;

pub(crate) struct RecvSelect {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    #[allow(unused)]
    fd: SharedFd,
    group: u16,
    len: u32,
}

impl Op<RecvSelect> {
    pub(crate) fn recv_select(fd: &SharedFd, group: u16, len: u32) -> io::Result<Self> {
        Op::submit_with(RecvSelect {
            fd: fd.clone(),
            group,
            len,
        })
    }
}

impl OpAble for RecvSelect {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    fn uring_op(&mut self) -> io_uring::squeue::Entry {
        let mut sqe =
            opcode::Recv::new(types::Fd(self.fd.raw_fd()), std::ptr::null_mut(), self.len)
                .buf_group(self.group)
                .build()
                .flags(squeue::Flags::BUFFER_SELECT);
        // IORING_RECVSEND_POLL_FIRST: nothing is there yet (a receive is posted before its
        // data), so the kernel waits for the socket first instead of picking a buffer and
        // trying a receive that fails; io-uring 0.6's `Recv` has no setter for it.
        // SAFETY: `squeue::Entry` is `#[repr(C)]` around `struct io_uring_sqe`, whose `ioprio`
        // (the receive's flags) is the u16 at byte offset 2.
        unsafe {
            let ioprio = (&mut sqe as *mut squeue::Entry).cast::<u8>().add(2).cast::<u16>();
            ioprio.write_unaligned(POLL_FIRST);
        }
        sqe
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    #[inline]
    fn legacy_interest(&self) -> Option<(Direction, usize)> {
        None
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    fn legacy_call(&mut self) -> io::Result<u32> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
