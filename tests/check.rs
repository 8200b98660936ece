//! `fleeting-plugin-proxmox check` against the simulator: a correct setup
//! passes; each broken one fails with the right line and fix; the
//! least-privilege roles the docs generate are exactly enough for the real
//! engine; docs/proxmox-setup.md matches the code.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fleeting_plugin_proxmox::check::privileges::{self, AclPlace};
use fleeting_plugin_proxmox::check::{self, Outcome, Selection, Status};
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::pve::PveVersion;
use fleeting_plugin_proxmox::sim::config::{AclSpec, VmSpec, defaults};
use fleeting_plugin_proxmox::sim::{Scenario, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};

/// A different, valid TOTP secret (the user's is `defaults::TFA_TOTP_SECRET`).
const WRONG_TOTP_SECRET: &str = "KRSXG5CTMVRXEZLUKRSXG5CT";

struct Setup {
    sim: SimHandle,
    dir: tempfile::TempDir,
    config: Value,
}

impl Setup {
    async fn start(scenario: Scenario) -> Self {
        let sim = Simulator::start(SimConfig::new(scenario)).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let credentials = write_private(
            dir.path(),
            "pve.json",
            &json!({ "token_id": defaults::TOKEN_ID, "token_secret": defaults::TOKEN_SECRET }),
        );
        let config = json!({
            "url": sim.base_url(),
            "tls_fingerprint": sim.fingerprint(),
            "credentials_file_path": credentials,
            "pool": defaults::POOL,
            "template_id": defaults::TEMPLATE_VMID,
            "max_instances": 5,
            "vmid_range": "9100-9119",
        });
        Self { sim, dir, config }
    }

    fn credentials(&self, name: &str, value: &Value) -> PathBuf {
        write_private(self.dir.path(), name, value)
    }

    async fn check(&self, config: &Value, use_static_credentials: Option<bool>) -> Outcome {
        let path = self.dir.path().join("plugin_config.json");
        std::fs::write(&path, config.to_string()).unwrap();
        let outcome = check::run(&Selection { config: path, runner: None, use_static_credentials }).await;
        assert_no_secrets(&outcome.render());
        outcome
    }
}

fn write_private(dir: &Path, name: &str, value: &Value) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, value.to_string()).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn assert_no_secrets(text: &str) {
    for secret in [
        defaults::TOKEN_SECRET,
        defaults::TFA_PASSWORD,
        defaults::TFA_TOTP_SECRET,
        WRONG_TOTP_SECRET,
        defaults::USER_PASSWORD,
    ] {
        assert!(!text.contains(secret), "a secret reached the output:\n{text}");
    }
}

/// The one failing line for `subject`, with its fix.
fn failure<'a>(outcome: &'a Outcome, subject: &str) -> (&'a str, &'a str) {
    let finding = outcome.reports[0]
        .findings
        .iter()
        .find(|f| f.status == Status::Fail && f.subject == subject)
        .unwrap_or_else(|| panic!("no failure for {subject:?} in:\n{}", outcome.render()));
    (finding.detail.as_str(), finding.fix.as_deref().unwrap_or_default())
}

fn failed_subjects(outcome: &Outcome) -> Vec<String> {
    outcome.reports.iter().flat_map(|r| r.failures().map(|f| f.subject.clone())).collect()
}

/// The setup docs/proxmox-setup.md describes: only the generated roles,
/// the template outside the pool.
fn least_privilege(version: &str) -> Scenario {
    let parsed = PveVersion::parse(version).unwrap();
    let mut scenario = Scenario { pve_version: version.into(), time_scale: 50.0, ..Scenario::default() };
    scenario.timings.resources_staleness = 0.5;
    scenario.vms[0].pool = None;
    scenario.roles = AclPlace::ALL
        .iter()
        .map(|place| {
            (
                place.role().to_string(),
                privileges::role_privileges(&parsed, *place).iter().map(|p| p.to_string()).collect::<Vec<_>>(),
            )
        })
        .filter(|(_, privs)| !privs.is_empty())
        .collect();
    let objects = [
        (AclPlace::Pool, "ci"),
        (AclPlace::Template, "9000"),
        (AclPlace::Storage, "local-lvm"),
        (AclPlace::Bridge, "vmbr0"),
    ];
    scenario.acl = objects
        .into_iter()
        .filter(|(place, _)| scenario.roles.contains_key(place.role()))
        .map(|(place, object)| AclSpec {
            path: place.path(object),
            roles: vec![place.role().to_string()],
            users: vec![defaults::USER.into(), defaults::TFA_USER.into()],
            tokens: vec![defaults::TOKEN_ID.into()],
            ..AclSpec::default()
        })
        .collect();
    scenario
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_setup_passes() {
    let setup = Setup::start(Scenario::default()).await;
    let outcome = setup.check(&setup.config, None).await;
    let text = outcome.render();
    println!("{text}");
    assert!(outcome.passed(), "{text}");
    assert_eq!(outcome.exit_code(), 0);
    for expected in [
        "ok    PVE version: 9.1.3",
        "ok    credentials: accepted by PVE",
        "ok    TLS: the certificate matches tls_fingerprint",
        "ok    pool ci: exists",
        "ok    template 9000: a template on node pve1",
        "ok    template 9000 guest agent: enabled",
        "ok    template 9000 cloud-init drive: ide2",
        "ok    clone mode: linked clones on local-lvm (lvmthin)",
        "ok    privileges on /pool/ci: Pool.Audit, VM.Allocate",
        "ok    privileges on /vms/9000: VM.Audit, VM.Clone",
        "ok    privileges on /storage/local-lvm: Datastore.AllocateSpace",
        "ok    privileges on /sdn/zones/localnetwork/vmbr0: SDN.Use",
        "ok    vmid_range 9100-9119: 20 of 20 free",
        "ok    max_instances: 5 fits vmid_range",
        "PASSED:",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_login_with_totp_passes_and_a_wrong_totp_fails() {
    let setup = Setup::start(Scenario::default()).await;
    let mut config = setup.config.clone();
    config["credentials_file_path"] = json!(setup.credentials(
        "tfa.json",
        &json!({ "username": defaults::TFA_USER, "password": defaults::TFA_PASSWORD, "totp_secret": defaults::TFA_TOTP_SECRET })
    ));
    let outcome = setup.check(&config, None).await;
    assert!(outcome.passed(), "{}", outcome.render());
    assert!(outcome.render().contains("password login as tfa@pve with a TOTP secret"));

    config["credentials_file_path"] = json!(setup.credentials(
        "wrong-totp.json",
        &json!({ "username": defaults::TFA_USER, "password": defaults::TFA_PASSWORD, "totp_secret": WRONG_TOTP_SECRET })
    ));
    let outcome = setup.check(&config, None).await;
    assert_eq!(outcome.exit_code(), 1);
    let (detail, fix) = failure(&outcome, "credentials");
    assert!(detail.contains("PVE rejected the second factor"), "{detail}");
    assert!(
        fix.contains("`totp_secret` is the secret of this user's TOTP factor") && fix.contains("timedatectl"),
        "{fix}"
    );
    assert_eq!(failed_subjects(&outcome), ["credentials"], "{}", outcome.render());
    assert!(outcome.render().contains("skip  remaining checks: not run: no authenticated connection to PVE"));
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fingerprint_mismatch_fails_and_names_the_servers_fingerprint() {
    let setup = Setup::start(Scenario::default()).await;
    let mut config = setup.config.clone();
    let wrong = ["AB"; 32].join(":");
    config["tls_fingerprint"] = json!(wrong);
    let outcome = setup.check(&config, None).await;
    assert_eq!(outcome.exit_code(), 1);
    let actual = setup.sim.fingerprint().unwrap().to_string();
    let (detail, fix) = failure(&outcome, "TLS");
    assert!(detail.contains(&format!("does not match tls_fingerprint {wrong}")), "{detail}");
    assert!(detail.contains(&actual), "{detail}");
    assert!(fix.contains(&format!("set tls_fingerprint = \"{actual}\"")), "{fix}");
    assert_eq!(failed_subjects(&outcome), ["TLS"]);

    // Without any pin, the self-signed certificate is untrusted: same fix.
    config.as_object_mut().unwrap().remove("tls_fingerprint");
    let outcome = setup.check(&config, None).await;
    let (_, fix) = failure(&outcome, "TLS");
    assert!(fix.contains("ca_file") && fix.contains(&format!("tls_fingerprint = \"{actual}\"")), "{fix}");
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_privilege_fails_with_the_pveum_command() {
    let mut scenario = least_privilege("9.1.3");
    scenario.roles.get_mut("FleetingPool").unwrap().retain(|p| p != "VM.PowerMgmt");
    // No ACL at all on the storage.
    scenario.acl.retain(|acl| !acl.path.starts_with("/storage/"));
    let setup = Setup::start(scenario).await;
    let outcome = setup.check(&setup.config, None).await;
    assert_eq!(outcome.exit_code(), 1, "{}", outcome.render());

    let (detail, fix) = failure(&outcome, "privilege VM.PowerMgmt on /pool/ci");
    assert!(detail.contains("start, stop, suspend and resume instances"), "{detail}");
    assert!(fix.starts_with("pveum role modify FleetingPool --append --privs VM.PowerMgmt"), "{fix}");

    let (_, fix) = failure(&outcome, "privilege Datastore.AllocateSpace on /storage/local-lvm");
    assert!(
        fix.starts_with("pveum acl modify /storage/local-lvm --roles FleetingStorage --users fleeting@pve --tokens 'fleeting@pve!ci'"),
        "{fix}"
    );
    assert!(fix.contains("pveum role add FleetingStorage --privs \"Datastore.AllocateSpace\""), "{fix}");
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_without_agent_or_cloud_init_fails() {
    let mut scenario = Scenario::default();
    scenario.vms[0].config.remove("agent");
    scenario.vms[0].config.remove("ide2");
    let setup = Setup::start(scenario).await;
    let outcome = setup.check(&setup.config, None).await;
    assert_eq!(outcome.exit_code(), 1);
    let (detail, fix) = failure(&outcome, "template 9000 guest agent");
    assert!(detail.contains("cannot learn the instances' addresses"), "{detail}");
    assert!(fix.contains("`qm set 9000 --agent enabled=1`") && fix.contains("qemu-guest-agent"), "{fix}");
    let (_, fix) = failure(&outcome, "template 9000 cloud-init drive");
    assert!(fix.contains("`qm set 9000 --ide2 local-lvm:cloudinit`") && fix.contains("`key_path`"), "{fix}");
    assert_eq!(failed_subjects(&outcome), ["template 9000 guest agent", "template 9000 cloud-init drive"]);

    // With Runner's own credentials no cloud-init drive is needed.
    let outcome = setup.check(&setup.config, Some(true)).await;
    assert_eq!(failed_subjects(&outcome), ["template 9000 guest agent"]);
    assert!(outcome.render().contains("ok    template 9000 cloud-init drive: none, and none needed"));
    setup.sim.shutdown().await.unwrap();
}

/// A VM with a static `ipconfig0`, in `pool` or outside any pool.
fn vm_with_address(vmid: u32, pool: Option<&str>, ipconfig0: &str) -> VmSpec {
    let config = [
        ("name", "static-host".to_string()),
        ("net0", "virtio,bridge=vmbr0".to_string()),
        ("ipconfig0", ipconfig0.to_string()),
        ("scsi0", format!("local-lvm:vm-{vmid}-disk-0,size=4G")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    VmSpec { vmid, node: "pve1".into(), pool: pool.map(str::to_string), config, ..VmSpec::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_pool_is_checked_against_the_vms_and_the_template() {
    let mut scenario = Scenario::default();
    scenario.vms[0].config.remove("agent");
    scenario.vms.push(vm_with_address(300, None, "ip=127.0.1.20/26,gw=127.0.1.1"));
    scenario.vms.push(vm_with_address(301, Some(defaults::POOL), "ip=127.0.1.21/26,gw=127.0.1.1"));
    scenario.vms.push(vm_with_address(302, None, "ip=10.9.9.9/24,gw=10.9.9.1"));
    // The outside VMs are visible to the token, as on a cluster where it may audit every VM.
    for vmid in [300, 302] {
        scenario.acl.push(AclSpec {
            path: format!("/vms/{vmid}"),
            roles: vec!["PVEAuditor".into()],
            tokens: vec![defaults::TOKEN_ID.into()],
            users: vec![defaults::USER.into()],
            ..AclSpec::default()
        });
    }
    let setup = Setup::start(scenario).await;
    let mut config = setup.config.clone();
    config["network_mode"] = "static".into();
    config["ip_pool_network"] = "127.0.1.0/26".into();
    config["ip_pool_gateway"] = "127.0.1.1".into();
    config["agent_required"] = false.into();
    let outcome = setup.check(&config, None).await;
    let text = outcome.render();
    println!("{text}");
    for expected in [
        "ok    static pool: 127.0.1.0/26 (127.0.1.1-127.0.1.62): 61 addresses",
        "ok    template 9000 guest agent: not enabled, and not needed: `agent_required = false`",
        "ok    template 9000 static address: cloud-init drive ide2: cloud-init applies the ipconfig0",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (detail, fix) = failure(&outcome, "addresses in use");
    assert!(detail.contains("127.0.1.20 (VM 300 static-host)"), "{detail}");
    assert!(
        !detail.contains("127.0.1.21") && !detail.contains("10.9.9.9"),
        "only outside the pool, inside its range: {detail}"
    );
    assert!(fix.contains("`ip_pool_exclude`"), "{fix}");
    assert_eq!(failed_subjects(&outcome), ["addresses in use"]);

    // Excluded, the address passes; a network snippet in cicustom would replace ipconfig0.
    config["ip_pool_exclude"] = "127.0.1.20".into();
    let outcome = setup.check(&config, None).await;
    assert!(outcome.passed(), "{}", outcome.render());
    assert!(outcome.render().contains("VMs in pool ci use 127.0.1.21 (VM 301 static-host) (never handed out)"));
    setup.sim.shutdown().await.unwrap();

    let mut scenario = Scenario::default();
    scenario.vms[0].config.insert("cicustom".into(), "network=local:snippets/net.yaml".into());
    let setup = Setup::start(scenario).await;
    config["url"] = setup.config["url"].clone();
    config["tls_fingerprint"] = setup.config["tls_fingerprint"].clone();
    config["credentials_file_path"] = setup.config["credentials_file_path"].clone();
    let outcome = setup.check(&config, None).await;
    let (detail, _) = failure(&outcome, "template 9000 static address");
    assert!(detail.contains("replaces the ipconfig0"), "{detail}");
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taken_ids_in_the_vmid_range_are_counted() {
    let mut scenario = Scenario::default();
    let mut other = scenario.vms[0].clone();
    other.vmid = 9100;
    other.template = false;
    other.pool = None;
    other.config.remove("ide2");
    other.config.insert("scsi0".into(), "local-lvm:vm-9100-disk-0,size=8G".into());
    scenario.vms.push(other);
    let setup = Setup::start(scenario).await;
    let mut config = setup.config.clone();
    config["vmid_range"] = json!("9100-9104");
    let outcome = setup.check(&config, None).await;
    let text = outcome.render();
    assert!(text.contains("warn  vmid_range 9100-9104: 1 id taken by other VMs: 9100"), "{text}");
    let (detail, fix) = failure(&outcome, "max_instances");
    assert!(detail.contains("5 does not fit vmid_range 9100-9104: only 4 ids are usable"), "{detail}");
    assert!(fix.contains("lower max_instances to 4"), "{fix}");
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_problems_are_reported_at_once() {
    let setup = Setup::start(Scenario::default()).await;
    let config = json!({ "url": setup.sim.base_url(), "tempalte_id": 9000, "max_instances": 0 });
    let outcome = setup.check(&config, None).await;
    let problems: Vec<&str> = outcome.reports[0].failures().map(|f| f.detail.as_str()).collect();
    assert!(problems.len() >= 4, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("`credentials_file_path` is required")), "{problems:?}");
    let text = outcome.render();
    assert!(
        text.contains("FAIL  plugin_config: `tempalte_id` is not a setting of this plugin and is ignored"),
        "{text}"
    );
    assert!(text.contains("fix: did you mean `template_id`? rename it"), "{text}");
    assert!(text.contains("skip  remaining checks: not run: they need a valid plugin_config"));
    setup.sim.shutdown().await.unwrap();
}

/// Keys that Init ignores (with a warning) fail `check`, each with its fix,
/// and the other checks still run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_keys_fail_with_their_fix_and_the_rest_is_checked() {
    let setup = Setup::start(Scenario::default()).await;
    let mut config = setup.config.clone();
    config["instance_tags_running"] = json!("ci;running");
    config["Pool"] = json!("other");
    config["api_url"] = json!("https://elsewhere:8006");
    config["token_secret"] = json!(defaults::TOKEN_SECRET);
    config["max_instance"] = json!(5);
    config["lazy_start_instances"] = json!(true);
    let outcome = setup.check(&config, None).await;
    let text = outcome.render();
    assert_eq!(outcome.exit_code(), 1, "{text}");
    assert!(text.contains("ok    plugin_config: 8 settings, all valid"), "{text}");
    let ignored: Vec<(&str, &str)> = outcome.reports[0]
        .failures()
        .filter(|f| f.subject == "plugin_config")
        .map(|f| (f.detail.as_str(), f.fix.as_deref().unwrap_or_default()))
        .collect();
    assert_eq!(ignored.len(), 5, "{text}");
    for (detail, fix) in [
        ("`Pool` is ignored: `pool` is set too", "remove `Pool` and keep `pool`"),
        (
            "`api_url` is not a setting of this plugin (it is one of nE0sIghT/fleeting-plugin-proxmox)",
            "rename it to `url`",
        ),
        ("`lazy_start_instances` is not a setting of this plugin (it is one of LeCyreaxYT", "remove it: "),
        ("`max_instance` is not a setting of this plugin and is ignored", "did you mean `max_instances`?"),
        ("`token_secret` is not a setting of this plugin", "`credentials_file_path`"),
    ] {
        assert!(ignored.iter().any(|(d, f)| d.starts_with(detail) && f.contains(fix)), "{detail} / {fix}:\n{text}");
    }
    // Nothing else failed: the cluster checks ran on the valid settings.
    assert_eq!(outcome.reports[0].failures().count(), 5, "{text}");
    assert!(text.contains("ok    template 9000: a template on node"), "{text}");
    setup.sim.shutdown().await.unwrap();
}

/// The roles docs/proxmox-setup.md creates are accepted by each release
/// (PVE rejects unknown privilege names) and pass `check`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_roles_pass_on_every_release() {
    for version in ["7.0", "7.4.3", "8.0.4", "8.4.1", "9.0.3", "9.1.3"] {
        let setup = Setup::start(least_privilege(version)).await;
        let outcome = setup.check(&setup.config, None).await;
        assert!(outcome.passed(), "PVE {version}:\n{}", outcome.render());
        let text = outcome.render();
        let agent = if version.starts_with('9') { "VM.GuestAgent.Audit" } else { "VM.Monitor" };
        assert!(text.contains(agent), "PVE {version}: {text}");
        assert_eq!(text.contains("SDN.Use"), !version.starts_with('7'), "PVE {version}: {text}");
        setup.sim.shutdown().await.unwrap();
    }
}

/// The privilege list is not just what `check` wants: the engine runs a
/// whole lifecycle with nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_roles_are_enough_for_the_engine() {
    for version in ["8.4.1", "9.1.3"] {
        let setup = Setup::start(least_privilege(version)).await;
        let mut config = setup.config.clone();
        config["boot_timeout"] = json!("60s");
        let group = ProxmoxGroup::new();
        group.init(config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
        let accepted = group.increase(2).await.unwrap();
        assert_eq!(accepted.succeeded, 2, "PVE {version}: {:?}", accepted.failures);
        let deadline = Instant::now() + Duration::from_secs(60);
        let running = loop {
            let states = group.update().await.unwrap();
            if states.len() == 2 && states.iter().all(|(_, s)| *s == InstanceState::Running) {
                break states;
            }
            assert!(Instant::now() < deadline, "PVE {version}: not running: {states:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        group.decrease(running.into_iter().map(|(id, _)| id).collect()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !group.update().await.unwrap().is_empty() {
            assert!(Instant::now() < deadline, "PVE {version}: instances not removed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let leftovers: Vec<u32> =
            setup.sim.admin().inventory().vms.iter().filter(|vm| !vm.template).map(|vm| vm.vmid).collect();
        assert!(leftovers.is_empty(), "PVE {version}: leaked {leftovers:?}");
        group.shutdown().await.unwrap();
        setup.sim.shutdown().await.unwrap();
    }
}

/// End to end through the binary: Runner's config.toml with two runners,
/// only the Proxmox one checked; then a failing plugin_config exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_checks_runners_config_toml() {
    let mut scenario = Scenario::default();
    scenario.vms[0].config.remove("ide2"); // fine: Runner brings its own key
    let setup = Setup::start(scenario).await;
    let plugin = &setup.config;
    let config_toml = format!(
        r#"concurrent = 10

[[runners]]
name = "aws"
executor = "docker-autoscaler"
[runners.autoscaler]
plugin = "aws:latest"
[runners.autoscaler.plugin_config]
name = "asg"

[[runners]]
name = "proxmox"
executor = "docker-autoscaler"
[runners.autoscaler]
plugin = "fleeting-plugin-proxmox"
max_instances = 5
[runners.autoscaler.connector_config]
username = "debian"
use_static_credentials = true
key_path = "/etc/gitlab-runner/id_ed25519"
[runners.autoscaler.plugin_config]
url = "{url}"
tls_fingerprint = "{fingerprint}"
credentials_file_path = "{credentials}"
pool = "ci"
template_id = 9000
max_instances = 5
vmid_range = "9100-9119"
tags = ["ci", "team-a"]
"#,
        url = plugin["url"].as_str().unwrap(),
        fingerprint = plugin["tls_fingerprint"].as_str().unwrap(),
        credentials = plugin["credentials_file_path"].as_str().unwrap(),
    );
    let toml_path = setup.dir.path().join("config.toml");
    std::fs::write(&toml_path, config_toml).unwrap();
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox")).args(args).output().unwrap()
        })
    };
    let output = run(vec!["check".into(), "--config".into(), toml_path.display().to_string()]).await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with(&format!("Checking runner \"proxmox\" in {}", toml_path.display())), "{stdout}");
    assert!(!stdout.contains("\"aws\""), "only the Proxmox runner is checked: {stdout}");
    assert!(stdout.contains("cloud-init drive: none, and none needed: Runner brings its own credentials"), "{stdout}");
    assert_no_secrets(&stdout);

    // The same runner with generated credentials needs the drive: exit 1.
    let output = run(vec![
        "check".into(),
        "--config".into(),
        toml_path.display().to_string(),
        "--runner".into(),
        "proxmox".into(),
        "--use-static-credentials".into(),
        "false".into(),
    ])
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  template 9000 cloud-init drive: it has no cloud-init drive"), "{stdout}");
    assert!(stdout.contains("FAILED: "), "{stdout}");
    setup.sim.shutdown().await.unwrap();
}

/// docs/proxmox-setup.md's generated blocks equal what the code generates.
/// Refresh with `UPDATE_DOCS=1 cargo test --test check docs_match`.
#[test]
fn docs_match_the_privilege_list() {
    let blocks = [
        ("privilege-table", privileges::privilege_table()),
        ("setup-pve7", format!("```sh\n{}```\n", privileges::setup_script(7))),
        ("setup-pve8", format!("```sh\n{}```\n", privileges::setup_script(8))),
        ("setup-pve9", format!("```sh\n{}```\n", privileges::setup_script(9))),
    ];
    // docs/proxmox-setup.md holds every block; the README the table and PVE 9.
    for (file, required) in [("docs/proxmox-setup.md", 4), ("README.md", 2)] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut expected = text.clone();
        let mut found = 0;
        for (name, content) in &blocks {
            let start = format!("<!-- generated:{name} -->\n");
            let end = format!("<!-- end:{name} -->");
            let Some(from) = expected.find(&start).map(|at| at + start.len()) else { continue };
            let to = from + expected[from..].find(&end).unwrap_or_else(|| panic!("{file} lacks the marker {end:?}"));
            expected.replace_range(from..to, content);
            found += 1;
        }
        assert_eq!(found, required, "{file} must hold {required} generated privilege blocks");
        if expected != text {
            if std::env::var_os("UPDATE_DOCS").is_some() || std::env::var_os("UPDATE_GENERATED").is_some() {
                std::fs::write(&path, &expected).unwrap();
                continue;
            }
            let diff = similar::TextDiff::from_lines(&text, &expected);
            panic!(
                "{file} differs from the code; refresh with `UPDATE_DOCS=1 cargo test --test check docs_match`:\n{}",
                diff.unified_diff()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_nodes_must_exist_and_be_reachable_from_the_template_storage() {
    let setup = Setup::start(Scenario::default()).await;
    let mut config = setup.config.clone();
    config["target_nodes"] = json!(["pve1", "pve9"]);
    let outcome = setup.check(&config, None).await;
    assert_eq!(outcome.exit_code(), 1);
    let (detail, _) = failure(&outcome, "target_nodes");
    assert!(detail.contains("pve9, which is not a node of this cluster (nodes: pve1, pve2)"), "{detail}");
    // The default template sits on local-lvm: another node cannot clone it,
    // unless it gets a copy (the default) …
    config["target_nodes"] = json!(["pve1", "pve2"]);
    config["template_stage_mode"] = json!("off");
    let outcome = setup.check(&config, None).await;
    let (detail, _) = failure(&outcome, "target_nodes");
    assert!(detail.contains("only from shared storage"), "{detail}");
    assert!(detail.contains("template_stage_mode"), "{detail}");
    // … which it does by default.
    config["template_stage_mode"] = json!("auto");
    assert_eq!(setup.check(&config, None).await.exit_code(), 0);
    config["target_nodes"] = json!(["pve1"]);
    assert_eq!(setup.check(&config, None).await.exit_code(), 0);
    setup.sim.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftover_volumes_of_a_vmid_without_a_vm_are_reported_with_the_command_that_frees_them() {
    let mut scenario = Scenario::default();
    // The storage admin's view: Datastore.Allocate on the clones' storage.
    scenario.acl.push(fleeting_plugin_proxmox::sim::config::AclSpec {
        path: "/storage/local-lvm".into(),
        roles: vec!["PVEDatastoreAdmin".into()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        ..Default::default()
    });
    let setup = Setup::start(scenario).await;
    let leftovers = setup.sim.admin().add_crashed_clone_leftovers("local-lvm", 300).unwrap();
    let outcome = setup.check(&setup.config, Some(true)).await;
    let finding = outcome.reports[0]
        .findings
        .iter()
        .find(|f| f.subject == "leftover volumes")
        .unwrap_or_else(|| panic!("{}", outcome.render()));
    assert_eq!(finding.status, Status::Warn, "{}", outcome.render());
    assert!(finding.detail.contains("VMID 300 has no VM"), "{}", finding.detail);
    let fix = finding.fix.as_deref().unwrap_or_default();
    for volid in &leftovers {
        assert!(fix.contains(&format!("`pvesm free {volid}`")), "{fix}");
    }
    assert!(!finding.detail.contains("9000"), "the template's volumes are a VM's: {}", finding.detail);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_least_privilege_token_is_told_that_leftover_volumes_are_hidden_from_it() {
    let setup = Setup::start(Scenario::default()).await;
    setup.sim.admin().add_crashed_clone_leftovers("local-lvm", 300).unwrap();
    let outcome = setup.check(&setup.config, Some(true)).await;
    let finding = outcome.reports[0].findings.iter().find(|f| f.subject == "leftover volumes").unwrap();
    assert_eq!(finding.status, Status::Pass, "{}", outcome.render());
    assert!(finding.detail.contains("visible only with Datastore.Allocate"), "{}", finding.detail);
}

/// Init and `check` read the template with one judgement
/// (`group::template::judge` and `clone_kind`): for every fixture they agree
/// on whether the template can be used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_and_check_give_the_same_verdict_for_every_template_fixture() {
    // (name, change to the cluster, extra setting, Runner brings credentials)
    type Fixture = (&'static str, fn(&mut Scenario), Option<&'static str>, bool);
    let refused = [false, true, false, true, true, true, false, true];
    let fixtures: [Fixture; 8] = [
        ("a good template", |_| {}, None, true),
        ("no guest agent", |s| drop(s.vms[0].config.remove("agent")), None, true),
        ("no cloud-init drive, Runner's credentials", |s| drop(s.vms[0].config.remove("ide2")), None, true),
        ("no cloud-init drive, generated credentials", |s| drop(s.vms[0].config.remove("ide2")), None, false),
        ("no net0", |s| drop(s.vms[0].config.remove("net0")), None, true),
        (
            "not a template, no storage",
            |s| {
                s.vms[0].template = false;
                s.vms[0].config.insert("scsi0".into(), "local-lvm:vm-9000-disk-0,size=8G".into());
            },
            None,
            true,
        ),
        (
            "not a template, storage set",
            |s| {
                s.vms[0].template = false;
                s.vms[0].config.insert("scsi0".into(), "local-lvm:vm-9000-disk-0,size=8G".into());
            },
            Some("local-lvm"),
            true,
        ),
        (
            "linked clones asked of a VM that is not a template",
            |s| {
                s.vms[0].template = false;
                s.vms[0].config.insert("scsi0".into(), "local-lvm:vm-9000-disk-0,size=8G".into());
            },
            Some("linked"),
            true,
        ),
    ];
    for ((name, change, setting, runner_credentials), refused) in fixtures.into_iter().zip(refused) {
        let mut scenario = Scenario::default();
        change(&mut scenario);
        let setup = Setup::start(scenario).await;
        let mut config = setup.config.clone();
        match setting {
            Some("linked") => {
                config["storage"] = "local-lvm".into();
                config["clone_mode"] = "linked".into();
            }
            Some(storage) => config["storage"] = storage.into(),
            None => {}
        }
        let connector =
            ConnectorSettings { use_static_credentials: runner_credentials, ..ConnectorSettings::default() };
        let group = ProxmoxGroup::new();
        let engine = group.init(config.to_string().as_bytes(), connector).await;
        let outcome = setup.check(&config, Some(runner_credentials)).await;
        let check_refuses = outcome.reports[0]
            .findings
            .iter()
            .any(|f| f.status == Status::Fail && (f.subject.starts_with("template 9000") || f.subject == "clone mode"));
        assert_eq!(
            engine.is_err(),
            check_refuses,
            "{name}: Init said {:?}, check said:\n{}",
            engine.as_ref().err().map(ToString::to_string),
            outcome.render()
        );
        assert_eq!(check_refuses, refused, "{name}: expected {}", if refused { "refused" } else { "usable" });
        let _ = group.shutdown().await;
        setup.sim.shutdown().await.unwrap();
    }
}

/// A node on local storage: `check` says its copy is not made yet, and
/// with the least-privilege roles the engine makes it; then `check` finds it
/// current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_copies_are_reported_per_node_and_least_privilege_makes_them() {
    let mut scenario = least_privilege("9.1.3");
    // With target_nodes, placement reads the nodes (FleetingNodes on /nodes).
    scenario.acl.push(AclSpec {
        path: AclPlace::Nodes.path(""),
        roles: vec![AclPlace::Nodes.role().to_string()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        ..AclSpec::default()
    });
    let setup = Setup::start(scenario).await;
    let mut config = setup.config.clone();
    config["target_nodes"] = json!(["pve1", "pve2"]);
    config["template_vmid_range"] = json!("9900-9909");
    let before = setup.check(&config, None).await;
    assert_eq!(before.exit_code(), 0, "{}", before.render());
    let copy =
        before.reports[0].findings.iter().find(|f| f.subject == "template copy pve2").expect("a line for pve2's copy");
    assert_eq!(copy.status, Status::Warn);
    assert!(copy.detail.contains("none yet"), "{}", copy.detail);
    let pve2 = before.reports[0].findings.iter().find(|f| f.subject == "node pve2").expect("a line for node pve2");
    assert!(pve2.detail.contains("no template copy yet"), "{}", pve2.detail);
    assert!(before.render().contains("VM.Migrate"), "the privilege list names VM.Migrate");

    let group = ProxmoxGroup::new();
    group.init(config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copies: Vec<_> = setup.sim.admin().inventory().vms.into_iter().filter(|vm| vm.vmid >= 9900).collect();
        if copies.iter().any(|vm| vm.template && vm.node == "pve2" && vm.lock.is_none()) {
            break;
        }
        assert!(Instant::now() < deadline, "no copy made with the least-privilege roles: {copies:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = setup.check(&config, None).await;
    let copy = after.reports[0].findings.iter().find(|f| f.subject == "template copy pve2").unwrap();
    assert_eq!(copy.status, Status::Pass, "{}", copy.detail);
    assert!(copy.detail.contains("is current"), "{}", copy.detail);
    group.shutdown().await.unwrap();
    setup.sim.shutdown().await.unwrap();
}
