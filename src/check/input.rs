//! What `check` reads: a `plugin_config` as JSON (what Runner sends), or
//! Runner's `config.toml`, from which each `[runners.autoscaler]` section
//! that uses this plugin is taken.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// Which configurations `check` and `status` read.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// plugin_config JSON, or Runner's config.toml.
    pub config: PathBuf,
    /// In a config.toml: only this `[[runners]]` entry.
    pub runner: Option<String>,
    /// Whether Runner brings its own credentials; overrides config.toml (a
    /// JSON plugin_config does not say). Decides whether the template needs a
    /// cloud-init drive and whether the seed's running VMs would be adopted.
    pub use_static_credentials: Option<bool>,
}

impl Selection {
    /// The configurations selected; see [`load`].
    pub fn load(&self) -> Result<Vec<Target>, String> {
        load(&self.config, self.runner.as_deref(), self.use_static_credentials)
    }
}

/// One `plugin_config` to check, with the Runner settings that matter.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    /// `plugin_config.json`, or `runner "name" in config.toml`.
    pub label: String,
    pub plugin_config: Value,
    /// Runner brings its own credentials (`[runners.autoscaler.connector_config]`
    /// `key_path`, `password` or `use_static_credentials = true`), so the
    /// plugin generates none and the template needs no cloud-init drive.
    pub runner_brings_credentials: bool,
    /// `[runners.autoscaler] max_instances`, when given.
    pub runner_max_instances: Option<u64>,
}

/// Reads `path` and picks the configurations to check. `runner` selects one
/// `[[runners]]` by name; without it every runner whose autoscaler plugin is
/// this one is checked. `static_credentials` overrides the file's setting.
pub fn load(path: &Path, runner: Option<&str>, static_credentials: Option<bool>) -> Result<Vec<Target>, String> {
    let text = std::fs::read_to_string(path).map_err(|err| format!("could not read {}: {err}", path.display()))?;
    let name = path.display().to_string();
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let mut targets = if is_json || (!is_toml && text.trim_start().starts_with('{')) {
        if runner.is_some() {
            return Err(format!(
                "could not use --runner with {name}: it is a plugin_config JSON file, not Runner's config.toml"
            ));
        }
        let plugin_config: Value = serde_json::from_str(&text)
            .map_err(|err| format!("could not read {name}: it is not valid JSON ({err})"))?;
        vec![Target { label: name, plugin_config, runner_brings_credentials: false, runner_max_instances: None }]
    } else {
        let document: toml::Table = toml::from_str(&text)
            .map_err(|err| format!("could not read {name}: it is not valid TOML ({})", err.message()))?;
        from_toml(document, &name, runner)?
    };
    if let Some(value) = static_credentials {
        for target in &mut targets {
            target.runner_brings_credentials = value;
        }
    }
    Ok(targets)
}

fn from_toml(document: toml::Table, name: &str, runner: Option<&str>) -> Result<Vec<Target>, String> {
    let Some(runners) = document.get("runners") else {
        // A bare plugin_config table written as TOML.
        if runner.is_some() {
            return Err(format!("could not use --runner with {name}: it has no [[runners]]"));
        }
        return Ok(vec![Target {
            label: name.to_string(),
            plugin_config: to_json(&toml::Value::Table(document)),
            runner_brings_credentials: false,
            runner_max_instances: None,
        }]);
    };
    let runners =
        runners.as_array().ok_or_else(|| format!("could not read {name}: `runners` must be [[runners]] sections"))?;
    let mut all = Vec::new();
    for (index, entry) in runners.iter().enumerate() {
        let table = entry.as_table();
        let runner_name = table
            .and_then(|t| t.get("name"))
            .and_then(toml::Value::as_str)
            .map_or_else(|| format!("#{}", index + 1), str::to_string);
        let autoscaler = table.and_then(|t| t.get("autoscaler")).and_then(toml::Value::as_table);
        all.push((runner_name, autoscaler));
    }
    let names = || all.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");

    let chosen: Vec<(&String, &toml::Table)> = match runner {
        Some(wanted) => {
            let (runner_name, autoscaler) = all
                .iter()
                .find(|(n, _)| n == wanted)
                .ok_or_else(|| format!("could not find runner \"{wanted}\" in {name}; its runners are {}", names()))?;
            let autoscaler = autoscaler.ok_or_else(|| {
                format!("could not check runner \"{wanted}\" in {name}: it has no [runners.autoscaler] section")
            })?;
            vec![(runner_name, autoscaler)]
        }
        None => {
            let ours: Vec<(&String, &toml::Table)> = all
                .iter()
                .filter_map(|(n, a)| a.map(|a| (n, a)))
                .filter(|(_, a)| {
                    a.get("plugin")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|p| p.to_ascii_lowercase().contains("proxmox"))
                })
                .collect();
            if ours.is_empty() {
                return Err(format!(
                    "could not find a runner using fleeting-plugin-proxmox in {name} (no [runners.autoscaler] plugin names it); \
                     its runners are {}; pick one with --runner NAME",
                    names()
                ));
            }
            ours
        }
    };
    Ok(chosen
        .into_iter()
        .map(|(runner_name, autoscaler)| {
            let plugin_config = autoscaler.get("plugin_config").map_or(Value::Null, to_json);
            let connector = autoscaler.get("connector_config").and_then(toml::Value::as_table);
            let set = |key: &str| {
                connector.and_then(|c| c.get(key)).and_then(toml::Value::as_str).is_some_and(|v| !v.is_empty())
            };
            let static_flag =
                connector.and_then(|c| c.get("use_static_credentials")).and_then(toml::Value::as_bool).unwrap_or(false);
            let runner_brings_credentials = static_flag || set("key_path") || set("password");
            let runner_max_instances =
                autoscaler.get("max_instances").and_then(toml::Value::as_integer).and_then(|n| u64::try_from(n).ok());
            Target {
                label: format!("runner \"{runner_name}\" in {name}"),
                plugin_config,
                runner_brings_credentials,
                runner_max_instances,
            }
        })
        .collect())
}

/// TOML → JSON as Runner does it (the plugin receives the table as JSON).
fn to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        toml::Value::Table(table) => Value::Object(table.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG_TOML: &str = r#"
concurrent = 4

[[runners]]
name = "docker-on-aws"
executor = "docker-autoscaler"
[runners.autoscaler]
plugin = "aws"
[runners.autoscaler.plugin_config]
name = "asg"

[[runners]]
name = "pve"
executor = "docker-autoscaler"
[runners.autoscaler]
plugin = "fleeting-plugin-proxmox"
max_instances = 12
[runners.autoscaler.connector_config]
use_static_credentials = true
[runners.autoscaler.plugin_config]
url = "https://pve:8006"
template_id = 9000
tags = ["ci"]
"#;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    #[test]
    fn picks_the_runners_using_this_plugin() {
        let (_dir, path) = write("config.toml", CONFIG_TOML);
        let targets = load(&path, None, None).unwrap();
        assert_eq!(targets.len(), 1);
        let target = &targets[0];
        assert!(target.label.starts_with("runner \"pve\" in "), "{}", target.label);
        assert_eq!(
            target.plugin_config,
            serde_json::json!({"url": "https://pve:8006", "template_id": 9000, "tags": ["ci"]})
        );
        assert!(target.runner_brings_credentials);
        assert_eq!(target.runner_max_instances, Some(12));
        assert!(!load(&path, None, Some(false)).unwrap()[0].runner_brings_credentials);
    }

    #[test]
    fn runner_by_name_and_clear_errors() {
        let (_dir, path) = write("config.toml", CONFIG_TOML);
        assert_eq!(
            load(&path, Some("docker-on-aws"), None).unwrap()[0].plugin_config,
            serde_json::json!({"name": "asg"})
        );
        let err = load(&path, Some("nope"), None).unwrap_err();
        assert!(err.contains("could not find runner \"nope\"") && err.contains("\"docker-on-aws\", \"pve\""), "{err}");
        let (_dir, other) = write("config.toml", "[[runners]]\nname = \"shell\"\nexecutor = \"shell\"\n");
        let err = load(&other, None, None).unwrap_err();
        assert!(err.contains("pick one with --runner NAME"), "{err}");
    }

    #[test]
    fn json_and_bare_toml() {
        let (_dir, path) = write("plugin.json", r#"{"url": "https://pve:8006"}"#);
        assert_eq!(load(&path, None, None).unwrap()[0].plugin_config["url"], "https://pve:8006");
        assert!(load(&path, Some("x"), None).unwrap_err().contains("not Runner's config.toml"));
        let (_dir, bare) = write("plugin.toml", "url = \"https://pve:8006\"\npool = \"ci\"\n");
        assert_eq!(load(&bare, None, None).unwrap()[0].plugin_config["pool"], "ci");
        let (_dir, broken) = write("plugin.json", "{");
        assert!(load(&broken, None, None).unwrap_err().contains("not valid JSON"));
    }
}
