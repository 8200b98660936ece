//! Errors of the Proxmox client, classified once at this boundary into the
//! kinds the instance group acts on (retry, treat as done, give up).

use std::collections::BTreeMap;
use std::fmt;

use super::task::Upid;

/// An error of one client operation: what was attempted, and why it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct Error {
    action: String,
    /// Boxed: an error travels through many `Result`s, which stay small.
    kind: Box<ErrorKind>,
}

/// What went wrong, in terms a caller can act on.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorKind {
    /// The VM, task, pool or node does not exist (anymore).
    NotFound {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// The object is locked or busy (`VM is locked (clone)`, `can't lock file … got timeout`).
    Locked {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// The object already exists; for clones, the VMID was taken meanwhile.
    AlreadyExists {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// 403: the user or token lacks a privilege.
    PermissionDenied {
        /// PVE's text.
        message: String,
        /// The ACL path PVE named.
        path: Option<String>,
        /// The missing privilege PVE named.
        privilege: Option<String>,
    },
    /// 401: credentials were rejected or the ticket expired.
    Unauthorized {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// 400: PVE rejected parameters; `errors` maps each parameter to its problem.
    InvalidParameter {
        /// PVE's summary.
        message: String,
        /// Parameter → problem.
        errors: BTreeMap<String, String>,
    },
    /// Worth retrying: 502/503/504, PVE's proxy errors 595/596, connection
    /// failures and timeouts.
    Transient {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// A worker task ended with an error.
    TaskFailed {
        /// The task.
        upid: Upid,
        /// Its exit status, PVE's error text.
        exit_status: String,
        /// The last lines of its log.
        log_tail: Vec<String>,
    },
    /// A worker task did not finish before its deadline.
    TaskTimeout {
        /// The task, still running.
        upid: Upid,
        /// How long the client waited.
        waited_secs: u64,
    },
    /// Any other error status from PVE.
    Api {
        /// The HTTP status.
        status: u16,
        /// PVE's text.
        message: String,
    },
    /// PVE answered, but not in the shape the schema promises.
    InvalidResponse {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// The server's certificate was not trusted (wrong fingerprint, unknown CA).
    Tls {
        /// The error text (PVE's own where it answered).
        message: String,
    },
    /// The client was set up wrongly (bad URL, unreadable file, bad TLS pin).
    Setup {
        /// The error text (PVE's own where it answered).
        message: String,
    },
}

impl Error {
    /// An error of `kind` while doing `action` (`clone VM 9000`).
    pub fn new(action: impl Into<String>, kind: ErrorKind) -> Self {
        Self { action: action.into(), kind: Box::new(kind) }
    }

    /// A setup error (bad URL, unreadable file, bad TLS pin).
    pub fn setup(action: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(action, ErrorKind::Setup { message: message.into() })
    }

    /// What went wrong.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// What the client was doing, as in `could not <action>: …`.
    pub fn action(&self) -> &str {
        &self.action
    }

    /// The object does not exist (anymore).
    pub fn is_not_found(&self) -> bool {
        matches!(*self.kind, ErrorKind::NotFound { .. })
    }

    /// The object is locked or busy; retrying later may work.
    pub fn is_locked(&self) -> bool {
        matches!(*self.kind, ErrorKind::Locked { .. })
    }

    /// The object exists already (for clones: the VMID was taken).
    pub fn is_already_exists(&self) -> bool {
        matches!(*self.kind, ErrorKind::AlreadyExists { .. })
    }

    /// Whether the same call may succeed if repeated later unchanged.
    pub fn is_retryable(&self) -> bool {
        matches!(*self.kind, ErrorKind::Transient { .. } | ErrorKind::Locked { .. })
    }

    /// Replaces the action, keeping the cause (used when a low-level call is
    /// part of a larger operation).
    pub fn with_action(mut self, action: impl Into<String>) -> Self {
        self.action = action.into();
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "could not {}: {}", self.action, self.kind)
    }
}

impl std::error::Error for Error {}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound { message }
            | Self::Locked { message }
            | Self::AlreadyExists { message }
            | Self::Unauthorized { message }
            | Self::Transient { message }
            | Self::InvalidResponse { message }
            | Self::Tls { message }
            | Self::Setup { message } => f.write_str(message),
            Self::PermissionDenied { message, path, privilege } => match (path, privilege) {
                (Some(path), Some(privilege)) => write!(
                    f,
                    "{message}: the user or token lacks privilege {privilege} on {path}; grant it, e.g. \
                     `pveum acl modify {path} --roles <role with {privilege}> --users <user>` (for a token: --tokens)"
                ),
                _ => f.write_str(message),
            },
            Self::InvalidParameter { message, errors } => {
                f.write_str(message)?;
                for (index, (name, problem)) in errors.iter().enumerate() {
                    let separator = if index == 0 { ": " } else { "; " };
                    write!(f, "{separator}{name}: {}", problem.trim_end())?;
                }
                Ok(())
            }
            Self::TaskFailed { upid, exit_status, log_tail } => {
                write!(f, "task {upid} failed: {exit_status}")?;
                if !log_tail.is_empty() {
                    write!(f, " (task log: {})", log_tail.join(" | "))?;
                }
                Ok(())
            }
            Self::TaskTimeout { upid, waited_secs } => {
                write!(f, "task {upid} was still running after {waited_secs} s")
            }
            Self::Api { status, message } => write!(f, "PVE answered {status}: {message}"),
        }
    }
}

/// Turns a generated-client error into a classified one, reading PVE's
/// error text from the reason phrase and the JSON body.
pub(crate) async fn from_api(action: impl Into<String>, error: progenitor_client::Error<()>) -> Error {
    use progenitor_client::Error as ApiError;
    let kind = match error {
        ApiError::UnexpectedResponse(response) => from_response(response).await,
        ApiError::CommunicationError(err) | ApiError::ResponseBodyError(err) | ApiError::InvalidUpgrade(err) => {
            from_transport(&err)
        }
        ApiError::ErrorResponse(value) => {
            ErrorKind::Api { status: value.status().as_u16(), message: "error response".into() }
        }
        ApiError::InvalidResponsePayload(bytes, err) => ErrorKind::InvalidResponse {
            message: format!(
                "PVE's answer does not match the API schema ({err}); it began with: {}",
                printable_prefix(&bytes)
            ),
        },
        ApiError::InvalidRequest(message) => ErrorKind::Setup { message },
        ApiError::Custom(message) => ErrorKind::Setup { message },
    };
    Error::new(action, kind)
}

/// Classifies a failed exchange (no HTTP answer).
pub(crate) fn from_transport(err: &reqwest::Error) -> ErrorKind {
    let message = error_chain(err);
    if is_certificate_problem(err) {
        ErrorKind::Tls {
            message: format!(
                "{message}; the server's certificate is not trusted: set `tls_fingerprint` to the fingerprint PVE shows \
                 (node → System → Certificates), or `ca_file` to the cluster CA (/etc/pve/pve-root-ca.pem)"
            ),
        }
    } else {
        ErrorKind::Transient { message }
    }
}

/// Whether a transport error is about the certificate (never worth a retry).
pub(crate) fn is_certificate_problem(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if current.downcast_ref::<rustls::Error>().is_some() {
            return true;
        }
        let text = current.to_string().to_ascii_lowercase();
        if text.contains("certificate") {
            return true;
        }
        source = current.source();
    }
    false
}

fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut source = err.source();
    while let Some(current) = source {
        let text = current.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = current.source();
    }
    parts.join(": ")
}

async fn from_response(response: reqwest::Response) -> ErrorKind {
    let status = response.status();
    let reason = response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|phrase| String::from_utf8_lossy(phrase.as_bytes()).trim().to_string())
        .filter(|phrase| !phrase.is_empty());
    let body = response.bytes().await.unwrap_or_default();
    let json: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let body_message = json
        .as_ref()
        .and_then(|v| v.get("message"))
        .and_then(serde_json::Value::as_str)
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    let mut errors = BTreeMap::new();
    if let Some(serde_json::Value::Object(map)) = json.as_ref().and_then(|v| v.get("errors")) {
        for (name, problem) in map {
            let problem = problem.as_str().map_or_else(|| problem.to_string(), str::to_string);
            errors.insert(name.clone(), problem);
        }
    }
    let message = match (reason, body_message) {
        (Some(reason), _) => reason,
        (None, Some(message)) => message,
        (None, None) => {
            let canonical = status.canonical_reason().unwrap_or("error").to_string();
            if json.is_none() && !body.is_empty() {
                // Typically an HTML page from a reverse proxy in front of PVE.
                format!("{canonical} (not a PVE answer; the body began with: {})", printable_prefix(&body))
            } else {
                canonical
            }
        }
    };
    classify_status(status.as_u16(), message, errors)
}

fn printable_prefix(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(160)]);
    let cleaned: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    format!("{:?}", cleaned.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// Classifies an HTTP error answer of PVE by status and text.
pub(crate) fn classify_status(status: u16, message: String, errors: BTreeMap<String, String>) -> ErrorKind {
    let lower = message.to_ascii_lowercase();
    match status {
        400 => {
            if errors.values().any(|e| e.contains("already exists")) {
                ErrorKind::AlreadyExists { message: describe_parameter_errors(&message, &errors) }
            } else {
                ErrorKind::InvalidParameter { message, errors }
            }
        }
        401 => ErrorKind::Unauthorized { message },
        403 => {
            let (path, privilege) = parse_permission_check(&message).unzip();
            ErrorKind::PermissionDenied { message, path, privilege }
        }
        404 => ErrorKind::NotFound { message },
        502..=504 | 595 | 596 => ErrorKind::Transient { message },
        _ if lower.contains("does not exist") || lower.contains("no such ") || lower.contains("not found") => {
            ErrorKind::NotFound { message }
        }
        _ if lower.contains("already exists") => ErrorKind::AlreadyExists { message },
        _ if lower.contains("is locked") || (lower.contains("can't lock file") && lower.contains("timeout")) => {
            ErrorKind::Locked { message }
        }
        _ => ErrorKind::Api { status, message },
    }
}

fn describe_parameter_errors(message: &str, errors: &BTreeMap<String, String>) -> String {
    let details: Vec<String> = errors.iter().map(|(k, v)| format!("{k}: {}", v.trim_end())).collect();
    format!("{message}: {}", details.join("; "))
}

/// `Permission check failed (/vms/100, VM.Allocate)` → (`/vms/100`, `VM.Allocate`).
fn parse_permission_check(message: &str) -> Option<(String, String)> {
    let start = message.find("Permission check failed (")? + "Permission check failed (".len();
    let inner = &message[start..];
    let inner = &inner[..inner.find(')')?];
    let (path, privilege) = inner.split_once(',')?;
    Some((path.trim().to_string(), privilege.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_pve_messages() {
        let kind = |status, text: &str| classify_status(status, text.to_string(), BTreeMap::new());
        assert!(matches!(
            kind(500, "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"),
            ErrorKind::NotFound { .. }
        ));
        assert!(matches!(kind(500, "VM is locked (clone)"), ErrorKind::Locked { .. }));
        assert!(matches!(
            kind(500, "can't lock file '/var/lock/qemu-server/lock-100.conf' - got timeout"),
            ErrorKind::Locked { .. }
        ));
        assert!(matches!(
            kind(500, "unable to create VM 105: config file already exists"),
            ErrorKind::AlreadyExists { .. }
        ));
        assert!(matches!(kind(503, "Service Unavailable"), ErrorKind::Transient { .. }));
        assert!(matches!(kind(596, "Broken pipe"), ErrorKind::Transient { .. }));
        assert!(matches!(kind(500, "VM 101 is running - destroy failed"), ErrorKind::Api { status: 500, .. }));
        assert!(matches!(kind(401, "authentication failure"), ErrorKind::Unauthorized { .. }));
    }

    #[test]
    fn permission_errors_name_privilege_and_path() {
        let kind = classify_status(403, "Permission check failed (/vms/100, VM.Allocate)".into(), BTreeMap::new());
        let ErrorKind::PermissionDenied { path, privilege, .. } = &kind else { panic!("{kind:?}") };
        assert_eq!(path.as_deref(), Some("/vms/100"));
        assert_eq!(privilege.as_deref(), Some("VM.Allocate"));
        let error = Error::new("clone VM 100", kind);
        assert!(error.to_string().starts_with("could not clone VM 100: Permission check failed"), "{error}");
        assert!(error.to_string().contains("lacks privilege VM.Allocate on /vms/100"), "{error}");
    }

    #[test]
    fn parameter_errors_keep_every_parameter() {
        let errors = BTreeMap::from([("newid".to_string(), "value must be at least 100\n".to_string())]);
        let kind = classify_status(400, "Parameter verification failed.".into(), errors);
        assert_eq!(kind.to_string(), "Parameter verification failed.: newid: value must be at least 100");
        let errors = BTreeMap::from([("vmid".to_string(), "VM 105 already exists".to_string())]);
        assert!(matches!(
            classify_status(400, "Parameter verification failed.".into(), errors),
            ErrorKind::AlreadyExists { .. }
        ));
    }
}
