//! The redirect policy: whether a redirect is followed, and whether the
//! stream's credentials go along.
//!
//! Every configured header counts as a credential (an `X-Api-Key` is as secret
//! as an `Authorization`), as do the URL's user info and the headers derived
//! from it. The rules, for every client and every hop:
//!
//! * a hop from `https` to `http` is refused unless `allow_insecure_redirects`;
//! * credentials never travel over plain `http` unless the stream's own URL
//!   was `http://`;
//! * a hop to another origin (scheme, host or port) drops the credentials for
//!   that request and every later one, even if a later hop comes back;
//! * same-origin hops keep them.
//!
//! Streams follow redirects themselves, hop by hop, with this policy (neither
//! reqwest nor the lean client follows one on its own), so each hop is logged
//! and the `connected to` line names the URL the body comes from.

use std::fmt;

use reqwest::header::{HeaderMap, LOCATION};
use reqwest::{StatusCode, Url};

use super::redact::redact_url;

/// The redirect statuses followed, as browsers do.
pub fn is_redirect(status: StatusCode) -> bool {
    matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308)
}

/// Where a redirect answer points, resolved against the URL it answered;
/// `None` if it is no redirect or has no usable `Location`.
pub fn location(from: &Url, status: StatusCode, headers: &HeaderMap) -> Option<Url> {
    if !is_redirect(status) {
        return None;
    }
    let location = headers.get(LOCATION)?.to_str().ok()?;
    let mut next = from.join(location.trim()).ok()?;
    // User info in a Location is the server's idea, never sent.
    let _ = next.set_username("");
    let _ = next.set_password(None);
    Some(next)
}

/// The method of the request after a redirect answered `status`, by the
/// Fetch standard's rule: 307 and 308 keep the method and the body; 301 and
/// 302 turn a POST into a GET, and 303 turns anything but GET and HEAD into
/// a GET; a request turned into a GET loses its body. The bool says whether
/// the body goes along.
pub fn method_after(method: &reqwest::Method, status: StatusCode) -> (reqwest::Method, bool) {
    use reqwest::Method;
    let to_get = match status.as_u16() {
        301 | 302 => *method == Method::POST,
        303 => *method != Method::GET && *method != Method::HEAD,
        _ => false,
    };
    if to_get {
        (Method::GET, false)
    } else {
        (method.clone(), true)
    }
}

/// A redirect chain in progress for one request.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Whether the stream's own URL was plain `http://`.
    origin_was_plain: bool,
    allow_insecure: bool,
    max_redirects: usize,
    hops: usize,
    /// Still sending credentials: no hop has left the first origin yet.
    credentials: bool,
    first: Url,
}

/// Why a redirect was not followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// `https` to `http` without `allow_insecure_redirects`.
    Downgrade { from: String, to: String },
    /// More than `max_redirects` hops.
    TooMany { max: usize },
    /// A scheme other than `http`/`https`.
    Scheme { to: String },
}

impl Refused {
    /// The reconnect kind for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Refused::Downgrade { .. } | Refused::Scheme { .. } => "insecure_redirect",
            Refused::TooMany { .. } => "redirects",
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Downgrade { from, to } => write!(
                f,
                "refused a redirect from {from} to {to}: it leaves HTTPS for plain HTTP; set allow_insecure_redirects = true on the stream to follow it (credentials are never sent over it)"
            ),
            Refused::TooMany { max } => write!(f, "too many redirects (max_redirects = {max})"),
            Refused::Scheme { to } => {
                write!(f, "refused a redirect to {to}: only http and https are followed")
            }
        }
    }
}

/// What to do with the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop {
    /// Whether the request to it carries the stream's credentials.
    pub credentials: bool,
}

impl Chain {
    pub fn new(url: &Url, allow_insecure: bool, max_redirects: usize) -> Self {
        Chain {
            origin_was_plain: url.scheme() == "http",
            allow_insecure,
            max_redirects,
            hops: 0,
            credentials: true,
            first: url.clone(),
        }
    }

    /// Decides on a redirect from `from` to `to`.
    pub fn follow(&mut self, from: &Url, to: &Url) -> Result<Hop, Refused> {
        if !matches!(to.scheme(), "http" | "https") {
            return Err(Refused::Scheme { to: redact_url(to) });
        }
        if from.scheme() == "https" && to.scheme() == "http" && !self.allow_insecure {
            return Err(Refused::Downgrade {
                from: redact_url(from),
                to: redact_url(to),
            });
        }
        if self.hops == self.max_redirects {
            return Err(Refused::TooMany {
                max: self.max_redirects,
            });
        }
        self.hops += 1;
        if to.origin() != self.first.origin() {
            // Sticky: a chain that came back to the first origin through
            // another host does not get its credentials back.
            self.credentials = false;
        }
        let plain_ok = to.scheme() == "https" || self.origin_was_plain;
        Ok(Hop {
            credentials: self.credentials && plain_ok,
        })
    }

    /// How many redirects were followed.
    pub fn hops(&self) -> usize {
        self.hops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn downgrade_is_refused_unless_allowed_and_then_carries_nothing() {
        let a = url("https://a.example/s");
        let b = url("http://a.example/s");
        let mut chain = Chain::new(&a, false, 10);
        let refused = chain.follow(&a, &b).unwrap_err();
        assert_eq!(refused.kind(), "insecure_redirect");
        let text = refused.to_string();
        assert!(text.contains("https://a.example/s") && text.contains("http://a.example/s"));
        assert!(text.contains("allow_insecure_redirects = true"), "{text}");
        let mut chain = Chain::new(&a, true, 10);
        // Allowed, but the credentials stay off plain HTTP (same host, other
        // origin anyway: the scheme differs).
        assert_eq!(chain.follow(&a, &b).unwrap(), Hop { credentials: false });
    }

    #[test]
    fn other_origins_lose_credentials_for_good() {
        let a = url("http://127.0.0.1:1/s");
        let same = url("http://127.0.0.1:1/t");
        let other_port = url("http://127.0.0.1:2/s");
        let mut chain = Chain::new(&a, false, 10);
        assert_eq!(chain.follow(&a, &same).unwrap(), Hop { credentials: true });
        assert_eq!(
            chain.follow(&same, &other_port).unwrap(),
            Hop { credentials: false }
        );
        // Back on the first origin: still none.
        assert_eq!(
            chain.follow(&other_port, &a).unwrap(),
            Hop { credentials: false }
        );
        assert_eq!(chain.hops(), 3);
        let mut chain = Chain::new(&a, false, 10);
        assert!(
            !chain
                .follow(&a, &url("http://localhost:1/s"))
                .unwrap()
                .credentials
        );
        let https = url("https://a.example/s");
        let mut chain = Chain::new(&https, false, 10);
        assert!(
            !chain
                .follow(&https, &url("https://b.example/s"))
                .unwrap()
                .credentials
        );
        assert!(chain.follow(&https, &https).is_ok());
    }

    #[test]
    fn plain_streams_keep_credentials_on_their_own_origin_and_upgrades_keep_none() {
        let a = url("http://a.example/s");
        let mut chain = Chain::new(&a, false, 10);
        // http -> https is another origin.
        assert!(
            !chain
                .follow(&a, &url("https://a.example/s"))
                .unwrap()
                .credentials
        );
    }

    #[test]
    fn the_hop_limit_and_schemes_hold() {
        let a = url("http://a.example/s");
        let mut chain = Chain::new(&a, false, 1);
        assert!(chain.follow(&a, &a).is_ok());
        assert_eq!(chain.follow(&a, &a), Err(Refused::TooMany { max: 1 }));
        let mut chain = Chain::new(&a, true, 5);
        assert!(matches!(
            chain.follow(&a, &url("file:///etc/passwd")),
            Err(Refused::Scheme { .. })
        ));
    }

    #[test]
    fn locations_resolve_and_lose_user_info() {
        let from = url("http://a.example/x/y");
        let mut h = HeaderMap::new();
        h.insert(LOCATION, "../z?q=1".parse().unwrap());
        assert_eq!(
            location(&from, StatusCode::FOUND, &h).unwrap().as_str(),
            "http://a.example/z?q=1"
        );
        assert!(location(&from, StatusCode::OK, &h).is_none());
        h.insert(LOCATION, "http://u:p@b.example/".parse().unwrap());
        let next = location(&from, StatusCode::TEMPORARY_REDIRECT, &h).unwrap();
        assert_eq!(next.as_str(), "http://b.example/");
        assert!(location(&from, StatusCode::FOUND, &HeaderMap::new()).is_none());
    }

    #[test]
    fn post_keeps_its_body_only_through_307_and_308() {
        use reqwest::Method;
        let after = |method: Method, status: u16| {
            method_after(&method, StatusCode::from_u16(status).unwrap())
        };
        for status in [301, 302, 303] {
            assert_eq!(
                after(Method::POST, status),
                (Method::GET, false),
                "{status}"
            );
        }
        for status in [307, 308] {
            assert_eq!(
                after(Method::POST, status),
                (Method::POST, true),
                "{status}"
            );
        }
        for status in [301, 302, 303, 307, 308] {
            assert_eq!(after(Method::GET, status), (Method::GET, true), "{status}");
        }
        assert_eq!(after(Method::PUT, 303), (Method::GET, false));
        assert_eq!(after(Method::PUT, 302), (Method::PUT, true));
    }
}
