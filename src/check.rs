//! `sse-relay check`: what a valid configuration would run, and what looks wrong.

use std::fmt::Write;
use std::path::Path;

use crate::config::Config;
use crate::http::redact::url_has_credentials;
use crate::http::redact_url;

/// A human summary of `config`: streams, sinks, routes, then warnings.
/// It never shows header values or other secrets.
pub fn summary(path: &Path, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let _ = writeln!(out, "state directory: {}", config.data_dir.display());
    let _ = writeln!(out, "\nstreams ({}):", config.streams.len());
    for stream in config.streams.values() {
        let headers: Vec<&str> = stream.headers.keys().map(|k| k.as_str()).collect();
        let _ = write!(out, "  {:<16} {}", stream.name, redact_url(&stream.url));
        if !headers.is_empty() {
            let _ = write!(out, "  headers: {}", headers.join(", "));
        }
        if let Some(auth) = &stream.auth {
            let _ = write!(out, "  auth: {}", auth.describe());
        }
        if stream.method != reqwest::Method::GET {
            let _ = write!(out, "  {}", stream.method);
            if let Some(body) = &stream.body {
                let _ = write!(out, " with a {}-byte body", body.len());
            }
        }
        if let Some(parameter) = &stream.last_event_id_query {
            let _ = write!(out, "  resume via ?{parameter}=");
        }
        if stream.id_gap_check != crate::gaps::IdGapCheck::Off {
            let _ = write!(out, "  id_gap_check {}", stream.id_gap_check.name());
        }
        let _ = writeln!(
            out,
            "  backoff {}..{}, idle_timeout {}",
            humantime::format_duration(stream.backoff_initial),
            humantime::format_duration(stream.backoff_max),
            humantime::format_duration(stream.idle_timeout)
        );
    }
    let _ = writeln!(out, "\nsinks ({}):", config.sinks.len());
    for sink in config.sinks.values() {
        let target = sink.kind.describe(sink.encoding);
        let _ = writeln!(
            out,
            "  {:<16} {target}, queue {} events",
            sink.name, sink.queue_size
        );
    }
    let _ = writeln!(out, "\nroutes:");
    let mut warnings = Vec::new();
    for stream in config.streams.values() {
        let sinks: Vec<String> = config
            .sinks
            .values()
            .filter(|sink| sink.takes_stream(&stream.name))
            .map(|sink| match &sink.event_types {
                Some(types) => format!("{} (event types: {})", sink.name, types.join(", ")),
                None => sink.name.clone(),
            })
            .collect();
        if sinks.is_empty() {
            warnings.push(format!(
                "stream `{}` goes to no sink: its events are read and discarded",
                stream.name
            ));
            let _ = writeln!(out, "  {} -> (nothing)", stream.name);
        } else {
            let _ = writeln!(out, "  {} -> {}", stream.name, sinks.join(", "));
        }
        if stream.tls_insecure {
            warnings.push(format!(
                "stream `{}` has tls_insecure = true: TLS certificates are not verified",
                stream.name
            ));
        }
        if stream.url.scheme() == "http" && !stream.headers.is_empty() {
            warnings.push(format!(
                "stream `{}` sends headers over plain http://; credentials in them travel unencrypted",
                stream.name
            ));
        }
        if let Some(auth) = &stream.auth {
            auth.warnings(
                &format!("stream `{}`", stream.name),
                &stream.url,
                &mut warnings,
            );
        }
        if stream.url.scheme() == "http" && url_has_credentials(&stream.url) {
            warnings.push(format!(
                "stream `{}` has credentials in a plain http:// URL (user info or a parameter named like a secret): they travel unencrypted",
                stream.name
            ));
        }
        if stream.allow_insecure_redirects {
            warnings.push(format!(
                "stream `{}` has allow_insecure_redirects = true: a redirect may take it from HTTPS to plain HTTP (its credentials stay behind)",
                stream.name
            ));
        }
    }
    for sink in config.sinks.values() {
        sink.kind.warnings(&sink.name, &mut warnings);
    }
    if let Some(metrics) = &config.metrics {
        if !metrics.listen.ip().is_loopback() {
            warnings.push(format!(
                "[metrics] listen = \"{}\" is not a loopback address: anyone who can reach it reads /metrics and /health (stream names, sink names, URLs' hosts); put it on 127.0.0.1 or behind a firewall",
                metrics.listen
            ));
        }
    }
    if !warnings.is_empty() {
        let _ = writeln!(out);
        for warning in warnings {
            let _ = writeln!(out, "warning: {warning}");
        }
    }
    out
}

/// `check --connect`: one attempt to every stream's endpoint at once, each
/// within `within`. The report, and whether every stream would run.
pub async fn connect(config: &Config, within: std::time::Duration) -> (String, bool) {
    let probes = futures_util::future::join_all(
        config
            .streams
            .values()
            .map(|stream| crate::stream::Stream::probe(stream.clone(), within)),
    )
    .await;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nconnect (each stream once, within {}):",
        humantime::format_duration(within)
    );
    let mut all_ok = true;
    for probe in &probes {
        all_ok &= probe.problem.is_none();
        let _ = writeln!(out, "{}", probe_line(probe, within));
    }
    (out, all_ok)
}

/// One stream's line of the `--connect` report.
fn probe_line(probe: &crate::stream::Probe, within: std::time::Duration) -> String {
    let seconds = |d: std::time::Duration| format!("{:.3}s", d.as_secs_f64());
    let mut line = format!(
        "  {:<16} {:<6} {}",
        probe.stream,
        if probe.problem.is_none() {
            "ok"
        } else {
            "FAILED"
        },
        probe.url
    );
    if let Some(status) = probe.status {
        let _ = write!(line, "  HTTP {status}");
    }
    if let Some(content_type) = &probe.content_type {
        let _ = write!(line, " {content_type}");
    }
    if let Some(after) = probe.response_after {
        let _ = write!(line, "  response {}", seconds(after));
    }
    match (&probe.first_event_id, probe.first_event_after) {
        (Some(id), Some(after)) => {
            let _ = write!(line, "  first event {}", seconds(after));
            if id.is_empty() {
                line.push_str(" (no id)");
            } else {
                let _ = write!(line, " id {:?}", id);
            }
        }
        _ if probe.problem.is_none() => {
            let _ = write!(
                line,
                "  no event within {} (a quiet stream)",
                humantime::format_duration(within)
            );
        }
        _ => {}
    }
    if let Some(problem) = &probe.problem {
        let _ = write!(line, "\n  {:<16} {problem}", "");
    }
    line
}
