//! Converter from Proxmox's API schema dump to an OpenAPI 3.0.3 document that
//! progenitor turns into a typed client.
//!
//! The rules follow `shared/docs/pve-api-notes.md` §3; each one exists because
//! the naive conversion either fails in progenitor or silently misbehaves on
//! the wire:
//! - `operationId` is synthesised from method and path (PVE's handler names
//!   repeat);
//! - every 2xx body is the `{"data": …}` envelope, and no error responses are
//!   declared, so error text is read from the raw response;
//! - no `default`, `pattern`, `maxLength`/`minLength`/`minimum`/`maximum`: they
//!   are documentation in PVE and would become wire values or newtypes;
//! - booleans (everywhere) and response integers/numbers are `$ref`s to the
//!   lenient `PveBool`/`PveInt`/`PveNumber` (and `PveText` for property strings
//!   that older releases sent as numbers), because PVE sends `0`/`1` and
//!   numbers as strings;
//! - response enums are dropped (PVE adds values), request enums are kept;
//! - collapsed indexed keys such as `net[n]` are expanded again;
//! - all description prose is dropped (it is AGPL text from Proxmox).

mod apidoc;
mod indexed;
mod schema;

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

pub use apidoc::{ApiOperation, parse_dump};
pub use indexed::IndexedKeys;

/// The operation list compiled into the binary (`openapi/operations.txt`).
pub const DEFAULT_OPERATIONS: &str = include_str!("../../openapi/operations.txt");

/// A problem in the input schema, located by the schema path it was found at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConvertError {
    pub location: String,
    pub problem: String,
}

impl ConvertError {
    pub fn new(location: impl Into<String>, problem: impl Into<String>) -> Self {
        Self { location: location.into(), problem: problem.into() }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not convert schema at {}: {}", self.location, self.problem)
    }
}

impl std::error::Error for ConvertError {}

/// Which operations end up in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// The whole API.
    All,
    /// Only these `(METHOD, /path)` pairs; pairs missing from the dump are
    /// reported in [`Conversion::missing`] (older releases lack newer calls).
    Only(Vec<(String, String)>),
}

impl Selection {
    /// Parses an operations list: one `METHOD /path` per line, `#` comments.
    pub fn parse_list(text: &str) -> Result<Self, ConvertError> {
        let mut seen = BTreeSet::new();
        let mut operations = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let location = format!("operations list line {}", number + 1);
            let mut words = line.split_whitespace();
            let (Some(method), Some(path), None) = (words.next(), words.next(), words.next()) else {
                return Err(ConvertError::new(location, format!("expected `METHOD /path`, found `{line}`")));
            };
            let method = method.to_ascii_uppercase();
            if !apidoc::METHODS.contains(&method.as_str()) {
                return Err(ConvertError::new(location, format!("unknown HTTP method `{method}`")));
            }
            if !path.starts_with('/') {
                return Err(ConvertError::new(location, format!("path `{path}` must start with `/`")));
            }
            if !seen.insert((method.clone(), path.to_string())) {
                return Err(ConvertError::new(location, format!("`{method} {path}` is listed twice")));
            }
            operations.push((method, path.to_string()));
        }
        if operations.is_empty() {
            return Err(ConvertError::new("operations list", "lists no operation"));
        }
        Ok(Self::Only(operations))
    }
}

/// Converter settings.
#[derive(Debug, Clone)]
pub struct ConvertOptions {
    pub selection: Selection,
    pub indexed_keys: IndexedKeys,
    /// PVE release the dump belongs to, recorded as `info.version`.
    pub pve_version: String,
}

/// The converter's result.
#[derive(Debug, Clone)]
pub struct Conversion {
    pub document: Value,
    pub operation_count: usize,
    /// Listed operations that the dump does not have.
    pub missing: Vec<(String, String)>,
}

impl Conversion {
    /// The document as committed: pretty JSON with sorted keys and a final newline.
    pub fn to_pretty_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&canonical(&self.document)).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Guesses the PVE release from a dump's file name such as `pve-9.1-apidoc.json`.
pub fn version_from_file_name(name: &str) -> Option<String> {
    let base = name.rsplit('/').next().unwrap_or(name);
    let rest = base.strip_prefix("pve-")?;
    let version = rest.split('-').next()?;
    let valid = !version.is_empty()
        && version.split('.').all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    valid.then(|| version.to_string())
}

/// Converts the text of a schema dump (JSON or `apidoc.js`) to OpenAPI 3.0.3.
pub fn convert(dump_text: &str, options: &ConvertOptions) -> Result<Conversion, ConvertError> {
    let root = parse_dump(dump_text)?;
    let operations = apidoc::collect_operations(&root)?;

    let (selected, missing): (Vec<&ApiOperation<'_>>, Vec<(String, String)>) = match &options.selection {
        Selection::All => (operations.iter().collect(), Vec::new()),
        Selection::Only(wanted) => {
            let mut selected = Vec::new();
            let mut missing = Vec::new();
            for (method, path) in wanted {
                match operations.iter().find(|op| op.method == method && op.path == path) {
                    Some(op) => selected.push(op),
                    None => missing.push((method.clone(), path.clone())),
                }
            }
            selected.sort_by(|a, b| (a.path, a.method).cmp(&(b.path, b.method)));
            (selected, missing)
        }
    };

    let mut paths = Map::new();
    let mut operation_ids = BTreeSet::new();
    for op in &selected {
        let operation_id = operation_id(op.method, op.path);
        if !operation_ids.insert(operation_id.clone()) {
            return Err(ConvertError::new(
                format!("{} {}", op.method, op.path),
                format!("synthesised operationId `{operation_id}` collides with another operation"),
            ));
        }
        let converted = schema::convert_operation(op, &operation_id, options.indexed_keys)?;
        let item = paths.entry(op.path.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(op.method.to_ascii_lowercase(), converted);
        }
    }

    let digest = hex::encode(Sha256::digest(dump_text.as_bytes()));
    let scope = match options.selection {
        Selection::All => "whole API",
        Selection::Only(_) => "subset from openapi/operations.txt",
    };
    let document = json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Proxmox VE API",
            "version": options.pve_version,
            "x-pve-schema-sha256": digest,
            "x-pve-scope": scope,
            "x-pve-indexed-keys": options.indexed_keys.as_str(),
        },
        "servers": [{ "url": "https://localhost:8006/api2/json" }],
        "paths": paths,
        "components": { "schemas": schema::lenient_scalar_components() },
    });
    Ok(Conversion { document, operation_count: selected.len(), missing })
}

/// `<method>_<path segments>`, braces stripped, every other non-alphanumeric
/// character turned into `_`: unique per (method, path) for PVE's paths.
pub fn operation_id(method: &str, path: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        let mut last_underscore = true;
        for ch in segment.trim_matches(|c| c == '{' || c == '}').chars() {
            if ch.is_ascii_alphanumeric() {
                id.push(ch.to_ascii_lowercase());
                last_underscore = false;
            } else if !last_underscore {
                id.push('_');
                last_underscore = true;
            }
        }
        while id.ends_with('_') {
            id.pop();
        }
    }
    id
}

/// Recursively sorts object keys so the output does not depend on map order.
fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let mut sorted = Map::new();
            for key in keys {
                sorted.insert(key.clone(), canonical(&map[key]));
            }
            Value::Object(sorted)
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_ids_follow_method_and_path() {
        assert_eq!(operation_id("GET", "/cluster/resources"), "get_cluster_resources");
        assert_eq!(
            operation_id("GET", "/nodes/{node}/qemu/{vmid}/agent/network-get-interfaces"),
            "get_nodes_node_qemu_vmid_agent_network_get_interfaces"
        );
        assert_eq!(operation_id("POST", "/nodes/{node}/qemu/{vmid}/clone"), "post_nodes_node_qemu_vmid_clone");
    }

    #[test]
    fn operations_list_reports_line_of_problem() {
        let err = Selection::parse_list("GET /version\n# comment\nFETCH /x\n").unwrap_err();
        assert_eq!(err.to_string(), "could not convert schema at operations list line 3: unknown HTTP method `FETCH`");
        let err = Selection::parse_list("GET /version\nGET /version\n").unwrap_err();
        assert!(err.to_string().contains("listed twice"), "{err}");
        let err = Selection::parse_list("GET version\n").unwrap_err();
        assert!(err.to_string().contains("must start with `/`"), "{err}");
        let err = Selection::parse_list("# nothing\n").unwrap_err();
        assert!(err.to_string().contains("lists no operation"), "{err}");
    }

    #[test]
    fn default_operation_list_parses() {
        let Selection::Only(ops) = Selection::parse_list(DEFAULT_OPERATIONS).unwrap() else { unreachable!() };
        assert!(ops.contains(&("POST".into(), "/nodes/{node}/qemu/{vmid}/clone".into())));
    }

    #[test]
    fn version_is_read_from_dump_file_name() {
        assert_eq!(version_from_file_name("../shared/pve-api/pve-9.1-apidoc.json").as_deref(), Some("9.1"));
        assert_eq!(version_from_file_name("apidoc.js"), None);
    }
}
