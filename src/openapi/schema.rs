//! Schema rules for one operation: parameters, request body and response.

use serde_json::{Map, Value, json};

use super::ConvertError;
use super::apidoc::ApiOperation;
use super::indexed::{self, IndexedKeys};

const PVE_BOOL: &str = "#/components/schemas/PveBool";
const PVE_INT: &str = "#/components/schemas/PveInt";
const PVE_NUMBER: &str = "#/components/schemas/PveNumber";
const PVE_TEXT: &str = "#/components/schemas/PveText";

/// Whether a schema describes what the client sends or what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

/// The placeholder schemas that `build.rs` replaces with hand-written lenient
/// types (`crate::pve::lenient`).
pub fn lenient_scalar_components() -> Value {
    json!({
        "PveBool": { "type": "boolean", "x-pve-wire": "0/1 on the wire; read from bool, number or string" },
        "PveInt": { "type": "integer", "format": "int64", "x-pve-wire": "read from number or numeric string" },
        "PveNumber": { "type": "number", "format": "double", "x-pve-wire": "read from number or numeric string" },
        "PveText": { "type": "string", "x-pve-wire": "read from string or number (a property string that was a bare number in older releases)" },
    })
}

pub fn convert_operation(
    op: &ApiOperation<'_>,
    operation_id: &str,
    indexed: IndexedKeys,
) -> Result<Value, ConvertError> {
    let location = format!("{} {}", op.method, op.path);
    let properties = parameter_properties(op, &location)?;
    let path_params = path_parameter_names(op.path, &location)?;

    let mut parameters = Vec::new();
    for name in &path_params {
        let schema = properties.get(name.as_str()).ok_or_else(|| {
            ConvertError::new(&location, format!("path parameter `{{{name}}}` has no entry in `parameters.properties`"))
        })?;
        let schema = convert_schema(schema, Direction::Request, &format!("{location} parameter `{name}`"), indexed)?;
        parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": schema }));
    }

    let mut body_properties = Map::new();
    let mut body_required = Vec::new();
    let mut body_extra = false;
    for (name, schema) in &properties {
        if path_params.iter().any(|p| p == name) {
            continue;
        }
        let param_location = format!("{location} parameter `{name}`");
        let schema_object = schema
            .as_object()
            .ok_or_else(|| ConvertError::new(&param_location, "parameter schema is not an object"))?;
        let required = !is_truthy(schema_object.get("optional"));
        let converted = convert_schema(schema, Direction::Request, &param_location, indexed)?;
        for (key, schema) in expand_key(name, converted, indexed) {
            match key {
                ExpandedKey::Named(key) => {
                    if matches!(op.method, "GET" | "DELETE") {
                        parameters.push(json!({ "name": key, "in": "query", "required": required, "schema": schema }));
                    } else {
                        if required {
                            body_required.push(Value::String(key.clone()));
                        }
                        body_properties.insert(key, schema);
                    }
                }
                ExpandedKey::Open => {
                    if matches!(op.method, "GET" | "DELETE") {
                        return Err(ConvertError::new(
                            &param_location,
                            "indexed query parameters cannot be kept as a map; use --indexed-keys expand",
                        ));
                    }
                    body_extra = true;
                }
            }
        }
    }

    let mut operation = Map::new();
    operation.insert("operationId".into(), Value::String(operation_id.to_string()));
    if !parameters.is_empty() {
        operation.insert("parameters".into(), Value::Array(parameters));
    }
    if !body_properties.is_empty() || body_extra {
        let mut body_schema = Map::new();
        body_schema.insert("type".into(), "object".into());
        body_schema.insert("properties".into(), Value::Object(body_properties));
        if !body_required.is_empty() {
            body_schema.insert("required".into(), Value::Array(body_required));
        }
        if body_extra {
            body_schema.insert("additionalProperties".into(), json!({ "type": "string" }));
        }
        operation.insert(
            "requestBody".into(),
            json!({
                "required": true,
                "content": { "application/x-www-form-urlencoded": { "schema": Value::Object(body_schema) } }
            }),
        );
    }
    operation.insert("responses".into(), response(op, &location, indexed)?);
    add_pve_extensions(op, &mut operation);
    Ok(Value::Object(operation))
}

fn parameter_properties<'a>(op: &ApiOperation<'a>, location: &str) -> Result<Map<String, Value>, ConvertError> {
    match op.info.get("parameters") {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(parameters)) => match parameters.get("properties") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(properties)) => Ok(properties.clone()),
            Some(_) => Err(ConvertError::new(location, "`parameters.properties` is not an object")),
        },
        Some(_) => Err(ConvertError::new(location, "`parameters` is not an object")),
    }
}

fn path_parameter_names(path: &str, location: &str) -> Result<Vec<String>, ConvertError> {
    let mut names = Vec::new();
    for segment in path.split('/') {
        if let Some(inner) = segment.strip_prefix('{') {
            let name = inner
                .strip_suffix('}')
                .filter(|n| !n.is_empty() && !n.contains(['{', '}']))
                .ok_or_else(|| ConvertError::new(location, format!("malformed path parameter segment `{segment}`")))?;
            names.push(name.to_string());
        } else if segment.contains(['{', '}']) {
            return Err(ConvertError::new(location, format!("path parameter must fill a whole segment: `{segment}`")));
        }
    }
    Ok(names)
}

fn response(op: &ApiOperation<'_>, location: &str, indexed: IndexedKeys) -> Result<Value, ConvertError> {
    let returns = op.info.get("returns").cloned().unwrap_or(Value::Null);
    let returns_null = matches!(&returns, Value::Object(r) if r.get("type").and_then(Value::as_str) == Some("null"));
    if returns_null {
        return Ok(json!({ "200": { "description": "success, `data` is null" } }));
    }
    let returns = with_undocumented_fields(op, returns);
    let data = if returns.is_null() {
        json!({})
    } else {
        convert_schema(&returns, Direction::Response, &format!("{location} returns"), indexed)?
    };
    let mut envelope = json!({ "data": data });
    // List calls such as the task log add the full count next to `data`.
    if returns.get("type").and_then(Value::as_str) == Some("array") {
        envelope["total"] = json!({ "$ref": PVE_INT });
    }
    Ok(json!({
        "200": {
            "description": "success",
            "content": {
                "application/json": {
                    "schema": { "type": "object", "properties": envelope }
                }
            }
        }
    }))
}

/// Response fields PVE sends but its schema does not declare. Each one is
/// needed by a client to follow a documented flow.
const UNDOCUMENTED_RETURN_FIELDS: &[(&str, &str, &str, &str)] = &[
    // The TFA flow: `NeedTFA: 1` marks a ticket that is only a challenge.
    ("POST", "/access/ticket", "NeedTFA", "boolean"),
    // The caller's privileges, returned with every new ticket.
    ("POST", "/access/ticket", "cap", "object"),
];

fn with_undocumented_fields(op: &ApiOperation<'_>, mut returns: Value) -> Value {
    for (method, path, field, kind) in UNDOCUMENTED_RETURN_FIELDS {
        if op.method != *method || op.path != *path {
            continue;
        }
        if let Some(Value::Object(properties)) = returns.get_mut("properties") {
            properties.entry(field.to_string()).or_insert_with(|| json!({ "type": kind, "optional": 1 }));
        }
    }
    returns
}

/// Keeps the machine-readable facts the simulator and `check` need: who may
/// call it. Permission descriptions (prose) are dropped.
fn add_pve_extensions(op: &ApiOperation<'_>, operation: &mut Map<String, Value>) {
    if let Some(Value::Object(permissions)) = op.info.get("permissions") {
        let mut kept = Map::new();
        for key in ["check", "user"] {
            if let Some(value) = permissions.get(key) {
                kept.insert(key.into(), value.clone());
            }
        }
        if !kept.is_empty() {
            operation.insert("x-pve-permissions".into(), Value::Object(kept));
        }
    }
    operation.insert("x-pve-allowtoken".into(), Value::Bool(is_truthy(op.info.get("allowtoken"))));
    operation.insert("x-pve-protected".into(), Value::Bool(is_truthy(op.info.get("protected"))));
    if let Some(Value::String(proxyto)) = op.info.get("proxyto") {
        operation.insert("x-pve-proxyto".into(), Value::String(proxyto.clone()));
    }
    if let Some(Value::String(name)) = op.info.get("name") {
        operation.insert("x-pve-handler".into(), Value::String(name.clone()));
    }
}

enum ExpandedKey {
    Named(String),
    /// The key becomes part of an open `additionalProperties` map.
    Open,
}

fn expand_key(name: &str, schema: Value, indexed: IndexedKeys) -> Vec<(ExpandedKey, Value)> {
    match indexed::indexed_base(name) {
        None => vec![(ExpandedKey::Named(name.to_string()), schema)],
        Some(base) => match (indexed, indexed::bound(base)) {
            (IndexedKeys::Expand, Some(bound)) => {
                (0..bound).map(|index| (ExpandedKey::Named(format!("{base}{index}")), schema.clone())).collect()
            }
            _ => vec![(ExpandedKey::Open, schema)],
        },
    }
}

/// PVE writes flags as `1`, `"1"` or `true`.
fn is_truthy(value: Option<&Value>) -> bool {
    match value {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|n| n != 0.0),
        Some(Value::String(s)) => !matches!(s.as_str(), "" | "0"),
        _ => false,
    }
}

/// Whether a string's property-string format has a numeric default key.
fn has_numeric_default_key(object: &Map<String, Value>) -> bool {
    let Some(Value::Object(keys)) = object.get("format") else { return false };
    keys.values().any(|key| {
        is_truthy(key.get("default_key"))
            && matches!(key.get("type").and_then(Value::as_str), Some("integer" | "number"))
    })
}

fn convert_schema(
    schema: &Value,
    direction: Direction,
    location: &str,
    indexed: IndexedKeys,
) -> Result<Value, ConvertError> {
    let object = match schema {
        Value::Object(object) => object,
        _ => return Err(ConvertError::new(location, "schema is not an object")),
    };
    // `oneOf` (a handful of 9.x parameters) is kept free-form.
    if object.contains_key("oneOf") {
        return Ok(json!({}));
    }
    let kind = match object.get("type") {
        None | Some(Value::Null) => "any",
        Some(Value::String(kind)) => kind.as_str(),
        Some(other) => return Err(ConvertError::new(location, format!("`type` must be a string, found {other}"))),
    };
    let mut out = Map::new();
    match (kind, direction) {
        ("boolean", _) => return Ok(json!({ "$ref": PVE_BOOL })),
        ("integer", Direction::Response) => return Ok(json!({ "$ref": PVE_INT })),
        ("number", Direction::Response) => return Ok(json!({ "$ref": PVE_NUMBER })),
        ("integer", Direction::Request) => {
            out.insert("type".into(), "integer".into());
            out.insert("format".into(), "int64".into());
            keep_bounds(object, &mut out);
        }
        ("number", Direction::Request) => {
            out.insert("type".into(), "number".into());
            out.insert("format".into(), "double".into());
            keep_bounds(object, &mut out);
        }
        // A property string whose default key is a number (config `memory`
        // since 8.1) was a bare number before: older releases send a number.
        ("string", Direction::Response) if has_numeric_default_key(object) => return Ok(json!({ "$ref": PVE_TEXT })),
        ("string", _) => {
            out.insert("type".into(), "string".into());
            match object.get("format") {
                Some(Value::String(format)) => {
                    out.insert("x-pve-format".into(), Value::String(format.clone()));
                }
                Some(Value::Object(keys)) => {
                    let mut keys: Vec<String> = keys.keys().cloned().collect();
                    keys.sort();
                    let keys: Vec<Value> = keys.into_iter().map(Value::String).collect();
                    out.insert("x-pve-property-string".into(), Value::Array(keys));
                }
                _ => {}
            }
            if direction == Direction::Request {
                match object.get("enum") {
                    None | Some(Value::Null) => {}
                    Some(Value::Array(values)) if values.iter().all(Value::is_string) && !values.is_empty() => {
                        out.insert("enum".into(), Value::Array(values.clone()));
                    }
                    Some(Value::Array(_)) => {}
                    Some(_) => return Err(ConvertError::new(location, "`enum` is not an array")),
                }
            }
        }
        ("array", _) => {
            let items = match object.get("items") {
                None | Some(Value::Null) => json!({}),
                Some(items) => convert_schema(items, direction, &format!("{location} items"), indexed)?,
            };
            out.insert("type".into(), "array".into());
            out.insert("items".into(), items);
        }
        ("object", _) => {
            out.insert("type".into(), "object".into());
            match object.get("properties") {
                None | Some(Value::Null) => {}
                Some(Value::Object(properties)) => {
                    let mut converted = Map::new();
                    let mut required = Vec::new();
                    let mut open = false;
                    for (name, property) in properties {
                        let property_location = format!("{location} property `{name}`");
                        let schema = convert_schema(property, direction, &property_location, indexed)?;
                        let optional = is_truthy(property.get("optional"));
                        // Answers keep indexed keys in the open map: a VM
                        // config with every `unusedN`, `netN`, … as a field
                        // derives a 55,000-line deserializer that takes LLVM
                        // over 15 minutes at opt-level 3, and readers look
                        // such keys up by name anyway.
                        let indexed = if direction == Direction::Response { IndexedKeys::Map } else { indexed };
                        for (key, schema) in expand_key(name, schema, indexed) {
                            match key {
                                ExpandedKey::Named(key) => {
                                    // Response shapes vary across releases: every
                                    // response field stays optional.
                                    if direction == Direction::Request && !optional {
                                        required.push(Value::String(key.clone()));
                                    }
                                    converted.insert(key, schema);
                                }
                                ExpandedKey::Open => open = true,
                            }
                        }
                    }
                    out.insert("properties".into(), Value::Object(converted));
                    if !required.is_empty() {
                        out.insert("required".into(), Value::Array(required));
                    }
                    if open || is_truthy(object.get("additionalProperties")) {
                        out.insert("additionalProperties".into(), json!({}));
                    }
                }
                Some(_) => return Err(ConvertError::new(location, "`properties` is not an object")),
            }
        }
        ("any", _) => {}
        ("null", _) => return Ok(json!({})),
        (other, _) => return Err(ConvertError::new(location, format!("unknown schema type `{other}`"))),
    }
    Ok(Value::Object(out))
}

/// Bounds are kept as extensions for the simulator's request validation; as
/// real `minimum`/`maximum` they would change the generated Rust types.
fn keep_bounds(object: &Map<String, Value>, out: &mut Map<String, Value>) {
    for (key, extension) in [("minimum", "x-pve-minimum"), ("maximum", "x-pve-maximum")] {
        let number = match object.get(key) {
            Some(Value::Number(n)) => Some(n.clone()),
            Some(Value::String(s)) => s.parse::<i64>().ok().map(Into::into),
            _ => None,
        };
        if let Some(number) = number {
            out.insert(extension.into(), Value::Number(number));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op_json(path: &str, method: &'static str, info: Value) -> Value {
        json!({ "path": path, "method": method, "info": info })
    }

    fn convert_one(path: &str, method: &'static str, info: Value, indexed: IndexedKeys) -> Result<Value, ConvertError> {
        let holder = op_json(path, method, info);
        let op = ApiOperation { path, method, info: holder["info"].as_object().unwrap() };
        convert_operation(&op, "test_op", indexed)
    }

    #[test]
    fn clone_parameters_split_into_path_and_form_body() {
        let info = json!({
            "parameters": { "properties": {
                "node": { "type": "string", "format": "pve-node", "description": "The cluster node name." },
                "vmid": { "type": "integer", "minimum": 100, "maximum": 999999999 },
                "newid": { "type": "integer", "minimum": "100" },
                "full": { "type": "boolean", "optional": 1, "default": 0 },
                "format": { "type": "string", "optional": 1, "enum": ["raw", "qcow2"] },
                "snapname": { "type": "string", "optional": 1, "maxLength": 40, "pattern": "(?^:foo)" },
                "bwlimit": { "type": "integer", "optional": 1, "default": "clone limit from datacenter" }
            }},
            "returns": { "type": "string" },
            "permissions": { "check": ["perm", "/vms/{vmid}", ["VM.Clone"]], "description": "prose" },
            "allowtoken": 1, "protected": 1, "proxyto": "node", "name": "clone_vm"
        });
        let out = convert_one("/nodes/{node}/qemu/{vmid}/clone", "POST", info, IndexedKeys::Expand).unwrap();
        assert_eq!(out["operationId"], "test_op");
        assert_eq!(out["parameters"][0]["name"], "node");
        assert_eq!(out["parameters"][1]["schema"]["type"], "integer");
        let body = &out["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        assert_eq!(body["required"], json!(["newid"]));
        assert_eq!(body["properties"]["full"], json!({ "$ref": PVE_BOOL }));
        assert_eq!(body["properties"]["format"]["enum"], json!(["raw", "qcow2"]));
        assert_eq!(body["properties"]["newid"]["x-pve-minimum"], 100);
        let text = out.to_string();
        for dropped in ["default", "pattern", "maxLength", "The cluster node name.", "prose", "\"minimum"] {
            assert!(!text.contains(dropped), "`{dropped}` leaked into {text}");
        }
        assert_eq!(
            out["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"]["type"],
            "string"
        );
        assert_eq!(out["x-pve-permissions"]["check"][2], json!(["VM.Clone"]));
        assert_eq!(out["x-pve-allowtoken"], true);
    }

    #[test]
    fn responses_are_lenient_and_open() {
        let info = json!({
            "returns": { "type": "array", "items": { "type": "object", "properties": {
                "vmid": { "type": "integer" },
                "template": { "type": "boolean", "optional": 1 },
                "cpu": { "type": "number", "optional": 1 },
                "type": { "type": "string", "enum": ["qemu", "lxc"] },
                "ha": { "type": "object" }
            }}}
        });
        let out = convert_one("/cluster/resources", "GET", info, IndexedKeys::Expand).unwrap();
        let item = &out["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"]["items"];
        assert_eq!(item["properties"]["vmid"], json!({ "$ref": PVE_INT }));
        assert_eq!(item["properties"]["template"], json!({ "$ref": PVE_BOOL }));
        assert_eq!(item["properties"]["cpu"], json!({ "$ref": PVE_NUMBER }));
        assert_eq!(item["properties"]["type"], json!({ "type": "string" }));
        assert!(item.get("required").is_none());
        assert!(out.get("requestBody").is_none());
    }

    #[test]
    fn null_return_has_no_content() {
        let out = convert_one("/x", "PUT", json!({ "returns": { "type": "null" } }), IndexedKeys::Expand).unwrap();
        assert!(out["responses"]["200"].get("content").is_none());
    }

    #[test]
    fn indexed_keys_expand_or_map() {
        let info = json!({ "parameters": { "properties": {
            "net[n]": { "type": "string", "optional": 1, "format": { "model": {}, "bridge": {} } },
            "foo[n]": { "type": "string", "optional": 1 }
        }}});
        let out = convert_one("/c", "PUT", info.clone(), IndexedKeys::Expand).unwrap();
        let body = &out["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        assert_eq!(body["properties"]["net0"]["x-pve-property-string"], json!(["bridge", "model"]));
        assert!(body["properties"].get("net31").is_some());
        assert!(body["properties"].get("net32").is_none());
        assert_eq!(body["additionalProperties"], json!({ "type": "string" }), "unknown indexed keys stay open");
        let out = convert_one("/c", "PUT", info, IndexedKeys::Map).unwrap();
        let body = &out["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"];
        assert!(body["properties"].get("net0").is_none());
        assert_eq!(body["additionalProperties"], json!({ "type": "string" }));
    }

    #[test]
    fn answers_keep_indexed_keys_in_the_open_map_in_either_mode() {
        let info = json!({ "returns": { "type": "object", "properties": {
            "net[n]": { "type": "string", "optional": 1 },
            "memory": { "type": "string", "optional": 1 }
        }}});
        for mode in [IndexedKeys::Expand, IndexedKeys::Map] {
            let out = convert_one("/c", "GET", info.clone(), mode).unwrap();
            let data = &out["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"];
            assert!(data["properties"].get("net0").is_none(), "{data}");
            assert!(data["properties"].get("memory").is_some(), "{data}");
            assert_eq!(data["additionalProperties"], json!({}), "{data}");
        }
    }

    #[test]
    fn malformed_schemas_name_their_location() {
        let err = convert_one("/x/{id}", "GET", json!({ "parameters": { "properties": {} } }), IndexedKeys::Expand)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "could not convert schema at GET /x/{id}: path parameter `{id}` has no entry in `parameters.properties`"
        );
        let info = json!({ "parameters": { "properties": { "a": { "type": 5 } } } });
        let err = convert_one("/x", "GET", info, IndexedKeys::Expand).unwrap_err();
        assert!(err.to_string().contains("GET /x parameter `a`: `type` must be a string"), "{err}");
        let info = json!({ "returns": { "type": "object", "properties": { "b": { "type": "tuple" } } } });
        let err = convert_one("/x", "GET", info, IndexedKeys::Expand).unwrap_err();
        assert!(err.to_string().contains("returns property `b`: unknown schema type `tuple`"), "{err}");
        let err = convert_one("/x/{a", "GET", json!({}), IndexedKeys::Expand).unwrap_err();
        assert!(err.to_string().contains("malformed path parameter"), "{err}");
    }
}
