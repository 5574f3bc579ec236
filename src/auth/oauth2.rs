//! OAuth2 client credentials (RFC 6749 section 4.4): a token from the token
//! endpoint, cached until shortly before it expires, shared by every stream
//! and sink with the same settings.
//!
//! One fetch at a time per source: owners asking while a fetch is under way
//! wait for it and take its token (the lock is held across the request), so
//! a hundred streams reconnecting together cost one token request.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use reqwest::header::{self, HeaderValue};
use serde::Deserialize;

use super::{bearer, AuthError, ClientAuth, OAuth2Config};
use crate::http::{basic_auth_pair, redact_url, with_tls, ClientError, TlsError};

/// How long a token request may take, from connecting to the last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The most bytes of a token endpoint's answer read.
const MAX_ANSWER_BYTES: usize = 64 << 10;
/// A token is renewed when this much of its life is left, or half its life
/// for tokens shorter than twice this.
const RENEW_MARGIN: Duration = Duration::from_secs(60);

/// Tokens for one set of OAuth2 settings.
pub struct TokenSource {
    settings: OAuth2Config,
    client: reqwest::Client,
    url_for_logs: String,
    /// The cached token. Held across a fetch, so one fetch serves everyone.
    token: tokio::sync::Mutex<Option<Token>>,
    /// Token requests sent, for tests and logs.
    requests: AtomicU64,
}

struct Token {
    authorization: HeaderValue,
    /// When to fetch a new one; `None` if the endpoint gave no `expires_in`
    /// (then only a 401 renews it).
    renew_at: Option<Instant>,
}

/// What makes two owners' token sources interchangeable.
#[derive(PartialEq, Eq, Hash)]
struct Key {
    settings: OAuth2Config,
    ca_pem: Option<Vec<u8>>,
    tls_insecure: bool,
}

impl TokenSource {
    /// The source for `settings` with this TLS trust: the one already in use
    /// by another owner, or a new one.
    pub fn shared(
        settings: &OAuth2Config,
        ca_file: Option<&Path>,
        tls_insecure: bool,
    ) -> Result<Arc<TokenSource>, ClientError> {
        let ca_pem = match ca_file {
            Some(path) => {
                Some(
                    std::fs::read(path).map_err(|source| TlsError::CaFileUnreadable {
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        let key = Key {
            settings: settings.clone(),
            ca_pem,
            tls_insecure,
        };
        static SOURCES: OnceLock<Mutex<HashMap<Key, Weak<TokenSource>>>> = OnceLock::new();
        let mut sources = SOURCES
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sources.retain(|_, source| source.strong_count() > 0);
        if let Some(source) = sources.get(&key).and_then(Weak::upgrade) {
            return Ok(source);
        }
        let builder = reqwest::Client::builder()
            .user_agent(concat!("sse-relay/", env!("CARGO_PKG_VERSION")))
            .timeout(REQUEST_TIMEOUT)
            // A token endpoint that redirects would take the client secret
            // along; it is not followed.
            .redirect(reqwest::redirect::Policy::none());
        let client = with_tls(builder, ca_file, tls_insecure)?
            .build()
            .map_err(ClientError::Build)?;
        let source = Arc::new(TokenSource {
            url_for_logs: redact_url(&settings.token_url),
            settings: settings.clone(),
            client,
            token: tokio::sync::Mutex::new(None),
            requests: AtomicU64::new(0),
        });
        sources.insert(key, Arc::downgrade(&source));
        Ok(source)
    }

    /// `Bearer <token>`: the cached one while fresh, else a new one.
    pub async fn authorization(&self) -> Result<HeaderValue, AuthError> {
        let mut token = self.token.lock().await;
        if let Some(cached) = token.as_ref() {
            if cached.renew_at.is_none_or(|at| Instant::now() < at) {
                return Ok(cached.authorization.clone());
            }
        }
        let fresh = self.fetch().await?;
        let authorization = fresh.authorization.clone();
        *token = Some(fresh);
        Ok(authorization)
    }

    /// Drops the cached token if it is still `used` (another owner may have
    /// renewed it since).
    pub async fn forget(&self, used: &HeaderValue) {
        let mut token = self.token.lock().await;
        if token.as_ref().is_some_and(|t| t.authorization == used) {
            *token = None;
        }
    }

    /// Token requests sent so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    async fn fetch(&self) -> Result<Token, AuthError> {
        let settings = &self.settings;
        let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let scope = settings.scopes.join(" ");
        if !scope.is_empty() {
            form.push(("scope", &scope));
        }
        if let Some(audience) = &settings.audience {
            form.push(("audience", audience));
        }
        let secret = String::from_utf8_lossy(settings.client_secret.expose());
        let mut request = self
            .client
            .post(settings.token_url.clone())
            .header(header::ACCEPT, "application/json");
        match settings.client_auth {
            ClientAuth::Basic => {
                request = request.header(
                    header::AUTHORIZATION,
                    basic_auth_pair(&form_encode(&settings.client_id), &form_encode(&secret)),
                );
            }
            ClientAuth::Body => {
                form.push(("client_id", &settings.client_id));
                form.push(("client_secret", &secret));
            }
        }
        self.requests.fetch_add(1, Ordering::Relaxed);
        let sent = Instant::now();
        let response =
            request
                .form(&form)
                .send()
                .await
                .map_err(|e| AuthError::EndpointUnreachable {
                    url: self.url_for_logs.clone(),
                    reason: if e.is_timeout() {
                        format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
                    } else if e.is_connect() {
                        "cannot connect".to_owned()
                    } else {
                        "the request failed".to_owned()
                    },
                })?;
        let status = response.status();
        let body =
            read_limited(response)
                .await
                .map_err(|reason| AuthError::EndpointUnreachable {
                    url: self.url_for_logs.clone(),
                    reason,
                })?;
        if !status.is_success() {
            return Err(AuthError::EndpointRefused {
                url: self.url_for_logs.clone(),
                status: status.as_u16(),
                error: error_code(&body),
            });
        }
        let invalid = |problem| AuthError::EndpointAnswerInvalid {
            url: self.url_for_logs.clone(),
            problem,
        };
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| invalid("not a JSON token answer"))?;
        if answer
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(invalid("token_type is not Bearer"));
        }
        if answer.access_token.is_empty() {
            return Err(invalid("access_token is empty"));
        }
        let authorization = bearer(answer.access_token.as_bytes())
            .ok_or_else(|| invalid("access_token holds characters a header cannot carry"))?;
        let lifetime = answer
            .expires_in
            .and_then(|e| e.seconds())
            .map(Duration::from_secs);
        let renew_at = lifetime.map(|life| {
            let margin = RENEW_MARGIN.min(life / 2);
            sent + (life - margin)
        });
        tracing::debug!(
            "got an OAuth2 token from {} ({})",
            self.url_for_logs,
            match lifetime {
                Some(life) => format!("expires in {}s", life.as_secs()),
                None => "no expiry given".to_owned(),
            }
        );
        Ok(Token {
            authorization,
            renew_at,
        })
    }
}

/// A successful token answer (RFC 6749 5.1); other fields are ignored.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: Option<String>,
    expires_in: Option<ExpiresIn>,
}

/// `expires_in` as a number, or as a string some servers send.
#[derive(Deserialize)]
#[serde(untagged)]
enum ExpiresIn {
    Seconds(f64),
    Text(String),
}

impl ExpiresIn {
    fn seconds(&self) -> Option<u64> {
        let seconds = match self {
            ExpiresIn::Seconds(s) => *s,
            ExpiresIn::Text(t) => t.trim().parse().ok()?,
        };
        // A year at most: the clock arithmetic stays far from its limits.
        (seconds.is_finite() && seconds >= 0.0).then(|| (seconds as u64).min(366 * 86_400))
    }
}

/// RFC 6749 5.2's `error` code, if the answer is an error object whose code
/// is made of the characters the RFC allows (so it is safe to log).
fn error_code(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct ErrorAnswer {
        error: String,
    }
    let answer: ErrorAnswer = serde_json::from_slice(body).ok()?;
    let valid = !answer.error.is_empty()
        && answer.error.len() <= 64
        && answer
            .error
            .bytes()
            .all(|b| (0x20..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    valid.then_some(answer.error)
}

/// `application/x-www-form-urlencoded`, as RFC 6749 2.3.1 asks for the
/// client id and secret before they go into HTTP Basic.
fn form_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The answer's body, refusing more than [`MAX_ANSWER_BYTES`].
async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|_| "the answer was cut off".to_owned())?
    {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the answer is larger than {} KiB",
                MAX_ANSWER_BYTES >> 10
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_are_logged_only_when_they_are_codes() {
        assert_eq!(
            error_code(br#"{"error":"invalid_client","error_description":"secret s3cr3t wrong"}"#),
            Some("invalid_client".to_owned())
        );
        assert_eq!(error_code(b"<html>"), None);
        assert_eq!(error_code(br#"{"error":"line\nbreak"}"#), None);
        assert_eq!(error_code(br#"{"error":""}"#), None);
    }

    #[test]
    fn expires_in_takes_numbers_and_strings() {
        let parse = |json: &str| serde_json::from_str::<ExpiresIn>(json).unwrap().seconds();
        assert_eq!(parse("3600"), Some(3600));
        assert_eq!(parse("\"60\""), Some(60));
        assert_eq!(parse("-5"), None);
        assert_eq!(parse("1e30"), Some(366 * 86_400));
    }

    #[test]
    fn client_credentials_are_form_encoded_before_basic() {
        assert_eq!(form_encode("a b+c:d"), "a+b%2Bc%3Ad");
    }
}
