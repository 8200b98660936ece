//! The reading behind `status`: one listing of the cluster, the config of
//! every VM of the pool or carrying the group's tag, and the guest agent of
//! the running ones; then one verdict per VM, judged by the same rules the
//! engine and the takeover use (`group::naming`, `group::takeover::SeedJudge`).
//! Only GET requests.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::{InstanceRow, Leak, LeakKind, Phase, Verdict};
use crate::check::cluster::OrphanedVolumes;
use crate::group::config::GroupConfig;
use crate::group::engine::choose_addresses;
use crate::group::ip_pool::Lease;
use crate::group::naming::{InstanceId, Naming};
use crate::group::takeover::{SeedJudge, SeedPlan};
use crate::pve::{Error as PveError, PveClient, VmResource};

/// VMs read at once: a status must not crowd a cluster the plugin works on.
const CONCURRENT_READS: usize = 4;
/// How long a guest agent may take to answer before its address shows `-`.
const AGENT_TIMEOUT: Duration = Duration::from_secs(2);

/// The rows and the leaks one survey found.
#[derive(Debug, Default)]
pub struct Survey {
    pub rows: Vec<InstanceRow>,
    pub leaks: Vec<Leak>,
}

/// One VM as read: its listing entry, its config, its agent's address.
type Read<'a> = (&'a VmResource, Result<BTreeMap<String, String>, PveError>, Option<String>);

/// Lists the cluster and judges every VM of the group or its pool. Fails
/// only when the listing does; a VM whose config cannot be read is shown
/// with the verdict `unknown`.
pub async fn survey(pve: &PveClient, config: &GroupConfig, generates_key: bool) -> Result<Survey, PveError> {
    let vms = pve.cluster_vms().await?;
    let naming = Naming::new(&config.group);
    let group_tag = naming.group_tag();
    let shown: Vec<&VmResource> = vms
        .iter()
        .filter(|vm| vm.pool.as_deref() == Some(config.pool.as_str()) || vm.tags.contains(&group_tag))
        .collect();
    let read: Vec<Read<'_>> = futures::stream::iter(shown)
        .map(|vm| async move {
            let vm_config = pve.vm_config(&vm.node, vm.vmid).await;
            let address = match &vm_config {
                // A static lease is what the plugin hands Runner, agent or not.
                Ok(_) if config.static_network.is_some() => Lease::from_tags(&vm.tags)
                    .connect_address(config.instance_network_protocol)
                    .map(|ip| ip.to_string()),
                Ok(vm_config) if vm.status.as_deref() == Some("running") && agent_enabled(vm_config) => {
                    address_of(pve, config, vm, vm_config).await
                }
                _ => None,
            };
            (vm, vm_config, address)
        })
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    let judge = SeedJudge { config, naming: &naming, generates_key };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut survey = Survey::default();
    for (vm, vm_config, address) in read {
        let (row, leak) = match vm_config {
            Ok(vm_config) => judge_vm(&judge, vm, &vm_config, address, now),
            Err(err) => (unreadable_row(vm, &err), None),
        };
        survey.rows.push(row);
        survey.leaks.extend(leak);
    }
    survey.rows.sort_by_key(|row| row.vmid);
    survey.leaks.sort_by_key(|leak| leak.vmid);
    Ok(survey)
}

/// The address the plugin would hand Runner, if the agent answers in time.
async fn address_of(
    pve: &PveClient,
    config: &GroupConfig,
    vm: &VmResource,
    vm_config: &BTreeMap<String, String>,
) -> Option<String> {
    let interfaces = tokio::time::timeout(AGENT_TIMEOUT, pve.guest_interfaces(&vm.node, vm.vmid)).await.ok()?.ok()?;
    let addresses = choose_addresses(config, &interfaces, vm_config.get("net0").map(String::as_str));
    addresses.internal.or(addresses.external).map(|ip| ip.to_string())
}

/// `agent: 1` or `agent: enabled=1,…`.
fn agent_enabled(vm_config: &BTreeMap<String, String>) -> bool {
    vm_config
        .get("agent")
        .is_some_and(|agent| agent.split(',').any(|part| matches!(part.trim(), "1" | "enabled=1" | "enabled=true")))
}

/// The verdict on one VM, and what it leaks. Pure: the listing's entry, the
/// VM's config, the judge's config, and the clock.
pub fn judge_vm(
    judge: &SeedJudge<'_>,
    vm: &VmResource,
    vm_config: &BTreeMap<String, String>,
    address: Option<String>,
    now_unix: u64,
) -> (InstanceRow, Option<Leak>) {
    let config = judge.config;
    let naming = judge.naming;
    let description = vm_config.get("description").map(String::as_str).unwrap_or_default();
    let tag_owner = naming.owner_of_tags(vm.vmid, &vm.tags);
    let marker_owner = naming.owner_of_description(description);
    let in_pool = vm.pool.as_deref() == Some(config.pool.as_str());
    let is_template =
        vm.template || vm.vmid == config.template_id || vm_config.get("template").is_some_and(|t| t == "1");
    let name = vm.name.clone().or_else(|| vm_config.get("name").cloned());

    let mut note = None;
    let mut instance: Option<&InstanceId> = None;
    let copy = naming.copy_of_description(description).filter(|marker| marker.vmid == vm.vmid);
    let verdict = if let Some(copy) = &copy {
        note = Some(if is_template {
            format!("this group's copy of template {} for node {}", copy.source, copy.node)
        } else {
            format!(
                "this group's copy of template {} for node {} being made, or cut short (then the plugin deletes it)",
                copy.source, copy.node
            )
        });
        Verdict::Template
    } else if is_template {
        Verdict::Template
    } else {
        match (&tag_owner, &marker_owner) {
            (Some(tagged), Some(marked)) if tagged == marked => {
                instance = Some(tagged);
                Verdict::Ours
            }
            (Some(tagged), marked) => {
                instance = Some(tagged);
                note = Some(match marked {
                    Some(marked) => format!("its description marks instance {marked}: a copy; the plugin ignores it"),
                    None => "its description has no marker of this group: the plugin ignores it".to_string(),
                });
                Verdict::Impostor
            }
            (None, Some(marked)) if marked.vmid == vm.vmid => {
                instance = Some(marked);
                note = Some("the group's marker without its instance tags".to_string());
                Verdict::Ours
            }
            (None, Some(marked)) => {
                note = Some(format!("its description marks instance {marked} of another VMID: a copy"));
                Verdict::Foreign
            }
            (None, None) if vm.tags.contains(&naming.group_tag()) => {
                note = Some("the group's tag without an instance token or marker".to_string());
                Verdict::Impostor
            }
            (None, None) if judge.may_be_seed(vm) && judge.plan(vm.vmid, vm_config).is_some() => Verdict::SeedLeftover,
            (None, None) => Verdict::Foreign,
        }
    };
    let phase = if is_template || copy.is_some() {
        Some(Phase::Template)
    } else if verdict == Verdict::Foreign {
        None
    } else {
        phase_of(config, name.as_deref(), &vm.tags)
    };
    let leak = match verdict {
        Verdict::Ours if !in_pool => Some(Leak {
            kind: LeakKind::OutsidePool,
            vmid: vm.vmid.0,
            node: vm.node.clone(),
            detail: format!(
                "instance {} is in {} instead of pool {}: the plugin only manages VMs in its pool and never removes it",
                instance.map(ToString::to_string).unwrap_or_default(),
                vm.pool.as_deref().map_or_else(|| "no pool".to_string(), |pool| format!("pool {pool}")),
                config.pool
            ),
            fix: destroy_command(vm),
        }),
        Verdict::Ours if tag_owner.is_none() => Some(Leak {
            kind: LeakKind::Untagged,
            vmid: vm.vmid.0,
            node: vm.node.clone(),
            detail: format!(
                "instance {} carries the group's marker but not its tags (a crash between clone and tagging): \
                 the plugin's Update deletes it as half-provisioned",
                instance.map(ToString::to_string).unwrap_or_default()
            ),
            fix: format!("let the plugin run one Update; without a running plugin: {}", destroy_command(vm)),
        }),
        Verdict::SeedLeftover => {
            let what = match judge.plan(vm.vmid, vm_config) {
                Some(SeedPlan::Adopt) => "adopts it when it answers with an address (deletes it otherwise)",
                _ => "deletes it",
            };
            let fix = if config.take_over_seed_instances {
                format!(
                    "restart the plugin (GitLab Runner): its Init takes it over (take_over_seed_instances); or {}",
                    destroy_command(vm)
                )
            } else {
                format!("take_over_seed_instances is false: {}", destroy_command(vm))
            };
            Some(Leak {
                kind: LeakKind::SeedLeftover,
                vmid: vm.vmid.0,
                node: vm.node.clone(),
                detail: format!(
                    "left by the seed plugin under the name {}; the takeover {what}",
                    name.as_deref().unwrap_or("-")
                ),
                fix,
            })
        }
        _ => None,
    };
    let row = InstanceRow {
        instance: instance.map(ToString::to_string),
        name,
        vmid: vm.vmid.0,
        node: vm.node.clone(),
        status: vm.status.clone().unwrap_or_else(|| "unknown".to_string()),
        phase,
        pool: vm.pool.clone(),
        age_seconds: vm.uptime.or_else(|| created_at(vm_config).map(|ctime| now_unix.saturating_sub(ctime))),
        address,
        verdict,
        note,
    };
    (row, leak)
}

fn unreadable_row(vm: &VmResource, err: &PveError) -> InstanceRow {
    InstanceRow {
        instance: None,
        name: vm.name.clone(),
        vmid: vm.vmid.0,
        node: vm.node.clone(),
        status: vm.status.clone().unwrap_or_else(|| "unknown".to_string()),
        phase: None,
        pool: vm.pool.clone(),
        age_seconds: vm.uptime,
        address: None,
        verdict: Verdict::Unknown,
        note: Some(err.to_string()),
    }
}

/// The phase a VM's per-state tags or name show; a name shared by several
/// states reads as running, as the seed reads it.
fn phase_of(config: &GroupConfig, name: Option<&str>, tags: &[String]) -> Option<Phase> {
    let tagged =
        |wanted: &[String]| !wanted.is_empty() && wanted.iter().all(|tag| tags.contains(&tag.to_ascii_lowercase()));
    if tagged(&config.instance_tags_removing) {
        return Some(Phase::Removing);
    }
    if tagged(&config.instance_tags_creating) {
        return Some(Phase::Creating);
    }
    let name = name?;
    if name == config.instance_name_running {
        Some(Phase::Running)
    } else if name == config.instance_name_creating {
        Some(Phase::Creating)
    } else if name == config.instance_name_removing {
        Some(Phase::Removing)
    } else {
        None
    }
}

/// `meta: creation-qemu=9.0.2,ctime=1718000000` → the creation time.
fn created_at(vm_config: &BTreeMap<String, String>) -> Option<u64> {
    vm_config.get("meta")?.split(',').find_map(|part| part.strip_prefix("ctime=")?.trim().parse().ok())
}

fn destroy_command(vm: &VmResource) -> String {
    format!(
        "on node {}: `qm stop {vmid}; qm destroy {vmid} --purge 1 --destroy-unreferenced-disks 1`",
        vm.node,
        vmid = vm.vmid
    )
}

/// Volumes of a VMID without a VM, as `check` found and words them.
pub fn orphan_leak(orphan: &OrphanedVolumes) -> Leak {
    Leak {
        kind: LeakKind::OrphanedVolumes,
        vmid: orphan.vmid.0,
        node: orphan.node.clone(),
        detail: orphan.problem(),
        fix: orphan.fix(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::config::PluginConfig;
    use crate::pve::Vmid;

    fn config() -> GroupConfig {
        let json = serde_json::json!({
            "url": "https://pve.invalid:8006",
            "credentials_file_path": "/nonexistent",
            "pool": "ci",
            "template_id": 9000,
            "max_instances": 5,
        });
        PluginConfig::parse(json.to_string().as_bytes()).unwrap().config
    }

    fn listed(vmid: u32, name: &str, tags: &[&str]) -> VmResource {
        VmResource {
            vmid: Vmid(vmid),
            node: "pve1".into(),
            name: Some(name.into()),
            status: Some("stopped".into()),
            template: false,
            lock: None,
            tags: tags.iter().map(ToString::to_string).collect(),
            pool: Some("ci".into()),
            uptime: None,
            max_memory: None,
            cpus: None,
        }
    }

    fn configured(name: &str, description: &str) -> BTreeMap<String, String> {
        [("name", name), ("description", description)]
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn verdicts_follow_tags_and_markers() {
        let config = config();
        let naming = Naming::new(&config.group);
        let judge = SeedJudge { config: &config, naming: &naming, generates_key: false };
        let id: InstanceId = "120-abcdef".parse().unwrap();
        let tags = ["fi-abcdef", "fleeting", "fleeting-fleeting"];
        let verdict =
            |vm: &VmResource, vm_config: &BTreeMap<String, String>| judge_vm(&judge, vm, vm_config, None, 0).0.verdict;
        let ours = configured("fleeting-running", &naming.description(&id));
        assert_eq!(verdict(&listed(120, "fleeting-running", &tags), &ours), Verdict::Ours);
        let other: InstanceId = "121-abcdef".parse().unwrap();
        let copy = configured("fleeting-running", &naming.description(&other));
        assert_eq!(verdict(&listed(120, "fleeting-running", &tags), &copy), Verdict::Impostor);
        let unmarked = configured("fleeting-running", "");
        assert_eq!(verdict(&listed(120, "fleeting-running", &tags), &unmarked), Verdict::Impostor);
        assert_eq!(verdict(&listed(120, "fleeting-running", &[]), &unmarked), Verdict::SeedLeftover);
        let foreign = configured("build-server", "");
        assert_eq!(verdict(&listed(130, "build-server", &[]), &foreign), Verdict::Foreign);
        let mut elsewhere = listed(120, "fleeting-running", &tags);
        elsewhere.pool = Some("other".into());
        let (row, leak) = judge_vm(&judge, &elsewhere, &ours, None, 0);
        assert_eq!(row.verdict, Verdict::Ours);
        assert_eq!(leak.map(|leak| leak.kind), Some(LeakKind::OutsidePool));
        // The marker without the tags (a crash before tagging): ours, and listed.
        let (row, leak) = judge_vm(&judge, &listed(120, "fleeting-creating", &[]), &ours, None, 0);
        assert_eq!((row.verdict, row.phase), (Verdict::Ours, Some(Phase::Creating)));
        assert_eq!(leak.map(|leak| leak.kind), Some(LeakKind::Untagged));
        // A seed VM named running: adopted with Runner's credentials, deleted when the plugin makes its own key.
        let seed = configured("fleeting-running", "");
        let (_, leak) = judge_vm(&judge, &listed(120, "fleeting-running", &[]), &seed, None, 0);
        assert!(leak.unwrap().detail.contains("adopts it"));
        let generating = SeedJudge { generates_key: true, ..judge };
        let (_, leak) = judge_vm(&generating, &listed(120, "fleeting-running", &[]), &seed, None, 0);
        assert!(leak.unwrap().detail.ends_with("deletes it"));
    }

    #[test]
    fn age_falls_back_to_the_creation_time() {
        let mut vm_config = BTreeMap::new();
        vm_config.insert("meta".to_string(), "creation-qemu=9.0.2,ctime=1000".to_string());
        assert_eq!(created_at(&vm_config), Some(1000));
        assert_eq!(created_at(&BTreeMap::new()), None);
    }
}
