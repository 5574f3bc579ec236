//! The NATS JetStream sink: each output record is published, as its JSON
//! object, to a subject made from a template (`sse.{stream}.{event}`).
//!
//! An event is acknowledged only after JetStream's publish ack, so a stream's
//! checkpoint never passes an event JetStream does not hold. Each publish with
//! an event id carries `Nats-Msg-Id: <stream>:<id>`: JetStream drops a message
//! whose id it saw within the stream's duplicate window, so the replay that
//! follows a crash (events after the checkpoint, some already published) is
//! not stored twice. Events that share an id (a server that sets `id:` only on
//! some events: the others inherit it) get `<stream>:<id>#<n>` for the n-th
//! repeat, so they are not mistaken for duplicates; the numbering restarts
//! with each new id and with each run of the stream (a restart, a reload, a
//! takeover by this instance), so a replay numbers them the same way. Events
//! without an id have no message id: a replay may store them twice.
//!
//! Publishes are pipelined: up to `max_in_flight` wait for their acks at once,
//! awaited in the order they were sent. A batch whose publish fails (NATS down,
//! no ack within `ack_timeout`, no stream takes the subject) fails as a whole
//! and the shared runner retries it with this sink's backoff; the part already
//! acknowledged in order is not sent again. While it retries, the queue fills
//! and the streams feeding it stop reading: nothing is lost. A retry re-sends
//! messages whose ack was lost; their message ids make JetStream drop them.
//!
//! Order: JetStream stores messages in the order they arrive on the one
//! connection; a message rejected mid-pipeline while later ones were stored
//! is re-sent after them (`max_in_flight = 1` rules that out, at a cost in
//! throughput).

pub mod config;

pub use config::NatsSinkConfig;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::HeaderMap;
use bytes::Bytes;

use super::{Delivery, Sink, Written};
use crate::backoff::Backoff;
use crate::record::RecordRef;

/// The last id a stream's records carried in this sink, and how many records
/// in a row have carried it.
struct Repeats {
    /// The run of the stream it was seen in ([`crate::ack::AckTracker::run`]).
    run: u64,
    id: String,
    count: u64,
}

/// Informational headers on every message, beside `Nats-Msg-Id`.
pub const STREAM_HEADER: &str = "SSE-Stream";
pub const EVENT_HEADER: &str = "SSE-Event";
pub const ID_HEADER: &str = "SSE-Id";

pub struct NatsSink {
    name: String,
    config: Box<NatsSinkConfig>,
    context: Option<jetstream::Context>,
    backoff: Backoff,
    /// How many deliveries at the front of the current batch JetStream has
    /// acknowledged, in order: a retry starts after them.
    done: usize,
    /// Per stream: the id of its last published event and how many events
    /// after the first carried that same id.
    repeats: HashMap<String, Repeats>,
    /// The message id computed for each delivery of the current batch, kept so
    /// a retry sends exactly the same ids.
    ids: Vec<Option<String>>,
}

impl NatsSink {
    pub fn new(name: &str, config: Box<NatsSinkConfig>) -> NatsSink {
        NatsSink {
            name: name.to_owned(),
            backoff: Backoff::new(
                config.backoff_initial,
                config.backoff_max,
                config.backoff_max,
            ),
            config,
            context: None,
            done: 0,
            repeats: HashMap::new(),
            ids: Vec::new(),
        }
    }

    /// Connects (once per call) and, with `create_stream`, makes sure the
    /// JetStream stream exists.
    async fn context(&mut self) -> io::Result<jetstream::Context> {
        if let Some(context) = &self.context {
            return Ok(context.clone());
        }
        let client = crate::nats::connect(
            &self.config.connection,
            &format!("sse-relay sink {}", self.name),
            self.config.backoff_max,
        )
        .await
        .map_err(io::Error::other)?;
        let context = jetstream::ContextBuilder::new()
            .timeout(self.config.ack_timeout)
            // Our own pipeline bounds what waits for acks; the client's limit
            // only has to be no lower.
            .max_ack_inflight(self.config.max_in_flight.max(1))
            .build(client);
        if let (true, Some(stream)) = (self.config.create_stream, &self.config.stream) {
            let subjects = vec![wildcard_subject(&self.config.subject)];
            let config = jetstream::stream::Config {
                name: stream.clone(),
                subjects: subjects.clone(),
                duplicate_window: self.config.duplicate_window,
                ..Default::default()
            };
            context.get_or_create_stream(config).await.map_err(|e| {
                io::Error::other(format!(
                    "cannot create JetStream stream `{stream}` for {}: {e}",
                    subjects.join(", ")
                ))
            })?;
        }
        tracing::info!(
            sink = %self.name,
            "connected to NATS at {}",
            crate::nats::shown_urls(&self.config.connection)
        );
        self.context = Some(context.clone());
        Ok(context)
    }

    /// The message id of `record`, numbering repeats of the same id within
    /// one run of its stream (`run`: its acknowledgement tracker, new each
    /// time the stream starts). A stream that starts again (restart, reload,
    /// taken over from another instance) resumes from its checkpoint, and its
    /// first record may carry the id this sink saw last in the previous run:
    /// that is the same event again, to be dropped as a duplicate, not a
    /// repeat to be numbered.
    fn message_id(&mut self, record: &RecordRef<'_>, run: u64) -> Option<String> {
        let id = record.id()?;
        let entry = self
            .repeats
            .entry(record.stream.to_owned())
            .or_insert_with(|| Repeats {
                run,
                id: String::new(),
                count: 0,
            });
        if entry.run != run {
            entry.run = run;
            entry.id.clear();
        }
        if entry.id == id {
            entry.count += 1;
        } else {
            entry.id.clear();
            entry.id.push_str(id);
            entry.count = 0;
        }
        Some(match entry.count {
            0 => format!("{}:{id}", record.stream),
            n => format!("{}:{id}#{n}", record.stream),
        })
    }

    fn headers(&self, record: &RecordRef<'_>, msg_id: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(msg_id) = msg_id {
            headers.insert("Nats-Msg-Id", msg_id);
        }
        if let Some(stream) = &self.config.stream {
            headers.insert("Nats-Expected-Stream", stream.as_str());
        }
        headers.insert(STREAM_HEADER, record.stream);
        headers.insert(EVENT_HEADER, record.event);
        if let Some(id) = record.id() {
            headers.insert(ID_HEADER, id);
        }
        headers
    }

    /// Publishes `records[self.done..]`, pipelined, advancing `self.done` as
    /// acks arrive in order.
    async fn publish(&mut self, records: &[RecordRef<'_>]) -> io::Result<()> {
        let context = self.context().await?;
        let mut pending = VecDeque::with_capacity(self.config.max_in_flight);
        let mut json = Vec::with_capacity(512);
        for index in self.done..records.len() {
            if pending.len() >= self.config.max_in_flight {
                self.await_oldest(&mut pending, records).await?;
            }
            let record = &records[index];
            let subject = render_subject(&self.config.subject, record.stream, record.event);
            json.clear();
            record.write_json(&mut json);
            let headers = self.headers(record, self.ids[index].as_deref());
            let ack = context
                .publish_with_headers(subject, headers, Bytes::copy_from_slice(&json))
                .await
                .map_err(|e| self.publish_error(e, record))?;
            pending.push_back(ack);
        }
        while !pending.is_empty() {
            self.await_oldest(&mut pending, records).await?;
        }
        Ok(())
    }

    async fn await_oldest(
        &mut self,
        pending: &mut VecDeque<jetstream::context::PublishAckFuture>,
        records: &[RecordRef<'_>],
    ) -> io::Result<()> {
        let Some(ack) = pending.pop_front() else {
            return Ok(());
        };
        match ack.await {
            Ok(_ack) => {
                // `_ack.duplicate` is a replay JetStream already had: just as done.
                self.done += 1;
                Ok(())
            }
            Err(e) => Err(self.publish_error(e, &records[self.done])),
        }
    }

    fn publish_error(
        &mut self,
        error: async_nats::jetstream::context::PublishError,
        record: &RecordRef<'_>,
    ) -> io::Error {
        let subject = render_subject(&self.config.subject, record.stream, record.event);
        let hint = match error.kind() {
            PublishErrorKind::StreamNotFound => match &self.config.stream {
                Some(stream) => format!(
                    ": no JetStream stream takes `{subject}`: create `{stream}` with that subject, or set create_stream = true"
                ),
                None => format!(
                    ": no JetStream stream takes `{subject}`: create one, or set `stream` and create_stream = true"
                ),
            },
            PublishErrorKind::TimedOut => format!(
                ": no ack within ack_timeout ({})",
                humantime::format_duration(self.config.ack_timeout)
            ),
            _ => String::new(),
        };
        io::Error::other(format!(
            "publish to `{subject}` (stream {} id {}) failed: {error}{hint}",
            record.stream,
            record.id().unwrap_or("(none)")
        ))
    }
}

impl Sink for NatsSink {
    async fn write(&mut self, batch: &mut Vec<Delivery>) -> io::Result<Written> {
        let records: Vec<RecordRef<'_>> = batch.iter().flat_map(Delivery::records).collect();
        if self.ids.len() != records.len() {
            // First attempt at this batch: number the message ids once.
            let mut ids = Vec::with_capacity(records.len());
            for delivery in batch.iter() {
                let run = delivery.tracker.run();
                for record in delivery.records() {
                    ids.push(self.message_id(&record, run));
                }
            }
            self.ids = ids;
            self.done = 0;
        }
        let result = self.publish(&records).await;
        if result.is_ok() {
            self.done = 0;
            self.ids.clear();
            self.backoff.reset();
        }
        result.map(|()| Written::Durable)
    }

    fn retry_delay(&mut self, _failures: u32) -> Duration {
        self.backoff.next_delay(None)
    }
}

/// One subject token from a name: `.`, `*`, `>`, whitespace and control
/// characters become `_` (they would split the subject or make it a
/// wildcard), and an empty name becomes `_`.
pub fn subject_token(name: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| matches!(c, '.' | '*' | '>') || c.is_whitespace() || c.is_control();
    if name.is_empty() {
        return "_".into();
    }
    if !name.chars().any(bad) {
        return name.into();
    }
    name.chars()
        .map(|c| if bad(c) { '_' } else { c })
        .collect::<String>()
        .into()
}

/// The subject of an event of type `event` from `stream`.
pub fn render_subject(template: &str, stream: &str, event: &str) -> String {
    template
        .replace("{stream}", &subject_token(stream))
        .replace("{event}", &subject_token(event))
}

/// The template with each token that holds a placeholder made `*`: the
/// subjects a created stream takes.
pub fn wildcard_subject(template: &str) -> String {
    template
        .split('.')
        .map(|token| {
            if token.contains("{stream}") || token.contains("{event}") {
                "*"
            } else {
                token
            }
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Checks a subject template: non-empty tokens, no wildcards, no spaces, and
/// no placeholder other than `{stream}` and `{event}`.
pub fn check_subject_template(template: &str) -> Result<(), String> {
    let rendered = render_subject(template, "s", "e");
    if rendered.contains(['{', '}']) {
        return Err("the only placeholders are {stream} and {event}".into());
    }
    for token in rendered.split('.') {
        if token.is_empty() {
            return Err("empty token (two dots in a row, or a leading or trailing dot)".into());
        }
        if token == "*" || token == ">" || token.contains(['*', '>']) {
            return Err("wildcards (`*`, `>`) cannot be published to".into());
        }
        if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("subjects cannot contain spaces or control characters".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_break_the_subject() {
        assert_eq!(
            render_subject("sse.{stream}.{event}", "wiki.en", "edit *> x"),
            "sse.wiki_en.edit____x"
        );
        assert_eq!(render_subject("sse.{stream}.{event}", "a", ""), "sse.a._");
        assert_eq!(wildcard_subject("sse.{stream}.x-{event}"), "sse.*.*");
        assert!(check_subject_template("sse.{stream}.{event}").is_ok());
        assert!(check_subject_template("sse..{stream}").is_err());
        assert!(check_subject_template("sse.>").is_err());
        assert!(check_subject_template("sse.{bogus}").is_err());
    }

    fn sink() -> NatsSink {
        let connection = crate::nats::NatsConnection {
            urls: vec!["nats://127.0.0.1:4222".into()],
            token: None,
            user: None,
            password: None,
            credentials_file: None,
            tls_required: false,
            ca_file: None,
            connect_timeout: Duration::from_secs(1),
        };
        NatsSink::new(
            "js",
            Box::new(NatsSinkConfig {
                connection,
                subject: "sse.{stream}".into(),
                stream: None,
                create_stream: false,
                duplicate_window: Duration::from_secs(120),
                max_in_flight: 1,
                ack_timeout: Duration::from_secs(1),
                backoff_initial: Duration::from_millis(10),
                backoff_max: Duration::from_millis(10),
            }),
        )
    }

    fn message_ids(sink: &mut NatsSink, ids: &[&str], run: u64) -> Vec<String> {
        let mut records = crate::record::Records::new(
            std::sync::Arc::from("s"),
            std::time::SystemTime::UNIX_EPOCH,
            0,
        );
        for id in ids {
            records.push(&crate::sse::EventRef {
                event: "message",
                data: "x",
                id,
                retry: None,
            });
        }
        (0..ids.len())
            .map(|i| sink.message_id(&records.get(i), run).unwrap())
            .collect()
    }

    #[test]
    fn repeated_ids_are_numbered_within_a_run_and_a_new_run_starts_over() {
        let mut sink = sink();
        assert_eq!(
            message_ids(&mut sink, &["1", "2", "2", "2", "3"], 7),
            ["s:1", "s:2", "s:2#1", "s:2#2", "s:3"]
        );
        // The same run goes on across batches.
        assert_eq!(message_ids(&mut sink, &["3", "4"], 7), ["s:3#1", "s:4"]);
        // The stream started again from its checkpoint (3): its first
        // records are the same events, with the same message ids, so
        // JetStream drops them as duplicates.
        assert_eq!(message_ids(&mut sink, &["4", "5"], 8), ["s:4", "s:5"]);
    }
}
