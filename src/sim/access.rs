//! Users, API tokens, groups, roles and ACLs, and PVE's privilege
//! computation over them (pve-access-control's `roles`/`permission` and
//! RPCEnvironment's `permissions`).
//!
//! Rules reproduced:
//! - walking the path from `/` to the object, an ACL on a deeper path
//!   replaces what was inherited; at intermediate levels only propagating
//!   entries count; entries naming the user or token win over group entries;
//! - `NoAccess` anywhere in the effective roles means nothing;
//! - a VM or storage in a pool also gets what `/pool/<pool>` grants;
//! - a privilege-separated token gets the intersection of its own and its
//!   user's privileges; one without separation gets the user's;
//! - `root@pam` may do anything; disabled users nothing.

use std::collections::{HashMap, HashSet};

use super::SimError;
use super::clock::SimTime;
use super::config::{AclSpec, Scenario};
use super::privileges::{self, PrivilegeSet};
use super::release::PveRelease;
use super::totp::TotpKey;

/// Who is calling: a user with a ticket, or an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    User { userid: String },
    Token { userid: String, tokenid: String },
}

impl Caller {
    /// The id PVE writes into UPIDs and task lists (`user@realm!token` for tokens).
    pub fn id(&self) -> &str {
        match self {
            Self::User { userid } => userid,
            Self::Token { tokenid, .. } => tokenid,
        }
    }

    pub fn userid(&self) -> &str {
        match self {
            Self::User { userid } | Self::Token { userid, .. } => userid,
        }
    }

    /// Only the `root@pam` user itself (not its tokens) passes PVE's
    /// "only root" checks (`skiplock`, `lock`).
    pub fn is_root(&self) -> bool {
        matches!(self, Self::User { userid } if userid == "root@pam")
    }
}

pub struct User {
    password: Option<String>,
    totp: Option<TotpKey>,
    pub enabled: bool,
    groups: Vec<String>,
}

impl User {
    pub fn has_tfa(&self) -> bool {
        self.totp.is_some()
    }

    pub fn password_matches(&self, password: &str) -> bool {
        self.password.as_deref().is_some_and(|expected| constant_time_eq(expected.as_bytes(), password.as_bytes()))
    }

    /// TOTP codes are computed from the caller's wall clock, so they are
    /// checked against real time, not the simulated clock.
    pub fn totp_matches(&self, code: &str) -> bool {
        self.totp.as_ref().is_some_and(|totp| totp.accepts_now(code))
    }
}

struct Token {
    userid: String,
    secret: String,
    privsep: bool,
    expire: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    User(String),
    Token(String),
    Group(String),
}

struct AclEntry {
    subject: Subject,
    privileges: PrivilegeSet,
    no_access: bool,
    propagate: bool,
}

/// Why a request carries no valid identity (pveproxy answers 401).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    NoTicket,
    Invalid,
}

pub struct Access {
    version: PveRelease,
    users: HashMap<String, User>,
    tokens: HashMap<String, Token>,
    group_members: HashMap<String, HashSet<String>>,
    roles: HashMap<String, PrivilegeSet>,
    acl: HashMap<String, Vec<AclEntry>>,
}

impl Access {
    pub fn from_scenario(scenario: &Scenario, version: &PveRelease) -> Result<Self, SimError> {
        let mut problems = Vec::new();
        let mut roles: HashMap<String, PrivilegeSet> =
            privileges::builtin_roles(version).into_iter().map(|(name, set)| (name.to_string(), set)).collect();
        for (name, privs) in &scenario.roles {
            if roles.contains_key(name) && privileges::builtin_roles(version).iter().any(|(n, _)| n == name) {
                problems.push(format!("role {name}: a built-in role cannot be redefined"));
                continue;
            }
            let mut set = PrivilegeSet::EMPTY;
            for privilege in privs {
                if !privileges::exists_in(privilege, version) || !set.insert(privilege) {
                    problems.push(format!("role {name}: privilege {privilege} does not exist in PVE {version}"));
                }
            }
            roles.insert(name.clone(), set);
        }

        let mut users = HashMap::new();
        let mut tokens = HashMap::new();
        let mut group_members: HashMap<String, HashSet<String>> = HashMap::new();
        for spec in &scenario.users {
            if !valid_userid(&spec.userid) {
                problems.push(format!("user `{}`: a user id reads name@realm", spec.userid));
                continue;
            }
            let totp = match &spec.totp_secret {
                Some(secret) => match TotpKey::from_base32(secret) {
                    Ok(totp) => Some(totp),
                    Err(problem) => {
                        problems.push(format!("user {}: totp_secret {problem}", spec.userid));
                        None
                    }
                },
                None => None,
            };
            for group in &spec.groups {
                group_members.entry(group.clone()).or_default().insert(spec.userid.clone());
            }
            for token in &spec.tokens {
                if token.id.is_empty() || !token.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    problems.push(format!(
                        "user {}: token id `{}` must be letters, digits, `-`, `_` or `.`",
                        spec.userid, token.id
                    ));
                    continue;
                }
                tokens.insert(
                    format!("{}!{}", spec.userid, token.id),
                    Token {
                        userid: spec.userid.clone(),
                        secret: token.secret.clone(),
                        privsep: token.privsep,
                        expire: token.expire,
                    },
                );
            }
            users.insert(
                spec.userid.clone(),
                User { password: spec.password.clone(), totp, enabled: spec.enable, groups: spec.groups.clone() },
            );
        }
        if !users.contains_key("root@pam") {
            users.insert("root@pam".into(), User { password: None, totp: None, enabled: true, groups: Vec::new() });
        }

        let mut access = Self { version: *version, users, tokens, group_members, roles, acl: HashMap::new() };
        for spec in &scenario.acl {
            if let Err(problem) = access.add_acl(spec) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(access)
        } else {
            Err(SimError::Scenario(format!("could not load the scenario's access control: {}", problems.join("; "))))
        }
    }

    /// Adds an ACL entry per subject; fails naming an unknown role, user or token.
    pub fn add_acl(&mut self, spec: &AclSpec) -> Result<(), String> {
        let path = normalize_path(&spec.path);
        let mut privileges = PrivilegeSet::EMPTY;
        let mut no_access = false;
        for role in &spec.roles {
            match self.roles.get(role) {
                Some(set) => privileges = privileges.union(*set),
                None => return Err(format!("acl {path}: role {role} does not exist")),
            }
            no_access |= role == "NoAccess";
        }
        let mut subjects = Vec::new();
        for user in &spec.users {
            if !self.users.contains_key(user) {
                return Err(format!("acl {path}: user {user} does not exist"));
            }
            subjects.push(Subject::User(user.clone()));
        }
        for token in &spec.tokens {
            if !self.tokens.contains_key(token) {
                return Err(format!("acl {path}: token {token} does not exist (write it user@realm!name)"));
            }
            subjects.push(Subject::Token(token.clone()));
        }
        subjects.extend(spec.groups.iter().cloned().map(Subject::Group));
        let entries = self.acl.entry(path).or_default();
        for subject in subjects {
            entries.push(AclEntry { subject, privileges, no_access, propagate: spec.propagate });
        }
        Ok(())
    }

    /// Drops every ACL entry on `path` (PVE does this for a destroyed VM).
    pub fn remove_acl_path(&mut self, path: &str) {
        self.acl.remove(&normalize_path(path));
    }

    pub fn user(&self, userid: &str) -> Option<&User> {
        self.users.get(userid)
    }

    /// `Authorization: PVEAPIToken=USER@REALM!TOKENID=SECRET` (or with a
    /// space after `PVEAPIToken`); the value is URI-unescaped like pveproxy does.
    pub fn authenticate_token(&self, header: &str, now: SimTime) -> Result<Caller, AuthFailure> {
        let value = header.strip_prefix("PVEAPIToken").ok_or(AuthFailure::NoTicket)?;
        let value = value.strip_prefix('=').or_else(|| value.strip_prefix(' ')).ok_or(AuthFailure::Invalid)?;
        let value = value.split(';').next().unwrap_or_default();
        let value = percent_encoding::percent_decode_str(value).decode_utf8_lossy();
        let (tokenid, secret) = value.split_once('=').ok_or(AuthFailure::Invalid)?;
        let token = self.tokens.get(tokenid).ok_or(AuthFailure::Invalid)?;
        let expired = token.expire.is_some_and(|expire| expire > 0 && (expire as f64) < now);
        let user_enabled = self.users.get(&token.userid).is_some_and(|user| user.enabled);
        if expired || !user_enabled || !constant_time_eq(token.secret.as_bytes(), secret.as_bytes()) {
            return Err(AuthFailure::Invalid);
        }
        Ok(Caller::Token { userid: token.userid.clone(), tokenid: tokenid.to_string() })
    }

    /// The privileges `caller` holds on `path`. `pool_of` names the pool an
    /// object path (`/vms/100`, `/storage/local`) belongs to.
    pub fn privileges(&self, caller: &Caller, path: &str, pool_of: &dyn Fn(&str) -> Option<String>) -> PrivilegeSet {
        let path = normalize_path(path);
        let pool_path = pool_of(&path).map(|pool| format!("/pool/{pool}"));
        let user_privileges = self.user_privileges(caller.userid(), &path, pool_path.as_deref());
        match caller {
            Caller::User { .. } => user_privileges,
            Caller::Token { tokenid, .. } => {
                let Some(token) = self.tokens.get(tokenid) else { return PrivilegeSet::EMPTY };
                if !token.privsep {
                    return user_privileges;
                }
                let mut own = self.acl_privileges(&Subject::Token(tokenid.clone()), None, &path);
                if let Some(pool_path) = &pool_path {
                    own = own.union(self.acl_privileges(&Subject::Token(tokenid.clone()), None, pool_path));
                }
                user_privileges.intersection(own)
            }
        }
    }

    fn user_privileges(&self, userid: &str, path: &str, pool_path: Option<&str>) -> PrivilegeSet {
        if userid == "root@pam" {
            return PrivilegeSet::all(&self.version);
        }
        let Some(user) = self.users.get(userid).filter(|u| u.enabled) else { return PrivilegeSet::EMPTY };
        let subject = Subject::User(userid.to_string());
        let mut privileges = self.acl_privileges(&subject, Some(&user.groups), path);
        if let Some(pool_path) = pool_path {
            privileges = privileges.union(self.acl_privileges(&subject, Some(&user.groups), pool_path));
        }
        privileges
    }

    fn acl_privileges(&self, subject: &Subject, groups: Option<&[String]>, path: &str) -> PrivilegeSet {
        let mut effective: Option<(PrivilegeSet, bool)> = None;
        for (prefix, is_final) in path_prefixes(path) {
            let Some(entries) = self.acl.get(prefix) else { continue };
            let applies = |entry: &&AclEntry| is_final || entry.propagate;
            let collect = |matching: &mut dyn Iterator<Item = &AclEntry>| {
                matching.filter(applies).fold(None, |acc: Option<(PrivilegeSet, bool)>, entry| {
                    let (set, no_access) = acc.unwrap_or_default();
                    Some((set.union(entry.privileges), no_access || entry.no_access))
                })
            };
            let direct = collect(&mut entries.iter().filter(|e| &e.subject == subject));
            if direct.is_some() {
                effective = direct;
                continue;
            }
            if let Some(groups) = groups {
                let in_group = |e: &&AclEntry| match &e.subject {
                    Subject::Group(group) => {
                        groups.contains(group)
                            || self.group_members.get(group).is_some_and(|m| m.contains(subject_id(subject)))
                    }
                    _ => false,
                };
                let via_groups = collect(&mut entries.iter().filter(in_group));
                if via_groups.is_some() {
                    effective = via_groups;
                }
            }
        }
        match effective {
            Some((_, true)) | None => PrivilegeSet::EMPTY,
            Some((set, false)) => set,
        }
    }

    /// Whether any ACL entry sits exactly on `path`.
    pub fn has_entries(&self, path: &str) -> bool {
        self.acl.contains_key(path)
    }

    /// Whether any ACL entry sits below `prefix` (`/vms/`).
    pub fn has_entries_below(&self, prefix: &str) -> bool {
        self.acl.keys().any(|path| path.starts_with(prefix))
    }

    /// The ACL paths of interest for `GET /access/permissions`: every path
    /// with an entry, and `/`.
    pub fn acl_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = self.acl.keys().cloned().collect();
        if !paths.iter().any(|p| p == "/") {
            paths.push("/".into());
        }
        paths.sort();
        paths
    }
}

fn subject_id(subject: &Subject) -> &str {
    match subject {
        Subject::User(id) | Subject::Token(id) | Subject::Group(id) => id,
    }
}

/// `/`, `/vms`, `/vms/100` for `/vms/100`, each with whether it is the last.
fn path_prefixes(path: &str) -> Vec<(&str, bool)> {
    let mut prefixes = vec![("/", path == "/")];
    if path != "/" {
        for (index, _) in path.match_indices('/').skip(1) {
            prefixes.push((&path[..index], false));
        }
        prefixes.push((path, true));
    }
    prefixes
}

/// `//vms/100/` → `/vms/100` (PVE's `normalize_path`).
pub fn normalize_path(path: &str) -> String {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

fn valid_userid(userid: &str) -> bool {
    match userid.rsplit_once('@') {
        Some((name, realm)) => !name.is_empty() && !realm.is_empty() && !userid.contains(['!', ':', ' ']),
        None => false,
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::{TokenSpec, UserSpec};

    fn access(acl: Vec<AclSpec>) -> Access {
        let scenario = Scenario {
            users: vec![
                UserSpec {
                    userid: "alice@pve".into(),
                    groups: vec!["ops".into()],
                    tokens: vec![
                        TokenSpec { id: "sep".into(), secret: "s1".into(), ..TokenSpec::default() },
                        TokenSpec { id: "full".into(), secret: "s2".into(), privsep: false, ..TokenSpec::default() },
                    ],
                    ..UserSpec::default()
                },
                UserSpec { userid: "off@pve".into(), enable: false, ..UserSpec::default() },
            ],
            acl,
            ..Scenario::default()
        };
        Access::from_scenario(&scenario, &PveRelease::parse("9.1.3").unwrap()).unwrap()
    }

    fn acl(path: &str, roles: &[&str], users: &[&str], tokens: &[&str], propagate: bool) -> AclSpec {
        AclSpec {
            path: path.into(),
            roles: roles.iter().map(|s| s.to_string()).collect(),
            users: users.iter().map(|s| s.to_string()).collect(),
            tokens: tokens.iter().map(|s| s.to_string()).collect(),
            groups: Vec::new(),
            propagate,
        }
    }

    fn alice() -> Caller {
        Caller::User { userid: "alice@pve".into() }
    }

    fn token(name: &str) -> Caller {
        Caller::Token { userid: "alice@pve".into(), tokenid: format!("alice@pve!{name}") }
    }

    const NO_POOL: &dyn Fn(&str) -> Option<String> = &|_| None;

    #[test]
    fn deeper_acls_replace_inherited_ones_and_propagation_matters() {
        let access = access(vec![
            acl("/vms", &["PVEVMAdmin"], &["alice@pve"], &[], true),
            acl("/vms/105", &["PVEAuditor"], &["alice@pve"], &[], false),
            acl("/nodes", &["PVEAuditor"], &["alice@pve"], &[], false),
        ]);
        assert!(access.privileges(&alice(), "/vms/100", NO_POOL).contains("VM.Allocate"));
        let on_105 = access.privileges(&alice(), "/vms/105", NO_POOL);
        assert!(
            on_105.contains("VM.Audit") && !on_105.contains("VM.Allocate"),
            "the deeper ACL replaces the inherited one"
        );
        assert!(access.privileges(&alice(), "/nodes", NO_POOL).contains("Sys.Audit"));
        assert!(access.privileges(&alice(), "/nodes/pve1", NO_POOL).is_empty(), "not propagated");
    }

    #[test]
    fn pools_grant_to_members_and_tokens_intersect() {
        let access = access(vec![
            acl("/pool/ci", &["PVEVMAdmin"], &["alice@pve"], &["alice@pve!sep"], true),
            acl("/vms/100", &["PVEAuditor"], &[], &["alice@pve!sep"], true),
        ]);
        let in_ci: &dyn Fn(&str) -> Option<String> = &|path| (path == "/vms/100").then(|| "ci".to_string());
        assert!(access.privileges(&alice(), "/vms/100", in_ci).contains("VM.Allocate"));
        assert!(!access.privileges(&alice(), "/vms/100", NO_POOL).contains("VM.Allocate"));
        assert!(access.privileges(&token("sep"), "/vms/100", in_ci).contains("VM.Allocate"));
        let sep_outside = access.privileges(&token("sep"), "/vms/100", NO_POOL);
        assert!(sep_outside.is_empty(), "the user holds nothing there, so the token holds nothing");
        assert_eq!(
            access.privileges(&token("full"), "/vms/100", in_ci),
            access.privileges(&alice(), "/vms/100", in_ci)
        );
        assert_eq!(access.privileges(&Caller::User { userid: "off@pve".into() }, "/", NO_POOL), PrivilegeSet::EMPTY);
        assert!(
            access.privileges(&Caller::User { userid: "root@pam".into() }, "/vms/1", NO_POOL).contains("VM.Allocate")
        );
    }

    #[test]
    fn groups_and_no_access() {
        let mut group_acl = acl("/", &["PVEAuditor"], &[], &[], true);
        group_acl.groups = vec!["ops".into()];
        let access = access(vec![group_acl, acl("/vms/7", &["NoAccess"], &["alice@pve"], &[], true)]);
        assert!(access.privileges(&alice(), "/vms/1", NO_POOL).contains("VM.Audit"));
        assert!(access.privileges(&alice(), "/vms/7", NO_POOL).is_empty());
    }

    #[test]
    fn token_headers_are_checked() {
        let access = access(Vec::new());
        assert_eq!(access.authenticate_token("PVEAPIToken=alice@pve!sep=s1", 0.0), Ok(token("sep")));
        assert_eq!(access.authenticate_token("PVEAPIToken alice@pve!sep=s1", 0.0), Ok(token("sep")));
        assert_eq!(access.authenticate_token("PVEAPIToken=alice@pve!sep=wrong", 0.0), Err(AuthFailure::Invalid));
        assert_eq!(access.authenticate_token("Bearer x", 0.0), Err(AuthFailure::NoTicket));
    }

    #[test]
    fn paths_normalise_and_split() {
        assert_eq!(normalize_path("//vms/100/"), "/vms/100");
        assert_eq!(path_prefixes("/vms/100"), [("/", false), ("/vms", false), ("/vms/100", true)]);
        assert_eq!(path_prefixes("/"), [("/", true)]);
    }
}
