//! The one place that decides what a VM of this group looks like: its
//! instance id, the ownership marker written atomically with the clone
//! request (in the VM's description), and the tags added right after it for
//! cheap listing.
//!
//! Ownership rule: a VM belongs to the group only if it is in the group's
//! pool, is not a template, and carries the marker (tag for listing; the
//! description is re-checked before anything destructive).

use std::fmt;
use std::str::FromStr;

use rand::Rng;

use super::ip_pool::Lease;
use crate::pve::Vmid;

/// Tag every instance of every group carries.
pub const PLUGIN_TAG: &str = "fleeting";
/// First line of the description of every instance.
const MARKER_PREFIX: &str = "fleeting-plugin-proxmox:";

/// An instance as Runner knows it: `<vmid>-<token>`. The token tells two VMs
/// apart that got the same (recycled) VMID one after the other.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub vmid: Vmid,
    pub token: String,
}

impl InstanceId {
    /// A new id for `vmid` with a fresh random token.
    pub fn generate(vmid: Vmid) -> Self {
        const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyz23456789";
        let mut rng = rand::rng();
        let token = (0..6).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect();
        Self { vmid, token }
    }

    /// The tag that carries the token (`fi-<token>`).
    pub fn token_tag(&self) -> String {
        format!("fi-{}", self.token)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.vmid, self.token)
    }
}

/// Why a string is not an instance id of this plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not an instance of this plugin (expected <vmid>-<token>)")]
pub struct InstanceIdError(String);

impl FromStr for InstanceId {
    type Err = InstanceIdError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let error = || InstanceIdError(text.to_string());
        let (vmid, token) = text.split_once('-').ok_or_else(error)?;
        let vmid: u32 = vmid.parse().map_err(|_| error())?;
        let valid_token = token.len() == 6 && token.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if vmid < 100 || !valid_token {
            return Err(error());
        }
        Ok(Self { vmid: Vmid(vmid), token: token.to_string() })
    }
}

/// What the marker of a template copy says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyMarker {
    /// The copy's own VMID.
    pub vmid: Vmid,
    /// The template it copies.
    pub source: Vmid,
    /// The node it was made for.
    pub node: String,
    /// The template's version it was made from.
    pub version: String,
}

/// The group's marker and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    pub group: String,
}

impl Naming {
    pub fn new(group: &str) -> Self {
        Self { group: group.to_string() }
    }

    /// `fleeting-<group>`: lists the group's VMs from `/cluster/resources`.
    pub fn group_tag(&self) -> String {
        format!("{PLUGIN_TAG}-{}", self.group)
    }

    /// The description written with the clone request.
    pub fn description(&self, id: &InstanceId) -> String {
        self.description_with_lease(id, &Lease::default())
    }

    /// The description with the instance's static lease on the marker line
    /// (`ip=`, `ip6=`): written with the clone request, so a VM never exists
    /// without the lease it was cloned for.
    pub fn description_with_lease(&self, id: &InstanceId, lease: &Lease) -> String {
        format!(
            "{MARKER_PREFIX} group={} instance={id}{}\nCreated by the GitLab Runner fleeting plugin for Proxmox; it deletes this VM when it is no longer needed.",
            self.group,
            lease.marker_fields()
        )
    }

    /// The static lease in a description's marker, of any group.
    pub fn lease_of_description(description: &str) -> Lease {
        match description.lines().next().map(str::trim) {
            Some(first) if first.starts_with(MARKER_PREFIX) => Lease::from_marker_line(first),
            _ => Lease::default(),
        }
    }

    /// The instance a description marks as this group's, if any.
    pub fn owner_of_description(&self, description: &str) -> Option<InstanceId> {
        let first = description.lines().next()?.trim();
        let rest = first.strip_prefix(MARKER_PREFIX)?;
        let mut group = None;
        let mut instance = None;
        for field in rest.split_whitespace() {
            match field.split_once('=') {
                Some(("group", value)) => group = Some(value),
                Some(("instance", value)) => instance = value.parse().ok(),
                _ => {}
            }
        }
        (group == Some(self.group.as_str())).then_some(instance).flatten()
    }

    /// The description of a copy of template `source` made from its
    /// `version`: the marker without an `instance`, so no code that looks
    /// for instances ever takes a copy for one.
    pub fn copy_description(&self, vmid: Vmid, source: Vmid, node: &str, version: &str) -> String {
        format!(
            "{MARKER_PREFIX} group={} template-copy={vmid} template-copy-of={source} node={node} version={version}\nCopy of template {source} made by the GitLab Runner fleeting plugin for Proxmox for node {node}; it deletes this copy when the template changes and no instance uses it.",
            self.group
        )
    }

    /// The template copy a description marks as this group's, if any. Like
    /// an instance's, the marker names its own VMID, so a VM cloned from a
    /// copy by hand (which inherits the description) is never taken for one.
    pub fn copy_of_description(&self, description: &str) -> Option<CopyMarker> {
        let rest = description.lines().next()?.trim().strip_prefix(MARKER_PREFIX)?;
        let (mut group, mut vmid, mut source, mut node, mut version) = (None, None, None, None, None);
        for field in rest.split_whitespace() {
            match field.split_once('=') {
                Some(("group", value)) => group = Some(value),
                Some(("template-copy", value)) => vmid = value.parse().ok().map(Vmid),
                Some(("template-copy-of", value)) => source = value.parse().ok().map(Vmid),
                Some(("node", value)) => node = Some(value.to_string()),
                Some(("version", value)) => version = Some(value.to_string()),
                _ => {}
            }
        }
        if group != Some(self.group.as_str()) {
            return None;
        }
        Some(CopyMarker { vmid: vmid?, source: source?, node: node?, version: version.unwrap_or_default() })
    }

    /// Whether a description carries this plugin's marker, of any group.
    pub fn has_any_marker(description: &str) -> bool {
        description.lines().next().is_some_and(|first| first.trim().starts_with(MARKER_PREFIX))
    }

    /// Whether tags mark a VM as another group's (`fleeting-<group>`).
    pub fn tagged_by_another_group(&self, tags: &[String]) -> bool {
        let own = self.group_tag();
        tags.iter().any(|tag| tag.starts_with(&format!("{PLUGIN_TAG}-")) && *tag != own)
    }

    /// The tags an instance carries: the plugin's, the group's, its token's,
    /// and the user's extra tags, normalised the way PVE stores them.
    pub fn tags(&self, id: &InstanceId, extra: &[String]) -> Vec<String> {
        let mut tags = vec![PLUGIN_TAG.to_string(), self.group_tag(), id.token_tag()];
        tags.extend(extra.iter().map(|t| t.to_ascii_lowercase()));
        tags.sort();
        tags.dedup();
        tags
    }

    /// The instance a VM's tags name, if they mark it as this group's.
    pub fn owner_of_tags(&self, vmid: Vmid, tags: &[String]) -> Option<InstanceId> {
        if !tags.iter().any(|t| *t == self.group_tag()) {
            return None;
        }
        let token = tags.iter().find_map(|t| t.strip_prefix("fi-"))?;
        format!("{vmid}-{token}").parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_round_trip() {
        let id = InstanceId::generate(Vmid(105));
        let text = id.to_string();
        assert!(text.starts_with("105-"), "{text}");
        assert_eq!(text.parse::<InstanceId>().unwrap(), id);
        for bad in ["105", "abc-defghi", "99-abcdef", "105-ABCDEF", "105-abc"] {
            assert!(bad.parse::<InstanceId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn description_marker_names_group_and_instance() {
        let naming = Naming::new("runner-a");
        let id: InstanceId = "105-abcdef".parse().unwrap();
        let description = naming.description(&id);
        assert_eq!(naming.owner_of_description(&description), Some(id.clone()));
        assert_eq!(Naming::new("runner-b").owner_of_description(&description), None, "another group's VM");
        assert_eq!(naming.owner_of_description("a VM someone made by hand"), None);
        assert_eq!(naming.owner_of_description(""), None);
        let lease = Lease { v4: Some("127.0.1.5".parse().unwrap()), v6: None };
        let leased = naming.description_with_lease(&id, &lease);
        assert_eq!(naming.owner_of_description(&leased), Some(id.clone()), "the lease keeps the marker readable");
        assert_eq!(Naming::lease_of_description(&leased), lease);
        assert_eq!(Naming::lease_of_description("ip=10.0.0.1 by hand"), Lease::default(), "only a marker's");
    }

    #[test]
    fn tags_mark_the_group_and_token() {
        let naming = Naming::new("runner-a");
        let id: InstanceId = "105-abcdef".parse().unwrap();
        let tags = naming.tags(&id, &["CI".to_string()]);
        assert_eq!(tags, ["ci", "fi-abcdef", "fleeting", "fleeting-runner-a"]);
        assert_eq!(naming.owner_of_tags(Vmid(105), &tags), Some(id));
        assert_eq!(Naming::new("runner-b").owner_of_tags(Vmid(105), &tags), None);
        assert_eq!(naming.owner_of_tags(Vmid(105), &["fleeting-runner-a".to_string()]), None, "no token");
        for tag in &tags {
            assert!(crate::group::config::is_tag(tag), "{tag} must be a valid PVE tag");
        }
    }

    #[test]
    fn a_copy_marker_is_never_an_instance_and_names_its_own_vmid() {
        let naming = Naming::new("runner-a");
        let description = naming.copy_description(Vmid(9901), Vmid(9000), "pve2", "d:abc");
        let marker = naming.copy_of_description(&description).unwrap();
        assert_eq!(
            marker,
            CopyMarker { vmid: Vmid(9901), source: Vmid(9000), node: "pve2".into(), version: "d:abc".into() }
        );
        assert_eq!(naming.owner_of_description(&description), None, "a copy is no instance");
        assert_eq!(Naming::new("runner-b").copy_of_description(&description), None, "another group's copy");
        let instance = naming.description(&"105-abcdef".parse().unwrap());
        assert_eq!(naming.copy_of_description(&instance), None, "an instance is no copy");
    }
}
