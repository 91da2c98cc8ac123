//! `edgeshard check` on bad balancing settings.

use super::*;

/// `edgeshard check` must exit 1 and print one line naming the file, `key` and all of
/// `words`.
fn expect_check_error(upstream: &str, key: &str, words: &[&str]) {
    let text = config(
        false,
        &format!("{upstream}\nbackends = [{{ address = \"127.0.0.1:9001\" }}]"),
    );
    crate::support::expect_check_error_in(&text, key, words);
}

#[test]
fn check_rejects_unknown_algorithm() {
    expect_check_error(
        "balance = \"fastest\"",
        "upstream[0].balance",
        &["unknown algorithm", "fastest"],
    );
}

#[test]
fn check_rejects_consistent_hash_without_hash_key() {
    expect_check_error(
        "balance = \"consistent_hash\"",
        "upstream[0].hash_key",
        &["required"],
    );
    expect_check_error(
        "balance = \"maglev\"",
        "upstream[0].hash_key",
        &["required"],
    );
}

#[test]
fn check_rejects_hash_key_on_round_robin() {
    expect_check_error(
        "balance = \"round_robin\"\nhash_key = \"client_ip\"",
        "upstream[0].hash_key",
        &["consistent_hash"],
    );
}

#[test]
fn check_rejects_bad_hash_key_syntax() {
    for bad in [
        "header:",
        "header:X User",
        "query:a=b",
        "cookies:x",
        "ip",
        "HEADER",
    ] {
        expect_check_error(
            &format!("balance = \"maglev\"\nhash_key = \"{bad}\""),
            "upstream[0].hash_key",
            &["invalid key", bad],
        );
    }
}

#[test]
fn check_rejects_bounded_load_below_one() {
    expect_check_error(
        "balance = \"consistent_hash\"\nhash_key = \"path\"\nbounded_load = 0.5",
        "upstream[0].bounded_load",
        &["0.5"],
    );
}

#[test]
fn check_rejects_a_short_sticky_secret() {
    expect_check_error(
        "sticky = { cookie = \"srv\", secret = \"short\" }",
        "upstream[0].sticky.secret",
        &["at least 16"],
    );
}

#[test]
fn check_rejects_a_sticky_ttl_that_is_not_whole_seconds() {
    // Max-Age is whole seconds: "900ms" became Max-Age=0, which deletes the cookie.
    for ttl in ["900ms", "1500ms"] {
        expect_check_error(
            &format!("sticky = {{ cookie = \"srv\", ttl = \"{ttl}\" }}"),
            "upstream[0].sticky.ttl",
            &["whole seconds", "Max-Age"],
        );
    }
}

#[test]
fn check_rejects_bad_sticky_cookie_attributes() {
    expect_check_error(
        "sticky = { cookie = \"srv\", same_site = \"loose\" }",
        "upstream[0].sticky.same_site",
        &["Strict", "Lax", "None"],
    );
    expect_check_error(
        "sticky = { cookie = \"srv\", same_site = \"None\", secure = false }",
        "upstream[0].sticky.secure",
        &["without Secure"],
    );
}

#[test]
fn check_accepts_every_balancing_key() {
    let text = config(
        false,
        "balance = \"maglev\"\nhash_key = \"cookie:uid\"\nbounded_load = 1.25\n\
         sticky = { cookie = \"srv\", ttl = \"1h\", secret = \"0123456789abcdef\" }\n\
         backends = [{ address = \"127.0.0.1:9001\", weight = 3 }, { address = \"127.0.0.1:9002\", backup = true }]",
    );
    let (code, out) = run_check(&text);
    assert_eq!(
        code,
        Some(0),
        "a valid balancing config must pass; output:\n{out}"
    );
}
