//! The simulator's API surface, read from the committed OpenAPI document
//! (`openapi/pve.json`), the same one the client is generated from: routes,
//! parameter schemas, permission expressions, `allowtoken`. Requests are
//! validated here the way PVE's JSONSchema does it, so an ill-typed or
//! unknown parameter gets PVE's 400 with the per-parameter `errors` map.
//!
//! The document is PVE 9.1's; the differences of older releases that clients
//! act on (parameters and operations that did not exist yet, the guest-agent
//! privilege) are applied per configured version in [`Api::for_version`].

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use serde_json::Value;

use super::release::PveRelease;

const DOCUMENT: &str = include_str!("../../openapi/pve.json");

/// Operations and parameters younger than some releases:
/// (operationId, parameter or `None` for the whole operation, since).
const INTRODUCED: &[(&str, Option<&str>, (u32, u32))] = &[
    ("post_access_ticket", Some("new-format"), (7, 1)),
    ("post_access_ticket", Some("tfa-challenge"), (7, 1)),
    ("get_pools", Some("poolid"), (8, 1)),
    ("get_pools", Some("type"), (8, 1)),
    ("put_pools", None, (8, 1)),
    ("delete_pools", None, (8, 1)),
    ("get_pools_poolid", Some("type"), (7, 4)),
    ("put_pools_poolid", Some("allow-move"), (8, 1)),
    ("post_nodes_node_qemu_vmid_status_stop", Some("overrule-shutdown"), (8, 2)),
    ("post_nodes_node_qemu_vmid_status_start", Some("with-conntrack-state"), (9, 0)),
    ("post_nodes_node_qemu_vmid_status_start", Some("nets-host-mtu"), (8, 4)),
    ("get_nodes_node_tasks_upid_log", Some("download"), (7, 4)),
    ("put_nodes_node_qemu_vmid_config", Some("ciupgrade"), (8, 0)),
    ("post_nodes_node_qemu_vmid_config", Some("ciupgrade"), (8, 0)),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    Path,
    Query,
    Body,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Boolean,
    Integer { minimum: Option<i64>, maximum: Option<i64> },
    Number { minimum: Option<f64>, maximum: Option<f64> },
    String { enumeration: Option<Vec<String>>, format: Option<String>, property_keys: Option<Vec<String>> },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub location: Location,
    pub required: bool,
    pub kind: Kind,
}

/// PVE's permission expression (`permissions` in the schema).
#[derive(Debug, Clone, PartialEq)]
pub enum Permissions {
    /// Anyone, even unauthenticated (the login call).
    World,
    /// Any authenticated user; the handler filters.
    All,
    Check(PermCheck),
    /// No expression: root only.
    RootOnly,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PermCheck {
    Perm {
        path: String,
        privileges: Vec<String>,
        any: bool,
        require_param: Option<String>,
    },
    And(Vec<PermCheck>),
    Or(Vec<PermCheck>),
    /// A check form the simulator does not evaluate (denied unless root).
    Unsupported(String),
}

#[derive(Debug, Clone)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub method: String,
    pub path: String,
    segments: Vec<Segment>,
    pub params: BTreeMap<String, ParamSpec>,
    pub permissions: Permissions,
    pub allow_token: bool,
    /// `proxyto: node`: PVE forwards the call to the node in `{node}`.
    pub proxied_to_node: bool,
}

/// How a value of the VM configuration is typed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigValueKind {
    Boolean,
    Integer,
    /// `number` options stay strings (qemu-server's `check_type`).
    Number,
    String,
}

#[derive(Debug, Clone)]
pub struct Api {
    operations: Vec<Operation>,
    by_shape: HashMap<(usize, String), Vec<usize>>,
    config_kinds: HashMap<String, ConfigValueKind>,
    json_booleans: bool,
}

/// A request parameter before validation: from a query string or form body
/// (always text), or from a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Text(String),
    Json(Value),
}

/// Validated parameters, normalised to PVE's text forms (`1`/`0`, digits).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(BTreeMap<String, String>);

impl Params {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.get(name).map(str::to_string)
    }

    pub fn int(&self, name: &str) -> Option<i64> {
        self.get(name).and_then(|v| v.trim_start_matches('+').parse().ok())
    }

    pub fn flag(&self, name: &str) -> Option<bool> {
        self.get(name).map(|v| v == "1")
    }

    pub fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The parsed document, shared by every simulator in the process.
fn document() -> &'static Result<Vec<Operation>, String> {
    static PARSED: OnceLock<Result<Vec<Operation>, String>> = OnceLock::new();
    PARSED.get_or_init(|| parse_document(DOCUMENT))
}

fn config_kinds() -> &'static HashMap<String, ConfigValueKind> {
    static KINDS: OnceLock<HashMap<String, ConfigValueKind>> = OnceLock::new();
    KINDS.get_or_init(|| {
        let mut kinds = HashMap::new();
        let Ok(value) = serde_json::from_str::<Value>(DOCUMENT) else { return kinds };
        let properties = value
            .pointer("/paths/~1nodes~1{node}~1qemu~1{vmid}~1config/get/responses/200/content/application~1json/schema/properties/data/properties")
            .and_then(Value::as_object);
        for (name, schema) in properties.into_iter().flatten() {
            let kind = match (schema.get("$ref").and_then(Value::as_str), schema.get("type").and_then(Value::as_str)) {
                (Some(r), _) if r.ends_with("/PveBool") => ConfigValueKind::Boolean,
                (Some(r), _) if r.ends_with("/PveInt") => ConfigValueKind::Integer,
                (Some(r), _) if r.ends_with("/PveNumber") => ConfigValueKind::Number,
                _ => ConfigValueKind::String,
            };
            kinds.insert(name.clone(), kind);
        }
        kinds
    })
}

impl Api {
    /// The operations as `version` has them.
    pub fn for_version(version: &PveRelease) -> Result<Self, String> {
        let base = document().as_ref().map_err(|err| format!("could not read openapi/pve.json: {err}"))?;
        let release = (version.major, version.minor);
        let mut operations = Vec::new();
        for operation in base {
            let mut operation = operation.clone();
            let mut exists = true;
            for (id, param, since) in INTRODUCED {
                if *id == operation.id && release < *since {
                    match param {
                        Some(param) => {
                            operation.params.remove(*param);
                        }
                        None => exists = false,
                    }
                }
            }
            if !exists {
                continue;
            }
            if version.major < 9 {
                operation.permissions = downgrade_agent_privileges(operation.permissions);
            }
            operations.push(operation);
        }
        let mut by_shape: HashMap<(usize, String), Vec<usize>> = HashMap::new();
        for (index, operation) in operations.iter().enumerate() {
            by_shape.entry((operation.segments.len(), operation.method.clone())).or_default().push(index);
        }
        Ok(Self { operations, by_shape, config_kinds: config_kinds().clone(), json_booleans: release >= (8, 0) })
    }

    #[cfg(test)]
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    #[cfg(test)]
    pub fn operation(&self, id: &str) -> Option<&Operation> {
        self.operations.iter().find(|op| op.id == id)
    }

    /// The wire type of a VM configuration key (`net0`, `cores`, …).
    pub fn config_value_kind(&self, key: &str) -> ConfigValueKind {
        self.config_kinds.get(key).copied().unwrap_or(ConfigValueKind::String)
    }

    /// Finds the operation for `method` and `path` (below `/api2/json`),
    /// with the decoded path parameters.
    pub fn route(&self, method: &str, path: &str) -> Option<(&Operation, Vec<(String, String)>)> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let candidates = self.by_shape.get(&(segments.len(), method.to_string()))?;
        'candidates: for &index in candidates {
            let operation = &self.operations[index];
            let mut values = Vec::new();
            for (segment, pattern) in segments.iter().zip(&operation.segments) {
                match pattern {
                    Segment::Literal(literal) if literal == segment => {}
                    Segment::Literal(_) => continue 'candidates,
                    Segment::Param(name) => {
                        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy().into_owned();
                        values.push((name.clone(), decoded));
                    }
                }
            }
            return Some((operation, values));
        }
        None
    }

    /// Checks and normalises the parameters of one call. Errors map each
    /// parameter to PVE's message.
    pub fn validate(
        &self,
        operation: &Operation,
        raw: BTreeMap<String, RawValue>,
    ) -> Result<Params, BTreeMap<String, String>> {
        let mut errors = BTreeMap::new();
        let mut params = BTreeMap::new();
        for (name, value) in raw {
            let Some(spec) = operation.params.get(&name) else {
                errors.insert(
                    name,
                    "property is not defined in schema and the schema does not allow additional properties".into(),
                );
                continue;
            };
            match self.check_value(&name, &spec.kind, value) {
                Ok(text) => {
                    params.insert(name, text);
                }
                Err(message) => {
                    errors.insert(name, message);
                }
            }
        }
        for (name, spec) in &operation.params {
            if spec.required && !params.contains_key(name) && !errors.contains_key(name) {
                errors.insert(name.clone(), "property is missing and it is not optional".into());
            }
        }
        if errors.is_empty() { Ok(Params(params)) } else { Err(errors) }
    }

    fn check_value(&self, name: &str, kind: &Kind, value: RawValue) -> Result<String, String> {
        match kind {
            Kind::Boolean => {
                let text = match value {
                    RawValue::Json(Value::Bool(b)) if self.json_booleans => return Ok(if b { "1" } else { "0" }.into()),
                    RawValue::Json(Value::Bool(_)) => {
                        return Err("type check ('boolean') failed - got JSON::PP::Boolean".into());
                    }
                    other => scalar_text(other, "boolean")?,
                };
                match text.as_str() {
                    "0" | "1" => Ok(text),
                    _ => Err(format!("type check ('boolean') failed - got '{text}'")),
                }
            }
            Kind::Integer { minimum, maximum } => {
                let text = scalar_text(value, "integer")?;
                let digits = text.strip_prefix(['-', '+']).unwrap_or(&text);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("type check ('integer') failed - got '{text}'"));
                }
                let number: i64 = text
                    .trim_start_matches('+')
                    .parse()
                    .map_err(|_| format!("type check ('integer') failed - got '{text}'"))?;
                if let Some(minimum) = minimum.filter(|m| number < *m) {
                    return Err(format!("value must have a minimum value of {minimum}"));
                }
                if let Some(maximum) = maximum.filter(|m| number > *m) {
                    return Err(format!("value must have a maximum value of {maximum}"));
                }
                Ok(number.to_string())
            }
            Kind::Number { minimum, maximum } => {
                let text = scalar_text(value, "number")?;
                let number: f64 = text
                    .parse()
                    .ok()
                    .filter(|n: &f64| n.is_finite() && !text.contains(['i', 'n', 'I', 'N']))
                    .ok_or_else(|| format!("type check ('number') failed - got '{text}'"))?;
                if let Some(minimum) = minimum.filter(|m| number < *m) {
                    return Err(format!("value must have a minimum value of {minimum}"));
                }
                if let Some(maximum) = maximum.filter(|m| number > *m) {
                    return Err(format!("value must have a maximum value of {maximum}"));
                }
                Ok(text)
            }
            Kind::String { enumeration, format, property_keys } => {
                let text = match value {
                    // PVE 8.0+ accepts JSON arrays for `*-list` strings.
                    RawValue::Json(Value::Array(items))
                        if self.json_booleans && format.as_deref().is_some_and(|f| f.ends_with("-list")) =>
                    {
                        items
                            .iter()
                            .map(|item| match item {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    }
                    other => scalar_text(other, "string")?,
                };
                if let Some(values) = enumeration
                    && !values.contains(&text)
                {
                    return Err(format!(
                        "value '{text}' does not have a value in the enumeration '{}'",
                        values.join(", ")
                    ));
                }
                if let Some(format) = format {
                    check_format(format, &text).map_err(|problem| format!("invalid format - {problem}\n"))?;
                }
                if let Some(keys) = property_keys {
                    check_property_string(name, &text, keys)
                        .map_err(|problem| format!("invalid format - format error\n{problem}\n"))?;
                }
                Ok(text)
            }
        }
    }
}

fn scalar_text(value: RawValue, type_name: &str) -> Result<String, String> {
    match value {
        RawValue::Text(text) => Ok(text),
        RawValue::Json(Value::String(text)) => Ok(text),
        RawValue::Json(Value::Number(number)) => Ok(number.to_string()),
        RawValue::Json(Value::Bool(b)) => Ok(if b { "1" } else { "0" }.into()),
        RawValue::Json(Value::Null) => Err(format!("type check ('{type_name}') failed - got undef")),
        RawValue::Json(Value::Array(_)) => Err(format!("type check ('{type_name}') failed - got ARRAY")),
        RawValue::Json(Value::Object(_)) => Err(format!("type check ('{type_name}') failed - got HASH")),
    }
}

/// PVE's named formats that matter to clients; other formats pass.
fn check_format(format: &str, value: &str) -> Result<(), String> {
    let list = |value: &str| {
        value.split([',', ';', ' ', '\t', '\n']).filter(|s| !s.is_empty()).map(str::to_string).collect::<Vec<_>>()
    };
    match format {
        "pve-node" if !is_dns_label(value) => Err(format!("value '{value}' does not look like a valid node name")),
        "dns-name" if !is_dns_name(value) => Err("value does not look like a valid DNS name".into()),
        "pve-poolid" if !is_pool_id(value) => Err(format!("invalid pool id '{value}'")),
        "pve-storage-id" if !is_storage_id(value) => Err(format!("storage ID '{value}' contains illegal characters")),
        "pve-storage-id-list" => list(value)
            .iter()
            .find(|id| !is_storage_id(id))
            .map_or(Ok(()), |id| Err(format!("storage ID '{id}' contains illegal characters"))),
        "pve-configid" if !is_config_id(value) => Err(format!("invalid configuration ID '{value}'")),
        "pve-configid-list" => list(value)
            .iter()
            .find(|id| !is_config_id(id))
            .map_or(Ok(()), |id| Err(format!("invalid configuration ID '{id}'"))),
        "pve-vmid-list" => list(value)
            .iter()
            .find(|id| id.parse::<u32>().map_or(true, |v| v < 100))
            .map_or(Ok(()), |id| Err(format!("value '{id}' does not look like a valid VM ID"))),
        "pve-tag-list" => {
            let tags = list(value);
            if tags.is_empty() && !value.trim().is_empty() {
                return Err("invalid characters in tag".into());
            }
            tags.iter().find(|tag| !is_tag(tag)).map_or(Ok(()), |_| Err("invalid characters in tag".into()))
        }
        "urlencoded" if !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-%_.!~*'()".contains(&b)) => {
            Err(format!("invalid urlencoded string: {value}"))
        }
        "pve-qm-ipconfig" => check_ipconfig(value),
        "pve-realm"
            if value.is_empty()
                || !value.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') =>
        {
            Err(format!("invalid realm '{value}'"))
        }
        _ => Ok(()),
    }
}

/// `ip=<cidr>|dhcp`, `gw=`, `ip6=<cidr>|dhcp|auto`, `gw6=`.
fn check_ipconfig(value: &str) -> Result<(), String> {
    for part in value.split(',').filter(|p| !p.is_empty()) {
        let Some((key, item)) = part.split_once('=') else { return Err(format!("unable to parse '{part}'")) };
        let ok = match key {
            "ip" => item == "dhcp" || parse_cidr_v4(item).is_some(),
            "gw" => item.parse::<std::net::Ipv4Addr>().is_ok(),
            "ip6" => {
                item == "dhcp"
                    || item == "auto"
                    || item.split_once('/').is_some_and(|(a, p)| {
                        a.parse::<std::net::Ipv6Addr>().is_ok() && p.parse::<u8>().is_ok_and(|p| p <= 128)
                    })
            }
            "gw6" => item.parse::<std::net::Ipv6Addr>().is_ok(),
            _ => {
                return Err(format!(
                    "{key}: property is not defined in schema and the schema does not allow additional properties"
                ));
            }
        };
        if !ok {
            return Err(format!("{key}: invalid format - value '{item}' is not valid"));
        }
    }
    Ok(())
}

pub fn parse_cidr_v4(text: &str) -> Option<(std::net::Ipv4Addr, u8)> {
    let (address, prefix) = text.split_once('/')?;
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32)?;
    Some((address.parse().ok()?, prefix))
}

/// A property string's keys must be known; the first item may omit its key
/// (`virtio,bridge=vmbr0`, `1` for `agent`).
fn check_property_string(name: &str, value: &str, keys: &[String]) -> Result<(), String> {
    let mut seen = Vec::new();
    for (index, part) in value.split(',').enumerate() {
        if part.is_empty() {
            continue;
        }
        match part.split_once('=') {
            Some((key, _)) => {
                if !keys.iter().any(|k| k == key) {
                    return Err(format!(
                        "{name}.{key}: property is not defined in schema and the schema does not allow additional properties"
                    ));
                }
                if seen.contains(&key) {
                    return Err(format!("{name}.{key}: duplicate key in comma-separated list property"));
                }
                seen.push(key);
            }
            None if index == 0 => {}
            None => return Err(format!("{name}: value without key, but schema does not define a default key")),
        }
    }
    Ok(())
}

pub fn is_dns_label(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-')
}

pub fn is_dns_name(value: &str) -> bool {
    !value.is_empty() && value.split('.').all(is_dns_label)
}

fn is_pool_id(value: &str) -> bool {
    !value.is_empty()
        && value.split('/').count() <= 3
        && value
            .split('/')
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
}

fn is_storage_id(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn is_config_id(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

/// `^[a-z0-9_][a-z0-9_\-+.]*$`, case-insensitive.
pub fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || "_-+.".contains(c))
}

fn downgrade_agent_privileges(permissions: Permissions) -> Permissions {
    fn walk(check: PermCheck) -> PermCheck {
        match check {
            PermCheck::Perm { path, privileges, any, require_param }
                if privileges.iter().any(|p| p.starts_with("VM.GuestAgent.")) =>
            {
                PermCheck::Perm { path, privileges: vec!["VM.Monitor".into()], any, require_param }
            }
            PermCheck::And(checks) => PermCheck::And(checks.into_iter().map(walk).collect()),
            PermCheck::Or(checks) => PermCheck::Or(checks.into_iter().map(walk).collect()),
            other => other,
        }
    }
    match permissions {
        Permissions::Check(check) => Permissions::Check(walk(check)),
        other => other,
    }
}

fn parse_document(text: &str) -> Result<Vec<Operation>, String> {
    let document: Value = serde_json::from_str(text).map_err(|err| err.to_string())?;
    let paths = document.get("paths").and_then(Value::as_object).ok_or("the document has no paths")?;
    let mut operations = Vec::new();
    for (path, item) in paths {
        let Some(item) = item.as_object() else { continue };
        for (method, operation) in item {
            let method = method.to_ascii_uppercase();
            if !matches!(method.as_str(), "GET" | "POST" | "PUT" | "DELETE") {
                continue;
            }
            operations.push(
                parse_operation(path, &method, operation).map_err(|problem| format!("{method} {path}: {problem}"))?,
            );
        }
    }
    Ok(operations)
}

fn parse_operation(path: &str, method: &str, operation: &Value) -> Result<Operation, String> {
    let id = operation.get("operationId").and_then(Value::as_str).ok_or("no operationId")?.to_string();
    let mut params = BTreeMap::new();
    for parameter in operation.get("parameters").and_then(Value::as_array).into_iter().flatten() {
        let name = parameter.get("name").and_then(Value::as_str).ok_or("a parameter without a name")?;
        let location = match parameter.get("in").and_then(Value::as_str) {
            Some("path") => Location::Path,
            _ => Location::Query,
        };
        let required = parameter.get("required").and_then(Value::as_bool).unwrap_or(false);
        let schema = parameter.get("schema").ok_or_else(|| format!("parameter {name} has no schema"))?;
        params.insert(name.to_string(), ParamSpec { location, required, kind: parse_kind(schema) });
    }
    let body = operation
        .pointer("/requestBody/content")
        .and_then(Value::as_object)
        .and_then(|content| content.values().next());
    if let Some(schema) = body.and_then(|media| media.get("schema")) {
        let required: Vec<&str> =
            schema.get("required").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
        for (name, property) in schema.get("properties").and_then(Value::as_object).into_iter().flatten() {
            params.insert(
                name.clone(),
                ParamSpec {
                    location: Location::Body,
                    required: required.contains(&name.as_str()),
                    kind: parse_kind(property),
                },
            );
        }
    }
    let segments = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            Some(name) => Segment::Param(name.to_string()),
            None => Segment::Literal(s.to_string()),
        })
        .collect();
    Ok(Operation {
        id,
        method: method.to_string(),
        path: path.to_string(),
        segments,
        params,
        permissions: parse_permissions(operation.get("x-pve-permissions")),
        allow_token: operation.get("x-pve-allowtoken").and_then(Value::as_bool).unwrap_or(true),
        proxied_to_node: operation.get("x-pve-proxyto").and_then(Value::as_str) == Some("node"),
    })
}

fn parse_kind(schema: &Value) -> Kind {
    let number =
        |key: &str| schema.get(key).and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
    if schema.get("$ref").and_then(Value::as_str).is_some_and(|r| r.ends_with("/PveBool")) {
        return Kind::Boolean;
    }
    match schema.get("type").and_then(Value::as_str) {
        Some("integer") => Kind::Integer {
            minimum: number("x-pve-minimum").map(|v| v as i64),
            maximum: number("x-pve-maximum").map(|v| v as i64),
        },
        Some("number") => Kind::Number { minimum: number("x-pve-minimum"), maximum: number("x-pve-maximum") },
        _ => Kind::String {
            enumeration: schema
                .get("enum")
                .and_then(Value::as_array)
                .map(|values| values.iter().filter_map(|v| v.as_str().map(str::to_string)).collect()),
            format: schema.get("x-pve-format").and_then(Value::as_str).map(str::to_string),
            property_keys: schema
                .get("x-pve-property-string")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_string)).collect()),
        },
    }
}

fn parse_permissions(value: Option<&Value>) -> Permissions {
    let Some(value) = value else { return Permissions::RootOnly };
    match value.get("user").and_then(Value::as_str) {
        Some("world") => return Permissions::World,
        Some("all") => return Permissions::All,
        _ => {}
    }
    match value.get("check") {
        Some(check) => Permissions::Check(parse_check(check)),
        None => Permissions::RootOnly,
    }
}

fn parse_check(check: &Value) -> PermCheck {
    let Some(items) = check.as_array() else { return PermCheck::Unsupported(check.to_string()) };
    match items.first().and_then(Value::as_str) {
        Some("and") => PermCheck::And(items[1..].iter().map(parse_check).collect()),
        Some("or") => PermCheck::Or(items[1..].iter().map(parse_check).collect()),
        Some("perm") => {
            let path = items.get(1).and_then(Value::as_str).unwrap_or("/").to_string();
            let privileges = items
                .get(2)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|p| p.as_str().map(str::to_string))
                .collect();
            let mut any = false;
            let mut require_param = None;
            let mut options = items[3.min(items.len())..].iter();
            while let Some(key) = options.next() {
                let value = options.next();
                match key.as_str() {
                    Some("any") => any = value.is_some_and(|v| v.as_i64() == Some(1) || v.as_bool() == Some(true)),
                    Some("require_param") => require_param = value.and_then(Value::as_str).map(str::to_string),
                    _ => {}
                }
            }
            PermCheck::Perm { path, privileges, any, require_param }
        }
        _ => PermCheck::Unsupported(check.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(version: &str) -> Api {
        Api::for_version(&PveRelease::parse(version).unwrap()).unwrap()
    }

    fn raw(pairs: &[(&str, &str)]) -> BTreeMap<String, RawValue> {
        pairs.iter().map(|(k, v)| (k.to_string(), RawValue::Text(v.to_string()))).collect()
    }

    #[test]
    fn every_operation_of_the_document_is_routed() {
        let api = api("9.1.3");
        assert!(api.operations().len() >= 40);
        for operation in api.operations() {
            let concrete = operation
                .path
                .replace("{node}", "pve1")
                .replace("{vmid}", "100")
                .replace("{upid}", "UPID:x")
                .replace("{poolid}", "ci")
                .replace("{storage}", "local");
            let (found, _) = api
                .route(&operation.method, &concrete)
                .unwrap_or_else(|| panic!("{} {}", operation.method, operation.path));
            assert_eq!(found.id, operation.id);
        }
        let (clone, values) = api.route("POST", "/nodes/pve1/qemu/9000/clone").unwrap();
        assert_eq!(clone.id, "post_nodes_node_qemu_vmid_clone");
        assert_eq!(values, [("node".to_string(), "pve1".to_string()), ("vmid".to_string(), "9000".to_string())]);
        let (_, values) = api.route("GET", "/nodes/pve1/tasks/UPID%3Apve1%3A0/status").unwrap();
        assert_eq!(values[1].1, "UPID:pve1:0");
        assert!(api.route("GET", "/nodes/pve1/qemu/9000/clone").is_none());
        assert!(api.route("GET", "/nope").is_none());
    }

    #[test]
    fn validation_speaks_pve() {
        let api = api("9.1.3");
        let clone = api.operation("post_nodes_node_qemu_vmid_clone").unwrap();
        let errors = api
            .validate(
                clone,
                raw(&[
                    ("node", "pve1"),
                    ("vmid", "9000"),
                    ("newid", "50"),
                    ("full", "true"),
                    ("bogus", "1"),
                    ("name", "no spaces"),
                ]),
            )
            .unwrap_err();
        assert_eq!(errors["newid"], "value must have a minimum value of 100");
        assert_eq!(errors["full"], "type check ('boolean') failed - got 'true'");
        assert_eq!(
            errors["bogus"],
            "property is not defined in schema and the schema does not allow additional properties"
        );
        assert_eq!(errors["name"], "invalid format - value does not look like a valid DNS name\n");
        let errors = api.validate(clone, raw(&[("node", "pve1"), ("vmid", "9000")])).unwrap_err();
        assert_eq!(errors["newid"], "property is missing and it is not optional");
        let mut json = raw(&[("node", "pve1"), ("vmid", "9000")]);
        json.insert("newid".into(), RawValue::Json(serde_json::json!(105)));
        json.insert("full".into(), RawValue::Json(serde_json::json!(true)));
        let params = api.validate(clone, json.clone()).unwrap();
        assert_eq!((params.int("newid"), params.flag("full")), (Some(105), Some(true)));
        let errors = self::api("7.4").validate(clone, json).unwrap_err();
        assert!(errors["full"].contains("JSON::PP::Boolean"), "PVE 7 rejects JSON booleans");
    }

    #[test]
    fn formats_and_property_strings() {
        let api = api("9.1.3");
        let config = api.operation("put_nodes_node_qemu_vmid_config").unwrap();
        let base = [("node", "pve1"), ("vmid", "100")];
        let check = |extra: (&str, &str)| {
            let mut pairs = base.to_vec();
            pairs.push(extra);
            api.validate(config, raw(&pairs))
        };
        assert!(check(("tags", "a;B;c-d")).is_ok());
        assert!(check(("tags", "key:value")).unwrap_err()["tags"].contains("invalid characters in tag"));
        assert!(check(("sshkeys", "ssh-ed25519%20AAAA")).is_ok());
        assert!(check(("sshkeys", "ssh-ed25519 AAAA")).unwrap_err()["sshkeys"].contains("invalid urlencoded string"));
        assert!(check(("net0", "virtio,bridge=vmbr0,firewall=1")).is_ok());
        assert!(check(("net0", "virtio,bridge=vmbr0,colour=red")).unwrap_err()["net0"].contains("net0.colour"));
        assert!(check(("ipconfig0", "ip=10.0.0.5/24,gw=10.0.0.1")).is_ok());
        assert!(check(("ipconfig0", "ip=10.0.0.5")).is_err());
        assert!(check(("agent", "1")).is_ok());
        assert!(check(("cores", "0")).unwrap_err()["cores"].contains("minimum value of 1"));
        let resources = api.operation("get_cluster_resources").unwrap();
        let errors = api.validate(resources, raw(&[("type", "vms")])).unwrap_err();
        assert_eq!(errors["type"], "value 'vms' does not have a value in the enumeration 'vm, storage, node, sdn'");
    }

    #[test]
    fn versions_differ() {
        let old = api("8.0.4");
        assert!(old.operation("put_pools").is_none(), "PUT /pools arrived in 8.1");
        assert!(!old.operation("get_pools").unwrap().params.contains_key("poolid"));
        let ping = old.operation("post_nodes_node_qemu_vmid_agent_ping").unwrap();
        assert!(
            matches!(&ping.permissions, Permissions::Check(PermCheck::Perm { privileges, .. }) if privileges == &["VM.Monitor"])
        );
        assert!(!api("7.0").operation("post_access_ticket").unwrap().params.contains_key("new-format"));
        let new = api("9.1.3");
        assert!(matches!(&new.operation("get_version").unwrap().permissions, Permissions::All));
        assert!(!new.operation("post_access_ticket").unwrap().allow_token);
        assert_eq!(new.config_value_kind("cpulimit"), ConfigValueKind::Number);
        assert_eq!(new.config_value_kind("cores"), ConfigValueKind::Integer);
        assert_eq!(new.config_value_kind("template"), ConfigValueKind::Boolean);
        assert_eq!(new.config_value_kind("net0"), ConfigValueKind::String);
    }
}
