//! The IO steps every stage uses, each bounded by a deadline: read more bytes into a buffer,
//! write a buffer range, write static bytes. Buffers are owned and moved into the operation
//! (monoio's rent model) and handed back afterwards.
//!
//! Deadlines use one reusable timer per client connection ([`Deadline`]): an exchange does one
//! IO step at a time, so each step resets the same timer. Creating a fresh `monoio` timeout per
//! step cost about 500 instructions per request (callgrind), a third of the engine's own work.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::time::Sleep;

/// Why an IO step failed.
#[derive(Debug)]
pub enum IoFail {
    Eof,
    Timeout,
    Io(std::io::Error),
}

/// A reusable timer bounding one IO step at a time.
pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl Deadline {
    /// Must be called inside a runtime with the timer enabled.
    pub fn new() -> Deadline {
        Deadline {
            sleep: Box::pin(monoio::time::sleep(Duration::from_secs(3600))),
        }
    }

    /// Runs `fut` to completion unless `timeout` passes first.
    pub fn within<F: Future>(&mut self, timeout: Duration, fut: F) -> Within<'_, F> {
        self.sleep
            .as_mut()
            .reset(monoio::time::Instant::now() + timeout);
        Within {
            fut,
            sleep: self.sleep.as_mut(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future returned by [`Deadline::within`]: the operation first, then the timer.
    pub struct Within<'a, F> {
        #[pin]
        fut: F,
        sleep: Pin<&'a mut Sleep>,
    }
}

/// The deadline passed before the operation completed.
#[derive(Debug)]
pub struct Elapsed;

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        if let Poll::Ready(v) = me.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match me.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Reads more bytes into `buf` after its current contents, waiting at most `timeout`.
/// On timeout the buffer is lost with the cancelled read and `buf` is left empty.
pub async fn read_more<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<usize, IoFail> {
    read_more_at_most(stream, buf, dl, timeout, usize::MAX).await
}

/// [`read_more`], reading at most `max` bytes. Response heads are read this way: a pooled
/// buffer may have grown large, and a head read into all of it would pull a large body's
/// first part through user space (a copy in, a copy out) instead of leaving it to splice.
pub async fn read_more_at_most<S: AsyncReadRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    dl: &mut Deadline,
    timeout: Duration,
    max: usize,
) -> Result<usize, IoFail> {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.capacity().max(4096));
    }
    let len = buf.len();
    let end = len.saturating_add(max.max(1)).min(buf.capacity());
    let owned = std::mem::take(buf);
    match dl
        .within(timeout, stream.read(owned.slice_mut(len..end)))
        .await
    {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            match res {
                Ok(0) => Err(IoFail::Eof),
                Ok(n) => Ok(n),
                Err(e) => Err(IoFail::Io(e)),
            }
        }
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

/// Writes `buf[from..to]` completely, waiting at most `timeout`; `buf` is handed back.
pub async fn write_from<S: AsyncWriteRent>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    from: usize,
    to: usize,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    if from == to {
        return Ok(());
    }
    let owned = std::mem::take(buf);
    match dl
        .within(timeout, stream.write_all(owned.slice(from..to)))
        .await
    {
        Ok((res, slice)) => {
            *buf = slice.into_inner();
            res.map(|_| ()).map_err(IoFail::Io)
        }
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

/// Writes static bytes (canned responses, `100 Continue`).
pub async fn write_static<S: AsyncWriteRent>(
    stream: &mut S,
    bytes: &'static [u8],
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(), IoFail> {
    match dl.within(timeout, stream.write_all(bytes)).await {
        Ok((res, _)) => res.map(|_| ()).map_err(IoFail::Io),
        Err(Elapsed) => Err(IoFail::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_reusable_and_times_out() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(async {
                let mut dl = Deadline::new();
                // A step that finishes first, then one that cannot, then one that does again.
                assert!(dl.within(Duration::from_secs(5), async { 1 }).await.is_ok());
                let never = std::future::pending::<()>();
                assert!(dl.within(Duration::from_millis(5), never).await.is_err());
                let ok = dl
                    .within(
                        Duration::from_secs(5),
                        monoio::time::sleep(Duration::from_millis(1)),
                    )
                    .await;
                assert!(ok.is_ok(), "a reset deadline must not fire early");
            });
    }
}
