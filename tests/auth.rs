//! Credentials that rotate, over real sockets: a bearer token file rotated on
//! disk before and after the server starts refusing the old token, and an
//! OAuth2 token endpoint issuing short-lived tokens while the SSE server
//! hangs up every few events. Every event arrives, in order, with no reload
//! or restart; a 401 is answered by renewed credentials at once, not after
//! backoff; streams with the same settings share tokens; and no token or
//! secret reaches the log, even at `trace`.

mod support;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::relay::Relay;
use support::{Reply, TestServer};

/// An SSE server that serves `total` numbered events, `per_connection` a
/// connection, to requests whose `Authorization` it accepts.
struct Vendor {
    total: u64,
    per_connection: u64,
    accepts: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// `(when, Authorization sent, status answered)` of every request.
    log: Mutex<Vec<(Instant, String, u16)>>,
}

impl Vendor {
    fn reply(&self, request: &support::Request) -> Reply {
        let authorization = request.header("authorization").unwrap_or("").to_owned();
        let ok = (self.accepts)(&authorization);
        let from = request
            .header("last-event-id")
            .and_then(|id| id.parse::<u64>().ok())
            .map_or(1, |id| id + 1);
        let status = if !ok {
            401
        } else if from > self.total {
            204
        } else {
            200
        };
        self.log
            .lock()
            .unwrap()
            .push((Instant::now(), authorization, status));
        match status {
            200 => {
                let to = (from + self.per_connection - 1).min(self.total);
                Reply::events((from..=to).map(|n| format!("id: {n}\ndata: event {n}\n\n")))
                    .pause(Duration::from_millis(5))
            }
            other => Reply::status(other),
        }
    }

    fn statuses(&self) -> Vec<u16> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, s)| *s)
            .collect()
    }
}

async fn vendor_server(vendor: Arc<Vendor>) -> TestServer {
    TestServer::start(move |_, request| vendor.reply(request)).await
}

#[track_caller]
fn assert_every_event_once_in_order(ids: &[String], total: u64) {
    let expected: Vec<String> = (1..=total).map(|n| n.to_string()).collect();
    assert_eq!(ids, expected, "events lost, repeated or out of order");
}

#[track_caller]
fn assert_no_secret(log: &str, secrets: &[&str]) {
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "the log holds the secret {secret:?}:\n{log}"
        );
    }
}

/// A vendor that accepts `Bearer <token>` (the accepted `Authorization`
/// values can be changed through the returned lock), and a token file
/// holding `token`.
async fn rotating_vendor(
    token: &str,
    total: u64,
) -> (
    Arc<Mutex<Vec<String>>>,
    Arc<Vendor>,
    TestServer,
    tempfile::TempDir,
    std::path::PathBuf,
) {
    let accepted = Arc::new(Mutex::new(vec![format!("Bearer {token}")]));
    let check = accepted.clone();
    let vendor = Arc::new(Vendor {
        total,
        per_connection: 5,
        accepts: Box::new(move |auth| check.lock().unwrap().iter().any(|a| a == auth)),
        log: Mutex::new(Vec::new()),
    });
    let server = vendor_server(vendor.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vendor-token");
    std::fs::write(&file, format!("{token}\n")).unwrap();
    (accepted, vendor, server, dir, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_rotated_before_the_server_switches_is_used_at_the_next_connection() {
    let (accepted, vendor, server, _dir, token) = rotating_vendor("old-token-1111", 60).await;
    let mut relay = Relay::launch(
        &server.url("/events"),
        "",
        &format!(
            "[streams.s.auth]\ntype = \"bearer_file\"\npath = \"{}\"\n",
            token.display()
        ),
        &["--log-level", "trace"],
    );
    support::wait_for_records(&relay.out(), 20, Duration::from_secs(20)).await;
    // The operator's rotation: the new token on disk first, while the server
    // takes both (a request already on its way with the old token is not
    // refused, as providers overlap their tokens); the old one is revoked
    // once the new one has come.
    const NEW: &str = "Bearer new-token-2222";
    accepted.lock().unwrap().push(NEW.to_owned());
    // Replaced whole, as rotation tools do: a read never sees it half written.
    let staged = token.with_extension("staged");
    std::fs::write(&staged, "new-token-2222\n").unwrap();
    std::fs::rename(&staged, &token).unwrap();
    let rotated = Instant::now();
    let deadline = rotated + Duration::from_secs(10);
    while !vendor
        .log
        .lock()
        .unwrap()
        .iter()
        .any(|(_, auth, _)| auth == NEW)
    {
        assert!(Instant::now() < deadline, "the new token never came");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *accepted.lock().unwrap() = vec![NEW.to_owned()];
    let log = relay.wait_for_exit(Duration::from_secs(30)).await;
    assert_every_event_once_in_order(&relay.ids(), 60);
    assert!(
        !vendor.statuses().contains(&401),
        "a token on disk before the switch needs no 401: {:?}",
        vendor.statuses()
    );
    // The file is read before every attempt: of the requests after the
    // write, only the first can have read it before (one attempt at a time).
    let after: Vec<String> = vendor
        .log
        .lock()
        .unwrap()
        .iter()
        .filter(|(at, _, _)| *at > rotated)
        .map(|(_, auth, _)| auth.clone())
        .collect();
    assert!(
        after.len() > 1 && after.iter().skip(1).all(|auth| auth == NEW),
        "requests after the rotation: {after:?}"
    );
    assert_no_secret(&log, &["old-token-1111", "new-token-2222"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_rotated_after_the_server_refuses_the_old_token_recovers_without_a_reload() {
    let (accepted, vendor, server, _dir, token) = rotating_vendor("old-token-3333", 40).await;
    let mut relay = Relay::launch(
        &server.url("/events"),
        "",
        &format!(
            "backoff_initial = \"500ms\"\nbackoff_max = \"500ms\"\n\
             [streams.s.auth]\ntype = \"bearer_file\"\npath = \"{}\"\n",
            token.display()
        ),
        &["--log-level", "trace"],
    );
    support::wait_for_records(&relay.out(), 10, Duration::from_secs(20)).await;
    // The server revokes the old token; the new one reaches the disk later.
    *accepted.lock().unwrap() = vec!["Bearer new-token-4444".to_owned()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !vendor.statuses().contains(&401) {
        assert!(
            Instant::now() < deadline,
            "the server never refused the old token"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&token, "new-token-4444\n").unwrap();
    let written = Instant::now();
    let log = relay.wait_for_exit(Duration::from_secs(30)).await;
    assert_every_event_once_in_order(&relay.ids(), 40);
    let requests = vendor.log.lock().unwrap().clone();
    let recovered = requests
        .iter()
        .find(|(at, auth, status)| *at > written && *status != 401 && auth.contains("new-token"))
        .map(|(at, _, _)| *at - written)
        .expect("a request with the new token");
    eprintln!("bearer_file rotated after the server switched: first accepted request {recovered:?} after the file changed");
    // At most one backoff (500 ms) after the file changed, with slack for a loaded machine.
    assert!(recovered < Duration::from_secs(3), "{recovered:?}");
    // The first 401 was retried at once with the file read again.
    let first_401 = requests.iter().position(|(_, _, s)| *s == 401).unwrap();
    let gap = requests[first_401 + 1].0 - requests[first_401].0;
    assert!(
        gap < Duration::from_millis(400),
        "the retry after the first 401 waited {gap:?} (backoff is 500ms)"
    );
    assert!(log.contains("HTTP 401: credentials renewed"), "{log}");
    assert_no_secret(&log, &["old-token-3333", "new-token-4444"]);
}

/// An OAuth2 token endpoint issuing `tok-<n>-<salt>` tokens that live
/// `lifetime` on the SSE server's side and say `expires_in` to the client.
struct Issuer {
    issued: Mutex<Vec<(String, Instant)>>,
    requests: AtomicUsize,
    expires_in: u64,
    lifetime: Duration,
    /// Wrong requests seen (bad client auth, grant or scope).
    refused: AtomicUsize,
}

impl Issuer {
    /// An issuer whose tokens say `expires_in` and live `lifetime`, serving
    /// its token endpoint; the endpoint's URL.
    async fn start(expires_in: u64, lifetime: Duration) -> (Arc<Issuer>, String) {
        let issuer = Arc::new(Issuer {
            issued: Mutex::new(Vec::new()),
            requests: AtomicUsize::new(0),
            expires_in,
            lifetime,
            refused: AtomicUsize::new(0),
        });
        let url = token_endpoint(issuer.clone()).await;
        (issuer, url)
    }

    fn valid(&self, authorization: &str) -> bool {
        let issued = self.issued.lock().unwrap();
        issued.iter().any(|(token, at)| {
            authorization == format!("Bearer {token}") && at.elapsed() < self.lifetime
        })
    }

    /// Revokes every token issued so far.
    fn revoke_all(&self) {
        self.issued.lock().unwrap().clear();
    }
}

async fn token_endpoint(issuer: Arc<Issuer>) -> String {
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    async fn token(
        State(issuer): State<Arc<Issuer>>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, [(&'static str, &'static str); 1], String) {
        let json = [("content-type", "application/json")];
        let n = issuer.requests.fetch_add(1, Ordering::SeqCst) + 1;
        // base64("sse-relay:s3cr3t+value") with the secret form-encoded first.
        let basic = headers.get("authorization").and_then(|v| v.to_str().ok());
        let expected = format!("Basic {}", base64_encode(b"sse-relay:s3cr3t%2Bvalue"));
        let form_ok = body.contains("grant_type=client_credentials")
            && body.contains("scope=events%3Aread+events%3Ameta");
        if basic != Some(expected.as_str()) || !form_ok {
            issuer.refused.fetch_add(1, Ordering::SeqCst);
            return (
                StatusCode::UNAUTHORIZED,
                json,
                r#"{"error":"invalid_client","error_description":"s3cr3t+value is wrong"}"#.into(),
            );
        }
        static SALT: AtomicU64 = AtomicU64::new(9000);
        let value = format!("tok-{n}-{}", SALT.fetch_add(7, Ordering::SeqCst));
        issuer
            .issued
            .lock()
            .unwrap()
            .push((value.clone(), Instant::now()));
        (
            StatusCode::OK,
            json,
            format!(
                r#"{{"access_token":"{value}","token_type":"Bearer","expires_in":{}}}"#,
                issuer.expires_in
            ),
        )
    }
    let app = axum::Router::new()
        .route("/oauth/token", post(token))
        .with_state(issuer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/oauth/token", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn oauth_table(stream: &str, token_url: &str) -> String {
    format!(
        "[streams.{stream}.auth]\ntype = \"oauth2_client_credentials\"\n\
         token_url = \"{token_url}\"\nclient_id = \"sse-relay\"\n\
         client_secret = \"s3cr3t+value\"\nscopes = [\"events:read\", \"events:meta\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_oauth2_tokens_are_renewed_before_they_expire_and_shared_by_streams() {
    let (issuer, token_url) = Issuer::start(2, Duration::from_millis(2500)).await;
    let total = 250;
    let servers = {
        let mut servers = Vec::new();
        for _ in 0..2 {
            let issuer = issuer.clone();
            let vendor = Arc::new(Vendor {
                total,
                per_connection: 5,
                accepts: Box::new(move |auth| issuer.valid(auth)),
                log: Mutex::new(Vec::new()),
            });
            servers.push((vendor_server(vendor.clone()).await, vendor));
        }
        servers
    };
    let started = Instant::now();
    let mut relay = Relay::launch(
        &servers[0].0.url("/events"),
        "",
        &format!(
            "backoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n{}\n\
             [streams.t]\nurl = \"{}\"\nbackoff_initial = \"10ms\"\nbackoff_max = \"20ms\"\n{}",
            oauth_table("s", &token_url),
            servers[1].0.url("/events"),
            oauth_table("t", &token_url),
        ),
        &["--log-level", "trace"],
    );
    let log = relay.wait_for_exit(Duration::from_secs(60)).await;
    let took = started.elapsed();
    for (name, (_, vendor)) in ["s", "t"].iter().zip(&servers) {
        let ids: Vec<String> = relay
            .records()
            .iter()
            .filter(|r| r["stream"] == *name)
            .map(|r| r["id"].as_str().unwrap().to_owned())
            .collect();
        assert_every_event_once_in_order(&ids, total);
        assert!(
            !vendor.statuses().contains(&401),
            "a token renewed before it expires is never refused: {:?}",
            vendor.statuses()
        );
    }
    let connections: usize = servers.iter().map(|(_, v)| v.statuses().len()).sum();
    let token_requests = issuer.requests.load(Ordering::SeqCst);
    eprintln!(
        "oauth2: {connections} connections over {took:?} took {token_requests} token requests"
    );
    assert_eq!(
        issuer.refused.load(Ordering::SeqCst),
        0,
        "a malformed token request"
    );
    // One shared source renews at half of a 2 s life: about one request a
    // second for both streams together, never one per connection.
    let per_second_bound = took.as_secs_f64().ceil() as usize + 2;
    assert!(
        (2..=per_second_bound).contains(&token_requests),
        "{token_requests} token requests in {took:?} for {connections} connections"
    );
    assert!(
        connections > 4 * token_requests,
        "{connections} connections"
    );
    assert_no_secret(&log, &["s3cr3t", "tok-"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_to_an_oauth2_token_fetches_a_new_one_at_once_not_after_backoff() {
    // The client is told an hour; the server revokes sooner.
    let (issuer, token_url) = Issuer::start(3600, Duration::from_secs(3600)).await;
    let check = issuer.clone();
    let vendor = Arc::new(Vendor {
        total: 40,
        per_connection: 10,
        accepts: Box::new(move |auth| check.valid(auth)),
        log: Mutex::new(Vec::new()),
    });
    let server = vendor_server(vendor.clone()).await;
    let mut relay = Relay::launch(
        &server.url("/events"),
        "",
        &format!(
            "backoff_initial = \"2s\"\nbackoff_max = \"2s\"\n{}",
            oauth_table("s", &token_url)
        ),
        &["--log-level", "trace"],
    );
    support::wait_for_records(&relay.out(), 10, Duration::from_secs(20)).await;
    issuer.revoke_all();
    let log = relay.wait_for_exit(Duration::from_secs(30)).await;
    assert_every_event_once_in_order(&relay.ids(), 40);
    let requests = vendor.log.lock().unwrap().clone();
    let refused = requests
        .iter()
        .position(|(_, _, s)| *s == 401)
        .expect("a 401");
    let recovery = requests[refused + 1].0 - requests[refused].0;
    eprintln!("oauth2: the request after the 401 went out {recovery:?} later (backoff 2s)");
    assert_eq!(requests[refused + 1].2, 200, "{requests:?}");
    assert!(recovery < Duration::from_millis(1000), "{recovery:?}");
    assert_eq!(
        requests.iter().filter(|(_, _, s)| *s == 401).count(),
        1,
        "{requests:?}"
    );
    assert_eq!(
        issuer.requests.load(Ordering::SeqCst),
        2,
        "one token, then one after the 401"
    );
    assert_no_secret(&log, &["s3cr3t", "tok-"]);
}

#[test]
fn check_refuses_auth_beside_an_authorization_header_and_never_prints_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    let write = |text: &str| std::fs::write(&config, text).unwrap();
    let check = || {
        support::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
                .args(["check", "--config"])
                .arg(&config),
            Duration::from_secs(20),
        )
    };
    let base = format!(
        "data_dir = \"{}\"\n[streams.p]\nurl = \"https://partner.example/events\"\n",
        dir.path().display()
    );
    write(&format!(
        "{base}headers = {{ Authorization = \"Bearer x\" }}\n{}",
        oauth_table("p", "https://auth.example/token")
    ));
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("both set the Authorization header"), "{err}");
    assert!(err.contains(":5:"), "located at the auth table: {err}");

    write(&format!(
        "{base}[streams.p.auth]\ntype = \"bearer_file\"\npath = \"/run/x\"\ntoken_url = \"https://a/\"\n"
    ));
    let err = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(
        err.contains("key `token_url` only applies to auth type"),
        "{err}"
    );

    write(&format!(
        "{base}{}",
        oauth_table("p", "https://auth.example/token")
    ));
    let out = check();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(
            "auth: oauth2_client_credentials https://auth.example/token (client_id sse-relay)"
        ),
        "{text}"
    );
    assert!(!text.contains("s3cr3t"), "{text}");

    write(&format!("{base}[streams.p.auth]\ntype = \"oauth2_client_credentials\"\ntoken_url = \"https://a/\"\nclient_id = \"x\"\n"));
    let err = String::from_utf8_lossy(&check().stderr).into_owned();
    assert!(err.contains("missing key `client_secret`"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_sends_the_bearer_file_it_is_given() {
    let vendor = Arc::new(Vendor {
        total: 12,
        per_connection: 5,
        accepts: Box::new(|auth| auth == "Bearer tail-token-5555"),
        log: Mutex::new(Vec::new()),
    });
    let server = vendor_server(vendor.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "tail-token-5555\n").unwrap();
    let url = server.url("/events");
    let output = tokio::task::spawn_blocking(move || {
        support::output_within(
            std::process::Command::new(env!("CARGO_BIN_EXE_sse-relay"))
                .args(["tail", "--format", "data", "--bearer-file"])
                .arg(&token)
                .arg(url),
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let expected: Vec<String> = (1..=12).map(|n| format!("event {n}")).collect();
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected, "{stderr}");
    assert!(!vendor.statuses().contains(&401), "{:?}", vendor.statuses());
    assert_no_secret(&stderr, &["tail-token-5555"]);
}
