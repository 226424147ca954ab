//! `--private-pid`: the command in a PID namespace of its own, under a small reaper.
//!
//! `unshare(CLONE_NEWPID)` moves only the caller's children into the new namespace, and the
//! namespace's PID 1 ignores every signal it has no handler for, so a command there as PID 1
//! would not die of the SIGTERM a user sends it. The shape is therefore three processes:
//!
//! ```text
//! tenantd run (host namespace)  forwards signals, exits as the command did
//!   └ reaper, PID 1             mounts /proc, drops privileges, forwards signals, reaps orphans
//!       └ command, PID 2        the launch's options in force, signals at their defaults
//! ```
//!
//! The forwarder and the reaper block the forwarded signals and read them from a signalfd: a
//! signal sent by a process (`kill`, `si_code` SI_USER, SI_QUEUE or SI_TKILL) is passed down;
//! one from the terminal (SI_KERNEL, Ctrl-C) already reached the whole process group, command
//! included, and is not passed again. The reaper reports the command's exit over a pipe
//! (`exit N`, `signal N` or `error TEXT`), and the forwarder ends the same way: `exit(N)`, or
//! the same signal raised on itself. The reaper dies with the forwarder (`PR_SET_PDEATHSIG`),
//! and the kernel kills everything left in the namespace when the reaper exits.

use super::{Launch, LaunchError, drop_privileges, exec_command, step, sys};
use nix::errno::Errno;
use nix::mount::{MsFlags, mount};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, raise, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use std::convert::Infallible;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;

/// The signals passed on to the command when a process sends them.
const FORWARDED: &[Signal] = &[
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGTERM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
];

/// How the command ended, as the reaper tells the forwarder.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    Exit(i32),
    Signal(i32),
    Error(String),
}

impl Outcome {
    fn encode(&self) -> String {
        match self {
            Outcome::Exit(c) => format!("exit {c}\n"),
            Outcome::Signal(s) => format!("signal {s}\n"),
            Outcome::Error(e) => format!("error {e}\n"),
        }
    }

    /// The first line the reaper (or the command, failing to start) wrote.
    fn decode(s: &str) -> Option<Outcome> {
        let line = s.lines().next()?;
        let (kind, v) = line.split_once(' ')?;
        match kind {
            "exit" => v.parse().ok().map(Outcome::Exit),
            "signal" => v.parse().ok().map(Outcome::Signal),
            "error" => Some(Outcome::Error(v.to_string())),
            _ => None,
        }
    }

    fn of(status: WaitStatus) -> Option<Outcome> {
        match status {
            WaitStatus::Exited(_, c) => Some(Outcome::Exit(c)),
            WaitStatus::Signaled(_, s, _) => Some(Outcome::Signal(s as i32)),
            _ => None,
        }
    }
}

fn mask() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(*s);
    }
    set.add(Signal::SIGCHLD);
    set
}

/// Whether a signal was sent by a process (and so is passed on), not by the terminal.
fn sent_by_a_process(code: i32) -> bool {
    matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL)
}

/// Waits for the next signal: `Some` one to pass on; `None` for a SIGCHLD, a signal from the
/// terminal or an interrupted read.
fn next_signal(sfd: &SignalFd) -> Result<Option<Signal>, LaunchError> {
    let si = match sfd.read_signal() {
        Ok(Some(si)) => si,
        Ok(None) | Err(Errno::EINTR) => return Ok(None),
        Err(e) => return Err(step("read a signal")(e)),
    };
    Ok(Signal::try_from(si.ssi_signo as i32)
        .ok()
        .filter(|s| *s != Signal::SIGCHLD && sent_by_a_process(si.ssi_code)))
}

/// Called after `unshare(CLONE_NEWPID)`: forks the reaper and waits for the command's end.
pub(super) fn run(l: &Launch, command: &[String]) -> Result<Infallible, LaunchError> {
    let set = mask();
    let mut old = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut old))
        .map_err(step("block the forwarded signals"))?;
    let (rd, wr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(step("open a pipe to the reaper"))?;
    match sys::fork().map_err(step("fork the PID namespace's reaper"))? {
        ForkResult::Parent { child } => {
            drop(wr);
            forward(child, rd, &set)
        }
        ForkResult::Child => {
            drop(rd);
            let mut wr = std::fs::File::from(wr);
            let outcome = match reap(l, command, &wr, &set, &old) {
                Ok(o) => o,
                Err(e) => Outcome::Error(e.to_string()),
            };
            let _ = wr.write_all(outcome.encode().as_bytes());
            std::process::exit(0)
        }
    }
}

/// The forwarder, in the host's PID namespace: passes signals to the reaper until it exits,
/// then ends as the command did.
fn forward(reaper: Pid, rd: OwnedFd, set: &SigSet) -> Result<Infallible, LaunchError> {
    let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC).map_err(step("open a signalfd"))?;
    let reaper_status = loop {
        // A SIGCHLD may have come before the signalfd existed: look before each wait.
        match waitpid(reaper, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(s) if Outcome::of(s).is_some() => break s,
            Ok(_) => {}
            Err(e) => return Err(step("wait for the reaper")(e)),
        }
        if let Some(sig) = next_signal(&sfd)? {
            let _ = kill(reaper, sig);
        }
    };
    let mut text = String::new();
    let _ = std::fs::File::from(rd).read_to_string(&mut text);
    let outcome = Outcome::decode(&text).unwrap_or_else(|| {
        Outcome::Error(format!(
            "the PID namespace's reaper ended ({reaper_status:?}) without the command's status"
        ))
    });
    match outcome {
        Outcome::Exit(c) => std::process::exit(c),
        Outcome::Signal(s) => {
            // Die of the same signal, as the command did (its default action here: this
            // process never installed a handler).
            if let Ok(sig) = Signal::try_from(s) {
                let mut one = SigSet::empty();
                one.add(sig);
                let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&one), None);
                let _ = raise(sig);
            }
            std::process::exit(128 + s)
        }
        Outcome::Error(e) => Err(LaunchError::Refused(e)),
    }
}

/// The reaper, PID 1 of the new namespace: mounts its /proc, drops privileges, starts the
/// command, forwards signals to it and reaps every child until the command has ended.
fn reap(
    l: &Launch,
    command: &[String],
    wr: &std::fs::File,
    set: &SigSet,
    old: &SigSet,
) -> Result<Outcome, LaunchError> {
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(step("mount /proc for the new PID namespace"))?;
    drop_privileges(l)?;
    // After the credential change, which clears it: the reaper dies with the forwarder.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("set the parent-death signal"))?;
    let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC).map_err(step("open a signalfd"))?;
    let child = match sys::fork().map_err(step("fork the command"))? {
        ForkResult::Child => {
            let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(old), None);
            let e = exec_command(command);
            let _ = (&*wr).write_all(Outcome::Error(e.to_string()).encode().as_bytes());
            std::process::exit(127)
        }
        ForkResult::Parent { child } => child,
    };
    loop {
        // Reap everything that ended; the command's end ends the namespace.
        loop {
            match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(s) if s.pid() == Some(child) => {
                    if let Some(o) = Outcome::of(s) {
                        return Ok(o);
                    }
                }
                Ok(_) => {}
                Err(Errno::EINTR) => {}
                Err(e) => return Err(step("reap children")(e)),
            }
        }
        if let Some(sig) = next_signal(&sfd)? {
            let _ = kill(child, sig);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reapers_report_reads_back() {
        for o in [
            Outcome::Exit(7),
            Outcome::Signal(15),
            Outcome::Error("cannot start 'x': No such file or directory (os error 2)".into()),
        ] {
            assert_eq!(Outcome::decode(&o.encode()), Some(o.clone()));
        }
        // The command's own error comes first when it could not start; the reaper's exit 127
        // after it is not read.
        assert_eq!(
            Outcome::decode("error cannot start 'x'\nexit 127\n"),
            Some(Outcome::Error("cannot start 'x'".into()))
        );
        assert_eq!(Outcome::decode(""), None);
    }

    #[test]
    fn only_signals_sent_by_a_process_are_passed_on() {
        assert!(sent_by_a_process(libc::SI_USER));
        assert!(sent_by_a_process(libc::SI_QUEUE));
        assert!(sent_by_a_process(libc::SI_TKILL));
        assert!(!sent_by_a_process(libc::SI_KERNEL));
    }
}
