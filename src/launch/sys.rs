//! The calls that need `unsafe`, the crate's only ones: `fork` (for `--private-pid`) and the
//! `SIOCSIFFLAGS` ioctl that brings the loopback interface of a new network namespace up, and
//! glibc's `malloc_trim` and `mallopt` for `tenantd serve` (`trim_heap`, `tune_allocator`), and the `PIDFD_GET_INFO` ioctl
//! the placement rescan reads a process's ids with (`pidfd_ids`).
#![allow(unsafe_code)]

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
use nix::unistd::ForkResult;
use std::os::fd::AsRawFd;

/// `fork()`. Only called once [`super::single_threaded`] has said the process has one thread.
pub fn fork() -> nix::Result<ForkResult> {
    // SAFETY: the process has a single thread (the async runtime was shut down and its threads
    // joined, which the caller checked in /proc/self/status), so no lock can be held by a
    // thread that does not exist in the child, and the child may allocate and run Rust code.
    unsafe { nix::unistd::fork() }
}

/// Gives the heap's free pages back to the kernel: glibc's `malloc_trim(0)`, which releases
/// the free memory of every arena, not only the top of the main one (glibc >= 2.8; issue 15:
/// at 10,000 tenants the daemon's two arenas kept 30-36 MB free). Returns whether any was
/// released. A no-op on other C libraries.
pub fn trim_heap() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers and is thread-safe (it locks each arena);
        // it only returns free pages, so no live allocation is touched.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Caps glibc's malloc at `arenas` arenas and makes it give every block of `mmap_bytes` or
/// more back to the kernel when freed, each unless the environment already sets it
/// (`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, as packaging/tenantd.service does). Call it
/// before any thread starts. Returns which of the two it set. A no-op on other C libraries.
///
/// Issue 15, target 4: glibc gives each new thread an arena of its own, up to eight per core;
/// the store's compaction runs on whichever blocking thread holds the sampler at the time, and
/// at 1,000 tenants eight arenas each kept 10-11 MB of its freed working set between two trims
/// (the resident set 52 -> 102 MiB for a live heap under 30 MB, heaptrack and smaps).
pub fn tune_allocator(arenas: i32, mmap_bytes: i32) -> (bool, bool) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set = |var: &str, param: libc::c_int, value: i32| {
            // SAFETY: mallopt takes no pointers; called before any other thread exists.
            std::env::var_os(var).is_none() && unsafe { libc::mallopt(param, value) == 1 }
        };
        (
            set("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, arenas),
            set("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, mmap_bytes),
        )
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = (arenas, mmap_bytes);
        (false, false)
    }
}

/// A process's ids as `PIDFD_GET_INFO` (Linux 6.13) gives them, in the caller's user and PID
/// namespaces: what `/proc/PID/status` says in its `Tgid:`, `Uid:` and `Gid:` lines (real and
/// effective), without the supplementary groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PidfdIds {
    pub tgid: u32,
    pub ruid: u32,
    pub euid: u32,
    pub rgid: u32,
    pub egid: u32,
}

/// `struct pidfd_info` of `<linux/pidfd.h>`, its first published size (64 bytes).
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    spare0: u32,
}

/// `PIDFD_INFO_CREDS`: the ids are asked for (and always returned).
const PIDFD_INFO_CREDS: u64 = 1 << 1;
/// `_IOWR(PIDFS_IOCTL_MAGIC 0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: u64 = (3 << 30) | ((size_of::<PidfdInfo>() as u64) << 16) | (0xFF << 8) | 11;

/// The ids of process `pid` (of the caller's PID namespace) through a pidfd: one
/// `pidfd_open`, one ioctl and a close, with no text for the kernel to format (a rescan of
/// 5,000 processes: 2-4 us each against 8 us for `status`; issue 17). Errors: `ESRCH` when
/// the process is gone, `ENOTTY` (or `EINVAL`) on a kernel older than 6.13, `EINVAL` for a
/// thread that does not lead its group.
pub fn pidfd_ids(pid: u32) -> std::io::Result<PidfdIds> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ESRCH))?;
    let fd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())?;
    let mut info = PidfdInfo {
        mask: PIDFD_INFO_CREDS,
        ..PidfdInfo::default()
    };
    // SAFETY: `fd` is an open pidfd; the ioctl writes at most `size_of::<PidfdInfo>()` bytes
    // (the size encoded in the request) into `info`, which lives across the call.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if info.mask & PIDFD_INFO_CREDS == 0 {
        return Err(std::io::Error::from_raw_os_error(libc::ENOTTY));
    }
    Ok(PidfdIds {
        tgid: info.tgid,
        ruid: info.ruid,
        euid: info.euid,
        rgid: info.rgid,
        egid: info.egid,
    })
}

/// Brings `lo` up in the current network namespace (a new namespace has it down).
pub fn loopback_up() -> Result<(), String> {
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| format!("cannot open a socket to bring lo up: {e}"))?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *s as libc::c_char;
    }
    // SAFETY: `req` is a valid ifreq naming "lo", and SIOCGIFFLAGS/SIOCSIFFLAGS read and write
    // only its `ifru_flags` member; the socket is open for the whole call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if rc != 0 {
        return Err(format!(
            "cannot read the flags of lo (SIOCGIFFLAGS): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: SIOCGIFFLAGS filled `ifru_flags`, the member read here.
    unsafe { req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc != 0 {
        return Err(format!(
            "cannot bring lo up (SIOCSIFFLAGS): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Issue 15: memory freed in small blocks (below the mmap threshold, so it stays in the
    /// arena) is given back: glibc answers that it released some.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn pidfd_ids_are_the_ids_status_shows() {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = |key: &str| -> Vec<u32> {
            let l = status.lines().find(|l| l.starts_with(key)).unwrap();
            l[key.len()..]
                .split_whitespace()
                .map(|x| x.parse().unwrap())
                .collect()
        };
        let (uid, gid, tgid) = (line("Uid:"), line("Gid:"), line("Tgid:"));
        match super::pidfd_ids(std::process::id()) {
            Ok(ids) => assert_eq!(
                (ids.tgid, ids.ruid, ids.euid, ids.rgid, ids.egid),
                (tgid[0], uid[0], uid[1], gid[0], gid[1])
            ),
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
                eprintln!("NOT TESTED: this kernel has no PIDFD_GET_INFO (Linux 6.13): {e}")
            }
            Err(e) => panic!("pidfd_ids of this process: {e}"),
        }
        // A PID no process has (above the largest pid_max) is gone.
        let e = super::pidfd_ids(1 << 23).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ESRCH), "{e}");
    }

    /// glibc takes both settings, each only where the environment does not set it.
    #[test]
    fn tune_allocator_sets_what_the_environment_leaves() {
        let unset = |v: &str| std::env::var_os(v).is_none();
        assert_eq!(
            super::tune_allocator(2, 128 * 1024),
            (unset("MALLOC_ARENA_MAX"), unset("MALLOC_MMAP_THRESHOLD_"))
        );
    }

    #[test]
    fn trim_heap_gives_freed_memory_back() {
        let blocks: Vec<Vec<u8>> = (0..32 * 1024).map(|i| vec![i as u8; 1024]).collect();
        assert_eq!(blocks.len(), 32 * 1024);
        drop(blocks);
        assert!(
            super::trim_heap(),
            "32 MiB freed in 1 KiB blocks, none released"
        );
    }
}
