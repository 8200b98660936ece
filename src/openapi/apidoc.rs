//! Reading Proxmox's API-viewer schema dump.
//!
//! A PVE host serves `/pve-docs/api-viewer/apidoc.js`, a script that assigns
//! the schema array to a constant; the dumps under `shared/pve-api/` are the
//! same array as plain JSON. Both are accepted here and flattened into a list
//! of operations, one per (path, method).

use serde_json::{Map, Value};

use super::ConvertError;

/// The HTTP methods PVE's schema uses, in the order operations are emitted.
pub const METHODS: [&str; 4] = ["GET", "POST", "PUT", "DELETE"];

/// One (path, method) entry of the schema tree.
#[derive(Debug, Clone)]
pub struct ApiOperation<'a> {
    pub path: &'a str,
    pub method: &'static str,
    pub info: &'a Map<String, Value>,
}

/// Parses either the `apidoc.js` script or plain JSON into the schema array.
pub fn parse_dump(text: &str) -> Result<Value, ConvertError> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|err| json_error(&err));
    }
    // apidoc.js: `const apiSchema = [ ... ];` followed by the viewer code. The
    // schema is the first JSON value after the assignment; the rest is ignored.
    let start = text.find("= [").ok_or_else(|| {
        ConvertError::new(
            "(input)",
            "neither a JSON array nor an apidoc.js script (no `apiSchema = [` assignment found)",
        )
    })?;
    let mut values = serde_json::Deserializer::from_str(&text[start + 2..]).into_iter::<Value>();
    match values.next() {
        Some(Ok(value)) => Ok(value),
        Some(Err(err)) => Err(json_error(&err)),
        None => Err(ConvertError::new("(input)", "apidoc.js script ends after `apiSchema =`")),
    }
}

fn json_error(err: &serde_json::Error) -> ConvertError {
    ConvertError::new(format!("(input) line {} column {}", err.line(), err.column()), format!("not valid JSON: {err}"))
}

/// Walks the schema tree and returns every operation, sorted by path and method.
pub fn collect_operations(root: &Value) -> Result<Vec<ApiOperation<'_>>, ConvertError> {
    let nodes = root
        .as_array()
        .ok_or_else(|| ConvertError::new("(root)", "the schema must be a JSON array of top-level nodes"))?;
    let mut operations = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        walk(node, &format!("[{index}]"), &mut operations)?;
    }
    operations.sort_by(|a, b| (a.path, method_rank(a.method)).cmp(&(b.path, method_rank(b.method))));
    for pair in operations.windows(2) {
        if pair[0].path == pair[1].path && pair[0].method == pair[1].method {
            return Err(ConvertError::new(
                format!("{} {}", pair[0].method, pair[0].path),
                "the same path and method appear twice in the schema",
            ));
        }
    }
    Ok(operations)
}

fn method_rank(method: &str) -> usize {
    METHODS.iter().position(|m| *m == method).unwrap_or(METHODS.len())
}

fn walk<'a>(node: &'a Value, location: &str, out: &mut Vec<ApiOperation<'a>>) -> Result<(), ConvertError> {
    let object = node.as_object().ok_or_else(|| ConvertError::new(location, "schema node is not a JSON object"))?;
    let path = object
        .get("path")
        .and_then(Value::as_str)
        .ok_or_else(|| ConvertError::new(location, "schema node has no string `path`"))?;
    if !path.starts_with('/') {
        return Err(ConvertError::new(path, "schema path must start with `/`"));
    }
    // Directory-only nodes carry no `info`; they are skipped.
    if let Some(info) = object.get("info") {
        let info = info.as_object().ok_or_else(|| ConvertError::new(path, "`info` is not an object"))?;
        for (method_key, method_info) in info {
            let method = METHODS
                .iter()
                .copied()
                .find(|m| m == method_key)
                .ok_or_else(|| ConvertError::new(path, format!("unknown HTTP method `{method_key}` in `info`")))?;
            let method_info = method_info
                .as_object()
                .ok_or_else(|| ConvertError::new(format!("{method} {path}"), "method info is not an object"))?;
            out.push(ApiOperation { path, method, info: method_info });
        }
    }
    match object.get("children") {
        None | Some(Value::Null) => {}
        Some(Value::Array(children)) => {
            for (index, child) in children.iter().enumerate() {
                walk(child, &format!("{path} children[{index}]"), out)?;
            }
        }
        Some(_) => return Err(ConvertError::new(path, "`children` is not an array")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_apidoc_js_assignment() {
        // The viewer code after the array contains brackets of its own.
        let script = "// header\nconst apiSchema = [\n{\"path\":\"/version\",\"text\":\"version\",\"leaf\":1}\n]\n;\nlet x = [1];";
        let value = parse_dump(script).unwrap();
        assert_eq!(value[0]["path"], "/version");
        let err = parse_dump("const apiSchema = [{\"path\": ]").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
    }

    #[test]
    fn rejects_text_without_schema() {
        let err = parse_dump("hello world").unwrap_err();
        assert!(err.to_string().contains("apiSchema"), "{err}");
    }

    #[test]
    fn reports_node_without_path() {
        let value: Value = serde_json::from_str(r#"[{"text":"x"}]"#).unwrap();
        let err = collect_operations(&value).unwrap_err();
        assert_eq!(err.to_string(), "could not convert schema at [0]: schema node has no string `path`");
    }

    #[test]
    fn reports_unknown_method() {
        let value: Value = serde_json::from_str(r#"[{"path":"/x","info":{"PATCH":{}}}]"#).unwrap();
        let err = collect_operations(&value).unwrap_err();
        assert!(err.to_string().contains("unknown HTTP method `PATCH`"), "{err}");
    }
}
