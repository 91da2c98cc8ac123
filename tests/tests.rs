//! edgeshard integration tests: the real binary, real sockets, both I/O
//! engines. See tests/support/mod.rs for the harness.

#[macro_use]
mod support;

mod access;
mod auth;
mod balancing;
mod bodies;
mod cache;
mod cache_collapse;
mod cache_file;
mod cache_forwarded;
mod cache_heads;
mod cache_range;
mod cache_revalidate;
mod check;
mod compress;
mod congestion;
mod dns;
mod early_answer;
mod examples;
mod framing;
mod fuzz_corpus;
mod handover;
mod headers;
mod interim;
mod keepalive;
mod limits;
mod messages;
mod observability;
mod placement;
mod privileges;
mod proxy_protocol;
mod rate_limit_store;
mod rate_limits;
mod real_clients;
mod regressions;
mod reload;
mod reload_listeners;
mod resilience;
mod response_framing;
mod robustness;
mod routing;
mod rules;
mod shutdown;
mod slow_clients;
mod smuggling;
mod smuggling_response;
mod splice;
mod splice_streams;
mod systemd;
mod tls;
mod tls_upstream;
mod tls_validity;
mod tunnel;
mod upgrade;
