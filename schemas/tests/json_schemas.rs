//! The committed JSON Schema files must match the types. Run with
//! `LEDGERLINE_BLESS_SCHEMAS=1` to rewrite them after changing a message.

use std::path::PathBuf;

#[test]
fn committed_json_schemas_match_the_types() {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("json");
    let bless = std::env::var_os("LEDGERLINE_BLESS_SCHEMAS").is_some();
    for (file_name, schema) in schemas::json_schemas() {
        let path = directory.join(file_name);
        let generated = serde_json::to_string_pretty(&schema).expect("serializes") + "\n";
        if bless {
            std::fs::write(&path, &generated).expect("writes the schema file");
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: rerun with LEDGERLINE_BLESS_SCHEMAS=1 and commit the result",
            path.display()
        );
    }
}

#[test]
fn the_command_schema_lists_every_command_type() {
    let schemas = schemas::json_schemas();
    let command = &schemas.iter().find(|(name, _)| *name == "command.schema.json").expect("exists").1;
    let text = command.to_string();
    for type_name in ["transfer.requested", "account.deposited"] {
        assert!(text.contains(type_name), "{type_name} missing from the command schema");
    }
}
