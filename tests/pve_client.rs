//! The client wrapper against a local HTTP server that answers the way
//! pveproxy does: `{"data": …}` envelopes, error text in the reason phrase,
//! 0/1 booleans, numbers as strings, tickets with CSRF tokens, the TFA
//! challenge flow, and a self-signed certificate.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use fleeting_plugin_proxmox::pve::{
    ClientConfig, CloneRequest, Credentials, ErrorKind, PveClient, RetryPolicy, SecondFactor, Secret, TlsOptions, Upid,
    Vmid,
};
use serde_json::{Value, json};

const TOTP_SECRET: &str = "JBSWY3DPEHPK3PXP";
const TOKEN_HEADER: &str = "PVEAPIToken=ci@pve!fleeting=11111111-2222-3333-4444-555555555555";

#[derive(Default)]
struct FakePve {
    tickets: HashSet<String>,
    logins: u32,
    ticket_counter: u32,
    /// Requests to answer with 503 before answering normally, per path.
    unavailable: BTreeMap<String, u32>,
    /// `METHOD path?query body` of every API request, in order.
    requests: Vec<String>,
    task_polls: u32,
}

type Shared = Arc<Mutex<FakePve>>;

fn pve_error(status: u16, reason: &str, body: Value) -> Response {
    let mut response = (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
    response.extensions_mut().insert(hyper::ext::ReasonPhrase::try_from(reason.as_bytes().to_vec()).unwrap());
    response
}

fn ok(data: Value) -> Response {
    axum::Json(json!({ "data": data })).into_response()
}

fn form(body: &str) -> BTreeMap<String, String> {
    serde_urlencoded::from_str(body).unwrap_or_default()
}

fn authenticated(state: &FakePve, method: &Method, headers: &HeaderMap) -> bool {
    if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(TOKEN_HEADER) {
        return true;
    }
    let Some(cookie) = headers.get("cookie").and_then(|v| v.to_str().ok()) else { return false };
    let Some(encoded) = cookie.strip_prefix("PVEAuthCookie=") else { return false };
    let ticket = percent_encoding::percent_decode_str(encoded).decode_utf8_lossy().to_string();
    if !state.tickets.contains(&ticket) {
        return false;
    }
    // Non-GET ticket requests need the CSRF token that came with the ticket.
    *method == Method::GET
        || headers.get("csrfpreventiontoken").and_then(|v| v.to_str().ok()) == Some(&format!("csrf-{ticket}"))
}

async fn ticket(State(state): State<Shared>, body: String) -> Response {
    let params = form(&body);
    let mut state = state.lock().unwrap();
    state.requests.push(format!("POST /access/ticket {}", params.keys().cloned().collect::<Vec<_>>().join(",")));
    let user = params.get("username").cloned().unwrap_or_default();
    let password = params.get("password").cloned().unwrap_or_default();
    let issue = |state: &mut FakePve| {
        state.ticket_counter += 1;
        state.logins += 1;
        let ticket = format!("PVE:{user}:{:08X}::signature", state.ticket_counter);
        state.tickets.insert(ticket.clone());
        ok(json!({ "username": user, "ticket": ticket, "CSRFPreventionToken": format!("csrf-{ticket}"), "cap": {} }))
    };
    let failure = || pve_error(401, "authentication failure", json!({ "data": null }));
    if let Some(challenge) = params.get("tfa-challenge") {
        let expected = totp_rs::TOTP::new_unchecked(
            totp_rs::Algorithm::SHA1,
            6,
            1,
            30,
            totp_rs::Secret::Encoded(TOTP_SECRET.into()).to_bytes().unwrap(),
        );
        let code = password.strip_prefix("totp:").unwrap_or_default();
        if challenge.starts_with("PVE:!tfa!") && user == "bob@pve" && expected.check_current(code).unwrap() {
            return issue(&mut state);
        }
        return failure();
    }
    if let (Some(path), Some(privs)) = (params.get("path"), params.get("privs")) {
        // Verification mode: alice holds VM.Audit on /pool/ci only.
        let valid = state.tickets.contains(&password) && path == "/pool/ci" && privs == "VM.Audit";
        return if valid { ok(json!({ "username": user })) } else { failure() };
    }
    if state.tickets.contains(&password) {
        return issue(&mut state); // renewal with the current ticket
    }
    match (user.as_str(), password.as_str()) {
        ("alice@pve", "correct horse") => issue(&mut state),
        ("bob@pve", "battery staple") => {
            let challenge = percent_encoding::utf8_percent_encode(
                r#"{"totp":true,"recovery":[]}"#,
                percent_encoding::NON_ALPHANUMERIC,
            );
            ok(
                json!({ "username": user, "ticket": format!("PVE:!tfa!{challenge}:6560B3F1::sig"), "CSRFPreventionToken": "x", "NeedTFA": 1 }),
            )
        }
        _ => failure(),
    }
}

async fn api(
    State(state): State<Shared>,
    method: Method,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Response {
    let path = uri.path().strip_prefix("/api2/json").unwrap_or(uri.path()).to_string();
    let mut state = state.lock().unwrap();
    state.requests.push(format!("{method} {path}?{} {body}", query.clone().unwrap_or_default()));
    if !authenticated(&state, &method, &headers) {
        return pve_error(401, "No ticket", json!({ "data": null }));
    }
    if let Some(remaining) = state.unavailable.get_mut(&path)
        && *remaining > 0
    {
        *remaining -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "<html><body>proxy says no</body></html>").into_response();
    }
    let query = form(&query.unwrap_or_default());
    let body = form(&body);
    match (method.as_str(), path.as_str()) {
        ("GET", "/pools") if query.get("poolid").map(String::as_str) == Some("ci") => ok(json!([
            { "poolid": "ci", "members": [
                { "id": "qemu/105", "type": "qemu", "vmid": 105, "node": "pve2", "status": "running" },
                { "id": "storage/pve1/local-lvm", "type": "storage", "storage": "local-lvm", "node": "pve1" }
            ]}
        ])),
        ("GET", "/version") => ok(json!({ "version": "9.1.3", "release": "9.1", "repoid": "0123abcd" })),
        ("GET", "/cluster/resources") => ok(json!([
            { "id": "qemu/9000", "vmid": 9000, "node": "pve1", "type": "qemu", "status": "stopped", "template": 1, "name": "tpl" },
            { "id": "qemu/105", "vmid": "105", "node": "pve2", "type": "qemu", "status": "running", "template": 0,
              "tags": "fleeting;group-a", "lock": "clone", "pool": "ci", "cpu": "0.25", "maxmem": "2147483648" },
            { "id": "lxc/200", "vmid": 200, "node": "pve1", "type": "lxc", "status": "running" },
            { "id": "network/pve1/vmbr0", "node": "pve1", "type": "network", "network": "vmbr0" }
        ])),
        ("GET", "/cluster/nextid") => match query.get("vmid").map(String::as_str) {
            Some("100") => pve_error(
                400,
                "Parameter verification failed.",
                json!({ "data": null, "errors": { "vmid": "VM 100 already exists" } }),
            ),
            Some(id) => ok(json!(id)),
            None => ok(json!("105")),
        },
        ("POST", "/nodes/pve1/qemu/9000/clone") => {
            if body.get("newid").map(String::as_str) == Some("50") {
                return pve_error(
                    400,
                    "Parameter verification failed.",
                    json!({ "data": null, "errors": { "newid": "value must have a minimum value of 100\n" } }),
                );
            }
            if body.get("newid").map(String::as_str) == Some("106") {
                return pve_error(500, "unable to create VM 106: config file already exists", json!({ "data": null }));
            }
            ok(json!("UPID:pve1:0000ABCD:0012D687:6560B3F1:qmclone:9000:alice@pve:"))
        }
        ("GET", "/nodes/pve1/tasks/UPID:pve1:0000ABCD:0012D687:6560B3F1:qmclone:9000:alice@pve:/status") => {
            state.task_polls += 1;
            if state.task_polls < 3 {
                ok(json!({ "status": "running", "pid": 43981, "upid": "x" }))
            } else {
                ok(json!({ "status": "stopped", "exitstatus": "WARNINGS: 2", "pid": 43981 }))
            }
        }
        ("GET", "/nodes/pve1/tasks/UPID:pve1:0000ABCE:0012D687:6560B3F1:qmstart:105:alice@pve:/status") => {
            ok(json!({ "status": "stopped", "exitstatus": "start failed: QEMU exited with code 1" }))
        }
        ("GET", "/nodes/pve1/tasks/UPID:pve1:0000ABCE:0012D687:6560B3F1:qmstart:105:alice@pve:/log") => {
            let start: usize = query.get("start").and_then(|s| s.parse().ok()).unwrap_or(0);
            let limit: usize = query.get("limit").and_then(|s| s.parse().ok()).unwrap_or(50);
            let lines: Vec<Value> =
                (1..=30).map(|n| json!({ "n": n, "t": format!("line {n}") })).skip(start).take(limit).collect();
            axum::Json(json!({ "data": lines, "total": 30 })).into_response()
        }
        ("GET", "/nodes/pve1/qemu/105/status/current") => ok(json!({
            "status": "running", "qmpstatus": "running", "agent": "1", "template": "", "vmid": 105,
            "name": "runner-105", "ha": { "managed": 0 }, "tags": "a;b", "cpus": "2"
        })),
        ("GET", "/nodes/pve1/qemu/999/status/current") => pve_error(
            500,
            "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist",
            json!({ "data": null, "message": "Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist\n" }),
        ),
        ("DELETE", "/nodes/pve1/qemu/105") => {
            ok(json!("UPID:pve1:0000ABCF:0012D687:6560B3F1:qmdestroy:105:alice@pve:"))
        }
        ("POST", "/nodes/pve1/qemu/105/status/start") => {
            pve_error(403, "Permission check failed (/vms/105, VM.PowerMgmt)", json!({ "data": null }))
        }
        ("GET", "/nodes/pve1/qemu/105/agent/network-get-interfaces") => ok(json!({ "result": [
            { "name": "ens18", "hardware-address": "bc:24:11:aa:bb:cc", "ip-addresses": [{ "ip-address": "10.1.2.3", "ip-address-type": "ipv4", "prefix": 24 }] }
        ]})),
        _ => pve_error(501, &format!("Method '{method} {path}' not implemented"), json!({ "data": null })),
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/api2/json/access/ticket", post(ticket))
        .route("/api2/json/{*rest}", get(api).post(api).put(api).delete(api))
        .with_state(state)
}

async fn serve_http(state: Shared) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });
    addr
}

/// A certificate for the test server: self-signed, or signed by a fresh CA
/// whose PEM is returned.
struct TestCertificate {
    der: rustls::pki_types::CertificateDer<'static>,
    key: Vec<u8>,
    ca_pem: Option<String>,
}

fn self_signed_certificate() -> TestCertificate {
    let certified = rcgen::generate_simple_self_signed(vec!["pve1.example".to_string()]).unwrap();
    TestCertificate { der: certified.cert.der().clone(), key: certified.signing_key.serialize_der(), ca_pem: None }
}

fn ca_signed_certificate() -> TestCertificate {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Test PVE Cluster CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server_params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();
    TestCertificate { der: server_cert.der().clone(), key: server_key.serialize_der(), ca_pem: Some(ca_cert.pem()) }
}

/// HTTPS with the given certificate; returns the address and the
/// certificate's SHA-256 fingerprint.
async fn serve_https(state: Shared, certificate: &TestCertificate) -> (SocketAddr, String) {
    let fingerprint = fleeting_plugin_proxmox::pve::Fingerprint::of_certificate(&certificate.der).to_string();
    let key = rustls::pki_types::PrivateKeyDer::try_from(certificate.key.clone()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate.der.clone()], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = router(state);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            let app = app.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (addr, fingerprint)
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy { max_attempts: 3, initial_delay: Duration::from_millis(10), max_delay: Duration::from_millis(40) }
}

fn password_config(addr: SocketAddr, user: &str, password: &str, second_factor: SecondFactor) -> ClientConfig {
    let credentials = Credentials::Password {
        userid: user.into(),
        password: Secret::new(password),
        second_factor,
        privilege_check: None,
    };
    ClientConfig { retry: fast_retry(), ..ClientConfig::new(format!("http://{addr}"), credentials) }
}

fn token_config(addr: SocketAddr) -> ClientConfig {
    let credentials = Credentials::parse(
        r#"{"token_id":"ci@pve!fleeting","token_secret":"11111111-2222-3333-4444-555555555555"}"#,
        "test",
    )
    .unwrap();
    ClientConfig { retry: fast_retry(), ..ClientConfig::new(format!("http://{addr}/api2/json"), credentials) }
}

fn shared() -> Shared {
    Arc::new(Mutex::new(FakePve::default()))
}

#[tokio::test]
async fn token_auth_reads_envelopes_and_lenient_scalars() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();
    let vms = client.cluster_vms().await.unwrap();
    assert_eq!(vms.len(), 2, "lxc and unknown resource types are skipped: {vms:?}");
    assert_eq!(vms[0].vmid, Vmid(9000));
    assert!(vms[0].template);
    assert_eq!(vms[1].vmid, Vmid(105), "a vmid sent as a string is read");
    assert_eq!(vms[1].tags, ["fleeting", "group-a"]);
    assert_eq!(vms[1].lock.as_deref(), Some("clone"));
    assert_eq!(client.next_vmid(None).await.unwrap(), Vmid(105), "nextid arrives as a JSON string");
    let status = client.vm_status("pve1", Vmid(105)).await.unwrap();
    assert!(status.agent_enabled, "\"1\" reads as true");
    assert!(!status.template, "\"\" reads as false");
    assert_eq!(client.version().await.unwrap().to_string(), "9.1.3");
}

#[tokio::test]
async fn booleans_go_out_as_digits() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();
    let request = CloneRequest {
        new_vmid: Some(Vmid(105)),
        name: Some("runner-105".into()),
        pool: Some("ci".into()),
        full: Some(false),
        ..Default::default()
    };
    client.clone_vm("pve1", Vmid(9000), &request).await.unwrap();
    client.delete_vm("pve1", Vmid(105)).await.unwrap();
    let requests = state.lock().unwrap().requests.clone();
    let clone = requests.iter().find(|r| r.starts_with("POST /nodes/pve1/qemu/9000/clone")).unwrap();
    assert!(clone.contains("full=0") && clone.contains("newid=105") && clone.contains("pool=ci"), "{clone}");
    let delete = requests.iter().find(|r| r.starts_with("DELETE")).unwrap();
    assert!(delete.contains("purge=1") && delete.contains("destroy-unreferenced-disks=1"), "{delete}");
}

#[tokio::test]
async fn errors_carry_pve_text_and_kind() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();

    let err = client.vm_status("pve1", Vmid(999)).await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
    assert_eq!(
        err.to_string(),
        "could not read the status of VM 999: Configuration file 'nodes/pve1/qemu-server/999.conf' does not exist"
    );

    let err = client
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(50)), ..Default::default() })
        .await
        .unwrap_err();
    let ErrorKind::InvalidParameter { errors, .. } = err.kind() else { panic!("{err:?}") };
    assert!(errors["newid"].contains("minimum value of 100"), "{errors:?}");
    assert!(
        err.to_string().contains("Parameter verification failed.: newid: value must have a minimum value of 100"),
        "{err}"
    );

    let err = client
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(106)), ..Default::default() })
        .await
        .unwrap_err();
    assert!(err.is_already_exists(), "a taken VMID is recognisable: {err:?}");

    let err = client.next_vmid(Some(Vmid(100))).await.unwrap_err();
    assert!(err.is_already_exists(), "{err:?}");

    let err = client.start_vm("pve1", Vmid(105)).await.unwrap_err();
    let ErrorKind::PermissionDenied { path, privilege, .. } = err.kind() else { panic!("{err:?}") };
    assert_eq!((path.as_deref(), privilege.as_deref()), (Some("/vms/105"), Some("VM.PowerMgmt")));

    let err = client.agent_ping("pve1", Vmid(1234)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Api { status: 501, .. }), "{err:?}");
}

#[tokio::test]
async fn transient_503_is_retried_for_reads() {
    let state = shared();
    state.lock().unwrap().unavailable.insert("/cluster/resources".into(), 2);
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();
    assert_eq!(client.cluster_vms().await.unwrap().len(), 2);
    let attempts = state.lock().unwrap().requests.iter().filter(|r| r.starts_with("GET /cluster/resources")).count();
    assert_eq!(attempts, 3);

    // More failures than attempts: the error says what the proxy sent.
    state.lock().unwrap().unavailable.insert("/cluster/resources".into(), 5);
    let err = client.cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("proxy says no"), "{err}");
}

#[tokio::test]
async fn ticket_login_relogs_once_after_401() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client =
        PveClient::connect(password_config(addr, "alice@pve", "correct horse", SecondFactor::None)).await.unwrap();
    assert_eq!(state.lock().unwrap().logins, 1);
    client
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(105)), ..Default::default() })
        .await
        .unwrap();

    // The server forgets every ticket (a restart, or expiry): exactly one re-login.
    state.lock().unwrap().tickets.clear();
    assert_eq!(client.cluster_vms().await.unwrap().len(), 2);
    assert_eq!(state.lock().unwrap().logins, 2);
    let first_login = state.lock().unwrap().requests[0].clone();
    assert!(first_login.contains("new-format"), "7.1+ TFA flow is requested: {first_login}");
}

#[tokio::test]
async fn wrong_password_is_a_clear_unauthorized_error() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let err = PveClient::connect(password_config(addr, "alice@pve", "wrong", SecondFactor::None)).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unauthorized { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.starts_with("could not log in to PVE as alice@pve: PVE rejected the user name or password"), "{text}");
    assert!(!text.contains("wrong"), "the password must not appear in errors: {text}");
}

#[tokio::test]
async fn tfa_challenge_is_answered_with_a_fresh_totp_code() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let config = password_config(addr, "bob@pve", "battery staple", SecondFactor::TotpSecret(Secret::new(TOTP_SECRET)));
    let client = PveClient::connect(config).await.unwrap();
    assert_eq!(client.cluster_vms().await.unwrap().len(), 2);
    let requests = state.lock().unwrap().requests.clone();
    assert!(requests[1].contains("tfa-challenge"), "{requests:?}");

    let err =
        PveClient::connect(password_config(addr, "bob@pve", "battery staple", SecondFactor::None)).await.unwrap_err();
    assert!(err.to_string().contains("add `totp_secret`"), "{err}");
    let wrong = SecondFactor::TotpSecret(Secret::new("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"));
    let err = PveClient::connect(password_config(addr, "bob@pve", "battery staple", wrong)).await.unwrap_err();
    assert!(err.to_string().contains("PVE rejected the second factor"), "{err}");
}

#[tokio::test]
async fn seed_path_and_privs_verify_privileges_at_login() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let with_check = |privs: &str| {
        let credentials = Credentials::parse(
            &format!(
                r#"{{"username":"alice","realm":"pve","password":"correct horse","path":"/pool/ci","privs":"{privs}"}}"#
            ),
            "test",
        )
        .unwrap();
        ClientConfig { retry: fast_retry(), ..ClientConfig::new(format!("http://{addr}"), credentials) }
    };
    PveClient::connect(with_check("VM.Audit")).await.unwrap();
    let err = PveClient::connect(with_check("VM.Allocate")).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PermissionDenied { .. }), "{err:?}");
    assert!(err.to_string().contains("lacks some of VM.Allocate on /pool/ci"), "{err}");
}

#[tokio::test]
async fn tasks_are_awaited_and_failures_carry_the_log_tail() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();
    let upid = client
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(105)), ..Default::default() })
        .await
        .unwrap();
    let success = client.wait_task(&upid, Duration::from_secs(10)).await.unwrap();
    assert_eq!(success.warnings, 2, "WARNINGS: n counts as success");

    let failed: Upid = "UPID:pve1:0000ABCE:0012D687:6560B3F1:qmstart:105:alice@pve:".parse().unwrap();
    let err = client.wait_task(&failed, Duration::from_secs(10)).await.unwrap_err();
    let ErrorKind::TaskFailed { exit_status, log_tail, .. } = err.kind() else { panic!("{err:?}") };
    assert_eq!(exit_status, "start failed: QEMU exited with code 1");
    assert_eq!(log_tail.first().map(String::as_str), Some("line 21"), "the last ten of 30 lines");
    assert_eq!(log_tail.last().map(String::as_str), Some("line 30"));

    let interfaces = client.guest_interfaces("pve1", Vmid(105)).await.unwrap();
    assert_eq!(interfaces[0].addresses[0].0.to_string(), "10.1.2.3");
}

#[tokio::test]
async fn tls_pinned_by_fingerprint() {
    let state = shared();
    let (addr, fingerprint) = serve_https(state.clone(), &self_signed_certificate()).await;
    let url = format!("https://127.0.0.1:{}", addr.port());
    let mut config = token_config(addr);
    config.url = url.clone();

    // No pin, no CA: a self-signed certificate is refused, with the fix named.
    let err = PveClient::connect(config.clone()).await.unwrap().cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("tls_fingerprint"), "{err}");

    config.tls = TlsOptions { fingerprint: Some(fingerprint.parse().unwrap()), ..Default::default() };
    let client = PveClient::connect(config.clone()).await.unwrap();
    assert_eq!(client.cluster_vms().await.unwrap().len(), 2);

    let wrong = "AB:".repeat(31) + "CD";
    config.tls = TlsOptions { fingerprint: Some(wrong.parse().unwrap()), ..Default::default() };
    let err = PveClient::connect(config.clone()).await.unwrap().cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Tls { .. }), "{err:?}");
    assert!(err.to_string().contains("does not match tls_fingerprint"), "{err}");

    config.tls = TlsOptions { insecure_skip_verify: true, ..Default::default() };
    assert_eq!(PveClient::connect(config).await.unwrap().cluster_vms().await.unwrap().len(), 2);
}

#[tokio::test]
async fn rejected_token_is_final_and_not_retried() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let credentials =
        Credentials::parse(r#"{"token_id":"ci@pve!fleeting","token_secret":"wrong-secret"}"#, "test").unwrap();
    let config = ClientConfig { retry: fast_retry(), ..ClientConfig::new(format!("http://{addr}"), credentials) };
    let err = PveClient::connect(config).await.unwrap().cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unauthorized { .. }), "{err:?}");
    assert!(!err.to_string().contains("wrong-secret"), "{err}");
    assert_eq!(state.lock().unwrap().requests.len(), 1, "a 401 for a token is not retried");
}

#[tokio::test]
async fn tls_with_the_cluster_ca_file() {
    let state = shared();
    let certificate = ca_signed_certificate();
    let (addr, _) = serve_https(state.clone(), &certificate).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca_file, certificate.ca_pem.as_deref().unwrap()).unwrap();
    let mut config = token_config(addr);
    config.url = format!("https://localhost:{}", addr.port());
    config.tls = TlsOptions { ca_file: Some(ca_file), ..Default::default() };
    assert_eq!(PveClient::connect(config.clone()).await.unwrap().cluster_vms().await.unwrap().len(), 2);

    // A different CA does not vouch for this server.
    let other = dir.path().join("other-ca.pem");
    std::fs::write(&other, ca_signed_certificate().ca_pem.unwrap()).unwrap();
    config.tls = TlsOptions { ca_file: Some(other), ..Default::default() };
    let err = PveClient::connect(config.clone()).await.unwrap().cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Tls { .. }), "{err:?}");

    // A file without certificates is a setup error naming the setting.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").unwrap();
    config.tls = TlsOptions { ca_file: Some(empty), ..Default::default() };
    let err = PveClient::connect(config).await.unwrap_err();
    assert!(err.to_string().contains("holds no PEM certificate"), "{err}");
}

#[tokio::test]
async fn pool_members_use_the_api_form_of_the_release() {
    let state = shared();
    let addr = serve_http(state.clone()).await;
    let client = PveClient::connect(token_config(addr)).await.unwrap();
    let members = client.pool_members("ci").await.unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0].vmid, Some(Vmid(105)));
    assert_eq!(members[1].kind, "storage");
    let requests = state.lock().unwrap().requests.clone();
    assert!(requests.iter().any(|r| r.starts_with("GET /pools?poolid=ci")), "9.1 uses the 8.1+ form: {requests:?}");
}
