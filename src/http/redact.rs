//! What of a URL or a response body may be shown: the one place that decides
//! what counts as a credential in text the relay prints.
//!
//! URLs lose their user-info part, and the values of query parameters whose
//! name looks like a credential ([`SECRET_PARAMETER_WORDS`], matched anywhere
//! in the name, case-insensitively) become `REDACTED`. Response bodies are cut
//! to [`BODY_PREVIEW_BYTES`] and every configured secret value in them is
//! masked: a receiver that echoes the request's headers back must not put a
//! token into the log or a dead letter.

use reqwest::Url;

/// A query parameter whose name contains one of these (case-insensitively) has
/// its value shown as `REDACTED`. Documented in the README's Security section.
pub const SECRET_PARAMETER_WORDS: &[&str] = &[
    "token",
    "key",
    "secret",
    "sig",
    "auth",
    "pass",
    "jwt",
    "access",
    "session",
    "credential",
    "code",
    "bearer",
    "cookie",
    "hash",
];

/// How much of a response body logs and dead letters keep.
pub const BODY_PREVIEW_BYTES: usize = 300;

/// What replaces a secret.
pub const MASK: &str = "REDACTED";

/// Whether a query parameter with this name carries a credential.
pub fn is_secret_parameter(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    SECRET_PARAMETER_WORDS
        .iter()
        .any(|word| lower.contains(word))
}

/// The URL as logs may show it: no user or password, and the values of query
/// parameters that look like credentials replaced with `REDACTED`.
pub fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let value = if is_secret_parameter(&k) {
                    MASK.to_owned()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// A URL given as text (a NATS server list, say) as logs may show it: the
/// user-info part dropped; text that does not parse keeps only its scheme.
pub fn redact_url_text(text: &str) -> String {
    match Url::parse(text) {
        Ok(url) if url.has_host() => redact_url(&url),
        _ => match text.split_once("://") {
            Some((scheme, rest)) => {
                let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
                format!("{scheme}://{host}")
            }
            None => "(unparsable URL)".to_owned(),
        },
    }
}

/// Whether the URL itself carries a credential: user info or a query
/// parameter named like one.
pub fn url_has_credentials(url: &Url) -> bool {
    !url.username().is_empty()
        || url.password().is_some()
        || url.query_pairs().any(|(k, _)| is_secret_parameter(&k))
}

/// The start of a response body for a log line or a dead letter: at most
/// [`BODY_PREVIEW_BYTES`], lossily decoded, control characters escaped, and
/// every one of `secrets` (configured header values, signing secrets) masked,
/// also where the cut fell inside one.
pub fn body_preview(body: &[u8], secrets: &[&[u8]]) -> String {
    let mut masked = body.to_vec();
    for secret in secrets.iter().filter(|s| !s.is_empty()) {
        mask_all(&mut masked, secret);
    }
    let cut = masked.len().min(BODY_PREVIEW_BYTES);
    let mut shown = masked[..cut].to_vec();
    // A secret cut in two by the preview's end: mask its visible prefix too.
    for secret in secrets.iter().filter(|s| s.len() > 1) {
        for keep in (1..secret.len()).rev() {
            if shown.ends_with(&secret[..keep]) && keep >= 4.min(secret.len() - 1) {
                let start = shown.len() - keep;
                shown.truncate(start);
                shown.extend_from_slice(MASK.as_bytes());
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&shown);
    let mut out: String = text
        .chars()
        .flat_map(|c| {
            if c.is_control() && c != ' ' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if body.len() > cut {
        out.push_str(&format!("… ({} bytes in all)", body.len()));
    }
    out
}

/// Replaces every occurrence of `secret` in `text` with [`MASK`].
fn mask_all(text: &mut Vec<u8>, secret: &[u8]) {
    let finder = memchr::memmem::Finder::new(secret);
    let mut out = Vec::with_capacity(text.len());
    let mut at = 0;
    while let Some(found) = finder.find(&text[at..]) {
        out.extend_from_slice(&text[at..at + found]);
        out.extend_from_slice(MASK.as_bytes());
        at += found + secret.len();
    }
    if at == 0 {
        return;
    }
    out.extend_from_slice(&text[at..]);
    *text = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_logs_carry_no_credentials() {
        let url = Url::parse(
            "https://user:pw@example.com/s?access_token=abc&topic=x&JWT=j1&Access=a2&sig=s3&code=c4&apiKey=k5",
        )
        .unwrap();
        let shown = redact_url(&url);
        for secret in ["pw", "user", "abc", "j1", "a2", "s3", "c4", "k5"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("topic=x"), "{shown}");
        assert!(shown.contains("JWT=REDACTED"), "{shown}");
    }

    #[test]
    fn url_text_loses_user_info() {
        assert_eq!(redact_url_text("nats://u:p@host:4222"), "nats://host:4222");
        assert_eq!(redact_url_text("tls://host:4222"), "tls://host:4222");
        assert_eq!(redact_url_text("nats://u@host:4222"), "nats://host:4222");
        assert!(!redact_url_text("weird://u:secret@@x").contains("secret"));
        assert_eq!(redact_url_text("no scheme secret"), "(unparsable URL)");
    }

    #[test]
    fn credentials_in_urls_are_noticed() {
        let has = |s: &str| url_has_credentials(&Url::parse(s).unwrap());
        assert!(has("http://u@h/"));
        assert!(has("http://h/?token=1"));
        assert!(!has("http://h/?topic=1"));
    }

    #[test]
    fn body_previews_are_short_and_masked() {
        let secret = b"s3cr3t-token-value";
        let body = format!(
            "echo: Authorization: Bearer s3cr3t-token-value\n{}",
            "x".repeat(1000)
        );
        let shown = body_preview(body.as_bytes(), &[secret]);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("Bearer REDACTED"), "{shown}");
        assert!(shown.contains("\\n"), "{shown}");
        assert!(shown.len() < BODY_PREVIEW_BYTES + 40, "{}", shown.len());
        assert!(shown.ends_with("(1047 bytes in all)"), "{shown}");
        // Cut inside the secret: its visible start is masked as well.
        let body = format!("{}s3cr3t-token-value", "y".repeat(BODY_PREVIEW_BYTES - 8));
        let shown = body_preview(body.as_bytes(), &[secret]);
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
