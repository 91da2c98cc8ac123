//! `edgeshard check` on bad resilience settings: exit 1, one line `FILE: KEY.PATH: message`.

use super::*;

fn expect_check_error(tables: &str, key: &str, words: &[&str]) {
    let text = config(
        false,
        &format!("backends = [{{ address = \"127.0.0.1:9001\" }}]\n{tables}"),
    );
    crate::support::expect_check_error_in(&text, key, words);
}

#[test]
fn check_rejects_unknown_key_in_health_check() {
    expect_check_error(
        "[upstream.health_check]\ntype = \"http\"\nintervall = \"1s\"",
        "upstream[0].health_check.intervall",
        &["unknown field"],
    );
}

#[test]
fn check_rejects_bad_expect_status() {
    for bad in ["200-999", "abc", "300-200", ""] {
        expect_check_error(
            &format!("[upstream.health_check]\ntype = \"http\"\nexpect_status = \"{bad}\""),
            "upstream[0].health_check.expect_status",
            &[],
        );
    }
}

#[test]
fn check_rejects_fail_timeout_with_outlier() {
    expect_check_error(
        "fail_timeout = \"5s\"\n[upstream.outlier]\nconsecutive = 3",
        "upstream[0].fail_timeout",
        &["outlier"],
    );
}

/// A percentage over 100 is named as such at its own key, and refuses nothing else: the
/// upstream still exists for the routes that name it.
#[test]
fn check_rejects_an_ejection_percentage_over_100_by_name() {
    for bad in ["101", "300", "4294967296", "-1"] {
        let tables = format!("[upstream.outlier]\nmax_ejection_percent = {bad}");
        expect_check_error(
            &tables,
            "upstream[0].outlier.max_ejection_percent",
            &["0 to 100"],
        );
        let text = config(
            false,
            &format!("backends = [{{ address = \"127.0.0.1:9001\" }}]\n{tables}"),
        );
        let (_, out) = crate::support::run_check(&text);
        assert_eq!(
            out.lines().filter(|l| l.contains(".toml: ")).count(),
            1,
            "one problem, one line: {out}"
        );
    }
}

#[test]
fn check_rejects_breaker_limits_of_zero() {
    for key in ["max_connections", "max_pending", "max_requests", "queue"] {
        expect_check_error(
            &format!("[upstream.breaker]\n{key} = 0"),
            &format!("upstream[0].breaker.{key}"),
            &["at least 1"],
        );
    }
}

#[test]
fn check_rejects_a_breaker_queue_without_what_it_needs() {
    expect_check_error(
        "[upstream.breaker]\nqueue = 10",
        "upstream[0].breaker.queue",
        &["needs max_requests"],
    );
    expect_check_error(
        "[upstream.breaker]\nmax_requests = 5\nqueue_timeout = \"1s\"",
        "upstream[0].breaker.queue_timeout",
        &["needs queue"],
    );
    expect_check_error(
        "[upstream.breaker]\nmax_requests = 5\nqueue = 10\nqueue_timeout = \"0s\"",
        "upstream[0].breaker.queue_timeout",
        &["greater than zero"],
    );
}

#[test]
fn check_rejects_zero_retry_attempts() {
    expect_check_error(
        "[upstream.retry]\nattempts = 0",
        "upstream[0].retry",
        &["attempts", "at least 1"],
    );
}

#[test]
fn check_accepts_every_resilience_key() {
    let text = config(
        false,
        "backends = [{ address = \"127.0.0.1:9001\" }, { address = \"127.0.0.1:9002\" }]\n\
         slow_start = \"0s\"\n\
         [upstream.health_check]\ntype = \"http\"\ninterval = \"100ms\"\ntimeout = \"200ms\"\nrise = 2\nfall = 2\n\
         jitter = 0.0\ninitial = \"unknown\"\nmethod = \"GET\"\npath = \"/health\"\nhost = \"x\"\n\
         expect_status = \"200-399\"\nbody_contains = \"ok\"\n\
         [upstream.outlier]\nconsecutive = 3\non = [\"connect-failure\", \"reset\", \"timeout\", \"5xx\", \"503\"]\n\
         base_ejection = \"1s\"\nmax_ejection = \"10s\"\nmax_ejection_percent = 50\n\
         [upstream.breaker]\nmax_connections = 10\nmax_pending = 10\nmax_requests = 2\nqueue = 8\nqueue_timeout = \"1s\"\n\
         [upstream.retry]\nattempts = 3\non = [\"reset\", \"timeout\", \"503\"]\nbudget = 0.2\nmin_retries_per_sec = 3\n\
         budget_window = \"10s\"\nper_try_timeout = \"300ms\"\ntotal_timeout = \"2s\"",
    );
    let (code, out) = run_check(&text);
    assert_eq!(
        code,
        Some(0),
        "a valid resilience config must pass; output:\n{out}"
    );
}
