//! `fleeting-plugin-proxmox status` against the simulator: instances the
//! engine really provisioned read as `ours`, a copy with our tags as
//! `impostor`, a stranger's VM as `foreign`, what the seed plugin left as
//! `seed leftover`; an instance outside the pool and an orphaned disk are
//! listed with their fixes; and the simulator receives nothing but GETs.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeMap;

use engine_setup::*;
use fleeting_plugin_proxmox::check::Selection;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::naming::{InstanceId, Naming};
use fleeting_plugin_proxmox::group::{ConnectorSettings, InstanceGroup};
use fleeting_plugin_proxmox::sim::config::{AclSpec, PoolSpec, VmSpec, defaults};
use fleeting_plugin_proxmox::status::{self, LeakKind, StatusReport, Verdict};
use serde_json::Value;

/// Our group's tags, no marker at all: someone tagged a VM by hand.
const UNMARKED_VMID: u32 = 152;
/// An instance of this group (tags and marker as the engine writes them) in another pool.
const OUTSIDE_VMID: u32 = 160;
const OUTSIDE_INSTANCE: &str = "160-qwerty";
/// What the seed plugin left half-created in the pool.
const SEED_VMID: u32 = 200;
/// Volumes of a VMID without a config.
const ORPHAN_VMID: u32 = 300;

fn vm(vmid: u32, name: &str, pool: &str, extra: &[(&str, String)]) -> VmSpec {
    let mut config: BTreeMap<String, String> = [
        ("name", name.to_string()),
        ("net0", "virtio,bridge=vmbr0".to_string()),
        ("ostype", "l26".to_string()),
        ("scsi0", format!("local-lvm:vm-{vmid}-disk-0,size=4G")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (key, value) in extra {
        config.insert(key.to_string(), value.clone());
    }
    VmSpec { vmid, node: "pve1".into(), pool: Some(pool.into()), config, ..VmSpec::default() }
}

/// The engine's cluster (a stranger's VM 150 and a hand-made copy 151 with
/// our tags and a marker naming VM 120) plus the other cases; a token that
/// may see volumes without a VM.
async fn cluster() -> Setup {
    let mut scenario = fast_scenario();
    scenario.pools.push(PoolSpec { id: "other".into(), ..PoolSpec::default() });
    let naming = Naming::new("fleeting");
    let outside: InstanceId = OUTSIDE_INSTANCE.parse().unwrap();
    scenario.vms.extend([
        vm(
            UNMARKED_VMID,
            "fleeting-running",
            defaults::POOL,
            &[("tags", "fleeting;fleeting-fleeting;fi-zzzzzz".into())],
        ),
        vm(
            OUTSIDE_VMID,
            "fleeting-running",
            "other",
            &[("tags", naming.tags(&outside, &[]).join(";")), ("description", naming.description(&outside))],
        ),
        vm(SEED_VMID, "fleeting-creating", defaults::POOL, &[]),
    ]);
    scenario.acl.push(AclSpec {
        path: "/storage/local-lvm".into(),
        roles: vec!["PVEDatastoreAdmin".into()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        ..AclSpec::default()
    });
    // The admin may look into the other pool: the instance there is visible.
    scenario.acl.push(AclSpec {
        path: "/pool/other".into(),
        roles: vec!["PVEAuditor".into()],
        users: vec![defaults::USER.into()],
        tokens: vec![defaults::TOKEN_ID.into()],
        propagate: true,
        ..AclSpec::default()
    });
    let mut setup = setup(scenario).await;
    // The seed's VM must survive the engine run below.
    setup.config["take_over_seed_instances"] = false.into();
    setup
}

/// Two instances, really provisioned by the engine, which is then shut down
/// (shutdown deletes nothing).
async fn provision_two(setup: &Setup) -> Vec<u32> {
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), ConnectorSettings::default()).await.unwrap();
    let accepted = group.increase(2).await.unwrap();
    assert_eq!(accepted.succeeded, 2, "{:?}", accepted.failures);
    let running = wait_until(&group, "2 running", all_running(2)).await;
    group.shutdown().await.unwrap();
    let mut vmids: Vec<u32> = running.iter().map(|(id, _)| vmid_of(id)).collect();
    vmids.sort();
    vmids
}

fn write_config(setup: &Setup) -> std::path::PathBuf {
    let path = setup.dir.path().join("plugin_config.json");
    std::fs::write(&path, setup.config.to_string()).unwrap();
    path
}

fn verdicts(report: &StatusReport) -> BTreeMap<u32, Verdict> {
    report.groups[0].instances.iter().map(|row| (row.vmid, row.verdict)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_whose_each_vm_is_and_lists_leaks_without_writing() {
    let setup = cluster().await;
    let ours = provision_two(&setup).await;
    let leftovers = setup.sim.admin().add_crashed_clone_leftovers("local-lvm", ORPHAN_VMID).unwrap();
    let path = write_config(&setup);
    let admin = setup.sim.admin();
    admin.reset_counters();

    let report = status::run(&Selection { config: path.clone(), runner: None, use_static_credentials: None }).await;
    let rendered = report.render();
    let group = &report.groups[0];
    assert_eq!(group.error, None, "{rendered}");
    assert_eq!(report.exit_code(), 0, "{rendered}");

    let mut expected: BTreeMap<u32, Verdict> = [
        (defaults::TEMPLATE_VMID, Verdict::Template),
        (STRANGER_VMID, Verdict::Foreign),
        (COPY_VMID, Verdict::Impostor),
        (UNMARKED_VMID, Verdict::Impostor),
        (OUTSIDE_VMID, Verdict::Ours),
        (SEED_VMID, Verdict::SeedLeftover),
    ]
    .into_iter()
    .collect();
    expected.extend(ours.iter().map(|vmid| (*vmid, Verdict::Ours)));
    assert_eq!(verdicts(&report), expected, "{rendered}");

    // The engine's instances: their ids, phase, age and agent's address.
    for vmid in &ours {
        let row = group.instances.iter().find(|row| row.vmid == *vmid).unwrap();
        assert!(row.instance.as_deref().is_some_and(|id| id.starts_with(&format!("{vmid}-"))), "{row:?}");
        assert_eq!(row.status, "running", "{row:?}");
        assert_eq!(row.phase, Some(status::Phase::Running), "{row:?}");
        assert!(row.address.is_some(), "the agent answers: {row:?}");
        assert!(row.age_seconds.is_some(), "a running VM has an uptime: {row:?}");
    }
    let seed = group.instances.iter().find(|row| row.vmid == SEED_VMID).unwrap();
    assert_eq!(seed.phase, Some(status::Phase::Creating), "{seed:?}");
    assert_eq!(seed.address, None, "stopped: no address");

    // Leaks: the orphaned volumes, the instance outside the pool, the
    // seed's VM; each with its fix. Nothing else.
    let kinds: Vec<(LeakKind, u32)> = group.leaked.iter().map(|leak| (leak.kind, leak.vmid)).collect();
    assert_eq!(
        kinds,
        [
            (LeakKind::OrphanedVolumes, ORPHAN_VMID),
            (LeakKind::OutsidePool, OUTSIDE_VMID),
            (LeakKind::SeedLeftover, SEED_VMID)
        ],
        "{rendered}"
    );
    let orphan = &group.leaked[0];
    for volid in &leftovers {
        assert!(orphan.fix.contains(&format!("`pvesm free {volid}`")), "{}", orphan.fix);
    }
    assert!(group.leaked[1].fix.contains(&format!("qm destroy {OUTSIDE_VMID}")), "{}", group.leaked[1].fix);
    assert!(group.leaked[2].fix.contains("take_over_seed_instances is false"), "{}", group.leaked[2].fix);

    // Check's warnings and failures, never its passes: here the orphan.
    assert!(group.problems.iter().all(|p| p.severity == "warn" || p.severity == "fail"), "{rendered}");
    assert!(
        group
            .problems
            .iter()
            .any(|p| p.subject == "leftover volumes" && p.detail.contains(&format!("VMID {ORPHAN_VMID}"))),
        "{rendered}"
    );

    // The table names every VM with its verdict.
    assert!(rendered.contains("INSTANCE") && rendered.contains("VERDICT"), "{rendered}");
    assert!(rendered.contains("seed leftover") && rendered.contains("impostor"), "{rendered}");
    assert!(rendered.contains(OUTSIDE_INSTANCE), "{rendered}");
    assert!(!rendered.contains(defaults::TOKEN_SECRET), "a secret reached the output:\n{rendered}");

    let counters = admin.counters();
    assert!(counters.by_method.get("GET").copied().unwrap_or(0) > 0, "{:?}", counters.by_method);
    assert_eq!(counters.non_get_requests(), 0, "status must only read: {:?}", counters.by_operation);

    // The binary's --json says the same, and also only reads.
    admin.reset_counters();
    let output = run_binary(&["status", "--config", &path.to_string_lossy(), "--json"]).await;
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let from_json: BTreeMap<u32, String> = json["groups"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| (row["vmid"].as_u64().unwrap() as u32, row["verdict"].as_str().unwrap().to_string()))
        .collect();
    let wanted: BTreeMap<u32, String> = expected
        .iter()
        .map(|(vmid, verdict)| (*vmid, serde_json::to_value(verdict).unwrap().as_str().unwrap().to_string()))
        .collect();
    assert_eq!(from_json, wanted);
    assert_eq!(from_json[&SEED_VMID], "seed_leftover");
    assert_eq!(json["groups"][0]["leaked"][0]["kind"], "orphaned_volumes");
    assert_eq!(json["groups"][0]["leaked"][0]["vmid"], ORPHAN_VMID);
    assert!(json["groups"][0]["error"].is_null());
    assert_eq!(admin.counters().non_get_requests(), 0, "{:?}", admin.counters().by_operation);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_exits_1_when_it_cannot_read_the_cluster() {
    let mut setup = setup(fast_scenario()).await;
    setup.config["url"] = "https://127.0.0.1:1".into();
    let path = write_config(&setup);
    let output = run_binary(&["status", "--config", &path.to_string_lossy(), "--json"]).await;
    assert_eq!(output.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let group = &json["groups"][0];
    assert!(group["error"].as_str().is_some_and(|e| e.starts_with("could not read the cluster")), "{json}");
    assert!(group["problems"].as_array().unwrap().iter().any(|p| p["severity"] == "fail"), "{json}");

    let missing = setup.dir.path().join("missing.json");
    let output = run_binary(&["status", "--config", &missing.to_string_lossy()]).await;
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("could not read") && text.contains("--config"), "{text}");
}

async fn run_binary(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = args.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox")).args(args).output().unwrap()
    })
    .await
    .unwrap()
}

/// With a static pool the address shown is the lease, without asking an agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_static_leases_without_an_agent() {
    let mut setup = cluster().await;
    setup.config["network_mode"] = "static".into();
    setup.config["ip_pool_network"] = "127.0.1.0/26".into();
    setup.config["ip_pool_gateway"] = "127.0.1.1".into();
    let ours = provision_two(&setup).await;
    let path = write_config(&setup);
    let report = status::run(&Selection { config: path, runner: None, use_static_credentials: None }).await;
    let rows = &report.groups[0].instances;
    for vmid in ours {
        let row = rows.iter().find(|row| row.vmid == vmid).unwrap();
        let address = row.address.as_deref().unwrap_or_default();
        let config = setup.sim.admin().vm(vmid).unwrap().config;
        assert!(config["ipconfig0"].starts_with(&format!("ip={address}/26,")), "{address} vs {config:?}");
    }
}
