//! The SQL surface written in Rust. Thin: read arguments, call the layers below, answer.
//! Lifecycle, listing and audit are set-based table work and live in sql/.

mod api_key_verify;
mod args;
mod as_caller;
pub(crate) mod fmgr;
pub(crate) mod issue;
pub(crate) mod leaked;
pub(crate) mod pattern;
mod request;
pub(crate) mod signing;
mod stats;
