//! Start-up checks of the `edgeshard` command (beside stage 1, before any shard exists): the
//! CPU list (`--cpus`, `--shards`), the I/O engine (`auto` resolved, io_uring proven to
//! start) and the open-file limit. Each failure says what to do.

use anyhow::{bail, Context, Result};

use edgeshard::config::IoEngine;

/// Parses "0-3,6" into CPU ids.
fn parse_cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: usize = lo
            .parse()
            .with_context(|| format!("--cpus: {part:?} is not a CPU number or range like 0-3"))?;
        let hi: usize = hi
            .parse()
            .with_context(|| format!("--cpus: {part:?} is not a CPU number or range like 0-3"))?;
        if hi < lo || hi - lo > 4096 {
            bail!("--cpus: range {part:?} is reversed or too large");
        }
        for c in lo..=hi {
            if !cpus.contains(&c) {
                cpus.push(c);
            }
        }
    }
    if cpus.is_empty() {
        bail!("--cpus: the list is empty");
    }
    Ok(cpus)
}

pub fn choose_cpus(list: Option<&str>, shards: Option<usize>) -> Result<Vec<usize>> {
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .context("cannot read this process's CPU affinity mask")?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut cpus = match list {
        Some(list) => {
            let cpus = parse_cpu_list(list)?;
            for c in &cpus {
                if !allowed.contains(c) {
                    bail!(
                        "--cpus: CPU {c} does not exist or is not allowed for this process (allowed: {}); check the list, taskset or the cgroup cpuset",
                        format_cpus(&allowed)
                    );
                }
            }
            cpus
        }
        None => allowed.clone(),
    };
    if let Some(n) = shards {
        if n == 0 {
            bail!("--shards must be at least 1");
        }
        if n > cpus.len() {
            bail!("--shards {n} is more than the {} CPUs available ({}); lower --shards or widen --cpus", cpus.len(), format_cpus(&cpus));
        }
        cpus.truncate(n);
    }
    Ok(cpus)
}

pub fn format_cpus(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves `auto` and proves that the chosen engine starts, before any shard does.
pub fn resolve_engine(requested: IoEngine) -> Result<IoEngine> {
    if requested == IoEngine::Epoll {
        return Ok(IoEngine::Epoll);
    }
    let probe = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(64)
        .build()
        .map(drop);
    match (probe, requested) {
        (Ok(()), _) => Ok(IoEngine::Uring),
        (Err(e), IoEngine::Auto) => {
            tracing::warn!(error = %e, "io_uring is not available; falling back to the epoll engine");
            Ok(IoEngine::Epoll)
        }
        (Err(e), _) => {
            let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "absent".into());
            bail!(
                "--io-engine uring: io_uring cannot start: {e}. Check: the kernel is 5.11 or newer (uname -r); \
sysctl kernel.io_uring_disabled is 0, or 1 with this user in kernel.io_uring_group (now: {disabled}); no seccomp profile blocks io_uring_setup (containers often do); \
RLIMIT_MEMLOCK is large enough on kernels before 5.12 (ulimit -l). Or run with --io-engine epoll"
            )
        }
    }
}

/// Raises the soft open-file limit to the hard limit: every client and upstream connection
/// is a descriptor, and the default soft limit (often 1024) would cap connections far below
/// `max_connections_per_shard`.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the `rlimit` struct we own; failure is
    // reported through the return value and leaves the limit as it was.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let old = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                tracing::debug!(from = old, to = lim.rlim_max, "raised the open-file limit");
            }
        }
    }
}
