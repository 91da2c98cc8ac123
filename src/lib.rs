//! edgeshard: a thread-per-core HTTP/1.1 edge load balancer and reverse proxy.
//!
//! The request pipeline, one module per stage: accept ([`listener`], [`worker`], TLS
//! termination in [`tls`]) → parse
//! ([`conn`], [`http::parse`]) → route ([`proxy`], [`route`]) → balance ([`forward`],
//! [`upstream::state`], [`balance`]) → pool ([`upstream::pool`], [`upstream::connect`]) →
//! forward ([`forward`], [`relay`], [`splice`]) → respond ([`respond`], [`http::encode`],
//! [`http::canned`]). Failures are one [`error::ProxyError`]. Each shard's state is
//! [`shard::ShardCtx`]; the read-only configuration they share is [`snapshot::Shared`].
//! Configuration is validated up front by [`config`]; the control plane beside the pipeline
//! reloads it ([`reload`], with the listening sockets in [`listening`]) and upgrades the
//! binary ([`upgrade`]).

pub mod admission;
pub mod alloc;
pub mod auth;
pub mod balance;
pub mod bufring;
pub mod cache;
pub mod carry;
pub mod client;
pub mod clock;
pub mod compress;
pub mod config;
pub mod conn;
pub mod coop;
pub mod demo;
pub mod dns;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzz_checks;
pub mod health;
pub mod http;
pub mod io;
pub mod linger;
pub mod listener;
pub mod listening;
pub mod mirror;
pub mod notify;
pub mod observe;
pub mod park;
pub mod privs;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod ratelimit_keys;
pub mod ratelimit_store;
pub mod reclaim;
pub mod relay;
pub mod reload;
pub mod respond;
pub mod route;
pub mod rules;
pub mod sample;
pub mod sdnotify;
pub mod shard;
pub mod snapshot;
pub mod splice;
pub mod stats;
#[cfg(test)]
pub(crate) mod test_engines;
pub mod tls;
pub mod trace;
pub mod transport;
pub mod tunnel;
pub mod tunnel_tls;
pub mod upgrade;
pub mod upstream;
pub mod weights;
pub mod worker;

/// The io_uring runtime `test_engines::block_on` runs unit tests on: the shards' own.
#[cfg(test)]
fn uring_test_runtime(
) -> std::io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    worker::build_uring_runtime()
}
