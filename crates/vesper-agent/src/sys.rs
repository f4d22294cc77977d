//! Every raw system call the agent makes, each with its safety argument.

use std::io;
use std::os::fd::RawFd;

/// poll(2) on `fds`; returns the number of ready descriptors (0 on timeout).
/// EINTR is reported as 0 ready so callers simply loop.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the whole call
    // and its length is passed alongside.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

pub fn pollfd(fd: RawFd, events: i16) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// Mounts tracefs at `target` (the agent needs it for tracepoint ids and formats).
pub fn mount_tracefs(target: &str) -> io::Result<()> {
    let src = c"nodev";
    let fstype = c"tracefs";
    let target = std::ffi::CString::new(target).map_err(io::Error::other)?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call;
    // data is null, which mount(2) accepts.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// mlockall's flag (Linux 4.4+; not in the libc crate for this target): lock pages as they
/// are faulted in, not every page of every mapping at once.
const MCL_ONFAULT: libc::c_int = 4;
const LOCK_FLAGS: libc::c_int = libc::MCL_CURRENT | libc::MCL_FUTURE | MCL_ONFAULT;

/// Locks the pages the agent uses, now and later, so guest memory pressure cannot page the
/// agent out while it is reporting that very pressure. On fault: a page the agent never
/// touches (most of its binary, freed heap) is not made resident just to be locked
/// (kernels before 4.4 lack it and lock everything).
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: mlockall takes only flags and touches no memory of ours.
    let mut r = unsafe { libc::mlockall(LOCK_FLAGS) };
    if r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL) {
        // SAFETY: as above.
        r = unsafe { libc::mlockall(LOCK_FLAGS & !MCL_ONFAULT) };
    }
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Allocations of at least this size get their own mapping, returned to the kernel when
/// freed: record batches and frames come and go without pinning heap pages.
const MMAP_THRESHOLD: libc::c_int = 64 * 1024;

/// Sets the allocator up for a small, long-lived process: big buffers from mmap (a fixed
/// threshold; glibc's default rises to 32 MiB after the first big free, after which a
/// burst's buffers stay in the heap), and a heap whose free top is given back early.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only changes allocator parameters; it is called at start, before
    // any other thread exists, and touches no memory of ours.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MMAP_THRESHOLD);
    }
}

/// Gives the heap's free pages back to the kernel. Locked pages cannot be given back
/// (madvise refuses them): with `locked`, the lock is lifted for the trim and taken again,
/// on fault, so the pages given back stay out.
pub fn give_back_free_heap(locked: bool) {
    if locked {
        // SAFETY: munlockall takes no arguments and touches no memory of ours.
        unsafe { libc::munlockall() };
    }
    trim_heap();
    if locked && let Err(e) = lock_memory() {
        log::warn!("mlockall again failed ({e}); the agent is unlocked");
    }
}

/// Merges the heap's free chunks and gives their pages back to the kernel (pages that are
/// locked stay).
pub fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim works on the allocator's own free lists, with no pointer of ours.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Bytes of the heap that are free (in the allocator's bins, resident or not).
pub fn heap_free_bytes() -> usize {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: mallinfo2 only reads the allocator's own counters and returns a copy.
        unsafe { libc::mallinfo2() }.fordblks
    }
    #[cfg(not(target_env = "gnu"))]
    0
}

/// The running kernel's release string (uname -r).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain old data; zeroed is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname for the duration of the call.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The attribute of the bpf(2) map element commands (`union bpf_attr`'s first form).
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    /// `value` for lookups, `next_key` for BPF_MAP_GET_NEXT_KEY.
    value: u64,
    flags: u64,
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

/// One bpf(2) map element command; `key` and `value` are each null or a buffer the
/// kernel reads or writes, whose size the caller checked against the map's.
fn map_elem(cmd: libc::c_long, fd: RawFd, key: *const u8, value: *mut u8) -> io::Result<()> {
    let attr = MapElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: key as u64,
        value: value as u64,
        flags: 0,
    };
    // SAFETY: `attr` is a valid bpf_attr prefix for the map element commands and lives
    // across the call; its pointers are null or point at buffers the callers size to the
    // map's key and value sizes (see below), exclusively borrowed for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            &attr as *const MapElemAttr,
            std::mem::size_of::<MapElemAttr>(),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The key after `key` (the first with `None`) into `next`, which holds exactly one key
/// of map `fd`; false at the end.
pub fn map_next_key(fd: RawFd, key: Option<&[u8]>, next: &mut [u8]) -> io::Result<bool> {
    let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
    match map_elem(BPF_MAP_GET_NEXT_KEY, fd, key, next.as_mut_ptr()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The value of `key` into `value` (one value, or one per possible CPU for a per-CPU map:
/// the caller sizes it); false if the key is gone.
pub fn map_lookup(fd: RawFd, key: &[u8], value: &mut [u8]) -> io::Result<bool> {
    match map_elem(BPF_MAP_LOOKUP_ELEM, fd, key.as_ptr(), value.as_mut_ptr()) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `key` (already gone is fine).
pub fn map_delete(fd: RawFd, key: &[u8]) -> io::Result<()> {
    match map_elem(BPF_MAP_DELETE_ELEM, fd, key.as_ptr(), std::ptr::null_mut()) {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}
