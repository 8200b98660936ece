//! The converter against Proxmox's real schema dumps (read from
//! `../shared/pve-api/` when that folder is present; it is never committed).

use std::path::{Path, PathBuf};

use fleeting_plugin_proxmox::openapi::{self, ConvertOptions, IndexedKeys, Selection};

const RELEASES: &[&str] = &["7.0", "7.4", "8.0", "8.1", "8.2", "8.3", "8.4", "9.0", "9.1"];

fn dump_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("PVE_API_DUMPS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/pve-api"));
    if dir.join("pve-9.1-apidoc.json").exists() {
        Some(dir)
    } else {
        // In CI the folder is always beside the clone; `.ci/run` checks that.
        eprintln!("skipping: no schema dumps in {}", dir.display());
        None
    }
}

/// Schema keywords the converter must drop, found in any schema object
/// (an object with a `type`); property *names* such as `default` are fine.
fn forbidden_schema_keys(value: &serde_json::Value, found: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            if map.get("type").is_some_and(serde_json::Value::is_string) {
                for key in
                    ["default", "pattern", "maxLength", "minLength", "minimum", "maximum", "description", "title"]
                {
                    if map.contains_key(key) {
                        found.push(key.to_string());
                    }
                }
            }
            map.values().for_each(|v| forbidden_schema_keys(v, found));
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| forbidden_schema_keys(v, found)),
        _ => {}
    }
}

fn subset() -> Selection {
    Selection::parse_list(openapi::DEFAULT_OPERATIONS).unwrap()
}

#[test]
fn every_release_converts_in_both_modes() {
    let Some(dir) = dump_dir() else { return };
    for release in RELEASES {
        let text = std::fs::read_to_string(dir.join(format!("pve-{release}-apidoc.json"))).unwrap();
        for selection in [Selection::All, subset()] {
            for indexed_keys in [IndexedKeys::Expand, IndexedKeys::Map] {
                let options =
                    ConvertOptions { selection: selection.clone(), indexed_keys, pve_version: release.to_string() };
                let conversion = openapi::convert(&text, &options).unwrap_or_else(|err| panic!("PVE {release}: {err}"));
                assert!(
                    conversion.operation_count > 30,
                    "PVE {release}: only {} operations",
                    conversion.operation_count
                );
                let json = conversion.to_pretty_json();
                assert!(!json.contains("The (unique) ID"), "PVE {release}: description prose leaked");
                let mut found = Vec::new();
                forbidden_schema_keys(&conversion.document, &mut found);
                assert!(found.is_empty(), "PVE {release}: schemas still carry {found:?}");
                assert!(!json.contains("[n]"), "PVE {release}: an indexed key was not restored");
            }
        }
    }
}

#[test]
fn whole_api_of_9_1_has_every_operation() {
    let Some(dir) = dump_dir() else { return };
    let text = std::fs::read_to_string(dir.join("pve-9.1-apidoc.json")).unwrap();
    let options =
        ConvertOptions { selection: Selection::All, indexed_keys: IndexedKeys::Expand, pve_version: "9.1".into() };
    let conversion = openapi::convert(&text, &options).unwrap();
    assert_eq!(conversion.operation_count, 649);
}

#[test]
fn subset_lists_only_existing_operations_for_9_1() {
    let Some(dir) = dump_dir() else { return };
    let text = std::fs::read_to_string(dir.join("pve-9.1-apidoc.json")).unwrap();
    let options = ConvertOptions { selection: subset(), indexed_keys: IndexedKeys::Expand, pve_version: "9.1".into() };
    let conversion = openapi::convert(&text, &options).unwrap();
    assert!(conversion.missing.is_empty(), "operations.txt names operations 9.1 lacks: {:?}", conversion.missing);
    // Older releases lack the 8.1 pool forms; they are reported, not fatal.
    let old = std::fs::read_to_string(dir.join("pve-7.0-apidoc.json")).unwrap();
    let conversion = openapi::convert(&old, &ConvertOptions { pve_version: "7.0".into(), ..options }).unwrap();
    assert!(conversion.missing.contains(&("PUT".to_string(), "/pools".to_string())));
}

#[test]
fn committed_document_regenerates_byte_identically() {
    let Some(dir) = dump_dir() else { return };
    let text = std::fs::read_to_string(dir.join("pve-9.1-apidoc.json")).unwrap();
    let options = ConvertOptions { selection: subset(), indexed_keys: IndexedKeys::Expand, pve_version: "9.1".into() };
    let regenerated = openapi::convert(&text, &options).unwrap().to_pretty_json();
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi/pve.json")).unwrap();
    assert!(
        regenerated == committed,
        "openapi/pve.json is stale; regenerate it with: \
         cargo run -- openapi ../shared/pve-api/pve-9.1-apidoc.json -o openapi/pve.json"
    );
}

#[test]
fn apidoc_js_form_converts_like_json() {
    let Some(dir) = dump_dir() else { return };
    let json = std::fs::read_to_string(dir.join("pve-8.0-apidoc.json")).unwrap();
    // The shape a PVE host serves: an assignment, then the viewer's code.
    let script = format!("const apiSchema = {json}\n;\nExt.onReady(function() {{ var x = [1, 2]; }});\n");
    let options = ConvertOptions { selection: subset(), indexed_keys: IndexedKeys::Expand, pve_version: "8.0".into() };
    let from_script = openapi::convert(&script, &options).unwrap();
    let from_json = openapi::convert(&json, &options).unwrap();
    assert_eq!(from_script.document["paths"], from_json.document["paths"]);
}

#[test]
fn malformed_dumps_give_located_errors() {
    let options =
        ConvertOptions { selection: Selection::All, indexed_keys: IndexedKeys::Expand, pve_version: "x".into() };
    for (input, expected) in [
        ("{}", "neither a JSON array nor an apidoc.js script"),
        ("const apiSchema = {}", "neither a JSON array nor an apidoc.js script"),
        ("[{}]", "schema node has no string `path`"),
        ("[1]", "schema node is not a JSON object"),
        ("[{\"path\":\"/a\",\"children\":{}}]", "`children` is not an array"),
        ("[{\"path\":\"/a\",\"info\":{\"GET\":{\"parameters\":[]}}}]", "GET /a: `parameters` is not an object"),
        (
            "[{\"path\":\"/a\",\"info\":{\"GET\":{\"returns\":{\"type\":\"array\",\"items\":7}}}}]",
            "GET /a returns items: schema is not an object",
        ),
        ("[{\"path\":\"/a\"", "not valid JSON"),
    ] {
        let err = openapi::convert(input, &options).unwrap_err().to_string();
        assert!(err.contains(expected), "{input}: {err}");
    }
}
