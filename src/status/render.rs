//! The status as an operator reads it: per configuration a header, the
//! table of VMs, the leaks with their fixes, and `check`'s problems.

use std::fmt::Write as _;

use super::{GroupStatus, InstanceRow, StatusReport};

impl StatusReport {
    pub fn render(&self) -> String {
        self.groups.iter().map(GroupStatus::render).collect::<Vec<_>>().join("\n")
    }
}

impl GroupStatus {
    pub fn render(&self) -> String {
        let mut out = format!("Status of {}", self.source);
        if let (Some(group), Some(pool), Some(template)) = (&self.group, &self.pool, self.template_id) {
            let _ = write!(out, ": group {group}, pool {pool}, template {template}");
        }
        out.push('\n');
        if let Some(error) = &self.error {
            let _ = writeln!(out, "  error: {error}");
        } else if self.instances.is_empty() {
            out.push_str("  no VMs in the pool or with the group's tag\n");
        } else {
            out.push_str(&table(&self.instances));
        }
        if self.error.is_none() {
            if self.leaked.is_empty() {
                out.push_str("Leaked or orphaned: none\n");
            } else {
                let _ = writeln!(out, "Leaked or orphaned ({}):", self.leaked.len());
                for leak in &self.leaked {
                    let _ =
                        writeln!(out, "  VMID {} on {}: {}: {}", leak.vmid, leak.node, leak.kind.label(), leak.detail);
                    let _ = writeln!(out, "        fix: {}", leak.fix);
                }
            }
        }
        if self.problems.is_empty() {
            out.push_str("Problems: none\n");
        } else {
            let _ = writeln!(out, "Problems ({}):", self.problems.len());
            for problem in &self.problems {
                let label = if problem.severity == "fail" { "FAIL" } else { "warn" };
                let _ = writeln!(out, "  {label}  {}: {}", problem.subject, problem.detail);
                if let Some(fix) = &problem.fix {
                    for (index, line) in fix.lines().enumerate() {
                        let lead = if index == 0 { "fix: " } else { "     " };
                        let _ = writeln!(out, "        {lead}{line}");
                    }
                }
            }
        }
        out
    }
}

const HEADINGS: [&str; 7] = ["INSTANCE", "VMID", "NODE", "STATE", "AGE", "ADDRESS", "VERDICT"];

/// Columns padded to their widest cell; notes on their own line below.
fn table(rows: &[InstanceRow]) -> String {
    let cells: Vec<[String; 7]> = rows.iter().map(cells).collect();
    let mut widths = HEADINGS.map(str::len);
    for row in &cells {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut text = String::from("  ");
        for (index, (cell, width)) in cells.iter().zip(widths).enumerate() {
            if index + 1 == cells.len() {
                text.push_str(cell);
            } else {
                let _ = write!(text, "{cell:<width$}  ");
            }
        }
        text.push('\n');
        text
    };
    let mut out = line(&HEADINGS.map(String::from));
    for (row, cells) in rows.iter().zip(&cells) {
        out.push_str(&line(cells));
        if let Some(note) = &row.note {
            let _ = writeln!(out, "      ({note})");
        }
    }
    out
}

fn cells(row: &InstanceRow) -> [String; 7] {
    let dash = || "-".to_string();
    let state = match row.phase {
        Some(phase) => format!("{} ({})", row.status, phase.label()),
        None => row.status.clone(),
    };
    [
        row.instance.clone().or_else(|| row.name.clone()).unwrap_or_else(dash),
        row.vmid.to_string(),
        row.node.clone(),
        state,
        row.age_seconds.map_or_else(dash, age),
        row.address.clone().unwrap_or_else(dash),
        row.verdict.label().to_string(),
    ]
}

/// `42s`, `5m`, `3h12m`, `2d3h`.
pub fn age(seconds: u64) -> String {
    match seconds {
        0..60 => format!("{seconds}s"),
        60..3600 => format!("{}m", seconds / 60),
        3600..86400 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{}h", seconds / 86400, seconds % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::age;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(42), "42s");
        assert_eq!(age(300), "5m");
        assert_eq!(age(3600 * 3 + 12 * 60), "3h12m");
        assert_eq!(age(86400 * 2 + 3 * 3600), "2d3h");
    }
}
