//! `check` for `network_mode = "static"`: the pool as the engine will use
//! it, whether the template's cloud-init can apply a static address, and
//! which visible VMs already use addresses of the pool. Read-only: one
//! listing and GETs of VM configs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use futures::StreamExt;

use super::Report;
use crate::group::config::GroupConfig;
use crate::group::ip_pool::{Lease, StaticNetwork};
use crate::group::naming::Naming;
use crate::pve::{PveClient, VmResource};

/// A VM and the answer to reading its config.
type ConfigRead<'a> = (&'a VmResource, Result<BTreeMap<String, String>, crate::pve::Error>);

/// VM configs read at the same time.
const PARALLEL_READS: usize = 8;

pub async fn check_static_pool(pve: &PveClient, config: &GroupConfig, network: &StaticNetwork, report: &mut Report) {
    let subject = "static pool";
    let mut how = format!("{}: {} addresses", network.describe(), network.capacity());
    if !config.nameservers.is_empty() {
        let servers: Vec<String> = config.nameservers.iter().map(ToString::to_string).collect();
        how.push_str(&format!(", nameserver {}", servers.join(" ")));
    }
    if let Some(domain) = &config.searchdomain {
        how.push_str(&format!(", searchdomain {domain}"));
    }
    report.pass(subject, how);

    let vms = match pve.cluster_vms().await {
        Ok(vms) => vms,
        Err(err) => {
            report.fail("addresses in use", err.to_string(), "grant VM.Audit on the VMs (see the privileges below)");
            return;
        }
    };
    check_template_cloud_init(pve, config, &vms, report).await;
    check_addresses_in_use(pve, config, network, &vms, report).await;
}

/// The template's cloud-init applies `ipconfig0` unless a custom network
/// snippet replaces it; cloudbase-init reads a config drive.
async fn check_template_cloud_init(pve: &PveClient, config: &GroupConfig, vms: &[VmResource], report: &mut Report) {
    let id = config.template_id;
    let subject = format!("template {id} static address");
    let Some(template) = vms.iter().find(|vm| vm.vmid == id) else { return };
    let template_config = match pve.vm_config(&template.node, id).await {
        Ok(c) => c,
        Err(err) => {
            report.fail(subject, err.to_string(), format!("grant VM.Audit on /vms/{id}"));
            return;
        }
    };
    let facts = crate::group::template::TemplateFacts::from_config(&template.node, &template_config, template.template);
    let Some(drive) = facts.cloud_init_drive else {
        // The template's own check names the missing drive and its fix.
        return;
    };
    let custom_network = template_config
        .get("cicustom")
        .is_some_and(|custom| custom.split(',').any(|part| part.trim_start().starts_with("network=")));
    let windows = template_config.get("ostype").is_some_and(|os| os.starts_with('w'));
    let citype = template_config.get("citype").map(String::as_str);
    if custom_network {
        report.fail(
            subject,
            "its `cicustom` has a network= snippet, which replaces the ipconfig0 the plugin writes",
            format!("remove the network part: `qm set {id} --cicustom <user=…>` without network="),
        );
    } else if windows && citype.is_some_and(|t| t != "configdrive2") {
        report.fail(
            subject,
            format!(
                "a Windows template with citype {}: cloudbase-init reads a config drive",
                citype.unwrap_or_default()
            ),
            format!("`qm set {id} --citype configdrive2`"),
        );
    } else {
        let reader = if windows { "cloudbase-init" } else { "cloud-init" };
        report.pass(
            subject,
            format!("cloud-init drive {drive}: {reader} applies the ipconfig0 the plugin writes at the first boot"),
        );
    }
}

/// Addresses of the pool that VMs already use: the group's own instances
/// (their leases), VMs in the pool (the plugin reads and skips them), and
/// VMs outside it, which the plugin cannot see and would hand out again.
async fn check_addresses_in_use(
    pve: &PveClient,
    config: &GroupConfig,
    network: &StaticNetwork,
    vms: &[VmResource],
    report: &mut Report,
) {
    let subject = "addresses in use";
    let naming = Naming::new(&config.group);
    let allowed = |ip: &IpAddr| network.pools().any(|pool| pool.allows(*ip));
    let mut leased = 0;
    let mut to_read: Vec<&VmResource> = Vec::new();
    for vm in vms.iter().filter(|vm| vm.vmid != config.template_id) {
        let lease = Lease::from_tags(&vm.tags);
        if lease.is_empty() {
            to_read.push(vm);
        } else if naming.owner_of_tags(vm.vmid, &vm.tags).is_some() {
            leased += 1;
        }
    }
    let reads: Vec<ConfigRead<'_>> = futures::stream::iter(
        to_read.into_iter().map(|vm| async move { (vm, pve.vm_config(&vm.node, vm.vmid).await) }),
    )
    .buffer_unordered(PARALLEL_READS)
    .collect()
    .await;
    let mut inside_pool = Vec::new();
    let mut outside_pool = Vec::new();
    let mut unreadable = Vec::new();
    for (vm, read) in reads {
        let vm_config = match read {
            Ok(c) => c,
            Err(err) if err.is_not_found() => continue,
            Err(err) => {
                unreadable.push(format!("VM {} ({})", vm.vmid, err.kind()));
                continue;
            }
        };
        let mut used: Vec<IpAddr> = vm_config
            .iter()
            .filter(|(key, _)| key.starts_with("ipconfig"))
            .flat_map(|(_, value)| Lease::from_ipconfig(value).addresses().collect::<Vec<_>>())
            .collect();
        used.retain(allowed);
        for ip in used {
            let name = vm.name.clone().unwrap_or_default();
            let entry = format!("{ip} (VM {} {name})", vm.vmid);
            if vm.pool.as_deref() == Some(config.pool.as_str()) {
                inside_pool.push(entry);
            } else {
                outside_pool.push(entry);
            }
        }
    }
    if !outside_pool.is_empty() {
        report.fail(
            subject,
            format!(
                "VMs outside pool {} use addresses of the static pool, and the plugin does not look there: {}",
                config.pool,
                outside_pool.join(", ")
            ),
            "add these addresses to `ip_pool_exclude`, or narrow `ip_pool_ranges`",
        );
    }
    if !unreadable.is_empty() {
        report.warn(
            subject,
            format!("could not read the configuration of {}", unreadable.join(", ")),
            "grant VM.Audit on them, or add their addresses to `ip_pool_exclude` if they are in the pool's range",
        );
    }
    let mut how = format!("{leased} of this group's instances hold leases");
    if !inside_pool.is_empty() {
        how.push_str(&format!("; VMs in pool {} use {} (never handed out)", config.pool, inside_pool.join(", ")));
    }
    if outside_pool.is_empty() {
        report.pass(subject, how);
    }
}
