//! `fleeting-plugin-proxmox status`: the instance group as Proxmox shows it
//! right now, read-only. One row per VM of the group or of its pool with a
//! verdict on whose it is, the resources the group leaked (each with its
//! fix), and the problems `check` finds.
//!
//! Invariant: it only reads. Every request it makes is a GET (the login of
//! a password user, a POST of credentials, aside); nothing here may change
//! a VM, a volume or a tag, so it is safe beside a running plugin.
//!
//! - [`survey`]: the listing, each VM's config and agent, and the verdicts;
//! - [`render`]: the table an operator reads.

pub mod render;
pub mod survey;

use serde::Serialize;

use crate::check::cluster::inspect_target;
use crate::check::{Finding, Selection, Status, input};

/// Everything one run shows: one entry per configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub groups: Vec<GroupStatus>,
}

impl StatusReport {
    /// Whether every configuration's cluster could be read (problems aside).
    pub fn read_everything(&self) -> bool {
        !self.groups.is_empty() && self.groups.iter().all(|group| group.error.is_none())
    }

    /// 0 when every cluster could be read, even with problems; 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.read_everything() { 0 } else { 1 }
    }

    /// The report as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::to_string_pretty(self).unwrap_or_else(|err| {
            serde_json::json!({ "error": format!("could not write the status as JSON: {err}") }).to_string()
        });
        json.push('\n');
        json
    }
}

/// One configuration's group as Proxmox shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// `plugin_config.json`, or `runner "name" in config.toml`.
    pub source: String,
    /// The group's name, pool and template, once the config was valid.
    pub group: Option<String>,
    pub pool: Option<String>,
    pub template_id: Option<u32>,
    /// Why the cluster could not be read; `None` when it was.
    pub error: Option<String>,
    /// Sorted by VMID.
    pub instances: Vec<InstanceRow>,
    pub leaked: Vec<Leak>,
    /// The warnings and failures `check` reports for this config.
    pub problems: Vec<Problem>,
}

/// One VM of the group or of its pool.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceRow {
    /// The instance id its tags or its marker name, if any.
    pub instance: Option<String>,
    /// Its name in PVE.
    pub name: Option<String>,
    pub vmid: u32,
    pub node: String,
    /// PVE's status: `running`, `stopped`, `paused`, `unknown`.
    pub status: String,
    /// The group's phase, read from its name and tags.
    pub phase: Option<Phase>,
    pub pool: Option<String>,
    /// Seconds since it started (running), or since it was created when its
    /// config says (`meta: ctime`).
    pub age_seconds: Option<u64>,
    /// What its guest agent reports, chosen as the plugin chooses; with a
    /// static pool, the lease in its tags.
    pub address: Option<String>,
    pub verdict: Verdict,
    /// Why the verdict, when it is not plain.
    pub note: Option<String>,
}

/// The group's phase of a VM, as its name (and per-state tags) say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Creating,
    Running,
    Removing,
    Template,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Self::Creating => "creating",
            Self::Running => "running",
            Self::Removing => "removing",
            Self::Template => "template",
        }
    }
}

/// Whose a VM is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The group's tag and its description marker name the same instance.
    Ours,
    /// Carries the group's tag, but its marker is missing or names another
    /// instance (a copy): the plugin ignores it.
    Impostor,
    /// In the pool, neither the group's nor the seed plugin's.
    Foreign,
    /// What the seed plugin (LukasK32) left under this config's names: the
    /// takeover deletes or adopts it.
    SeedLeftover,
    /// The template (in the pool).
    Template,
    /// Its config could not be read.
    Unknown,
}

impl Verdict {
    pub fn label(self) -> &'static str {
        match self {
            Self::Ours => "ours",
            Self::Impostor => "impostor",
            Self::Foreign => "foreign",
            Self::SeedLeftover => "seed leftover",
            Self::Template => "template",
            Self::Unknown => "unknown",
        }
    }
}

/// A resource the group leaked or left behind, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leak {
    pub kind: LeakKind,
    pub vmid: u32,
    pub node: String,
    pub detail: String,
    pub fix: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakKind {
    /// Disk images of a VMID without a VM config.
    OrphanedVolumes,
    /// A VM of the group outside its pool: the plugin never sees it.
    OutsidePool,
    /// A VM with the group's marker but without its instance tags: the
    /// plugin's listing misses it.
    Untagged,
    /// A VM the seed plugin left.
    SeedLeftover,
}

impl LeakKind {
    pub fn label(self) -> &'static str {
        match self {
            Self::OrphanedVolumes => "orphaned volumes",
            Self::OutsidePool => "outside the pool",
            Self::Untagged => "untagged",
            Self::SeedLeftover => "seed leftover",
        }
    }
}

/// A warning or failure of `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// `warn` or `fail`.
    pub severity: &'static str,
    pub subject: String,
    pub detail: String,
    pub fix: Option<String>,
}

impl Problem {
    fn from_finding(finding: &Finding) -> Option<Self> {
        let severity = match finding.status {
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Pass | Status::Skip => return None,
        };
        Some(Self {
            severity,
            subject: finding.subject.clone(),
            detail: finding.detail.clone(),
            fix: finding.fix.clone(),
        })
    }
}

/// Reads every configuration's group. Never changes anything in Proxmox.
pub async fn run(options: &Selection) -> StatusReport {
    let targets = match options.load() {
        Ok(targets) => targets,
        Err(message) => {
            return StatusReport {
                groups: vec![GroupStatus {
                    source: options.config.display().to_string(),
                    group: None,
                    pool: None,
                    template_id: None,
                    error: Some(format!(
                        "{message}; pass a plugin_config JSON file or Runner's config.toml with --config (and --runner NAME to pick one runner)"
                    )),
                    instances: Vec::new(),
                    leaked: Vec::new(),
                    problems: Vec::new(),
                }],
            };
        }
    };
    let mut groups = Vec::new();
    for target in &targets {
        groups.push(status_of(target).await);
    }
    StatusReport { groups }
}

async fn status_of(target: &input::Target) -> GroupStatus {
    let inspection = inspect_target(target).await;
    let problems = inspection.report.findings.iter().filter_map(Problem::from_finding).collect();
    let mut status = GroupStatus {
        source: target.label.clone(),
        group: None,
        pool: None,
        template_id: None,
        error: None,
        instances: Vec::new(),
        leaked: Vec::new(),
        problems,
    };
    let Some((config, pve)) = inspection.connection else {
        status.error = Some("could not read the cluster: see the problems".to_string());
        return status;
    };
    status.group = Some(config.group.clone());
    status.pool = Some(config.pool.clone());
    status.template_id = Some(config.template_id.0);
    let generates_key = !target.runner_brings_credentials;
    match survey::survey(&pve, &config, generates_key).await {
        Ok(survey) => {
            status.instances = survey.rows;
            status.leaked = survey.leaks;
        }
        Err(err) => {
            status.error = Some(err.to_string());
            return status;
        }
    }
    status.leaked.splice(0..0, inspection.orphaned_volumes.iter().map(survey::orphan_leak));
    status
}
