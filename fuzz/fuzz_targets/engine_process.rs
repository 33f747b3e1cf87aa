//! The engine's `process`, `process_batch`, timers and drains under decoded operation streams;
//! the body and its invariants are in `natgate_fuzz::engine_process`.
//!
//! Run with `cargo fuzz run engine_process` from the repository root; seeds are in
//! `fuzz/corpus/engine_process/`. Without nightly, `cargo test` in `fuzz/` runs the same body
//! over the seeds and a few thousand pseudo-random inputs.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    natgate_fuzz::engine_process::run(data);
});
