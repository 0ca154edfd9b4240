//! Any string as a `-p` spec (see `ferry::invariants::publish_spec`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry::invariants::publish_spec(data));
