//! How log lines look.
//!
//! Text (the default): `<time> <LEVEL> stream=<name> sink=<name> <message>
//! <other fields>`: the stream and sink an event is about come first, where an
//! operator's eye and `grep stream=wiki` look for them, and no colour codes
//! (stderr is usually a journal or a file). Under journald, which stamps every
//! line itself, there is no timestamp. JSON (`--log-format json`): one object
//! per line, the stream and sink as fields like any other.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// A wait as a log line says it: whole milliseconds under a second (a 17 ms
/// backoff is not "0.0s"), seconds with one decimal from there on.
pub struct Delay(pub std::time::Duration);

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 < std::time::Duration::from_secs(1) {
            write!(f, "{}ms", self.0.as_millis())
        } else {
            write!(f, "{:.1}s", self.0.as_secs_f64())
        }
    }
}

/// The fields written before the message, in this order.
const LEADING: [&str; 2] = ["stream", "sink"];

/// The text format.
pub struct Text {
    /// Whether lines start with a timestamp (not under journald).
    pub timestamps: bool,
}

impl<S, N> FormatEvent<S, N> for Text
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        if self.timestamps {
            write!(
                writer,
                "{} ",
                humantime::format_rfc3339_micros(std::time::SystemTime::now())
            )?;
        }
        write!(writer, "{:>5} ", event.metadata().level())?;
        let mut fields = Fields::default();
        event.record(&mut fields);
        for name in LEADING {
            if let Some((_, value)) = fields.others.iter().find(|(k, _)| *k == name) {
                write!(writer, "{name}={value} ")?;
            }
        }
        writer.write_str(&fields.message)?;
        for (name, value) in fields.others.iter().filter(|(k, _)| !LEADING.contains(k)) {
            write!(writer, " {name}={value}")?;
        }
        writeln!(writer)
    }
}

/// An event's message and other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    others: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.others.push((field.name(), value.to_owned()));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.others.push((field.name(), format!("{value:?}")));
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn delays_under_a_second_are_whole_milliseconds() {
        use std::time::Duration;
        let said = |ms| super::Delay(Duration::from_millis(ms)).to_string();
        assert_eq!(said(0), "0ms");
        assert_eq!(said(17), "17ms");
        assert_eq!(said(999), "999ms");
        assert_eq!(said(1000), "1.0s");
        assert_eq!(said(2345), "2.3s");
    }
}
