//! The README's `plugin_config` reference and `docs/plugin_config.schema.json`
//! are generated from the config type; this test fails when either differs
//! from what the code generates. `UPDATE_GENERATED=1 cargo test --test
//! config_reference` rewrites both.

use std::path::Path;

use fleeting_plugin_proxmox::group::config::{json_schema, reference_markdown};

const BEGIN: &str =
    "<!-- plugin_config reference: generated from src/group/config.rs by tests/config_reference.rs -->\n";
const END: &str = "<!-- end of plugin_config reference -->";

fn update() -> bool {
    std::env::var_os("UPDATE_GENERATED").is_some()
}

#[test]
fn readme_reference_matches_the_config_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&path).unwrap();
    let start = readme.find(BEGIN).expect("README.md lacks the plugin_config reference markers") + BEGIN.len();
    let end = start + readme[start..].find(END).expect("README.md lacks the end marker of the plugin_config reference");
    let generated = reference_markdown();
    if readme[start..end] != generated {
        if update() {
            std::fs::write(&path, format!("{}{generated}{}", &readme[..start], &readme[end..])).unwrap();
            return;
        }
        panic!(
            "README.md's plugin_config reference differs from the code; run `UPDATE_GENERATED=1 cargo test --test config_reference`.\nExpected:\n{generated}"
        );
    }
}

#[test]
fn json_schema_file_matches_the_config_type() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/plugin_config.schema.json");
    let generated = format!("{}\n", json_schema());
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        if update() {
            std::fs::write(&path, generated).unwrap();
            return;
        }
        panic!(
            "docs/plugin_config.schema.json differs from the code; run `UPDATE_GENERATED=1 cargo test --test config_reference`"
        );
    }
    // The schema is usable as-is by editors: every key is described.
    let schema: serde_json::Value = serde_json::from_str(&committed).unwrap();
    for (key, property) in schema["properties"].as_object().unwrap() {
        assert!(property.get("description").is_some(), "`{key}` has no description in the schema");
    }
}
