//! Tracing initialisation, shared by every binary.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Installs the global subscriber, writing to stdout: `RUST_LOG` filters
/// (default `info`), `LEDGERLINE_LOG_FORMAT=json` switches to one JSON object
/// per line for log shippers. Calling it twice is harmless (tests do).
pub fn init() {
    install(BoxMakeWriter::new(std::io::stdout));
}

/// As [`init`], but writing to stderr: for commands whose stdout carries
/// data a script parses (`ledgerctl bench --json`), which a log line would
/// corrupt.
pub fn init_on_stderr() {
    install(BoxMakeWriter::new(std::io::stderr));
}

fn install(writer: BoxMakeWriter) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,sqlx=warn"));
    let json = std::env::var("LEDGERLINE_LOG_FORMAT").is_ok_and(|format| format == "json");
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true).with_writer(writer);
    // A second call fails because a subscriber is already set; that is fine.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
