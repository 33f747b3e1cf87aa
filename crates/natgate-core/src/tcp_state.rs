//! TCP connection tracking for timer selection.
