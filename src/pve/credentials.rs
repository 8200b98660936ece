//! The credentials file: the seed plugin's JSON (`realm`, `username`,
//! `password`, `otp`, and its undocumented `path`/`privs`), extended with API
//! tokens (`token_id`, `token_secret`) and a TOTP secret (`totp_secret`).

use std::fmt;
use std::path::Path;

use serde::Deserialize;

/// A value that must never be printed: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How the client authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `Authorization: PVEAPIToken=<token_id>=<secret>`; no ticket, no TFA.
    Token {
        /// `user@realm!tokenid`.
        token_id: String,
        /// The token's secret (a UUID).
        secret: Secret,
    },
    /// Ticket login with a password, optionally with a second factor.
    Password {
        /// `user@realm`.
        userid: String,
        /// The user's password.
        password: Secret,
        /// How to answer a TFA challenge, if PVE sends one.
        second_factor: SecondFactor,
        /// The seed's `path` + `privs`: after login, PVE is asked to verify
        /// that the user holds `privs` on `path` (`POST /access/ticket`'s
        /// verification mode); login fails early if not.
        privilege_check: Option<PrivilegeCheck>,
    },
}

/// The second factor for PVE's TFA challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondFactor {
    /// No second factor configured (a TFA challenge fails the login).
    None,
    /// A fixed one-time code (seed compatibility): valid only for one login.
    FixedOtp(Secret),
    /// A base32 TOTP secret: a fresh code is computed for every login.
    TotpSecret(Secret),
}

/// Privileges to verify right after login (the seed plugin's `path` and `privs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrivilegeCheck {
    /// An ACL path such as `/pool/ci`.
    pub path: String,
    /// Comma-separated privileges such as `VM.Allocate,VM.Clone`.
    pub privs: String,
}

/// Every field the file may carry. Unknown fields are rejected with a hint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CredentialsFile {
    realm: Option<String>,
    username: Option<String>,
    password: Option<String>,
    otp: Option<String>,
    path: Option<String>,
    privs: Option<String>,
    token_id: Option<String>,
    token_secret: Option<String>,
    totp_secret: Option<String>,
}

const FIELDS: &[&str] =
    &["realm", "username", "password", "otp", "path", "privs", "token_id", "token_secret", "totp_secret"];

/// Every problem found in a credentials file, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not load credentials file {source_name}: {}", problems.join("; "))]
pub struct CredentialsError {
    /// The file's path, as given.
    pub source_name: String,
    /// One message per problem.
    pub problems: Vec<String>,
}

impl Credentials {
    /// Reads and validates a credentials file; warns when others can read it.
    pub fn load(path: &Path) -> Result<Self, CredentialsError> {
        let source_name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|err| CredentialsError {
            source_name: source_name.clone(),
            problems: vec![format!("{err}; check `credentials_file_path`")],
        })?;
        warn_if_readable_by_others(path);
        Self::parse(&text, &source_name)
    }

    /// Validates the JSON text of a credentials file.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, CredentialsError> {
        let fail = |problems: Vec<String>| CredentialsError { source_name: source_name.to_string(), problems };
        let file: CredentialsFile = serde_json::from_str(text).map_err(|err| fail(vec![describe_json_error(&err)]))?;
        let mut problems = Vec::new();
        let non_empty =
            |value: &Option<String>| value.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_string);

        let realm = non_empty(&file.realm);
        let username = non_empty(&file.username);
        let userid = match (&username, &realm) {
            (Some(user), _) if user.contains('@') => {
                if let Some(realm) = &realm
                    && !user.ends_with(&format!("@{realm}"))
                {
                    problems.push(format!(
                        "`username` {user} names a realm other than `realm` {realm}; drop `realm` or the `@…` part"
                    ));
                }
                Some(user.clone())
            }
            (Some(user), Some(realm)) => Some(format!("{user}@{realm}")),
            (Some(user), None) => {
                problems.push(format!(
                    "`username` {user} has no realm; add `\"realm\": \"pam\"` (or pve, …) or write it as {user}@<realm>"
                ));
                None
            }
            (None, _) => None,
        };

        let token_id = non_empty(&file.token_id);
        let token_secret = non_empty(&file.token_secret);
        let password = non_empty(&file.password);
        let otp = non_empty(&file.otp);
        let totp_secret = non_empty(&file.totp_secret);

        if token_id.is_some() || token_secret.is_some() {
            if password.is_some() || otp.is_some() || totp_secret.is_some() {
                problems.push(
                    "both an API token and a password are set; keep `token_id` + `token_secret` (recommended) or `password`, not both"
                        .to_string(),
                );
            }
            let full_token_id = match (&token_id, &userid) {
                (Some(id), _) if id.contains('!') => {
                    if !id.contains('@') {
                        problems.push(format!("`token_id` {id} must read user@realm!tokenname"));
                    }
                    Some(id.clone())
                }
                (Some(id), Some(userid)) => Some(format!("{userid}!{id}")),
                (Some(id), None) => {
                    problems.push(format!(
                        "`token_id` {id} is only a token name; write it as user@realm!{id} or set `username` and `realm`"
                    ));
                    None
                }
                (None, _) => {
                    problems.push(
                        "`token_secret` is set without `token_id`; add `\"token_id\": \"user@realm!tokenname\"`".into(),
                    );
                    None
                }
            };
            if token_secret.is_none() {
                problems.push(
                    "`token_id` is set without `token_secret`; add the secret PVE showed when the token was created"
                        .into(),
                );
            }
            if !problems.is_empty() {
                return Err(fail(problems));
            }
            return Ok(Self::Token {
                token_id: full_token_id.unwrap_or_default(),
                secret: Secret::new(token_secret.unwrap_or_default()),
            });
        }

        if username.is_none() {
            problems
                .push("no credentials: set `token_id` + `token_secret`, or `username` + `realm` + `password`".into());
        }
        if password.is_none() && username.is_some() {
            problems.push("`password` is missing; add it, or use an API token (`token_id` + `token_secret`)".into());
        }
        let second_factor = match (otp, totp_secret) {
            (Some(_), Some(_)) => {
                problems.push(
                    "both `otp` and `totp_secret` are set; keep `totp_secret` (codes stay valid across ticket renewals)".into(),
                );
                SecondFactor::None
            }
            (Some(otp), None) => SecondFactor::FixedOtp(Secret::new(otp)),
            (None, Some(secret)) => match super::auth::totp_from_base32(&secret) {
                Ok(_) => SecondFactor::TotpSecret(Secret::new(secret)),
                Err(problem) => {
                    problems.push(format!("`totp_secret` {problem}"));
                    SecondFactor::None
                }
            },
            (None, None) => SecondFactor::None,
        };
        let privilege_check = match (non_empty(&file.path), non_empty(&file.privs)) {
            (Some(path), Some(privs)) => {
                if !path.starts_with('/') {
                    problems.push(format!("`path` {path} must be an ACL path such as /pool/ci or /vms/100"));
                }
                Some(PrivilegeCheck { path, privs })
            }
            (None, None) => None,
            (Some(_), None) => {
                problems.push(
                    "`path` is set without `privs`; add e.g. `\"privs\": \"VM.Allocate,VM.Clone\"` or drop `path`"
                        .into(),
                );
                None
            }
            (None, Some(_)) => {
                problems
                    .push("`privs` is set without `path`; add e.g. `\"path\": \"/pool/ci\"` or drop `privs`".into());
                None
            }
        };
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(Self::Password {
            userid: userid.unwrap_or_default(),
            password: Secret::new(password.unwrap_or_default()),
            second_factor,
            privilege_check,
        })
    }

    /// The user (or token) id, for log lines.
    pub fn principal(&self) -> &str {
        match self {
            Self::Token { token_id, .. } => token_id,
            Self::Password { userid, .. } => userid,
        }
    }
}

fn describe_json_error(err: &serde_json::Error) -> String {
    let text = err.to_string();
    if let Some(rest) = text.strip_prefix("unknown field `")
        && let Some(field) = rest.split('`').next()
    {
        let hint = closest_field(field).map(|known| format!("; did you mean `{known}`?")).unwrap_or_default();
        return format!("unknown field `{field}` (line {}){hint}; known fields: {}", err.line(), FIELDS.join(", "));
    }
    // serde's own text may quote the offending value, which could be a
    // secret; only the position and the kind of problem are reported.
    let problem = match err.classify() {
        serde_json::error::Category::Data => "a value has the wrong type (every field is a JSON string)",
        serde_json::error::Category::Eof => "the file ends too early",
        serde_json::error::Category::Syntax | serde_json::error::Category::Io => "syntax error",
    };
    format!("not valid credentials JSON at line {} column {}: {problem}", err.line(), err.column())
}

fn closest_field(field: &str) -> Option<&'static str> {
    FIELDS
        .iter()
        .map(|known| (strsim::damerau_levenshtein(field, known), *known))
        .filter(|(distance, known)| *distance <= 2.max(known.len() / 3))
        .min()
        .map(|(_, known)| known)
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{mode:o}"),
                "credentials file is readable by other users; run `chmod 600 {}`",
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Credentials, CredentialsError> {
        Credentials::parse(text, "creds.json")
    }

    #[test]
    fn seed_file_with_separate_realm() {
        let creds = parse(r#"{"realm":"pve","username":"gitlab","password":"hunter2","otp":"123456"}"#).unwrap();
        let Credentials::Password { userid, second_factor, .. } = &creds else { panic!() };
        assert_eq!(userid, "gitlab@pve");
        assert_eq!(second_factor, &SecondFactor::FixedOtp(Secret::new("123456")));
        assert!(!format!("{creds:?}").contains("hunter2"), "secrets must not reach Debug output");
    }

    #[test]
    fn token_forms() {
        let creds = parse(r#"{"token_id":"ci@pve!fleeting","token_secret":"aaaa-bbbb"}"#).unwrap();
        assert_eq!(creds.principal(), "ci@pve!fleeting");
        let creds = parse(r#"{"username":"ci","realm":"pve","token_id":"fleeting","token_secret":"s"}"#).unwrap();
        assert_eq!(creds.principal(), "ci@pve!fleeting");
    }

    #[test]
    fn reports_every_problem_at_once() {
        let err =
            parse(r#"{"username":"ci","otp":"1","totp_secret":"JBSWY3DPEHPK3PXP","path":"/pool/x"}"#).unwrap_err();
        assert_eq!(err.problems.len(), 4, "{err}");
        let text = err.to_string();
        assert!(text.contains("has no realm"), "{text}");
        assert!(text.contains("`password` is missing"), "{text}");
        assert!(text.contains("both `otp` and `totp_secret`"), "{text}");
        assert!(text.contains("`path` is set without `privs`"), "{text}");
    }

    #[test]
    fn unknown_field_suggests_the_closest() {
        let err = parse(r#"{"usrname":"ci@pam","password":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("did you mean `username`?"), "{err}");
        let err = parse(r#"{"username": "ci@pam", "password": "x" "#).unwrap_err();
        assert!(err.to_string().contains("not valid credentials JSON at line 1"), "{err}");
        let err = parse(r#"{"username": "ci@pam", "password": 987654}"#).unwrap_err();
        assert!(err.to_string().contains("wrong type"), "{err}");
        assert!(!err.to_string().contains("987654"), "a mistyped secret must not be echoed: {err}");
    }

    #[test]
    fn totp_secret_must_be_base32() {
        let err = parse(r#"{"username":"ci@pam","password":"x","totp_secret":"not base32!"}"#).unwrap_err();
        assert!(err.to_string().contains("`totp_secret`"), "{err}");
        assert!(!err.to_string().contains("not base32!"), "the secret itself must not be echoed: {err}");
    }

    #[test]
    fn token_and_password_conflict() {
        let err = parse(r#"{"token_id":"a@pve!t","token_secret":"s","password":"p"}"#).unwrap_err();
        assert!(err.to_string().contains("both an API token and a password"), "{err}");
    }
}
