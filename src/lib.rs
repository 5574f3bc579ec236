//! sse-relay: subscribe to Server-Sent Events streams and ship every event, in
//! order and without loss, into files, stdout and other sinks.
//!
//! The data flow, and the module that owns each step:
//!
//! ```text
//! config ──► supervisor ──► stream (HTTP, reconnects) ──► sse::Parser
//!                                   │ events
//!                                   ▼
//!                         route (filters) ──► sink queues ──► sink (write + ack)
//!                                                                  │ acks
//!                                                                  ▼
//!                                                             checkpoint
//! ```

pub mod ack;
pub mod auth;
pub mod backoff;
pub mod check;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod escape;
pub mod files;
pub mod gaps;
pub mod heap;
pub mod http;
pub mod log;
pub mod metrics;
pub mod nats;
pub mod notify;
pub mod preflight;
pub mod prepare;
pub mod record;
pub mod route;
pub mod shutdown;
pub mod sink;
pub mod sse;
pub mod stream;
pub mod supervisor;
#[cfg(test)]
mod test_deadline;
pub mod validate;
