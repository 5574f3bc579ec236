//! One stream's life: connect, read, parse, route, and reconnect.
//!
//! Each attempt sends `GET` with `Accept: text/event-stream`,
//! `Cache-Control: no-cache` and `Last-Event-ID` (when an id is in effect), then:
//!
//! * 200 with `Content-Type: text/event-stream`: read the body, chunk by chunk,
//!   through the parser and the router, until it ends, fails, or is silent for
//!   `idle_timeout` (comments count as traffic);
//! * 204: the server says stop; this stream ends for good;
//! * anything else (another status, a wrong content type, a connect error, a
//!   reset): log it and try again.
//!
//! Between attempts it waits as [`backoff`](crate::backoff) says. The parser, and with it the last
//! event id and the `retry:` value, lives as long as the stream, so both survive
//! reconnects.

mod client;
mod idle;
mod probe;
pub use probe::Probe;
pub mod wire;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{StatusCode, Url};
use tokio_util::sync::CancellationToken;

use crate::auth::Credentials;
use crate::backoff::Backoff;
use crate::config::StreamConfig;
use crate::gaps::{Finding, IdChecker, IdGapCheck};
use crate::http::{self, decode, redirect, ClientError};
use crate::log::Delay;
use crate::metrics::{unix_now, Connection, IdCheckMetrics, StreamMetrics};
use crate::record::Records;
use crate::route::Router;
use crate::sse::Parser;
use idle::IdleTimer;

/// Why a stream task ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEnd {
    /// The server answered 204 No Content.
    StoppedByServer,
    /// The server refused it `give_up_after` times in a row.
    GaveUp,
    /// The daemon is shutting down.
    Shutdown,
}

/// How one attempt ended.
enum Attempt {
    NoContent,
    Shutdown,
    Retry {
        /// A fixed word for metrics: `closed`, `idle_timeout`, `http_status`, ...
        kind: &'static str,
        /// The status when the server answered something other than 200.
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
        delivered_events: bool,
    },
}

/// One stream's state, kept small: at 10,000 idle streams every byte here
/// counts 10,000 times. The configuration is shared with the supervisor (it
/// compares it on reload), and the task holds the stream boxed (see
/// [`Stream::run`]).
pub struct Stream {
    config: Arc<StreamConfig>,
    client: client::Clients,
    parser: Parser,
    router: Router,
    backoff: Backoff,
    url_for_logs: String,
    metrics: StreamMetrics,
    /// Where `[streams.NAME.auth]` credentials come from, if it has them.
    credentials: Option<Credentials>,
    /// `id_gap_check`, when on (boxed: most streams do not check).
    ids: Option<Box<(IdChecker, IdCheckMetrics)>>,
    /// The parser's [`id_updates`](crate::sse::ParserStats::id_updates) the
    /// router's tracker has seen.
    ids_observed: u64,
}

impl Stream {
    /// Prepares a stream that resumes after `last_event_id` (empty: from the
    /// server's default starting point).
    pub fn new(
        config: Arc<StreamConfig>,
        router: Router,
        last_event_id: &str,
        metrics: StreamMetrics,
    ) -> Result<Self, ClientError> {
        let client = client::build_client(&config)?;
        let credentials = config
            .auth
            .as_ref()
            .map(|auth| Credentials::new(auth, config.ca_file.as_deref(), config.tls_insecure))
            .transpose()?;
        let mut parser = Parser::new(config.limits);
        parser.set_last_event_id(last_event_id);
        let ids = (config.id_gap_check != IdGapCheck::Off).then(|| {
            Box::new((
                IdChecker::new(config.id_gap_check, last_event_id),
                metrics.id_checks(),
            ))
        });
        let backoff = Backoff::new(config.backoff_initial, config.backoff_max, config.retry_max);
        if config.tls_insecure {
            tracing::warn!(
                stream = %config.name,
                "TLS certificate verification is OFF (tls_insecure = true): anyone on the path can read and forge this stream"
            );
        }
        Ok(Stream {
            url_for_logs: http::redact_url(&config.url),
            ids_observed: parser.stats().id_updates,
            config,
            client,
            parser,
            router,
            backoff,
            metrics,
            credentials,
            ids,
        })
    }

    /// Runs until the server says 204 or `shutdown` fires.
    ///
    /// Takes the stream boxed: an `async fn` keeps its arguments in its future
    /// as well as the locals they move into, so a stream passed by value would
    /// sit in the task twice (about 1 KiB each).
    pub async fn run(mut self: Box<Self>, shutdown: CancellationToken) -> StreamEnd {
        // Attempts in a row answered with a status in `give_up_statuses`.
        let mut refusals = 0u32;
        // Whether the last attempt was a 401 retried at once with renewed
        // credentials: the next 401 waits for backoff like any refusal.
        let mut renewed = false;
        loop {
            // Both boxed, so that the task is as small as the state between
            // attempts: the connection's future (the request, redirects, a TLS
            // handshake, reqwest's) is 2.5 KiB and would otherwise be carried
            // all the time the body is read, and the reading one 1 KiB.
            let connected = Box::pin(self.connect(&shutdown)).await;
            let attempt = match connected {
                Ok(body) => Box::pin(self.read_body(body, &shutdown)).await,
                Err(attempt) => attempt,
            };
            let (reason, retry_after, delivered_events, routine) = match attempt {
                Attempt::Shutdown => return StreamEnd::Shutdown,
                Attempt::NoContent => {
                    self.metrics.set_connection(Connection::Stopped);
                    tracing::warn!(
                        stream = %self.config.name,
                        "{} answered 204 No Content: the server asks us to stop; this stream will not reconnect",
                        self.url_for_logs
                    );
                    return StreamEnd::StoppedByServer;
                }
                Attempt::Retry {
                    kind,
                    status,
                    reason,
                    retry_after,
                    delivered_events,
                } => {
                    self.metrics.reconnect(kind);
                    if status == Some(401) && self.credentials.is_some() && !renewed {
                        renewed = true;
                        tracing::info!(
                            stream = %self.config.name,
                            "{} answered HTTP 401: credentials renewed, reconnecting at once",
                            self.url_for_logs
                        );
                        continue;
                    }
                    renewed = status == Some(401) && self.credentials.is_some();
                    let counted = status.is_some_and(|s| self.config.give_up_statuses.contains(&s));
                    refusals = if counted { refusals + 1 } else { 0 };
                    if self
                        .config
                        .give_up_after
                        .is_some_and(|limit| refusals >= limit)
                    {
                        self.metrics.set_connection(Connection::GaveUp);
                        tracing::error!(
                            stream = %self.config.name,
                            "giving up after {refusals} attempts in a row answered {reason} (give_up_after); this stream will not reconnect until the daemon is reloaded or restarted"
                        );
                        return StreamEnd::GaveUp;
                    }
                    (reason, retry_after, delivered_events, kind == "closed")
                }
            };
            self.metrics.set_connection(Connection::Reconnecting);
            if delivered_events {
                self.backoff.reset();
            }
            let server_retry = self.parser.retry().map(Duration::from_millis);
            let floor = server_retry.max(retry_after);
            let delay = self.backoff.next_delay(floor);
            self.metrics.retry_delay.set(delay.as_secs_f64());
            let last_id = self.parser.last_event_id();
            let resume = if last_id.is_empty() {
                "no Last-Event-ID".to_owned()
            } else {
                // The id is the server's text: control characters are escaped,
                // not written into the log (or the terminal) as they are.
                format!("Last-Event-ID {}", last_id.escape_debug())
            };
            // A server closing a stream it served is routine; anything else
            // is for an operator to look at.
            if routine {
                tracing::info!(
                    stream = %self.config.name,
                    "reconnecting in {} after {reason} (attempt {}, {resume})",
                    Delay(delay),
                    self.backoff.attempt(),
                );
            } else {
                tracing::warn!(
                    stream = %self.config.name,
                    "reconnecting in {} after {reason} (attempt {}, {resume})",
                    Delay(delay),
                    self.backoff.attempt(),
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = shutdown.cancelled() => return StreamEnd::Shutdown,
            }
        }
    }

    /// Sends the request and checks the answer: a 200 event stream to read,
    /// or how the attempt ended. Kept apart from [`Stream::read_body`] (the
    /// caller awaits one, then the other) so that the idle stream's future
    /// holds the reading state only, not this one's as well.
    async fn connect(&mut self, shutdown: &CancellationToken) -> Result<Body, Attempt> {
        // Waiting for the response counts as silence too: a server that accepts
        // and never answers is as dead as one that stops sending.
        let patience = self
            .config
            .connect_timeout
            .saturating_add(self.config.idle_timeout);
        let opened = tokio::select! {
            _ = shutdown.cancelled() => return Err(Attempt::Shutdown),
            opened = tokio::time::timeout(patience, self.open()) => opened,
        };
        let (url, answer, authorization) = match opened {
            Err(_) => {
                return Err(retry(
                    "timeout",
                    format!(
                        "no response within {}",
                        humantime::format_duration(patience)
                    ),
                ))
            }
            Ok(opened) => opened?,
        };
        if answer.status == StatusCode::UNAUTHORIZED {
            if let (Some(credentials), Some(used)) = (&self.credentials, &authorization) {
                credentials.renew(used).await;
            }
        }
        self.check_answer(answer.status, &answer.headers, &url)?;
        Body::of(answer)
    }

    /// Sends the request and follows redirects by [`redirect`]'s policy,
    /// each hop through the client that fits its URL. Returns the URL that
    /// answered, its answer, and the `auth` credentials the request carried.
    async fn open(&self) -> Result<(Url, Answer, Option<HeaderValue>), Attempt> {
        let config = &self.config;
        let authorization = match &self.credentials {
            Some(credentials) => Some(
                credentials
                    .authorization()
                    .await
                    .map_err(|e| retry("auth", e.to_string()))?,
            ),
            None => None,
        };
        let mut url = http::without_user_info(&config.url);
        if let Some(parameter) = &config.last_event_id_query {
            set_query(&mut url, parameter, self.parser.last_event_id());
        }
        let mut chain = redirect::Chain::new(
            &config.url,
            config.allow_insecure_redirects,
            config.max_redirects,
        );
        let mut credentials = true;
        let mut method = config.method.clone();
        let mut body = config.body.clone();
        loop {
            let mut headers =
                client::request_headers(config, self.parser.last_event_id(), credentials);
            if let (true, Some(authorization)) = (credentials, &authorization) {
                headers.insert(reqwest::header::AUTHORIZATION, authorization.clone());
            }
            if config.body.is_some() && body.is_none() {
                // A POST turned into a GET by a redirect: its body's headers go too.
                for name in [
                    reqwest::header::CONTENT_TYPE,
                    reqwest::header::CONTENT_ENCODING,
                    reqwest::header::CONTENT_LANGUAGE,
                    reqwest::header::CONTENT_LOCATION,
                ] {
                    headers.remove(name);
                }
            }
            // The lean client sends GETs; anything with a body goes through reqwest.
            let lean_tls = self.client.lean_tls.as_ref();
            let lean =
                method == reqwest::Method::GET && wire::eligible(&url, config.http2, lean_tls);
            // Which client, since memory per stream and proxying differ.
            tracing::debug!(
                stream = %config.name,
                "{method} {} through {}",
                http::redact_url(&url),
                if lean {
                    "the built-in HTTP/1.1 client"
                } else {
                    "reqwest (a body, HTTP/2, tls_insecure or a proxy in the environment)"
                }
            );
            let answer = if lean {
                let response = wire::open(&url, &headers, config.connect_timeout, lean_tls)
                    .await
                    .map_err(|e| {
                        let (kind, reason) = e.describe();
                        retry(kind, reason)
                    })?;
                Answer {
                    status: response.status,
                    headers: response.headers,
                    source: Source::Lean(response.body),
                }
            } else {
                let client = self.client.reqwest.get().map_err(|e| {
                    retry(
                        "request_error",
                        format!("cannot set up the HTTP client: {e}"),
                    )
                })?;
                let mut request = client.request(method.clone(), url.clone()).headers(headers);
                if let Some(body) = &body {
                    request = request.body(body.clone());
                }
                let response = request.send().await.map_err(|e| {
                    let (kind, reason) = describe_error(&e);
                    retry(kind, reason)
                })?;
                Answer {
                    status: response.status(),
                    headers: response.headers().clone(),
                    source: Source::Reqwest(Box::pin(response.bytes_stream())),
                }
            };
            let Some(next) = redirect::location(&url, answer.status, &answer.headers) else {
                return Ok((url, answer, authorization.filter(|_| credentials)));
            };
            let hop = chain
                .follow(&url, &next)
                .map_err(|refused| retry(refused.kind(), refused.to_string()))?;
            tracing::debug!(
                stream = %config.name,
                "{} answered HTTP {}: following the redirect to {} (hop {}, {})",
                http::redact_url(&url),
                answer.status,
                http::redact_url(&next),
                chain.hops(),
                if hop.credentials {
                    "credentials kept: same origin"
                } else {
                    "credentials dropped: another origin or plain HTTP"
                }
            );
            credentials = hop.credentials;
            let (next_method, keeps_body) = redirect::method_after(&method, answer.status);
            if !keeps_body {
                body = None;
            }
            method = next_method;
            url = next;
        }
    }

    /// Whether an answer is a 200 event stream; if not, how the attempt ends.
    fn check_answer(
        &mut self,
        status: StatusCode,
        headers: &HeaderMap,
        url: &Url,
    ) -> Result<(), Attempt> {
        self.metrics.http_status.set(i64::from(status.as_u16()));
        if status == StatusCode::NO_CONTENT {
            return Err(Attempt::NoContent);
        }
        if status != StatusCode::OK {
            let retry_after = match status {
                StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                    http::retry_after(headers)
                }
                _ => None,
            };
            return Err(Attempt::Retry {
                kind: "http_status",
                status: Some(status.as_u16()),
                reason: format!("HTTP {status}"),
                retry_after,
                delivered_events: false,
            });
        }
        if !http::is_event_stream(headers) {
            let content_type = headers
                .get(reqwest::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return Err(retry(
                "content_type",
                match content_type {
                    Some(ct) => format!("wrong Content-Type {ct:?} (expected text/event-stream)"),
                    None => {
                        "a response without Content-Type (expected text/event-stream)".to_owned()
                    }
                },
            ));
        }
        self.metrics.set_connection(Connection::Connected);
        tracing::info!(
            stream = %self.config.name,
            "connected to {} (HTTP {status})",
            http::redact_url(url)
        );
        Ok(())
    }

    /// Reads a 200 body until it ends, fails or falls silent.
    async fn read_body(&mut self, mut body: Body, shutdown: &CancellationToken) -> Attempt {
        self.parser.start_connection();
        let events_before = self.parser.stats().events;
        let mut oversized_before = self.parser.stats().oversized_events;
        // One timer for the whole body, pushed back at every read (see `idle`).
        let silence = IdleTimer::new(self.config.idle_timeout);
        let idle = silence.sleep();
        tokio::pin!(idle);
        // One wait for shutdown for the whole body: making one per read
        // registered and removed a waiter on the token (two locks) at every
        // heartbeat of every idle stream.
        let stopped = shutdown.cancelled();
        tokio::pin!(stopped);
        let (kind, reason) = loop {
            // Events are copied out of what arrived once, into records that
            // travel to the sinks together; nothing is allocated for bytes
            // without an event.
            let mut records: Option<Records> = None;
            let mut body_bytes = 0;
            let stream = self.router.stream();
            let parser = &mut self.parser;
            let ids = &mut self.ids;
            let mut emit = |bytes: &[u8], chunk: Option<&Bytes>| {
                body_bytes += bytes.len();
                parser.feed_ref(bytes, &mut |event| {
                    if let Some(ids) = ids.as_deref_mut() {
                        if let Some(finding) = ids.0.check(event.id) {
                            report_id(stream, ids.0.mode(), finding, &ids.1);
                        }
                    }
                    records
                        .get_or_insert_with(|| {
                            let now = SystemTime::now();
                            match chunk {
                                // Data lying whole in the chunk stays there;
                                // room for the types and ids (a sixteenth of
                                // the bytes fits small events' ids) and this
                                // event, which may have begun earlier.
                                Some(chunk) => {
                                    let room = bytes.len() / 16 + event.data.len();
                                    Records::sharing(stream.clone(), now, chunk, room)
                                }
                                // Room for the rest of the bytes and this
                                // event: no regrowth.
                                None => {
                                    let room = bytes.len() + event.data.len();
                                    Records::new(stream.clone(), now, room)
                                }
                            }
                        })
                        .push(&event);
                });
            };
            // Silence is counted from here, after the last chunk was routed (a
            // full sink can hold that up), as a fresh timeout per read would.
            silence.start_waiting(idle.as_mut());
            let read = tokio::select! {
                biased;
                _ = &mut stopped => return Attempt::Shutdown,
                read = body.read(&mut emit) => Ok(read),
                () = &mut idle => Err(()),
            };
            self.metrics.bytes.inc_by(body_bytes as u64);
            let oversized = self.parser.stats().oversized_events;
            if oversized > oversized_before {
                tracing::warn!(
                    stream = %self.config.name,
                    "dropped {} event(s) over the size limits (max_line_bytes {}, max_event_bytes {}); {oversized} dropped so far",
                    oversized - oversized_before,
                    self.config.limits.max_line_bytes,
                    self.config.limits.max_event_bytes,
                );
                self.metrics.oversized.inc_by(oversized - oversized_before);
                oversized_before = oversized;
            }
            // What arrived is routed even when the body ended with it.
            if let Some(records) = records {
                self.metrics.events.inc_by(records.len() as u64);
                self.metrics.last_event.set(unix_now());
                tokio::select! {
                    // Stop even while a full sink queue holds us: what was not
                    // queued is not acknowledged, so the checkpoint stays before it.
                    _ = &mut stopped => return Attempt::Shutdown,
                    // Boxed: routing is the largest future here, and only
                    // lives while a chunk is routed, not while the stream idles.
                    routed = Box::pin(self.router.route(records)) => {
                        if routed.is_err() {
                            return Attempt::Shutdown;
                        }
                    }
                }
            }
            // An id-only block moves the resume point without an event. A read
            // that set no id (a heartbeat) leaves the tracker alone: on an
            // idle stream its memory is long out of cache, and touching it
            // cost a sixth of the daemon's idle CPU with 10,000 streams.
            let id_updates = self.parser.stats().id_updates;
            if id_updates != self.ids_observed {
                self.ids_observed = id_updates;
                self.router
                    .tracker()
                    .observe_id(self.parser.last_event_id());
            }
            match read {
                Err(()) => {
                    break (
                        "idle_timeout",
                        format!(
                            "no data for {} (idle_timeout)",
                            humantime::format_duration(self.config.idle_timeout)
                        ),
                    )
                }
                Ok(Err(failed)) => break failed,
                Ok(Ok(Some(()))) => {}
                Ok(Ok(None)) => break ("closed", "the server closed the connection".to_owned()),
            }
        };
        Attempt::Retry {
            kind,
            status: None,
            reason,
            retry_after: None,
            delivered_events: self.parser.stats().events > events_before,
        }
    }
}

/// An answer to one request of an attempt.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    source: Source,
}

/// Where a body's bytes come from: the lean client of plain `http://`
/// requests ([`wire`]), or reqwest. Either hands them over undecoded.
enum Source {
    Lean(wire::Body),
    Reqwest(
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    ),
}

impl Source {
    /// Waits for the next bytes and hands them to `emit`; `None` once the
    /// body has ended. An error comes as the reconnect kind and reason.
    async fn read(
        &mut self,
        emit: &mut impl FnMut(&[u8], Option<&Bytes>),
    ) -> Result<Option<()>, (&'static str, String)> {
        match self {
            Source::Lean(body) => match body.read(emit).await {
                Ok(wire::Read::Bytes(_)) => Ok(Some(())),
                Ok(wire::Read::End) => Ok(None),
                Err(e) => Err(e.describe()),
            },
            Source::Reqwest(body) => match body.next().await {
                Some(Ok(chunk)) => {
                    // Not kept: hyper's chunks are cut from buffers of its
                    // own, of sizes nothing here sees.
                    emit(&chunk, None);
                    Ok(Some(()))
                }
                Some(Err(e)) => Err(describe_error(&e)),
                None => Ok(None),
            },
        }
    }
}

thread_local! {
    /// The window compressed bodies are decoded into on this thread: one per
    /// worker thread, not one per stream.
    static WINDOW: RefCell<Vec<u8>> = RefCell::new(vec![0; decode::WINDOW]);
}

/// A 200 event-stream body being read, decoded if it is compressed.
struct Body {
    source: Source,
    /// Present for a compressed body (boxed: most streams have none).
    decoder: Option<Box<decode::Decoder>>,
    /// The source has ended; what the decoder still holds is handed out first.
    source_ended: bool,
}

impl Body {
    /// The body of a 200 answer, decoded by its `Content-Encoding`; an
    /// encoding it cannot decode ends the attempt. The answer's head is
    /// dropped here: its headers may be slices of the client's first read
    /// buffer, which would otherwise stay alive for the whole connection,
    /// next to the one the body is read into.
    fn of(answer: Answer) -> Result<Body, Attempt> {
        let coding = decode::Coding::of(&answer.headers)
            .map_err(|unsupported| retry("content_encoding", unsupported.to_string()))?;
        Ok(Body {
            source: answer.source,
            decoder: decode::Decoder::new(coding),
            source_ended: false,
        })
    }

    /// Hands the next bytes of the body to `emit`, at most one decoding
    /// window of them for a compressed body (the socket is read again only
    /// once all that arrived is decoded); `None` once the body has ended.
    async fn read(
        &mut self,
        emit: &mut impl FnMut(&[u8], Option<&Bytes>),
    ) -> Result<Option<()>, (&'static str, String)> {
        let Body {
            source,
            decoder,
            source_ended,
        } = self;
        let Some(decoder) = decoder else {
            return source.read(emit).await;
        };
        if decoder.wants_input() {
            if *source_ended {
                decoder
                    .finish()
                    .map_err(|e| ("body_error", format!("error reading the body: {e}")))?;
                return Ok(None);
            }
            if source
                .read(&mut |raw, _| decoder.push(raw))
                .await?
                .is_none()
            {
                *source_ended = true;
            }
        }
        WINDOW.with_borrow_mut(|window| {
            let n = decoder
                .decode(window)
                .map_err(|e| ("body_error", format!("error reading the body: {e}")))?;
            if n > 0 {
                emit(&window[..n], None);
            }
            Ok(Some(()))
        })
    }
}

fn retry(kind: &'static str, reason: String) -> Attempt {
    Attempt::Retry {
        kind,
        status: None,
        reason,
        retry_after: None,
        delivered_events: false,
    }
}

/// A reqwest error by its causes, which hold the useful part ("connection
/// refused", "certificate not trusted"). reqwest's own message is left out: it
/// includes the URL, which may carry credentials.
fn describe_error(error: &reqwest::Error) -> (&'static str, String) {
    let (kind, what) = if error.is_connect() {
        ("connect_error", "connect error")
    } else if error.is_timeout() {
        ("timeout", "timeout")
    } else if error.is_redirect() {
        ("redirects", "too many redirects")
    } else if error.is_body() || error.is_decode() {
        ("body_error", "error reading the body")
    } else {
        ("request_error", "request error")
    };
    let mut text = what.to_owned();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // reqwest's redirect error repeats our own words.
        if cause_text != what {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    (kind, text)
}

/// Sets query parameter `name` of `url` to `value`, replacing any already
/// there; the other parameters stay byte for byte as written. The value is
/// percent-encoded. An empty value (no last event id yet) leaves the URL as
/// it is.
fn set_query(url: &mut Url, name: &str, value: &str) {
    if value.is_empty() {
        return;
    }
    let encode =
        |text: &str| -> String { url::form_urlencoded::byte_serialize(text.as_bytes()).collect() };
    let mut query: Vec<String> = url
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|pair| !pair.is_empty())
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            let decoded: String = url::form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            decoded != name
        })
        .map(str::to_owned)
        .collect();
    query.push(format!("{}={}", encode(name), encode(value)));
    url.set_query(Some(&query.join("&")));
}

/// Logs and counts what `id_gap_check` found in an event's id.
fn report_id(stream: &str, mode: IdGapCheck, finding: Finding, metrics: &IdCheckMetrics) {
    match finding {
        Finding::InOrder => {}
        Finding::Gap {
            expected,
            received,
            missing,
        } => {
            metrics.gaps.inc();
            metrics.missing.inc_by(missing);
            tracing::warn!(
                stream = %stream,
                "id gap: expected id {expected}, received {received}: {missing} id(s) missing; the server sent no events for them (its replay buffer may be too short)"
            );
        }
        Finding::Regression { previous, received } => {
            metrics.regressions.inc();
            tracing::warn!(
                stream = %stream,
                "id regression: id {received} after {previous} (id_gap_check = \"{}\"); the server may be replaying from an older id",
                mode.name()
            );
        }
        Finding::Unparsable => {
            metrics.unparsable.inc();
            tracing::debug!(stream = %stream, "an event id is not an integer; id_gap_check skips it");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resume_parameter_replaces_its_namesake_and_keeps_the_rest() {
        let mut url = Url::parse("http://h/e?topic=a%20b&lastEventID=3&x=1+2").unwrap();
        set_query(&mut url, "lastEventID", "urn:uuid:7&8");
        assert_eq!(
            url.as_str(),
            "http://h/e?topic=a%20b&x=1+2&lastEventID=urn%3Auuid%3A7%268"
        );
        let mut url = Url::parse("http://h/e").unwrap();
        set_query(&mut url, "since", "");
        assert_eq!(url.as_str(), "http://h/e");
        set_query(&mut url, "since", "41");
        assert_eq!(url.as_str(), "http://h/e?since=41");
    }
}
