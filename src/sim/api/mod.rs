//! One API request, the way pveproxy and pvedaemon handle it: route by the
//! OpenAPI document, inject faults, authenticate (token, or ticket with
//! CSRF on writes), refuse calls proxied to an offline node, verify
//! parameters, check the schema's permission expression, then run the
//! handler of the operationId.

mod access;
mod cluster;
mod migrate;
mod nodes;
mod pools;
mod qemu;
mod resources;

pub use resources::ResourcesCache;

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, Response, header};
use serde_json::Value;

use super::access::{AuthFailure, Caller};
use super::cluster::Cluster;
use super::faults::TaskFailure;
use super::schema::{Operation, Params, PermCheck, Permissions, RawValue};
use super::server::DropConnection;
use super::simulator::Shared;
use super::ticket::cookie_ticket;
use super::wire::{self, ApiError, Format, Reply};

/// One call, after routing, authentication and parameter verification.
pub(crate) struct Call<'a> {
    pub shared: &'a Arc<Shared>,
    pub operation: &'a Operation,
    pub params: Params,
    pub caller: Option<Caller>,
    /// An injected fault: the worker task this call starts fails.
    pub task_failure: Option<TaskFailure>,
}

impl Call<'_> {
    pub fn caller(&self) -> Result<&Caller, ApiError> {
        self.caller.as_ref().ok_or_else(|| ApiError::new(401, "No ticket"))
    }

    pub fn node(&self) -> String {
        self.params.text("node").unwrap_or_default()
    }

    pub fn vmid(&self) -> u32 {
        self.params.int("vmid").and_then(|v| u32::try_from(v).ok()).unwrap_or(0)
    }
}

pub(crate) async fn respond(shared: Arc<Shared>, request: Request<Body>) -> Result<Response<Body>, DropConnection> {
    let method = request.method().clone();
    let full_path = request.uri().path().to_string();
    let (format, path) = if let Some(rest) = full_path.strip_prefix("/api2/json") {
        (Format::Json, rest.to_string())
    } else if let Some(rest) = full_path.strip_prefix("/api2/extjs") {
        (Format::ExtJs, rest.to_string())
    } else {
        shared.counters.request(method.as_str(), UNKNOWN);
        let error = ApiError::not_implemented(method.as_str(), &full_path);
        return Ok(refuse(&shared, &method, UNKNOWN, &full_path, &error, Format::Json));
    };
    let path = if path.is_empty() { "/".to_string() } else { path };

    let Some((operation, path_params)) = shared.api.route(method.as_str(), &path) else {
        shared.counters.request(method.as_str(), UNKNOWN);
        let error = ApiError::not_implemented(method.as_str(), &path);
        return Ok(refuse(&shared, &method, UNKNOWN, &full_path, &error, format));
    };
    shared.counters.request(method.as_str(), &operation.id);
    let id = operation.id.as_str();

    let decision = shared.faults().decide(&operation.id);
    if decision.latency_ms > 0 {
        shared.clock.sleep(decision.latency_ms as f64 / 1000.0).await;
    }
    if decision.drop_connection {
        shared.counters.update(|c| c.dropped_connections += 1);
        return Err(DropConnection);
    }
    if let Some((status, message)) = decision.error {
        shared.counters.update(|c| c.injected_errors += 1);
        let response = wire::failure(&ApiError::new(status, message), format, shared.wire);
        shared.counters.answered(response.status().as_u16());
        log_request(&method, id, &full_path, response.status().as_u16(), Some("injected fault"));
        return Ok(response);
    }

    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, shared.body_limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            let error = ApiError::new(413, "Request Entity Too Large");
            return Ok(refuse(&shared, &method, id, &full_path, &error, format));
        }
    };

    let caller = if operation.permissions == Permissions::World {
        None
    } else {
        match authenticate(&shared, &method, &parts.headers) {
            Ok(caller) => Some(caller),
            Err(message) => {
                shared.clock.sleep(shared.timings.unauthorized_delay).await;
                shared.counters.answered_as_pve(id, 401, Some(message));
                log_request(&method, id, &full_path, 401, Some(message));
                return Ok(wire::unauthorized(message));
            }
        }
    };

    let request = Incoming { method: &method, query: parts.uri.query(), headers: &parts.headers, body: &body };
    let result = handle(&shared, operation, request, path_params, caller, decision.task_failure);
    if decision.lose_answer {
        shared.counters.update(|c| c.lost_answers += 1);
        if let Some(upid) = result.as_ref().ok().and_then(Reply::upid) {
            shared.cluster().tasks.set_answer_lost(&upid);
        }
        return Err(DropConnection);
    }
    match result {
        Ok(reply) => {
            let response = wire::success(&reply, format);
            let status = response.status().as_u16();
            shared.counters.answered_as_pve(id, status, None);
            log_request(&method, id, &full_path, status, None);
            Ok(response)
        }
        Err(error) => {
            if error.status == 401 {
                shared.clock.sleep(shared.timings.unauthorized_delay).await;
            }
            Ok(refuse(&shared, &method, id, &full_path, &error, format))
        }
    }
}

/// The operation requests no route matches are counted under.
const UNKNOWN: &str = "unknown";

/// Answers with an error as PVE would, counting the answer and its reason
/// per operation (requests to no operation: the method and path too).
fn refuse(
    shared: &Shared,
    method: &Method,
    operation: &str,
    path: &str,
    error: &ApiError,
    format: Format,
) -> Response<Body> {
    let response = wire::failure(error, format, shared.wire);
    let status = response.status().as_u16();
    let reason = refusal_reason(error);
    shared.counters.answered_as_pve(operation, status, Some(&reason));
    log_request(method, operation, path, status, Some(&reason));
    response
}

/// The message of a refusal, with the parameters' problems (PVE's own
/// words; they name parameters, never echo secret values).
fn refusal_reason(error: &ApiError) -> String {
    match &error.errors {
        Some(errors) if !errors.is_empty() => {
            let problems: Vec<String> = errors.iter().map(|(name, problem)| format!("{name}: {problem}")).collect();
            format!("{} ({})", error.message, problems.join("; "))
        }
        _ => error.message.clone(),
    }
}

/// One line per answered request at `RUST_LOG=pve_sim::requests=info`:
/// method, operation, path, status and the reason of a refusal, never the
/// query or the body.
fn log_request(method: &Method, operation: &str, path: &str, status: u16, reason: Option<&str>) {
    tracing::info!(
        target: "pve_sim::requests",
        method = method.as_str(),
        operation,
        path,
        status,
        reason = reason.unwrap_or(""),
        "request"
    );
}

/// The parts of the HTTP request the handler reads.
struct Incoming<'a> {
    method: &'a Method,
    query: Option<&'a str>,
    headers: &'a axum::http::HeaderMap,
    body: &'a [u8],
}

fn handle(
    shared: &Arc<Shared>,
    operation: &Operation,
    request: Incoming<'_>,
    path_params: Vec<(String, String)>,
    caller: Option<Caller>,
    task_failure: Option<TaskFailure>,
) -> Result<Reply, ApiError> {
    let Incoming { method, query, headers, body } = request;
    if matches!(caller, Some(Caller::Token { .. })) && !operation.allow_token {
        return Err(ApiError::permission(Some("API tokens are not allowed on this path".into())));
    }
    let mut raw = BTreeMap::new();
    if matches!(*method, Method::POST | Method::PUT) && !body.is_empty() {
        let is_json = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("application/json"));
        if is_json {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(map)) => raw.extend(map.into_iter().map(|(k, v)| (k, RawValue::Json(v)))),
                Ok(Value::Null) => {}
                _ => return Err(ApiError::new(400, "malformed JSON string")),
            }
        } else {
            raw.extend(form_pairs(body));
        }
    }
    // Query parameters override body keys (pve-http-server `extract_params`).
    raw.extend(form_pairs(query.unwrap_or_default().as_bytes()));
    raw.remove("_dc");
    for (name, value) in &path_params {
        raw.insert(name.clone(), RawValue::Text(value.clone()));
    }

    if operation.proxied_to_node {
        let node = path_params.iter().find(|(name, _)| name == "node").map(|(_, v)| v.as_str()).unwrap_or_default();
        let cluster = shared.cluster();
        let node = cluster.node(node)?;
        if !node.online {
            return Err(ApiError::new(595, "No route to host"));
        }
    }

    let params = shared.api.validate(operation, raw).map_err(ApiError::parameters)?;
    let call = Call { shared, operation, params, caller, task_failure };
    if let Some(caller) = &call.caller {
        let cluster = shared.cluster();
        check_permissions(&cluster, caller, &operation.permissions, &call.params)?;
    }
    dispatch(&call)
}

fn form_pairs(bytes: &[u8]) -> Vec<(String, RawValue)> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, RawValue::Text(v)))
        .collect()
}

/// pveproxy's authentication: an API token, or the ticket cookie (plus the
/// CSRF token on anything but GET).
fn authenticate(shared: &Shared, method: &Method, headers: &axum::http::HeaderMap) -> Result<Caller, &'static str> {
    let now = shared.clock.now();
    let lifetime = shared.timings.ticket_lifetime;
    let cluster = shared.cluster();
    if let Some(authorization) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && authorization.starts_with("PVEAPIToken")
    {
        return cluster.access.authenticate_token(authorization, now).map_err(|failure| match failure {
            AuthFailure::NoTicket => "No ticket",
            AuthFailure::Invalid => "Authentication failed!",
        });
    }
    // pveproxy also accepts the cookie syntax in the Authorization header.
    let cookie = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(cookie_ticket)
        .or_else(|| headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(cookie_ticket));
    let Some(ticket) = cookie else { return Err("No ticket") };
    let userid = shared.tickets.verify(&ticket, now, lifetime).ok_or("Authentication failed!")?;
    if !cluster.access.user(&userid).is_some_and(|user| user.enabled) {
        return Err("Authentication failed!");
    }
    if *method != Method::GET {
        let csrf = headers.get("CSRFPreventionToken").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !shared.tickets.verify_csrf(&userid, csrf, now, lifetime) {
            return Err("Permission denied - invalid csrf token");
        }
    }
    Ok(Caller::User { userid })
}

/// Evaluates the schema's permission expression like RPCEnvironment's
/// `check_api2_permissions`.
pub(crate) fn check_permissions(
    cluster: &Cluster,
    caller: &Caller,
    permissions: &Permissions,
    params: &Params,
) -> Result<(), ApiError> {
    if caller.is_root() {
        return Ok(());
    }
    match permissions {
        Permissions::World | Permissions::All => Ok(()),
        Permissions::RootOnly => Err(ApiError::permission(Some("user != root@pam".into()))),
        Permissions::Check(check) => evaluate(cluster, caller, check, params, false).map(|_| ()),
    }
}

fn evaluate(
    cluster: &Cluster,
    caller: &Caller,
    check: &PermCheck,
    params: &Params,
    quiet: bool,
) -> Result<bool, ApiError> {
    match check {
        PermCheck::Perm { path, privileges, any, require_param } => {
            if let Some(required) = require_param
                && !params.has(required)
            {
                return if quiet { Ok(false) } else { Err(ApiError::permission(None)) };
            }
            let path = super::access::normalize_path(&fill_template(path, params));
            let privileges: Vec<&str> = privileges.iter().map(String::as_str).collect();
            match cluster.require(caller, &path, &privileges, *any) {
                Ok(()) => Ok(true),
                Err(_) if quiet => Ok(false),
                Err(error) => Err(error),
            }
        }
        PermCheck::And(checks) => {
            for check in checks {
                if !evaluate(cluster, caller, check, params, quiet)? {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        PermCheck::Or(checks) => {
            for check in checks {
                if evaluate(cluster, caller, check, params, true)? {
                    return Ok(true);
                }
            }
            if quiet { Ok(false) } else { Err(ApiError::permission(None)) }
        }
        PermCheck::Unsupported(_) => {
            if quiet {
                Ok(false)
            } else {
                Err(ApiError::permission(None))
            }
        }
    }
}

/// `/vms/{vmid}` → `/vms/105` with the call's parameters.
fn fill_template(template: &str, params: &Params) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else { break };
        let name = &rest[start + 1..start + end];
        out.push_str(params.get(name).unwrap_or_default());
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

fn dispatch(call: &Call<'_>) -> Result<Reply, ApiError> {
    match call.operation.id.as_str() {
        "post_access_ticket" => access::create_ticket(call),
        "get_access_permissions" => access::permissions(call),
        "get_version" => cluster::version(call),
        "get_cluster_status" => cluster::status(call),
        "get_cluster_resources" => resources::resources(call),
        "get_cluster_nextid" => cluster::next_id(call),
        "get_cluster_tasks" => cluster::tasks(call),
        "get_nodes" => nodes::list(call),
        "get_nodes_node_status" => nodes::status(call),
        "get_nodes_node_storage" => nodes::storage(call),
        "get_nodes_node_storage_storage_content" => nodes::storage_content(call),
        "get_storage" => nodes::storage_index(call),
        "get_storage_storage" => nodes::storage_config_of(call),
        "get_nodes_node_tasks" => nodes::tasks(call),
        "get_nodes_node_tasks_upid_status" => nodes::task_status(call),
        "get_nodes_node_tasks_upid_log" => nodes::task_log(call),
        "delete_nodes_node_tasks_upid" => nodes::stop_task(call),
        "get_pools" => pools::index(call),
        "post_pools" => pools::create(call),
        "put_pools" => pools::update(call, None),
        "delete_pools" => pools::delete(call, None),
        "get_pools_poolid" => pools::read(call),
        "put_pools_poolid" => pools::update(call, Some(call.params.text("poolid").unwrap_or_default())),
        "delete_pools_poolid" => pools::delete(call, Some(call.params.text("poolid").unwrap_or_default())),
        "get_nodes_node_qemu" => qemu::list(call),
        "post_nodes_node_qemu" => qemu::create(call),
        "put_nodes_node_qemu_vmid_resize" => qemu::resize(call),
        "get_nodes_node_qemu_vmid_config" => qemu::config(call),
        "get_nodes_node_qemu_vmid_snapshot" => qemu::snapshots(call),
        "put_nodes_node_qemu_vmid_config" => qemu::update_config(call, false),
        "post_nodes_node_qemu_vmid_config" => qemu::update_config(call, true),
        "put_nodes_node_qemu_vmid_cloudinit" => qemu::regenerate_cloudinit(call),
        "post_nodes_node_qemu_vmid_clone" => qemu::clone(call),
        "post_nodes_node_qemu_vmid_migrate" => migrate::migrate(call),
        "post_nodes_node_qemu_vmid_template" => migrate::template(call),
        "get_nodes_node_qemu_vmid_status_current" => qemu::status(call),
        "post_nodes_node_qemu_vmid_status_start" => qemu::power(call, qemu::PowerAction::Start),
        "post_nodes_node_qemu_vmid_status_stop" => qemu::power(call, qemu::PowerAction::Stop),
        "post_nodes_node_qemu_vmid_status_shutdown" => qemu::power(call, qemu::PowerAction::Shutdown),
        "post_nodes_node_qemu_vmid_status_reboot" => qemu::power(call, qemu::PowerAction::Reboot),
        "post_nodes_node_qemu_vmid_status_suspend" => qemu::power(call, qemu::PowerAction::Suspend),
        "post_nodes_node_qemu_vmid_status_resume" => qemu::power(call, qemu::PowerAction::Resume),
        "delete_nodes_node_qemu_vmid" => qemu::destroy(call),
        "post_nodes_node_qemu_vmid_agent_ping" => qemu::agent_ping(call),
        "get_nodes_node_qemu_vmid_agent_network_get_interfaces" => qemu::agent_interfaces(call),
        "get_nodes_node_qemu_vmid_agent_get_osinfo" => qemu::agent_os_info(call),
        other => Err(ApiError::not_implemented(&call.operation.method, &format!("{} ({other})", call.operation.path))),
    }
}

/// The operationIds the simulator answers; a test checks that it covers
/// every operation of `openapi/pve.json`.
#[cfg(test)]
fn handled_operations() -> &'static [&'static str] {
    &[
        "post_access_ticket",
        "get_access_permissions",
        "get_version",
        "get_cluster_status",
        "get_cluster_resources",
        "get_cluster_nextid",
        "get_cluster_tasks",
        "get_nodes",
        "get_nodes_node_status",
        "get_nodes_node_storage",
        "get_nodes_node_storage_storage_content",
        "get_storage",
        "get_storage_storage",
        "get_nodes_node_tasks",
        "get_nodes_node_tasks_upid_status",
        "get_nodes_node_tasks_upid_log",
        "delete_nodes_node_tasks_upid",
        "get_pools",
        "post_pools",
        "put_pools",
        "delete_pools",
        "get_pools_poolid",
        "put_pools_poolid",
        "delete_pools_poolid",
        "get_nodes_node_qemu",
        "post_nodes_node_qemu",
        "put_nodes_node_qemu_vmid_resize",
        "get_nodes_node_qemu_vmid_config",
        "get_nodes_node_qemu_vmid_snapshot",
        "put_nodes_node_qemu_vmid_config",
        "post_nodes_node_qemu_vmid_config",
        "put_nodes_node_qemu_vmid_cloudinit",
        "post_nodes_node_qemu_vmid_clone",
        "post_nodes_node_qemu_vmid_migrate",
        "post_nodes_node_qemu_vmid_template",
        "get_nodes_node_qemu_vmid_status_current",
        "post_nodes_node_qemu_vmid_status_start",
        "post_nodes_node_qemu_vmid_status_stop",
        "post_nodes_node_qemu_vmid_status_shutdown",
        "post_nodes_node_qemu_vmid_status_reboot",
        "post_nodes_node_qemu_vmid_status_suspend",
        "post_nodes_node_qemu_vmid_status_resume",
        "delete_nodes_node_qemu_vmid",
        "post_nodes_node_qemu_vmid_agent_ping",
        "get_nodes_node_qemu_vmid_agent_network_get_interfaces",
        "get_nodes_node_qemu_vmid_agent_get_osinfo",
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::release::PveRelease;
    use crate::sim::schema::Api;

    #[test]
    fn every_operation_of_the_document_has_a_handler() {
        let api = Api::for_version(&PveRelease::parse("9.1.3").unwrap()).unwrap();
        for operation in api.operations() {
            assert!(handled_operations().contains(&operation.id.as_str()), "{} has no handler", operation.id);
        }
    }

    #[test]
    fn templates_fill_from_parameters() {
        let api = Api::for_version(&PveRelease::parse("9.1.3").unwrap()).unwrap();
        let clone = api.operation("post_nodes_node_qemu_vmid_clone").unwrap();
        let raw = [("node", "pve1"), ("vmid", "9000"), ("newid", "105"), ("pool", "ci")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), RawValue::Text(v.to_string())))
            .collect();
        let params = api.validate(clone, raw).unwrap();
        assert_eq!(fill_template("/vms/{newid}", &params), "/vms/105");
        assert_eq!(fill_template("/pool/{pool}/x", &params), "/pool/ci/x");
    }
}
