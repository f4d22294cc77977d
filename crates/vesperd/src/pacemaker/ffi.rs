//! The handful of libcrmcommon calls vesperd makes, loaded at run time by SONAME.
//!
//! Loading at run time (not linking) keeps vesperd one binary for every host: a host
//! without Pacemaker's library, or with a version we do not know, uses the tools instead.
//! The SONAME tells the series, and the series tells the one thing that differs between
//! them for these calls: the value of `pcmk_ipc_controld` (3.0 added `pcmk_ipc_unknown`
//! before it). The signatures are the same in 2.1 and 3.0 (`crm/common/ipc.h`,
//! `crm/common/ipc_controld.h`).
//!
//! libcrmcommon is not thread-safe: a [`Connection`] is created, used and dropped on one
//! thread (it is `!Send`).

use std::cell::Cell;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;
use std::time::{Duration, Instant};

/// A Pacemaker library series vesperd knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Series {
    pub soname: &'static str,
    /// The Pacemaker release series, as users name it.
    pub pacemaker: &'static str,
    /// `pcmk_ipc_controld` in this series' `enum pcmk_ipc_server`.
    controld: c_int,
}

/// Newest first.
pub const KNOWN: [Series; 2] = [
    Series {
        soname: "libcrmcommon.so.68",
        pacemaker: "3.0",
        controld: 3,
    },
    Series {
        soname: "libcrmcommon.so.34",
        pacemaker: "2.1",
        controld: 2,
    },
];

/// Where the dynamic loader looks on Debian-family hosts, for telling "absent" apart from
/// "present but unknown".
const LIB_DIRS: [&str; 3] = ["/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"];

/// Why the in-process path is not available.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("no libcrmcommon (Pacemaker's client library) on this host")]
    Absent,
    #[error("{found} is a Pacemaker library version vesperd does not know (it knows {known})")]
    Unknown { found: String, known: String },
    #[error("{soname}: {reason}")]
    Broken {
        soname: &'static str,
        reason: String,
    },
}

type Callback = unsafe extern "C" fn(*mut c_void, c_int, c_int, *mut c_void, *mut c_void);
type Str = *const c_char;

/// libcrmcommon, opened, with the functions vesperd calls.
#[derive(Debug)]
pub struct Lib {
    pub series: Series,
    new_api: unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int,
    free_api: unsafe extern "C" fn(*mut c_void),
    register: unsafe extern "C" fn(*mut c_void, Callback, *mut c_void),
    connect: unsafe extern "C" fn(*mut c_void, c_int) -> c_int,
    poll: unsafe extern "C" fn(*const c_void, c_int) -> c_int,
    dispatch: unsafe extern "C" fn(*mut c_void),
    fail: unsafe extern "C" fn(*mut c_void, Str, Str, Str, Str, Str, Str, Str) -> c_int,
    rc_str: unsafe extern "C" fn(c_int) -> Str,
    // Last: the function pointers above are valid while this is open.
    _lib: libloading::Library,
}

/// `enum pcmk_ipc_dispatch`: the caller polls (same value in 2.1 and 3.0).
const DISPATCH_POLL: c_int = 1;
/// `enum pcmk_ipc_event` (same in 2.1 and 3.0).
const EVENT_DISCONNECT: c_int = 1;
const EVENT_REPLY: c_int = 2;

impl Lib {
    /// Opens the newest known libcrmcommon.
    pub fn open() -> Result<Lib, LoadError> {
        for series in KNOWN {
            // SAFETY: loading libcrmcommon runs its ELF constructors, which only set up
            // its own globals (no threads, no signal handlers).
            let lib = match unsafe { libloading::Library::new(series.soname) } {
                Ok(l) => l,
                Err(_) => continue,
            };
            return Self::bind(lib, series).map_err(|e| LoadError::Broken {
                soname: series.soname,
                reason: e.to_string(),
            });
        }
        match other_versions() {
            Some(found) => Err(LoadError::Unknown {
                found,
                known: KNOWN.map(|s| s.soname).join(", "),
            }),
            None => Err(LoadError::Absent),
        }
    }

    fn bind(lib: libloading::Library, series: Series) -> Result<Lib, libloading::Error> {
        // SAFETY: each symbol is looked up with the C signature declared for it in
        // Pacemaker's public headers (2.1 and 3.0 agree); the copied function pointers are
        // kept beside the library, which stays open as long as they do.
        unsafe {
            Ok(Lib {
                series,
                new_api: *lib.get(b"pcmk_new_ipc_api\0")?,
                free_api: *lib.get(b"pcmk_free_ipc_api\0")?,
                register: *lib.get(b"pcmk_register_ipc_callback\0")?,
                connect: *lib.get(b"pcmk_connect_ipc\0")?,
                poll: *lib.get(b"pcmk_poll_ipc\0")?,
                dispatch: *lib.get(b"pcmk_dispatch_ipc\0")?,
                fail: *lib.get(b"pcmk_controld_api_fail\0")?,
                rc_str: *lib.get(b"pcmk_rc_str\0")?,
                _lib: lib,
            })
        }
    }

    /// Pacemaker's words for a standard return code.
    pub fn describe(&self, rc: c_int) -> String {
        // SAFETY: pcmk_rc_str accepts any int and returns a static string (or NULL).
        let p = unsafe { (self.rc_str)(rc) };
        if p.is_null() {
            return format!("error {rc}");
        }
        // SAFETY: non-NULL results of pcmk_rc_str are NUL-terminated static strings.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// A `libcrmcommon.so.N` that is not one of [`KNOWN`], if any.
fn other_versions() -> Option<String> {
    LIB_DIRS.iter().find_map(|dir| {
        std::fs::read_dir(dir).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let rest = name.strip_prefix("libcrmcommon.so.")?;
            (!rest.contains('.') && !KNOWN.iter().any(|s| s.soname == name)).then_some(name)
        })
    })
}

/// What the callback saw; lives in a box whose address the library holds. Cells, because
/// the library writes them (through the callback) while the connection is borrowed.
#[derive(Debug, Default)]
struct Events {
    replies: Cell<u32>,
    status: Cell<c_int>,
    disconnected: Cell<bool>,
}

/// A failure of one call, with Pacemaker's words.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CallError {
    #[error("{call}: {reason}")]
    Failed { call: &'static str, reason: String },
    #[error("the controller closed the connection")]
    Disconnected,
    #[error("no reply from the controller within {0:?}")]
    NoReply(Duration),
    #[error("the controller refused the request (exit status {0})")]
    Refused(c_int),
    #[error("an argument holds a NUL byte")]
    Nul,
}

/// One open connection to the controller.
#[derive(Debug)]
pub struct Connection<'l> {
    lib: &'l Lib,
    api: *mut c_void,
    events: Box<Events>,
    // libcrmcommon is not thread-safe: keep the connection on its thread.
    _not_send: PhantomData<*mut ()>,
}

unsafe extern "C" fn on_event(
    _api: *mut c_void,
    kind: c_int,
    status: c_int,
    _data: *mut c_void,
    user: *mut c_void,
) {
    // SAFETY: `user` is the `Events` box registered with this connection; it outlives the
    // connection (dropped after pcmk_free_ipc_api), and the callback only runs inside
    // pcmk_dispatch_ipc on the connection's own thread. Only shared references are made.
    let events = unsafe { &*(user as *const Events) };
    match kind {
        EVENT_REPLY => {
            events.replies.set(events.replies.get() + 1);
            events.status.set(status);
        }
        EVENT_DISCONNECT => events.disconnected.set(true),
        _ => {}
    }
}

impl<'l> Connection<'l> {
    /// Connects to the controller (sends the hello it needs).
    pub fn open(lib: &'l Lib) -> Result<Connection<'l>, CallError> {
        let mut api: *mut c_void = std::ptr::null_mut();
        // SAFETY: pcmk_new_ipc_api writes a new API object to `api` and returns a
        // standard code; the server value is the one of this library's series.
        let rc = unsafe { (lib.new_api)(&mut api, lib.series.controld) };
        if rc != 0 || api.is_null() {
            return Err(CallError::Failed {
                call: "pcmk_new_ipc_api",
                reason: lib.describe(rc),
            });
        }
        let conn = Connection {
            lib,
            api,
            events: Box::default(),
            _not_send: PhantomData,
        };
        let user = &*conn.events as *const Events as *mut c_void;
        // SAFETY: `api` is live; the callback matches pcmk_ipc_callback_t, and `user`
        // points into a box that lives as long as `api` (see Drop).
        unsafe { (lib.register)(conn.api, on_event, user) };
        // SAFETY: `api` is live and not yet connected.
        let rc = unsafe { (lib.connect)(conn.api, DISPATCH_POLL) };
        if rc != 0 {
            return Err(CallError::Failed {
                call: "pcmk_connect_ipc",
                reason: lib.describe(rc),
            });
        }
        Ok(conn)
    }

    /// Asks the controller to record a failure of `resource` on `node`, and waits for its
    /// acknowledgement. `Err(NoReply | Disconnected)` means the request may have been
    /// accepted: the caller must not send it again.
    pub fn fail(
        &self,
        node: &str,
        resource: &str,
        agent: Option<(&str, Option<&str>, &str)>,
        timeout: Duration,
    ) -> Result<(), FailError> {
        let c = |s: &str| CString::new(s).map_err(|_| FailError::NotSent(CallError::Nul));
        let node = c(node)?;
        let rsc = c(resource)?;
        let (class, provider, kind) = match agent {
            Some((cl, pr, ty)) => (Some(c(cl)?), pr.map(c).transpose()?, Some(c(ty)?)),
            None => (None, None, None),
        };
        let ptr = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        let before = self.events.replies.get();
        // SAFETY: `api` is live and connected; every pointer is a NUL-terminated string
        // that outlives the call, or NULL where the header allows it (router node, long
        // id, agent fields).
        let rc = unsafe {
            (self.lib.fail)(
                self.api,
                node.as_ptr(),
                std::ptr::null(),
                rsc.as_ptr(),
                rsc.as_ptr(),
                ptr(&class),
                ptr(&provider),
                ptr(&kind),
            )
        };
        if rc != 0 {
            return Err(FailError::NotSent(CallError::Failed {
                call: "pcmk_controld_api_fail",
                reason: self.lib.describe(rc),
            }));
        }
        let deadline = Instant::now() + timeout;
        while self.events.replies.get() == before {
            if self.events.disconnected.get() {
                return Err(FailError::Unknown(CallError::Disconnected));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(FailError::Unknown(CallError::NoReply(timeout)));
            }
            let ms = left.as_millis().clamp(1, 1000) as c_int;
            // SAFETY: `api` is live; pcmk_poll_ipc only waits on its socket.
            match unsafe { (self.lib.poll)(self.api, ms) } {
                // SAFETY: `api` is live; dispatch runs `on_event` on this thread.
                0 => unsafe { (self.lib.dispatch)(self.api) },
                libc::EAGAIN => {}
                rc => {
                    return Err(FailError::Unknown(CallError::Failed {
                        call: "pcmk_poll_ipc",
                        reason: self.lib.describe(rc),
                    }));
                }
            }
        }
        match self.events.status.get() {
            0 => Ok(()),
            s => Err(FailError::NotSent(CallError::Refused(s))),
        }
    }

    /// Whether the controller has hung up since the last call.
    pub fn is_closed(&self) -> bool {
        self.events.disconnected.get()
    }
}

/// A fail request that did not complete.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum FailError {
    /// Not recorded: sending again (after reconnecting) cannot count it twice.
    #[error("{0}")]
    NotSent(CallError),
    /// Sent, but whether it was recorded is not known: never send it again.
    #[error("{0}")]
    Unknown(CallError),
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        // SAFETY: `api` came from pcmk_new_ipc_api and is freed once, here (which also
        // disconnects); the events box is dropped after this, so the callback never sees
        // a dangling pointer.
        unsafe { (self.lib.free_api)(self.api) };
    }
}
