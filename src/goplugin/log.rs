//! `tracing` events as hclog JSON lines on stderr, the format go-plugin's
//! host parses (`log_entry.go`): `@level`, `@message`, `@timestamp` in Go's
//! `2006-01-02T15:04:05.000000Z07:00` layout, plus every field as a key.
//! Runner then shows them under `fleeting-plugin` at the right level.
//! stdout is never written: it belongs to the handshake line.

use std::fmt::Write as _;
use std::io::Write as _;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Writes one JSON line per event to stderr (or, in tests, to any writer).
pub struct HclogLayer<W = fn() -> std::io::Stderr> {
    make_writer: W,
}

impl HclogLayer {
    /// The plugin's layer: stderr, which go-plugin's host reads.
    pub fn stderr() -> Self {
        Self { make_writer: std::io::stderr }
    }
}

impl<W> HclogLayer<W>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    /// The same lines to another writer.
    pub fn with_writer(make_writer: W) -> Self {
        Self { make_writer }
    }
}

/// hclog's level names.
fn level_name(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => "trace",
        Level::DEBUG => "debug",
        Level::INFO => "info",
        Level::WARN => "warn",
        Level::ERROR => "error",
    }
}

/// Go's `2006-01-02T15:04:05.000000Z07:00`: exactly six fractional digits.
pub fn go_timestamp(now: chrono::DateTime<chrono::Utc>) -> String {
    now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Formats one event as an hclog JSON line (without the newline).
pub fn format_line(
    level: &Level,
    message: &str,
    fields: Map<String, Value>,
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let mut object = Map::new();
    object.insert("@level".into(), Value::String(level_name(level).into()));
    object.insert("@message".into(), Value::String(message.into()));
    object.insert("@timestamp".into(), Value::String(go_timestamp(now)));
    for (key, value) in fields {
        // Reserved keys stay hclog's; a field of the same name is renamed.
        let key = if key.starts_with('@') { format!("field{key}") } else { key };
        object.insert(key, value);
    }
    serde_json::to_string(&Value::Object(object)).unwrap_or_default()
}

#[derive(Default)]
struct FieldCollector {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for FieldCollector {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields.insert(field.name().to_string(), Value::String(value.to_string()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().to_string(), Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().to_string(), Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.fields.insert(field.name().to_string(), Value::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.fields.insert(field.name().to_string(), Value::from(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().to_string(), Value::String(text));
        }
    }
}

/// A span's fields, kept for the events inside it: an instance's and an
/// Increase batch's ids reach every line logged on their behalf.
struct SpanFields(Map<String, Value>);

impl<S, W> Layer<S> for HclogLayer<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + 'static,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut collector = FieldCollector::default();
        attrs.record(&mut collector);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collector.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // Outer spans first; the event's own fields win over all of them.
        let mut fields = Map::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(SpanFields(span_fields)) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.iter().map(|(key, value)| (key.clone(), value.clone())));
                }
            }
        }
        let mut collector = FieldCollector { fields, ..FieldCollector::default() };
        event.record(&mut collector);
        let line = format_line(event.metadata().level(), &collector.message, collector.fields, chrono::Utc::now());
        let mut writer = self.make_writer.make_writer();
        // One write per line, so lines of concurrent events never interleave.
        let _ = writer.write_all(format!("{line}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn lines_parse_like_hclog_output() {
        let now = chrono::Utc.with_ymd_and_hms(2026, 8, 1, 10, 0, 0).unwrap() + chrono::Duration::microseconds(123_456);
        let mut fields = Map::new();
        fields.insert("vmid".into(), Value::from(105));
        fields.insert("@level".into(), Value::from("sneaky"));
        let line = format_line(&Level::WARN, "instance created", fields, now);
        let parsed: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["@level"], "warn");
        assert_eq!(parsed["@message"], "instance created");
        assert_eq!(parsed["@timestamp"], "2026-08-01T10:00:00.123456Z");
        assert_eq!(parsed["vmid"], 105);
        assert_eq!(parsed["field@level"], "sneaky");
    }
}
