//! Worker tasks: UPIDs, status (`running` → `stopped` with an exit
//! status), and the task log.
//!
//! Like pvedaemon's `fork_worker`, a long operation is checked in the
//! request, then continues in a worker whose result is the task's exit
//! status: `OK`, or the error text (the log ends with `TASK OK` or
//! `TASK ERROR: <text>`).

use std::collections::HashMap;

use tokio::sync::watch;

use super::clock::SimTime;
use super::upid::Upid;

#[derive(Debug)]
pub struct Task {
    pub upid: Upid,
    pub text: String,
    pub started: SimTime,
    pub ended: Option<SimTime>,
    pub exit_status: Option<String>,
    pub log: Vec<String>,
    /// The VMID the task creates (a clone's new VM): bookkeeping for the
    /// admin view, since PVE's UPID names only the source.
    pub creates: Option<u32>,
    /// The request that started it was carried out but its answer never
    /// reached the client, which so never learnt the UPID.
    pub answer_lost: bool,
    warnings: u32,
    /// `DELETE /nodes/{node}/tasks/{upid}` stops the worker through this.
    stop: watch::Sender<bool>,
}

impl Task {
    pub fn is_running(&self) -> bool {
        self.ended.is_none()
    }

    /// PVE's `status_is_error`: anything but `OK` and `WARNINGS: n`.
    pub fn failed(&self) -> bool {
        self.exit_status.as_deref().is_some_and(|s| s != "OK" && !s.starts_with("WARNINGS"))
    }
}

#[derive(Debug, Default)]
pub struct Tasks {
    by_upid: HashMap<String, Task>,
    /// UPIDs in start order (task lists show the newest first).
    order: Vec<String>,
    next_pid: u32,
}

impl Tasks {
    pub fn new(first_pid: u32) -> Self {
        Self { by_upid: HashMap::new(), order: Vec::new(), next_pid: first_pid }
    }

    /// Registers a running task; the receiver tells its worker to stop.
    pub fn start(
        &mut self,
        node: &str,
        task_type: &str,
        id: &str,
        user: &str,
        now: SimTime,
        node_boot: SimTime,
    ) -> (String, watch::Receiver<bool>) {
        self.next_pid = self.next_pid.wrapping_add(1 + self.order.len() as u32 % 7);
        let pid = self.next_pid % 4_000_000 + 1000;
        // pstart: the worker's start in clock ticks (100 Hz) since the node booted.
        let pstart = ((now - node_boot).max(0.0) * 100.0) as u64;
        let upid = Upid {
            node: node.to_string(),
            pid,
            pstart,
            starttime: now as u32,
            task_type: task_type.to_string(),
            id: id.to_string(),
            user: user.to_string(),
        };
        let text = upid.to_string();
        let (stop, stopped) = watch::channel(false);
        self.by_upid.insert(
            text.clone(),
            Task {
                upid,
                text: text.clone(),
                started: now,
                ended: None,
                exit_status: None,
                log: Vec::new(),
                creates: None,
                answer_lost: false,
                warnings: 0,
                stop,
            },
        );
        self.order.push(text.clone());
        (text, stopped)
    }

    pub fn get(&self, upid: &str) -> Option<&Task> {
        self.by_upid.get(upid)
    }

    /// Records that the task creates VM `vmid`.
    pub fn set_creates(&mut self, upid: &str, vmid: u32) {
        if let Some(task) = self.by_upid.get_mut(upid) {
            task.creates = Some(vmid);
        }
    }

    /// Records that the client never got the answer naming this task.
    pub fn set_answer_lost(&mut self, upid: &str) {
        if let Some(task) = self.by_upid.get_mut(upid) {
            task.answer_lost = true;
        }
    }

    pub fn log(&mut self, upid: &str, line: impl Into<String>) {
        if let Some(task) = self.by_upid.get_mut(upid) {
            task.log.push(line.into());
        }
    }

    /// Logs a warning (`WARN: …`); the task then ends with `WARNINGS: n`.
    pub fn warn(&mut self, upid: &str, line: impl Into<String>) {
        if let Some(task) = self.by_upid.get_mut(upid) {
            task.log.push(format!("WARN: {}", line.into()));
            task.warnings += 1;
        }
    }

    /// Ends a task with `OK` (`WARNINGS: n` after warnings) or the error
    /// text, as its last log line says.
    pub fn finish(&mut self, upid: &str, result: Result<(), String>, now: SimTime) {
        let Some(task) = self.by_upid.get_mut(upid) else { return };
        if task.ended.is_some() {
            return;
        }
        let exit_status = match result {
            Ok(()) if task.warnings > 0 => {
                task.log.push(format!("TASK WARNINGS: {}", task.warnings));
                format!("WARNINGS: {}", task.warnings)
            }
            Ok(()) => {
                task.log.push("TASK OK".into());
                "OK".to_string()
            }
            Err(message) => {
                let message = message.trim_end().to_string();
                task.log.push(format!("TASK ERROR: {message}"));
                message
            }
        };
        task.exit_status = Some(exit_status);
        task.ended = Some(now);
    }

    /// Asks a running worker to stop; false when the task already ended.
    pub fn request_stop(&self, upid: &str) -> bool {
        match self.by_upid.get(upid) {
            Some(task) if task.is_running() => task.stop.send(true).is_ok(),
            _ => false,
        }
    }

    /// All tasks, newest first.
    pub fn newest_first(&self) -> impl Iterator<Item = &Task> {
        self.order.iter().rev().filter_map(|upid| self.by_upid.get(upid))
    }

    pub fn running(&self) -> usize {
        self.by_upid.values().filter(|t| t.is_running()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_have_pve_upids_and_exit_statuses() {
        let mut tasks = Tasks::new(5000);
        let (upid, _stop) = tasks.start("pve1", "qmclone", "9000", "fleeting@pve!ci", 1_700_000_000.0, 1_699_990_000.0);
        let parsed = Upid::decode(&upid).unwrap();
        assert_eq!((parsed.node.as_str(), parsed.task_type.as_str(), parsed.id.as_str()), ("pve1", "qmclone", "9000"));
        assert_eq!(parsed.user, "fleeting@pve!ci");
        assert_eq!(parsed.starttime, 1_700_000_000);
        assert!(tasks.get(&upid).unwrap().is_running());
        tasks.log(&upid, "create linked clone of drive scsi0");
        tasks.finish(&upid, Err("clone failed: no space left\n".into()), 1_700_000_002.0);
        let task = tasks.get(&upid).unwrap();
        assert_eq!(task.exit_status.as_deref(), Some("clone failed: no space left"));
        assert_eq!(task.log.last().unwrap(), "TASK ERROR: clone failed: no space left");
        assert!(task.failed());
        tasks.finish(&upid, Ok(()), 1_700_000_003.0);
        assert!(tasks.get(&upid).unwrap().failed(), "a finished task stays finished");
        assert!(!tasks.request_stop(&upid));
        let (second, _stop) = tasks.start("pve1", "qmshutdown", "105", "root@pam", 1_700_000_010.0, 1_699_990_000.0);
        tasks.warn(&second, "VM quit/powerdown failed - terminating now with SIGTERM");
        tasks.finish(&second, Ok(()), 1_700_000_011.0);
        let task = tasks.get(&second).unwrap();
        assert_eq!(task.exit_status.as_deref(), Some("WARNINGS: 1"));
        assert!(!task.failed(), "warnings are success");
        assert_eq!(tasks.newest_first().next().unwrap().text, second);
    }
}
