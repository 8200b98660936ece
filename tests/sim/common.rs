//! Helpers shared by the simulator's tests (`tests/sim_*.rs`): fast
//! scenarios, clients (the project's `PveClient` and raw `reqwest`), and
//! waiting on simulated events without timed assertions.
#![allow(dead_code)]

use std::time::Duration;

use fleeting_plugin_proxmox::pve::{ClientConfig, Credentials, PveClient, RetryPolicy, SecondFactor, Secret, Upid};
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, SimHandle, Simulator};

/// The default cluster, sped up: PVE's durations, 50 times faster, and a
/// 401 delay that does not slow the suite.
pub fn fast_scenario() -> Scenario {
    let mut scenario = Scenario { seed: Some(11), time_scale: 50.0, ..Scenario::default() };
    scenario.timings.unauthorized_delay = 0.5;
    scenario
}

pub async fn start(scenario: Scenario) -> SimHandle {
    Simulator::start(SimConfig::new(scenario).plain_http()).await.expect("the simulator starts")
}

pub async fn start_https(scenario: Scenario) -> SimHandle {
    Simulator::start(SimConfig::new(scenario)).await.expect("the simulator starts")
}

fn no_retries() -> RetryPolicy {
    RetryPolicy { max_attempts: 1, initial_delay: Duration::from_millis(10), max_delay: Duration::from_millis(10) }
}

pub fn client_config(sim: &SimHandle, credentials: Credentials) -> ClientConfig {
    let mut config = ClientConfig::new(sim.base_url(), credentials);
    config.tls.fingerprint = sim.fingerprint().map(|text| text.parse().expect("the simulator's fingerprint parses"));
    config.retry = no_retries();
    config
}

/// The default scenario's API token (`fleeting@pve!ci`).
pub fn token_client(sim: &SimHandle) -> PveClient {
    PveClient::new(client_config(sim, token(defaults::TOKEN_ID, defaults::TOKEN_SECRET))).expect("the client builds")
}

pub fn token(token_id: &str, secret: &str) -> Credentials {
    Credentials::Token { token_id: token_id.into(), secret: Secret::new(secret) }
}

pub fn password(userid: &str, password: &str) -> Credentials {
    Credentials::Password {
        userid: userid.into(),
        password: Secret::new(password),
        second_factor: SecondFactor::None,
        privilege_check: None,
    }
}

pub fn root_client(sim: &SimHandle) -> PveClient {
    PveClient::new(client_config(sim, password("root@pam", defaults::ROOT_PASSWORD))).expect("the client builds")
}

/// A raw HTTP client for exact wire checks (reason phrase, body bytes).
pub fn raw_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest builds")
}

pub fn token_header() -> String {
    format!("PVEAPIToken={}={}", defaults::TOKEN_ID, defaults::TOKEN_SECRET)
}

/// PVE's error text from the status line (hyper keeps only non-standard
/// phrases; a standard one is the status's canonical reason).
pub fn reason(response: &reqwest::Response) -> String {
    response
        .extensions()
        .get::<hyper::ext::ReasonPhrase>()
        .map(|phrase| String::from_utf8_lossy(phrase.as_bytes()).into_owned())
        .unwrap_or_else(|| response.status().canonical_reason().unwrap_or_default().to_string())
}

/// Waits for a task with a generous real-time bound (a hung task fails the
/// test instead of hanging it).
pub async fn wait(pve: &PveClient, upid: &Upid) -> Result<(), fleeting_plugin_proxmox::pve::Error> {
    pve.wait_task(upid, Duration::from_secs(60)).await.map(|_| ())
}

/// Polls `condition` every 20 ms until it holds; fails after 30 s.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut condition: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(tokio::time::Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Logs root@pam in over raw HTTP; returns the `Cookie` and
/// `CSRFPreventionToken` header values.
pub async fn root_ticket(sim: &SimHandle) -> (String, String) {
    let response = raw_client()
        .post(format!("{}/access/ticket", sim.api_url()))
        .form(&[("username", "root@pam"), ("password", defaults::ROOT_PASSWORD)])
        .send()
        .await
        .expect("the login request is answered");
    assert_eq!(response.status(), 200, "{}", reason(&response));
    let body: serde_json::Value = response.json().await.expect("the login answer is JSON");
    let ticket = body["data"]["ticket"].as_str().expect("a ticket").to_string();
    let csrf = body["data"]["CSRFPreventionToken"].as_str().expect("a CSRF token").to_string();
    (format!("PVEAuthCookie={ticket}"), csrf)
}
