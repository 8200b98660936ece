//! How pveproxy writes answers: the `{"data": …}` envelope, numbers the way
//! Perl prints them, errors with the text in the HTTP reason phrase, and
//! the connection closed after every error.

use std::collections::BTreeMap;
use std::io;

use axum::body::Body;
use axum::http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;
use serde_json::ser::{CompactFormatter, Formatter};

/// An API error as PVE raises it: a status, a message (the reason phrase),
/// and for parameter errors the per-parameter map.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub errors: Option<BTreeMap<String, String>>,
}

impl ApiError {
    pub fn new(status: u16, message: impl Into<String>) -> Self {
        Self { status, message: message.into(), errors: None }
    }

    /// A plain `die` in a handler: 500 with the message.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, message)
    }

    /// `raise_param_exc`: 400 `Parameter verification failed.`.
    pub fn parameters(errors: BTreeMap<String, String>) -> Self {
        Self { status: 400, message: "Parameter verification failed.".into(), errors: Some(errors) }
    }

    pub fn parameter(name: &str, problem: impl Into<String>) -> Self {
        Self::parameters(BTreeMap::from([(name.to_string(), problem.into())]))
    }

    /// `raise_perm_exc`: 403 `Permission check failed (<what>)`.
    pub fn permission(what: Option<String>) -> Self {
        match what {
            Some(what) => Self::new(403, format!("Permission check failed ({what})")),
            None => Self::new(403, "Permission check failed"),
        }
    }

    pub fn not_implemented(method: &str, path: &str) -> Self {
        Self::new(501, format!("Method '{method} {path}' not implemented"))
    }

    pub fn vm_not_found(node: &str, vmid: u32) -> Self {
        Self::internal(format!("Configuration file 'nodes/{node}/qemu-server/{vmid}.conf' does not exist"))
    }
}

/// The success payload of a handler, already serialised the Perl way.
#[derive(Debug, Clone)]
pub struct Reply {
    data: Vec<u8>,
    total: Option<u64>,
}

impl Reply {
    pub fn data<T: Serialize + ?Sized>(value: &T) -> Self {
        Self { data: perl_json(value), total: None }
    }

    /// `data` already serialised the Perl way (see `write_perl_json`).
    pub fn serialized(data: Vec<u8>) -> Self {
        Self { data, total: None }
    }

    /// The UPID this reply names, when it is a worker's (`"UPID:…"`).
    pub fn upid(&self) -> Option<String> {
        serde_json::from_slice::<String>(&self.data).ok().filter(|text| text.starts_with("UPID:"))
    }

    pub fn null() -> Self {
        Self { data: b"null".to_vec(), total: None }
    }

    pub fn with_total(mut self, total: u64) -> Self {
        self.total = Some(total);
        self
    }
}

/// The answer format: `/api2/json` or `/api2/extjs` (always 200, with
/// `success`), as Proxmox's own Rust client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    ExtJs,
}

/// Serialises like PVE's Perl JSON encoder: integral numbers without a
/// fraction (`2`, not `2.0`; Go clients decode them into integers), other
/// floats with 15 significant digits (`0.3`, not `0.30000000000000004`).
pub fn perl_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    if write_perl_json(&mut out, value).is_err() {
        return b"null".to_vec();
    }
    out
}

/// Appends `value` serialised like `perl_json`. Only maps with non-string
/// keys fail; no answer type has them.
pub fn write_perl_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) -> serde_json::Result<()> {
    value.serialize(&mut serde_json::Serializer::with_formatter(out, PerlFormatter))
}

struct PerlFormatter;

impl Formatter for PerlFormatter {
    fn write_f64<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f64) -> io::Result<()> {
        if !value.is_finite() {
            return CompactFormatter.write_f64(writer, value);
        }
        // The nearest double to a decimal with at most 12 places and 15
        // digits (0.0125) already is Perl's `%.15g`. The division proves
        // `value` is that double, not one a rounding multiplication merely
        // made look so (0.1 + 0.2).
        let scaled = (value * 1e12).round();
        let rounded = if scaled.abs() < 1e15 && scaled / 1e12 == value {
            value
        } else {
            format!("{value:.14e}").parse().unwrap_or(value)
        };
        if rounded.fract() == 0.0 && rounded.abs() < 1e15 {
            return write!(writer, "{}", rounded as i64);
        }
        CompactFormatter.write_f64(writer, rounded)
    }

    fn write_f32<W: ?Sized + io::Write>(&mut self, writer: &mut W, value: f32) -> io::Result<()> {
        self.write_f64(writer, f64::from(value))
    }
}

/// PVE's release decides whether error bodies carry `message` (8.4+).
#[derive(Debug, Clone, Copy)]
pub struct WireStyle {
    pub error_message_in_body: bool,
}

pub fn success(reply: &Reply, format: Format) -> Response<Body> {
    let mut body = Vec::with_capacity(reply.data.len() + 32);
    match format {
        Format::Json => {
            body.extend_from_slice(b"{\"data\":");
            body.extend_from_slice(&reply.data);
        }
        Format::ExtJs => {
            body.extend_from_slice(b"{\"success\":1,\"status\":200,\"data\":");
            body.extend_from_slice(&reply.data);
        }
    }
    if let Some(total) = reply.total {
        body.extend_from_slice(format!(",\"total\":{total}").as_bytes());
    }
    body.push(b'}');
    json_response(StatusCode::OK, body)
}

pub fn failure(error: &ApiError, format: Format, style: WireStyle) -> Response<Body> {
    let message = error.message.trim_end().to_string();
    match format {
        Format::Json => {
            let mut envelope = serde_json::Map::new();
            envelope.insert("data".into(), serde_json::Value::Null);
            if let Some(errors) = &error.errors {
                envelope.insert("errors".into(), serde_json::json!(errors));
            }
            if style.error_message_in_body {
                envelope.insert("message".into(), serde_json::Value::String(format!("{message}\n")));
            }
            let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = json_response(status, perl_json(&envelope));
            set_reason(&mut response, &message);
            close_after(&mut response);
            response
        }
        Format::ExtJs => {
            let mut envelope = serde_json::Map::new();
            envelope.insert("success".into(), 0.into());
            envelope.insert("status".into(), error.status.into());
            envelope.insert("message".into(), serde_json::Value::String(format!("{message}\n")));
            envelope.insert("data".into(), serde_json::Value::Null);
            if let Some(errors) = &error.errors {
                envelope.insert("errors".into(), serde_json::json!(errors));
            }
            json_response(StatusCode::OK, perl_json(&envelope))
        }
    }
}

/// A 401 from pveproxy's authentication step: no JSON body.
pub fn unauthorized(message: &str) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    set_reason(&mut response, message);
    close_after(&mut response);
    common_headers(&mut response);
    response
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json;charset=UTF-8"));
    common_headers(&mut response);
    response
}

fn common_headers(response: &mut Response<Body>) {
    let headers = response.headers_mut();
    headers.insert(header::SERVER, HeaderValue::from_static("pve-api-daemon/3.0"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
}

/// PVE's error text goes into the status line; only its first line, with
/// control characters removed, fits there.
pub fn set_reason(response: &mut Response<Body>, message: &str) {
    let line: String = message.lines().next().unwrap_or_default().chars().filter(|c| !c.is_control()).collect();
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(line.into_bytes()) {
        response.extensions_mut().insert(phrase);
    }
}

/// pveproxy closes the connection after every answer with status >= 400.
fn close_after(response: &mut Response<Body>) {
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_like_perl() {
        let value = serde_json::json!({ "maxcpu": 2.0, "cpu": 0.1 + 0.2, "big": 1.5e20, "n": 7 });
        assert_eq!(String::from_utf8(perl_json(&value)).unwrap(), r#"{"big":1.5e+20,"cpu":0.3,"maxcpu":2,"n":7}"#);
        let perl = |value: f64| String::from_utf8(perl_json(&value)).unwrap();
        assert_eq!(perl(0.0125), "0.0125");
        assert_eq!(perl(-2.5), "-2.5");
        assert_eq!(perl(0.7 + 0.1), "0.8", "0.7999999999999999 in 15 digits");
        assert_eq!(perl(1.0 / 3.0), "0.333333333333333");
        assert_eq!(perl(100.0 / 3.0), "33.3333333333333");
        assert_eq!(perl(4.35 * 100.0), "435", "434.99999999999994 in 15 digits");
    }

    #[test]
    fn envelopes() {
        let response = success(&Reply::data("105"), Format::Json);
        assert_eq!(response.status(), 200);
        let error = ApiError::parameter("vmid", "VM 105 already exists");
        let response = failure(&error, Format::Json, WireStyle { error_message_in_body: false });
        assert_eq!(response.status(), 400);
        assert_eq!(
            response.extensions().get::<hyper::ext::ReasonPhrase>().unwrap().as_bytes(),
            b"Parameter verification failed."
        );
        assert_eq!(response.headers()[header::CONNECTION], "close");
    }
}
