//! The SSE wire format: a pure, incremental parser and the [`Event`] it yields.
//!
//! Nothing in here does I/O or knows about tokio: bytes go in through
//! [`Parser::feed_ref`] (or [`Parser::feed`]), events come out through a callback. That keeps the hot path a
//! plain loop over byte slices, testable and benchmarkable on its own, and lets the
//! module be lifted into its own crate unchanged.
//!
//! The rules are the WHATWG HTML "Server-sent events" parsing rules, summarised in
//! `DESIGN.md`; each rule is named where it is implemented in `parser.rs`.

mod event;
mod lines;
mod parser;

pub use event::{Event, EventRef};
pub(crate) use parser::same_bytes;
pub use parser::{Limits, Parser, ParserStats};
