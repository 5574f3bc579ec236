//! One attempt to a stream's endpoint for `sse-relay check --connect`: the
//! same request a connection would send (method, body, headers, `auth`,
//! redirects), read up to its first event, then dropped. Nothing is routed
//! and no checkpoint moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Attempt, Body, Stream};
use crate::ack::AckTracker;
use crate::config::StreamConfig;
use crate::http;
use crate::metrics::Metrics;
use crate::route::Router;

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub stream: String,
    /// The URL that answered (after redirects), as logs show it.
    pub url: String,
    pub status: Option<u16>,
    pub content_type: Option<String>,
    /// From sending the request to the answer's head.
    pub response_after: Option<Duration>,
    /// From sending the request to the first event.
    pub first_event_after: Option<Duration>,
    /// The id in effect at the first event (empty: none).
    pub first_event_id: Option<String>,
    /// Why the stream would not run; `None` when it would.
    pub problem: Option<String>,
}

impl Stream {
    /// Connects to `config`'s endpoint once, within `within`, starting from
    /// its `initial_last_event_id`.
    pub async fn probe(config: Arc<StreamConfig>, within: Duration) -> Probe {
        let mut probe = Probe {
            stream: config.name.clone(),
            url: http::redact_url(&config.url),
            status: None,
            content_type: None,
            response_after: None,
            first_event_after: None,
            first_event_id: None,
            problem: None,
        };
        let name: Arc<str> = Arc::from(config.name.as_str());
        let router = Router::new(name, Vec::new(), Arc::new(AckTracker::new(0, "")));
        let metrics = Arc::new(Metrics::new()).stream(&config.name);
        let start_id = config.initial_last_event_id.clone().unwrap_or_default();
        let mut stream = match Stream::new(config, router, &start_id, metrics) {
            Ok(stream) => stream,
            Err(problem) => {
                probe.problem = Some(problem.to_string());
                return probe;
            }
        };
        let started = Instant::now();
        let deadline = started + within;
        let opened = tokio::time::timeout_at(deadline.into(), stream.open()).await;
        let (url, answer, _) = match opened {
            Err(_) => {
                probe.problem = Some(format!(
                    "no answer within {}",
                    humantime::format_duration(within)
                ));
                return probe;
            }
            Ok(Err(attempt)) => {
                probe.problem = Some(attempt_reason(attempt));
                return probe;
            }
            Ok(Ok(opened)) => opened,
        };
        probe.response_after = Some(started.elapsed());
        probe.url = http::redact_url(&url);
        probe.status = Some(answer.status.as_u16());
        probe.content_type = answer
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if let Err(attempt) = stream.check_answer(answer.status, &answer.headers, &url) {
            probe.problem = Some(attempt_reason(attempt));
            return probe;
        }
        let mut body = match Body::of(answer) {
            Ok(body) => body,
            Err(attempt) => {
                probe.problem = Some(attempt_reason(attempt));
                return probe;
            }
        };
        let mut first: Option<String> = None;
        let parser = &mut stream.parser;
        while first.is_none() {
            let mut emit = |bytes: &[u8], _: Option<&bytes::Bytes>| {
                parser.feed_ref(bytes, &mut |event| {
                    first.get_or_insert_with(|| event.id.to_owned());
                });
            };
            match tokio::time::timeout_at(deadline.into(), body.read(&mut emit)).await {
                // A quiet stream is no failure: the connection is what is checked.
                Err(_) => break,
                Ok(Ok(Some(()))) => {}
                Ok(Ok(None)) => {
                    if first.is_none() {
                        probe.problem =
                            Some("the server closed the stream before any event".into());
                    }
                    break;
                }
                Ok(Err((_, reason))) => {
                    probe.problem = Some(reason);
                    break;
                }
            }
        }
        if first.is_some() {
            probe.first_event_after = Some(started.elapsed());
        }
        probe.first_event_id = first;
        probe
    }
}

fn attempt_reason(attempt: Attempt) -> String {
    match attempt {
        Attempt::NoContent => "HTTP 204 No Content: the server asks clients to stop".to_owned(),
        Attempt::Shutdown => "stopped".to_owned(),
        Attempt::Retry { reason, .. } => reason,
    }
}
