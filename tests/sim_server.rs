//! Starting the simulator: HTTPS with a generated certificate (pinned by
//! fingerprint or trusted through the CA file), `run` on a caller's
//! listener with graceful shutdown, scenario files, and the `pve-sim`
//! binary end to end.

#[path = "sim/common.rs"]
mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use fleeting_plugin_proxmox::pve::{ErrorKind, PveClient, Vmid};
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, Simulator, run};
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sim").join(name)
}

#[tokio::test]
async fn https_is_pinned_by_fingerprint_or_trusted_by_the_ca_file() {
    let sim = start_https(fast_scenario()).await;
    assert!(sim.base_url().starts_with("https://127.0.0.1:"));
    let fingerprint = sim.fingerprint().expect("HTTPS has a fingerprint").to_string();
    assert_eq!(fingerprint.len(), 95, "AB:CD:… notation");
    let pve = token_client(&sim);
    assert_eq!(pve.cluster_vms().await.unwrap().len(), 1);

    // GET /nodes reports the same fingerprint, as PVE does.
    let listed = pve.api().get_nodes().await.unwrap().into_inner().data;
    assert_eq!(listed[0].ssl_fingerprint.as_deref(), Some(fingerprint.as_str()));

    let mut wrong = client_config(&sim, token(defaults::TOKEN_ID, defaults::TOKEN_SECRET));
    let other = fingerprint.replace(&fingerprint[..2], if &fingerprint[..2] == "00" { "11" } else { "00" });
    wrong.tls.fingerprint = Some(other.parse().unwrap());
    let err = PveClient::new(wrong).unwrap().cluster_vms().await.unwrap_err();
    assert!(matches!(err.kind(), ErrorKind::Tls { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("pve-root-ca.pem");
    std::fs::write(&ca_file, sim.ca_pem().unwrap()).unwrap();
    let mut by_ca = client_config(&sim, token(defaults::TOKEN_ID, defaults::TOKEN_SECRET));
    by_ca.tls.fingerprint = None;
    by_ca.tls.ca_file = Some(ca_file);
    assert_eq!(PveClient::new(by_ca).unwrap().cluster_vms().await.unwrap().len(), 1);
}

#[tokio::test]
async fn run_serves_a_listener_until_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, SimConfig::new(fast_scenario()).plain_http(), async move {
        let _ = stopped.await;
    }));
    let url = format!("http://{address}/api2/json/version");
    let response = raw_client().get(&url).header("Authorization", token_header()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server).await.expect("run returns").unwrap().unwrap();
    assert!(raw_client().get(&url).send().await.is_err(), "nothing listens any more");
}

#[tokio::test]
async fn scenario_files_load_and_bad_ones_are_explained() {
    let scenario = Scenario::load(&fixture("go-client.toml")).unwrap();
    assert_eq!(scenario.seed, Some(42));
    let scenario = Scenario::load(&fixture("minimal.json")).unwrap();
    let sim = start(scenario).await;
    let root = PveClient::new(client_config(&sim, password("root@pam", "pw"))).unwrap();
    assert_eq!(root.version().await.unwrap().to_string(), "8.4.2");
    let vms = root.cluster_vms().await.unwrap();
    assert_eq!((vms[0].vmid, vms[0].node.as_str()), (Vmid(100), "alpha"));

    let broken = Scenario::from_json(
        r#"{ "vms": [{ "vmid": 5, "node": "nowhere" }], "acl": [{ "path": "/", "roles": ["Nope"] }] }"#,
    )
    .unwrap();
    let err = Simulator::new(SimConfig::new(broken).plain_http()).err().expect("the scenario is refused");
    assert!(err.to_string().contains("role Nope does not exist"), "{err}");
    let broken = Scenario::from_json(r#"{ "vms": [{ "vmid": 5, "node": "nowhere" }, { "vmid": 300, "node": "pve1", "config": { "scsi0": "gone:vm-300-disk-0" } }] }"#).unwrap();
    let err = Simulator::new(SimConfig::new(broken).plain_http()).err().expect("the scenario is refused");
    let text = err.to_string();
    assert!(text.contains("vm 5: VMIDs range from 100 to 999999999"), "{text}");
    assert!(text.contains("vm 300: scsi0 uses storage `gone`"), "{text}");
    let err = Scenario::load(Path::new("/nonexistent/scenario.toml")).unwrap_err();
    assert!(err.to_string().starts_with("could not read the scenario /nonexistent/scenario.toml"), "{err}");
}

/// The binary, as CI and demos run it: a scenario file, a seed, an
/// ephemeral port announced through the ready file.
#[tokio::test]
async fn the_pve_sim_binary_serves_a_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready.json");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pve-sim"))
        .args(["--listen", "127.0.0.1:0", "--seed", "9", "--time-scale", "50"])
        .arg("--scenario")
        .arg(fixture("go-client.toml"))
        .arg("--cert-dir")
        .arg(dir.path().join("certs"))
        .arg("--ready-file")
        .arg(&ready)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("pve-sim starts");
    // Stops the child even when an assertion fails.
    struct Stop(Option<u32>);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Some(pid) = self.0 {
                let _ = std::process::Command::new("kill").arg(pid.to_string()).status();
            }
        }
    }
    let mut stop = Stop(Some(child.id()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(tokio::time::Instant::now() < deadline, "pve-sim did not get ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let announced: Value = serde_json::from_str(&std::fs::read_to_string(&ready).unwrap()).unwrap();
    let url = announced["url"].as_str().unwrap();
    let fingerprint = announced["fingerprint"].as_str().unwrap();
    let ca_file = announced["ca_file"].as_str().unwrap();
    assert!(std::fs::read_to_string(ca_file).unwrap().starts_with("-----BEGIN CERTIFICATE-----"));

    let mut config = fleeting_plugin_proxmox::pve::ClientConfig::new(
        url,
        token("gotest@pve!ci", "0c7a2f6e-3d51-4f0b-9a66-5e1f2b3c4d5e"),
    );
    config.tls.fingerprint = Some(fingerprint.parse().unwrap());
    let pve = PveClient::new(config).unwrap();
    let vms = pve.cluster_vms().await.unwrap();
    assert_eq!(vms[0].vmid, Vmid(9000));

    child.kill().unwrap();
    stop.0 = None;
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("listening on {url}")), "{stdout}");
    assert!(stdout.contains(&format!("certificate SHA-256 fingerprint: {fingerprint}")), "{stdout}");
    assert!(stdout.contains(&format!("CA certificate: {ca_file}")), "the CA path is printed for pinning: {stdout}");
    assert!(!stdout.contains("0c7a2f6e"), "no secret is printed");
}
