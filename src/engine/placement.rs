//! Placement: attach a process to a tenant's leaf, list a tenant's processes. Refuses PIDs
//! that do not exist, kernel threads and the daemon itself, each with its reason.

use super::{EngineError, Governor, Result, blocking};
use crate::domain::TenantName;
use crate::store::NewEvent;
use serde::Serialize;
use std::path::Path;

/// PF_KTHREAD from include/linux/sched.h: the task is a kernel thread.
const PF_KTHREAD: u64 = 0x0020_0000;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    pub comm: Option<String>,
}

/// Why a PID cannot be placed, or None when it can. Reads /proc under `proc_root`.
pub fn check_pid(proc_root: &Path, pid: u32, self_pid: u32) -> Option<String> {
    if pid == 0 {
        return Some("0 is not a process ID".into());
    }
    if pid == self_pid {
        return Some(format!(
            "{pid} is tenantd itself, which stays in its own protected cgroup"
        ));
    }
    let stat = match std::fs::read_to_string(proc_root.join(pid.to_string()).join("stat")) {
        Ok(s) => s,
        Err(_) => return Some(format!("no process with PID {pid} exists")),
    };
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let flags: u64 = rest
        .split_ascii_whitespace()
        .nth(6)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    if flags & PF_KTHREAD != 0 {
        return Some(format!(
            "PID {pid} is a kernel thread, which cannot be moved between cgroups"
        ));
    }
    None
}

fn comm(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

impl Governor {
    /// Moves `pid` into the tenant's leaf.
    pub async fn attach(&self, name: &TenantName, pid: u32, actor: &str) -> Result<()> {
        let leaf = self.leaf_of(name).await?;
        let proc_root = self.proc_root().to_path_buf();
        let self_pid = self.self_pid();
        let b = self.backend().clone();
        blocking(move || {
            if let Some(why) = check_pid(&proc_root, pid, self_pid) {
                return Err(EngineError::BadPid { pid, message: why });
            }
            b.attach(&leaf, pid).map_err(|e| {
                if e.is_gone() {
                    EngineError::BadPid {
                        pid,
                        message: format!("no process with PID {pid} exists (it may have exited)"),
                    }
                } else {
                    e.into()
                }
            })
        })
        .await??;
        self.store()
            .add_events(&[NewEvent {
                ts_ms: super::now_ms(),
                tenant: Some(name.to_string()),
                kind: "process_attached".into(),
                actor: Some(actor.to_string()),
                detail: serde_json::json!({"pid": pid}),
            }])
            .await?;
        Ok(())
    }

    /// The processes in the tenant's leaf.
    pub async fn procs(&self, name: &TenantName) -> Result<Vec<ProcInfo>> {
        let leaf = self.leaf_of(name).await?;
        let b = self.backend().clone();
        let proc_root = self.proc_root().to_path_buf();
        blocking(move || {
            let pids = b.procs(&leaf)?;
            Ok(pids
                .into_iter()
                .map(|pid| ProcInfo {
                    pid,
                    comm: comm(&proc_root, pid),
                })
                .collect())
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_self_missing_and_kernel_threads() {
        let me = std::process::id();
        assert!(
            check_pid(Path::new("/proc"), me, me)
                .unwrap()
                .contains("tenantd itself")
        );
        assert!(check_pid(Path::new("/proc"), 0, me).is_some());
        assert!(
            check_pid(Path::new("/proc"), u32::MAX - 1, me)
                .unwrap()
                .contains("no process")
        );
        assert_eq!(check_pid(Path::new("/proc"), me, 1), None);
        // kthreadd is PID 2 on every Linux host with a normal PID namespace.
        if let Ok(s) = std::fs::read_to_string("/proc/2/comm")
            && s.trim() == "kthreadd"
        {
            assert!(
                check_pid(Path::new("/proc"), 2, me)
                    .unwrap()
                    .contains("kernel thread")
            );
        }
    }
}
