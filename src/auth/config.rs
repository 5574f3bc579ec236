//! The `auth` table of a stream (`[streams.NAME.auth]`) or a webhook sink
//! (`[sinks.NAME.auth]`): which credentials its requests carry, renewed
//! without a reload.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::validate::{ConfigError, Secret, Validator};

/// Validated `auth` settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthConfig {
    /// `Authorization: Bearer <the file's contents>`, the file read before
    /// every connection attempt.
    BearerFile { path: PathBuf },
    /// Tokens from an OAuth2 token endpoint (RFC 6749 section 4.4).
    OAuth2(OAuth2Config),
}

/// `type = "oauth2_client_credentials"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuth2Config {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: Secret,
    /// Sent as `scope`, space-separated, when not empty.
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    pub client_auth: ClientAuth,
}

/// How the client authenticates to the token endpoint (RFC 6749 2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret (the default).
    Basic,
    /// `client_id` and `client_secret` in the request body.
    Body,
}

impl AuthConfig {
    /// A line for `check` and logs: the type and where credentials come from,
    /// never a secret.
    pub fn describe(&self) -> String {
        match self {
            AuthConfig::BearerFile { path } => format!("bearer_file {}", path.display()),
            AuthConfig::OAuth2(oauth) => format!(
                "oauth2_client_credentials {} (client_id {})",
                crate::http::redact_url(&oauth.token_url),
                oauth.client_id
            ),
        }
    }

    /// What `check` should warn about, for the table named `owner` whose
    /// requests go to `url`.
    pub fn warnings(&self, owner: &str, url: &reqwest::Url, out: &mut Vec<String>) {
        if url.scheme() == "http" {
            out.push(format!(
                "{owner} sends its `auth` credentials over plain http://: they travel unencrypted"
            ));
        }
        if let AuthConfig::OAuth2(oauth) = self {
            use url::Host;
            let loopback = match oauth.token_url.host() {
                Some(Host::Domain(name)) => name == "localhost",
                Some(Host::Ipv4(ip)) => ip.is_loopback(),
                Some(Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if oauth.token_url.scheme() == "http" && !loopback {
                out.push(format!(
                    "{owner} sends its OAuth2 client secret to a plain http:// token_url: it travels unencrypted"
                ));
            }
        }
    }
}

/// The `auth` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    #[serde(rename = "type")]
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    token_url: Option<Spanned<String>>,
    client_id: Option<Spanned<String>>,
    client_secret: Option<Spanned<String>>,
    client_secret_file: Option<Spanned<String>>,
    scopes: Option<Spanned<Vec<String>>>,
    audience: Option<Spanned<String>>,
    client_auth: Option<Spanned<ClientAuth>>,
}

const BEARER_FILE: &str = "bearer_file";
const OAUTH2: &str = "oauth2_client_credentials";

impl RawAuth {
    /// Validates the table at `span`.
    pub fn validate(&self, v: &Validator, span: Range<usize>) -> Result<AuthConfig, ConfigError> {
        let oauth_keys = [
            ("token_url", self.token_url.as_ref().map(Spanned::span)),
            ("client_id", self.client_id.as_ref().map(Spanned::span)),
            (
                "client_secret",
                self.client_secret.as_ref().map(Spanned::span),
            ),
            (
                "client_secret_file",
                self.client_secret_file.as_ref().map(Spanned::span),
            ),
            ("scopes", self.scopes.as_ref().map(Spanned::span)),
            ("audience", self.audience.as_ref().map(Spanned::span)),
            ("client_auth", self.client_auth.as_ref().map(Spanned::span)),
        ];
        let only_for = |key: &str, at: Range<usize>, kind: &str| {
            v.error(
                at,
                format!("key `{key}` only applies to auth type \"{kind}\""),
            )
            .with_key(key.to_owned())
        };
        match self.kind.get_ref().as_str() {
            BEARER_FILE => {
                if let Some((key, at)) = oauth_keys
                    .into_iter()
                    .find_map(|(key, at)| Some((key, at?)))
                {
                    return Err(only_for(key, at, OAUTH2));
                }
                let path = self.path.as_ref().ok_or_else(|| {
                    v.error(span, "missing key `path` for auth type \"bearer_file\"")
                        .with_key("path")
                        .with_help(
                            "e.g. path = \"${CREDENTIALS_DIRECTORY}/vendor-token\" (systemd LoadCredential=)",
                        )
                })?;
                let text = v.expand(path)?;
                if text.trim().is_empty() {
                    return Err(v.error(path.span(), "`path` is empty").with_key("path"));
                }
                Ok(AuthConfig::BearerFile {
                    path: PathBuf::from(text),
                })
            }
            OAUTH2 => {
                if let Some(path) = &self.path {
                    return Err(only_for("path", path.span(), BEARER_FILE));
                }
                fn required<'r>(
                    v: &Validator,
                    span: &Range<usize>,
                    value: &'r Option<Spanned<String>>,
                    key: &str,
                    example: &str,
                ) -> Result<&'r Spanned<String>, ConfigError> {
                    value.as_ref().ok_or_else(|| {
                        v.error(
                            span.clone(),
                            format!("missing key `{key}` for auth type \"{OAUTH2}\""),
                        )
                        .with_key(key.to_owned())
                        .with_help(format!("e.g. {key} = {example}"))
                    })
                }
                let token_url = v
                    .http_url(required(
                        v,
                        &span,
                        &self.token_url,
                        "token_url",
                        "\"https://auth.example.com/oauth/token\"",
                    )?)
                    .map_err(|e| e.with_key("token_url"))?;
                let client_id = v.expand(required(
                    v,
                    &span,
                    &self.client_id,
                    "client_id",
                    "\"sse-relay\"",
                )?)?;
                if client_id.is_empty() {
                    return Err(v
                        .error(
                            self.client_id.as_ref().map_or(span.clone(), Spanned::span),
                            "`client_id` is empty",
                        )
                        .with_key("client_id"));
                }
                let client_secret = v
                    .secret_or_file(
                        ("client_secret", &self.client_secret),
                        ("client_secret_file", &self.client_secret_file),
                    )?
                    .ok_or_else(|| {
                        v.error(
                            span.clone(),
                            format!("missing key `client_secret` for auth type \"{OAUTH2}\""),
                        )
                        .with_key("client_secret")
                        .with_help(
                            "e.g. client_secret = \"${PARTNER_SECRET}\", or client_secret_file = \"...\"",
                        )
                    })?;
                let scopes = match &self.scopes {
                    None => Vec::new(),
                    Some(list) => {
                        let bad = list.get_ref().iter().find(|s| {
                            s.is_empty()
                                || s.bytes()
                                    .any(|b| b <= b' ' || b == b'"' || b == b'\\' || b >= 0x7f)
                        });
                        if let Some(bad) = bad {
                            return Err(v
                                .error(list.span(), format!("invalid scope {bad:?}"))
                                .with_key("scopes")
                                .with_help("a scope is printable ASCII without spaces, quotes or backslashes (RFC 6749 3.3)"));
                        }
                        list.get_ref().clone()
                    }
                };
                Ok(AuthConfig::OAuth2(OAuth2Config {
                    token_url,
                    client_id,
                    client_secret,
                    scopes,
                    audience: self.audience.as_ref().map(|a| v.expand(a)).transpose()?,
                    client_auth: self
                        .client_auth
                        .as_ref()
                        .map_or(ClientAuth::Basic, |c| *c.get_ref()),
                }))
            }
            other => Err(v
                .error(self.kind.span(), format!("unknown auth type `{other}`"))
                .with_key("type")
                .with_help(format!("expected one of: {BEARER_FILE}, {OAUTH2}"))),
        }
    }
}

/// Validates the `auth` table of a stream or webhook sink whose other keys
/// gave `url` and `headers`; refuses it beside an `Authorization` header or
/// user info in the URL (each would set the same header).
pub fn validate_auth(
    v: &Validator,
    auth: &Option<Spanned<RawAuth>>,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
) -> Result<Option<AuthConfig>, ConfigError> {
    let Some(auth) = auth else {
        return Ok(None);
    };
    if headers.contains_key(reqwest::header::AUTHORIZATION) {
        return Err(v
            .error(
                auth.span(),
                "`auth` and an `Authorization` header both set the Authorization header",
            )
            .with_key("auth")
            .with_help("remove the Authorization header from `headers`; `auth` sends it"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(v
            .error(
                auth.span(),
                "`auth` and user info in `url` both set the Authorization header",
            )
            .with_key("auth")
            .with_help("remove the user info from `url`; `auth` sends the credentials"));
    }
    auth.get_ref().validate(v, auth.span()).map(Some)
}
