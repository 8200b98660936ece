//! Live progress of a session on stderr: on a terminal, an indicatif display
//! with a header (phase, counts, elapsed time) and one line per instance
//! (state, address, time in state); otherwise plain, timestamped lines that
//! read well in a CI log.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tracing_subscriber::prelude::*;

/// More instances than this get no line of their own on a terminal (the
/// header still counts them).
const MAX_ROWS: usize = 24;

/// Where a session reports what it is doing (stderr, or nowhere).
pub struct Progress {
    started: Instant,
    mode: Mode,
}

enum Mode {
    Live { multi: MultiProgress, header: ProgressBar, rows: BTreeMap<String, ProgressBar> },
    Lines,
    Quiet,
}

impl Progress {
    /// Live on a terminal, plain lines otherwise.
    pub fn for_stderr() -> Self {
        if std::io::stderr().is_terminal() { Self::live() } else { Self::lines() }
    }

    /// The indicatif display (for a terminal).
    pub fn live() -> Self {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        header.enable_steady_tick(Duration::from_millis(100));
        Self { started: Instant::now(), mode: Mode::Live { multi, header, rows: BTreeMap::new() } }
    }

    /// Plain timestamped lines (for logs and pipes).
    pub fn lines() -> Self {
        Self { started: Instant::now(), mode: Mode::Lines }
    }

    /// Nothing at all (library callers that render the summary themselves).
    pub fn quiet() -> Self {
        Self { started: Instant::now(), mode: Mode::Quiet }
    }

    fn stamp(&self) -> String {
        format!("[{:>7.2}s]", self.started.elapsed().as_secs_f64())
    }

    /// A new stage of the session (scaling up, steady state, …).
    pub fn phase(&mut self, text: &str) {
        let line = format!("{} {text}", self.stamp());
        match &self.mode {
            Mode::Live { multi, header, .. } => {
                let _ = multi.println(line);
                header.set_message(text.to_string());
            }
            Mode::Lines => eprintln!("{line}"),
            Mode::Quiet => {}
        }
    }

    /// The counts line under the phase (terminal only; lines mode prints
    /// state changes instead).
    pub fn counts(&mut self, phase: &str, counts: &str) {
        if let Mode::Live { header, .. } = &self.mode {
            header.set_message(format!("{phase}: {counts}"));
        }
    }

    /// An instance changed state (`detail`: its address, why it went, …).
    pub fn instance(&mut self, id: &str, state: &str, detail: &str) {
        let stamp = self.stamp();
        match &mut self.mode {
            Mode::Live { multi, rows, .. } => {
                let row = match rows.get(id) {
                    Some(row) => row.clone(),
                    None if rows.len() < MAX_ROWS => {
                        let row = multi.add(ProgressBar::new_spinner());
                        row.set_style(
                            ProgressStyle::with_template("  {spinner:.cyan} {prefix:<16} {msg} ({elapsed} in state)")
                                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                        );
                        row.set_prefix(id.to_string());
                        row.enable_steady_tick(Duration::from_millis(200));
                        rows.insert(id.to_string(), row.clone());
                        row
                    }
                    None => return,
                };
                if matches!(state, "deleted" | "gone") {
                    row.finish_with_message(format!("{state:<9} {detail}"));
                } else {
                    row.reset_elapsed();
                    row.set_message(format!("{state:<9} {detail}"));
                }
            }
            Mode::Lines => eprintln!("{stamp} {id:<16} {state:<9} {detail}"),
            Mode::Quiet => {}
        }
    }

    /// A line that stays (a failure handled, a warning).
    pub fn note(&mut self, text: &str) {
        let line = format!("{} {text}", self.stamp());
        match &self.mode {
            Mode::Live { multi, .. } => {
                let _ = multi.println(line);
            }
            Mode::Lines => eprintln!("{line}"),
            Mode::Quiet => {}
        }
    }

    /// Clears the live display (the summary follows on stdout).
    pub fn finish(&mut self) {
        if let Mode::Live { multi, header, rows } = &mut self.mode {
            for row in rows.values() {
                row.finish_and_clear();
            }
            header.finish_and_clear();
            let _ = multi.clear();
        }
    }

    /// Where log lines go without tearing the live display.
    fn multi(&self) -> Option<MultiProgress> {
        match &self.mode {
            Mode::Live { multi, .. } => Some(multi.clone()),
            _ => None,
        }
    }
}

/// Sends the plugin's own log lines (warnings by default; the filter comes
/// from `FLEETING_PLUGIN_PROXMOX_LOG`, e.g. `info` for one line per
/// instance state change, `debug` for every PVE request) to stderr,
/// above the live display when there is one.
pub fn install_logging(progress: &Progress) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::plugin::LOG_ENV)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let multi = progress.multi();
    let layer = tracing_subscriber::fmt::layer()
        .compact()
        .with_target(false)
        .with_ansi(multi.is_some())
        .with_writer(move || LogLine { multi: multi.clone(), buffer: Vec::new() });
    let _ = tracing_subscriber::registry().with(layer.with_filter(filter)).try_init();
}

/// One formatted log event, written out whole when dropped.
struct LogLine {
    multi: Option<MultiProgress>,
    buffer: Vec<u8>,
}

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buffer.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buffer);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        match &self.multi {
            Some(multi) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{text}"),
        }
    }
}
