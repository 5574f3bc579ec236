//! The built-in demo: an SSE source on loopback to relay without any network.
//!
//! The source numbers its events 1..=total, starts after the `Last-Event-ID`
//! it is sent, closes the connection every few events (so a newcomer watches
//! the relay reconnect and resume without a gap or a repeat), sends a
//! keep-alive comment now and then, and answers 204 once every event has been
//! served, which tells the relay to stop. Tests use it as a well-behaved server.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::stream;

/// How the demo source behaves.
#[derive(Debug, Clone, Copy)]
pub struct DemoSource {
    /// Events served in all; after the last one the source answers 204.
    pub total: u64,
    /// Events per connection before the source hangs up.
    pub per_connection: u64,
    /// Pause between events.
    pub interval: Duration,
}

impl Default for DemoSource {
    fn default() -> Self {
        DemoSource {
            total: 20,
            per_connection: 6,
            interval: Duration::from_millis(250),
        }
    }
}

impl DemoSource {
    /// Serves the source on an ephemeral loopback port until the runtime ends.
    /// Returns the URL of its event stream.
    pub async fn start(self) -> std::io::Result<String> {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().route(
            "/events",
            get(move |headers: HeaderMap| self.respond(headers)),
        );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("demo source stopped: {e}");
            }
        });
        Ok(format!("http://{addr}/events"))
    }

    async fn respond(self, headers: HeaderMap) -> Response {
        let after: u64 = headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        if after >= self.total {
            return StatusCode::NO_CONTENT.into_response();
        }
        let last = (after + self.per_connection).min(self.total);
        let first_frame = format!(
            ": demo source, serving events {} to {last}\nretry: 300\n\n",
            after + 1
        );
        let frames = stream::unfold((after, true), move |(sent, first)| {
            let first_frame = first_frame.clone();
            async move {
                if first {
                    return Some((Ok::<_, std::io::Error>(first_frame), (sent, false)));
                }
                if sent >= last {
                    return None; // hang up: the relay reconnects with Last-Event-ID
                }
                tokio::time::sleep(self.interval).await;
                let n = sent + 1;
                let mut frame = String::new();
                if n % 4 == 0 {
                    frame.push_str(": keep-alive\n");
                }
                let kind = if n % 3 == 0 { "update" } else { "message" };
                frame.push_str(&format!(
                    "id: {n}\nevent: {kind}\ndata: {{\"n\":{n},\"text\":\"event {n} of {}\"}}\n\n",
                    self.total
                ));
                Some((Ok(frame), (n, false)))
            }
        });
        (
            [
                (header::CONTENT_TYPE, "text/event-stream"),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(frames),
        )
            .into_response()
    }
}
