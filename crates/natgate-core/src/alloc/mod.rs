//! Port and address allocation: which external endpoint a new mapping gets.
