//! `ledgerctl` commands that need a broker say so when `KAFKA_BROKERS` is
//! unset, instead of guessing one.
//!
//! Also why `cargo test --workspace --all-targets` builds the binary (cargo
//! builds a package's binaries only for its own integration tests): the
//! process-level fault test (`tests/tests/processes.rs`) runs its
//! `kafka-mock` and `verify`.

use std::process::Command;

#[test]
fn a_kafka_command_without_brokers_names_the_missing_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_ledgerctl"))
        .args(["topics", "create"])
        .env_remove("KAFKA_BROKERS")
        .output()
        .expect("running ledgerctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "created topics without a broker: {stderr}");
    assert!(stderr.contains("KAFKA_BROKERS is required"), "the error names the variable: {stderr}");
}
