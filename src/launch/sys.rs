//! The two system calls of the launch that need `unsafe`: `fork` (for `--private-pid`) and the
//! `SIOCSIFFLAGS` ioctl that brings the loopback interface of a new network namespace up.
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
