//! Arbitrary bytes as an encoded `v1::Batch` through decoding, validation, ingest,
//! maintenance and every HTTP view (see `tests/batch_fuzz/harness.rs`, shared with the
//! proptest twin).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/batch_fuzz/harness.rs"]
#[allow(dead_code, reason = "the proptest twin reads how far each batch got")]
mod harness;

fuzz_target!(|data: &[u8]| {
    harness::exercise(data);
});
