//! The event a parser dispatches.

use std::sync::Arc;

/// One dispatched server-sent event.
///
/// `event` and `id` are shared (`Arc<str>`) because they usually repeat from one
/// event to the next: a stream that always sends `event: update` or whose id only
/// changes on some events costs no allocation for them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The event type: `message` unless the block named another.
    pub event: Arc<str>,
    /// The data lines of the block joined with `\n`.
    pub data: String,
    /// The last event id in effect at dispatch; empty when none was ever set or it
    /// was reset (then no `Last-Event-ID` is sent on reconnect).
    pub id: Arc<str>,
    /// A valid `retry` value (milliseconds) seen in this event's own block.
    pub retry: Option<u64>,
}

impl Event {
    /// The id as an output record shows it: `None` when no id is in effect.
    pub fn id(&self) -> Option<&str> {
        if self.id.is_empty() {
            None
        } else {
            Some(&self.id)
        }
    }
}

/// An event as [`crate::sse::Parser::feed_ref`] hands it out: its text borrowed
/// from the chunk being parsed or from the parser, valid during the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// The event type: `message` unless the block named another.
    pub event: &'a str,
    /// The data lines of the block joined with `\n`.
    pub data: &'a str,
    /// The last event id in effect at dispatch (empty: none).
    pub id: &'a str,
    /// A valid `retry` value (milliseconds) seen in this event's own block.
    pub retry: Option<u64>,
}
