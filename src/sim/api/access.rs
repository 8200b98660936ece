//! `POST /access/ticket` (password login, renewal with the current ticket,
//! the TFA challenge flows per release, the `path`/`privs` verification
//! mode) and `GET /access/permissions`.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::Call;
use crate::pve::api::types;
use crate::pve::lenient::PveBool;
use crate::sim::access::Caller;
use crate::sim::cluster::Cluster;
use crate::sim::wire::{ApiError, Reply};

/// Every login failure looks the same from outside (details would help an
/// attacker); pveproxy delays it like every 401.
fn failure() -> ApiError {
    ApiError::new(401, "authentication failure")
}

pub fn create_ticket(call: &Call<'_>) -> Result<Reply, ApiError> {
    let shared = call.shared;
    let params = &call.params;
    let now = shared.clock.now();
    let lifetime = shared.timings.ticket_lifetime;
    let username = params.text("username").unwrap_or_default();
    let userid = match (username.contains('@'), params.get("realm")) {
        (true, _) => username.clone(),
        (false, Some(realm)) => format!("{username}@{realm}"),
        (false, None) => return Err(failure()),
    };
    let password = params.text("password").unwrap_or_default();
    let cluster = shared.cluster();
    let user = cluster.access.user(&userid).filter(|u| u.enabled).ok_or_else(failure)?;

    // Renewal: a valid ticket of this user stands in for the password, and
    // skips the second factor.
    let renewing = shared.tickets.verify(&password, now, lifetime).is_some_and(|owner| owner == userid);

    if let (Some(path), Some(privs)) = (params.get("path"), params.get("privs")) {
        if !renewing && !user.password_matches(&password) {
            return Err(failure());
        }
        let caller = Caller::User { userid: userid.clone() };
        let wanted: Vec<&str> = privs.split([',', ';', ' ']).filter(|p| !p.is_empty()).collect();
        let path = crate::sim::access::normalize_path(path);
        cluster.require(&caller, &path, &wanted, false).map_err(|_| failure())?;
        return Ok(Reply::data(&types::PostAccessTicketResponseData { username: Some(userid), ..Default::default() }));
    }

    let release = (shared.version.major, shared.version.minor);
    if let Some(challenge) = params.get("tfa-challenge") {
        if params.has("otp") || !shared.tickets.verify_tfa(challenge, &userid, now) {
            return Err(failure());
        }
        let code = password.strip_prefix("totp:").ok_or_else(failure)?;
        if !user.totp_matches(code) {
            return Err(failure());
        }
        return Ok(full_ticket(call, &cluster, &userid));
    }

    if !renewing && !user.password_matches(&password) {
        return Err(failure());
    }
    if user.has_tfa() && !renewing {
        let new_flow = release >= (8, 0) || (release >= (7, 1) && params.flag("new-format") == Some(true));
        if new_flow {
            let ticket = shared.tickets.issue_tfa(&userid, r#"{"totp":true}"#, now);
            return Ok(Reply::data(&types::PostAccessTicketResponseData {
                username: Some(userid.clone()),
                ticket: Some(ticket),
                csrf_prevention_token: Some(shared.tickets.csrf(&userid, now)),
                need_tfa: Some(PveBool(true)),
                ..Default::default()
            }));
        }
        // The old flow: the code travels with the password.
        let code = params.get("otp").ok_or_else(failure)?;
        if !user.totp_matches(code) {
            return Err(failure());
        }
    }
    Ok(full_ticket(call, &cluster, &userid))
}

fn full_ticket(call: &Call<'_>, cluster: &Cluster, userid: &str) -> Reply {
    let shared = call.shared;
    let now = shared.clock.now();
    let caller = Caller::User { userid: userid.to_string() };
    Reply::data(&types::PostAccessTicketResponseData {
        username: Some(userid.to_string()),
        ticket: Some(shared.tickets.issue(userid, now)),
        csrf_prevention_token: Some(shared.tickets.csrf(userid, now)),
        clustername: Some(cluster.name.clone()),
        cap: capabilities(cluster, &caller),
        need_tfa: None,
    })
}

/// The GUI's capability map: per top-level area, the privileges held on it.
fn capabilities(cluster: &Cluster, caller: &Caller) -> Map<String, Value> {
    let mut cap = Map::new();
    for (area, path) in [
        ("vms", "/vms"),
        ("storage", "/storage"),
        ("access", "/access"),
        ("nodes", "/nodes"),
        ("dc", "/"),
        ("sdn", "/sdn"),
    ] {
        let privileges: Map<String, Value> =
            cluster.privileges(caller, path).names().map(|p| (p.to_string(), json!(1))).collect();
        cap.insert(area.to_string(), Value::Object(privileges));
    }
    cap
}

/// The caller's privileges: per ACL path (or the one asked for), privilege → 1.
pub fn permissions(call: &Call<'_>) -> Result<Reply, ApiError> {
    let caller = call.caller()?;
    let cluster = call.shared.cluster();
    let subject = match call.params.get("userid") {
        Some(other) if other != caller.id() => {
            cluster.require(caller, "/access", &["Sys.Audit"], false)?;
            match other.split_once('!') {
                Some((user, _)) => Caller::Token { userid: user.to_string(), tokenid: other.to_string() },
                None => Caller::User { userid: other.to_string() },
            }
        }
        _ => caller.clone(),
    };
    let paths = match call.params.get("path") {
        Some(path) => vec![crate::sim::access::normalize_path(path)],
        None => {
            let mut paths = cluster.access.acl_paths();
            paths.extend(cluster.vms.keys().map(|vmid| format!("/vms/{vmid}")));
            paths.extend(cluster.pools.keys().map(|pool| format!("/pool/{pool}")));
            paths.sort();
            paths.dedup();
            paths
        }
    };
    let mut result: BTreeMap<String, BTreeMap<&str, u8>> = BTreeMap::new();
    for path in paths {
        let held = cluster.privileges(&subject, &path);
        if !held.is_empty() {
            result.insert(path, held.names().map(|p| (p, 1)).collect());
        }
    }
    Ok(Reply::data(&result))
}
