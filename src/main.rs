//! The `sse-relay` command line: parses arguments, sets up logging and signals,
//! and hands over to the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use reqwest::header::{HeaderName, HeaderValue};
use sse_relay::prepare::Mode;

use sse_relay::config::{self, Config, StreamConfig};
use sse_relay::demo::DemoSource;
use sse_relay::record::Encoding;
use sse_relay::sink::{SinkConfig, SinkKind, WhenFull};
use sse_relay::supervisor::{self, Checkpoints, Shutdown};
use sse_relay::{check, sse};

#[derive(Parser)]
#[command(
    name = "sse-relay",
    version = env!("SSE_RELAY_VERSION"),
    about = "Relay Server-Sent Events streams into files, stdout and other sinks, in order and without loss"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log level or filter (e.g. `debug`, `sse_relay=debug`); RUST_LOG wins if set.
    #[arg(long, global = true)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the streams and sinks of a configuration until stopped.
    Run {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Validate a configuration and show what `run` would do.
    Check {
        #[arg(long, short, default_value = config::DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Then connect to every stream once (in parallel, auth included),
        /// report the answer and the first event, and disconnect; no
        /// checkpoint moves. Exits non-zero if any stream fails.
        #[arg(long)]
        connect: bool,
        /// How long each stream's --connect attempt may take.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        connect_timeout: Duration,
    },
    /// Subscribe to one URL and print its events to stdout (no config needed).
    Tail {
        url: String,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        /// Start after this event id (sent as Last-Event-ID).
        #[arg(long)]
        last_event_id: Option<String>,
        /// `json`: one output record per line; `data`: the event data only.
        #[arg(long, value_enum, default_value_t = TailFormat::Json)]
        format: TailFormat,
        /// The stream name shown in records.
        #[arg(long, default_value = "tail")]
        name: String,
        /// Reconnect when nothing arrives for this long.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        idle_timeout: Duration,
        /// Trust this PEM CA bundle for TLS.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Do not verify TLS certificates (dangerous).
        #[arg(long)]
        insecure: bool,
        /// Send `Authorization: Bearer <contents of PATH>`, read before every
        /// connection attempt (a token rotated on disk is used at the next one).
        #[arg(long, value_name = "PATH")]
        bearer_file: Option<PathBuf>,
    },
    /// Relay a built-in SSE source on loopback to stdout: reconnects and resume
    /// in action, no network needed.
    Demo {
        /// Events the source serves before it answers 204 and the demo ends.
        #[arg(long, default_value_t = 20)]
        events: u64,
    },
    /// Print the manual page (roff) to stdout: `sse-relay man | man -l -`.
    Man,
    /// Print a shell completion script to stdout.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum TailFormat {
    Json,
    Data,
}

fn main() -> ExitCode {
    let heap_tuned = sse_relay::heap::tune();
    let cli = Cli::parse();
    init_logging(cli.log_format, cli.log_level.as_deref());
    if heap_tuned {
        tracing::debug!(
            "malloc keeps up to {} KiB free per arena; blocks from {} KiB are mapped alone",
            sse_relay::heap::TRIM_THRESHOLD >> 10,
            sse_relay::heap::MMAP_THRESHOLD >> 10
        );
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return fail(format!("error: cannot start the async runtime: {e}"));
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Run { config } => run(config).await,
            Command::Check {
                config,
                connect,
                connect_timeout,
            } => match load_prepared(&config, Mode::Start) {
                Ok(loaded) => {
                    use std::io::Write;
                    // Not print!: a closed stdout (`check | head`) must not panic.
                    let mut stdout = std::io::stdout();
                    let _ = stdout.write_all(check::summary(&config, &loaded).as_bytes());
                    if !connect {
                        return ExitCode::SUCCESS;
                    }
                    let (report, all_ok) = check::connect(&loaded, connect_timeout).await;
                    let _ = stdout.write_all(report.as_bytes());
                    if all_ok {
                        ExitCode::SUCCESS
                    } else {
                        fail("error: some streams failed to connect (see above)".to_owned())
                    }
                }
                Err(e) => fail(e),
            },
            Command::Tail {
                url,
                headers,
                last_event_id,
                format,
                name,
                idle_timeout,
                ca_file,
                insecure,
                bearer_file,
            } => {
                let encoding = match format {
                    TailFormat::Json => Encoding::Json,
                    TailFormat::Data => Encoding::Data,
                };
                let tail = TailArgs {
                    url,
                    headers,
                    last_event_id,
                    name,
                    idle_timeout,
                    ca_file,
                    insecure,
                    bearer_file,
                };
                match tail.config(encoding) {
                    Ok(config) => relay(&config, Checkpoints::InMemory, None).await,
                    Err(e) => fail(e),
                }
            }
            Command::Demo { events } => demo(events).await,
            Command::Man => {
                use clap::CommandFactory;
                let mut out = Vec::new();
                match clap_mangen::Man::new(Cli::command()).render(&mut out) {
                    Ok(()) => write_stdout(&out),
                    Err(e) => fail(format!("error: cannot render the manual page: {e}")),
                }
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                let mut out = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "sse-relay", &mut out);
                write_stdout(&out)
            }
        }
    })
}

/// Writes `bytes` to stdout; a closed stdout is an error exit, not a panic.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    use std::io::Write;
    match std::io::stdout().write_all(bytes) {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

fn fail(error: impl std::fmt::Display) -> ExitCode {
    use std::io::Write;
    // Not eprintln!: it panics when stderr is closed.
    let _ = writeln!(std::io::stderr(), "{error}");
    ExitCode::FAILURE
}

/// Reads the configuration at `path` and prepares it: the one path `check`,
/// start-up and reload share (see `sse_relay::prepare`).
fn load_prepared(path: &std::path::Path, mode: Mode) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    sse_relay::prepare::prepare(&config, mode, Some(path))?;
    Ok(config)
}

async fn run(path: PathBuf) -> ExitCode {
    let config = match load_prepared(&path, Mode::Start) {
        Ok(config) => config,
        Err(e) => return fail(e),
    };
    let reloader: supervisor::Reloader = Box::new(move || load_prepared(&path, Mode::Reload));
    relay(&config, Checkpoints::OnDisk, Some(reloader)).await
}

async fn relay(
    config: &Config,
    checkpoints: Checkpoints,
    reloader: Option<supervisor::Reloader>,
) -> ExitCode {
    let shutdown = Shutdown::default();
    let signals = tokio::spawn(watch_signals(shutdown.clone()));
    let result = supervisor::run_with_reload(config, checkpoints, shutdown, reloader).await;
    signals.abort();
    // `tail` and `demo` keep no checkpoint: a reader that went away (`| head`)
    // is how they are meant to stop, not a loss to report.
    let result = result.map(|mut outcome| {
        if checkpoints == Checkpoints::InMemory {
            outcome.unacknowledged.clear();
        }
        outcome
    });
    match result {
        Ok(outcome) if outcome.clean() => ExitCode::SUCCESS,
        // The log has said what (per sink, per stream); systemd's
        // Restart=on-failure brings the daemon back, and the checkpoint makes
        // the server send again what was not acknowledged.
        Ok(outcome) if !outcome.unacknowledged.is_empty() => ExitCode::from(EXIT_UNACKNOWLEDGED),
        Ok(_) => ExitCode::from(EXIT_GAVE_UP),
        Err(e) => fail(e),
    }
}

/// Exit status: the daemon stopped with events read but not acknowledged.
const EXIT_UNACKNOWLEDGED: u8 = 3;
/// Exit status: every stream stopped and at least one gave up (give_up_after).
const EXIT_GAVE_UP: u8 = 4;

/// First SIGTERM/SIGINT: drain and exit. Second: stop waiting. SIGHUP: reload.
async fn watch_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the daemon with SIGKILL");
        return;
    };
    let first = loop {
        tokio::select! {
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => shutdown.reload.notify_one(),
        }
    };
    tracing::info!("{first}: stopping streams and draining sinks (a second signal stops at once)");
    shutdown.drain.cancel();
    let second = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::warn!("{second} again: stopping now");
    shutdown.abort.cancel();
}

async fn demo(events: u64) -> ExitCode {
    let source = DemoSource {
        total: events,
        ..DemoSource::default()
    };
    let url = match source.start().await {
        Ok(url) => url,
        Err(e) => {
            return fail(format!(
                "error: cannot start the demo source on loopback: {e}"
            ))
        }
    };
    tracing::info!(
        "demo: relaying {events} events from {url}; the source hangs up every {} events and answers 204 at the end",
        source.per_connection
    );
    let mut stream = stream_defaults(
        "demo",
        reqwest::Url::parse(&url).expect("demo url is valid"),
    );
    stream.backoff_initial = Duration::from_millis(200);
    stream.backoff_max = Duration::from_secs(2);
    stream.idle_timeout = Duration::from_secs(10);
    let config = single_stream_config(stream, Encoding::Json);
    relay(&config, Checkpoints::InMemory, None).await
}

struct TailArgs {
    url: String,
    headers: Vec<String>,
    last_event_id: Option<String>,
    name: String,
    idle_timeout: Duration,
    ca_file: Option<PathBuf>,
    insecure: bool,
    bearer_file: Option<PathBuf>,
}

impl TailArgs {
    fn config(self, encoding: Encoding) -> Result<Config, String> {
        let url = reqwest::Url::parse(&self.url)
            .map_err(|e| format!("error: invalid URL {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "error: unsupported URL scheme `{}`; use http:// or https://",
                url.scheme()
            ));
        }
        let mut stream = stream_defaults(&self.name, url);
        for header in &self.headers {
            let (name, value) = header
                .split_once(':')
                // The argument may be a credential typed without its colon:
                // never echo it.
                .ok_or_else(|| {
                    "error: a -H/--header argument is not `Name: value` (it has no `:`)".to_owned()
                })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("error: invalid header name {:?}", name.trim()))?;
            let mut value = HeaderValue::from_str(value.trim())
                .map_err(|_| format!("error: invalid value for header `{name}`"))?;
            value.set_sensitive(true);
            stream.headers.append(name, value);
        }
        stream.initial_last_event_id = self.last_event_id;
        stream.idle_timeout = self.idle_timeout;
        stream.ca_file = self.ca_file;
        stream.tls_insecure = self.insecure;
        if let Some(path) = self.bearer_file {
            if stream.headers.contains_key(reqwest::header::AUTHORIZATION) {
                return Err(
                    "error: --bearer-file and an Authorization header (-H) both set the Authorization header"
                        .to_owned(),
                );
            }
            stream.auth = Some(sse_relay::auth::AuthConfig::BearerFile { path });
        }
        Ok(single_stream_config(stream, encoding))
    }
}

fn stream_defaults(name: &str, url: reqwest::Url) -> StreamConfig {
    StreamConfig {
        name: name.to_owned(),
        url,
        headers: Default::default(),
        backoff_initial: Duration::from_secs(1),
        backoff_max: Duration::from_secs(60),
        idle_timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(10),
        retry_max: Duration::from_secs(3600),
        initial_last_event_id: None,
        limits: sse::Limits::default(),
        max_redirects: 10,
        http2: false,
        ca_file: None,
        tls_insecure: false,
        allow_insecure_redirects: false,
        give_up_after: None,
        give_up_statuses: sse_relay::config::DEFAULT_GIVE_UP_STATUSES.to_vec(),
        auth: None,
        method: reqwest::Method::GET,
        body: None,
        last_event_id_query: None,
        id_gap_check: Default::default(),
    }
}

fn single_stream_config(stream: StreamConfig, encoding: Encoding) -> Config {
    let sink = SinkConfig {
        name: "stdout".to_owned(),
        kind: SinkKind::stdout(),
        inputs: None,
        event_types: None,
        queue_size: 1024,
        when_full: WhenFull::Block,
        encoding,
    };
    Config {
        data_dir: PathBuf::new(),
        checkpoint_interval: Duration::from_secs(1),
        shutdown_timeout: Duration::from_secs(10),
        streams: [(stream.name.clone(), std::sync::Arc::new(stream))].into(),
        sinks: [(sink.name.clone(), sink)].into(),
        metrics: None,
        checkpoints: Default::default(),
        cluster: None,
    }
}

fn init_logging(format: LogFormat, level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level.unwrap_or("info")))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr must not panic the task that logged (it could be
        // the signal handler, and then SIGTERM would be lost).
        .log_internal_errors(false)
        .with_target(false);
    // journald stamps every line itself; a second timestamp is noise.
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(false)
            .event_format(sse_relay::log::Text {
                timestamps: !under_journald,
            })
            .init(),
    }
}
