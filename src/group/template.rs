//! What a template's configuration tells about cloning it. One reading for
//! the engine's Init and for `check`, so the two never disagree about
//! whether linked clones or other target nodes are possible.

use std::collections::BTreeMap;

use crate::pve::{PveClient, StorageInfo};

/// The facts `GET /nodes/{node}/qemu/{vmid}/config` gives about a template.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateFacts {
    pub node: String,
    pub is_template: bool,
    pub agent_enabled: bool,
    /// The disk key of the cloud-init drive (`ide2`), if any.
    pub cloud_init_drive: Option<String>,
    /// Bridges of the template's NICs (`vmbr0`).
    pub bridges: Vec<String>,
    pub has_net0: bool,
    /// Storages of the template's disks (EFI and TPM state included), in
    /// key order, the cloud-init drive and CD-ROMs excluded.
    pub disk_storages: Vec<String>,
    /// Storage of the cloud-init drive (it is always copied in full).
    pub cloud_init_storage: Option<String>,
}

impl TemplateFacts {
    /// Reads a VM configuration (key → value as `GET …/config` returns it);
    /// `listed_as_template` is the `template` flag of `/cluster/resources`.
    pub fn from_config(node: &str, config: &BTreeMap<String, String>, listed_as_template: bool) -> Self {
        let mut facts = Self { node: node.to_string(), ..Self::default() };
        facts.is_template = listed_as_template || config.get("template").is_some_and(|t| t == "1");
        facts.agent_enabled = agent_enabled(config.get("agent").map(String::as_str));
        for (key, value) in config {
            if is_indexed(key, "net") {
                facts.has_net0 |= key == "net0";
                if let Some(bridge) = value.split(',').find_map(|part| part.strip_prefix("bridge="))
                    && !facts.bridges.iter().any(|b| b == bridge)
                {
                    facts.bridges.push(bridge.to_string());
                }
                continue;
            }
            let is_disk = ["ide", "sata", "scsi", "virtio"].iter().any(|bus| is_indexed(key, bus))
                || key == "efidisk0"
                || key == "tpmstate0";
            if !is_disk {
                continue;
            }
            let volume = value.split(',').next().unwrap_or_default();
            let storage = volume.split_once(':').map(|(storage, _)| storage.to_string());
            if value.contains("cloudinit") {
                facts.cloud_init_drive = Some(key.clone());
                facts.cloud_init_storage = storage;
            } else if !value.contains("media=cdrom")
                && volume != "none"
                && let Some(storage) = storage
                && !facts.disk_storages.contains(&storage)
            {
                facts.disk_storages.push(storage);
            }
        }
        facts
    }

    /// Every storage a clone reads from: the disks' and the cloud-init drive's.
    pub fn all_storages(&self) -> Vec<String> {
        let mut storages = self.disk_storages.clone();
        if let Some(storage) = &self.cloud_init_storage
            && !storages.contains(storage)
        {
            storages.push(storage.clone());
        }
        storages
    }
}

/// One requirement of the template: what passed, or the problem and its fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    /// What is judged: `source`, `guest agent`, `cloud-init drive`, `network`.
    pub aspect: &'static str,
    pub verdict: Result<String, Problem>,
}

/// A requirement the template does not meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub problem: String,
    pub fix: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; {}", self.problem, self.fix)
    }
}

/// What the template must offer, decided once for Init and `check`:
/// - a template, or any VM when `storage` is set (a full clone onto it, as
///   the seed does);
/// - the guest agent, which reports the instances' addresses;
/// - a cloud-init drive only when the plugin generates the credentials
///   (Runner brought none);
/// - a `net0`.
pub fn judge(
    facts: &TemplateFacts,
    config: &super::config::GroupConfig,
    generated_credentials: bool,
) -> Vec<Requirement> {
    let id = config.template_id;
    let storage = config.storage.as_deref();
    let static_network = config.static_network.is_some();
    let dns = !config.nameservers.is_empty() || config.searchdomain.is_some();
    let mut list = Vec::new();
    let source = if facts.is_template {
        Ok(format!("a template on node {}", facts.node))
    } else if let Some(storage) = storage {
        Ok(format!("VM on node {} (not a template): every instance is a full clone onto storage {storage}", facts.node))
    } else {
        Err(Problem {
            problem: format!("VM {id} on node {} is not a template", facts.node),
            fix: format!(
                "convert it with `qm template {id}` (or More → Convert to template in the GUI), or set `storage` to clone it in full onto that storage"
            ),
        })
    };
    list.push(Requirement { aspect: "source", verdict: source });
    let agent = if facts.agent_enabled {
        Ok("enabled".to_string())
    } else if !config.agent_required {
        Ok("not enabled, and not needed: `agent_required = false` (readiness is the connector's port)".to_string())
    } else {
        Err(Problem {
            problem: "the guest agent is not enabled, so the plugin cannot learn the instances' addresses".into(),
            fix: format!(
                "`qm set {id} --agent enabled=1`, and install and enable qemu-guest-agent inside the template"
            ),
        })
    };
    list.push(Requirement { aspect: "guest agent", verdict: agent });
    let cloud_init = match (&facts.cloud_init_drive, generated_credentials) {
        (Some(drive), _) => Ok(drive.clone()),
        (None, _) if dns && !static_network => Err(Problem {
            problem: "it has no cloud-init drive, which `nameserver` and `searchdomain` need".into(),
            fix: format!(
                "add a drive with `qm set {id} --ide2 {}:cloudinit`, or remove `nameserver` and `searchdomain`",
                facts.disk_storages.first().map_or("<storage>", String::as_str)
            ),
        }),
        (None, _) if static_network => Err(Problem {
            problem: "it has no cloud-init drive, which `network_mode = \"static\"` needs to hand the instance its address (ipconfig0)".into(),
            fix: format!(
                "add a drive with `qm set {id} --ide2 {}:cloudinit` (and cloud-init, or cloudbase-init on Windows, in the guest)",
                facts.disk_storages.first().map_or("<storage>", String::as_str)
            ),
        }),
        (None, false) => Ok("none, and none needed: Runner brings its own credentials".into()),
        (None, true) => Err(Problem {
            problem: "it has no cloud-init drive, which the plugin needs to install the SSH key (on Windows, the password) it generates when Runner brings no credentials".into(),
            fix: format!(
                "give Runner its own credentials in [runners.autoscaler.connector_config] (`username` and `key_path`, or `password`, as with the seed plugin), or add a drive with `qm set {id} --ide2 {}:cloudinit` (and cloud-init in the guest)",
                facts.disk_storages.first().map_or("<storage>", String::as_str)
            ),
        }),
    };
    list.push(Requirement { aspect: "cloud-init drive", verdict: cloud_init });
    let network = if facts.has_net0 {
        Ok(format!("net0 on {}", facts.bridges.join(", ")))
    } else {
        Err(Problem {
            problem: "it has no net0 network interface".into(),
            fix: format!("`qm set {id} --net0 virtio,bridge=vmbr0`"),
        })
    };
    list.push(Requirement { aspect: "network", verdict: network });
    list
}

/// How instances are cloned from this template, decided once for Init and
/// `check`: linked when `clone_mode` allows it and every disk's storage can
/// make linked clones of a template; full otherwise. `clone_mode = linked`
/// where that is impossible is a problem, not a silent full clone.
pub fn clone_kind(
    facts: &TemplateFacts,
    storage: &TemplateStorage,
    clone_mode: crate::group::config::CloneMode,
    clone_mode_explicit: bool,
) -> Result<(bool, String), Problem> {
    use crate::group::config::CloneMode;
    let linkable = facts.is_template && storage.linked_clones_possible();
    let kinds = storage.describe_disks();
    match clone_mode {
        CloneMode::Full => {
            let why = if clone_mode_explicit { "clone_mode = full" } else { "`storage` is set" };
            let could = if linkable { "" } else { "im" };
            Ok((false, format!("full clones ({why}); linked clones would be {could}possible")))
        }
        CloneMode::Linked if !facts.is_template => Err(Problem {
            problem: "clone_mode = linked, but the source VM is not a template; Proxmox makes linked clones only of templates".into(),
            fix: "set clone_mode = \"full\" (or leave it unset with `storage` set), or convert the VM to a template".into(),
        }),
        CloneMode::Linked if !linkable => Err(Problem {
            problem: format!("clone_mode = linked, but the template's storage {kinds} cannot make linked clones"),
            fix: "set clone_mode = \"auto\" or \"full\", or move the template's disks to storage with linked clones \
                  (LVM-thin, ZFS, Ceph RBD, directory/NFS with qcow2)"
                .into(),
        }),
        _ if linkable => Ok((true, format!("linked clones on {kinds}"))),
        _ => Ok((false, format!("full clones: {kinds} cannot make linked clones (slower, more space)"))),
    }
}

/// Whether a config `agent` value turns the guest agent on (`1`, `enabled=1`, …).
pub fn agent_enabled(value: Option<&str>) -> bool {
    let Some(value) = value else { return false };
    value
        .split(',')
        .any(|part| matches!(part.trim(), "1" | "enabled=1" | "enabled=yes" | "enabled=true" | "enabled=on"))
}

fn is_indexed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// The storages a template's disks are on, as the template's node sees them.
#[derive(Debug, Default)]
pub struct TemplateStorage {
    /// Each storage of [`TemplateFacts::all_storages`], with its type and
    /// whether it is shared, or why it could not be read.
    pub storages: Vec<(String, Result<StorageInfo, crate::pve::Error>)>,
    /// The cloud-init drive's storage: copied in full even in a linked clone,
    /// so it does not decide whether linked clones are possible.
    cloud_init_only: Option<String>,
}

impl TemplateStorage {
    /// Reads every storage the template's disks and cloud-init drive are on.
    pub async fn inspect(pve: &PveClient, facts: &TemplateFacts) -> Self {
        let mut storages = Vec::new();
        for storage in facts.all_storages() {
            let info = pve.storage_info(&facts.node, &storage).await;
            storages.push((storage, info));
        }
        let cloud_init_only = facts.cloud_init_storage.clone().filter(|storage| !facts.disk_storages.contains(storage));
        Self { storages, cloud_init_only }
    }

    fn disks(&self) -> impl Iterator<Item = &(String, Result<StorageInfo, crate::pve::Error>)> {
        self.storages.iter().filter(|(name, _)| Some(name) != self.cloud_init_only.as_ref())
    }

    /// PVE makes a linked clone only when every disk's storage can clone a
    /// base volume (else the clone task fails with "Linked clone feature is
    /// not supported"). An unreadable storage counts as unable.
    pub fn linked_clones_possible(&self) -> bool {
        self.disks().next().is_some()
            && self.disks().all(|(_, info)| info.as_ref().is_ok_and(StorageInfo::supports_linked_clones))
    }

    /// PVE clones to another node only when every volume, the cloud-init
    /// drive included, is on shared storage.
    pub fn all_shared(&self) -> bool {
        self.storages.iter().all(|(_, info)| info.as_ref().is_ok_and(|info| info.shared))
    }

    /// Every volume's storage: `local-lvm (lvmthin), ceph (rbd, shared)`.
    pub fn describe(&self) -> String {
        describe(self.storages.iter())
    }

    /// The disks' storages only (what decides linked clones).
    pub fn describe_disks(&self) -> String {
        describe(self.disks())
    }

    /// The storages that could not be read, with the reason.
    pub fn unreadable(&self) -> impl Iterator<Item = (&str, &crate::pve::Error)> {
        self.storages.iter().filter_map(|(name, info)| info.as_ref().err().map(|err| (name.as_str(), err)))
    }
}

fn describe<'a>(storages: impl Iterator<Item = &'a (String, Result<StorageInfo, crate::pve::Error>)>) -> String {
    let described: Vec<String> = storages
        .map(|(name, info)| match info {
            Ok(info) => format!("{name} ({}{})", info.kind, if info.shared { ", shared" } else { "" }),
            Err(_) => format!("{name} (unreadable)"),
        })
        .collect();
    if described.is_empty() { "(no disks found)".to_string() } else { described.join(", ") }
}

/// Why `clone_snapshot` names no snapshot of the source, with the fix.
pub fn missing_snapshot(template_id: crate::pve::Vmid, name: &str, is_template: bool, snapshots: &[String]) -> String {
    let found =
        if snapshots.is_empty() { "it has none".to_string() } else { format!("it has {}", snapshots.join(", ")) };
    let why = if is_template {
        "; Proxmox templates cannot have snapshots, so clone a VM that is not a template (with `storage` set) or remove `clone_snapshot`"
    } else {
        "; name one of them, or take it with `qm snapshot`"
    };
    format!("`clone_snapshot` {name} is not a snapshot of VM {template_id} ({found}){why}")
}

/// The disk that `vm_disk_mb` or `instance_autoresize_disk` grows, checked
/// against the configuration the instances are cloned from: it must be a
/// disk of that VM, and never a CD-ROM or the cloud-init drive. `None` when
/// no disk is grown. The error names the setting and the fix.
pub fn grown_disk(
    source: &BTreeMap<String, String>,
    config: &super::config::GroupConfig,
) -> Result<Option<String>, String> {
    let id = config.template_id;
    let (setting, disk) = match (&config.autoresize, config.sizing.disk_mib, &config.sizing.disk_device) {
        (Some(resize), _, _) => ("instance_autoresize_disk", resize.disk.clone()),
        (None, Some(_), Some(device)) => ("vm_disk_device", device.clone()),
        (None, Some(_), None) => match boot_disk(source) {
            Some(disk) => return Ok(Some(disk)),
            None => {
                return Err(format!(
                    "`vm_disk_mb` is set, but VM {id} has no disk to grow; add a disk to it, or remove `vm_disk_mb`"
                ));
            }
        },
        (None, None, _) => return Ok(None),
    };
    let disks: Vec<&str> = source
        .iter()
        .filter(|(key, value)| is_disk_key(key) && !is_cdrom_or_cloud_init(value))
        .map(|(key, _)| key.as_str())
        .collect();
    let fix = if disks.is_empty() { String::new() } else { format!(" (its disks: {})", disks.join(", ")) };
    match source.get(&disk) {
        Some(value) if value.contains("cloudinit") => Err(format!(
            "`{setting}` {disk} is VM {id}'s cloud-init drive, which is never resized; name the system disk{fix}"
        )),
        Some(value) if is_cdrom_or_cloud_init(value) => {
            Err(format!("`{setting}` {disk} is a CD-ROM drive of VM {id}, not a disk; name a disk{fix}"))
        }
        Some(_) => Ok(Some(disk)),
        None => Err(format!("`{setting}` {disk} is not a disk of VM {id}; name one of its disks{fix}")),
    }
}

/// The boot disk: the first disk of `boot: order=…`, else the legacy
/// `bootdisk`, else the first disk (SCSI, VirtIO, SATA, then IDE).
pub fn boot_disk(source: &BTreeMap<String, String>) -> Option<String> {
    let usable = |key: &str| is_disk_key(key) && source.get(key).is_some_and(|value| !is_cdrom_or_cloud_init(value));
    let boot = source.get("boot").map(String::as_str).unwrap_or_default();
    let order = boot.split(',').find_map(|part| part.strip_prefix("order="));
    if let Some(disk) = order.and_then(|order| order.split(';').map(str::trim).find(|key| usable(key))) {
        return Some(disk.to_string());
    }
    if let Some(disk) = source.get("bootdisk").filter(|key| usable(key)) {
        return Some(disk.clone());
    }
    let mut disks: Vec<(usize, u32, &String)> = source
        .keys()
        .filter(|key| usable(key))
        .filter_map(|key| {
            let bus = ["scsi", "virtio", "sata", "ide"].iter().position(|bus| is_indexed(key, bus))?;
            let index = key.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()?;
            Some((bus, index, key))
        })
        .collect();
    disks.sort();
    disks.first().map(|(_, _, key)| (*key).clone())
}

/// The size of every disk a clone gets its own copy of (EFI and TPM state
/// included, CD-ROMs and the cloud-init drive not), by key, from `size=`.
pub fn disk_sizes(source: &BTreeMap<String, String>) -> BTreeMap<&str, u64> {
    source
        .iter()
        .filter(|(key, value)| {
            (is_disk_key(key) || key.as_str() == "efidisk0" || key.as_str() == "tpmstate0")
                && !is_cdrom_or_cloud_init(value)
        })
        .filter_map(|(key, value)| {
            let size = value.split(',').find_map(|part| part.strip_prefix("size="))?;
            Some((key.as_str(), super::provision::size_in_bytes(size)?))
        })
        .collect()
}

/// `ide0`-`ide3`, `sata0`-`sata5`, `scsi0`-`scsi30`, `virtio0`-`virtio15`.
fn is_disk_key(key: &str) -> bool {
    ["ide", "sata", "scsi", "virtio"].iter().any(|bus| is_indexed(key, bus))
}

fn is_cdrom_or_cloud_init(value: &str) -> bool {
    value.contains("media=cdrom") || value.contains("cloudinit") || value.split(',').next() == Some("none")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn agent_values_as_pve_writes_them() {
        assert!(agent_enabled(Some("1")));
        assert!(agent_enabled(Some("enabled=1,fstrim_cloned_disks=1")));
        assert!(!agent_enabled(Some("0")));
        assert!(!agent_enabled(Some("enabled=0")));
        assert!(!agent_enabled(None));
    }

    #[test]
    fn facts_from_a_pve_config() {
        let facts = TemplateFacts::from_config(
            "pve1",
            &config(&[
                ("agent", "1,fstrim_cloned_disks=1"),
                ("scsi0", "local-lvm:base-9000-disk-0,size=8G"),
                ("scsihw", "virtio-scsi-pci"),
                ("efidisk0", "nvme:base-9000-disk-1,size=4M"),
                ("ide0", "local:iso/debian.iso,media=cdrom"),
                ("ide2", "ceph:vm-9000-cloudinit,media=cdrom"),
                ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0,firewall=1"),
                ("net1", "virtio=BC:24:11:00:00:02,bridge=vnet7"),
                ("template", "1"),
            ]),
            false,
        );
        assert!(facts.is_template && facts.agent_enabled && facts.has_net0);
        assert_eq!(facts.cloud_init_drive.as_deref(), Some("ide2"));
        assert_eq!(facts.cloud_init_storage.as_deref(), Some("ceph"));
        assert_eq!(facts.disk_storages, ["nvme", "local-lvm"]);
        assert_eq!(facts.all_storages(), ["nvme", "local-lvm", "ceph"]);
        assert_eq!(facts.bridges, ["vmbr0", "vnet7"]);
        let bare = TemplateFacts::from_config(
            "pve1",
            &config(&[("agent", "enabled=0"), ("scsi0", "local:100/disk.qcow2")]),
            true,
        );
        assert!(bare.is_template && !bare.agent_enabled && bare.cloud_init_drive.is_none() && !bare.has_net0);
    }

    fn storage(kind: &str, shared: bool) -> Result<StorageInfo, crate::pve::Error> {
        Ok(StorageInfo { kind: kind.to_string(), shared })
    }

    #[test]
    fn linked_clones_need_every_disk_on_capable_storage_but_not_the_cloud_init_drive() {
        let both = TemplateStorage {
            storages: vec![("local-lvm".into(), storage("lvmthin", false)), ("san".into(), storage("lvm", true))],
            cloud_init_only: Some("san".into()),
        };
        assert!(both.linked_clones_possible(), "the cloud-init drive is always copied in full");
        assert_eq!(both.describe_disks(), "local-lvm (lvmthin)");
        assert_eq!(both.describe(), "local-lvm (lvmthin), san (lvm, shared)");
        assert!(!both.all_shared(), "local-lvm is not shared");
        let efi_on_lvm = TemplateStorage {
            storages: vec![("local-lvm".into(), storage("lvmthin", false)), ("thick".into(), storage("lvm", false))],
            cloud_init_only: None,
        };
        assert!(!efi_on_lvm.linked_clones_possible());
        assert_eq!(efi_on_lvm.describe(), "local-lvm (lvmthin), thick (lvm)");
        let shared = TemplateStorage { storages: vec![("ceph".into(), storage("rbd", true))], cloud_init_only: None };
        assert!(shared.linked_clones_possible() && shared.all_shared());
        assert!(!TemplateStorage::default().linked_clones_possible());
    }
}
