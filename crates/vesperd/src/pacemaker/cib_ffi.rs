//! The libcib calls of the CIB watch: sign on read-only, subscribe to change
//! notifications, hear of a lost connection. Loaded at run time by SONAME, like
//! libcrmcommon ([`super::ffi`]).
//!
//! libcib's operations are a table of function pointers (`cib_api_operations_t`) reached
//! through the `cmds` member of `cib_t`, and both layouts changed between 2.1 and 3.0
//! (3.0 dropped `op_callback` from `cib_t`, and `signon_raw`, `set_op_callback` and
//! `inputfd` from the table): [`Layout`] holds the slots of each series, read off
//! `crm/cib/cib_types.h` of Pacemaker 2.1.5 and 3.0.0.
//!
//! The connection dispatches through GLib's default main context: the thread that owns a
//! [`CibConnection`] runs [`CibLib::iterate`] and nothing else iterates that context.

use std::ffi::{c_char, c_int, c_void};
use std::marker::PhantomData;

/// Where libcib keeps what vesperd calls, in one series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub soname: &'static str,
    /// Byte offset of `cmds` in `struct cib_s`.
    cmds: usize,
    /// Slots (pointer-sized, from 0) in `cib_api_operations_t`.
    signon: usize,
    signoff: usize,
    add_notify_callback: usize,
    set_connection_dnotify: usize,
}

/// By the libcrmcommon series they ship with.
pub fn layout(crmcommon: &str) -> Option<Layout> {
    match crmcommon {
        // Pacemaker 3.0: state, type, variant, call_id, call_timeout (5 × int), then
        // variant_opaque, delegate_fn, notify_list, cmds.
        "libcrmcommon.so.68" => Some(Layout {
            soname: "libcib.so.54",
            cmds: 48,
            signon: 0,
            signoff: 1,
            add_notify_callback: 3,
            set_connection_dnotify: 5,
        }),
        // Pacemaker 2.1: op_callback sits before cmds; the table has signon_raw (1) and
        // set_op_callback (4).
        "libcrmcommon.so.34" => Some(Layout {
            soname: "libcib.so.27",
            cmds: 56,
            signon: 0,
            signoff: 2,
            add_notify_callback: 5,
            set_connection_dnotify: 7,
        }),
        _ => None,
    }
}

/// `enum cib_conn_type`: a read-only connection (same in 2.1 and 3.0).
const CIB_QUERY: c_int = 1;
/// The notification of every CIB change (`PCMK__VALUE_CIB_DIFF_NOTIFY`).
const DIFF_NOTIFY: &[u8] = b"cib_diff_notify\0";
const CLIENT_NAME: &[u8] = b"vesperd\0";

type CibNew = unsafe extern "C" fn() -> *mut c_void;
type CibDelete = unsafe extern "C" fn(*mut c_void);
type Signon = unsafe extern "C" fn(*mut c_void, *const c_char, c_int) -> c_int;
type Signoff = unsafe extern "C" fn(*mut c_void) -> c_int;
/// The notify callback: `(const char *event, xmlNode *msg)`; it has no user data.
pub type NotifyFn = unsafe extern "C" fn(*const c_char, *mut c_void);
type AddNotify = unsafe extern "C" fn(*mut c_void, *const c_char, NotifyFn) -> c_int;
/// The lost-connection callback: `(gpointer user_data)`.
pub type LostFn = unsafe extern "C" fn(*mut c_void);
type SetDnotify = unsafe extern "C" fn(*mut c_void, LostFn) -> c_int;
type Iterate = unsafe extern "C" fn(*mut c_void, c_int) -> c_int;
type StrError = unsafe extern "C" fn(c_int) -> *const c_char;

/// Why the watch cannot start.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CibError {
    #[error("no CIB library layout is known for {0}")]
    NoLayout(String),
    #[error("{soname}: {reason}")]
    Load {
        soname: &'static str,
        reason: String,
    },
    #[error("{call}: {reason}")]
    Call { call: &'static str, reason: String },
}

/// libcib and GLib, opened.
#[derive(Debug)]
pub struct CibLib {
    pub layout: Layout,
    new: CibNew,
    delete: CibDelete,
    iterate: Iterate,
    strerror: StrError,
    // Last: the function pointers above are valid while these are open.
    _cib: libloading::Library,
    _glib: libloading::Library,
}

impl CibLib {
    pub fn open(crmcommon: &str) -> Result<CibLib, CibError> {
        let layout = layout(crmcommon).ok_or_else(|| CibError::NoLayout(crmcommon.into()))?;
        let load = |soname: &'static str| {
            // SAFETY: libcib's and GLib's ELF constructors only set up their own globals
            // (libcib depends on the libcrmcommon already loaded).
            unsafe { libloading::Library::new(soname) }.map_err(|e| CibError::Load {
                soname,
                reason: e.to_string(),
            })
        };
        let cib = load(layout.soname)?;
        let glib = load("libglib-2.0.so.0")?;
        let sym = |e: libloading::Error, soname| CibError::Load {
            soname,
            reason: e.to_string(),
        };
        // SAFETY: each symbol is looked up with its C signature from `crm/cib.h`,
        // `crm/common/results.h` (2.1 and 3.0 agree) and GLib's `gmain.h`; the copied
        // pointers live beside the libraries, which stay open as long as they do.
        unsafe {
            Ok(CibLib {
                layout,
                new: *cib.get(b"cib_new\0").map_err(|e| sym(e, layout.soname))?,
                delete: *cib
                    .get(b"cib_delete\0")
                    .map_err(|e| sym(e, layout.soname))?,
                strerror: *cib
                    .get(b"pcmk_strerror\0")
                    .map_err(|e| sym(e, layout.soname))?,
                iterate: *glib
                    .get(b"g_main_context_iteration\0")
                    .map_err(|e| sym(e, "libglib-2.0.so.0"))?,
                _cib: cib,
                _glib: glib,
            })
        }
    }

    /// Runs one iteration of GLib's default main context: waits for the connection's
    /// next message (or the next source of any kind) and dispatches it.
    pub fn iterate(&self) {
        // SAFETY: NULL is the default context; only this thread iterates it.
        unsafe { (self.iterate)(std::ptr::null_mut(), 1) };
    }

    fn reason(&self, rc: c_int) -> String {
        // SAFETY: pcmk_strerror returns a static string for any value.
        let s = unsafe { (self.strerror)(rc) };
        if s.is_null() {
            return format!("error {rc}");
        }
        // SAFETY: non-NULL, NUL-terminated and static.
        unsafe { std::ffi::CStr::from_ptr(s) }
            .to_string_lossy()
            .into_owned()
    }
}

/// A signed-on, subscribed read-only CIB connection. Owned by one thread (`!Send`).
pub struct CibConnection<'l> {
    lib: &'l CibLib,
    cib: *mut c_void,
    _not_send: PhantomData<*mut ()>,
}

impl<'l> CibConnection<'l> {
    /// Signs on, subscribes `on_change` to every change and `on_lost` to the end of the
    /// connection. Both run inside [`CibLib::iterate`] on this thread.
    pub fn open(
        lib: &'l CibLib,
        on_change: NotifyFn,
        on_lost: LostFn,
    ) -> Result<CibConnection<'l>, CibError> {
        // SAFETY: cib_new takes nothing and returns a new cib_t or NULL.
        let cib = unsafe { (lib.new)() };
        if cib.is_null() {
            return Err(CibError::Call {
                call: "cib_new",
                reason: "out of memory".into(),
            });
        }
        let conn = CibConnection {
            lib,
            cib,
            _not_send: PhantomData,
        };
        // SAFETY: the slots are this series' (see `layout`), each cast to the signature
        // the header declares for it; `cib` is live, the strings are static and
        // NUL-terminated, and the callbacks are plain functions that never unwind.
        unsafe {
            let signon: Signon = conn.slot(lib.layout.signon);
            let rc = signon(cib, CLIENT_NAME.as_ptr().cast(), CIB_QUERY);
            conn.check("signon", rc)?;
            let dnotify: SetDnotify = conn.slot(lib.layout.set_connection_dnotify);
            conn.check("set_connection_dnotify", dnotify(cib, on_lost))?;
            let add: AddNotify = conn.slot(lib.layout.add_notify_callback);
            conn.check(
                "add_notify_callback",
                add(cib, DIFF_NOTIFY.as_ptr().cast(), on_change),
            )?;
        }
        Ok(conn)
    }

    fn check(&self, call: &'static str, rc: c_int) -> Result<(), CibError> {
        if rc == 0 {
            return Ok(());
        }
        Err(CibError::Call {
            call,
            reason: self.lib.reason(rc),
        })
    }

    /// The function in slot `i` of the operations table.
    ///
    /// # Safety
    /// `i` must be a slot of this series' table and `F` its function pointer type.
    unsafe fn slot<F: Copy>(&self, i: usize) -> F {
        // SAFETY: `cmds` is at this series' offset in the live cib_t, points to the
        // table cib_new filled, and slot `i` of it holds a function of type F (caller).
        unsafe {
            let cmds = *self
                .cib
                .cast::<u8>()
                .add(self.lib.layout.cmds)
                .cast::<*const c_void>();
            *cmds.cast::<F>().add(i)
        }
    }
}

impl Drop for CibConnection<'_> {
    fn drop(&mut self) {
        // SAFETY: signoff and cib_delete on the live cib_t this connection owns, once.
        unsafe {
            let signoff: Signoff = self.slot(self.lib.layout.signoff);
            signoff(self.cib);
            (self.lib.delete)(self.cib);
        }
    }
}

// Pointer-sized slots are what `slot` indexes by.
const _: () = assert!(std::mem::size_of::<Signon>() == std::mem::size_of::<*const c_void>());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_known_series_has_its_libcib_layout() {
        for s in super::super::ffi::KNOWN {
            let l = layout(s.soname).expect(s.soname);
            assert!(l.cmds.is_multiple_of(8) && l.signon == 0, "{l:?}");
        }
        // 3.0 dropped op_callback before cmds, and three slots before the ones used.
        let (new, old) = (
            layout("libcrmcommon.so.68").unwrap(),
            layout("libcrmcommon.so.34").unwrap(),
        );
        assert_eq!(old.cmds - new.cmds, 8);
        assert_eq!(old.set_connection_dnotify - new.set_connection_dnotify, 2);
        assert_eq!(layout("libcrmcommon.so.99"), None);
        // Where Pacemaker's library is installed, its libcib and every symbol resolve.
        if let Ok((soname, _)) = super::super::controller().library() {
            let lib = CibLib::open(soname).unwrap();
            assert!(
                lib.reason(-2).contains("No such file"),
                "{}",
                lib.reason(-2)
            );
        }
    }
}
