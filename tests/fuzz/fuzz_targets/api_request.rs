//! Any bytes as the body of `POST /containers/run` and `.../exec` (see
//! `ferry::invariants::api_request`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::invariants::api_request(data));
