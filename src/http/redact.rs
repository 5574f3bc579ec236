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

/// A URL given as text (a NATS server list, say) as logs may show it: as
/// [`redact_url`] shows it; text that does not parse as a URL with a host
/// keeps only its scheme and host, so no user info, path or query of a
/// mistyped URL reaches a log or an error.
pub fn redact_url_text(text: &str) -> String {
    match Url::parse(text) {
        Ok(url) if url.has_host() => redact_url(&url),
        _ => match text.split_once("://") {
            Some((scheme, rest)) => {
                let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                let host = authority
                    .rsplit_once('@')
                    .map_or(authority, |(_, host)| host);
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
        // A URL that parses is shown as `redact_url` shows it: its path and
        // harmless query kept, its secret query parameters masked.
        assert_eq!(
            redact_url_text("https://h.example/events?topic=x"),
            "https://h.example/events?topic=x"
        );
        let shown = redact_url_text("nats://u:p@host:4222/?token=abc");
        assert!(
            !shown.contains("abc") && shown.contains("host:4222"),
            "{shown}"
        );
        // One without a host (user info read as a path) is not shown at all.
        assert_eq!(redact_url_text("nats:user:secret@host"), "(unparsable URL)");
        // One that does not parse (a port out of range) loses its path and
        // query with its user info.
        assert_eq!(
            redact_url_text("nats://u:p@host:99999/x?token=abc#f"),
            "nats://host:99999"
        );
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
        // Within a deadline: a scan that stopped moving would loop forever.
        crate::test_deadline::promptly("body_preview", || {
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
            // A body within the preview is shown whole, without a count; text
            // that is not a control character is left as it is.
            assert_eq!(
                body_preview("café \"ok\"\t".as_bytes(), &[]),
                "café \"ok\"\\t"
            );
            let whole = "w".repeat(BODY_PREVIEW_BYTES);
            assert_eq!(body_preview(whole.as_bytes(), &[]), whole);
            // An end that is no part of a secret is shown as it is.
            assert!(
                shown.ends_with("xxxxxxxxxxxxxxxxxxxx… (1047 bytes in all)"),
                "{shown}"
            );
            // Cut inside the secret: it is masked whole before the cut.
            let body = format!("{}s3cr3t-token-value", "y".repeat(BODY_PREVIEW_BYTES - 8));
            let shown = body_preview(body.as_bytes(), &[secret]);
            assert!(!shown.contains("s3cr3t"), "{shown}");
            // The start of a secret that the body does not carry whole (an echo
            // cut short) is masked where the preview's end leaves it.
            let body = format!("{}s3cr3t-tok…", "y".repeat(BODY_PREVIEW_BYTES - 8));
            let shown = body_preview(body.as_bytes(), &[secret]);
            assert!(!shown.contains("s3cr3t"), "{shown}");
            assert!(shown.contains("yREDACTED"), "{shown}");
            // Of a short secret, all but its last byte is enough to mask; of a
            // long one, four bytes are, and fewer are shown.
            let cut_at =
                |tail: &str| format!("{}{tail}zzzz", "y".repeat(BODY_PREVIEW_BYTES - tail.len()));
            let shown = body_preview(cut_at("pin").as_bytes(), &[b"pin9"]);
            let masked = format!("{}REDACTED… (304 bytes in all)", "y".repeat(297));
            assert_eq!(shown, masked);
            let shown = body_preview(cut_at("pi").as_bytes(), &[b"pin9"]);
            assert!(shown.ends_with("ypi… (304 bytes in all)"), "{shown}");
            let shown = body_preview(cut_at("s3c").as_bytes(), &[secret]);
            assert!(shown.ends_with("ys3c… (304 bytes in all)"), "{shown}");
        });
    }
}
