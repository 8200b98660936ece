//! Bad input never panics the plugin and always gets a clear error:
//! - `plugin_config` and the credentials file, fuzzed with proptest (random
//!   bytes, random JSON, known keys with random values and misspelt keys);
//!   each run prints how many inputs it tried;
//! - malformed PVE answers (truncated JSON, wrong types, HTML error pages
//!   of a proxy in front of PVE, empty bodies), from a tiny HTTP server in
//!   the test, since the simulator answers correctly;
//! - wrong TLS certificates (fingerprint mismatch, untrusted CA, a CA file
//!   of another cluster), against the simulator over HTTPS.
//!
//! `RELIABILITY_PROFILE=long` tries ten times as many fuzz inputs.

#[path = "support/reliability/mod.rs"]
mod reliability;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fleeting_plugin_proxmox::group::config::{PluginConfig, known_keys};
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup};
use fleeting_plugin_proxmox::pve::{ClientConfig, Credentials, PveClient, RetryPolicy, Secret, Upid, Vmid};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::Value;

use reliability::{Login, Profile};

fn cases() -> u32 {
    Profile::from_env().pick(1_000, 10_000, "RELIABILITY_FUZZ_CASES")
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })
}

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u32>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
        ".{0,24}".prop_map(Value::String),
        // Plausible values of the right shape, so validation goes deep.
        prop::sample::select(vec![
            "10m",
            "0s",
            "-1",
            "9100-9199",
            "9199-9100",
            "https://pve:8006",
            "auto",
            "ipv6",
            "AA:BB"
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,10}", inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A known key, or one with a character changed, dropped or added.
fn key_or_typo(keys: Vec<String>) -> impl Strategy<Value = String> {
    (prop::sample::select(keys), 0..4u8, any::<prop::sample::Index>(), prop::char::range('a', 'z')).prop_map(
        |(key, how, at, c)| {
            let mut chars: Vec<char> = key.chars().collect();
            let i = at.index(chars.len());
            match how {
                0 => chars[i] = c,
                1 => {
                    chars.remove(i);
                }
                2 => chars.insert(i, c),
                _ => {}
            }
            chars.into_iter().collect()
        },
    )
}

/// Every problem of a rejected `plugin_config` names the setting it is
/// about (in backquotes) or says the whole input is not a settings table.
fn assert_clear_config_error(input: &str, error: &str, problems: &[String]) {
    assert!(error.starts_with("could not use plugin_config"), "{error}");
    assert!(!problems.is_empty(), "an error without problems for {input}");
    for problem in problems {
        let names_key = problem.contains('`');
        let whole = problem.contains("[runners.autoscaler.plugin_config]");
        assert!(names_key || whole, "problem names no setting: {problem:?} (input {input})");
    }
}

#[test]
fn fuzzed_plugin_config_never_panics_and_names_the_setting() {
    let tried = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    let check = |bytes: &[u8]| {
        tried.fetch_add(1, Ordering::Relaxed);
        let input = String::from_utf8_lossy(bytes).into_owned();
        match std::panic::catch_unwind(|| PluginConfig::parse(bytes)) {
            Err(_) => panic!("PluginConfig::parse panicked on {input:?}"),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                assert_clear_config_error(&input, &err.to_string(), &err.problems);
            }
        }
    };
    let keys = known_keys();
    runner()
        .run(&prop::collection::vec(any::<u8>(), 0..256), |bytes| {
            check(&bytes);
            Ok(())
        })
        .unwrap();
    runner()
        .run(&json_value(), |value| {
            check(value.to_string().as_bytes());
            Ok(())
        })
        .unwrap();
    let settings = prop::collection::btree_map(key_or_typo(keys.clone()), json_value(), 0..12);
    runner()
        .run(&settings, |map| {
            let text = Value::Object(map.clone().into_iter().collect()).to_string();
            check(text.as_bytes());
            // A misspelt key is never a problem, but it is reported once,
            // whether the rest is valid or not.
            let ignored = match PluginConfig::parse(text.as_bytes()) {
                Ok(parsed) => parsed.warnings,
                Err(err) => {
                    let shown = err.to_string();
                    for key in map.keys().filter(|k| !keys.contains(k)) {
                        let named = format!("`{key}`");
                        assert!(
                            !err.problems.iter().any(|p| p.starts_with(&named)),
                            "unknown key {key:?} is a problem: {shown}"
                        );
                    }
                    err.ignored
                }
            };
            let unknown: Vec<&String> = map.keys().filter(|k| !keys.contains(k)).collect();
            let warned: Vec<&String> = ignored.iter().map(|w| &w.key).collect();
            assert_eq!(warned, unknown, "one warning per unknown key");
            Ok(())
        })
        .unwrap();
    // A valid config with one key broken: that key is named.
    let valid = serde_json::json!({
        "url": "https://pve.example.com:8006", "credentials_file_path": "/etc/pve.json", "pool": "ci",
        "template_id": 9000, "max_instances": 5,
    });
    assert!(PluginConfig::parse(valid.to_string().as_bytes()).is_ok());
    // Unknown keys of any name and value never make a valid config fail.
    runner()
        .run(&prop::collection::btree_map(".{1,24}", json_value(), 0..6), |extra| {
            let mut config = valid.clone();
            for (key, value) in &extra {
                if !keys.iter().any(|k| k.eq_ignore_ascii_case(key)) {
                    config[key] = value.clone();
                }
            }
            let text = config.to_string();
            check(text.as_bytes());
            let parsed = PluginConfig::parse(text.as_bytes());
            assert!(parsed.is_ok(), "unknown keys failed a valid config: {text}");
            Ok(())
        })
        .unwrap();
    runner()
        .run(&(prop::sample::select(keys.clone()), json_value()), |(key, value)| {
            let mut broken = valid.clone();
            broken[&key] = value.clone();
            let text = broken.to_string();
            check(text.as_bytes());
            if let Err(err) = PluginConfig::parse(text.as_bytes()) {
                let named = format!("`{key}`");
                assert!(err.to_string().contains(&named), "{key} = {value} rejected without naming it: {err}");
            }
            Ok(())
        })
        .unwrap();
    eprintln!(
        "bad_input: plugin_config: {} inputs tried, {} rejected with a clear error, 0 panics",
        tried.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed)
    );
}

const SECRET_KEYS: &[&str] = &["password", "token_secret", "otp", "totp_secret"];
const CREDENTIAL_KEYS: &[&str] =
    &["realm", "username", "password", "otp", "path", "privs", "token_id", "token_secret", "totp_secret"];

#[test]
fn fuzzed_credentials_file_never_panics_nor_echoes_a_secret() {
    let tried = AtomicU64::new(0);
    let rejected = AtomicU64::new(0);
    let check = |text: &str| {
        tried.fetch_add(1, Ordering::Relaxed);
        match std::panic::catch_unwind(|| Credentials::parse(text, "/etc/gitlab-runner/pve.json")) {
            Err(_) => panic!("Credentials::parse panicked on {text:?}"),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                rejected.fetch_add(1, Ordering::Relaxed);
                let message = err.to_string();
                assert!(
                    message.starts_with("could not load credentials file /etc/gitlab-runner/pve.json: "),
                    "{message}"
                );
                assert!(!err.problems.is_empty());
                // Secret values are generated with this prefix; none may be echoed.
                assert!(!message.contains("S3CRET"), "a secret leaked into the error: {message}");
                for problem in &err.problems {
                    let names_field =
                        problem.contains('`') || problem.contains("JSON") || problem.contains("no credentials");
                    assert!(names_field, "problem names no field: {problem:?} (input {text})");
                }
            }
        }
    };
    runner()
        .run(&".{0,200}", |text| {
            check(&text);
            Ok(())
        })
        .unwrap();
    runner()
        .run(&json_value(), |value| {
            check(&value.to_string());
            Ok(())
        })
        .unwrap();
    let keys: Vec<String> = CREDENTIAL_KEYS.iter().map(|k| k.to_string()).collect();
    let value = prop_oneof![
        3 => "[A-Za-z0-9@!._-]{0,16}".prop_map(Value::String),
        1 => json_value(),
    ];
    let secret = prop_oneof![
        3 => "[A-Z2-7]{0,20}".prop_map(|s| Value::String(format!("S3CRET{s}"))),
        1 => "[a-z0-9 =]{0,12}".prop_map(|s| Value::String(format!("S3CRET {s}"))),
    ];
    let files = prop::collection::btree_map(key_or_typo(keys), (value, secret), 0..8);
    runner()
        .run(&files, |map| {
            let object: serde_json::Map<String, Value> = map
                .into_iter()
                .map(|(key, (plain, secret))| {
                    let value = if SECRET_KEYS.contains(&key.as_str()) { secret } else { plain };
                    (key, value)
                })
                .collect();
            check(&Value::Object(object).to_string());
            Ok(())
        })
        .unwrap();
    // Valid files with one field changed: accepted and rejected mixed.
    let valid_files = vec![
        serde_json::json!({ "token_id": "fleeting@pve!ci", "token_secret": "S3CRETTOKEN" }),
        serde_json::json!({ "username": "fleeting", "realm": "pve", "password": "S3CRETPASS" }),
        serde_json::json!({ "username": "fleeting@pve", "password": "S3CRETPASS", "totp_secret": "JBSWY3DPEHPK3PXP" }),
    ];
    for valid in &valid_files {
        assert!(Credentials::parse(&valid.to_string(), "valid").is_ok(), "{valid}");
    }
    let field = prop::sample::select(CREDENTIAL_KEYS.to_vec());
    let change = prop_oneof![
        "[A-Za-z0-9@!._-]{0,16}".prop_map(|s| Some(Value::String(s))),
        json_value().prop_map(Some),
        Just(None),
    ];
    runner()
        .run(&(prop::sample::select(valid_files), field, change), |(mut file, key, change)| {
            match change {
                Some(Value::String(text)) if SECRET_KEYS.contains(&key) => {
                    file[key] = Value::String(format!("S3CRET{text}"))
                }
                Some(value) => file[key] = value,
                None => {
                    file.as_object_mut().unwrap().remove(key);
                }
            }
            check(&file.to_string());
            Ok(())
        })
        .unwrap();
    eprintln!(
        "bad_input: credentials file: {} inputs tried, {} rejected with a clear error, 0 panics, 0 secrets echoed",
        tried.load(Ordering::Relaxed),
        rejected.load(Ordering::Relaxed)
    );
}

/// One canned answer: status, content type, body.
#[derive(Clone)]
struct Canned {
    status: u16,
    content_type: &'static str,
    body: String,
}

/// A stand-in for a broken PVE or a proxy in front of it: answers every
/// request with the canned answer of the moment.
async fn broken_server(answer: Arc<Mutex<Canned>>) -> String {
    use axum::response::IntoResponse;
    let app = axum::Router::new().fallback(move || {
        let answer = answer.clone();
        async move {
            let canned = answer.lock().unwrap().clone();
            (
                axum::http::StatusCode::from_u16(canned.status).unwrap(),
                [(axum::http::header::CONTENT_TYPE, canned.content_type)],
                canned.body,
            )
                .into_response()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

const HTML_502: &str = "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx/1.22.1</center>\r\n</body>\r\n</html>\r\n";
const HTML_LOGIN: &str = "<!DOCTYPE html><html><head><title>Sign in - corporate proxy</title></head><body><form action=/login>…</form></body></html>";

fn malformed_answers() -> Vec<(&'static str, Canned)> {
    let json = |body: &str| Canned { status: 200, content_type: "application/json;charset=UTF-8", body: body.into() };
    vec![
        ("truncated JSON", json(r#"{"data":[{"vmid":100,"node":"pve1","type":"qemu","sta"#)),
        ("truncated envelope", json(r#"{"data":"#)),
        ("empty body", json("")),
        ("not JSON", json("hello")),
        ("wrong type: data is a string", json(r#"{"data":"oops"}"#)),
        ("wrong type: data is a number", json(r#"{"data":42}"#)),
        (
            "wrong type: vmid is an object",
            json(r#"{"data":[{"vmid":{"x":1},"node":"pve1","type":"qemu"}],"version":{"x":1}}"#),
        ),
        (
            "wrong type: every field is an array",
            json(r#"{"data":{"version":[1],"release":[2],"repoid":[3],"upid":[4],"status":[5]}}"#),
        ),
        ("null data", json(r#"{"data":null}"#)),
        ("no envelope", json(r#"[{"vmid":100}]"#)),
        ("HTML 502 from a proxy", Canned { status: 502, content_type: "text/html", body: HTML_502.into() }),
        (
            "HTML 200 from a proxy login page",
            Canned { status: 200, content_type: "text/html", body: HTML_LOGIN.into() },
        ),
        ("HTML 403 from a proxy", Canned { status: 403, content_type: "text/html", body: HTML_LOGIN.into() }),
        (
            "HTML 404",
            Canned { status: 404, content_type: "text/html", body: "<html><body>Not Found</body></html>".into() },
        ),
        (
            "JSON 500 without reason",
            Canned { status: 500, content_type: "application/json", body: r#"{"data":null}"#.into() },
        ),
        (
            "gigantic error page",
            Canned { status: 503, content_type: "text/html", body: "<p>overloaded</p>".repeat(20_000) },
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_pve_answers_give_clear_errors() {
    let canned = Arc::new(Mutex::new(Canned { status: 200, content_type: "application/json", body: String::new() }));
    let url = broken_server(canned.clone()).await;
    let token = Credentials::Token { token_id: "fleeting@pve!ci".into(), secret: Secret::new("not-used-here") };
    let mut config = ClientConfig::new(url.clone(), token);
    config.request_timeout = Duration::from_secs(5);
    config.retry =
        RetryPolicy { max_attempts: 2, initial_delay: Duration::from_millis(10), max_delay: Duration::from_millis(20) };
    let upid: Upid = "UPID:pve1:00001234:00005678:65000000:qmclone:9000:fleeting@pve!ci:".parse().unwrap();
    let mut tried = 0;
    for (name, answer) in malformed_answers() {
        *canned.lock().unwrap() = answer.clone();
        // A fresh client per case: the PVE version is cached after one success.
        let client = PveClient::new(config.clone()).unwrap();
        let mut errors: BTreeMap<&str, String> = BTreeMap::new();
        macro_rules! call {
            ($what:expr, $call:expr) => {{
                tried += 1;
                match $call.await {
                    Ok(value) => {
                        // Some answers are acceptable to some calls (e.g. an
                        // empty object); a success must not invent data.
                        let shown = format!("{value:?}");
                        assert!(
                            !shown.contains("pve1:00001234") || $what == "wait_task",
                            "{name}: {}: invented {shown}",
                            $what
                        );
                    }
                    Err(err) => {
                        errors.insert($what, err.to_string());
                    }
                }
            }};
        }
        call!("version", client.version());
        call!("cluster_vms", client.cluster_vms());
        call!("next_vmid", client.next_vmid(None));
        call!("vm_config", client.vm_config("pve1", Vmid(100)));
        call!("vm_status", client.vm_status("pve1", Vmid(100)));
        call!("guest_interfaces", client.guest_interfaces("pve1", Vmid(100)));
        call!("wait_task", client.wait_task(&upid, Duration::from_millis(300)));
        assert!(errors.len() >= 5, "{name}: only {} of 7 calls failed: {errors:?}", errors.len());
        for (what, error) in &errors {
            assert!(error.starts_with("could not "), "{name}: {what}: {error}");
            assert!(error.len() < 2_000, "{name}: {what}: the error carries the whole answer ({} bytes)", error.len());
            assert!(!error.contains("not-used-here"), "{name}: {what}: the token secret leaked: {error}");
        }
        eprintln!("bad_input: {name}: e.g. {}", errors.values().next().unwrap());
    }

    // Through Init: the operator sees one clear error, and the plugin lives on.
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    for (name, answer) in malformed_answers() {
        *canned.lock().unwrap() = answer;
        let group = ProxmoxGroup::new();
        let config = serde_json::json!({
            "url": url, "credentials_file_path": credentials, "pool": "ci", "template_id": 9000, "max_instances": 2,
            "request_timeout": "5s",
        });
        tried += 1;
        let err =
            group.init(config.to_string().as_bytes(), ConnectorSettings::default()).await.expect_err(name).to_string();
        assert!(err.starts_with("could not "), "{name}: Init: {err}");
        assert!(err.len() < 2_000, "{name}: Init error is {} bytes", err.len());
    }
    eprintln!(
        "bad_input: malformed PVE answers: {} cases, {tried} calls, every one a clear error, 0 panics",
        malformed_answers().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tls_certificates_give_clear_errors() {
    let sim = reliability::start_sim(reliability::scenario_with_foreign_vms(1.0), 1).await;
    let dir = tempfile::tempdir().unwrap();
    let credentials = reliability::write_credentials(dir.path(), Login::Token);
    let base = reliability::plugin_config(&sim, &credentials, 2);
    let init = |config: serde_json::Value| async move {
        let group = ProxmoxGroup::new();
        group
            .init(config.to_string().as_bytes(), ConnectorSettings::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    // The pinned fingerprint is right: it works.
    init(base.clone()).await.expect("the right fingerprint");

    let mut cases: Vec<(&str, serde_json::Value, &[&str])> = Vec::new();
    let mut wrong = base.clone();
    wrong["tls_fingerprint"] = ["AB"; 32].join(":").into();
    cases.push(("fingerprint mismatch", wrong, &["tls_fingerprint", "fingerprint"]));
    let mut unpinned = base.clone();
    unpinned.as_object_mut().unwrap().remove("tls_fingerprint");
    cases.push(("untrusted self-signed CA", unpinned.clone(), &["ca_file", "tls_fingerprint"]));
    // The CA of another cluster.
    let other = rcgen::generate_simple_self_signed(vec!["other-cluster".to_string()]).unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    std::fs::write(&other_ca, other.cert.pem()).unwrap();
    let mut other_cluster = unpinned.clone();
    other_cluster["ca_file"] = other_ca.display().to_string().into();
    cases.push(("CA file of another cluster", other_cluster, &["certificate"]));
    let mut garbage = unpinned.clone();
    let not_pem = dir.path().join("not-a-ca.pem");
    std::fs::write(&not_pem, "this is not a certificate").unwrap();
    garbage["ca_file"] = not_pem.display().to_string().into();
    cases.push(("CA file without a certificate", garbage, &["ca_file"]));
    let mut missing = unpinned.clone();
    missing["ca_file"] = "/nonexistent/pve-root-ca.pem".into();
    cases.push(("missing CA file", missing, &["ca_file", "/nonexistent/pve-root-ca.pem"]));
    let mut malformed = base.clone();
    malformed["tls_fingerprint"] = "AB:CD".into();
    cases.push(("malformed fingerprint", malformed, &["tls_fingerprint"]));
    let mut plain = base.clone();
    plain["url"] = sim.base_url().replace("https://", "http://").into();
    cases.push(("plain HTTP to an HTTPS port", plain, &["could not"]));

    for (name, config, expected) in &cases {
        let err = init(config.clone()).await.expect_err(name);
        assert!(err.starts_with("could not "), "{name}: {err}");
        for word in *expected {
            assert!(err.contains(word), "{name}: the error does not mention {word}: {err}");
        }
        eprintln!("bad_input: {name}: {err}");
    }
    sim.shutdown().await.unwrap();
}
