//! Arbitrary datagrams to the STUN codec and server (`natgate_core::stun`): never a panic,
//! parse and write agree, every answer a response to the request from a socket the server has.
//!
//! Run with `cargo fuzz run stun_message` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natgate_fuzz::stun_message::run(data));
