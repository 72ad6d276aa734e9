//! The processor binary refuses a malformed setting and names it, before it
//! touches Kafka or Postgres.
//!
//! Also why `cargo test --workspace --all-targets` builds the binary (cargo
//! builds a package's binaries only for its own integration tests): the
//! process-level fault test (`tests/tests/processes.rs`) runs it.

use std::process::Command;

#[test]
fn a_malformed_setting_stops_the_processor_binary_naming_it() {
    let output = Command::new(env!("CARGO_BIN_EXE_processor"))
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("LEDGERLINE_PROCESSOR_BATCH_SIZE_MAX", "0")
        .output()
        .expect("running the processor binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started with a batch size of 0: {stderr}");
    assert!(stderr.contains("LEDGERLINE_PROCESSOR_BATCH_SIZE_MAX"), "the error names the variable: {stderr}");
}
