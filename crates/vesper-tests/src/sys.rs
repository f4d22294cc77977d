//! The test kit's system calls.

/// Sets the calling thread's comm (what the kernel reports as the task name).
pub fn set_comm(name: &str) {
    let mut buf = [0u8; 16];
    let n = name.len().min(15);
    buf[..n].copy_from_slice(&name.as_bytes()[..n]);
    // SAFETY: PR_SET_NAME reads a NUL-terminated string of at most 16 bytes from a
    // pointer; `buf` is 16 bytes with a NUL at index >= n.
    unsafe { libc::prctl(libc::PR_SET_NAME, buf.as_ptr() as libc::c_ulong, 0, 0, 0) };
}

pub fn ignore_signal(sig: i32) {
    // SAFETY: installing SIG_IGN has no handler code to run and no memory to share.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// kill(2); true on success.
pub fn kill(pid: i32, sig: i32) -> bool {
    // SAFETY: kill takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) == 0 }
}

/// getppid(2): the cheapest traced system call, the benchmarks' event source.
pub fn getppid() -> i32 {
    // SAFETY: getppid has no arguments, cannot fail and touches no memory of ours.
    unsafe { libc::getppid() }
}
