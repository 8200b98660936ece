//! Authentication and permissions, in the form "a real PVE answers this
//! request like this": API tokens (with privilege separation), tickets with
//! CSRF tokens and expiry, the TFA/TOTP challenge, the 401 delay, and
//! privileges checked per path, pool and release.

#[path = "sim/common.rs"]
mod common;

use std::time::{Duration, Instant};

use common::*;
use fleeting_plugin_proxmox::pve::credentials::PrivilegeCheck;
use fleeting_plugin_proxmox::pve::{CloneRequest, Credentials, ErrorKind, PveClient, SecondFactor, Secret, Vmid};
use fleeting_plugin_proxmox::sim::config::{AclSpec, TokenSpec, UserSpec, defaults};
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, Simulator};
use serde_json::Value;

fn acl(path: &str, roles: &[&str], users: &[&str], tokens: &[&str]) -> AclSpec {
    AclSpec {
        path: path.into(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        users: users.iter().map(|u| u.to_string()).collect(),
        tokens: tokens.iter().map(|t| t.to_string()).collect(),
        ..AclSpec::default()
    }
}

#[tokio::test]
async fn tokens_authenticate_and_failures_are_401_after_a_delay() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 1.0;
    scenario.timings.unauthorized_delay = 0.3;
    let sim = start(scenario).await;
    let http = raw_client();
    let url = format!("{}/cluster/resources", sim.api_url());

    let response = http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "No ticket");
    assert_eq!(response.bytes().await.unwrap().len(), 0, "pveproxy's auth step answers without a body");

    let started = Instant::now();
    let response = http
        .get(&url)
        .header("Authorization", format!("PVEAPIToken={}=wrong", defaults::TOKEN_ID))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "Authentication failed!");
    assert!(started.elapsed() >= Duration::from_millis(300), "every 401 is delayed");

    let response = http.get(&url).header("Authorization", token_header()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // pveproxy also takes a space after PVEAPIToken.
    let spaced = token_header().replacen('=', " ", 1);
    assert_eq!(http.get(&url).header("Authorization", spaced).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn tickets_need_csrf_on_writes_renew_and_expire() {
    let mut scenario = fast_scenario();
    scenario.time_scale = 10.0;
    scenario.timings.ticket_lifetime = 20.0;
    let sim = start(scenario).await;
    let http = raw_client();
    let login = |password: String| {
        http.post(format!("{}/access/ticket", sim.api_url()))
            .form(&[("username", defaults::USER.to_string()), ("password", password)])
            .send()
    };
    let response = login("wrong".into()).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "authentication failure");

    let body: Value = login(defaults::USER_PASSWORD.into()).await.unwrap().json().await.unwrap();
    let ticket = body["data"]["ticket"].as_str().unwrap().to_string();
    let csrf = body["data"]["CSRFPreventionToken"].as_str().unwrap().to_string();
    assert!(ticket.starts_with("PVE:fleeting@pve:"), "{ticket}");
    assert_eq!(body["data"]["username"], "fleeting@pve");
    assert_eq!(body["data"]["cap"]["vms"].as_object().map(|m| m.is_empty()), Some(true), "no ACL on /vms itself");
    let cookie =
        format!("PVEAuthCookie={}", percent_encoding::utf8_percent_encode(&ticket, percent_encoding::NON_ALPHANUMERIC));

    let resources =
        http.get(format!("{}/cluster/resources", sim.api_url())).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(resources.status(), 200, "GET needs no CSRF token");
    let clone = |csrf: Option<&str>| {
        let mut request = http
            .post(format!("{}/nodes/pve1/qemu/9000/clone", sim.api_url()))
            .header("Cookie", &cookie)
            .form(&[("newid", "130"), ("pool", "ci")]);
        if let Some(csrf) = csrf {
            request = request.header("CSRFPreventionToken", csrf);
        }
        request.send()
    };
    let response = clone(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "Permission denied - invalid csrf token");
    assert_eq!(clone(Some(&csrf)).await.unwrap().status(), 200);

    let renewed: Value = login(ticket.clone()).await.unwrap().json().await.unwrap();
    assert!(
        renewed["data"]["ticket"].as_str().unwrap().starts_with("PVE:fleeting@pve:"),
        "the current ticket renews itself"
    );

    tokio::time::sleep(Duration::from_millis(2200)).await; // 22 simulated seconds > the 20 s lifetime
    let response =
        http.get(format!("{}/cluster/resources", sim.api_url())).header("Cookie", &cookie).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(&response), "Authentication failed!");
}

#[tokio::test]
async fn password_clients_log_in_and_verify_privileges() {
    let sim = start(fast_scenario()).await;
    let pve = PveClient::connect(client_config(&sim, password(defaults::USER, defaults::USER_PASSWORD))).await.unwrap();
    assert_eq!(pve.cluster_vms().await.unwrap().len(), 1);
    let permissions = pve.permissions(Some("/pool/ci")).await.unwrap();
    assert!(permissions["/pool/ci"].contains_key("VM.Allocate"), "{permissions:?}");

    let checked = |privs: &str| Credentials::Password {
        userid: defaults::USER.into(),
        password: Secret::new(defaults::USER_PASSWORD),
        second_factor: SecondFactor::None,
        privilege_check: Some(PrivilegeCheck { path: "/pool/ci".into(), privs: privs.into() }),
    };
    PveClient::connect(client_config(&sim, checked("VM.Allocate,VM.Clone"))).await.unwrap();
    let err = PveClient::connect(client_config(&sim, checked("Sys.Modify"))).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::PermissionDenied { .. }), "{err}");

    let err = PveClient::connect(client_config(&sim, password(defaults::USER, "nope"))).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unauthorized { .. }), "{err}");
}

#[tokio::test]
async fn tfa_users_pass_the_totp_challenge() {
    let sim = start(fast_scenario()).await;
    let tfa = |secret: &str| Credentials::Password {
        userid: defaults::TFA_USER.into(),
        password: Secret::new(defaults::TFA_PASSWORD),
        second_factor: SecondFactor::TotpSecret(Secret::new(secret)),
        privilege_check: None,
    };
    let pve = PveClient::connect(client_config(&sim, tfa(defaults::TFA_TOTP_SECRET))).await.unwrap();
    assert_eq!(pve.cluster_vms().await.unwrap().len(), 1);
    let err = PveClient::connect(client_config(&sim, tfa("GEZDGNBVGY3TQOJQGEZDGNBVGY"))).await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Unauthorized { .. }), "{err}");

    // On the wire: a half ticket that authenticates nothing.
    let http = raw_client();
    let body: Value = http
        .post(format!("{}/access/ticket", sim.api_url()))
        .form(&[("username", defaults::TFA_USER), ("password", defaults::TFA_PASSWORD)])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["NeedTFA"], 1);
    let half = body["data"]["ticket"].as_str().unwrap();
    assert!(half.starts_with("PVE:!tfa!%7B%22totp%22%3Atrue%7D:"), "{half}");
    let response = http
        .get(format!("{}/version", sim.api_url()))
        .header("Cookie", format!("PVEAuthCookie={half}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);

    // PVE 7.0 has only the old flow: the code travels with the password.
    let mut old = fast_scenario();
    old.pve_version = "7.0.14".into();
    let old_sim = start(old).await;
    let code = fleeting_plugin_proxmox::pve::auth::totp_from_base32(defaults::TFA_TOTP_SECRET)
        .unwrap()
        .generate_current()
        .unwrap();
    let response = http
        .post(format!("{}/access/ticket", old_sim.api_url()))
        .form(&[("username", defaults::TFA_USER), ("password", defaults::TFA_PASSWORD), ("otp", code.as_str())])
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body["data"]["ticket"].as_str().unwrap().starts_with("PVE:tfa@pve:"));
    let response = http
        .post(format!("{}/access/ticket", old_sim.api_url()))
        .form(&[("username", defaults::TFA_USER), ("password", defaults::TFA_PASSWORD), ("new-format", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "7.0 does not know new-format");
}

#[tokio::test]
async fn pools_and_paths_decide_what_a_token_may_do() {
    let sim = start(fast_scenario()).await;
    let token = token_client(&sim);
    let root = root_client(&sim);

    // Root clones a VM outside the pool: the token does not see it.
    let upid = root
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(140)), ..Default::default() })
        .await
        .unwrap();
    wait(&root, &upid).await.unwrap();
    assert_eq!(root.cluster_vms().await.unwrap().len(), 2);
    assert_eq!(token.cluster_vms().await.unwrap().len(), 1);

    // Cloning into the pool needs VM.Allocate there; without a pool, on the new VMID.
    let into_pool = CloneRequest { new_vmid: Some(Vmid(141)), pool: Some("ci".into()), ..Default::default() };
    wait(&token, &token.clone_vm("pve1", Vmid(9000), &into_pool).await.unwrap()).await.unwrap();
    let err = token
        .clone_vm("pve1", Vmid(9000), &CloneRequest { new_vmid: Some(Vmid(142)), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.kind().to_string(), "Permission check failed");

    // A full clone onto a storage without Datastore.AllocateSpace.
    let to_local = CloneRequest {
        new_vmid: Some(Vmid(143)),
        pool: Some("ci".into()),
        full: Some(true),
        storage: Some("local".into()),
        ..Default::default()
    };
    let err = token.clone_vm("pve1", Vmid(9000), &to_local).await.unwrap_err();
    match err.kind() {
        ErrorKind::PermissionDenied { path, privilege, .. } => {
            assert_eq!(
                (path.as_deref(), privilege.as_deref()),
                (Some("/storage/local"), Some("Datastore.AllocateSpace"))
            );
        }
        other => panic!("{other:?}"),
    }
    // Deleting the VM outside the pool is refused on its path.
    let err = token.delete_vm("pve1", Vmid(140)).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/vms/140, VM.Allocate)"), "{err}");
}

/// A scenario with one user whose token's ACLs are configurable.
fn scenario_with(version: &str, roles: Vec<(String, Vec<String>)>, acls: Vec<AclSpec>) -> Scenario {
    let mut scenario = fast_scenario();
    scenario.pve_version = version.into();
    scenario.roles = roles.into_iter().collect();
    scenario.users.push(UserSpec {
        userid: "probe@pve".into(),
        tokens: vec![TokenSpec { id: "t".into(), secret: "probe-secret".into(), ..TokenSpec::default() }],
        ..UserSpec::default()
    });
    scenario.acl = acls;
    scenario
}

fn probe(sim: &fleeting_plugin_proxmox::sim::SimHandle) -> PveClient {
    PveClient::new(client_config(sim, token("probe@pve!t", "probe-secret"))).unwrap()
}

#[tokio::test]
async fn the_agent_privilege_follows_the_release() {
    let both = |role: &str| vec![acl("/", &[role], &["probe@pve"], &["probe@pve!t"])];
    let auditor_only = vec![acl("/", &["PVEAuditor"], &["probe@pve"], &["probe@pve!t"])];

    let sim = start(scenario_with("8.4.2", vec![], auditor_only.clone())).await;
    let err = probe(&sim).agent_ping("pve1", Vmid(9000)).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/vms/9000, VM.Monitor)"), "{err}");
    let sim = start(scenario_with("8.4.2", vec![("Probe".into(), vec!["VM.Monitor".into()])], both("Probe"))).await;
    let err = probe(&sim).agent_ping("pve1", Vmid(9000)).await.unwrap_err();
    assert!(
        err.to_string().contains("No QEMU guest agent configured") || err.to_string().contains("is not running"),
        "{err}"
    );

    let sim = start(scenario_with("9.1.3", vec![], auditor_only)).await;
    let err = probe(&sim).agent_ping("pve1", Vmid(9000)).await.unwrap_err();
    assert!(
        err.to_string().contains("Permission check failed (/vms/9000, VM.GuestAgent.Audit|VM.GuestAgent.Unrestricted)"),
        "{err}"
    );

    // Roles name only privileges their release knows.
    let scenario = scenario_with("9.0.5", vec![("Old".into(), vec!["VM.Monitor".into()])], vec![]);
    let err = Simulator::new(SimConfig::new(scenario).plain_http()).err().expect("VM.Monitor is gone in 9.0");
    assert!(err.to_string().contains("privilege VM.Monitor does not exist in PVE 9.0"), "{err}");
}

#[tokio::test]
async fn privilege_separated_tokens_get_the_intersection() {
    // The user may administer VMs everywhere; its token only audit them.
    let acls = vec![acl("/", &["PVEVMAdmin"], &["probe@pve"], &[]), acl("/", &["PVEAuditor"], &[], &["probe@pve!t"])];
    let sim = start(scenario_with("9.1.3", vec![], acls)).await;
    let pve = probe(&sim);
    assert_eq!(pve.cluster_vms().await.unwrap().len(), 1, "VM.Audit is in both");
    let err = pve.start_vm("pve1", Vmid(9000)).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/vms/9000, VM.PowerMgmt)"), "{err}");
    // Pool.Audit decides whether `pool` is shown: the user lacks it here.
    assert_eq!(pve.cluster_vms().await.unwrap()[0].pool, None);
    let acls = vec![acl("/", &["PVEAuditor"], &["probe@pve"], &["probe@pve!t"])];
    let sim = start(scenario_with("9.1.3", vec![], acls)).await;
    assert_eq!(
        probe(&sim).cluster_vms().await.unwrap()[0].pool.as_deref(),
        Some("ci"),
        "PVEAuditor includes Pool.Audit"
    );
    let acls = vec![acl("/vms", &["PVEVMAdmin"], &["probe@pve"], &["probe@pve!t"])];
    let sim = start(scenario_with("9.1.3", vec![], acls)).await;
    let vms = probe(&sim).cluster_vms().await.unwrap();
    assert_eq!(vms[0].pool, None, "no Pool.Audit, no pool");
}

#[tokio::test]
async fn sdn_use_is_checked_from_8_0() {
    let acls = || {
        vec![
            acl("/pool/ci", &["PVEVMAdmin"], &["probe@pve"], &["probe@pve!t"]),
            acl("/storage", &["PVEDatastoreUser"], &["probe@pve"], &["probe@pve!t"]),
        ]
    };
    let request = CloneRequest { new_vmid: Some(Vmid(150)), pool: Some("ci".into()), ..Default::default() };
    let sim = start(scenario_with("8.2.4", vec![], acls())).await;
    let err = probe(&sim).clone_vm("pve1", Vmid(9000), &request).await.unwrap_err();
    assert!(err.to_string().contains("Permission check failed (/sdn/zones/localnetwork/vmbr0, SDN.Use)"), "{err}");
    let sim = start(scenario_with("7.4.17", vec![], acls())).await;
    let pve = probe(&sim);
    wait(&pve, &pve.clone_vm("pve1", Vmid(9000), &request).await.unwrap()).await.unwrap();
}
