//! Fuzz target `forward_request`: the checks are edgeshard::fuzz_checks::forward_request, shared with the
//! corpus replay in tests/fuzz_corpus.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| edgeshard::fuzz_checks::forward_request(data));
