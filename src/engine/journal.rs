//! The intent journal (issue 13): each kernel step a crash could leave half-done is recorded in
//! the store before it starts, and what a crash left behind is finished or undone by the next
//! reconcile pass (the first runs at start, before the API serves).
//!
//! - Create: a new tenant's directories are recorded before `mkdir`; the commit of the tenant
//!   removes the record in the same transaction. Left over, the tenant was never committed:
//!   its directories (empty: no one can attach to an uncommitted tenant) are removed.
//! - Delete: the record is written in the transaction that deletes the tenant, before any
//!   kill, move or `rmdir`. Left over, the delete was committed: it is finished.
//! - Attach: recorded with where the process was in every hierarchy before it is moved.
//!   Left over, the move may be split across v1 hierarchies: it is moved back where it was.
//!   A placement rule's move is recorded in the move log instead (`store::MoveLog`: a file of
//!   its own, no sync, no database lock), and only where a crash could split it (v1: one write
//!   per hierarchy); on v2 it is one write of `cgroup.procs`, whole or not done, and needs no
//!   record. What the move log keeps is recovered here like an attach record.
//!
//! Directories no record names are still only reported, never removed.

use super::policy::{Admitted, Policy, Refusal};
use super::{EngineError, Governor, Result, blocking, now_ms};
use crate::cgroup::{Backend, CgroupError, CgroupPath};
use crate::domain::event::Event;
use crate::domain::tenant::{TenantName, TenantSpec};
use crate::store::{Intent, NewEvent, NewIntent};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// One recorded step. Paths are relative to the governor root ("a/b", "a/b/_procs").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    Create {
        dir: String,
    },
    Delete {
        dir: String,
        empty: Emptying,
    },
    Attach {
        leaf: String,
        pid: u32,
        start_time: u64,
        /// Where the process was, one directory per hierarchy (`Backend::locate`).
        from: Vec<PathBuf>,
    },
}

/// What a delete does with the tenant's live processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Emptying {
    /// None may be there: the delete is refused while any lives.
    Refuse,
    Kill,
    /// Moved to this leaf (relative path).
    MoveTo(String),
}

pub fn text(p: &CgroupPath) -> String {
    p.segments().join("/")
}

fn path(s: &str) -> std::result::Result<CgroupPath, CgroupError> {
    CgroupPath::parse(s)
}

impl Step {
    pub fn intent(&self, tenant: &TenantName) -> NewIntent {
        NewIntent {
            ts_ms: now_ms(),
            tenant: tenant.to_string(),
            body: serde_json::to_value(self).expect("a step always serializes"),
        }
    }
}

/// What recovering one record came to: the events to record with its removal, or why it
/// stays (tried again on the next pass).
pub enum Outcome {
    Done(Vec<NewEvent>),
    Stays(String),
}

fn event(tenant: &str, event: Event) -> NewEvent {
    NewEvent {
        ts_ms: now_ms(),
        tenant: Some(tenant.to_string()),
        actor: Some("recovery".into()),
        event,
    }
}

/// Finishes or undoes one record left by a change that did not end (kernel work only; the
/// caller removes the record when this says `Done`).
pub fn recover(
    b: &dyn Backend,
    policy: &Policy,
    specs: &BTreeMap<TenantName, TenantSpec>,
    intent: &Intent,
) -> Outcome {
    let step: Step = match serde_json::from_value(intent.body.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("journal record {} is unreadable ({e}); dropped", intent.id);
            return Outcome::Done(Vec::new());
        }
    };
    let t = intent.tenant.as_str();
    let committed = TenantName::parse(t).is_ok_and(|n| specs.contains_key(&n));
    let r = match &step {
        // The record goes with the commit, so the tenant was never stored (or a tenant of the
        // same name was created since and owns the directory).
        Step::Create { .. } | Step::Delete { .. } if committed => Ok(Vec::new()),
        Step::Create { dir } => undo_create(b, t, dir),
        Step::Delete { dir, empty } => path(dir)
            .map_err(EngineError::from)
            .and_then(|d| empty_and_remove(b, policy, &d, empty, t))
            .map(|moved| {
                vec![event(
                    t,
                    Event::DeleteFinished {
                        moved_pids: moved,
                        journal: intent.id,
                    },
                )]
            }),
        Step::Attach {
            leaf,
            pid,
            start_time,
            from,
        } => undo_attach(b, policy, t, leaf, *pid, *start_time, from),
    };
    match r {
        Ok(events) => Outcome::Done(events),
        Err(e) => Outcome::Stays(format!(
            "journal record {} ({t}, {:?}): {e}",
            intent.id,
            intent
                .body
                .get("step")
                .and_then(|s| s.as_str())
                .unwrap_or("?")
        )),
    }
}

impl Governor {
    /// Recovers what the move log kept (a batch of rules' moves the daemon stopped in the
    /// middle of) like attach records, stores the events of the moves undone, and keeps the
    /// records that stay (with why) for the next pass.
    pub(super) async fn recover_moves(&self) -> Result<Vec<String>> {
        let path = self.store().move_log_path();
        let left = {
            let mut g = self.auto.moves.lock().expect("moves lock");
            if g.is_none() && !path.exists() {
                return Ok(Vec::new());
            }
            if g.is_none() {
                *g =
                    Some(crate::store::MoveLog::open(&path).map_err(|e| move_log_error(&path, e))?);
            }
            let log = g.as_ref().expect("opened above");
            log.left().map_err(|e| move_log_error(&path, e))?
        };
        if left.is_empty() {
            return Ok(Vec::new());
        }
        let sp = self.specs().await?;
        let (b, policy) = (self.backend().clone(), self.policy());
        let (events, stay, why) = blocking(move || {
            let (mut events, mut stay, mut why) = (Vec::new(), Vec::new(), Vec::new());
            for i in left {
                match recover(b.as_ref(), &policy, &sp, &i) {
                    Outcome::Done(e) => {
                        tracing::info!(
                            "move log record {} ({}): finished or undone after a crash",
                            i.id,
                            i.tenant
                        );
                        events.extend(e);
                    }
                    Outcome::Stays(w) => {
                        why.push(w);
                        stay.push(i);
                    }
                }
            }
            (events, stay, why)
        })
        .await?;
        if !events.is_empty() {
            self.store().add_events(&events).await?;
        }
        let mut g = self.auto.moves.lock().expect("moves lock");
        if let Some(log) = g.as_mut() {
            log.keep(&stay).map_err(|e| move_log_error(&path, e))?;
        }
        Ok(why)
    }
}

fn move_log_error(path: &std::path::Path, e: std::io::Error) -> EngineError {
    EngineError::Join(format!("the move log {}: {e}", path.display()))
}

fn undo_create(b: &dyn Backend, t: &str, dir: &str) -> Result<Vec<NewEvent>> {
    let d = path(dir)?;
    if !b.present(&d) {
        return Ok(Vec::new());
    }
    let pids = b.subtree_procs(&d)?;
    if !pids.is_empty() {
        return Err(EngineError::Conflict {
            field: "name".into(),
            message: format!(
                "{} holds processes {pids:?} that tenantd did not put there; left in place",
                b.path_of(&d).display()
            ),
        });
    }
    b.remove(&d)?;
    Ok(vec![event(
        t,
        Event::CgroupRemoved {
            path: b.path_of(&d),
            why: "created for a tenant that was never committed (crash)".into(),
        },
    )])
}

fn undo_attach(
    b: &dyn Backend,
    policy: &Policy,
    t: &str,
    leaf: &str,
    pid: u32,
    start_time: u64,
    from: &[PathBuf],
) -> Result<Vec<NewEvent>> {
    let leaf = path(leaf)?;
    if !policy.still_same(&Admitted { pid, start_time }) {
        return Ok(Vec::new());
    }
    let now = match b.locate(&policy.proc_root, pid) {
        Ok(n) => n,
        Err(e) if e.is_gone() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let want = b.dirs(&leaf);
    if now == from || now == want {
        // Not moved at all, or moved everywhere (the answer never reached the client, but the
        // change is whole either way).
        return Ok(Vec::new());
    }
    b.place(pid, &now, from)?;
    if !policy.still_same(&Admitted { pid, start_time }) {
        return Ok(Vec::new());
    }
    let back = b.locate(&policy.proc_root, pid)?;
    if back != from {
        return Err(EngineError::Conflict {
            field: "pid".into(),
            message: format!("PID {pid} is still split across hierarchies: {back:?}"),
        });
    }
    Ok(vec![event(
        t,
        Event::AttachUndone {
            pid,
            why: "moved in some hierarchies only when the daemon stopped".into(),
        },
    )])
}

fn refused(tenant: &str, field: &str, what: &str, r: Refusal) -> EngineError {
    EngineError::Conflict {
        field: field.into(),
        message: format!(
            "{r}; it is among the processes of tenant '{tenant}', so {what} and the tenant is kept"
        ),
    }
}

/// Whether a delete of `dir` may go ahead as `empty` says: no live process when it refuses
/// them, and neither PID 1 nor the daemon (nor a thread of it) among those it would kill or
/// move (the whole subtree is checked). Returns the subtree's processes.
pub fn precheck(
    b: &dyn Backend,
    policy: &Policy,
    dir: &CgroupPath,
    empty: &Emptying,
    tenant: &str,
) -> Result<Vec<u32>> {
    let pids = b.subtree_procs(dir)?;
    if pids.is_empty() {
        return Ok(pids);
    }
    match empty {
        Emptying::Kill => {
            if let Some(r) = policy.kill_check(&pids) {
                let what = "the kill was not done (nothing was killed)";
                return Err(refused(tenant, "kill", what, r));
            }
        }
        Emptying::MoveTo(_) => {
            if let Some(r) = policy.move_check(&pids) {
                let what = "the move was not done (nothing was moved)";
                return Err(refused(tenant, "move_to", what, r));
            }
        }
        Emptying::Refuse => {
            return Err(EngineError::Conflict {
                field: "name".into(),
                message: format!(
                    "{} processes still live in this tenant: pass kill=true to kill them or move_to=TENANT to move them",
                    pids.len()
                ),
            });
        }
    }
    Ok(pids)
}

/// Kills or moves the processes of `dir` and below as `empty` says (after `precheck`, again),
/// then removes its directories in every hierarchy, and checks that no process and no
/// directory is left in any. Returns the PIDs moved.
pub fn empty_and_remove(
    b: &dyn Backend,
    policy: &Policy,
    dir: &CgroupPath,
    empty: &Emptying,
    tenant: &str,
) -> Result<Vec<u32>> {
    let mut moved = Vec::new();
    if !b.present(dir) {
        return Ok(moved);
    }
    if !precheck(b, policy, dir, empty, tenant)?.is_empty() {
        match empty {
            // The remaining race: a process moved in by someone else between the check and
            // the kill (cgroup.kill, or v1's SIGKILL loop) is killed too.
            Emptying::Kill => b.kill(dir).map_err(|e| kill_refused(tenant, e))?,
            Emptying::MoveTo(to) => move_all(b, policy, dir, &path(to)?, &mut moved)
                .map_err(|(what, r)| refused(tenant, "move_to", &what, r))??,
            Emptying::Refuse => unreachable!("precheck refuses a populated tenant"),
        }
    }
    b.remove(dir)?;
    let left = b.subtree_procs(dir)?;
    if b.present(dir) || !left.is_empty() {
        return Err(EngineError::Kernel {
            source: CgroupError::Dir {
                op: "remove in every hierarchy",
                path: b.path_of(dir),
                source: std::io::Error::other(format!(
                    "still present after removal (processes {left:?})"
                )),
            },
        });
    }
    Ok(moved)
}

/// A kill the kernel did not permit (EPERM: another user's process and no CAP_KILL, as for a
/// daemon run without it or in delegated mode) is the caller's 403 naming `kill`, with the
/// kernel's reason; any other failure stays a kernel error.
fn kill_refused(tenant: &str, e: CgroupError) -> EngineError {
    if !matches!(e.errno(), Some(libc::EPERM | libc::EACCES)) {
        return e.into();
    }
    let why = std::error::Error::source(&e)
        .map(|s| s.to_string())
        .unwrap_or_default();
    EngineError::NotPermitted {
        field: "kill".into(),
        message: format!(
            "the kernel does not let tenantd kill the processes of tenant '{tenant}': {e}: {why}; sending SIGKILL to another user's process needs CAP_KILL (the daemon runs without it, or as an unprivileged user in delegated mode); the tenant is kept with the processes the kernel would not let it kill (any it could kill are gone): move them with move_to=TENANT or stop them as their owner"
        ),
    }
}

/// Moves every process of `dir`'s leaf to `to`, repeating while they fork; each PID checked
/// right before its own move. A refusal stops it: `Err((what, refusal))`.
#[allow(clippy::type_complexity)]
fn move_all(
    b: &dyn Backend,
    policy: &Policy,
    dir: &CgroupPath,
    to: &CgroupPath,
    moved: &mut Vec<u32>,
) -> std::result::Result<Result<()>, (String, Refusal)> {
    // Moving a tenant's own processes to another tenant: protected cgroups guard what may be
    // pulled *into* tenants, so they do not apply here; everything else does.
    let mover = Policy {
        protected: Vec::new(),
        ..policy.clone()
    };
    let stopped = |n: usize| {
        format!("the move was stopped (the {n} processes moved already stay in the target)")
    };
    for _ in 0..100 {
        let pids = match b.procs(&dir.leaf()) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e.into())),
        };
        if pids.is_empty() {
            break;
        }
        if let Some(r) = policy.move_check(&pids) {
            return Err((stopped(moved.len()), r));
        }
        for pid in pids {
            // Checked again right before its own move (a PID that exited and was reused by a
            // thread, the daemon's included, is refused: writing a TID to cgroup.procs moves
            // its whole process), and recognised after it by its start time. The window
            // between this check and the write remains.
            let adm = match mover.check(pid) {
                Ok(a) => a,
                Err(Refusal::Missing { .. }) => continue,
                Err(r) => return Err((stopped(moved.len()), r)),
            };
            match b.attach(to, pid) {
                Ok(()) if mover.still_same(&adm) => moved.push(pid),
                Ok(()) => tracing::warn!(
                    "PID {pid} exited and was reused while it was moved out of a deleted tenant: the new process was moved to the target"
                ),
                Err(e) if e.is_gone() => {}
                Err(e) => return Ok(Err(e.into())),
            }
        }
    }
    Ok(Ok(()))
}
