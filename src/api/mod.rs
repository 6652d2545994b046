//! The SQL surface written in Rust. Thin: parse arguments, call the pure rooms, answer.
//! Lifecycle, listing and audit are set-based table work and live in sql/.

mod issue;
mod pattern;
mod stats;
mod verify;
