//! The deployment files say what the README says: every variable
//! docker-compose.yml gives a Ledgerline service, and every one in
//! .env.example, is in the README's configuration table.

use std::collections::BTreeSet;
use std::path::PathBuf;

fn file(name: &str) -> String {
    std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(name)).expect(name)
}

/// Ledgerline's own variables (not the Kafka or Postgres images').
fn ours(name: &str) -> bool {
    name.starts_with("LEDGERLINE_") || name == "DATABASE_URL" || name == "KAFKA_BROKERS"
}

#[test]
fn every_variable_the_compose_file_and_env_example_set_is_documented() {
    let readme = file("README.md");
    let mut names = BTreeSet::new();
    for line in file("docker-compose.yml").lines() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if let Some((key, _)) = line.split_once(':')
            && ours(key)
        {
            names.insert(key.to_owned());
        }
    }
    for line in file(".env.example").lines() {
        if let Some((key, _)) = line.split_once('=').filter(|_| !line.starts_with('#'))
            && ours(key.trim())
        {
            names.insert(key.trim().to_owned());
        }
    }
    assert!(names.contains("DATABASE_URL") && names.contains("LEDGERLINE_JWT_SECRET"), "{names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|name| !readme.contains(&format!("`{name}`")) && !readme.contains(&format!("`{name}=")))
        .collect();
    assert!(missing.is_empty(), "set by the deployment files but not in the README's table: {missing:?}");
}
