//! `fleeting-plugin-proxmox simulate` as an operator runs it: the binary,
//! the short profile, its JSON summary and its exit code. The summary's
//! leak and disk numbers come from the simulator's inventory, so a plugin
//! that leaks fails here.

use std::process::Command;

use fleeting_plugin_proxmox::simulate::Summary;

fn simulate(args: &[&str]) -> (Summary, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox"))
        .arg("simulate")
        .args(["--profile", "short", "--json"])
        .args(args)
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let summary: Summary =
        serde_json::from_str(&stdout).unwrap_or_else(|err| panic!("no JSON summary ({err}): {stdout}\n{stderr}"));
    assert!(output.status.success(), "exit {:?}; problems {:?}\n{stderr}", output.status, summary.problems());
    (summary, stderr)
}

fn assert_clean(summary: &Summary, stderr: &str) {
    assert!(summary.problems().is_empty(), "{:?}\n{stderr}", summary.problems());
    assert_eq!(summary.peak_running, summary.target, "every instance slot ran at once\n{stderr}");
    assert!(summary.reached_running >= summary.target);
    assert!(summary.vms_leaked.is_empty(), "leaked VMs {:?}\n{stderr}", summary.vms_leaked);
    assert!(summary.orphaned_disks.is_empty(), "orphaned disks {:?}", summary.orphaned_disks);
    assert!(summary.not_removed.is_empty(), "{:?}", summary.not_removed);
    for instance in &summary.instances {
        assert!(!instance.address.is_empty(), "{instance:?}");
        assert!(instance.has_key, "a generated key comes with ConnectInfo: {instance:?}");
        assert_eq!(instance.username, "fleeting");
    }
}

#[test]
fn short_profile_scales_up_connects_and_leaves_nothing_behind() {
    let (summary, stderr) = simulate(&["--instances", "6", "--seed", "11"]);
    assert_clean(&summary, &stderr);
    assert_eq!(summary.target, 6);
    assert_eq!(summary.reached_running, 6, "no faults, no replacements\n{stderr}");
    assert_eq!(summary.requests_per_update, 1.0, "one PVE request per Update in steady state");
    assert_eq!(summary.faults_injected.total(), 0);
    // Not a terminal: plain progress lines, one per state change.
    assert!(stderr.contains("scaling up to 6 instances"), "{stderr}");
    assert!(stderr.lines().filter(|line| line.contains(" running ")).count() >= 6, "{stderr}");
}

#[test]
fn flaky_cluster_failures_are_handled_without_leaks() {
    let (summary, stderr) = simulate(&["--instances", "6", "--faults", "flaky", "--seed", "3"]);
    assert_clean(&summary, &stderr);
    assert_eq!(summary.faults, "flaky");
    assert_eq!(summary.faults_injected.failed_tasks, 1, "the failing clone struck\n{stderr}");
    assert_eq!(summary.faults_injected.slow_agents, 1);
    assert!(summary.instances_replaced >= 1, "the failed clone was removed by the plugin\n{stderr}");
    assert!(stderr.contains("could not provision instance; removing it"), "the plugin said why\n{stderr}");
}

/// The DHCP-less, agentless setup end to end: a static loopback pool, a
/// template without the guest agent, readiness and Heartbeat by TCP.
#[test]
fn a_static_pool_without_the_agent_runs_the_whole_lifecycle() {
    let (summary, stderr) = simulate(&["--instances", "6", "--network", "static", "--faults", "flaky", "--seed", "5"]);
    assert_clean(&summary, &stderr);
    assert!(stderr.contains("network: static"), "{stderr}");
    let mut addresses: Vec<&str> = summary.instances.iter().map(|i| i.address.as_str()).collect();
    assert!(addresses.iter().all(|a| a.starts_with("127.0.1.")), "{addresses:?}");
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), summary.instances.len(), "one address per instance");
    assert_eq!(summary.faults_injected.slow_agents, 0, "no agent to slow down");
}

#[test]
fn bad_options_name_the_fix() {
    let output = Command::new(env!("CARGO_BIN_EXE_fleeting-plugin-proxmox"))
        .args(["simulate", "--faults", "sometimes"])
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value 'sometimes' for '--faults <MODE>'"), "{stderr}");
    assert!(stderr.contains("[possible values: none, flaky]"), "{stderr}");
}
