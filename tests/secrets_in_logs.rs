//! No secret reaches a log line or an error message: the whole lifecycle
//! (Init, Increase, Update, ConnectInfo with the generated key, Heartbeat,
//! Decrease, Shutdown, plus calls that fail) at trace level, with an API
//! token and with ticket login (password + TOTP), in process (every tracing
//! event of every crate captured) and as the real binary (its stderr).
//! Looked for: passwords, the token secret, the TOTP secret, tickets, CSRF
//! tokens, the generated private key, and Runner's own static password and
//! key (which ConnectInfo hands back, but no log may show).

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::fleeting::proto::update_response::State;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::ssh_key::GeneratedKey;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::defaults;

use reliability::process::PluginProcess;
use reliability::{Login, logs};

const WRONG_PASSWORD: &str = "Wr0ng-Passw0rd-4f1c9e";
const RUNNER_PASSWORD: &str = "Runner-St4tic-Passw0rd-77aa";

/// What a leak would look like in `text`: each finding names the secret.
fn leaks(text: &str, private_keys: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let literal = [
        ("token secret", defaults::TOKEN_SECRET),
        ("password of tfa@pve", defaults::TFA_PASSWORD),
        ("password of fleeting@pve", defaults::USER_PASSWORD),
        ("TOTP secret", defaults::TFA_TOTP_SECRET),
        ("wrong password", WRONG_PASSWORD),
        ("Runner's static password", RUNNER_PASSWORD),
    ];
    for (what, secret) in literal {
        if text.contains(secret) {
            found.push(what.to_string());
        }
    }
    // Tickets: `PVE:<user>:<hex time>::<signature>` and TFA half tickets.
    for prefix in ["PVE:tfa@pve:", "PVE:fleeting@pve:", "PVE:!tfa!"] {
        if text.contains(prefix) {
            found.push(format!("ticket ({prefix}…)"));
        }
    }
    // CSRF tokens: 8 hex digits, a colon, a signature.
    let bytes = text.as_bytes();
    for i in 0..bytes.len().saturating_sub(30) {
        let hex = &bytes[i..i + 8];
        if bytes[i + 8] == b':'
            && hex.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))
            && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric())
            && bytes[i + 9..i + 29].iter().all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        {
            found.push(format!("CSRF token ({}…)", String::from_utf8_lossy(&bytes[i..i + 12])));
            break;
        }
    }
    // Private keys: any line of a PEM body.
    for key in private_keys {
        if text.contains("PRIVATE KEY-----") {
            found.push("a PEM private key header".into());
        }
        for line in key.lines().filter(|l| !l.starts_with("-----") && l.len() >= 16) {
            if text.contains(line) {
                found.push("a line of a private key".into());
                break;
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

fn static_key() -> String {
    GeneratedKey::generate().unwrap().private_pem.expose().to_string()
}

/// The lifecycle through the engine, in process; returns every error text
/// it met and the private keys that must not be logged.
async fn lifecycle_in_process(login: Login, static_credentials: bool) -> (Vec<String>, Vec<String>) {
    let mut scenario = reliability::scenario_with_foreign_vms(20.0);
    scenario.timings.resources_staleness = 0.5;
    let sim = reliability::start_sim(scenario, 11).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), login);
    let config = reliability::plugin_config(&sim, &credentials, 4);
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    let runner_key = static_key();
    let settings = if static_credentials {
        keys.push(runner_key.clone());
        ConnectorSettings {
            username: "runner".into(),
            password: RUNNER_PASSWORD.into(),
            key: runner_key.clone().into_bytes(),
            use_static_credentials: true,
            ..ConnectorSettings::default()
        }
    } else {
        ConnectorSettings::default()
    };

    // A wrong password first: the error must not repeat it.
    if login == Login::TicketWithTotp {
        let wrong = dir.path().join("wrong.json");
        std::fs::write(
            &wrong,
            serde_json::json!({ "username": defaults::TFA_USER, "password": WRONG_PASSWORD, "totp_secret": defaults::TFA_TOTP_SECRET })
                .to_string(),
        )
        .unwrap();
        let mut bad = config.clone();
        bad["credentials_file_path"] = wrong.display().to_string().into();
        let err = ProxmoxGroup::new().init(bad.to_string().as_bytes(), settings.clone()).await.unwrap_err();
        errors.push(err.to_string());
    }

    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), settings.clone()).await.expect("Init");
    let answer = group.increase(2).await.unwrap();
    assert_eq!(answer.succeeded, 2, "{:?}", answer.failures);
    errors.extend(answer.failures.iter().map(ToString::to_string));
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let states = group.update().await.unwrap();
        if states.len() == 2 && states.iter().all(|(_, s)| *s == InstanceState::Running) {
            break states;
        }
        assert!(Instant::now() < deadline, "never running: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (id, _) in &running {
        let info = group.connect_info(id).await.unwrap();
        let key = String::from_utf8(info.connector.key.clone()).unwrap();
        assert!(key.contains("PRIVATE KEY"), "ConnectInfo hands out a key");
        keys.push(key);
        group.heartbeat(id).await.unwrap();
    }
    // Calls that fail, for their error texts.
    for result in [
        group.connect_info("999-nosuch").await.map(|_| ()),
        group.heartbeat("999-nosuch").await,
        group.connect_info("garbage").await.map(|_| ()),
    ] {
        errors.push(result.unwrap_err().to_string());
    }
    let refused = group.decrease(vec!["999-nosuch".into(), defaults::TEMPLATE_VMID.to_string()]).await.unwrap();
    errors.extend(refused.failures.iter().map(ToString::to_string));
    let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
    group.decrease(ids).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !group.update().await.unwrap().is_empty() {
        assert!(Instant::now() < deadline, "never removed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    group.shutdown().await.unwrap();
    sim.shutdown().await.unwrap();
    (errors, keys)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line_or_error() {
    let capture = logs::capture("trace");
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    for (login, static_credentials) in
        [(Login::TicketWithTotp, false), (Login::Token, false), (Login::TicketWithTotp, true)]
    {
        let (e, k) = lifecycle_in_process(login, static_credentials).await;
        errors.extend(e);
        keys.extend(k);
    }
    let text = capture.text();
    let lines = text.lines().count();
    // The capture really saw the traffic (else the test proves nothing).
    assert!(text.contains("PVE request"), "no PVE request was logged at trace level");
    assert!(text.contains("logged in to PVE"), "no ticket login was logged");
    let in_logs = leaks(&text, &keys);
    assert!(in_logs.is_empty(), "secrets in the log ({lines} lines): {in_logs:?}");
    let joined = errors.join("\n");
    let in_errors = leaks(&joined, &keys);
    assert!(in_errors.is_empty(), "secrets in error messages: {in_errors:?}\n{joined}");
    eprintln!(
        "secrets_in_logs: in process: {lines} log lines at trace level ({} bytes) and {} error messages, \
         3 lifecycles (ticket+TOTP, token, static credentials), {} private keys; no secret found",
        text.len(),
        errors.len(),
        keys.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_on_the_binary_s_stderr() {
    let mut scenario = reliability::scenario_with_foreign_vms(20.0);
    scenario.timings.resources_staleness = 0.5;
    let sim = reliability::start_sim(scenario, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let mut errors = Vec::new();
    let mut keys = Vec::new();
    let mut stderr = String::new();
    for login in [Login::TicketWithTotp, Login::Token] {
        let credentials = reliability::write_credentials(dir.path(), login);
        let config = reliability::plugin_config(&sim, &credentials, 4);
        let mut plugin = PluginProcess::start(dir.path(), "trace").await;
        // A bad Init first (wrong password), then the real one.
        if login == Login::TicketWithTotp {
            let wrong = dir.path().join("wrong.json");
            std::fs::write(
                &wrong,
                serde_json::json!({ "username": defaults::TFA_USER, "password": WRONG_PASSWORD, "totp_secret": defaults::TFA_TOTP_SECRET })
                    .to_string(),
            )
            .unwrap();
            let mut bad = config.clone();
            bad["credentials_file_path"] = wrong.display().to_string().into();
            errors.push(plugin.init(&bad, false).await.unwrap_err().message().to_string());
        }
        plugin.init(&config, false).await.expect("Init");
        assert_eq!(plugin.increase(1).await.unwrap(), 1);
        let deadline = Instant::now() + Duration::from_secs(60);
        let id = loop {
            let states = plugin.update().await.unwrap();
            if let Some((id, _)) = states.iter().find(|(_, s)| *s == State::Running) {
                break id.clone();
            }
            assert!(Instant::now() < deadline, "never running: {states:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let info = plugin.connect_info(&id).await.unwrap();
        keys.push(String::from_utf8(info.connector.unwrap().key).unwrap());
        errors.push(plugin.connect_info("999-nosuch").await.unwrap_err().message().to_string());
        plugin.decrease(vec![id]).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !plugin.update().await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "never removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        plugin.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stderr.push_str(&plugin.kill9());
    }
    assert!(stderr.contains("PVE request"), "the binary logged no PVE request at trace level");
    let in_logs = leaks(&stderr, &keys);
    assert!(in_logs.is_empty(), "secrets on the plugin's stderr: {in_logs:?}");
    let joined = errors.join("\n");
    let in_errors = leaks(&joined, &keys);
    assert!(in_errors.is_empty(), "secrets in error messages: {in_errors:?}\n{joined}");
    eprintln!(
        "secrets_in_logs: binary: {} stderr lines at trace level and {} error messages over gRPC, 2 lifecycles; no secret found",
        stderr.lines().count(),
        errors.len()
    );
    sim.shutdown().await.unwrap();
}

/// The detector itself finds each kind of secret (else the tests above
/// could not fail).
#[test]
fn the_detector_finds_each_kind_of_secret() {
    let key = static_key();
    let body_line = key.lines().nth(2).unwrap().to_string();
    let samples = [
        format!("token={}", defaults::TOKEN_SECRET),
        format!("password {}", defaults::TFA_PASSWORD),
        format!("otp {}", defaults::TFA_TOTP_SECRET),
        "cookie PVEAuthCookie=PVE:tfa@pve:6774868E::dGhpcyBpcyBhIHNpZ25hdHVyZQ==".to_string(),
        "half PVE:!tfa!%7B%22totp%22%3Atrue%7D:6774868E::c2ln".to_string(),
        "header CSRFPreventionToken: 6774868E:Yk9x2LmQpR7sT1uVwXyZaBcDeFgHiJ".to_string(),
        format!("key material {body_line}"),
        format!("static {RUNNER_PASSWORD}"),
    ];
    for sample in &samples {
        assert!(!leaks(sample, std::slice::from_ref(&key)).is_empty(), "not detected: {sample}");
    }
    assert!(leaks("PVE request GET /api2/json/cluster/resources status 200 at 12:34:56", &[key]).is_empty());
}

/// A Windows template and a Runner config without a password: the plugin
/// generates one, sets it through cloud-init (`cipassword`, what
/// cloudbase-init reads), and hands exactly that to Runner for WinRM; no
/// log line at trace level and no error message shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_password_is_generated_handed_out_and_never_logged() {
    let capture = logs::capture("trace");
    let mut scenario = reliability::scenario_with_foreign_vms(20.0);
    scenario.timings.resources_staleness = 0.5;
    let template = scenario.vms.iter_mut().find(|vm| vm.vmid == defaults::TEMPLATE_VMID).unwrap();
    template.config.insert("ostype".into(), "win11".into());
    let sim = reliability::start_sim(scenario, 12).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::TicketWithTotp);
    let config = reliability::plugin_config(&sim, &credentials, 2);
    // Runner names the user (as Windows images expect) but brings no password.
    let settings = ConnectorSettings { username: "Administrator".into(), ..ConnectorSettings::default() };
    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), settings).await.expect("Init");
    let answer = group.increase(2).await.unwrap();
    assert_eq!(answer.succeeded, 2, "{:?}", answer.failures);
    let deadline = Instant::now() + Duration::from_secs(60);
    let running = loop {
        let states = group.update().await.unwrap();
        if states.len() == 2 && states.iter().all(|(_, s)| *s == InstanceState::Running) {
            break states;
        }
        assert!(Instant::now() < deadline, "never running: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut passwords = Vec::new();
    for (id, _) in &running {
        let info = group.connect_info(id).await.unwrap();
        assert_eq!(info.connector.protocol, "winrm");
        assert_eq!(info.connector.os, "windows");
        assert_eq!(info.connector.username, "Administrator");
        assert!(info.connector.key.is_empty(), "a password, not a key");
        assert!(info.connector.password.len() >= 20, "a strong password");
        // The password cloud-init got is the one Runner gets.
        let vmid: u32 = id.split('-').next().unwrap().parse().unwrap();
        let vm = sim.admin().vm(vmid).unwrap();
        assert_eq!(vm.config.get("cipassword"), Some(&info.connector.password));
        assert_eq!(vm.config.get("ciuser").map(String::as_str), Some("Administrator"));
        assert!(!vm.config.contains_key("sshkeys"), "no SSH key for a Windows guest");
        passwords.push(info.connector.password.clone());
    }
    let ids: Vec<String> = running.iter().map(|(id, _)| id.clone()).collect();
    let mut errors: Vec<String> =
        group.decrease(vec!["999-nosuch".into()]).await.unwrap().failures.iter().map(ToString::to_string).collect();
    errors.push(group.connect_info("999-nosuch").await.unwrap_err().to_string());
    group.decrease(vec![ids[0].clone()]).await.unwrap();
    group.shutdown().await.unwrap();
    // A restart: the other instance's password died with the old process,
    // so it is removed rather than adopted.
    let group = ProxmoxGroup::new();
    let settings = ConnectorSettings { username: "Administrator".into(), ..ConnectorSettings::default() };
    group.init(config.to_string().as_bytes(), settings).await.expect("Init after the restart");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let states = group.update().await.unwrap();
        assert!(
            states.iter().all(|(_, state)| *state != InstanceState::Running),
            "an instance with an unknown password was adopted: {states:?}"
        );
        if states.is_empty() && sim.admin().vm(running[1].0.split('-').next().unwrap().parse().unwrap()).is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "never removed: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    group.shutdown().await.unwrap();
    sim.shutdown().await.unwrap();
    let text = capture.text();
    assert!(text.contains("PVE request"), "the capture saw the traffic");
    for password in &passwords {
        assert!(!text.contains(password.as_str()), "the generated password reached a log line");
        assert!(!errors.join("\n").contains(password.as_str()), "the generated password reached an error");
    }
}
