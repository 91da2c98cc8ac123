//! Stage 6 of the pipeline, *forward*, for a request with a body (or an `Expect:
//! 100-continue`): the `100 Continue` and the request body sent behind its head (read whole
//! before, for an upstream that buffers bodies: `forward/buffer.rs`), spliced when it is
//! large, of known length and both sides are plain TCP, copied otherwise; watched for an answer that comes before the body's end: by the receive posted
//! on a pooled connection ([`until_received`]), a second handle on other plain ones
//! ([`until_answered`]), and on TLS ones by the write itself (`TlsStream::flush_tls`). The
//! attempt loop that calls it is in `forward/mod.rs`.

use crate::bufring::{Receive, Received};
use crate::client::Client;
use crate::error::{Kind, ProxyError, Stage};
use crate::http::early::{holds_answer, holds_final_response};
use crate::http::encode::OutFraming;
use crate::http::parse::BodyFraming;
use crate::io::{write_static, IoFail};
use crate::relay::{relay_body, BodyPlan, Leg, RelayError};
use crate::splice::{relay_spliced, SplicePlan, SplicedBody};
use crate::stats::{add, bump};
use crate::trace::Trace;
use crate::transport::Transport;

use super::wait::Awaited;
use super::{Forward, Prepared, RequestFacts};

use monoio::net::TcpStream;
use std::future::Future;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// A second handle to a plain backend connection's socket, to watch for the backend's answer
/// while the body goes out on the first: a backend may answer an upload early (a 401, a 413)
/// and stop reading it without closing. `None` for TLS (its bytes may be a session ticket) or
/// when the handle cannot be made (the body then goes unwatched).
pub(super) fn answer_watch(conn: &Transport) -> Option<TcpStream> {
    let tcp = conn.plain()?;
    // SAFETY: `conn` owns the descriptor and outlives this borrow, which only dups it.
    let fd = unsafe { BorrowedFd::borrow_raw(tcp.as_raw_fd()) };
    let dup = fd.try_clone_to_owned().ok()?;
    TcpStream::from_std(std::net::TcpStream::from(dup)).ok()
}

/// Runs `body` (the request body's relay) to its end, unless the backend's final answer is
/// waiting on `watch` first: then the relay is dropped (the body stops there) and the try
/// goes on to read that answer, as after a backend that closed. Anything else the backend
/// sends first (a `100` it sends unasked, a close) is left to the relay, no longer watched.
pub(super) async fn until_answered<F>(body: F, watch: &TcpStream) -> F::Output
where
    F: Future<Output = Result<Result<(), IoFail>, ProxyError>>,
{
    let mut body = std::pin::pin!(body);
    // The relay first: a body that has just ended is not an early answer's, whatever came.
    monoio::select! {
        biased;
        r = &mut body => return r,
        _ = watch.readable(false) => {}
    }
    let stops = final_answer_waiting(watch.as_raw_fd());
    watched(stops);
    if stops {
        let e = std::io::Error::other("the backend answered before the body's end");
        return Ok(Err(IoFail::Io(e)));
    }
    body.await
}

/// [`until_answered`] on a connection with a receive posted (io_uring's pooled ones): the
/// backend's first bytes land in that receive's buffer, so the receive is the watch. When
/// it finishes first, what it got is returned beside the try's end (the head's read starts
/// from it): a final answer stops the body there; anything else (a `100` sent unasked, a
/// close, bytes that arrived while the ring was empty and are not yet a final answer) lets
/// the body go on, no longer watched.
pub(super) async fn until_received<F>(
    body: F,
    receive: &mut Receive<'_>,
    fd: RawFd,
) -> (F::Output, Option<std::io::Result<Received>>)
where
    F: Future<Output = Result<Result<(), IoFail>, ProxyError>>,
{
    let mut body = std::pin::pin!(body);
    let got = monoio::select! {
        biased;
        r = &mut body => return (r, None),
        got = &mut *receive => got,
    };
    let answered = match &got {
        Ok(Received::Data(b)) => holds_final_response(b),
        Ok(Received::NoBuffer) => final_answer_waiting(fd),
        _ => false,
    };
    watched(answered);
    if answered {
        let e = std::io::Error::other("the backend answered before the body's end");
        return (Ok(Err(IoFail::Io(e))), Some(got));
    }
    (body.await, Some(got))
}

/// Logs, at debug level, that the watch on a body's relay found the backend's bytes before
/// the body's end, and whether they stop it. Only then: a body relayed to its end logs
/// nothing. The moment the early-answer rule was applied, which tests/early_answer.rs waits
/// for before it sends the rest of a body.
fn watched(stops: bool) {
    tracing::debug!(
        stops,
        "the backend sent bytes before the request body's end"
    );
}

/// How much of what waits on a backend socket a look at it takes in (interim heads first).
const PEEK: usize = 4096;

/// Whether the bytes waiting on `fd` hold a final response (`HTTP/1.x ` and a status that
/// is not 1xx, after any complete interim heads), looked at without taking them.
fn final_answer_waiting(fd: RawFd) -> bool {
    let mut b = [0u8; PEEK];
    let n = crate::transport::recv_into(fd, &mut b, libc::MSG_PEEK).unwrap_or(0);
    holds_final_response(&b[..n])
}

/// After the body's write timed out: whether the backend's answer is there to be read (see
/// [`holds_answer`]): what the receive posted on the connection got, then what waits on the
/// socket. On TLS any plaintext (session tickets decrypt to none): rustls shows one record's
/// at a time, so a `100` in a record of its own counts, and the head's read then waits for
/// what follows it.
pub(super) fn answer_waiting(conn: &mut Transport, ready: &mut Option<Awaited<'_>>) -> bool {
    // A receive posted on the connection and not raced against the body (one that went out
    // whole with its head) may have taken the answer off the socket: looked at once, left
    // in `ready` if it finished.
    if let Some(Awaited::Receive(op)) = ready {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(got) = std::pin::Pin::new(op).poll(&mut cx) {
            *ready = Some(Awaited::Received(got));
        }
    }
    let tcp = match conn {
        Transport::Tls(tls) => return tls.plaintext_now(|b| !b.is_empty()),
        Transport::Plain(tcp) => tcp,
    };
    let mut b = [0u8; PEEK];
    let n = crate::transport::recv_into(tcp.as_raw_fd(), &mut b, libc::MSG_PEEK).unwrap_or(0);
    match ready {
        Some(Awaited::Received(Ok(Received::Data(got)))) => {
            holds_answer(&[got.as_slice(), &b[..n]].concat())
        }
        _ => holds_answer(&b[..n]),
    }
}

impl<'a> Forward<'a> {
    /// [`Forward::send_body`], watched for an early answer when that can help: by the
    /// receive posted on the connection (`ready`: io_uring's pooled ones,
    /// [`until_received`], which leaves what it got in `ready`), else by a second handle
    /// ([`until_answered`]). Not for a body already read whole with its head: it goes out
    /// before any answer could come (a dup per such request would buy nothing).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_body_watched(
        &self,
        client: &mut Client,
        conn: &mut Transport,
        ready: &mut Option<Awaited<'_>>,
        prepared: &mut Prepared<'a>,
        facts: &RequestFacts,
        backend: usize,
        trace: &mut Trace,
    ) -> Result<Result<(), IoFail>, ProxyError> {
        let whole = matches!(facts.framing, BodyFraming::Length(n) if client.buf.len() as u64 >= n);
        let fd = conn.tcp().as_raw_fd();
        if let (false, Some(Awaited::Receive(receive))) = (whole, &mut *ready) {
            let body = self.send_body(client, conn, prepared, facts, backend, trace);
            let (sent, got) = until_received(body, receive, fd).await;
            if let Some(got) = got {
                *ready = Some(Awaited::Received(got));
            }
            return sent;
        }
        let receiving = matches!(ready, Some(Awaited::Receive(_)));
        let watch = (!whole && !receiving).then(|| answer_watch(conn)).flatten();
        let body = self.send_body(client, conn, prepared, facts, backend, trace);
        match &watch {
            Some(w) => until_answered(body, w).await,
            None => body.await,
        }
    }

    /// Writes `100 Continue` to the client.
    pub(super) async fn send_continue(&self, client: &mut Client) -> Result<(), ProxyError> {
        write_static(
            &mut client.stream,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &mut client.deadline,
            self.cfg().timeouts.client_send,
        )
        .await
        .map_err(|_| ProxyError::client(Kind::Closed, Stage::Send))
    }

    /// Forward a request with a body: the head with the body (spliced when large and of
    /// known length). The outer error is the client's side failing; the inner one the
    /// upstream write failing.
    pub(super) async fn send_body(
        &self,
        client: &mut Client,
        conn: &mut Transport,
        prepared: &mut Prepared<'a>,
        facts: &RequestFacts,
        backend: usize,
        trace: &mut Trace,
    ) -> Result<Result<(), IoFail>, ProxyError> {
        let cfg = self.cfg();
        let wait = cfg.upstream_response(self.shared().backends[backend].upstream);
        let out = &mut *prepared.out;
        let mut pos = 0;
        // Large bodies of known length are spliced when both sides are plain TCP.
        let spliced = match (
            facts.framing,
            prepared.out_framing,
            client.stream.plain(),
            &mut *conn,
        ) {
            (BodyFraming::Length(n), OutFraming::Length(_), Some(tcp), Transport::Plain(up))
                if cfg.splice.enabled && n >= cfg.splice.min_bytes =>
            {
                self.pipes().lend().map(|p| (p, n, tcp, up))
            }
            _ => None,
        };
        let r = if let Some((pipe, len, tcp, up)) = spliced {
            bump(&self.stats().spliced);
            let r = relay_spliced(
                tcp,
                &client.buf,
                &mut pos,
                up,
                out,
                SplicePlan {
                    body: SplicedBody::Length(len),
                    pipe: pipe.pipe(),
                },
                &mut Leg::request(&mut client.deadline, cfg, wait, &mut false),
            )
            .await;
            if r.is_ok() {
                pipe.give_back();
                add(&self.stats().spliced_bytes, len - pos as u64);
            }
            r
        } else {
            let plan = BodyPlan {
                incoming: facts.framing,
                outgoing: prepared.out_framing,
                limit: prepared.body_limit,
                chunk_overhead: cfg.limits.max_header_bytes,
                trailers: None,
            };
            relay_body(
                &mut client.stream,
                &mut client.buf,
                &mut pos,
                conn,
                out,
                &plan,
                &mut Leg::request(&mut client.deadline, cfg, wait, &mut false),
            )
            .await
        };
        if matches!(&r, Err(e) if !matches!(e, RelayError::Write(_))) {
            // The client's side failed mid-body: the backend has part of a body it must not
            // take for the whole. A reset says so; an orderly close, to a server that reads
            // a short body to EOF as complete (gunicorn), would not.
            conn.reset_on_close();
        }
        match r {
            Ok(n) => {
                add(&self.stats().bytes_in, n);
                add(&self.stats().backends[backend].bytes_sent, n);
                trace.bytes_in = n;
                client.buf.drain(..pos);
                Ok(Ok(()))
            }
            Err(RelayError::Write(e)) => Ok(Err(e)),
            Err(RelayError::Read(IoFail::Timeout)) => {
                Err(ProxyError::client(Kind::Timeout, Stage::Send))
            }
            Err(RelayError::Read(_)) => Err(ProxyError::client(Kind::Closed, Stage::Send)),
            Err(RelayError::Framing) => Err(ProxyError::client(Kind::Framing, Stage::Send)),
            Err(RelayError::TooLarge) => Err(ProxyError::client(Kind::TooLarge, Stage::Send)),
            Err(RelayError::TooSlow) => Err(ProxyError::client(Kind::TooSlow, Stage::Send)),
        }
        .map_err(|e| ProxyError { sent: true, ..e })
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::bufring::BufRing;
    use crate::test_engines::{block_on, engines};

    // A body that went out whole with its head is not raced against the receive posted on a
    // pooled connection: when its write times out, that receive may already hold the early
    // answer, which a look at the socket no longer finds.
    #[test]
    fn an_answer_taken_by_the_posted_receive_counts_after_a_write_timeout() {
        for engine in engines() {
            block_on(engine, async {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let s = TcpStream::connect_addr(l.local_addr().unwrap())
                    .await
                    .unwrap();
                let mut peer = l.accept().unwrap().0;
                let ring = RefCell::new(BufRing::default());
                let Some(op) = ring.borrow_mut().post(&s) else {
                    // Nothing posted is right only on epoll: an io_uring run that got no
                    // ring must fail here, not pass without having run.
                    assert!(
                        monoio::utils::is_legacy(),
                        "io_uring with DEFER_TASKRUN (Linux >= 6.1) has rings"
                    );
                    return;
                };
                let mut ready = Some(Awaited::Receive(Receive::new(op, &ring, || {
                    Vec::with_capacity(8192)
                })));
                let mut conn = Transport::Plain(s);
                peer.write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n")
                    .unwrap();
                // The receive takes the bytes when the shard next waits in the kernel: until
                // then a peek would still find them.
                let fd = conn.tcp().as_raw_fd();
                let deadline = Instant::now() + Duration::from_secs(5);
                while crate::transport::recv_into(fd, &mut [0u8; 1], libc::MSG_PEEK).is_ok() {
                    assert!(
                        Instant::now() < deadline,
                        "the receive never took the answer"
                    );
                    monoio::time::sleep(Duration::from_millis(1)).await;
                }
                assert!(
                    answer_waiting(&mut conn, &mut ready),
                    "the received answer was not seen"
                );
                let Some(Awaited::Received(Ok(Received::Data(got)))) = ready else {
                    panic!("the receive's bytes are kept for the head's read")
                };
                assert!(got.starts_with(b"HTTP/1.1 413 "));
            });
        }
    }
}
