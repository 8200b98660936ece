//! PVE's privileges and built-in roles, per release.
//!
//! A privilege set is a bit set over the known privilege names, so checking
//! 2,000 VMs for `VM.Audit` costs a few thousand integer operations.

use super::release::PveRelease;

/// The privilege names and the releases that know them (`since` inclusive,
/// `until` exclusive, as (major, minor)).
const PRIVILEGES: &[(&str, Release, Release)] = &[
    ("Datastore.Allocate", ALWAYS, NEVER),
    ("Datastore.AllocateSpace", ALWAYS, NEVER),
    ("Datastore.AllocateTemplate", ALWAYS, NEVER),
    ("Datastore.Audit", ALWAYS, NEVER),
    ("Group.Allocate", ALWAYS, NEVER),
    ("Mapping.Audit", (8, 0), NEVER),
    ("Mapping.Modify", (8, 0), NEVER),
    ("Mapping.Use", (8, 0), NEVER),
    ("Permissions.Modify", ALWAYS, NEVER),
    ("Pool.Allocate", ALWAYS, NEVER),
    ("Pool.Audit", ALWAYS, NEVER),
    ("Realm.Allocate", ALWAYS, NEVER),
    ("Realm.AllocateUser", ALWAYS, NEVER),
    ("SDN.Allocate", ALWAYS, NEVER),
    ("SDN.Audit", ALWAYS, NEVER),
    ("SDN.Use", (8, 0), NEVER),
    ("Sys.AccessNetwork", (8, 3), NEVER),
    ("Sys.Audit", ALWAYS, NEVER),
    ("Sys.Console", ALWAYS, NEVER),
    ("Sys.Incoming", ALWAYS, NEVER),
    ("Sys.Modify", ALWAYS, NEVER),
    ("Sys.PowerMgmt", ALWAYS, NEVER),
    ("Sys.Syslog", ALWAYS, NEVER),
    ("User.Modify", ALWAYS, NEVER),
    ("VM.Allocate", ALWAYS, NEVER),
    ("VM.Audit", ALWAYS, NEVER),
    ("VM.Backup", ALWAYS, NEVER),
    ("VM.Clone", ALWAYS, NEVER),
    ("VM.Config.CDROM", ALWAYS, NEVER),
    ("VM.Config.CPU", ALWAYS, NEVER),
    ("VM.Config.Cloudinit", ALWAYS, NEVER),
    ("VM.Config.Disk", ALWAYS, NEVER),
    ("VM.Config.HWType", ALWAYS, NEVER),
    ("VM.Config.Memory", ALWAYS, NEVER),
    ("VM.Config.Network", ALWAYS, NEVER),
    ("VM.Config.Options", ALWAYS, NEVER),
    ("VM.Console", ALWAYS, NEVER),
    ("VM.Migrate", ALWAYS, NEVER),
    // The guest-agent privilege moved in 9.0.
    ("VM.Monitor", ALWAYS, (9, 0)),
    ("VM.GuestAgent.Audit", (9, 0), NEVER),
    ("VM.GuestAgent.FileRead", (9, 0), NEVER),
    ("VM.GuestAgent.FileWrite", (9, 0), NEVER),
    ("VM.GuestAgent.FileSystemMgmt", (9, 0), NEVER),
    ("VM.GuestAgent.Unrestricted", (9, 0), NEVER),
    ("VM.PowerMgmt", ALWAYS, NEVER),
    ("VM.Snapshot", ALWAYS, NEVER),
    ("VM.Snapshot.Rollback", ALWAYS, NEVER),
];

/// A PVE release as (major, minor).
type Release = (u32, u32);

const ALWAYS: Release = (0, 0);
const NEVER: Release = (u32::MAX, 0);

/// A set of privileges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct PrivilegeSet(u64);

impl PrivilegeSet {
    pub const EMPTY: Self = Self(0);

    pub fn contains(self, privilege: &str) -> bool {
        index_of(privilege).is_some_and(|i| self.0 & (1 << i) != 0)
    }

    pub fn insert(&mut self, privilege: &str) -> bool {
        match index_of(privilege) {
            Some(i) => {
                self.0 |= 1 << i;
                true
            }
            None => false,
        }
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn names(self) -> impl Iterator<Item = &'static str> {
        PRIVILEGES.iter().enumerate().filter(move |(i, _)| self.0 & (1 << i) != 0).map(|(_, (name, _, _))| *name)
    }

    /// Every privilege this release knows (root@pam, `Administrator`).
    pub fn all(version: &PveRelease) -> Self {
        let mut set = Self::EMPTY;
        for (name, _, _) in PRIVILEGES {
            if exists_in(name, version) {
                set.insert(name);
            }
        }
        set
    }
}

fn index_of(privilege: &str) -> Option<usize> {
    PRIVILEGES.iter().position(|(name, _, _)| *name == privilege)
}

/// Whether `privilege` exists in this release (PVE rejects unknown names in
/// role definitions).
pub fn exists_in(privilege: &str, version: &PveRelease) -> bool {
    PRIVILEGES.iter().any(|(name, since, until)| {
        *name == privilege && (version.major, version.minor) >= *since && (version.major, version.minor) < *until
    })
}

/// The built-in roles of `version` (pve-access-control's `create_roles`).
pub fn builtin_roles(version: &PveRelease) -> Vec<(&'static str, PrivilegeSet)> {
    let all = PrivilegeSet::all(version);
    let set = |names: &[&str]| {
        let mut set = PrivilegeSet::EMPTY;
        for name in names {
            if exists_in(name, version) {
                set.insert(name);
            }
        }
        set
    };
    let matching = |keep: &dyn Fn(&str) -> bool| {
        let mut set = PrivilegeSet::EMPTY;
        for name in all.names() {
            if keep(name) {
                set.insert(name);
            }
        }
        set
    };
    let vm_user = set(&[
        "VM.Config.CDROM",
        "VM.Config.Cloudinit",
        "VM.Console",
        "VM.Backup",
        "VM.PowerMgmt",
        "VM.Audit",
        "VM.GuestAgent.Audit",
        "VM.GuestAgent.FileRead",
        "VM.GuestAgent.FileWrite",
        "VM.GuestAgent.FileSystemMgmt",
    ]);
    vec![
        ("Administrator", all),
        ("NoAccess", PrivilegeSet::EMPTY),
        // Everything but changing permissions, realms and the host itself.
        (
            "PVEAdmin",
            matching(&|p| !matches!(p, "Permissions.Modify" | "Realm.Allocate" | "Sys.Modify" | "Sys.PowerMgmt")),
        ),
        // The `audit` privilege groups; the guest-agent privileges belong to
        // the VM `user` group.
        ("PVEAuditor", matching(&|p| p.ends_with(".Audit") && !p.starts_with("VM.GuestAgent."))),
        ("PVEVMAdmin", matching(&|p| p.starts_with("VM."))),
        ("PVEVMUser", vm_user),
        ("PVETemplateUser", set(&["VM.Clone", "VM.Audit"])),
        ("PVEPoolUser", set(&["Pool.Audit"])),
        ("PVEPoolAdmin", set(&["Pool.Allocate", "Pool.Audit"])),
        ("PVEDatastoreUser", set(&["Datastore.AllocateSpace", "Datastore.Audit"])),
        (
            "PVEDatastoreAdmin",
            set(&["Datastore.Allocate", "Datastore.AllocateSpace", "Datastore.AllocateTemplate", "Datastore.Audit"]),
        ),
        ("PVESDNUser", set(&["SDN.Use", "SDN.Audit"])),
        ("PVESDNAdmin", set(&["SDN.Allocate", "SDN.Audit", "SDN.Use"])),
        ("PVEUserAdmin", set(&["User.Modify", "Group.Allocate", "Realm.AllocateUser", "Sys.Audit"])),
        ("PVESysAdmin", matching(&|p| p.starts_with("Sys.") && p != "Sys.PowerMgmt")),
        ("PVEMappingUser", set(&["Mapping.Audit", "Mapping.Use"])),
        ("PVEMappingAdmin", set(&["Mapping.Audit", "Mapping.Modify", "Mapping.Use"])),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(text: &str) -> PveRelease {
        PveRelease::parse(text).unwrap()
    }

    #[test]
    fn privileges_fit_the_bit_set() {
        assert!(PRIVILEGES.len() <= 64);
    }

    #[test]
    fn guest_agent_privilege_depends_on_the_release() {
        let role = |v: &str, name: &str| builtin_roles(&version(v)).into_iter().find(|(n, _)| *n == name).unwrap().1;
        assert!(role("8.4.2", "PVEVMAdmin").contains("VM.Monitor"));
        assert!(!role("8.4.2", "PVEVMAdmin").contains("VM.GuestAgent.Audit"));
        assert!(role("9.1.3", "PVEVMAdmin").contains("VM.GuestAgent.Unrestricted"));
        assert!(!role("9.1.3", "PVEVMAdmin").contains("VM.Monitor"));
        assert!(role("9.1.3", "PVEVMUser").contains("VM.GuestAgent.Audit"));
        assert!(!role("7.4", "PVESDNUser").contains("SDN.Use"), "SDN.Use arrived in 8.0");
        assert!(role("9.1.3", "PVEAuditor").contains("Pool.Audit"));
        assert!(!role("9.1.3", "PVEAuditor").contains("VM.Allocate"));
        assert!(!role("9.1.3", "PVEAuditor").contains("VM.GuestAgent.Audit"));
        assert!(!exists_in("VM.Monitor", &version("9.0")));
    }

    #[test]
    fn sets_combine() {
        let mut a = PrivilegeSet::EMPTY;
        assert!(a.insert("VM.Audit"));
        assert!(!a.insert("VM.Bogus"));
        let mut b = PrivilegeSet::EMPTY;
        b.insert("VM.Audit");
        b.insert("VM.Clone");
        assert_eq!(a.intersection(b), a);
        assert_eq!(a.union(b).names().collect::<Vec<_>>(), ["VM.Audit", "VM.Clone"]);
    }
}
