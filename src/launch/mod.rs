//! Least-privilege launch, the system side: resolves a validated [`LaunchPlan`] against this
//! host (user database, the caller's capabilities), then, in the process `tenantd run` has
//! placed in the tenant, creates the private namespaces, changes groups and user, narrows the
//! capability bounding set, clears the ambient and inheritable sets, sets no_new_privs, checks
//! the result in /proc/self/status and execs the command. The only code that changes
//! credentials or namespaces.
//!
//! Layer 1 (see `lib.rs`): imports only the domain. `unsafe` lives in `sys` alone.

mod pid;
mod sys;

pub use sys::{PidfdIds, pidfd_ids, trim_heap, tune_allocator};

use crate::domain::launch::{Bounding, CapSet, Capability, Ident, LaunchPlan, ProcCreds};
use caps::CapSet as Set;
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::unistd::{Gid, Group, Uid, User};
use std::convert::Infallible;
use std::ffi::CString;

/// A launch that failed: one line, naming the step and the reason.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The options cannot be met on this host (an unknown user, a capability the caller lacks).
    #[error("{0}")]
    Refused(String),
    /// A step failed: `cannot <step>: <reason>`.
    #[error("cannot {step}: {why}")]
    Step { step: String, why: String },
}

fn step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> LaunchError {
    let step = step.into();
    move |e| LaunchError::Step {
        step,
        why: e.desc().to_string(),
    }
}

fn caps_step(step: impl Into<String>) -> impl FnOnce(caps::errors::CapsError) -> LaunchError {
    let step = step.into();
    move |e| LaunchError::Step {
        step,
        why: e.to_string(),
    }
}

/// A launch resolved against this host: every ID known, the bounding set decided.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub no_new_privs: bool,
    pub bounding: Bounding,
    /// The user to switch to.
    pub uid: Option<u32>,
    /// The group to switch to.
    pub gid: Option<u32>,
    /// The supplementary groups to set (the user's, as initgroups(3) gives them).
    pub groups: Option<Vec<u32>>,
    /// Whether the command runs as root (uid 0) after the switch.
    pub as_root: bool,
    pub private_network: bool,
    pub private_tmp: bool,
    pub private_pid: bool,
}

fn own_creds() -> Result<ProcCreds, LaunchError> {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| ProcCreds::parse(&s))
        .map_err(|e| LaunchError::Step {
            step: "read /proc/self/status".into(),
            why: e.to_string(),
        })
}

fn has(set: Set, c: caps::Capability) -> bool {
    caps::has_cap(None, set, c).unwrap_or(false)
}

/// Resolves the plan against the user database and this process's capabilities, before
/// anything changes: an unknown user or group, or a capability this process cannot give or
/// take away, is refused here.
pub fn resolve(plan: &LaunchPlan) -> Result<Launch, LaunchError> {
    let lookup = |e: nix::Error| LaunchError::Step {
        step: "read the user database".into(),
        why: e.desc().to_string(),
    };
    let (uid, user) = match &plan.user {
        None => (None, None),
        Some(Ident::Name(n)) => {
            let u = User::from_name(n)
                .map_err(lookup)?
                .ok_or_else(|| LaunchError::Refused(format!("unknown user '{n}'")))?;
            (Some(u.uid.as_raw()), Some(u))
        }
        Some(Ident::Id(i)) => (Some(*i), User::from_uid(Uid::from_raw(*i)).map_err(lookup)?),
    };
    let gid = match &plan.group {
        None => user.as_ref().map(|u| u.gid.as_raw()),
        Some(Ident::Name(n)) => Some(
            Group::from_name(n)
                .map_err(lookup)?
                .ok_or_else(|| LaunchError::Refused(format!("unknown group '{n}'")))?
                .gid
                .as_raw(),
        ),
        Some(Ident::Id(i)) => Some(*i),
    };
    if let (Some(u), None) = (uid, gid) {
        return Err(LaunchError::Refused(format!(
            "user {u} has no entry in the user database, so no primary group: give --group too"
        )));
    }
    let groups = match (&user, gid) {
        (Some(u), Some(g)) => {
            let name = CString::new(u.name.clone()).map_err(|_| {
                LaunchError::Refused(format!("user name '{}' holds a NUL byte", u.name))
            })?;
            let list = nix::unistd::getgrouplist(&name, Gid::from_raw(g))
                .map_err(step(format!("list the groups of user '{}'", u.name)))?;
            let mut list: Vec<u32> = list.into_iter().map(Gid::as_raw).collect();
            list.sort_unstable();
            list.dedup();
            Some(list)
        }
        // An ID without a name, or a group without a user: no supplementary groups.
        _ if uid.is_some() || gid.is_some() => Some(Vec::new()),
        _ => None,
    };
    let me = own_creds()?;
    let euid = nix::unistd::geteuid().as_raw();
    let target = uid.unwrap_or(euid);
    let can_change = has(Set::Permitted, caps::Capability::CAP_SETPCAP);
    let bounding = Bounding::choose(plan.capabilities, target, can_change);
    let current = me.cap_bnd.unwrap_or_default();
    if let Bounding::Set(want) = bounding {
        if let Some(c) = want.iter().find(|c| !current.contains(*c)) {
            return Err(LaunchError::Refused(format!(
                "{c} is not in the bounding set tenantd run has ({current}), so the command cannot be given it"
            )));
        }
        if want != current && !can_change {
            return Err(LaunchError::Refused(
                "narrowing the capability bounding set needs CAP_SETPCAP: run tenantd run as root, or leave --capabilities out".into(),
            ));
        }
    }
    let needs = |cap: caps::Capability, what: &str| {
        if has(Set::Effective, cap) {
            Ok(())
        } else {
            Err(LaunchError::Refused(format!(
                "{what} needs {cap} (run tenantd run as root)"
            )))
        }
    };
    if uid.is_some_and(|u| u != euid) {
        needs(caps::Capability::CAP_SETUID, "switching user")?;
    }
    if gid.is_some() || groups.is_some() {
        needs(caps::Capability::CAP_SETGID, "switching group")?;
    }
    if plan.private_network || plan.private_tmp || plan.private_pid {
        needs(caps::Capability::CAP_SYS_ADMIN, "a private namespace")?;
    }
    Ok(Launch {
        no_new_privs: plan.no_new_privs,
        bounding,
        uid,
        gid,
        groups,
        as_root: target == 0,
        private_network: plan.private_network,
        private_tmp: plan.private_tmp,
        private_pid: plan.private_pid,
    })
}

/// The number of threads of this process (`Threads:` in /proc/self/status).
fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}

/// Namespaces and credentials are changed for one thread (`unshare(CLONE_NEWNS)` even refuses
/// a process with several), and fork copies only the caller: the launch runs with one thread.
/// A thread just joined can still be counted for a moment (the kernel releases it after
/// waking the joiner), so the count is read again for up to a second.
fn single_threaded() -> Result<(), LaunchError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    let mut n = threads();
    while n != Some(1) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(2));
        n = threads();
    }
    match n {
        Some(1) => Ok(()),
        n => Err(LaunchError::Refused(format!(
            "the launch needs a single-threaded process, and tenantd run has {} threads",
            n.map_or("an unknown number of".to_string(), |n| n.to_string())
        ))),
    }
}

/// Runs `command` in this process, with the launch applied, in order: namespaces, then
/// groups/group/user, then the bounding set and the ambient and inheritable sets, then
/// no_new_privs, then a check of /proc/self/status, then exec. Returns only on failure.
/// With `private_pid`, exits with the command's status instead (see [`pid`]).
pub fn exec(l: &Launch, command: &[String]) -> LaunchError {
    match try_exec(l, command) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}

fn try_exec(l: &Launch, command: &[String]) -> Result<Infallible, LaunchError> {
    single_threaded()?;
    namespaces(l)?;
    if l.private_pid {
        return pid::run(l, command);
    }
    drop_privileges(l)?;
    Err(exec_command(command))
}

/// `execvp` of the command; returns the error when it could not start.
fn exec_command(command: &[String]) -> LaunchError {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(&command[0])
        .args(&command[1..])
        .exec();
    LaunchError::Refused(format!("cannot start '{}': {err}", command[0]))
}

/// New network, mount and PID namespaces as asked; a private /tmp; loopback up.
fn namespaces(l: &Launch) -> Result<(), LaunchError> {
    let mut flags = CloneFlags::empty();
    let mut names = Vec::new();
    if l.private_network {
        flags |= CloneFlags::CLONE_NEWNET;
        names.push("network");
    }
    // --private-pid mounts a /proc of the new PID namespace, which needs a mount namespace.
    if l.private_tmp || l.private_pid {
        flags |= CloneFlags::CLONE_NEWNS;
        names.push("mount");
    }
    if l.private_pid {
        flags |= CloneFlags::CLONE_NEWPID;
        names.push("PID");
    }
    if flags.is_empty() {
        return Ok(());
    }
    unshare(flags).map_err(step(format!(
        "create private namespaces ({})",
        names.join(", ")
    )))?;
    if flags.contains(CloneFlags::CLONE_NEWNS) {
        // Mounts made from here on stay in the new namespace (a shared / would propagate them
        // back to the host's).
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(step("make the mounts of the new mount namespace private"))?;
    }
    if l.private_tmp {
        mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=1777"),
        )
        .map_err(step("mount a private tmpfs on /tmp"))?;
    }
    if l.private_network {
        sys::loopback_up().map_err(LaunchError::Refused)?;
    }
    Ok(())
}

/// Groups, group and user; then the bounding set, the ambient and inheritable sets (and the
/// permitted and effective sets of a non-root user); then no_new_privs; then the check.
fn drop_privileges(l: &Launch) -> Result<(), LaunchError> {
    let switching = l.uid.is_some() || l.gid.is_some();
    if switching {
        // Keep the permitted set across setuid, so the bounding set can be narrowed after it.
        nix::sys::prctl::set_keepcaps(true).map_err(step("set keepcaps"))?;
    }
    if let Some(g) = &l.groups {
        let gids: Vec<Gid> = g.iter().map(|g| Gid::from_raw(*g)).collect();
        nix::unistd::setgroups(&gids).map_err(step("set the supplementary groups"))?;
    }
    if let Some(g) = l.gid {
        let g = Gid::from_raw(g);
        nix::unistd::setresgid(g, g, g).map_err(step(format!("switch to group {g}")))?;
    }
    if let Some(u) = l.uid {
        let u = Uid::from_raw(u);
        nix::unistd::setresuid(u, u, u).map_err(step(format!("switch to user {u}")))?;
    }
    if let Bounding::Set(want) = l.bounding {
        // setuid away from root cleared the effective set; the permitted one was kept.
        if !has(Set::Effective, caps::Capability::CAP_SETPCAP) {
            caps::raise(None, Set::Effective, caps::Capability::CAP_SETPCAP)
                .map_err(caps_step("raise CAP_SETPCAP to narrow the bounding set"))?;
        }
        let mut all: Vec<caps::Capability> = caps::all().into_iter().collect();
        all.sort_by_key(|c| c.index());
        for c in all {
            if !want.contains(Capability(c.index())) && has(Set::Bounding, c) {
                caps::drop(None, Set::Bounding, c)
                    .map_err(caps_step(format!("drop {c} from the bounding set")))?;
            }
        }
        // The process's own sets no wider than the bounding set (effective first: it must
        // stay within the permitted set).
        for set in [Set::Effective, Set::Permitted] {
            let now = caps::read(None, set).map_err(caps_step("read the capability sets"))?;
            let keep: caps::CapsHashSet = now
                .into_iter()
                .filter(|c| want.contains(Capability(c.index())))
                .collect();
            caps::set(None, set, &keep).map_err(caps_step("narrow the capability sets"))?;
        }
    }
    caps::clear(None, Set::Ambient).map_err(caps_step("clear the ambient capabilities"))?;
    caps::clear(None, Set::Inheritable).map_err(caps_step("clear the inheritable capabilities"))?;
    if !l.as_root {
        for set in [Set::Effective, Set::Permitted] {
            caps::clear(None, set)
                .map_err(caps_step("clear the capabilities of a non-root user"))?;
        }
    }
    if switching {
        nix::sys::prctl::set_keepcaps(false).map_err(step("clear keepcaps"))?;
    }
    if l.no_new_privs {
        nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    }
    check(l, &own_creds()?)
}

/// The launch as /proc/self/status shows it, before exec: every option asked for is in force.
fn check(l: &Launch, now: &ProcCreds) -> Result<(), LaunchError> {
    let wrong = |what: &str, got: String, want: String| {
        Err(LaunchError::Refused(format!(
            "after the launch steps /proc/self/status shows {what} {got}, not {want}"
        )))
    };
    if l.no_new_privs && now.no_new_privs != Some(true) {
        return wrong("NoNewPrivs", format!("{:?}", now.no_new_privs), "1".into());
    }
    if let Bounding::Set(want) = l.bounding
        && now.cap_bnd != Some(want)
    {
        return wrong("CapBnd", format!("{:?}", now.cap_bnd), want.hex());
    }
    for (what, v) in [("CapAmb", now.cap_amb), ("CapInh", now.cap_inh)] {
        if v.is_some_and(|v| v != CapSet::default()) {
            return wrong(what, format!("{v:?}"), "0".into());
        }
    }
    if let Some(u) = l.uid
        && now.uid.iter().any(|x| *x != u)
    {
        return wrong("Uid", format!("{:?}", now.uid), u.to_string());
    }
    if let Some(g) = l.gid
        && now.gid.iter().any(|x| *x != g)
    {
        return wrong("Gid", format!("{:?}", now.gid), g.to_string());
    }
    if let Some(g) = &l.groups
        && &now.groups != g
    {
        return wrong("Groups", format!("{:?}", now.groups), format!("{g:?}"));
    }
    Ok(())
}
