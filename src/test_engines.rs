//! Tests only: which I/O engines a test run must exercise. Every test that runs on both engines
//! (the unit tests with a runtime of each driver, the integration suite's `::uring` and
//! `::epoll` variants) asks here first. This file is compiled into the library's unit tests and,
//! through `#[path]`, into the integration suite, so the rule is written once.
//!
//! The rule: a run exercises both engines. If io_uring is unavailable here (old kernel,
//! `kernel.io_uring_disabled`, seccomp), an io_uring test fails and says so; it never passes
//! without running. The one opt-out is explicit: `EDGESHARD_TEST_ENGINES=epoll` (a comma list of
//! `uring`, `epoll`) runs only the listed engines, and a test of an unlisted one passes without
//! running. CI never sets it (`.ci/run` unsets it).

#![allow(dead_code)]

use std::sync::OnceLock;

/// The variable a person sets to run only some engines.
pub const OPT_OUT_VAR: &str = "EDGESHARD_TEST_ENGINES";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TestEngine {
    Uring,
    Epoll,
}

impl TestEngine {
    pub fn as_str(self) -> &'static str {
        match self {
            TestEngine::Uring => "uring",
            TestEngine::Epoll => "epoll",
        }
    }
}

/// Whether a test on `engine` runs: `true` to run it, `false` when the person running the
/// tests left this engine out of `EDGESHARD_TEST_ENGINES` (the caller returns without running,
/// and says so on stderr). Panics, naming the reason and the two ways on, when io_uring is
/// wanted and unavailable.
pub fn should_run(engine: TestEngine) -> bool {
    if let Ok(list) = std::env::var(OPT_OUT_VAR) {
        if !list.split(',').any(|e| e.trim() == engine.as_str()) {
            eprintln!(
                "not run on engine {}: {OPT_OUT_VAR}={list} leaves it out",
                engine.as_str()
            );
            return false;
        }
    }
    if engine == TestEngine::Uring {
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        if let Err(why) = PROBE.get_or_init(probe_io_uring) {
            panic!(
                "io_uring is unavailable on this host ({why}), so this io_uring test cannot run. \
                 Enable it (sysctl kernel.io_uring_disabled=0; a kernel >= 5.11; no seccomp \
                 filter on io_uring_setup), or run only the epoll tests on purpose with \
                 {OPT_OUT_VAR}=epoll"
            );
        }
    }
    true
}

/// The engines this run exercises (epoll, then io_uring), after [`should_run`].
pub fn engines() -> Vec<TestEngine> {
    [TestEngine::Epoll, TestEngine::Uring]
        .into_iter()
        .filter(|&e| should_run(e))
        .collect()
}

/// Runs the future `f` makes on a fresh runtime of each engine this run exercises
/// ([`engines`], [`block_on`]).
pub fn on_both_drivers(f: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>) {
    for engine in engines() {
        block_on(engine, f());
    }
}

/// Blocks on `fut` on a fresh monoio runtime (with timers) of `engine`'s driver.
pub fn block_on<F: std::future::Future>(engine: TestEngine, fut: F) -> F::Output {
    match engine {
        // `super::uring_test_runtime`: the library's unit tests build the shards' own
        // (DEFER_TASKRUN where the kernel has it), the integration suite a default one.
        TestEngine::Uring => super::uring_test_runtime()
            .unwrap_or_else(|e| panic!("io_uring runtime: {e}"))
            .block_on(fut),
        TestEngine::Epoll => monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap_or_else(|e| panic!("epoll runtime: {e}"))
            .block_on(fut),
    }
}

/// Probes io_uring_setup(2) directly: `Err(reason)` if the kernel (or a seccomp policy)
/// refuses io_uring here.
fn probe_io_uring() -> Result<(), String> {
    // struct io_uring_params is 120 bytes, 8-byte aligned.
    let mut params = [0u64; 15];
    // SAFETY: io_uring_setup(entries, params) writes at most sizeof(struct io_uring_params)
    // = 120 bytes into `params`, which is 120 bytes long and lives across the call; libc
    // names the architecture's number for it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_long,
            params.as_mut_ptr(),
        )
    };
    if fd < 0 {
        return Err(format!(
            "io_uring_setup failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `fd` is a descriptor this function just opened and owns; closed once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}
