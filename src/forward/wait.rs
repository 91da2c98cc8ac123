//! Stage 6 of the pipeline, *forward*: how one try awaits its response head. A pooled
//! connection comes with the op the pool posted on it at checkin ([`Awaited`]): a receive
//! into the shard's ring ([`crate::bufring`]), whose response then arrives already read, or
//! a readiness wait; a fresh connection gets a receive posted now or waits for readiness.

use std::time::{Duration, Instant};

use monoio::net::tcp::Readiness;

use crate::bufring::{Receive, Received};
use crate::io::{Deadline, Elapsed, IoFail};
use crate::relay::HeadFail;
use crate::transport::Transport;

/// What a pooled connection's response is awaited on: the op the pool posted on it, taken
/// at checkout (a receive is then counted as awaited, and the shard's ring topped up for it,
/// before the request goes out: its response can arrive in the same turn as the write).
pub(super) enum Awaited<'a> {
    Receive(Receive<'a>),
    Ready(Readiness),
    /// The receive, finished while the request body was still going out
    /// ([`super::body::until_received`]).
    Received(std::io::Result<Received>),
}

/// Waits, within `timeout`, until the backend's response arrives: received into a buffer
/// of the shard's ring (returned) when a receive was posted on the connection, else
/// readable. Returns what is left of `timeout` for reading its head.
pub(super) async fn wait_response(
    conn: &mut Transport,
    receive: Option<Receive<'_>>,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(Duration, Option<Vec<u8>>), HeadFail> {
    let waiting = crate::clock::now();
    let got = match receive {
        Some(receive) => match dl.within(timeout, receive).await {
            Ok(got) => Ok(received(got)?),
            Err(Elapsed) => Err(Elapsed),
        },
        None => dl
            .within(timeout, conn.readable())
            .await
            .map(|r| r.map(|()| None)),
    };
    ready_within(got, waiting, timeout)
}

/// What a finished receive gives the head's read: its bytes, or nothing when they arrived
/// while the ring was empty (they are read directly).
fn received(got: std::io::Result<Received>) -> Result<std::io::Result<Option<Vec<u8>>>, HeadFail> {
    match got {
        Ok(Received::Data(buf)) => Ok(Ok(Some(buf))),
        Ok(Received::Eof) => Err(HeadFail::Io(IoFail::Eof)),
        Ok(Received::NoBuffer) => Ok(Ok(None)),
        Err(e) => Ok(Err(e)),
    }
}

/// [`wait_response`] for a receive that finished while the body went out: nothing to wait.
pub(super) fn already_received(
    got: std::io::Result<Received>,
    timeout: Duration,
) -> Result<(Duration, Option<Vec<u8>>), HeadFail> {
    ready_within(Ok(received(got)?), crate::clock::now(), timeout)
}

/// Waits, within `timeout`, until the pool's readiness wait says the response can be read.
pub(super) async fn wait_ready(
    wait: Readiness,
    dl: &mut Deadline,
    timeout: Duration,
) -> Result<(Duration, Option<Vec<u8>>), HeadFail> {
    let waiting = crate::clock::now();
    let got = dl.within(timeout, wait).await;
    ready_within(got.map(|r| r.map(|()| None)), waiting, timeout)
}

/// [`wait_response`]'s result: what is left of `timeout` since `waiting`, and what arrived.
fn ready_within(
    got: Result<std::io::Result<Option<Vec<u8>>>, Elapsed>,
    waiting: Instant,
    timeout: Duration,
) -> Result<(Duration, Option<Vec<u8>>), HeadFail> {
    match got {
        Ok(Ok(buf)) => Ok((timeout.saturating_sub(crate::clock::now() - waiting), buf)),
        Ok(Err(e)) => Err(HeadFail::Io(IoFail::Io(e))),
        Err(Elapsed) => Err(HeadFail::Io(IoFail::Timeout)),
    }
}
