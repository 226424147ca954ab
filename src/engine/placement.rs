//! Placement: attaching a process to a tenant (checked by `policy`, journaled, verified in
//! every hierarchy) and listing a tenant's processes.

use super::journal::{self, Step};
use super::policy::{Admitted, Policy};
use super::{EngineError, Governor, Result, blocking};
use crate::cgroup::CgroupPath;
use crate::domain::TenantName;
use crate::store::NewEvent;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Who asks for a move: an API caller (by hand), or a placement rule that matched the process
/// with this start time.
#[derive(Debug, Clone, Copy)]
enum By<'a> {
    Hand(&'a str),
    Rule(u64),
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct ProcInfo {
    #[schema(minimum = 1)]
    pub pid: u32,
    #[schema(required = true)]
    pub comm: Option<String>,
}

fn comm(proc_root: &Path, pid: u32) -> Option<String> {
    std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

impl Governor {
    /// The placement policy of this daemon.
    pub fn policy(&self) -> Policy {
        Policy {
            proc_root: self.cfg.proc_root.clone(),
            self_pid: self.self_pid,
            protected: self.cfg.protected_cgroups.clone(),
        }
    }

    /// Moves `pid` into the tenant's leaf: check, journal where it was, move, then confirm
    /// that the PID still names the process that was checked and that it is in the tenant in
    /// every hierarchy; when it is not, it is moved back where it was and the request fails.
    /// A tenant directory missing in some hierarchy is made again (with the tenant's values)
    /// before the process goes there.
    ///
    /// The race that remains: if the process exits and its PID is reused between the check and
    /// the write to cgroup.procs, the new holder of the PID is moved. The confirmation sees it
    /// (the start time differs or the PID is gone) and the request fails saying so, but the
    /// move is not undone. The kill re-check in `delete` still keeps PID 1 and the daemon
    /// from being killed if such a move ever put them in a tenant.
    pub async fn attach(&self, name: &TenantName, pid: u32, actor: &str) -> Result<()> {
        let start_time = self.attach_as(name, pid, By::Hand(actor)).await?;
        // Placed by hand: no placement rule moves it from now on.
        self.auto.placed_by_hand((pid, start_time));
        self.refresh_kernel(Some(vec![name.clone()])).await?;
        Ok(())
    }

    /// `attach` for the placer: the process must still be the one its rule matched (`pid`
    /// with `start_time`), no event per process (the placer summarises them), and the kernel
    /// values are read again by the caller, once per burst.
    pub async fn attach_by_rule(&self, name: &TenantName, pid: u32, start_time: u64) -> Result<()> {
        self.attach_as(name, pid, By::Rule(start_time))
            .await
            .map(|_| ())
    }

    /// The one placement path; returns the start time of the process moved.
    async fn attach_as(&self, name: &TenantName, pid: u32, by: By<'_>) -> Result<u64> {
        let _w = self.writes.lock().await;
        self.fresh_locked().await?;
        let (plan, dir) = self
            .read(|c| {
                let plan = c.state.plan(name).cloned()?;
                Some((plan, CgroupPath::tenant(&c.state.lineage(name))))
            })
            .await?
            .ok_or_else(|| EngineError::NotFound(name.to_string()))?;
        let leaf = dir.leaf();
        let policy = self.policy();
        let b = self.backend().clone();
        let l = leaf.clone();
        let expected = match by {
            By::Hand(_) => None,
            By::Rule(st) => Some(st),
        };
        let (admitted, from) = blocking(move || -> Result<(Admitted, Vec<PathBuf>)> {
            let admitted = policy.check(pid).map_err(|r| EngineError::BadPid {
                pid,
                message: r.to_string(),
            })?;
            if let Some(st) = expected
                && admitted.start_time != st
            {
                return Err(EngineError::BadPid {
                    pid,
                    message: format!(
                        "PID {pid} now names another process than the one its rule matched (it exited and the PID was reused)"
                    ),
                });
            }
            if !b.exists(&l) {
                b.ensure(&dir, true)?;
                b.apply(&dir, &plan.tenant)?;
                b.apply(&l, &plan.leaf)?;
            }
            let from = b
                .locate(&policy.proc_root, pid)
                .map_err(|e| gone_or(e, pid))?;
            Ok((admitted, from))
        })
        .await??;
        let step = Step::Attach {
            leaf: journal::text(&leaf),
            pid,
            start_time: admitted.start_time,
            from: from.clone(),
        };
        let id = self.store().add_intent(&step.intent(name)).await?;
        let (b, policy, tenant, f) = (
            self.backend().clone(),
            self.policy(),
            name.to_string(),
            from.clone(),
        );
        let l = leaf.clone();
        let moved = blocking(move || move_checked(b.as_ref(), &policy, &l, admitted, &f, &tenant))
            .await
            .and_then(|r| r);
        if let Err(e) = moved {
            self.forget(id).await;
            return Err(e);
        }
        let events: Vec<NewEvent> = match by {
            By::Hand(actor) => vec![NewEvent {
                ts_ms: super::now_ms(),
                tenant: Some(name.to_string()),
                actor: Some(actor.to_string()),
                event: crate::domain::event::Event::ProcessAttached { pid },
            }],
            By::Rule(_) => Vec::new(),
        };
        if let Err(e) = self.store().finish_intent(id, &events).await {
            // Not stored, so not done: back where it was (the record stays if the store still
            // cannot write; the next pass finds nothing split and drops it).
            let (b, proc_root) = (self.backend().clone(), self.proc_root().to_path_buf());
            let undo = blocking(move || {
                let now = b.locate(&proc_root, pid)?;
                b.place(pid, &now, &from)
            })
            .await;
            if !matches!(undo, Ok(Ok(()))) {
                tracing::warn!("PID {pid}: moving it back after a store failure failed: {undo:?}");
            }
            self.forget(id).await;
            return Err(e.into());
        }
        Ok(admitted.start_time)
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

/// A kernel error about `pid`: "no such process" when the process is gone.
fn gone_or(e: crate::cgroup::CgroupError, pid: u32) -> EngineError {
    if e.is_gone() {
        EngineError::BadPid {
            pid,
            message: format!("no process with PID {pid} exists (it may have exited)"),
        }
    } else {
        e.into()
    }
}

/// Moves the admitted process into `leaf` and checks it is there in every hierarchy; if it is
/// not (a write failed part-way, or did not hold), moves it back to `from` and fails.
fn move_checked(
    b: &dyn crate::cgroup::Backend,
    policy: &Policy,
    leaf: &crate::cgroup::CgroupPath,
    adm: Admitted,
    from: &[PathBuf],
    tenant: &str,
) -> Result<()> {
    let pid = adm.pid;
    // Checked again right before the write: the journal record was synced in between.
    if !policy.still_same(&adm) {
        return Err(EngineError::BadPid {
            pid,
            message: format!(
                "no process with PID {pid} exists any more, or the PID now names another process: nothing was moved"
            ),
        });
    }
    let wrote = b.attach(leaf, pid);
    if !policy.still_same(&adm) {
        return Err(EngineError::Conflict {
            field: "pid".into(),
            message: format!(
                "PID {pid} exited while it was being moved; if its ID was reused, the new process may now be in tenant '{tenant}': check GET /v1/tenants/{tenant}/procs"
            ),
        });
    }
    let now = b
        .locate(&policy.proc_root, pid)
        .map_err(|e| gone_or(e, pid))?;
    let want = b.dirs(leaf);
    if wrote.is_ok() && now == want {
        return Ok(());
    }
    if let Err(e) = &wrote
        && matches!(e.errno(), Some(libc::EACCES | libc::EPERM))
    {
        let back = match b.place(pid, &now, from) {
            Ok(()) => "it stays where it was".to_string(),
            Err(e) => format!("moving it back failed: {e}"),
        };
        return Err(EngineError::NotPermitted {
            field: "pid".into(),
            message: format!(
                "the kernel does not let tenantd move PID {pid} into tenant '{tenant}': {e}: {}; the writer needs write access to cgroup.procs of the common ancestor of the process's cgroup and the tenant's (cgroup-v2.rst, \"Delegation Containment\"); {back}",
                std::error::Error::source(e)
                    .map(|s| s.to_string())
                    .unwrap_or_default()
            ),
        });
    }
    let why = match &wrote {
        Err(e) => e.to_string(),
        Ok(()) => format!(
            "it is in {} of the {} hierarchies after the move",
            now.iter().zip(&want).filter(|(n, w)| n == w).count(),
            want.len()
        ),
    };
    let back = match b.place(pid, &now, from) {
        Ok(()) => "it was moved back where it was".to_string(),
        Err(e) => format!("moving it back failed too: {e}"),
    };
    Err(EngineError::Kernel {
        source: crate::cgroup::CgroupError::Write {
            path: b.path_of(leaf).join("cgroup.procs"),
            value: pid.to_string(),
            source: std::io::Error::other(format!(
                "PID {pid} could not be moved into tenant '{tenant}' in every hierarchy ({why}); {back}"
            )),
        },
    })
}
