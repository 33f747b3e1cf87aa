//! Arbitrary SSDP datagrams and HTTP requests to the UPnP IGD server
//! (`natgate_core::portmap::upnp`): never a panic, answers that are HTTP, nothing changed for
//! a stranger, no mapping for another host.
//!
//! Run with `cargo fuzz run upnp_request` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| natgate_fuzz::upnp_request::run(data));
