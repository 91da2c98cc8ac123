//! Replays the fuzz seed corpora (fuzz/corpus/<target>/) on stable, through the same checks
//! the cargo-fuzz targets run (edgeshard::fuzz_checks), so that `cargo test` keeps every
//! input the fuzzer found interesting passing without libFuzzer or nightly.

use std::path::PathBuf;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: empty corpus", dir.display());
    for path in files {
        let data = std::fs::read(&path).unwrap();
        if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!("{}: {msg}", path.display());
        }
    }
}

#[test]
fn request_head_corpus() {
    replay("request_head", edgeshard::fuzz_checks::request_head);
}

#[test]
fn response_head_corpus() {
    replay("response_head", edgeshard::fuzz_checks::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", edgeshard::fuzz_checks::chunked);
}

#[test]
fn config_corpus() {
    replay("config", edgeshard::fuzz_checks::config);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", edgeshard::fuzz_checks::proxy_protocol);
}

#[test]
fn forward_request_corpus() {
    // Its own seeds, and every request head the head parser's fuzzing found interesting.
    replay("forward_request", edgeshard::fuzz_checks::forward_request);
    replay("request_head", edgeshard::fuzz_checks::forward_request);
}

#[test]
fn forward_response_corpus() {
    replay("forward_response", edgeshard::fuzz_checks::forward_response);
    replay("response_head", edgeshard::fuzz_checks::forward_response);
}
