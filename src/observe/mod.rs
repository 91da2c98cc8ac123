//! Observability, beside the request pipeline: what shards record as requests go through
//! (counters in [`crate::stats`], access log lines, request ids, rate-limited error lines)
//! and the admin listener that reads it ([`admin`]: `/metrics`, `/status`, `/healthz`,
//! `/ready`, drain and enable).

pub mod access;
pub mod admin;
mod admin_listen;
pub mod errors;
pub mod log_writer;
pub mod metrics;
mod metrics_admission;
mod metrics_routes;
pub mod reqid;
pub mod syslog;
pub mod template;
