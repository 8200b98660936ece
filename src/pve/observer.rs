//! What the client reports about its own traffic, for whoever keeps
//! metrics. The client knows nothing of metrics; the plugin plugs an
//! observer in through [`ClientConfig::observer`](super::ClientConfig).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// Receives one call per HTTP exchange, retry and ticket event. Calls come
/// from the request's own task: keep them cheap and never block.
pub trait RequestObserver: Send + Sync {
    /// One HTTP exchange ended: `operation` is the API schema's operation id
    /// (a bounded set), `status` the HTTP status, `None` when no answer came
    /// (refused connection, timeout, dropped connection).
    fn request(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
    /// A failed exchange of `operation` is sent again.
    fn retry(&self, operation: &'static str);
    /// A ticket was obtained, renewed, or could not be.
    fn ticket(&self, event: TicketEvent);
}

/// What happened to the session's ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TicketEvent {
    /// Logged in with the password (first login, or after the ticket expired or was refused).
    Login,
    /// The ticket was renewed with itself.
    Renewed,
    /// Renewal was refused; a password login follows.
    RenewalFailed,
    /// The password login failed.
    LoginFailed,
}

impl TicketEvent {
    /// A short name for a label or a log field.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Renewed => "renewed",
            Self::RenewalFailed => "renewal_failed",
            Self::LoginFailed => "login_failed",
        }
    }
}

/// The observer a [`ClientConfig`](super::ClientConfig) carries; `Debug` so
/// the config stays printable.
#[derive(Clone)]
pub struct Observer(pub Arc<dyn RequestObserver>);

impl fmt::Debug for Observer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Observer")
    }
}
