//! The translation engine: ties wire format, tables and policy together.
