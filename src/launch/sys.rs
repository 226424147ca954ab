//! The calls that need `unsafe`, the crate's only ones: `fork` (for `--private-pid`) and the
//! `SIOCSIFFLAGS` ioctl that brings the loopback interface of a new network namespace up, and
//! glibc's `malloc_trim` for `tenantd serve` (`trim_heap`).
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
