//! Telling Pacemaker in-process: one long-lived connection to the controller, owned by
//! one thread, instead of starting `crm_resource` at fault time.
//!
//! Starting `crm_resource --fail` costs 7–25 ms here; a fail request on an open connection
//! costs well under a millisecond. When the library is absent or of an unknown version,
//! or the controller cannot be reached, [`Controller::fail`] says so and the caller uses
//! the tool instead.
//!
//! Reconnecting never sends a fail twice: a request that did not reach the controller is
//! sent again on a new connection; one that was sent but whose reply was lost is reported
//! as sent ([`Sent::ReplyLost`]) and not repeated.

pub(crate) mod calls;
mod cib_ffi;
pub(crate) mod fail;
mod ffi;
pub mod live;
#[cfg(test)]
mod scripted;
pub mod version;

use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

pub use ffi::{CallError, FailError, LoadError};

/// How long the controller has to acknowledge a fail (it answers in milliseconds).
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);

/// What a fail over IPC came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// The controller acknowledged it.
    Accepted { us: u64, reconnected: bool },
    /// Sent, the reply lost (the controller restarted mid-request): not sent again.
    ReplyLost(String),
}

/// Why a fail did not go over IPC (the caller then uses `crm_resource`).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Unavailable {
    #[error("{0}")]
    Library(#[from] LoadError),
    #[error(
        "the controller refuses fails from uid {0} (only root and hacluster may fail resources)"
    )]
    Unprivileged(u32),
    #[error("cannot reach the controller: {0}")]
    Connect(CallError),
    #[error("the controller did not take the fail: {0}")]
    Refused(CallError),
    #[error("the Pacemaker thread is gone")]
    ThreadGone,
}

/// The resource agent's standard, provider and type, when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub class: String,
    pub provider: Option<String>,
    pub kind: String,
}

struct Job {
    node: String,
    resource: String,
    agent: Option<Agent>,
    reply: tokio::sync::oneshot::Sender<Result<Sent, Unavailable>>,
}

/// The handle to the Pacemaker thread.
#[derive(Debug)]
pub struct Controller {
    jobs: Mutex<mpsc::Sender<Job>>,
    library: Result<(&'static str, &'static str), LoadError>,
    state: Arc<Mutex<String>>,
}

static CONTROLLER: OnceLock<Controller> = OnceLock::new();

/// The process's one controller connection (started on first use).
pub fn controller() -> &'static Controller {
    CONTROLLER.get_or_init(Controller::start)
}

impl Controller {
    fn start() -> Controller {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let state = Arc::new(Mutex::new(String::new()));
        let shared = state.clone();
        let spawned = std::thread::Builder::new()
            .name("pacemaker".into())
            .spawn(move || run(rx, ready_tx, shared));
        let library = match spawned {
            Ok(_) => ready_rx.recv().unwrap_or(Err(LoadError::Absent)),
            Err(e) => Err(LoadError::Broken {
                soname: "thread",
                reason: e.to_string(),
            }),
        };
        if let Err(e) = &library {
            set(&state, format!("{e}; using crm_resource"));
        }
        Controller {
            jobs: Mutex::new(tx),
            library,
            state,
        }
    }

    /// The library in use (SONAME, Pacemaker series), or why there is none.
    pub fn library(&self) -> Result<(&'static str, &'static str), &LoadError> {
        self.library.as_ref().map(|l| *l)
    }

    /// One line for `vesper status`: which library, and the connection's state.
    pub fn describe(&self) -> String {
        match self.state.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Asks the controller to record a failure of `resource` on `node`.
    pub async fn fail(
        &self,
        node: &str,
        resource: &str,
        agent: Option<Agent>,
    ) -> Result<Sent, Unavailable> {
        if let Err(e) = &self.library {
            return Err(Unavailable::Library(e.clone()));
        }
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            node: node.into(),
            resource: resource.into(),
            agent,
            reply,
        };
        let sent = match self.jobs.lock() {
            Ok(tx) => tx.send(job).is_ok(),
            Err(p) => p.into_inner().send(job).is_ok(),
        };
        if !sent {
            return Err(Unavailable::ThreadGone);
        }
        answer.await.unwrap_or(Err(Unavailable::ThreadGone))
    }
}

/// The Pacemaker thread: owns the library and the connection.
fn run(
    jobs: mpsc::Receiver<Job>,
    ready: mpsc::Sender<Result<(&'static str, &'static str), LoadError>>,
    state: Arc<Mutex<String>>,
) {
    let lib = match ffi::Lib::open() {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let label = format!("{} (Pacemaker {})", lib.series.soname, lib.series.pacemaker);
    let report = |s: String| set(&state, format!("{label}, {s}"));
    report("not connected yet".into());
    let _ = ready.send(Ok((lib.series.soname, lib.series.pacemaker)));
    // Connect now, so the first fail does not pay for the hello; a controller that is not
    // up yet is connected to at the first fail.
    let mut conn: Option<ffi::Connection> = None;
    if privileged() {
        match ffi::Connection::open(&lib) {
            Ok(c) => conn = Some(c),
            Err(e) => report(format!("not connected yet ({e})")),
        }
    }
    if conn.is_some() {
        report("connected to the controller".into());
    }
    while let Ok(job) = jobs.recv() {
        let result = one_fail(&&lib, &mut conn, &job);
        report(match (&result, &conn) {
            (_, Some(_)) => "connected to the controller".into(),
            (Err(e), None) => format!("not connected ({e}); using crm_resource meanwhile"),
            (Ok(_), None) => "connection lost after the last fail; reconnects at the next".into(),
        });
        let _ = job.reply.send(result);
    }
}

/// The controller connection as [`one_fail`] sees it: the seam the unit tests replace.
trait Link {
    type Conn;
    fn open(&self) -> Result<Self::Conn, CallError>;
    fn fail(
        &self,
        conn: &mut Self::Conn,
        node: &str,
        resource: &str,
        agent: Option<&Agent>,
    ) -> Result<(), FailError>;
    fn is_closed(&self, conn: &Self::Conn) -> bool;
}

impl<'l> Link for &'l ffi::Lib {
    type Conn = ffi::Connection<'l>;
    fn open(&self) -> Result<Self::Conn, CallError> {
        ffi::Connection::open(self)
    }
    fn fail(
        &self,
        conn: &mut Self::Conn,
        node: &str,
        resource: &str,
        agent: Option<&Agent>,
    ) -> Result<(), FailError> {
        let agent = agent.map(|a| (a.class.as_str(), a.provider.as_deref(), a.kind.as_str()));
        conn.fail(node, resource, agent, REPLY_TIMEOUT)
    }
    fn is_closed(&self, conn: &Self::Conn) -> bool {
        conn.is_closed()
    }
}

/// One fail: reconnects when the request did not reach the controller, never when it
/// may have.
fn one_fail<L: Link>(link: &L, conn: &mut Option<L::Conn>, job: &Job) -> Result<Sent, Unavailable> {
    // The controller answers an unprivileged client with a refusal: say why before trying.
    if !privileged() {
        return Err(Unavailable::Unprivileged(crate::access::own_uid()));
    }
    send_fail(link, conn, &job.node, &job.resource, job.agent.as_ref())
}

fn send_fail<L: Link>(
    link: &L,
    conn: &mut Option<L::Conn>,
    node: &str,
    resource: &str,
    agent: Option<&Agent>,
) -> Result<Sent, Unavailable> {
    let started = Instant::now();
    let mut reconnected = false;
    // A connection the controller closed while idle is replaced before sending.
    if conn.as_ref().is_some_and(|c| link.is_closed(c)) {
        *conn = None;
        reconnected = true;
    }
    for attempt in 0..2 {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(link.open().map_err(Unavailable::Connect)?),
        };
        match link.fail(c, node, resource, agent) {
            Ok(()) => {
                return Ok(Sent::Accepted {
                    us: started.elapsed().as_micros() as u64,
                    reconnected,
                });
            }
            Err(FailError::Unknown(e)) => {
                *conn = None;
                return Ok(Sent::ReplyLost(e.to_string()));
            }
            Err(FailError::NotSent(e @ CallError::Refused(_))) => {
                return Err(Unavailable::Refused(e));
            }
            // Not sent: a stale connection; a new one may take it.
            Err(FailError::NotSent(e)) => {
                *conn = None;
                if attempt == 1 {
                    return Err(Unavailable::Connect(e));
                }
                reconnected = true;
            }
        }
    }
    Err(Unavailable::ThreadGone)
}

/// Whether the controller takes fails from this process (root or hacluster).
fn privileged() -> bool {
    let uid = crate::access::own_uid();
    uid == 0 || crate::access::is_hacluster(uid)
}

fn set(state: &Mutex<String>, s: String) {
    match state.lock() {
        Ok(mut g) => *g = s,
        Err(p) => *p.into_inner() = s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A controller that answers from a script, and counts what it was sent.
    #[derive(Default)]
    struct Scripted {
        opens: RefCell<Vec<Result<(), CallError>>>,
        answers: RefCell<Vec<Result<(), FailError>>>,
        opened: RefCell<u32>,
        sent: RefCell<u32>,
        closed: bool,
    }

    impl Link for Scripted {
        type Conn = u32;
        fn open(&self) -> Result<u32, CallError> {
            *self.opened.borrow_mut() += 1;
            let next = self.opens.borrow_mut().pop().unwrap_or(Ok(()));
            next.map(|()| *self.opened.borrow())
        }
        fn fail(&self, _: &mut u32, _: &str, _: &str, _: Option<&Agent>) -> Result<(), FailError> {
            *self.sent.borrow_mut() += 1;
            self.answers.borrow_mut().pop().unwrap_or(Ok(()))
        }
        fn is_closed(&self, _: &u32) -> bool {
            self.closed
        }
    }

    fn send(link: &Scripted, conn: &mut Option<u32>) -> Result<Sent, Unavailable> {
        send_fail(link, conn, "node1", "vm-web1", None)
    }

    #[test]
    fn one_connection_serves_every_fail() {
        let link = Scripted::default();
        let mut conn = None;
        for _ in 0..3 {
            assert!(matches!(
                send(&link, &mut conn),
                Ok(Sent::Accepted {
                    reconnected: false,
                    ..
                })
            ));
        }
        assert_eq!((*link.opened.borrow(), *link.sent.borrow()), (1, 3));
    }

    #[test]
    fn a_fail_that_never_left_is_sent_again_on_a_new_connection() {
        let link = Scripted::default();
        link.answers
            .borrow_mut()
            .push(Err(FailError::NotSent(CallError::Failed {
                call: "pcmk_controld_api_fail",
                reason: "Transport endpoint is not connected".into(),
            })));
        let mut conn = Some(7);
        assert!(matches!(
            send(&link, &mut conn),
            Ok(Sent::Accepted {
                reconnected: true,
                ..
            })
        ));
        assert_eq!((*link.opened.borrow(), *link.sent.borrow()), (1, 2));
    }

    #[test]
    fn a_fail_whose_reply_was_lost_is_never_sent_twice() {
        let link = Scripted::default();
        link.answers
            .borrow_mut()
            .push(Err(FailError::Unknown(CallError::Disconnected)));
        let mut conn = None;
        assert!(matches!(send(&link, &mut conn), Ok(Sent::ReplyLost(_))));
        assert_eq!(*link.sent.borrow(), 1);
        assert!(conn.is_none(), "the broken connection is dropped");
        // The next fault gets a fresh connection.
        assert!(matches!(send(&link, &mut conn), Ok(Sent::Accepted { .. })));
        assert_eq!((*link.opened.borrow(), *link.sent.borrow()), (2, 2));
    }

    #[test]
    fn a_connection_closed_while_idle_is_replaced_before_sending() {
        let link = Scripted {
            closed: true,
            ..Default::default()
        };
        let mut conn = Some(7);
        assert!(matches!(
            send(&link, &mut conn),
            Ok(Sent::Accepted {
                reconnected: true,
                ..
            })
        ));
        assert_eq!((*link.opened.borrow(), *link.sent.borrow()), (1, 1));
    }

    #[test]
    fn a_refusal_is_final_and_a_dead_controller_says_so() {
        let link = Scripted::default();
        link.answers
            .borrow_mut()
            .push(Err(FailError::NotSent(CallError::Refused(4))));
        let mut conn = None;
        assert!(matches!(
            send(&link, &mut conn),
            Err(Unavailable::Refused(_))
        ));
        assert_eq!(*link.sent.borrow(), 1);

        let down = Scripted::default();
        down.opens.borrow_mut().push(Err(CallError::Failed {
            call: "pcmk_connect_ipc",
            reason: "Connection refused".into(),
        }));
        let mut conn = None;
        let e = send(&down, &mut conn).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot reach the controller: pcmk_connect_ipc: Connection refused"
        );
        assert_eq!(*down.sent.borrow(), 0);
    }

    #[test]
    fn the_library_is_found_by_soname_and_an_unknown_one_is_named() {
        let e = LoadError::Unknown {
            found: "libcrmcommon.so.99".into(),
            known: "libcrmcommon.so.68, libcrmcommon.so.34".into(),
        };
        assert!(e.to_string().starts_with(
            "libcrmcommon.so.99 is a Pacemaker library version vesperd does not know"
        ));
        // On this host: whichever it is, status names it or says why not.
        let d = controller().describe();
        assert!(
            d.contains("libcrmcommon.so.") || d.contains("using crm_resource"),
            "{d}"
        );
    }
}
