//! The sink types, registered in one place: the list at the bottom of this
//! file. Each type is a folder under `sink/` whose `config` module holds its
//! `[sinks.NAME]` keys, their validation, its line in `check`'s summary, what
//! start-up must find usable, and how to build it ([`SinkType`] is that
//! contract). Adding a sink type is one folder and one line in the list;
//! [`SinkKind`] and its dispatch are generated from the list.

// A config error is built once, on the way to exiting.
#![allow(clippy::result_large_err)]

use tokio::task::JoinHandle;
use toml::de::DeTable;
use toml::Spanned;

pub use super::sink_type::{SinkType, Start, StartError};
use super::{run, SinkTask};
use crate::preflight::Findings;
use crate::record::Encoding;
use crate::validate::{ConfigError, Validator};

/// Builds `settings`' sink and spawns its runner on `task`.
fn spawn<T: SinkType>(
    settings: &T,
    start: &Start<'_>,
    task: SinkTask,
) -> Result<JoinHandle<()>, StartError> {
    Ok(tokio::spawn(run(settings.build(start)?, task)))
}

macro_rules! sink_types {
    ($($variant:ident => $settings:ty),+ $(,)?) => {
        /// A sink's type, with its type's own settings.
        #[derive(Debug, Clone, PartialEq)]
        pub enum SinkKind {
            $($variant(Box<$settings>),)+
        }

        /// Every `type = "..."`, in the order the list registers them.
        pub const TYPE_NAMES: &[&str] = &[$(<$settings as SinkType>::TYPE),+];

        impl SinkKind {
            /// Validates `table` as a sink of type `type_name`; `None` if no
            /// sink type has that name.
            pub fn parse(
                v: &Validator,
                type_name: &str,
                table: Spanned<DeTable<'_>>,
            ) -> Option<Result<SinkKind, ConfigError>> {
                $(
                    if type_name == <$settings as SinkType>::TYPE {
                        return Some(
                            <$settings as SinkType>::from_table(v, table)
                                .map(|s| SinkKind::$variant(Box::new(s))),
                        );
                    }
                )+
                None
            }

            /// The keys a type's own table takes (`None` for an unknown type).
            pub fn keys_of(type_name: &str) -> Option<Vec<&'static str>> {
                $(
                    if type_name == <$settings as SinkType>::TYPE {
                        return Some(<$settings as SinkType>::keys());
                    }
                )+
                None
            }

            pub fn type_name(&self) -> &'static str {
                match self {
                    $(SinkKind::$variant(_) => <$settings as SinkType>::TYPE,)+
                }
            }

            /// `Err(help)` if this sink's type cannot write `encoding`.
            pub fn check_encoding(&self, encoding: Encoding) -> Result<(), &'static str> {
                match self {
                    $(SinkKind::$variant(_) => <$settings as SinkType>::check_encoding(encoding),)+
                }
            }

            /// Where it sends records, for `check`'s summary.
            pub fn describe(&self, encoding: Encoding) -> String {
                match self {
                    $(SinkKind::$variant(s) => s.describe(encoding),)+
                }
            }

            /// What `check` should warn about.
            pub fn warnings(&self, sink: &str, out: &mut Vec<String>) {
                match self {
                    $(SinkKind::$variant(s) => s.warnings(sink, out),)+
                }
            }

            /// See [`SinkType::prepare`].
            pub fn prepare(&self, streams: &[&str], findings: &mut Findings) {
                match self {
                    $(SinkKind::$variant(s) => s.prepare(streams, findings),)+
                }
            }

            /// Builds the sink and spawns its runner, which reads `task`'s queue.
            pub fn start(
                &self,
                start: &Start<'_>,
                task: SinkTask,
            ) -> Result<JoinHandle<()>, StartError> {
                match self {
                    $(SinkKind::$variant(s) => spawn(s.as_ref(), start, task),)+
                }
            }
        }
    };
}

sink_types! {
    Stdout => super::stdout::StdoutConfig,
    File => super::file::FileSinkConfig,
    Webhook => super::webhook::WebhookConfig,
    Nats => super::nats::NatsSinkConfig,
}

impl SinkKind {
    /// A stdout sink (`tail`, `demo`).
    pub fn stdout() -> SinkKind {
        SinkKind::Stdout(Box::default())
    }
}
