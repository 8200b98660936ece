//! Log capture: every tracing event of the test process as a JSON line in a
//! buffer (one global subscriber per test binary), and the same reading of
//! the plugin binary's hclog lines on stderr.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};
use tracing_subscriber::fmt::MakeWriter;

/// The buffer every event of this process is written to.
#[derive(Clone, Default)]
pub struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

static CAPTURE: OnceLock<Buffer> = OnceLock::new();

/// Installs (once) a subscriber that records every event at `filter`
/// (e.g. `trace`, or `fleeting_plugin_proxmox=debug`) as flat JSON lines,
/// and returns the buffer. Tests in one binary share it.
pub fn capture(filter: &str) -> Buffer {
    CAPTURE
        .get_or_init(|| {
            let buffer = Buffer::default();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(true)
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(buffer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("a tracing subscriber was already installed");
            buffer
        })
        .clone()
}

impl Buffer {
    /// Everything recorded so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self) -> Vec<LogLine> {
        parse_lines(&self.text())
    }

    /// Forgets what was recorded (for a test that wants its own lines only).
    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// One log event: its message and fields, from either our JSON capture
/// (`message`, flat fields) or the plugin's hclog lines (`@message`).
#[derive(Debug, Clone)]
pub struct LogLine {
    pub message: String,
    pub level: String,
    pub fields: Map<String, Value>,
    pub raw: String,
}

impl LogLine {
    pub fn field(&self, name: &str) -> Option<String> {
        self.fields.get(name).map(|value| match value {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }
}

pub fn parse_lines(text: &str) -> Vec<LogLine> {
    text.lines()
        .filter_map(|line| {
            let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(line) else { return None };
            let text_of = |keys: &[&str]| {
                keys.iter().find_map(|k| fields.get(*k).and_then(Value::as_str)).unwrap_or_default().to_string()
            };
            Some(LogLine {
                message: text_of(&["message", "@message"]),
                level: text_of(&["level", "@level"]).to_lowercase(),
                fields: fields.clone(),
                raw: line.to_string(),
            })
        })
        .collect()
}

/// Requests the PVE client logged (at debug) that change something on one
/// of `vmids`: any method but GET on `/nodes/{node}/qemu/{vmid}/…`, except
/// cloning the template (which only reads it).
pub fn writes_to(lines: &[LogLine], vmids: &[u32]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| line.message == "PVE request" || line.message == "PVE request failed")
        .filter_map(|line| {
            let method = line.field("method")?;
            let path = line.field("path")?;
            if method == "GET" {
                return None;
            }
            let vmid = qemu_vmid(&path)?;
            if !vmids.contains(&vmid) {
                return None;
            }
            if path.ends_with(&format!("/qemu/{vmid}/clone"))
                && vmid == fleeting_plugin_proxmox::sim::config::defaults::TEMPLATE_VMID
            {
                return None;
            }
            Some(format!("{method} {path}"))
        })
        .collect()
}

fn qemu_vmid(path: &str) -> Option<u32> {
    let mut parts = path.split('/');
    parts.find(|part| *part == "qemu")?;
    parts.next()?.parse().ok()
}

/// Every line that mentions `instance`.
pub fn about<'a>(lines: &'a [LogLine], instance: &str) -> Vec<&'a LogLine> {
    lines.iter().filter(|line| line.field("instance").as_deref() == Some(instance)).collect()
}
