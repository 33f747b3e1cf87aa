//! Which worker owns an arbitrary packet (`natgate_core::shard`): never a panic, always a
//! worker that exists, the port's block for TCP and UDP from outside.
//!
//! Run with `cargo fuzz run shard_owner` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natgate_fuzz::shard_owner::run(data));
