//! Arbitrary requests to the PCP and NAT-PMP server (`natgate_core::portmap`): never a panic,
//! answers that are responses of a version it speaks, nothing changed for a stranger.
//!
//! Run with `cargo fuzz run portmap_request` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natgate_fuzz::portmap_request::run(data));
