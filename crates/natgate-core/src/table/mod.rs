//! Session and mapping tables.
