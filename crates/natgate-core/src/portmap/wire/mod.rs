//! The port-mapping protocols' messages, apart from what the server decides: NAT-PMP
//! (RFC 6886) and PCP (RFC 6887), which share UDP port 5351 and are told apart by their first
//! byte, the version (RFC 6887 section 9).

pub mod natpmp;
pub mod pcp;
