//! `fleeting-plugin-proxmox check`: a preflight run of a `plugin_config`
//! against the cluster it names. Every check prints one line (`ok`, `warn`,
//! `FAIL`, `skip`), each failure with its fix; the exit code is 0 only when
//! nothing failed (warnings do not fail).
//!
//! - [`input`]: the plugin_config JSON, or Runner's config.toml;
//! - [`probe`]: reachability and the server certificate's fingerprint;
//! - [`cluster`]: credentials, version, pool, storage, template, VMIDs;
//! - [`privileges`]: the one list of privileges the plugin needs;
//! - [`running`]: the running plugin's own state (held scale-up,
//!   quarantined VMIDs), read from `metrics_listen`.

pub mod cluster;
pub mod input;
pub mod ip_pool;
pub mod privileges;
pub mod probe;
pub mod running;

pub use input::Selection;

use std::fmt::Write as _;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pass,
    /// Works, but deserves attention; does not fail the run.
    Warn,
    Fail,
    /// Not run because an earlier check failed.
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "ok  ",
            Self::Warn => "warn",
            Self::Fail => "FAIL",
            Self::Skip => "skip",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub status: Status,
    /// What was checked, e.g. `template 9000`.
    pub subject: String,
    /// What was found.
    pub detail: String,
    /// How to fix it (failures and warnings).
    pub fix: Option<String>,
}

/// The findings for one `plugin_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// `plugin_config.json`, or `runner "name" in config.toml`.
    pub source: String,
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn new(source: impl Into<String>) -> Self {
        Self { source: source.into(), findings: Vec::new() }
    }

    pub fn pass(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.push(Status::Pass, subject, detail, None);
    }

    pub fn warn(&mut self, subject: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Warn, subject, detail, Some(fix.into()));
    }

    pub fn fail(&mut self, subject: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) {
        self.push(Status::Fail, subject, detail, Some(fix.into()));
    }

    pub fn skip(&mut self, subject: impl Into<String>, detail: impl Into<String>) {
        self.push(Status::Skip, subject, detail, None);
    }

    fn push(&mut self, status: Status, subject: impl Into<String>, detail: impl Into<String>, fix: Option<String>) {
        self.findings.push(Finding { status, subject: subject.into(), detail: detail.into(), fix });
    }

    pub fn passed(&self) -> bool {
        !self.findings.iter().any(|f| matches!(f.status, Status::Fail | Status::Skip))
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.status == Status::Fail)
    }

    /// The report as printed: a header, one line per check, fixes indented.
    pub fn render(&self) -> String {
        let mut out = format!("Checking {}\n", self.source);
        for finding in &self.findings {
            let _ = writeln!(out, "  {}  {}: {}", finding.status.label(), finding.subject, finding.detail);
            if let Some(fix) = &finding.fix {
                for (index, line) in fix.lines().enumerate() {
                    let lead = if index == 0 { "fix: " } else { "     " };
                    let _ = writeln!(out, "        {lead}{line}");
                }
            }
        }
        let count = |status| self.findings.iter().filter(|f| f.status == status).count();
        let (failed, warned, skipped) = (count(Status::Fail), count(Status::Warn), count(Status::Skip));
        let _ = writeln!(
            out,
            "{}: {} passed, {failed} failed, {warned} warning{}, {skipped} skipped",
            if self.passed() { "PASSED" } else { "FAILED" },
            count(Status::Pass),
            if warned == 1 { "" } else { "s" },
        );
        out
    }
}

/// Every report of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub reports: Vec<Report>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        !self.reports.is_empty() && self.reports.iter().all(Report::passed)
    }

    /// 0 when every check passed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        if self.passed() { 0 } else { 1 }
    }

    pub fn render(&self) -> String {
        self.reports.iter().map(Report::render).collect::<Vec<_>>().join("\n")
    }
}

/// Runs every check for every configuration the input holds.
pub async fn run(options: &Selection) -> Outcome {
    let targets = match options.load() {
        Ok(targets) => targets,
        Err(message) => {
            let mut report = Report::new(options.config.display().to_string());
            report.fail(
                "input",
                message,
                "pass a plugin_config JSON file or Runner's config.toml with --config (and --runner NAME to pick one runner)",
            );
            return Outcome { reports: vec![report] };
        }
    };
    let mut reports = Vec::new();
    for target in targets {
        reports.push(cluster::check_target(&target).await);
    }
    Outcome { reports }
}
