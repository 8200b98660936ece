//! The privileges the plugin needs, derived from the calls it makes
//! (`group::engine`, `group::provision`, `pve::client`), in ONE list: the
//! `check` command compares it with `/access/permissions`, and
//! docs/proxmox-setup.md is generated from it (a test fails when they drift).

use crate::pve::PveVersion;

/// Where an ACL entry must sit. Each place gets its own custom role, so a
/// privilege granted for one purpose does not leak onto another object
/// (e.g. `VM.Allocate` never lands on the template).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AclPlace {
    /// `/pool/<pool>`: the instances (pool ACLs propagate to members).
    Pool,
    /// `/vms/<template_id>`: the template (also covered by the pool ACL when
    /// the template is in the pool).
    Template,
    /// `/storage/<storage>`: every storage a clone's disks land on.
    Storage,
    /// `/sdn/zones/localnetwork/<bridge>`: every bridge the template's NICs use.
    Bridge,
    /// `/nodes`: the nodes' resources in the cluster listing (placement).
    Nodes,
}

impl AclPlace {
    pub const ALL: [AclPlace; 5] =
        [AclPlace::Pool, AclPlace::Template, AclPlace::Storage, AclPlace::Bridge, AclPlace::Nodes];

    /// The ACL path for a concrete object (`ci`, `9000`, `local-lvm`, `vmbr0`).
    pub fn path(self, object: &str) -> String {
        match self {
            Self::Pool => format!("/pool/{object}"),
            Self::Template => format!("/vms/{object}"),
            Self::Storage => format!("/storage/{object}"),
            Self::Bridge => format!("/sdn/zones/localnetwork/{object}"),
            Self::Nodes => "/nodes".to_string(),
        }
    }

    /// The path with a placeholder, for documentation.
    pub fn placeholder(self) -> &'static str {
        match self {
            Self::Pool => "/pool/<pool>",
            Self::Template => "/vms/<template_id>",
            Self::Storage => "/storage/<storage>",
            Self::Bridge => "/sdn/zones/localnetwork/<bridge>",
            Self::Nodes => "/nodes",
        }
    }

    /// The custom role docs/proxmox-setup.md creates for this place.
    pub fn role(self) -> &'static str {
        match self {
            Self::Pool => "FleetingPool",
            Self::Template => "FleetingTemplate",
            Self::Storage => "FleetingStorage",
            Self::Bridge => "FleetingNetwork",
            Self::Nodes => "FleetingNodes",
        }
    }
}

/// One privilege the plugin needs on one place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub place: AclPlace,
    /// The privilege to grant.
    pub privilege: &'static str,
    /// Other privileges PVE accepts instead (any one suffices).
    pub alternatives: &'static [&'static str],
    /// What the plugin does with it.
    pub why: &'static str,
    /// When it is needed.
    pub needed: Need,
}

/// When a privilege is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Always,
    /// Only when the plugin writes cloud-init settings: it generates
    /// credentials (Runner's connector_config brings no key, password or
    /// `use_static_credentials`), hands out static addresses, or sets
    /// `nameserver` / `searchdomain`.
    CloudInit,
    /// Only with `instance_autoresize_disk` / `instance_autoresize_size` or `vm_disk_mb`.
    DiskResize,
    /// Only with `vm_memory_mb`.
    Memory,
    /// Only with `vm_cpu_cores`.
    Cores,
    /// Only with the guest agent (`agent_required`, the default).
    Agent,
    /// Only with `target_nodes` (placement reads the nodes' resources).
    Placement,
    /// Only when nodes get template copies (`target_nodes` beyond the
    /// template's node, with the template on local storage).
    Staging,
}

/// What a group does that decides which privileges it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uses {
    pub cloud_init: bool,
    pub disk_resize: bool,
    pub memory: bool,
    pub cores: bool,
    pub agent: bool,
    pub placement: bool,
    pub staging: bool,
}

impl Need {
    /// Whether it applies to a group that does what `uses` says.
    pub fn applies(self, uses: Uses) -> bool {
        match self {
            Self::Always => true,
            Self::CloudInit => uses.cloud_init,
            Self::DiskResize => uses.disk_resize,
            Self::Memory => uses.memory,
            Self::Cores => uses.cores,
            Self::Agent => uses.agent,
            Self::Placement => uses.placement,
            Self::Staging => uses.staging,
        }
    }

    fn note(self) -> &'static str {
        match self {
            Self::Always => "",
            Self::CloudInit => "; only when the plugin generates credentials, hands out static addresses or sets DNS",
            Self::DiskResize => "; only with `instance_autoresize_disk` or `vm_disk_mb`",
            Self::Memory => "; only with `vm_memory_mb`",
            Self::Cores => "; only with `vm_cpu_cores`",
            Self::Agent => "; not with `agent_required = false`",
            Self::Placement => "; only with `target_nodes` (without it new VMs are spread by count)",
            Self::Staging => "; only when other target nodes cannot reach the template's storage (template copies)",
        }
    }
}

impl Requirement {
    /// Whether `held` satisfies this requirement.
    pub fn satisfied_by<'a>(&self, mut held: impl Iterator<Item = &'a str>) -> bool {
        held.any(|p| p == self.privilege || self.alternatives.contains(&p))
    }
}

/// The PVE releases `check` accepts without a warning: 7.0 up to 9.x.
pub fn is_supported(version: &PveVersion) -> bool {
    (7..=9).contains(&version.major)
}

/// Every privilege the plugin needs on `version`, with the reason.
pub fn required_privileges(version: &PveVersion) -> Vec<Requirement> {
    let need = |place, privilege, why| Requirement { place, privilege, alternatives: &[], why, needed: Need::Always };
    let mut list = vec![
        need(AclPlace::Pool, "Pool.Audit", "see the pool and the pool of each VM (GET /pools, /cluster/resources)"),
        need(
            AclPlace::Pool,
            "VM.Allocate",
            "clone into the pool (POST …/clone with pool=), delete instances (DELETE …/qemu/{vmid}), and free what a failed clone left (an empty VM on its VMID, deleted with destroy-unreferenced-disks)",
        ),
        need(AclPlace::Pool, "VM.Audit", "list instances and read their configuration and status"),
        need(AclPlace::Pool, "VM.Config.Options", "tag instances and rename them per state (PUT …/config tags, name)"),
        Requirement {
            place: AclPlace::Pool,
            privilege: "VM.Config.Cloudinit",
            alternatives: &["VM.Config.Network"],
            why: "hand the generated SSH key or Windows password, the static address and DNS to cloud-init (PUT …/config ciuser, sshkeys, cipassword, ipconfig0, nameserver, searchdomain)",
            needed: Need::CloudInit,
        },
        need(AclPlace::Pool, "VM.PowerMgmt", "start, stop, suspend and resume instances"),
        Requirement {
            place: AclPlace::Pool,
            privilege: "VM.Config.Disk",
            alternatives: &[],
            why: "grow a disk after the clone (PUT …/resize)",
            needed: Need::DiskResize,
        },
        Requirement {
            place: AclPlace::Pool,
            privilege: "VM.Config.Memory",
            alternatives: &[],
            why: "set the instances' memory before the first start (PUT …/config memory)",
            needed: Need::Memory,
        },
        Requirement {
            place: AclPlace::Pool,
            privilege: "VM.Config.CPU",
            alternatives: &[],
            why: "set the instances' cores before the first start (PUT …/config cores)",
            needed: Need::Cores,
        },
    ];
    if version.major >= 9 {
        list.push(Requirement {
            place: AclPlace::Pool,
            privilege: "VM.GuestAgent.Audit",
            alternatives: &["VM.GuestAgent.Unrestricted"],
            why: "read instance addresses from the guest agent (agent/network-get-interfaces, agent/ping)",
            needed: Need::Agent,
        });
    } else {
        list.push(Requirement {
            place: AclPlace::Pool,
            privilege: "VM.Monitor",
            alternatives: &[],
            why: "read instance addresses from the guest agent (agent/network-get-interfaces, agent/ping)",
            needed: Need::Agent,
        });
    }
    list.push(need(AclPlace::Template, "VM.Audit", "find the template and read its configuration"));
    list.push(need(AclPlace::Template, "VM.Clone", "clone the template"));
    list.push(need(
        AclPlace::Storage,
        "Datastore.AllocateSpace",
        "allocate the clones' disks and cloud-init drive; read the storage type (linked clones)",
    ));
    list.push(Requirement {
        place: AclPlace::Pool,
        privilege: "VM.Migrate",
        alternatives: &[],
        why: "move each node's template copy from the template's node to its own (POST …/migrate, offline)",
        needed: Need::Staging,
    });
    list.push(Requirement {
        place: AclPlace::Nodes,
        privilege: "Sys.Audit",
        alternatives: &[],
        why: "read each node's memory, CPU and storage use in the cluster listing (GET /cluster/resources), which placement weighs",
        needed: Need::Placement,
    });
    if version.requires_sdn_use() {
        list.push(need(
            AclPlace::Bridge,
            "SDN.Use",
            "attach clones to the template's bridge (checked by PVE since 8.0)",
        ));
    }
    list
}

/// The privileges of the custom role for `place` on `version`.
pub fn role_privileges(version: &PveVersion, place: AclPlace) -> Vec<&'static str> {
    required_privileges(version).into_iter().filter(|r| r.place == place).map(|r| r.privilege).collect()
}

/// `pveum role add <role> --privs "…"` for `place` on `version`.
pub fn role_add_command(version: &PveVersion, place: AclPlace) -> Option<String> {
    let privileges = role_privileges(version, place);
    (!privileges.is_empty()).then(|| format!("pveum role add {} --privs \"{}\"", place.role(), privileges.join(",")))
}

/// Who to grant to in `pveum acl modify`: a privilege-separated token holds
/// only what both it and its user hold, so both get the ACL.
pub fn grantee_flags(subject: &Subject) -> String {
    match subject {
        Subject::User(user) => format!("--users {user}"),
        Subject::Token { user, token } => format!("--users {user} --tokens '{token}'"),
    }
}

/// The identity the plugin logs in as (never a secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(String),
    Token { user: String, token: String },
}

/// The setup commands for one PVE major release, as a shell block for
/// docs/proxmox-setup.md (user, token, roles, pool, ACLs).
pub fn setup_script(major: u32) -> String {
    let version = PveVersion { major, minor: if major == 7 { 4 } else { 0 }, patch: 0 };
    let subject = Subject::Token { user: "fleeting@pve".into(), token: "fleeting@pve!ci".into() };
    let mut lines = vec![
        "# A dedicated user and an API token (privilege-separated; note the secret it prints)".to_string(),
        "pveum user add fleeting@pve --comment \"GitLab Runner fleeting plugin\"".to_string(),
        "pveum user token add fleeting@pve ci --privsep 1".to_string(),
        String::new(),
        "# Least-privilege roles, one per place the plugin touches".to_string(),
    ];
    for place in AclPlace::ALL {
        if let Some(command) = role_add_command(&version, place) {
            lines.push(command);
        }
    }
    lines.push(String::new());
    lines.push("# The pool the instances live in".to_string());
    lines.push("pveum pool add ci --comment \"GitLab Runner instances\"".to_string());
    lines.push(String::new());
    lines.push("# ACLs: pool, template (outside the pool), storage, bridge; /nodes only with target_nodes".to_string());
    let objects = [
        (AclPlace::Pool, "ci"),
        (AclPlace::Template, "9000"),
        (AclPlace::Storage, "local-lvm"),
        (AclPlace::Bridge, "vmbr0"),
        (AclPlace::Nodes, ""),
    ];
    for (place, object) in objects {
        if role_privileges(&version, place).is_empty() {
            continue;
        }
        lines.push(format!(
            "pveum acl modify {} --roles {} {}",
            place.path(object),
            place.role(),
            grantee_flags(&subject)
        ));
    }
    lines.join("\n") + "\n"
}

/// The privilege table for docs/proxmox-setup.md: one row per requirement
/// and release.
pub fn privilege_table() -> String {
    let releases: Vec<(u32, PveVersion)> =
        [7u32, 8, 9].iter().map(|&major| (major, PveVersion { major, minor: 0, patch: 0 })).collect();
    let mut rows: Vec<(AclPlace, &'static str, &'static [&'static str], &'static str, Need)> = Vec::new();
    for (_, version) in &releases {
        for r in required_privileges(version) {
            if !rows.iter().any(|(place, privilege, ..)| *place == r.place && *privilege == r.privilege) {
                rows.push((r.place, r.privilege, r.alternatives, r.why, r.needed));
            }
        }
    }
    rows.sort_by_key(|(place, ..)| *place);
    let mut out = String::from("| Path | Privilege | PVE 7 | PVE 8 | PVE 9 | Why |\n|---|---|---|---|---|---|\n");
    for (place, privilege, alternatives, why, needed) in rows {
        let mut name = format!("`{privilege}`");
        for alternative in alternatives {
            name.push_str(&format!(" (or `{alternative}`)"));
        }
        let marks: Vec<&str> = releases
            .iter()
            .map(|(_, version)| {
                if required_privileges(version).iter().any(|r| r.place == place && r.privilege == privilege) {
                    "yes"
                } else {
                    "–"
                }
            })
            .collect();
        let why = format!("{why}{}", needed.note());
        out.push_str(&format!(
            "| `{}` | {name} | {} | {} | {} | {why} |\n",
            place.placeholder(),
            marks[0],
            marks[1],
            marks[2]
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> PveVersion {
        PveVersion::parse(text).unwrap()
    }

    #[test]
    fn guest_agent_privilege_follows_the_release() {
        let pool = |version: &str| role_privileges(&v(version), AclPlace::Pool);
        assert!(pool("8.4.1").contains(&"VM.Monitor"));
        assert!(!pool("8.4.1").contains(&"VM.GuestAgent.Audit"));
        assert!(pool("9.1.3").contains(&"VM.GuestAgent.Audit"));
        assert!(!pool("9.1.3").contains(&"VM.Monitor"));
    }

    #[test]
    fn sdn_use_only_from_8_0() {
        assert!(role_privileges(&v("7.4"), AclPlace::Bridge).is_empty());
        assert_eq!(role_privileges(&v("8.0.4"), AclPlace::Bridge), ["SDN.Use"]);
        assert!(!setup_script(7).contains("SDN"));
        assert!(setup_script(8).contains("pveum acl modify /sdn/zones/localnetwork/vmbr0 --roles FleetingNetwork"));
    }

    #[test]
    fn alternatives_satisfy() {
        let list = required_privileges(&v("9.1"));
        let agent = list.iter().find(|r| r.privilege == "VM.GuestAgent.Audit").unwrap();
        assert!(agent.satisfied_by(["VM.GuestAgent.Unrestricted"].into_iter()));
        assert!(!agent.satisfied_by(["VM.Audit"].into_iter()));
    }
}
