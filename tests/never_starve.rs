//! Scale-up that never starves, against the simulator: a VMID blocked by
//! what a crashed clone left behind is skipped, sporadic failures never hold
//! scale-up, a systematic failure holds it with one probe at a time until the
//! cause is fixed, and a clone request whose answer was lost yields exactly
//! one VM.

#[path = "support/engine_setup.rs"]
mod engine_setup;

use std::collections::BTreeSet;
use std::time::Duration;

use engine_setup::*;
use fleeting_plugin_proxmox::group::engine::ProxmoxGroup;
use fleeting_plugin_proxmox::group::{InstanceGroup, InstanceState};
use fleeting_plugin_proxmox::sim::config::defaults;
use fleeting_plugin_proxmox::sim::{AgentState, FaultRule};

const CLONE: &str = "post_nodes_node_qemu_vmid_clone";

/// Waits until the group has no instance being created; returns the rest.
async fn settle(group: &ProxmoxGroup) -> Vec<(String, InstanceState)> {
    wait_until(group, "no instance creating", |s| s.iter().all(|(_, st)| *st != InstanceState::Creating)).await
}

async fn remove_all(group: &ProxmoxGroup) {
    let ids: Vec<String> = states(group).await.into_iter().map(|(id, _)| id).collect();
    if !ids.is_empty() {
        group.decrease(ids).await.unwrap();
    }
    wait_until(group, "all removed", |s| s.is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vmid_blocked_by_a_crashed_clone_is_skipped_and_scale_up_succeeds_at_once() {
    let setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    // A node crashed while cloning to 100 (the VMID nextid offers first):
    // its disk and cloud-init volume stayed, its config did not.
    let leftovers = admin.add_crashed_clone_leftovers("local-lvm", 100).unwrap();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();

    let first = group.increase(1).await.unwrap();
    assert_eq!((first.succeeded, first.failures.len()), (1, 0), "{:?}", first.failures);
    let running = wait_until(&group, "running on another VMID", all_running(1)).await;
    assert_ne!(vmid_of(&running[0].0), 100, "the blocked VMID is never used");

    // The collision did not count as a failure: scale-up goes on in full,
    // and 100 is not tried again.
    admin.reset_counters();
    let more = group.increase(3).await.unwrap();
    assert_eq!((more.succeeded, more.failures.len()), (3, 0), "{:?}", more.failures);
    let running = wait_until(&group, "4 running", all_running(4)).await;
    assert!(running.iter().all(|(id, _)| vmid_of(id) != 100), "{running:?}");
    assert_eq!(admin.counters().tasks_failed, 0, "no clone went to VMID 100 again");

    // Volumes of a VMID the plugin never created are not touched.
    remove_all(&group).await;
    let orphans: BTreeSet<String> = admin.inventory().orphaned_disks.into_iter().map(|v| v.volid).collect();
    assert_eq!(orphans, leftovers.into_iter().collect(), "only the crash's own leftovers remain");
    assert!(setup.leftovers().is_empty(), "leaked VMs: {:?}", setup.leftovers());
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sporadic_failures_among_successes_never_refuse_an_increase() {
    let setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    let mut ran = BTreeSet::new();
    for round in 0..23 {
        // Three clones fail, each among successes (as when a node hiccups).
        if [4, 11, 18].contains(&round) {
            admin.add_fault(FaultRule {
                task_failure_rate: 1.0,
                remaining: Some(1),
                ..FaultRule::for_operation(CLONE)
            });
        }
        let increase = group.increase(1).await.unwrap();
        assert_eq!(
            (increase.succeeded, increase.failures.clone()),
            (1, Vec::new()),
            "round {round}: an Increase was refused"
        );
        let settled = settle(&group).await;
        ran.extend(settled.iter().filter(|(_, s)| *s == InstanceState::Running).map(|(id, _)| id.clone()));
        if settled.len() >= 8 {
            remove_all(&group).await;
        }
    }
    let failed = admin.counters().tasks_failed;
    assert_eq!((ran.len(), failed), (20, 3));
    remove_all(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_systematic_failure_holds_scale_up_probes_with_one_and_resumes_after_the_fix() {
    let mut scenario = fast_scenario();
    // A broken image: clones inherit an agent that never answers.
    scenario.vms[0].agent.never_up = true;
    let mut setup = setup(scenario).await;
    setup.config["boot_timeout"] = "2s".into();
    setup.config["failure_backoff"] = "4s".into();
    setup.config["failure_backoff_max"] = "8s".into();
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();

    // Five failures of one cause (the default threshold) open the breaker.
    assert_eq!(group.increase(5).await.unwrap().succeeded, 5);
    wait_until(&group, "the five failed instances removed", |s| s.is_empty()).await;
    let held = group.increase(2).await.unwrap();
    assert_eq!(held.succeeded, 0, "held right after the failures");
    assert!(held.failures[0].to_string().contains("scale-up is held"), "{:?}", held.failures);
    assert!(
        held.failures[0].to_string().contains("boot: no address")
            && held.failures[0].to_string().contains("boot_timeout"),
        "{held:?}"
    );

    // After the wait: one probe, the rest held until it has a verdict.
    let probe = loop {
        let attempt = group.increase(4).await.unwrap();
        if attempt.succeeded > 0 {
            break attempt;
        }
        assert!(attempt.failures[0].to_string().contains("held for another"), "{attempt:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(probe.succeeded, 1, "{probe:?}");
    assert!(probe.failures[0].to_string().contains("creating one instance to test"), "{probe:?}");
    assert_eq!(group.increase(1).await.unwrap().succeeded, 0, "one probe at a time");
    wait_until(&group, "the failed probe removed", |s| s.is_empty()).await;

    // The template is fixed; the next probe succeeds and scale-up resumes in full.
    admin.set_agent(defaults::TEMPLATE_VMID, AgentState::Running).unwrap();
    let probe = loop {
        let attempt = group.increase(1).await.unwrap();
        if attempt.succeeded == 1 {
            break attempt;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(probe.failures.is_empty(), "{probe:?}");
    wait_until(&group, "the probe running", all_running(1)).await;
    let resumed = group.increase(3).await.unwrap();
    assert_eq!((resumed.succeeded, resumed.failures.len()), (3, 0), "{resumed:?}");
    wait_until(&group, "4 running", all_running(4)).await;
    remove_all(&group).await;
    setup.assert_no_leaks();
    group.shutdown().await.unwrap();
}

/// PVE starts the clone, then the connection drops before the answer: the
/// plugin ends up with exactly one clone, the instance's.
async fn a_lost_clone_answer_yields_exactly_one_vm(scenario: fleeting_plugin_proxmox::sim::Scenario) {
    let setup = setup(scenario).await;
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    admin.add_fault(FaultRule { lost_answer_rate: 1.0, remaining: Some(1), ..FaultRule::for_operation(CLONE) });
    let increase = group.increase(1).await.unwrap();
    assert_eq!((increase.succeeded, increase.failures.len()), (1, 0), "{:?}", increase.failures);
    let running = wait_until(&group, "running", all_running(1)).await;
    assert_eq!(admin.counters().lost_answers, 1, "the fault applied");
    let clones: Vec<_> = admin.tasks().into_iter().filter(|t| t.task_type == "qmclone").collect();
    assert_eq!(clones.len(), 1, "one clone, not two: {clones:#?}");
    assert_eq!(setup.leftovers(), [vmid_of(&running[0].0)], "exactly one VM, and it is the instance");
    remove_all(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_request_whose_answer_was_lost_yields_exactly_one_vm() {
    a_lost_clone_answer_yields_exactly_one_vm(fast_scenario()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_whose_answer_was_lost_is_found_while_its_first_disk_still_copies() {
    // Until the first disk is copied, PVE shows the new VM as qemu-server's
    // temporary config: `lock: clone`, no name, none of our marker (and a
    // pool-scoped token cannot read it at all before it joins the pool). A
    // slow copy keeps it so well past the plugin's second look.
    let mut scenario = fast_scenario();
    scenario.timings.clone_linked = 300.0;
    a_lost_clone_answer_yields_exactly_one_vm(scenario).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_failed_clone_of_ours_left_behind_is_reclaimed() {
    let setup = setup(fast_scenario()).await;
    let admin = setup.sim.admin();
    let group = ProxmoxGroup::new();
    group.init(setup.config.to_string().as_bytes(), static_credentials()).await.unwrap();
    // The node crashes mid-copy: the clone task fails, its volumes stay.
    admin.add_fault(FaultRule {
        task_failure_rate: 1.0,
        leave_orphans: true,
        remaining: Some(1),
        ..FaultRule::for_operation(CLONE)
    });
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    wait_until(&group, "the failed instance removed", |s| s.is_empty()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !admin.inventory().orphaned_disks.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the failed clone's volumes are freed: {:?}",
            admin.inventory().orphaned_disks
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(setup.leftovers().is_empty(), "the VM that held the VMID is gone: {:?}", setup.leftovers());
    // And the VMID serves the next instance.
    assert_eq!(group.increase(1).await.unwrap().succeeded, 1);
    let running = wait_until(&group, "running", all_running(1)).await;
    assert_eq!(vmid_of(&running[0].0), 100, "the reclaimed VMID is free again");
    remove_all(&group).await;
    setup.assert_no_leaks();
    setup.assert_untouched();
    group.shutdown().await.unwrap();
}
