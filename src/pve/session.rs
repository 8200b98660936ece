//! Per-client state behind every generated call: credentials, the current
//! ticket, and the retry policy. The generated client reaches it through
//! progenitor's `ClientHooks::exec`, so every operation, generated or not
//! wrapped yet, is authenticated, retried and logged the same way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use progenitor_client::{ClientHooks, ClientInfo, OperationInfo};
use rand::Rng;
use reqwest::header::{HeaderName, HeaderValue};
use tokio::sync::{Mutex, RwLock};

use super::api::{self, types};
use super::auth::TfaChallenge;
use super::credentials::{Credentials, PrivilegeCheck, SecondFactor, Secret};
use super::error::{self, Error, ErrorKind};
use super::lenient::PveBool;
use super::observer::{Observer, TicketEvent};

/// PVE tickets live two hours; renew well before.
const TICKET_RENEW_AFTER: Duration = Duration::from_secs(60 * 60);
const TICKET_LIFETIME: Duration = Duration::from_secs(2 * 60 * 60);
const LOGIN_OPERATION: &str = "post_access_ticket";

/// Bounded, jittered exponential backoff for transient failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included.
    pub max_attempts: u32,
    /// The wait before the second attempt (then doubled, with jitter).
    pub initial_delay: Duration,
    /// The longest wait between attempts.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 4, initial_delay: Duration::from_millis(250), max_delay: Duration::from_secs(4) }
    }
}

impl RetryPolicy {
    /// Delay before retry number `retry` (0-based): a random point in the
    /// upper half of the exponential step, so parallel clients spread out.
    pub fn delay(&self, retry: u32) -> Duration {
        let step = self.initial_delay.saturating_mul(2u32.saturating_pow(retry.min(16))).min(self.max_delay);
        let half = step / 2;
        half + rand::rng().random_range(Duration::ZERO..=half)
    }
}

/// The state the hooks see (`Client::inner`).
pub struct Session {
    auth: Auth,
    retry: RetryPolicy,
    observer: Option<Observer>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let auth = match &self.auth {
            Auth::Anonymous => "anonymous".to_string(),
            Auth::Token(_) => "API token".to_string(),
            Auth::Ticket(login) => format!("ticket for {}", login.userid),
        };
        f.debug_struct("Session").field("auth", &auth).field("retry", &self.retry).finish()
    }
}

enum Auth {
    /// Only for the login client itself.
    Anonymous,
    /// `Authorization: PVEAPIToken=…`, marked sensitive.
    Token(HeaderValue),
    Ticket(Box<TicketLogin>),
}

struct TicketLogin {
    userid: String,
    password: Secret,
    second_factor: SecondFactor,
    privilege_check: Option<PrivilegeCheck>,
    /// A client without credentials for `POST /access/ticket`; the hooks of
    /// the main client cannot call themselves.
    login_client: api::Client,
    /// The ticket in use. Readers never wait for a login in progress.
    current: RwLock<Option<Ticket>>,
    /// Serialises logins, so concurrent 401s cause one re-login, not many.
    login_lock: Mutex<()>,
    observer: Option<Observer>,
}

#[derive(Clone)]
struct Ticket {
    ticket: Secret,
    csrf_token: Secret,
    obtained: Instant,
    /// Increases with every login; a 401 re-login is skipped when another
    /// task already replaced the ticket it was sent with.
    generation: u64,
}

impl Session {
    pub(crate) fn anonymous(retry: RetryPolicy, observer: Option<Observer>) -> Arc<Self> {
        Arc::new(Self { auth: Auth::Anonymous, retry, observer })
    }

    /// Builds the session for `credentials`; ticket logins happen later, in
    /// [`Session::login`].
    pub(crate) fn new(
        credentials: &Credentials,
        retry: RetryPolicy,
        observer: Option<Observer>,
        login_client: api::Client,
    ) -> Result<Arc<Self>, Error> {
        let auth = match credentials {
            Credentials::Token { token_id, secret } => {
                let mut value =
                    HeaderValue::from_str(&format!("PVEAPIToken={token_id}={}", secret.expose())).map_err(|_| {
                        Error::setup(
                            "use the API token",
                            "`token_id` or `token_secret` contains characters not allowed in an HTTP header",
                        )
                    })?;
                value.set_sensitive(true);
                Auth::Token(value)
            }
            Credentials::Password { userid, password, second_factor, privilege_check } => {
                Auth::Ticket(Box::new(TicketLogin {
                    userid: userid.clone(),
                    password: password.clone(),
                    second_factor: second_factor.clone(),
                    privilege_check: privilege_check.clone(),
                    login_client,
                    current: RwLock::new(None),
                    login_lock: Mutex::new(()),
                    observer: observer.clone(),
                }))
            }
        };
        Ok(Arc::new(Self { auth, retry, observer }))
    }

    /// Logs in now (ticket credentials); a no-op for tokens.
    pub(crate) async fn login(&self) -> Result<(), Error> {
        if let Auth::Ticket(login) = &self.auth {
            login.refresh(None, true).await?;
        }
        Ok(())
    }

    /// Runs one generated request: authenticate, send, retry what is safe to
    /// retry, and re-login once on a 401.
    async fn execute(
        &self,
        client: &reqwest::Client,
        request: reqwest::Request,
        info: &OperationInfo,
    ) -> reqwest::Result<reqwest::Response> {
        let operation = info.operation_id;
        let is_login = operation == LOGIN_OPERATION;
        let idempotent = matches!(request.method().as_str(), "GET" | "HEAD" | "PUT" | "DELETE");
        let mut retries = 0;
        let mut relogged_in = false;
        let mut template = Some(request);
        loop {
            let Some(original) = template.take() else {
                unreachable!("the request template is restored before every retry")
            };
            // A body that cannot be cloned (a stream) is sent once.
            template = original.try_clone();
            let mut attempt = original;
            let generation = self.authorize(&mut attempt, is_login).await;
            let method = attempt.method().clone();
            let path = attempt.url().path().to_string();
            let started = Instant::now();
            let result = client.execute(attempt).await;
            let elapsed = started.elapsed();
            let elapsed_ms = elapsed.as_millis() as u64;
            if let Some(Observer(observer)) = &self.observer {
                observer.request(operation, result.as_ref().ok().map(|response| response.status().as_u16()), elapsed);
            }
            match &result {
                Ok(response) => {
                    tracing::debug!(operation, %method, path, status = response.status().as_u16(), elapsed_ms, "PVE request")
                }
                Err(err) => tracing::debug!(operation, %method, path, error = %err, elapsed_ms, "PVE request failed"),
            }
            let can_repeat = template.is_some();
            match &result {
                Ok(response) if response.status() == 401 && !is_login && !relogged_in && can_repeat => {
                    // Only a ticket can be renewed; a rejected token is final.
                    let Auth::Ticket(login) = &self.auth else { return result };
                    relogged_in = true;
                    tracing::info!(user = %login.userid, "PVE answered 401; logging in again");
                    if let Err(err) = login.refresh(generation, true).await {
                        tracing::warn!(error = %err, "re-login after 401 failed");
                        return result;
                    }
                    continue;
                }
                Ok(response) if is_transient_status(response.status().as_u16()) && idempotent => {}
                Err(err) if is_retryable_transport(err, idempotent) => {}
                _ => return result,
            }
            if !can_repeat || retries + 1 >= self.retry.max_attempts {
                return result;
            }
            let delay = self.retry.delay(retries);
            retries += 1;
            if let Some(Observer(observer)) = &self.observer {
                observer.retry(operation);
            }
            tracing::debug!(
                operation,
                retry = retries,
                delay_ms = delay.as_millis() as u64,
                "retrying transient PVE failure"
            );
            tokio::time::sleep(delay).await;
        }
    }

    /// Adds credentials to a request; returns the ticket generation used.
    async fn authorize(&self, request: &mut reqwest::Request, is_login: bool) -> Option<u64> {
        match &self.auth {
            Auth::Anonymous => None,
            Auth::Token(value) => {
                request.headers_mut().insert(reqwest::header::AUTHORIZATION, value.clone());
                None
            }
            Auth::Ticket(_) if is_login => None,
            Auth::Ticket(login) => {
                let ticket = match login.valid_ticket().await {
                    Some(ticket) => Some(ticket),
                    None => match login.refresh(None, false).await {
                        Ok(ticket) => Some(ticket),
                        Err(err) => {
                            // The request goes out without a ticket; PVE's 401 then reaches the caller.
                            tracing::warn!(error = %err, "could not obtain a PVE ticket");
                            None
                        }
                    },
                };
                let ticket = ticket?;
                let cookie = format!(
                    "PVEAuthCookie={}",
                    percent_encoding::utf8_percent_encode(ticket.ticket.expose(), percent_encoding::NON_ALPHANUMERIC)
                );
                if let Ok(mut value) = HeaderValue::from_str(&cookie) {
                    value.set_sensitive(true);
                    request.headers_mut().insert(reqwest::header::COOKIE, value);
                }
                if request.method() != reqwest::Method::GET
                    && let Ok(mut value) = HeaderValue::from_str(ticket.csrf_token.expose())
                {
                    value.set_sensitive(true);
                    request.headers_mut().insert(HeaderName::from_static("csrfpreventiontoken"), value);
                }
                Some(ticket.generation)
            }
        }
    }
}

fn is_transient_status(status: u16) -> bool {
    matches!(status, 502..=504 | 595 | 596)
}

fn is_retryable_transport(err: &reqwest::Error, idempotent: bool) -> bool {
    if error::is_certificate_problem(err) {
        return false;
    }
    // A failed connect never reached PVE, so even a POST is safe to repeat.
    err.is_connect() || (idempotent && (err.is_timeout() || err.is_request() || err.is_body()))
}

impl TicketLogin {
    fn observe(&self, event: TicketEvent) {
        if let Some(Observer(observer)) = &self.observer {
            observer.ticket(event);
        }
    }

    async fn valid_ticket(&self) -> Option<Ticket> {
        let current = self.current.read().await;
        current.as_ref().filter(|t| t.obtained.elapsed() < TICKET_RENEW_AFTER).cloned()
    }

    /// Renews or replaces the ticket. `seen_generation` is the ticket a failed
    /// request used: if it was replaced meanwhile, nothing is done. `full`
    /// skips renewal with the old ticket (after a 401 it is known bad).
    async fn refresh(&self, seen_generation: Option<u64>, full: bool) -> Result<Ticket, Error> {
        let _guard = self.login_lock.lock().await;
        let existing = self.current.read().await.clone();
        if let Some(existing) = &existing {
            let replaced = seen_generation.is_some_and(|seen| existing.generation != seen);
            let fresh = existing.obtained.elapsed() < TICKET_RENEW_AFTER;
            if replaced || (fresh && seen_generation.is_none() && !full) {
                return Ok(existing.clone());
            }
        }
        let generation = existing.as_ref().map_or(1, |t| t.generation + 1);
        let renewable = existing.as_ref().filter(|t| !full && t.obtained.elapsed() < TICKET_LIFETIME);
        let mut ticket = None;
        if let Some(old) = renewable {
            match self.renew(old).await {
                Ok(renewed) => {
                    self.observe(TicketEvent::Renewed);
                    ticket = Some(renewed);
                }
                Err(err) => {
                    self.observe(TicketEvent::RenewalFailed);
                    tracing::info!(error = %err, "ticket renewal failed; logging in with the password");
                }
            }
        }
        let (ticket_value, csrf_token) = match ticket {
            Some(pair) => pair,
            None => match self.full_login().await {
                Ok(pair) => {
                    self.observe(TicketEvent::Login);
                    pair
                }
                Err(err) => {
                    self.observe(TicketEvent::LoginFailed);
                    return Err(err);
                }
            },
        };
        let ticket = Ticket { ticket: ticket_value, csrf_token, obtained: Instant::now(), generation };
        *self.current.write().await = Some(ticket.clone());
        Ok(ticket)
    }

    /// Renewal: the current ticket is accepted as the password, without TFA.
    async fn renew(&self, old: &Ticket) -> Result<(Secret, Secret), Error> {
        let body = types::PostAccessTicketBody {
            username: self.userid.clone(),
            password: old.ticket.expose().to_string(),
            ..empty_ticket_body()
        };
        let data = self.post_ticket(&body, "renew the PVE ticket").await?;
        full_ticket(data, "renew the PVE ticket")
    }

    /// Password login with PVE's TFA challenge flow where the user has TFA.
    async fn full_login(&self) -> Result<(Secret, Secret), Error> {
        let action = format!("log in to PVE as {}", self.userid);
        let mut body = types::PostAccessTicketBody {
            username: self.userid.clone(),
            password: self.password.expose().to_string(),
            new_format: Some(PveBool(true)),
            ..empty_ticket_body()
        };
        let first = match self.post_ticket(&body, &action).await {
            Err(err) if rejects_new_format(&err) => {
                // PVE 7.0 knows only the old flow; a fixed code goes along
                // with the password there, as the seed plugin sent it.
                body.new_format = None;
                if let SecondFactor::FixedOtp(code) = &self.second_factor {
                    body.otp = Some(code.expose().to_string());
                }
                self.post_ticket(&body, &action).await?
            }
            other => other?,
        };
        let ticket_text = first.ticket.clone().unwrap_or_default();
        let needs_tfa = first.need_tfa.is_some_and(|flag| flag.0) || ticket_text.starts_with("PVE:!tfa!");
        let (ticket, csrf) = if !needs_tfa {
            full_ticket(first, &action)?
        } else {
            let challenge = TfaChallenge::from_ticket(&ticket_text).ok_or_else(|| {
                Error::new(
                    &action,
                    ErrorKind::Unauthorized {
                        message: "the user has two-factor authentication, which PVE 7.0 handles with a flow this plugin does not \
                                  support; use an API token (`token_id` + `token_secret`) or upgrade PVE"
                            .into(),
                    },
                )
            })?;
            let answer = challenge
                .response(&self.second_factor)
                .map_err(|message| Error::new(&action, ErrorKind::Unauthorized { message }))?;
            let second = types::PostAccessTicketBody {
                username: self.userid.clone(),
                password: answer.expose().to_string(),
                tfa_challenge: Some(ticket_text),
                new_format: Some(PveBool(true)),
                ..empty_ticket_body()
            };
            let data = self.post_ticket(&second, &action).await.map_err(|err| match err.kind() {
                ErrorKind::Unauthorized { .. } => Error::new(
                    &action,
                    ErrorKind::Unauthorized {
                        message: "PVE rejected the second factor; check that `totp_secret` belongs to this user and that this \
                                  machine's clock is correct (a fixed `otp` is valid only once)"
                            .into(),
                    },
                ),
                _ => err,
            })?;
            full_ticket(data, &action)?
        };
        if let Some(check) = &self.privilege_check {
            self.verify_privileges(&ticket, check).await?;
        }
        tracing::info!(user = %self.userid, "logged in to PVE");
        Ok((ticket, csrf))
    }

    /// The seed's `path`/`privs`: PVE's verification mode of the ticket call.
    async fn verify_privileges(&self, ticket: &Secret, check: &PrivilegeCheck) -> Result<(), Error> {
        let action = format!("verify that {} holds {} on {}", self.userid, check.privs, check.path);
        let body = types::PostAccessTicketBody {
            username: self.userid.clone(),
            password: ticket.expose().to_string(),
            path: Some(check.path.clone()),
            privs: Some(check.privs.clone()),
            ..empty_ticket_body()
        };
        match self.post_ticket(&body, &action).await {
            Ok(_) => Ok(()),
            Err(err) if matches!(err.kind(), ErrorKind::Unauthorized { .. }) => Err(Error::new(
                action,
                ErrorKind::PermissionDenied {
                    message: format!(
                        "PVE says the user lacks some of {} on {} (credentials file `path`/`privs`)",
                        check.privs, check.path
                    ),
                    path: Some(check.path.clone()),
                    privilege: Some(check.privs.clone()),
                },
            )),
            Err(err) => Err(err),
        }
    }

    async fn post_ticket(
        &self,
        body: &types::PostAccessTicketBody,
        action: &str,
    ) -> Result<types::PostAccessTicketResponseData, Error> {
        let response = match self.login_client.post_access_ticket(body).await {
            Ok(response) => response.into_inner(),
            Err(err) => {
                let err = error::from_api(action, err).await;
                return Err(match err.kind() {
                    ErrorKind::Unauthorized { .. } => Error::new(
                        action,
                        ErrorKind::Unauthorized {
                            message:
                                "PVE rejected the user name or password (it does not say which); check `username`, \
                                      `realm` and `password` in the credentials file"
                                    .into(),
                        },
                    ),
                    _ => err,
                });
            }
        };
        response.data.ok_or_else(|| {
            Error::new(action, ErrorKind::InvalidResponse { message: "the ticket answer has no data".into() })
        })
    }
}

fn empty_ticket_body() -> types::PostAccessTicketBody {
    types::PostAccessTicketBody {
        new_format: None,
        otp: None,
        password: String::new(),
        path: None,
        privs: None,
        realm: None,
        tfa_challenge: None,
        username: String::new(),
    }
}

fn rejects_new_format(err: &Error) -> bool {
    matches!(err.kind(), ErrorKind::InvalidParameter { errors, .. } if errors.contains_key("new-format"))
}

fn full_ticket(data: types::PostAccessTicketResponseData, action: &str) -> Result<(Secret, Secret), Error> {
    match (data.ticket, data.csrf_prevention_token) {
        (Some(ticket), Some(csrf)) if !ticket.starts_with("PVE:!tfa!") => Ok((Secret::new(ticket), Secret::new(csrf))),
        _ => Err(Error::new(
            action,
            ErrorKind::InvalidResponse { message: "the ticket answer lacks `ticket` or `CSRFPreventionToken`".into() },
        )),
    }
}

impl ClientHooks<Arc<Session>> for api::Client {
    async fn exec(&self, request: reqwest::Request, info: &OperationInfo) -> reqwest::Result<reqwest::Response> {
        // Boxed: a ticket login inside `execute` calls this hook again (on the
        // login client), which would make the future type infinitely large.
        Box::pin(self.inner().execute(self.client(), request, info)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        for retry in 0..10 {
            let delay = policy.delay(retry);
            let step = (100u64 << retry.min(16)).min(1000);
            assert!(
                delay >= Duration::from_millis(step / 2) && delay <= Duration::from_millis(step),
                "{retry}: {delay:?}"
            );
        }
    }
}
