//! Stage 6 of the pipeline, *forward*, for a request with a body (or an `Expect:
//! 100-continue`): the `100 Continue` and the request body sent behind its head, spliced when
//! it is large, of known length and both sides are plain TCP, copied otherwise. The attempt
//! loop that calls it is in `forward/mod.rs`.

use crate::client::Client;
use crate::error::{Kind, ProxyError, Stage};
use crate::http::encode::OutFraming;
use crate::http::parse::BodyFraming;
use crate::io::{write_static, IoFail};
use crate::relay::{relay_body, BodyPlan, Leg, RelayError};
use crate::splice::{relay_spliced, SplicePlan, SplicedBody};
use crate::stats::{add, bump};
use crate::trace::Trace;
use crate::transport::Transport;

use super::{Forward, Prepared, RequestFacts};

impl<'a> Forward<'a> {
    /// Writes `100 Continue` to the client.
    pub(super) async fn send_continue(&self, client: &mut Client) -> Result<(), ProxyError> {
        write_static(
            &mut client.stream,
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &mut client.deadline,
            self.cfg.timeouts.client_send,
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
        let cfg = self.cfg;
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
                self.pipes.lend().map(|p| (p, n, tcp, up))
            }
            _ => None,
        };
        let r = if let Some((pipe, len, tcp, up)) = spliced {
            bump(&self.stats.spliced);
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
                &mut Leg::request(&mut client.deadline, cfg, &mut false),
            )
            .await;
            if r.is_ok() {
                pipe.give_back();
                add(&self.stats.spliced_bytes, len - pos as u64);
            }
            r
        } else {
            let plan = BodyPlan {
                incoming: facts.framing,
                outgoing: prepared.out_framing,
                limit: cfg.limits.max_body_bytes,
                chunk_overhead: cfg.limits.max_header_bytes,
                forward_trailers: false,
            };
            relay_body(
                &mut client.stream,
                &mut client.buf,
                &mut pos,
                conn,
                out,
                &plan,
                &mut Leg::request(&mut client.deadline, cfg, &mut false),
            )
            .await
        };
        match r {
            Ok(n) => {
                add(&self.stats.bytes_in, n);
                add(&self.stats.backends[backend].bytes_sent, n);
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
