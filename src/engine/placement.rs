//! Placement: attaching a process to a tenant (checked by `policy`, journaled, verified in
//! every hierarchy) and listing a tenant's processes.

use super::journal::{self, Step};
use super::policy::{Admitted, Policy};
use super::{EngineError, Governor, Result, blocking};
use crate::cgroup::CgroupPath;
use crate::domain::TenantName;
use crate::store::{NewEvent, NewIntent};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// Who asks for a move: an API caller (by hand), or a placement rule that matched the process
/// with this start time.
#[derive(Debug, Clone, Copy)]
enum By<'a> {
    Hand(&'a str),
    Rule(u64),
}

/// Where the kernel work of a placement (the checks, the writes to `cgroup.procs`) runs.
#[derive(Debug, Clone, Copy)]
enum Thread {
    /// On the blocking pool: the caller is an async worker (an API request).
    Pool,
    /// On the caller's own thread, which is never an async worker (the placer's event reader
    /// or rescan, which call through `Runtime::block_on`): a hand-off to the pool would add a
    /// wake-up of another thread to every batch, milliseconds when the host's CPUs are busy.
    Caller,
}

impl Thread {
    async fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        match self {
            Thread::Pool => blocking(f).await,
            Thread::Caller => Ok(f()),
        }
    }
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

    /// `attach` for the placer, for a batch of processes at once (`(tenant, PID, start
    /// time)`): each process must still be the one its rule matched (`PID` with that start
    /// time), no event per process (the placer summarises them), and the kernel values are
    /// read again by the caller, once per burst. One write lock for the whole batch; its
    /// records go to the move log (one write before the moves, one cut after them) on v1 and
    /// nowhere on v2 (`Journal`), never to the database. The checks and the moves run on the
    /// caller's thread (`Thread::Caller`): the placer calls through `Runtime::block_on`, never
    /// from an async worker. `Err`: the batch failed as a whole
    /// (the journal could not be written) and nothing was moved; otherwise one answer per
    /// process, in order.
    pub async fn attach_by_rule(
        &self,
        moves: &[(TenantName, u32, u64)],
    ) -> Result<Vec<Result<Attached>>> {
        let items: Vec<(&TenantName, u32, By<'_>)> = moves
            .iter()
            .map(|(t, pid, st)| (t, *pid, By::Rule(*st)))
            .collect();
        self.attach_batch(&items, Thread::Caller).await
    }

    /// The one placement path, for one process (an API call).
    async fn attach_as(&self, name: &TenantName, pid: u32, by: By<'_>) -> Result<u64> {
        let mut done = self.attach_batch(&[(name, pid, by)], Thread::Pool).await?;
        match done.pop() {
            Some(Ok(Attached::Moved { start_time })) => Ok(start_time),
            Some(Err(e)) => Err(e),
            other => Err(EngineError::Join(format!(
                "placement of PID {pid} answered {other:?}"
            ))),
        }
    }

    /// The one placement path: under the write lock, each process is checked (`policy`, and
    /// for a rule's move its start time and that it was not placed by hand meanwhile) and
    /// where it is in every hierarchy read; the batch's steps are journaled (moves by hand: in
    /// one database transaction; a rule's: see `Journal`), each process is moved and checked
    /// (`move_checked`), and the steps are removed (with the events of the moves by hand, in
    /// one transaction). When that last database write fails the moves are undone. A tenant directory missing in some hierarchy is made
    /// again (with the tenant's values) before the process goes there.
    async fn attach_batch(
        &self,
        items: &[(&TenantName, u32, By<'_>)],
        thread: Thread,
    ) -> Result<Vec<Result<Attached>>> {
        let _w = self.writes.lock().await;
        self.fresh_locked().await?;
        let mut out: Vec<Option<Result<Attached>>> = Vec::with_capacity(items.len());
        let mut prepare = Vec::new();
        {
            let g = self.desired.read().expect("desired lock");
            let c = g.as_ref().expect("loaded by fresh_locked");
            for (i, (name, pid, by)) in items.iter().enumerate() {
                let expected = match by {
                    By::Hand(_) => None,
                    By::Rule(st) => Some(*st),
                };
                if let Some(st) = expected
                    && self.auto.is_by_hand((*pid, st))
                {
                    out.push(Some(Ok(Attached::PlacedByHand)));
                    continue;
                }
                match c.state.plan(name) {
                    Some(plan) => {
                        let dir = CgroupPath::tenant(&c.state.lineage(name));
                        prepare.push((i, *pid, expected, dir, plan.clone()));
                        out.push(None);
                    }
                    None => out.push(Some(Err(EngineError::NotFound(name.to_string())))),
                }
            }
        }
        let policy = self.policy();
        let b = self.backend().clone();
        // Checked, and where each process is now: (index, admitted, leaf, from).
        let (checked, refused) = thread
            .run(move || {
                let tids = policy.daemon_tids();
                let mut made: Vec<CgroupPath> = Vec::new();
                let (mut checked, mut refused) = (Vec::new(), Vec::new());
                for (i, pid, expected, dir, plan) in prepare {
                    let leaf = dir.leaf();
                    let r = check_one(
                        b.as_ref(),
                        &policy,
                        &tids,
                        pid,
                        expected,
                        &dir,
                        &plan,
                        &mut made,
                    );
                    match r {
                        Ok((_, from)) if expected.is_some() && from == b.dirs(&leaf) => {
                            refused.push((i, Ok(Attached::AlreadyThere)));
                        }
                        Ok((admitted, from)) => checked.push((i, admitted, leaf, from)),
                        Err(e) => refused.push((i, Err(e))),
                    }
                }
                (checked, refused)
            })
            .await?;
        for (i, r) in refused {
            out[i] = Some(r);
        }
        if !checked.is_empty() {
            // A rule's move needs no record where it is one write (one hierarchy: v2), and
            // records to the move log where a crash could split it (v1); a move by hand
            // records to the database, with its event.
            let by_rule = items.iter().all(|(_, _, by)| matches!(by, By::Rule(_)));
            let b = self.backend().clone();
            let one_write = checked
                .iter()
                .all(|(_, _, leaf, _)| b.dirs(leaf).len() <= 1);
            let steps = || -> Vec<NewIntent> {
                checked
                    .iter()
                    .map(|(i, adm, leaf, from)| {
                        Step::Attach {
                            leaf: journal::text(leaf),
                            pid: adm.pid,
                            start_time: adm.start_time,
                            from: from.clone(),
                        }
                        .intent(items[*i].0)
                    })
                    .collect()
            };
            let journal = if by_rule && one_write {
                Journal::None
            } else if by_rule && self.record_moves(&steps()) {
                Journal::Moves
            } else {
                Journal::Store(self.store().add_intents(&steps()).await?)
            };
            let (b, policy) = (self.backend().clone(), self.policy());
            let tenants: Vec<String> = checked
                .iter()
                .map(|(i, ..)| items[*i].0.to_string())
                .collect();
            let (checked, moved) = thread
                .run(move || {
                    let moved: Vec<Result<()>> = checked
                        .iter()
                        .zip(&tenants)
                        .map(|((_, adm, leaf, from), t)| {
                            move_checked(b.as_ref(), &policy, leaf, *adm, from, t)
                        })
                        .collect();
                    (checked, moved)
                })
                .await?;
            let ids = match journal {
                Journal::Store(ids) => ids,
                Journal::Moves => {
                    self.moves_done();
                    Vec::new()
                }
                Journal::None => Vec::new(),
            };
            if ids.is_empty() {
                return Ok(answers(out, checked, moved));
            }
            let events: Vec<NewEvent> = checked
                .iter()
                .zip(&moved)
                .filter(|(_, m)| m.is_ok())
                .filter_map(|((i, adm, ..), _)| match items[*i].2 {
                    By::Hand(actor) => Some(NewEvent {
                        ts_ms: super::now_ms(),
                        tenant: Some(items[*i].0.to_string()),
                        actor: Some(actor.to_string()),
                        event: crate::domain::event::Event::ProcessAttached { pid: adm.pid },
                    }),
                    By::Rule(_) => None,
                })
                .collect();
            // The steps of failed moves (undone by `move_checked`) go with the rest.
            if let Err(e) = self.store().finish_intents(&ids, &events).await {
                // Not stored, so not done: back where they were (the records stay if the store
                // still cannot write; the next pass finds nothing split and drops them).
                let back: Vec<(u32, Vec<PathBuf>)> = checked
                    .iter()
                    .zip(&moved)
                    .filter(|(_, m)| m.is_ok())
                    .map(|((_, adm, _, from), _)| (adm.pid, from.clone()))
                    .collect();
                let (b, proc_root) = (self.backend().clone(), self.proc_root().to_path_buf());
                let undo = blocking(move || {
                    for (pid, from) in back {
                        let r = b
                            .locate(&proc_root, pid)
                            .and_then(|now| b.place(pid, &now, &from));
                        if let Err(e) = r {
                            tracing::warn!(
                                "PID {pid}: moving it back after a store failure failed: {e}"
                            );
                        }
                    }
                })
                .await;
                if let Err(e) = undo {
                    tracing::warn!("moving processes back after a store failure failed: {e}");
                }
                for id in ids {
                    self.forget(id).await;
                }
                return Err(e.into());
            }
            return Ok(answers(out, checked, moved));
        }
        Ok(answers(out, Vec::new(), Vec::new()))
    }

    /// Records a batch of rules' moves to the move log (opened at its first use); false when
    /// it cannot be written (the caller records to the database instead).
    fn record_moves(&self, steps: &[NewIntent]) -> bool {
        let mut g = self.auto.moves.lock().expect("moves lock");
        let r = match g.as_mut() {
            Some(log) => log.record(steps),
            None => crate::store::MoveLog::open(&self.store().move_log_path()).and_then(|mut l| {
                let r = l.record(steps);
                *g = Some(l);
                r
            }),
        };
        match r {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(
                    "the move log {} cannot be written ({e}): the rules' moves are recorded in the database",
                    self.store().move_log_path().display()
                );
                false
            }
        }
    }

    /// The batch recorded by `record_moves` is over (each move whole or undone).
    fn moves_done(&self) {
        let mut g = self.auto.moves.lock().expect("moves lock");
        if let Some(log) = g.as_mut()
            && let Err(e) = log.clear()
        {
            // Kept: the next batch cuts it off first, and a restart finds the moves whole.
            tracing::warn!(
                "the move log {} cannot be cut off: {e}",
                log.path().display()
            );
        }
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

/// Where a batch's moves are recorded before they start.
enum Journal {
    /// In the database (moves by hand): the records' ids.
    Store(Vec<i64>),
    /// In the move log (rules' moves that a crash could split across v1 hierarchies).
    Moves,
    /// Nowhere: each move is one write (one hierarchy), whole or not done.
    None,
}

/// Each item's answer: those answered before the moves (`out`), then each move's.
fn answers(
    mut out: Vec<Option<Result<Attached>>>,
    checked: Vec<(usize, Admitted, CgroupPath, Vec<PathBuf>)>,
    moved: Vec<Result<()>>,
) -> Vec<Result<Attached>> {
    for ((i, adm, ..), m) in checked.into_iter().zip(moved) {
        out[i] = Some(m.map(|()| Attached::Moved {
            start_time: adm.start_time,
        }));
    }
    out.into_iter()
        .map(|r| r.expect("every item answered"))
        .collect()
}

/// What a placement of a batch did with one process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// Moved into the tenant (the process's start time).
    Moved { start_time: u64 },
    /// A rule's move of a process already in the tenant's leaf in every hierarchy: nothing
    /// was written.
    AlreadyThere,
    /// A rule's move of a process placed by hand since the rule matched it: left where it is.
    PlacedByHand,
}

/// The checks of one process of a batch before its step is journaled: the policy (with the
/// daemon's threads read once for the batch), for a rule's move that its PID still names
/// the process the rule matched (`expected` start time), the tenant's directories made again
/// if missing (looked at once per batch: `made` lists those known to exist), and where the process is now in every hierarchy.
#[allow(clippy::too_many_arguments)]
fn check_one(
    b: &dyn crate::cgroup::Backend,
    policy: &Policy,
    tids: &[u32],
    pid: u32,
    expected: Option<u64>,
    dir: &CgroupPath,
    plan: &crate::domain::plan::TenantPlan,
    made: &mut Vec<CgroupPath>,
) -> Result<(Admitted, Vec<PathBuf>)> {
    let admitted = policy
        .check_with(pid, tids)
        .map_err(|r| EngineError::BadPid {
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
    let leaf = dir.leaf();
    if !made.contains(dir) {
        if !b.exists(&leaf) {
            b.ensure(dir, true)?;
            b.apply(dir, &plan.tenant)?;
            b.apply(&leaf, &plan.leaf)?;
        }
        made.push(dir.clone());
    }
    let from = b
        .locate(&policy.proc_root, pid)
        .map_err(|e| gone_or(e, pid))?;
    Ok((admitted, from))
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
