//! `plugin_config`: the settings Runner passes as JSON (its
//! `[runners.autoscaler.plugin_config]` table). Every key of the seed plugin
//! keeps its meaning and default; the rest are new, each with a default.
//!
//! Validation reports every problem at once, each naming the key and the
//! fix; unknown keys are errors that suggest the closest known key.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::pve::Vmid;

/// `plugin_config` exactly as written by the user; every key optional here,
/// defaults and requirements are applied by [`PluginConfig::resolve`].
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(default)]
#[schemars(title = "fleeting-plugin-proxmox plugin_config")]
pub struct PluginConfig {
    /// Proxmox VE API address, e.g. `https://pve.example.com:8006` (a trailing `/api2/json` is accepted). Required.
    pub url: Option<String>,
    /// Skip TLS certificate verification. Insecure; prefer `tls_fingerprint` or `ca_file`. Default `false`.
    pub insecure_skip_tls_verify: Option<bool>,
    /// Path of the JSON credentials file (API token, or user and password with optional TOTP). Required.
    pub credentials_file_path: Option<String>,
    /// The Proxmox pool the instances are cloned into; it must exist. Required.
    pub pool: Option<String>,
    /// Target storage for full clones. Default: the template's storage.
    pub storage: Option<String>,
    /// VMID of the template to clone. Required.
    pub template_id: Option<u32>,
    /// Most instances this group may have at once, counting those being created. Required.
    pub max_instances: Option<u32>,
    /// Guest interface to take addresses from when no interface matches net0's MAC. Default `ens18`.
    pub instance_network_interface: Option<String>,
    /// Address family to connect with: `ipv4`, `ipv6` or `any`. Default `ipv4`.
    pub instance_network_protocol: Option<NetworkProtocol>,
    /// VM name while an instance is being created. Default `fleeting-creating`.
    pub instance_name_creating: Option<String>,
    /// VM name once an instance is running. Default `fleeting-running`.
    pub instance_name_running: Option<String>,
    /// VM name while an instance is being removed. Default `fleeting-removing`.
    pub instance_name_removing: Option<String>,

    /// PEM file with the CA that signed the PVE certificate (e.g. the cluster's `/etc/pve/pve-root-ca.pem`).
    pub ca_file: Option<String>,
    /// SHA-256 fingerprint of the PVE server certificate, as shown under Node → System → Certificates.
    pub tls_fingerprint: Option<String>,
    /// Name that marks this runner's VMs; set a different one for each runner sharing a pool (lower-case letters, digits, `-`, `_`, `.`). Default `fleeting`.
    pub group: Option<String>,
    /// `auto` (linked clones where the template's storage allows them, else full), `linked` or `full`. Default `auto`.
    pub clone_mode: Option<CloneMode>,
    /// Nodes to spread clones over, each new VM going to the one with the fewest instances; a node whose clone fails is skipped for a minute. Cloning to another node needs the template's disks on shared storage (or `storage` set to a shared one for full clones). Default: the template's node.
    pub target_nodes: Option<Vec<String>>,
    /// VMIDs the plugin may use, as `first-last`, e.g. `9100-9199`. Default: any free VMID.
    pub vmid_range: Option<String>,
    /// Extra Proxmox tags for every instance (lower-cased by Proxmox).
    pub tags: Option<Vec<String>>,
    /// Clone requests sent to Proxmox at the same time (each returns once Proxmox accepted the clone; Proxmox then runs the clone tasks side by side). Default `4`.
    pub max_parallel_clones: Option<u32>,
    /// Deletions running at the same time. Default `4`.
    pub max_parallel_deletes: Option<u32>,
    /// Longest wait for a clone task, e.g. `10m`. Default `10m`.
    #[schemars(extend("x-format" = "duration"))]
    pub clone_timeout: Option<String>,
    /// Longest wait from start until the guest agent reports an address, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub boot_timeout: Option<String>,
    /// Longest wait for stopping and deleting a VM, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub delete_timeout: Option<String>,
    /// Longest wait for one Proxmox API request, e.g. `30s`. Default `30s`.
    #[schemars(extend("x-format" = "duration"))]
    pub request_timeout: Option<String>,
    /// User that cloud-init creates with the generated SSH key (when Runner does not pass static credentials). Default `fleeting`.
    pub cloud_init_user: Option<String>,
    /// Failed provisioning attempts in a row, all of one cause (e.g. the guest never reports an address), that hold scale-up. Single failures among successes never do; outages, dropped connections and VMID collisions never count. Default `5`.
    pub failure_threshold: Option<u32>,
    /// How long scale-up is held after systematic failures before one instance tests whether the cause is gone; doubles after each failed test up to `failure_backoff_max`. A success ends the hold. Default `10s`.
    #[schemars(extend("x-format" = "duration"))]
    pub failure_backoff: Option<String>,
    /// Longest hold of scale-up between two tests, e.g. `5m`. Default `5m`.
    #[schemars(extend("x-format" = "duration"))]
    pub failure_backoff_max: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum NetworkProtocol {
    #[default]
    Ipv4,
    Ipv6,
    Any,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CloneMode {
    #[default]
    Auto,
    Linked,
    Full,
}

/// The validated configuration with every default applied.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupConfig {
    pub url: String,
    pub insecure_skip_tls_verify: bool,
    pub credentials_file_path: PathBuf,
    pub pool: String,
    pub storage: Option<String>,
    pub template_id: Vmid,
    pub max_instances: u32,
    pub instance_network_interface: String,
    pub instance_network_protocol: NetworkProtocol,
    pub instance_name_creating: String,
    pub instance_name_running: String,
    pub instance_name_removing: String,
    pub ca_file: Option<PathBuf>,
    pub tls_fingerprint: Option<String>,
    pub group: String,
    pub clone_mode: CloneMode,
    pub target_nodes: Vec<String>,
    pub vmid_range: Option<(Vmid, Vmid)>,
    pub tags: Vec<String>,
    pub max_parallel_clones: u32,
    pub max_parallel_deletes: u32,
    pub clone_timeout: Duration,
    pub boot_timeout: Duration,
    pub delete_timeout: Duration,
    pub request_timeout: Duration,
    pub cloud_init_user: String,
    pub failure_threshold: u32,
    pub failure_backoff: Duration,
    pub failure_backoff_max: Duration,
}

impl GroupConfig {
    /// How to reach PVE with these settings (the engine's defaults for
    /// connecting and retrying).
    pub fn client_config(&self, credentials: crate::pve::Credentials) -> crate::pve::ClientConfig {
        crate::pve::ClientConfig {
            url: self.url.clone(),
            tls: crate::pve::TlsOptions {
                ca_file: self.ca_file.clone(),
                fingerprint: self.tls_fingerprint.clone(),
                insecure_skip_verify: self.insecure_skip_tls_verify,
            },
            credentials,
            request_timeout: self.request_timeout,
            connect_timeout: Duration::from_secs(10),
            retry: crate::pve::RetryPolicy::default(),
        }
    }
}

/// Every problem found in a `plugin_config`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not use plugin_config ({} problem{}): {}", problems.len(), if problems.len() == 1 { "" } else { "s" }, problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// The keys `plugin_config` accepts, from the generated JSON Schema.
pub fn known_keys() -> Vec<String> {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfig)).unwrap_or_default();
    let mut keys: Vec<String> = schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| properties.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// The JSON Schema of `plugin_config`, pretty-printed.
pub fn json_schema() -> String {
    serde_json::to_string_pretty(&schemars::schema_for!(PluginConfig)).unwrap_or_default()
}

/// The `plugin_config` reference as a Markdown table (key, type, default,
/// meaning), generated from the doc comments of [`PluginConfig`] so the
/// README cannot drift from the code.
pub fn reference_markdown() -> String {
    let schema = serde_json::to_value(schemars::schema_for!(PluginConfig)).unwrap_or_default();
    let definitions = schema.get("$defs").cloned().unwrap_or_default();
    let mut out = String::from("| Key | Type | Default | Meaning |\n|---|---|---|---|\n");
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else { return out };
    // Declaration order (schemars keeps it), which groups seed keys first.
    for (key, property) in properties {
        let description = property.get("description").and_then(Value::as_str).unwrap_or_default().replace('\n', " ");
        let (meaning, default) = split_default(&description);
        let kind = type_name(property, &definitions);
        out.push_str(&format!("| `{key}` | {kind} | {default} | {} |\n", meaning.replace('|', "\\|")));
    }
    out
}

/// Splits "… Default `x`." (or "… Required.") off a key's description.
fn split_default(description: &str) -> (String, String) {
    if let Some(meaning) = description.strip_suffix(" Required.") {
        return (meaning.to_string(), "required".into());
    }
    match description.rfind(" Default") {
        Some(at) => {
            let default = description[at + " Default".len()..].trim_start_matches(':').trim().trim_end_matches('.');
            (description[..at].to_string(), default.to_string())
        }
        None => (description.to_string(), "none".into()),
    }
}

fn type_name(property: &Value, definitions: &Value) -> String {
    if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or_default();
        return type_name(&definitions[name], definitions);
    }
    if let Some(any_of) = property.get("anyOf").and_then(Value::as_array) {
        let names: Vec<String> = any_of
            .iter()
            .filter(|v| v.get("type") != Some(&Value::from("null")))
            .map(|v| type_name(v, definitions))
            .collect();
        return names.join(" or ");
    }
    if let Some(values) = property.get("enum").and_then(Value::as_array) {
        let names: Vec<String> = values.iter().filter_map(Value::as_str).map(|v| format!("`{v}`")).collect();
        return names.join(" / ");
    }
    if let Some(values) = property.get("oneOf").and_then(Value::as_array) {
        let names: Vec<String> = values
            .iter()
            .filter_map(|v| v.get("const").or_else(|| v.get("enum").and_then(|e| e.get(0))))
            .filter_map(Value::as_str)
            .map(|v| format!("`{v}`"))
            .collect();
        return names.join(" / ");
    }
    let types: Vec<&str> = match property.get("type") {
        Some(Value::String(kind)) => vec![kind.as_str()],
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).filter(|k| *k != "null").collect(),
        _ => Vec::new(),
    };
    match types.first().copied() {
        Some("string") if property.get("x-format") == Some(&Value::from("duration")) => "duration".into(),
        Some("string") => "text".into(),
        Some("boolean") => "`true` / `false`".into(),
        Some("integer") => "whole number".into(),
        Some("array") => format!(
            "list of {}",
            property.get("items").map(|items| type_name(items, definitions)).unwrap_or_else(|| "values".into())
        ),
        Some(other) => other.to_string(),
        None => "value".into(),
    }
}

impl PluginConfig {
    /// Parses and validates the JSON Runner sends.
    pub fn parse(json: &[u8]) -> Result<GroupConfig, ConfigError> {
        let value: Value = serde_json::from_slice(json).map_err(|err| ConfigError {
            problems: vec![format!("it is not valid JSON ({err}); check the [runners.autoscaler.plugin_config] table")],
        })?;
        let object = match value {
            Value::Object(object) => object,
            Value::Null => Map::new(),
            _ => {
                return Err(ConfigError {
                    problems: vec!["it must be a table of settings ([runners.autoscaler.plugin_config])".into()],
                });
            }
        };
        let mut problems = Vec::new();
        let known = known_keys();
        // Each key on its own, so one mistyped value does not hide the next.
        let mut clean = Map::new();
        for (key, value) in object {
            if !known.iter().any(|k| k == &key) {
                let hint = closest(&key, &known).map(|k| format!(" (did you mean `{k}`?)")).unwrap_or_default();
                problems.push(format!("`{key}` is not a known setting{hint}"));
                continue;
            }
            let single = Value::Object(Map::from_iter([(key.clone(), value.clone())]));
            match serde_json::from_value::<PluginConfig>(single) {
                Ok(_) => {
                    clean.insert(key, value);
                }
                Err(err) => problems.push(format!("`{key}`: {}", describe_serde_error(&err))),
            }
        }
        let config: PluginConfig = serde_json::from_value(Value::Object(clean)).unwrap_or_default();
        config.resolve(problems)
    }

    /// Applies defaults and checks every value; `problems` already found are kept.
    pub fn resolve(self, mut problems: Vec<String>) -> Result<GroupConfig, ConfigError> {
        let mut required = |value: Option<String>, key: &str, example: &str| -> String {
            match value.map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                Some(value) => value,
                None => {
                    problems.push(format!("`{key}` is required; add e.g. `{key} = {example}`"));
                    String::new()
                }
            }
        };
        let url = required(self.url, "url", "\"https://pve.example.com:8006\"");
        let credentials_file_path =
            required(self.credentials_file_path, "credentials_file_path", "\"/etc/gitlab-runner/pve.json\"");
        let pool = required(self.pool, "pool", "\"ci\"");

        if !url.is_empty() {
            match reqwest::Url::parse(&url) {
                Ok(parsed) if matches!(parsed.scheme(), "https" | "http") && parsed.host_str().is_some() => {}
                _ => problems.push(format!(
                    "`url` {url:?} is not an http(s) URL; write it like \"https://pve.example.com:8006\""
                )),
            }
        }
        if !pool.is_empty() && !pool.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')) {
            problems.push(format!(
                "`pool` {pool:?} is not a Proxmox pool id (letters, digits, `-`, `_`, `.`, `/` for nested pools)"
            ));
        }
        let template_id = match self.template_id {
            Some(id) if id >= 100 => Vmid(id),
            Some(id) => {
                problems.push(format!("`template_id` {id} is not a VMID (100 or more)"));
                Vmid(100)
            }
            None => {
                problems.push(
                    "`template_id` is required; add the VMID of the template to clone, e.g. `template_id = 9000`"
                        .into(),
                );
                Vmid(100)
            }
        };
        let max_instances = match self.max_instances {
            Some(0) => {
                problems.push("`max_instances` must be at least 1".into());
                0
            }
            Some(n) => n,
            None => {
                problems.push(
                    "`max_instances` is required; add the most VMs this runner may have, e.g. `max_instances = 10`"
                        .into(),
                );
                0
            }
        };

        let names = [
            ("instance_name_creating", self.instance_name_creating, "fleeting-creating"),
            ("instance_name_running", self.instance_name_running, "fleeting-running"),
            ("instance_name_removing", self.instance_name_removing, "fleeting-removing"),
        ];
        let mut resolved_names = Vec::new();
        for (key, value, default) in names {
            let name = value.unwrap_or_else(|| default.to_string());
            if !is_dns_name(&name) {
                problems
                    .push(format!("`{key}` {name:?} is not a valid VM name (letters, digits and `-`, dot-separated)"));
            }
            resolved_names.push(name);
        }

        let group = self.group.unwrap_or_else(|| "fleeting".into());
        if !is_tag(&group) || group.len() > 40 {
            problems.push(format!(
                "`group` {group:?} must be at most 40 lower-case letters, digits, `-`, `_` or `.`, starting with a letter or digit"
            ));
        }
        let tags = self.tags.unwrap_or_default();
        for tag in &tags {
            if !is_tag(&tag.to_ascii_lowercase()) {
                problems
                    .push(format!("`tags` entry {tag:?} is not a Proxmox tag (letters, digits, `-`, `_`, `+`, `.`)"));
            }
        }

        let vmid_range = self.vmid_range.as_deref().and_then(|text| match parse_range(text) {
            Ok(range) => Some(range),
            Err(problem) => {
                problems.push(format!("`vmid_range` {text:?} {problem}"));
                None
            }
        });
        if let Some((first, last)) = vmid_range {
            let size = last.0 - first.0 + 1;
            if max_instances > size {
                problems.push(format!(
                    "`max_instances` {max_instances} does not fit `vmid_range` {first}-{last} ({size} ids); widen the range or lower max_instances"
                ));
            }
            if (first.0..=last.0).contains(&template_id.0) {
                problems
                    .push(format!("`vmid_range` {first}-{last} contains the template {template_id}; move the range"));
            }
        }

        let mut duration = |value: Option<String>, key: &str, default: Duration| -> Duration {
            match value {
                None => default,
                Some(text) => match humantime::parse_duration(text.trim()) {
                    Ok(d) if !d.is_zero() => d,
                    _ => {
                        problems.push(format!(
                            "`{key}` {text:?} is not a duration; write it like \"90s\", \"10m\" or \"1h\""
                        ));
                        default
                    }
                },
            }
        };
        let clone_timeout = duration(self.clone_timeout, "clone_timeout", Duration::from_secs(600));
        let boot_timeout = duration(self.boot_timeout, "boot_timeout", Duration::from_secs(300));
        let delete_timeout = duration(self.delete_timeout, "delete_timeout", Duration::from_secs(300));
        let request_timeout = duration(self.request_timeout, "request_timeout", Duration::from_secs(30));
        let failure_backoff = duration(self.failure_backoff, "failure_backoff", Duration::from_secs(10));
        let failure_backoff_max = duration(self.failure_backoff_max, "failure_backoff_max", Duration::from_secs(300));
        if failure_backoff_max < failure_backoff {
            problems.push(format!(
                "`failure_backoff_max` ({}) is shorter than `failure_backoff` ({}); raise failure_backoff_max",
                humantime::format_duration(failure_backoff_max),
                humantime::format_duration(failure_backoff)
            ));
        }

        let mut parallel = |value: Option<u32>, key: &str| match value {
            Some(0) => {
                problems.push(format!("`{key}` must be at least 1"));
                1
            }
            Some(n) => n,
            None => 4,
        };
        let max_parallel_clones = parallel(self.max_parallel_clones, "max_parallel_clones");
        let max_parallel_deletes = parallel(self.max_parallel_deletes, "max_parallel_deletes");
        let failure_threshold = match self.failure_threshold {
            Some(0) => {
                problems.push("`failure_threshold` must be at least 1".into());
                1
            }
            Some(n) => n,
            None => 5,
        };

        if let Some(fingerprint) = &self.tls_fingerprint {
            if let Err(problem) = crate::pve::Fingerprint::parse(fingerprint) {
                problems.push(format!("`tls_fingerprint` {problem}"));
            }
        }
        let cloud_init_user = self.cloud_init_user.unwrap_or_else(|| "fleeting".into());
        let valid_user = !cloud_init_user.is_empty()
            && cloud_init_user.len() <= 32
            && cloud_init_user.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && cloud_init_user.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_'));
        if !valid_user {
            problems.push(format!(
                "`cloud_init_user` {cloud_init_user:?} is not a Linux user name (lower-case letters, digits, `-`, `_`)"
            ));
        }
        let mut target_nodes: Vec<String> = Vec::new();
        for node in self.target_nodes.unwrap_or_default() {
            let node = node.trim().to_string();
            if !is_dns_name(&node) || node.contains('.') {
                problems.push(format!(
                    "`target_nodes` entry {node:?} is not a Proxmox node name (letters, digits and `-`)"
                ));
            } else if !target_nodes.contains(&node) {
                target_nodes.push(node);
            }
        }
        let interface = self.instance_network_interface.unwrap_or_else(|| "ens18".into());
        if interface.is_empty() {
            problems.push("`instance_network_interface` must not be empty".into());
        }

        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        let mut names = resolved_names.into_iter();
        Ok(GroupConfig {
            url,
            insecure_skip_tls_verify: self.insecure_skip_tls_verify.unwrap_or(false),
            credentials_file_path: PathBuf::from(credentials_file_path),
            pool,
            storage: self.storage.filter(|s| !s.is_empty()),
            template_id,
            max_instances,
            instance_network_interface: interface,
            instance_network_protocol: self.instance_network_protocol.unwrap_or_default(),
            instance_name_creating: names.next().unwrap_or_default(),
            instance_name_running: names.next().unwrap_or_default(),
            instance_name_removing: names.next().unwrap_or_default(),
            ca_file: self.ca_file.filter(|s| !s.is_empty()).map(PathBuf::from),
            tls_fingerprint: self.tls_fingerprint,
            group,
            clone_mode: self.clone_mode.unwrap_or_default(),
            target_nodes,
            vmid_range,
            tags: tags.into_iter().map(|t| t.to_ascii_lowercase()).collect(),
            max_parallel_clones,
            max_parallel_deletes,
            clone_timeout,
            boot_timeout,
            delete_timeout,
            request_timeout,
            cloud_init_user,
            failure_threshold,
            failure_backoff,
            failure_backoff_max,
        })
    }
}

fn describe_serde_error(err: &serde_json::Error) -> String {
    let text = err.to_string();
    let text = text.rsplit_once(" at line ").map_or(text.as_str(), |(head, _)| head);
    text.replace("u32", "a whole number").replace("a string", "text").replace("a sequence", "a list")
}

fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a str> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(key, k), k.as_str()))
        .filter(|(distance, k)| *distance <= 3.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

/// PVE's `dns-name`: dot-separated labels of letters, digits and inner `-`.
fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// PVE's tag syntax: `[a-z0-9_][a-z0-9_\-+.]*` (after lower-casing).
pub(crate) fn is_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-' | '+' | '.'))
}

fn parse_range(text: &str) -> Result<(Vmid, Vmid), &'static str> {
    let (first, last) = text.split_once('-').ok_or("must be written `first-last`, e.g. \"9100-9199\"")?;
    let first: u32 = first.trim().parse().map_err(|_| "must be written `first-last`, e.g. \"9100-9199\"")?;
    let last: u32 = last.trim().parse().map_err(|_| "must be written `first-last`, e.g. \"9100-9199\"")?;
    if first < 100 || last > 999_999_999 {
        return Err("must lie within 100-999999999");
    }
    if first > last {
        return Err("starts after it ends");
    }
    Ok((Vmid(first), Vmid(last)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<GroupConfig, ConfigError> {
        PluginConfig::parse(json.as_bytes())
    }

    const SEED: &str = r#"{
        "url": "https://pve.example.com:8006",
        "insecure_skip_tls_verify": false,
        "credentials_file_path": "/etc/gitlab-runner/pve.json",
        "pool": "ci",
        "storage": "local-lvm",
        "template_id": 9000,
        "max_instances": 5
    }"#;

    #[test]
    fn seed_config_gets_seed_defaults() {
        let config = parse(SEED).unwrap();
        assert_eq!(config.instance_network_interface, "ens18");
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Ipv4);
        assert_eq!(config.instance_name_creating, "fleeting-creating");
        assert_eq!(config.instance_name_running, "fleeting-running");
        assert_eq!(config.instance_name_removing, "fleeting-removing");
        assert_eq!(config.storage.as_deref(), Some("local-lvm"));
        assert_eq!(config.group, "fleeting");
        assert_eq!(config.clone_mode, CloneMode::Auto);
        assert_eq!(config.clone_timeout, Duration::from_secs(600));
        assert_eq!(config.max_parallel_clones, 4);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = parse(
            r#"{"url": "pve:8006", "pool": "ci pool", "template_id": "abc", "max_instances": 50,
                "vmid_range": "9100-9109", "clone_timeout": "soon", "tempalte_id": 1, "group": "Team A"}"#,
        )
        .unwrap_err();
        let text = err.to_string();
        for expected in [
            "`tempalte_id` is not a known setting (did you mean `template_id`?)",
            "`template_id`: invalid type: string \"abc\", expected a whole number",
            "`url` \"pve:8006\" is not an http(s) URL",
            "`credentials_file_path` is required",
            "`pool` \"ci pool\" is not a Proxmox pool id",
            "`max_instances` 50 does not fit `vmid_range` 9100-9109",
            "`clone_timeout` \"soon\" is not a duration",
            "`group` \"Team A\" must be",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
        assert!(text.starts_with("could not use plugin_config ("), "{text}");
    }

    #[test]
    fn new_keys_are_parsed() {
        let json = SEED.replace(
            "\"max_instances\": 5",
            r#""max_instances": 5, "clone_mode": "full", "target_nodes": ["pve1", "pve2"], "vmid_range": "9100-9199",
               "tags": ["CI", "team-a"], "boot_timeout": "90s", "group": "runner-a", "instance_network_protocol": "any""#,
        );
        let config = parse(&json).unwrap();
        assert_eq!(config.clone_mode, CloneMode::Full);
        assert_eq!(config.vmid_range, Some((Vmid(9100), Vmid(9199))));
        assert_eq!(config.tags, ["ci", "team-a"]);
        assert_eq!(config.boot_timeout, Duration::from_secs(90));
        assert_eq!(config.instance_network_protocol, NetworkProtocol::Any);
    }

    #[test]
    fn rejects_non_objects_and_bad_json() {
        assert!(parse("[1]").unwrap_err().to_string().contains("table of settings"));
        assert!(parse("{").unwrap_err().to_string().contains("not valid JSON"));
        let err = parse("{}").unwrap_err();
        assert_eq!(err.problems.len(), 5, "url, credentials_file_path, pool, template_id, max_instances: {err}");
    }

    #[test]
    fn reference_has_a_row_per_key_with_type_and_default() {
        let table = reference_markdown();
        assert_eq!(table.lines().count(), known_keys().len() + 2, "{table}");
        assert!(table.contains("| `url` | text | required | Proxmox VE API address"), "{table}");
        assert!(table.contains("| `instance_network_interface` | text | `ens18` |"), "{table}");
        assert!(table.contains("| `instance_network_protocol` | `ipv4` / `ipv6` / `any` | `ipv4` |"), "{table}");
        assert!(table.contains("| `target_nodes` | list of text | the template's node |"), "{table}");
        assert!(table.contains("| `max_instances` | whole number | required |"), "{table}");
    }

    #[test]
    fn schema_lists_every_key() {
        let keys = known_keys();
        for key in ["url", "template_id", "instance_name_removing", "vmid_range", "cloud_init_user"] {
            assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
        }
        assert!(json_schema().contains("\"template_id\""));
    }
}
