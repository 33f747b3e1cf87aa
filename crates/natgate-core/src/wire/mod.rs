//! Wire formats: zero-copy views of IPv4, UDP, TCP and ICMP, and checksums.
