//! The kernel's process events (issue 17): a reader of the netlink proc connector, which tells
//! of every fork, exec, uid or gid change and exit on the host as it happens, so a process can
//! be placed in its tenant within milliseconds of its exec instead of at the next `/proc` scan.
//!
//! Layer 1 (see `lib.rs`), kernel-facing like the rest of `cgroup`: it reads the kernel and
//! decides nothing. It imports only `cgroup::parse` (for `ParseError`); the placer in `engine`
//! consumes the events.
//!
//! # The socket: `netlink-sys`
//! The socket is a `netlink_sys::Socket` (crate `netlink-sys`, of the rust-netlink
//! organisation, the socket layer under `rtnetlink`, `netlink-proto` and `ethtool`; MIT; tens
//! of millions of downloads, releases through 2026, packaged by Debian). It opens, binds,
//! sends to and receives from a netlink socket with safe methods and owns the descriptor,
//! which keeps `unsafe` out of this module (only `launch/sys.rs` has any). It knows nothing of the
//! connector's messages, and its higher crates (`netlink-packet-*`) have no connector or
//! proc-event types, so the messages are parsed here ([`parse_datagram`]): three fixed-layout C
//! structs, every field read through a bounds check. `rustix` (already a dependency) adds what
//! `netlink-sys` lacks: `SO_RCVBUFFORCE` (a receive buffer above `net.core.rmem_max` for root),
//! `poll` and an `eventfd` to stop the reader thread.
//!
//! # The protocol (include/uapi/linux/connector.h, include/uapi/linux/cn_proc.h,
//! drivers/connector/cn_proc.c)
//! A datagram holds netlink messages (`nlmsghdr`, 16 bytes, host byte order); each
//! `NLMSG_DONE` message carries a `cn_msg` (20 bytes: id `{idx, val}`, `seq`, `ack`, `len`,
//! `flags`) whose data is a `proc_event`: `what`, `cpu`, `timestamp_ns` (the kernel's
//! `ktime_get_ns()`, CLOCK_MONOTONIC) and a 24-byte union per kind. Events go to multicast
//! group `CN_IDX_PROC` only while at least one socket has sent `PROC_CN_MCAST_LISTEN`; the
//! kernel answers that request with a `PROC_EVENT_NONE` message whose `ack` is the request's
//! plus one and whose data is an errno. The kernel numbers each CPU's messages (`seq`), so a
//! gap is an event lost even when no `ENOBUFS` was reported.
//!
//! # What the kernel requires
//! - `CONFIG_CONNECTOR` (else the socket cannot be opened) and `CONFIG_PROC_EVENTS` (else no
//!   `cn_proc` line in `/proc/net/connector` and no answer to the subscription).
//! - The initial PID and user namespaces: the kernel silently ignores a subscription from any
//!   other (its events carry PIDs of the initial namespace). The initial network namespace:
//!   the connector exists only there.
//! - `CAP_NET_ADMIN` in the initial user namespace: to join the group (this host's 6.18
//!   refuses the `bind` with `EPERM` without it, though upstream 6.6 meant to let any user
//!   listen) and, before 6.6, to subscribe (refused with an `EPERM` acknowledgement).
//!
//! [`ProcConnector::open`] waits for the kernel's answer and, when none comes, says which of
//! these is missing. A subscription is withdrawn (`PROC_CN_MCAST_IGNORE`) when the reader is
//! dropped: the kernel counts listeners and sends events while the count is above zero, and
//! closing the socket alone does not lower it.
//!
//! # Lost events
//! The kernel drops events for a socket whose receive buffer is full and then fails the next
//! `recv` with `ENOBUFS`; a message it could not allocate is lost for everyone and shows as a
//! gap in its CPU's `seq`. Both arrive as [`ProcEvent::Lost`]: the caller must rescan `/proc`.
//! The receive buffer asked for is [`DEFAULT_RECEIVE_BUFFER`] (the kernel doubles it).

use crate::cgroup::parse::ParseError;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_CONNECTOR};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The receive buffer `open` asks for, in bytes (the kernel doubles it for its bookkeeping).
/// Each event costs about 1 KiB of it (the skb's true size), so 8 MiB holds some 16,000
/// events: seconds of a busy host's fork/exec/exit while the reader is descheduled.
pub const DEFAULT_RECEIVE_BUFFER: usize = 8 << 20;

/// How long `open` waits for the kernel to answer the subscription.
pub const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);

/// At most this many datagrams make one [`Batch`], so a flood cannot starve the caller.
pub const MAX_DATAGRAMS_PER_BATCH: usize = 256;

// include/uapi/linux/netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_DONE: u16 = 3;
// include/uapi/linux/connector.h
const CN_IDX_PROC: u32 = 1;
const CN_VAL_PROC: u32 = 1;
const CN_MSG_LEN: usize = 20;
// include/uapi/linux/cn_proc.h
const PROC_CN_MCAST_LISTEN: u32 = 1;
const PROC_CN_MCAST_IGNORE: u32 = 2;
const PROC_EVENT_HEADER: usize = 16;
const PROC_EVENT_NONE: u32 = 0;
const PROC_EVENT_FORK: u32 = 0x0000_0001;
const PROC_EVENT_EXEC: u32 = 0x0000_0002;
const PROC_EVENT_UID: u32 = 0x0000_0004;
const PROC_EVENT_GID: u32 = 0x0000_0040;
const PROC_EVENT_EXIT: u32 = 0x8000_0000;
/// The `cpu` of an acknowledgement on kernels that did not number it (`-1`).
const NO_CPU: u32 = u32::MAX;
// include/linux/proc_ns.h: the inode numbers of the initial namespaces.
const INIT_PID_NS: &str = "pid:[4026531836]";
const INIT_USER_NS: &str = "user:[4026531837]";
const CAP_NET_ADMIN: u32 = 12;

/// What happened to a process, as the kernel reports it. PIDs are the kernel's task ids in the
/// initial PID namespace: `pid` is the thread, `tgid` the process (equal for a process's
/// first thread).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcEvent {
    /// A task was created: a process (`child_pid == child_tgid`) or a thread of `parent_tgid`.
    Fork {
        parent_pid: u32,
        parent_tgid: u32,
        child_pid: u32,
        child_tgid: u32,
    },
    /// The task executed a new program.
    Exec { pid: u32, tgid: u32 },
    /// The task's real or effective uid changed (setuid and friends, or exec of a setuid file).
    Uid {
        pid: u32,
        tgid: u32,
        ruid: u32,
        euid: u32,
    },
    /// The task's real or effective gid changed.
    Gid {
        pid: u32,
        tgid: u32,
        rgid: u32,
        egid: u32,
    },
    /// The task exited. `exit_code` is in `wait(2)` status form (`code << 8`, or the signal);
    /// `parent_*` are 0 when the parent was already gone.
    Exit {
        pid: u32,
        tgid: u32,
        exit_code: u32,
        exit_signal: u32,
        parent_pid: u32,
        parent_tgid: u32,
    },
    /// Events were lost: rescan `/proc`.
    Lost(Lost),
}

/// Why events were lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lost {
    /// The socket's receive buffer overflowed (`ENOBUFS`); how many is unknown. Usually
    /// followed by `Skipped` with the count once the CPUs concerned send again.
    Overrun,
    /// The kernel's numbering of `cpu`'s messages skipped `missing` of them.
    Skipped { cpu: u32, missing: u32 },
    /// A datagram this reader could not parse (why): what it said is lost.
    Malformed(String),
}

/// An event with the kernel's time of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub event: ProcEvent,
    /// CLOCK_MONOTONIC when the kernel made the event (`ktime_get_ns()`); `None` for `Lost`.
    pub kernel_time: Option<Duration>,
}

/// CLOCK_MONOTONIC now: the clock of [`Stamped::kernel_time`] (`ktime_get_ns()`), so the age
/// of an event is `monotonic_now() - kernel_time`.
pub fn monotonic_now() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The events of one or more datagrams, in the order received.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<Stamped>,
}

/// One connector message as the kernel sent it: the `cn_msg` and `proc_event` headers and what
/// it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The CPU that sent it (`u32::MAX` on an acknowledgement of an older kernel).
    pub cpu: u32,
    /// The sending CPU's running number of messages.
    pub seq: u32,
    /// On an acknowledgement, the request's `ack` plus one; 0 otherwise.
    pub ack: u32,
    /// CLOCK_MONOTONIC in ns when the kernel made the message.
    pub timestamp_ns: u64,
    pub body: Body,
}

/// What a connector message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// A process event (never `ProcEvent::Lost`).
    Event(ProcEvent),
    /// The answer to a subscription request: 0 or an errno.
    Ack { err: u32 },
    /// A kind this reader does not report (sid, ptrace, comm, coredump, ...).
    Other { what: u32 },
}

/// Why the proc connector cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    #[error("the kernel's process events (netlink proc connector) are not available: {why}")]
    Unavailable { why: String },
    #[error("failed to {op} on the netlink proc connector socket")]
    Io {
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> ConnectorError {
    move |source| ConnectorError::Io { op, source }
}

fn unavailable(why: impl Into<String>) -> ConnectorError {
    ConnectorError::Unavailable { why: why.into() }
}

/// Parses one datagram of the connector: every `NLMSG_DONE` message whose `cn_msg` id is the
/// proc connector's. Messages of other types (`NLMSG_NOOP`, ...) and other connector ids are
/// skipped. Every length is checked against the bytes present: a short or inconsistent
/// datagram is an error, never a panic or a read past its end.
pub fn parse_datagram(buf: &[u8]) -> Result<Vec<Message>, ParseError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        let len = u32_at(rest, 0).ok_or_else(|| bad(at, "a netlink header (16 bytes)"))? as usize;
        let kind = u16_at(rest, 4).ok_or_else(|| bad(at, "a netlink header (16 bytes)"))?;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(ParseError(format!(
                "netlink message at byte {at}: length {len} outside 16..={}",
                rest.len()
            )));
        }
        if kind == NLMSG_DONE {
            out.extend(parse_cn_msg(&rest[NLMSG_HDRLEN..len], at + NLMSG_HDRLEN)?);
        }
        // NLMSG_ALIGN: the next message starts at a multiple of 4.
        at += len.div_ceil(4) * 4;
    }
    Ok(out)
}

fn bad(at: usize, what: &str) -> ParseError {
    ParseError(format!(
        "expected {what} at byte {at}, found the end of the datagram"
    ))
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A `cn_msg` and its `proc_event`; `None` for another connector's message. `base` is the
/// payload's offset in the datagram, for messages.
fn parse_cn_msg(p: &[u8], base: usize) -> Result<Option<Message>, ParseError> {
    let hdr = |at| u32_at(p, at).ok_or_else(|| bad(base, "a cn_msg header (20 bytes)"));
    let (idx, val, seq, ack) = (hdr(0)?, hdr(4)?, hdr(8)?, hdr(12)?);
    let len = u16_at(p, 16).ok_or_else(|| bad(base, "a cn_msg header (20 bytes)"))? as usize;
    if (idx, val) != (CN_IDX_PROC, CN_VAL_PROC) {
        return Ok(None);
    }
    let data = p.get(CN_MSG_LEN..CN_MSG_LEN + len).ok_or_else(|| {
        ParseError(format!(
            "cn_msg at byte {base} says {len} bytes of data, the message holds {}",
            p.len().saturating_sub(CN_MSG_LEN)
        ))
    })?;
    let base = base + CN_MSG_LEN;
    let short = |need: usize, what: u32| {
        ParseError(format!(
            "proc_event at byte {base} (what {what:#x}) has {} bytes, needs {need}",
            data.len()
        ))
    };
    let (Some(what), Some(cpu), Some(timestamp_ns)) =
        (u32_at(data, 0), u32_at(data, 4), u64_at(data, 8))
    else {
        return Err(short(PROC_EVENT_HEADER, 0));
    };
    let ed = Fields(&data[PROC_EVENT_HEADER..]);
    let need = |n: usize| short(PROC_EVENT_HEADER + 4 * n, what);
    let body = match what {
        PROC_EVENT_NONE => {
            let [err] = ed.get().ok_or_else(|| need(1))?;
            Body::Ack { err }
        }
        PROC_EVENT_FORK => {
            let [parent_pid, parent_tgid, child_pid, child_tgid] =
                ed.get().ok_or_else(|| need(4))?;
            Body::Event(ProcEvent::Fork {
                parent_pid,
                parent_tgid,
                child_pid,
                child_tgid,
            })
        }
        PROC_EVENT_EXEC => {
            let [pid, tgid] = ed.get().ok_or_else(|| need(2))?;
            Body::Event(ProcEvent::Exec { pid, tgid })
        }
        // One struct for both (id_proc_event): the real and the effective id.
        PROC_EVENT_UID | PROC_EVENT_GID => {
            let [pid, tgid, r, e] = ed.get().ok_or_else(|| need(4))?;
            Body::Event(match what {
                PROC_EVENT_UID => ProcEvent::Uid {
                    pid,
                    tgid,
                    ruid: r,
                    euid: e,
                },
                _ => ProcEvent::Gid {
                    pid,
                    tgid,
                    rgid: r,
                    egid: e,
                },
            })
        }
        PROC_EVENT_EXIT => {
            let [pid, tgid, exit_code, exit_signal, parent_pid, parent_tgid] =
                ed.get().ok_or_else(|| need(6))?;
            Body::Event(ProcEvent::Exit {
                pid,
                tgid,
                exit_code,
                exit_signal,
                parent_pid,
                parent_tgid,
            })
        }
        what => Body::Other { what },
    };
    Ok(Some(Message {
        cpu,
        seq,
        ack,
        timestamp_ns,
        body,
    }))
}

/// A `proc_event`'s union: host-order u32 fields.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    /// The first `N` fields, if the union holds them.
    fn get<const N: usize>(&self) -> Option<[u32; N]> {
        let mut out = [0; N];
        for (i, f) in out.iter_mut().enumerate() {
            *f = u32_at(self.0, 4 * i)?;
        }
        Some(out)
    }
}

/// The next `seq` expected from each CPU: a jump forward is messages lost.
#[derive(Debug, Default)]
struct Sequences {
    next: HashMap<u32, u32>,
}

impl Sequences {
    fn observe(&mut self, cpu: u32, seq: u32) -> Option<Lost> {
        if cpu == NO_CPU {
            return None;
        }
        let expected = self.next.insert(cpu, seq.wrapping_add(1))?;
        let missing = seq.wrapping_sub(expected);
        // A jump backwards (more than half the range) is a restarted count, not a loss.
        (missing != 0 && missing < 1 << 31).then_some(Lost::Skipped { cpu, missing })
    }
}

/// What `/proc` says about the conditions the kernel puts on a subscription; `None` where it
/// could not be read.
#[derive(Debug, Clone, Default)]
struct Conditions {
    /// `/proc/net/connector`.
    connectors: Option<String>,
    /// The targets of `/proc/self/ns/pid` and `/proc/self/ns/user`.
    pid_ns: Option<String>,
    user_ns: Option<String>,
    /// `CapEff` of `/proc/self/status`.
    cap_eff: Option<u64>,
}

impl Conditions {
    fn read(proc_root: &Path) -> Conditions {
        let link = |p: &str| {
            std::fs::read_link(proc_root.join(p))
                .ok()
                .map(|t| t.to_string_lossy().into_owned())
        };
        let cap_eff = std::fs::read_to_string(proc_root.join("self/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            });
        Conditions {
            connectors: std::fs::read_to_string(proc_root.join("net/connector")).ok(),
            pid_ns: link("self/ns/pid"),
            user_ns: link("self/ns/user"),
            cap_eff,
        }
    }

    /// Why the kernel did not answer a subscription: the first condition found unmet.
    fn why_no_answer(&self, waited: Duration) -> String {
        let waited = format!("the kernel did not answer the subscription within {waited:?}");
        let lists_cn_proc = |list: &String| {
            list.lines()
                .any(|l| l.split_whitespace().next() == Some("cn_proc"))
        };
        if self.connectors.as_ref().is_some_and(|l| !lists_cn_proc(l)) {
            return format!(
                "{waited}: /proc/net/connector lists no cn_proc, so the kernel was built \
                 without CONFIG_PROC_EVENTS"
            );
        }
        if let Some(ns) = self.pid_ns.as_deref().filter(|ns| *ns != INIT_PID_NS) {
            return format!(
                "{waited}: this process is in PID namespace {ns}, not the initial one, and \
                 the kernel ignores subscriptions from any other"
            );
        }
        if let Some(ns) = self.user_ns.as_deref().filter(|ns| *ns != INIT_USER_NS) {
            return format!(
                "{waited}: this process is in user namespace {ns}, not the initial one, and \
                 the kernel ignores subscriptions from any other"
            );
        }
        if self.cap_eff.is_some_and(|c| c & (1 << CAP_NET_ADMIN) == 0) {
            return format!(
                "{waited}: this process lacks CAP_NET_ADMIN, which kernels before 6.6 require \
                 to listen"
            );
        }
        format!("{waited} (no missing kernel option, namespace or capability found)")
    }
}

/// The answer of the kernel to a subscription with errno `err`.
fn refused(err: u32) -> String {
    if err == libc::EPERM as u32 {
        "the kernel refused the subscription (EPERM): CAP_NET_ADMIN is missing, which kernels \
         before 6.6 require to listen"
            .into()
    } else {
        format!(
            "the kernel refused the subscription: {}",
            io::Error::from_raw_os_error(err as i32)
        )
    }
}

/// A subscription to the kernel's process events. Reading is blocking ([`recv`]) or bounded
/// ([`recv_timeout`]); [`spawn`] runs it on a thread of its own. Dropping it unsubscribes.
///
/// [`recv`]: ProcConnector::recv
/// [`recv_timeout`]: ProcConnector::recv_timeout
/// [`spawn`]: ProcConnector::spawn
pub struct ProcConnector {
    socket: Socket,
    /// The socket's netlink port id, which the kernel assigned at bind.
    port: u32,
    buf: Vec<u8>,
    sequences: Sequences,
    /// Events that arrived while waiting for the subscription's answer.
    pending: Vec<Stamped>,
    receive_buffer: usize,
}

impl std::fmt::Debug for ProcConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcConnector")
            .field("port", &self.port)
            .field("receive_buffer", &self.receive_buffer)
            .finish_non_exhaustive()
    }
}

/// A distinct `ack` value per request of this process, echoed plus one by the kernel.
fn next_nonce() -> u32 {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    ((std::process::id() << 12) ^ COUNT.fetch_add(1, Ordering::Relaxed)) | (1 << 31)
}

/// Whether `err` is the kernel's "the receive buffer overflowed".
fn is_overrun(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOBUFS)
}

impl ProcConnector {
    /// Subscribes to every process event with a receive buffer of [`DEFAULT_RECEIVE_BUFFER`],
    /// and waits for the kernel to accept. See the module's documentation for what the kernel
    /// requires; a clear error says which requirement is unmet.
    pub fn open() -> Result<ProcConnector, ConnectorError> {
        ProcConnector::open_with_buffer(DEFAULT_RECEIVE_BUFFER)
    }

    /// `open` with a receive buffer of `bytes` (the kernel doubles it; without
    /// `CAP_NET_ADMIN` it is capped at `net.core.rmem_max`).
    pub fn open_with_buffer(bytes: usize) -> Result<ProcConnector, ConnectorError> {
        let mut socket = Socket::new(NETLINK_CONNECTOR).map_err(|e| {
            if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) {
                unavailable("the kernel has no netlink connector (built without CONFIG_CONNECTOR)")
            } else {
                io_err("open")(e)
            }
        })?;
        // Beyond net.core.rmem_max needs CAP_NET_ADMIN; without it the capped size will do.
        if rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, bytes).is_err() {
            socket
                .set_rx_buf_sz(bytes)
                .map_err(io_err("set the receive buffer size"))?;
        }
        let receive_buffer = rustix::net::sockopt::socket_recv_buffer_size(&socket)
            .map_err(|e| io_err("read the receive buffer size")(e.into()))?;
        socket
            .bind(&SocketAddr::new(0, 1 << (CN_IDX_PROC - 1)))
            .map_err(|e| {
                if e.raw_os_error() == Some(libc::EPERM) {
                    unavailable(
                        "the kernel refused to let this process join the proc events group \
                         (EPERM): it lacks CAP_NET_ADMIN in the initial user namespace",
                    )
                } else {
                    io_err("bind to the proc events group")(e)
                }
            })?;
        let mut addr = SocketAddr::new(0, 0);
        socket
            .get_address(&mut addr)
            .map_err(io_err("read the address"))?;
        let mut conn = ProcConnector {
            socket,
            port: addr.port_number(),
            buf: vec![0; 16 << 10],
            sequences: Sequences::default(),
            pending: Vec::new(),
            receive_buffer,
        };
        conn.subscribe(Path::new("/proc"))?;
        Ok(conn)
    }

    /// The receive buffer the kernel granted, in bytes (twice the size asked for).
    pub fn receive_buffer_bytes(&self) -> usize {
        self.receive_buffer
    }

    /// Sends `op` to the proc connector with `ack` as the request's number.
    fn send_op(&self, op: u32, ack: u32) -> io::Result<()> {
        let len = NLMSG_HDRLEN + CN_MSG_LEN + 4;
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&self.port.to_ne_bytes());
        m.extend_from_slice(&CN_IDX_PROC.to_ne_bytes());
        m.extend_from_slice(&CN_VAL_PROC.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes()); // seq
        m.extend_from_slice(&ack.to_ne_bytes());
        m.extend_from_slice(&4u16.to_ne_bytes()); // len: the op alone means every event
        m.extend_from_slice(&0u16.to_ne_bytes()); // flags
        m.extend_from_slice(&op.to_ne_bytes());
        self.socket.send_to(&m, &SocketAddr::new(0, 0), 0)?;
        Ok(())
    }

    /// Sends `PROC_CN_MCAST_LISTEN` and waits for the kernel's acknowledgement, keeping the
    /// events that arrive meanwhile.
    fn subscribe(&mut self, proc_root: &Path) -> Result<(), ConnectorError> {
        let nonce = next_nonce();
        self.send_op(PROC_CN_MCAST_LISTEN, nonce).map_err(|e| {
            if e.raw_os_error() == Some(libc::ECONNREFUSED) {
                unavailable(
                    "this process is not in the initial network namespace, the only one the \
                     connector exists in",
                )
            } else {
                io_err("send the subscription")(e)
            }
        })?;
        let deadline = Instant::now() + SUBSCRIBE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.wait_readable(Some(left), None)? {
                return Err(unavailable(
                    Conditions::read(proc_root).why_no_answer(SUBSCRIBE_TIMEOUT),
                ));
            }
            let mut batch = Vec::new();
            let answer = self.read_datagrams(1, Some(nonce.wrapping_add(1)), &mut batch)?;
            self.pending.extend(batch);
            match answer {
                Some(0) => return Ok(()),
                Some(err) => return Err(unavailable(refused(err))),
                None => {}
            }
        }
    }

    /// Waits until the socket (or `stop`) is readable or `timeout` passes; whether the socket
    /// is.
    fn wait_readable(
        &self,
        timeout: Option<Duration>,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<bool, ConnectorError> {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let timeout = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        let mut fds = vec![PollFd::new(&self.socket, PollFlags::IN)];
        if let Some(stop) = &stop {
            fds.push(PollFd::new(stop, PollFlags::IN));
        }
        loop {
            match poll(&mut fds, timeout.as_ref()) {
                Ok(_) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(io_err("poll")(e.into())),
            }
        }
        if fds.len() > 1 && !fds[1].revents().is_empty() {
            return Ok(false);
        }
        Ok(!fds[0].revents().is_empty())
    }

    /// Reads up to `max` datagrams without blocking (callers wait with `wait_readable`
    /// first), appending their events to `out`; returns the `err` of an acknowledgement whose
    /// `ack` is `want_ack`.
    fn read_datagrams(
        &mut self,
        max: usize,
        want_ack: Option<u32>,
        out: &mut Vec<Stamped>,
    ) -> Result<Option<u32>, ConnectorError> {
        let mut answer = None;
        for _ in 0..max {
            let (n, from) = match self
                .socket
                .recv_from(&mut &mut self.buf[..], libc::MSG_DONTWAIT)
            {
                Ok(r) => r,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_overrun(&e) => {
                    out.push(Stamped {
                        event: ProcEvent::Lost(Lost::Overrun),
                        kernel_time: None,
                    });
                    continue;
                }
                Err(e) => return Err(io_err("receive")(e)),
            };
            // Only the kernel (port 0) speaks for the connector.
            if from.port_number() != 0 {
                continue;
            }
            let messages = match parse_datagram(&self.buf[..n.min(self.buf.len())]) {
                Ok(m) => m,
                Err(e) => {
                    out.push(Stamped {
                        event: ProcEvent::Lost(Lost::Malformed(e.0)),
                        kernel_time: None,
                    });
                    continue;
                }
            };
            for m in messages {
                if let Some(lost) = self.sequences.observe(m.cpu, m.seq) {
                    out.push(Stamped {
                        event: ProcEvent::Lost(lost),
                        kernel_time: None,
                    });
                }
                match m.body {
                    Body::Event(event) => out.push(Stamped {
                        event,
                        kernel_time: Some(Duration::from_nanos(m.timestamp_ns)),
                    }),
                    Body::Ack { err } if want_ack == Some(m.ack) => answer = Some(err),
                    Body::Ack { .. } | Body::Other { .. } => {}
                }
            }
        }
        Ok(answer)
    }

    /// Blocks until at least one event (or a loss) is there, then returns it with whatever
    /// else is already queued (up to [`MAX_DATAGRAMS_PER_BATCH`] datagrams).
    pub fn recv(&mut self) -> Result<Batch, ConnectorError> {
        loop {
            if let Some(batch) = self.recv_timeout(None)? {
                return Ok(batch);
            }
        }
    }

    /// `recv` waiting at most `timeout` (`None`: forever); `None` when nothing came.
    pub fn recv_timeout(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<Option<Batch>, ConnectorError> {
        self.recv_or_stop(timeout, None)
    }

    /// `recv_timeout` that also returns `None` as soon as `stop` is readable.
    fn recv_or_stop(
        &mut self,
        timeout: Option<Duration>,
        stop: Option<BorrowedFd<'_>>,
    ) -> Result<Option<Batch>, ConnectorError> {
        let mut events = std::mem::take(&mut self.pending);
        let deadline = timeout.map(|t| Instant::now() + t);
        while events.is_empty() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) || !self.wait_readable(left, stop)? {
                return Ok(None);
            }
            self.read_datagrams(MAX_DATAGRAMS_PER_BATCH, None, &mut events)?;
        }
        Ok(Some(Batch { events }))
    }

    /// Runs the reader on a thread of its own (`tenantd-procev`), handing each event to
    /// `on_event` in the order received, until [`ReaderThread::stop`] (or its drop). The
    /// thread ends early only on a socket error, which `stop` returns.
    pub fn spawn<F>(self, mut on_event: F) -> Result<ReaderThread, ConnectorError>
    where
        F: FnMut(Stamped) + Send + 'static,
    {
        self.spawn_batches(move |batch| batch.events.into_iter().for_each(&mut on_event))
    }

    /// `spawn` handing `on_batch` each [`Batch`]: every event already queued when the
    /// thread reads (up to [`MAX_DATAGRAMS_PER_BATCH`] datagrams), so a consumer slower than
    /// the events gets them in ever larger batches instead of falling behind one by one.
    pub fn spawn_batches<F>(self, mut on_batch: F) -> Result<ReaderThread, ConnectorError>
    where
        F: FnMut(Batch) + Send + 'static,
    {
        let wake = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)
            .map_err(|e| io_err("create the stop eventfd")(e.into()))?;
        let wake = Arc::new(wake);
        let stop = Arc::clone(&wake);
        let mut conn = self;
        let handle = std::thread::Builder::new()
            .name("tenantd-procev".into())
            .spawn(move || {
                while let Some(batch) = conn.recv_or_stop(None, Some(stop.as_fd()))? {
                    on_batch(batch);
                }
                Ok(())
            })
            .map_err(io_err("start the reader thread"))?;
        Ok(ReaderThread {
            wake,
            handle: Some(handle),
        })
    }
}

impl AsFd for ProcConnector {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl Drop for ProcConnector {
    /// Withdraws the subscription, so the kernel stops making events nobody reads.
    fn drop(&mut self) {
        if let Err(e) = self.send_op(PROC_CN_MCAST_IGNORE, next_nonce()) {
            tracing::debug!("proc connector: unsubscribing failed: {e}");
        }
    }
}

/// A [`ProcConnector`] read on its own thread. `stop` (or dropping it) ends the thread, which
/// unsubscribes, and waits for it.
#[derive(Debug)]
pub struct ReaderThread {
    wake: Arc<OwnedFd>,
    handle: Option<JoinHandle<Result<(), ConnectorError>>>,
}

impl ReaderThread {
    /// Stops the thread and waits for it (at most the time `on_event` takes to return);
    /// the socket error that ended it early, if one did.
    pub fn stop(mut self) -> Result<(), ConnectorError> {
        self.stop_and_join()
    }

    /// Whether the thread has ended (only a socket error ends it before `stop`).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    fn stop_and_join(&mut self) -> Result<(), ConnectorError> {
        let Some(handle) = self.handle.take() else {
            return Ok(());
        };
        rustix::io::write(self.wake.as_fd(), &1u64.to_ne_bytes())
            .map_err(|e| io_err("signal the reader thread to stop")(e.into()))?;
        handle
            .join()
            .unwrap_or_else(|_| Err(unavailable("the reader thread panicked (in on_event)")))
    }
}

impl Drop for ReaderThread {
    fn drop(&mut self) {
        if let Err(e) = self.stop_and_join() {
            tracing::warn!("proc connector reader: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/proc_connector");

    /// A datagram as the kernel builds it (cn_proc.c: one NLMSG_DONE message, cn_msg, a
    /// proc_event with a 24-byte union).
    fn datagram(what: u32, cpu: u32, seq: u32, data: &[u32]) -> Vec<u8> {
        let mut ev = Vec::new();
        ev.extend_from_slice(&what.to_ne_bytes());
        ev.extend_from_slice(&cpu.to_ne_bytes());
        ev.extend_from_slice(&123_456_789u64.to_ne_bytes());
        for d in data {
            ev.extend_from_slice(&d.to_ne_bytes());
        }
        ev.resize(PROC_EVENT_HEADER + 24, 0);
        let mut m = Vec::new();
        let len = NLMSG_HDRLEN + CN_MSG_LEN + ev.len();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        for v in [CN_IDX_PROC, CN_VAL_PROC, seq, 0] {
            m.extend_from_slice(&v.to_ne_bytes());
        }
        m.extend_from_slice(&(ev.len() as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 2]);
        m.extend_from_slice(&ev);
        m
    }

    #[test]
    fn a_built_datagram_of_each_kind_parses() {
        let one = |what, data: &[u32]| {
            let m = parse_datagram(&datagram(what, 1, 7, data)).unwrap();
            assert_eq!(m.len(), 1);
            assert_eq!((m[0].cpu, m[0].seq, m[0].timestamp_ns), (1, 7, 123_456_789));
            m[0].body.clone()
        };
        // Distinct values, so a field read from the wrong place shows (the captures have
        // pid == tgid and ruid == euid).
        let cases = [
            (
                PROC_EVENT_FORK,
                &[1, 2, 3, 4][..],
                "Fork { parent_pid: 1, parent_tgid: 2, child_pid: 3, child_tgid: 4 }",
            ),
            (PROC_EVENT_EXEC, &[1, 2], "Exec { pid: 1, tgid: 2 }"),
            (
                PROC_EVENT_UID,
                &[1, 2, 3, 4],
                "Uid { pid: 1, tgid: 2, ruid: 3, euid: 4 }",
            ),
            (
                PROC_EVENT_GID,
                &[1, 2, 3, 4],
                "Gid { pid: 1, tgid: 2, rgid: 3, egid: 4 }",
            ),
            (
                PROC_EVENT_EXIT,
                &[1, 2, 3, 4, 5, 6],
                "Exit { pid: 1, tgid: 2, exit_code: 3, exit_signal: 4, parent_pid: 5, parent_tgid: 6 }",
            ),
        ];
        for (what, data, want) in cases {
            assert_eq!(format!("{:?}", one(what, data)), format!("Event({want})"));
        }
        assert_eq!(one(PROC_EVENT_NONE, &[1]), Body::Ack { err: 1 });
        // PROC_EVENT_COMM: reported as a kind this reader skips.
        assert_eq!(one(0x200, &[9, 9]), Body::Other { what: 0x200 });
    }

    /// Hand-made quirks a capture cannot produce: every length is checked, and nothing panics.
    #[test]
    fn short_or_inconsistent_datagrams_are_errors() {
        let good = datagram(PROC_EVENT_EXEC, 0, 0, &[42, 42]);
        for cut in [1, 15, 16, 20, 36, 40, 51] {
            assert!(parse_datagram(&good[..cut]).is_err(), "cut at {cut}");
        }
        // nlmsg_len beyond the datagram, and below the header's own size.
        let mut long = good.clone();
        long[0..4].copy_from_slice(&200u32.to_ne_bytes());
        assert!(parse_datagram(&long).is_err());
        let mut tiny = good.clone();
        tiny[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(parse_datagram(&tiny).is_err());
        // cn_msg.len beyond the message.
        let mut cn = good.clone();
        cn[32..34].copy_from_slice(&500u16.to_ne_bytes());
        let e = parse_datagram(&cn).unwrap_err();
        assert!(e.0.contains("500 bytes of data"), "{e}");
        // An exit event cut to an exec's size: the exit needs its six fields.
        let mut exit = datagram(PROC_EVENT_EXIT, 0, 0, &[1, 1, 0, 17, 1, 1]);
        let short_len = (NLMSG_HDRLEN + CN_MSG_LEN + PROC_EVENT_HEADER + 8) as u32;
        exit[0..4].copy_from_slice(&short_len.to_ne_bytes());
        exit[32..34].copy_from_slice(&((PROC_EVENT_HEADER + 8) as u16).to_ne_bytes());
        exit.truncate(short_len as usize);
        let e = parse_datagram(&exit).unwrap_err();
        assert!(e.0.contains("needs 40"), "{e}");
    }

    #[test]
    fn two_messages_in_one_datagram_and_foreign_ones_skipped() {
        let mut two = datagram(PROC_EVENT_EXEC, 0, 1, &[10, 10]);
        // Another connector's id (CN_IDX_CIFS = 2) and an NLMSG_NOOP are skipped.
        let mut other = datagram(PROC_EVENT_EXEC, 0, 2, &[11, 11]);
        other[16..20].copy_from_slice(&2u32.to_ne_bytes());
        two.extend_from_slice(&other);
        let mut noop = datagram(PROC_EVENT_EXEC, 0, 3, &[12, 12]);
        noop[4..6].copy_from_slice(&1u16.to_ne_bytes());
        two.extend_from_slice(&noop);
        two.extend_from_slice(&datagram(PROC_EVENT_EXEC, 1, 4, &[13, 13]));
        let pids: Vec<_> = parse_datagram(&two)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        assert_eq!(
            pids,
            [
                Body::Event(ProcEvent::Exec { pid: 10, tgid: 10 }),
                Body::Event(ProcEvent::Exec { pid: 13, tgid: 13 })
            ]
        );
    }

    #[test]
    fn a_gap_in_a_cpus_numbering_is_a_loss_and_other_cpus_are_apart() {
        let mut s = Sequences::default();
        assert_eq!(s.observe(0, 10), None);
        assert_eq!(s.observe(1, 500), None);
        assert_eq!(s.observe(0, 11), None);
        assert_eq!(s.observe(1, 501), None);
        assert_eq!(s.observe(0, 15), Some(Lost::Skipped { cpu: 0, missing: 3 }));
        assert_eq!(s.observe(0, 16), None);
        // Wrapping at 2^32 is not a loss; an old kernel's acknowledgement has no CPU.
        assert_eq!(s.observe(2, u32::MAX), None);
        assert_eq!(s.observe(2, 0), None);
        assert_eq!(s.observe(NO_CPU, 99), None);
        // A restarted count (backwards) is not a loss.
        assert_eq!(s.observe(0, 3), None);
        assert_eq!(s.observe(0, 4), None);
    }

    #[test]
    fn no_answer_names_the_first_unmet_condition() {
        let ok = Conditions {
            connectors: Some("Name            ID\ncn_proc         1:1\n".into()),
            pid_ns: Some(INIT_PID_NS.into()),
            user_ns: Some(INIT_USER_NS.into()),
            cap_eff: Some(0x1ff_ffff_ffff),
        };
        let why = |c: &Conditions| c.why_no_answer(Duration::from_secs(2));
        assert!(
            why(&ok).contains("no missing kernel option"),
            "{}",
            why(&ok)
        );
        let no_events = Conditions {
            connectors: Some("Name            ID\ncn_cifs         2:1\n".into()),
            ..ok.clone()
        };
        assert!(why(&no_events).contains("CONFIG_PROC_EVENTS"));
        let pid_ns = Conditions {
            pid_ns: Some("pid:[4026532999]".into()),
            ..ok.clone()
        };
        assert!(why(&pid_ns).contains("PID namespace pid:[4026532999]"));
        let user_ns = Conditions {
            user_ns: Some("user:[4026532998]".into()),
            ..ok.clone()
        };
        assert!(why(&user_ns).contains("user namespace"));
        let no_cap = Conditions {
            cap_eff: Some(0),
            ..ok.clone()
        };
        assert!(why(&no_cap).contains("CAP_NET_ADMIN"));
        // Unreadable /proc files are not reasons.
        assert!(why(&Conditions::default()).contains("no missing kernel option"));
        assert!(refused(libc::EPERM as u32).contains("CAP_NET_ADMIN"));
    }

    proptest::proptest! {
        /// Any bytes: an error or messages, never a panic.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = parse_datagram(&bytes);
        }

        /// A real datagram with any one byte changed: still no panic.
        #[test]
        fn a_changed_byte_never_panics(at in 0usize..76, byte in proptest::num::u8::ANY) {
            let mut d = datagram(PROC_EVENT_EXIT, 0, 0, &[1, 1, 0, 17, 1, 1]);
            d[at] = byte;
            let _ = parse_datagram(&d);
        }
    }

    /// Reads a captured datagram of tests/fixtures/proc_connector/KERNEL/NAME.bin.
    fn fixture(kernel: &str, name: &str) -> Vec<Message> {
        let path = format!("{FIXTURES}/{kernel}/{name}.bin");
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        parse_datagram(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// A message as tests/fixtures/proc_connector/capture.py writes it in expected.txt: the
    /// kind's code and its union's u32 fields, decoded there by Python's struct.
    fn as_capture_line(name: &str, m: &Message) -> String {
        let (what, data): (u32, Vec<u32>) = match &m.body {
            Body::Ack { err } => (PROC_EVENT_NONE, vec![*err]),
            Body::Other { what } => (*what, vec![]),
            Body::Event(e) => match *e {
                ProcEvent::Fork {
                    parent_pid,
                    parent_tgid,
                    child_pid,
                    child_tgid,
                } => (
                    PROC_EVENT_FORK,
                    vec![parent_pid, parent_tgid, child_pid, child_tgid],
                ),
                ProcEvent::Exec { pid, tgid } => (PROC_EVENT_EXEC, vec![pid, tgid]),
                ProcEvent::Uid {
                    pid,
                    tgid,
                    ruid,
                    euid,
                } => (PROC_EVENT_UID, vec![pid, tgid, ruid, euid]),
                ProcEvent::Gid {
                    pid,
                    tgid,
                    rgid,
                    egid,
                } => (PROC_EVENT_GID, vec![pid, tgid, rgid, egid]),
                ProcEvent::Exit {
                    pid,
                    tgid,
                    exit_code,
                    exit_signal,
                    parent_pid,
                    parent_tgid,
                } => (
                    PROC_EVENT_EXIT,
                    vec![pid, tgid, exit_code, exit_signal, parent_pid, parent_tgid],
                ),
                ProcEvent::Lost(_) => panic!("the parser never makes Lost"),
            },
        };
        let data: Vec<String> = data.iter().map(u32::to_string).collect();
        format!(
            "{name} what={what:#x} cpu={} seq={} ack={} ts={} data={}",
            m.cpu,
            m.seq,
            m.ack,
            m.timestamp_ns,
            data.join(",")
        )
    }

    /// The datagrams captured from two real kernels (the host's 6.18 and the VM's 6.1): the
    /// parser reads what Python's struct read from the same bytes.
    #[test]
    fn captured_datagrams_parse_as_the_capture_decoded_them() {
        let kernels = ["6.18.44-fc-v1300", "6.1.0-57-amd64"];
        for kernel in kernels {
            let expected = std::fs::read_to_string(format!("{FIXTURES}/{kernel}/expected.txt"))
                .unwrap_or_else(|e| panic!("{kernel}/expected.txt: {e}"));
            let mut names = Vec::new();
            for line in expected.lines() {
                let name = line.split_whitespace().next().unwrap();
                let m = fixture(kernel, name);
                assert_eq!(m.len(), 1, "{kernel}/{name}: one message per datagram");
                assert_eq!(as_capture_line(name, &m[0]), line, "{kernel}/{name}");
                names.push(name);
            }
            assert_eq!(
                names,
                ["ack", "exec", "fork", "uid", "gid", "exit"],
                "{kernel}"
            );
        }
    }

    /// What each capture holds, typed: `sh -c 'exit 3'` exits with status 3 << 8 and SIGCHLD
    /// (17) for its parent; `setpriv --reuid=65534` and `--regid=65534` set both ids.
    #[test]
    fn captured_events_are_the_workloads_they_came_from() {
        for kernel in ["6.18.44-fc-v1300", "6.1.0-57-amd64"] {
            let event = |name| match &fixture(kernel, name)[0].body {
                Body::Event(e) => e.clone(),
                other => panic!("{kernel}/{name}: {other:?}"),
            };
            assert!(matches!(event("exec"), ProcEvent::Exec { pid, tgid } if pid == tgid));
            assert!(matches!(
                event("uid"),
                ProcEvent::Uid {
                    ruid: 65534,
                    euid: 65534,
                    ..
                }
            ));
            assert!(matches!(
                event("gid"),
                ProcEvent::Gid {
                    rgid: 65534,
                    egid: 65534,
                    ..
                }
            ));
            assert!(matches!(
                event("fork"),
                ProcEvent::Fork { child_pid, child_tgid, .. } if child_pid == child_tgid
            ));
            assert!(matches!(
                event("exit"),
                ProcEvent::Exit {
                    exit_code: 0x300,
                    exit_signal: 17,
                    ..
                }
            ));
            let ack = &fixture(kernel, "ack")[0];
            assert_eq!(ack.body, Body::Ack { err: 0 }, "{kernel}");
        }
    }
}
