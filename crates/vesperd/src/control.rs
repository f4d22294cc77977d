//! The control API: JSON lines over a unix socket. Only root, vesperd's own user and the
//! members of `[daemon] socket_group` may use it (see `access`): loading a probe runs code
//! in a guest's kernel. Every probe load and unload is logged with who asked.
//!
//! Each connection sends one request line and reads response lines. The requests, the
//! answers and the error codes are `vesper_api`'s types, shared with the CLI: see that
//! crate for the table of requests and their answers.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::access::{self, Access, Peer};
use crate::session::SessionCmd;
use crate::store::RecordStore;

const MAX_REQUEST: u64 = 64 * 1024;
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub use vesper_api::Request;
use vesper_api::{
    Answer, ApiError, CheckReply, ClusterReport, Empty, ErrorCode, KernelInfoReply, LoadReply,
    MapsReply, ProbesReply, StatusReply, Unanswered, WhyReply,
};

/// What the control API can reach of one VM.
#[derive(Debug, Clone)]
pub struct VmHandle {
    /// The Pacemaker resource the VM backs: `why` and `check` accept it in place of the VM.
    pub resource: Option<String>,
    pub cmds: mpsc::Sender<SessionCmd>,
    pub store: Arc<Mutex<RecordStore>>,
    /// The VM's session and QMP watcher, stopped when the VM leaves the configuration.
    pub tasks: Vec<tokio::task::AbortHandle>,
    /// The settings the session was started with, to tell a changed VM on reload.
    pub settings: String,
}

/// Everything the control API reaches: the VMs (the set changes on reload) and the
/// why-log; and what a reload needs to start a VM's session.
#[derive(Debug)]
pub struct Daemon {
    vms: std::sync::RwLock<BTreeMap<String, VmHandle>>,
    pub why: Arc<Mutex<crate::actions::WhyLog>>,
    pub(crate) verdicts: mpsc::Sender<crate::rules::Verdict>,
    pub(crate) actions: crate::actions::ActionConfigs,
    /// Guest kernels' types, shared by every VM on the same kernel build.
    pub(crate) kernels: Arc<crate::kernels::KernelCache>,
    /// Writes every file the daemon keeps while it runs.
    pub disk: crate::disk::DiskWriter,
}

impl Daemon {
    pub(crate) fn new(
        why: Arc<Mutex<crate::actions::WhyLog>>,
        verdicts: mpsc::Sender<crate::rules::Verdict>,
        actions: crate::actions::ActionConfigs,
        kernels: Arc<crate::kernels::KernelCache>,
        disk: crate::disk::DiskWriter,
    ) -> Self {
        Self {
            vms: Default::default(),
            why,
            verdicts,
            actions,
            kernels,
            disk,
        }
    }

    /// The VM map, for reading or changing it (a poisoned lock is still the map).
    pub(crate) fn with_vms<R>(&self, f: impl FnOnce(&mut BTreeMap<String, VmHandle>) -> R) -> R {
        let mut vms = match self.vms.write() {
            Ok(v) => v,
            Err(p) => p.into_inner(),
        };
        f(&mut vms)
    }

    pub fn get(&self, vm: &str) -> Option<VmHandle> {
        self.with_vms(|v| v.get(vm).cloned())
    }

    /// A VM by its name, or by the Pacemaker resource it backs.
    pub fn vm_or_resource(&self, target: &str) -> Option<VmHandle> {
        self.with_vms(|v| {
            v.get(target)
                .or_else(|| v.values().find(|h| h.resource.as_deref() == Some(target)))
                .cloned()
        })
    }

    /// Every VM, in name order.
    pub fn handles(&self) -> Vec<(String, VmHandle)> {
        self.with_vms(|v| v.iter().map(|(n, h)| (n.clone(), h.clone())).collect())
    }

    pub fn names(&self) -> Vec<String> {
        self.with_vms(|v| v.keys().cloned().collect())
    }

    pub fn len(&self) -> usize {
        self.with_vms(|v| v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub type Vms = Arc<Daemon>;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control socket {path}: {source}")]
    Bind {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "control socket {path} is in use by a running vesperd; stop it or set [daemon] socket elsewhere"
    )]
    InUse { path: String },
}

/// Binds the control socket, owner-only or shared with the access policy's group.
pub async fn bind(path: &Path, access: &Access) -> Result<UnixListener, ControlError> {
    let err = |source| ControlError::Bind {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse {
                path: path.display().to_string(),
            });
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    let l = UnixListener::bind(path).map_err(err)?;
    access.secure_socket(path).map_err(err)?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, vms: Vms, access: Access) {
    let access = Arc::new(access);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let vms = vms.clone();
                let access = access.clone();
                tokio::spawn(async move {
                    let peer = stream.peer_cred().ok().map(|c| Peer {
                        uid: c.uid(),
                        gid: c.gid(),
                        pid: c.pid(),
                    });
                    let allowed = match peer {
                        Some(p) => access.check(p, || {
                            std::fs::read_to_string("/etc/passwd").unwrap_or_default()
                        }),
                        None => Err("permission denied: the peer's credentials are unknown".into()),
                    };
                    if let Err(why) = allowed {
                        tracing::warn!(peer = %access::describe(peer), "control connection refused");
                        // Read the request first (bounded): a client still writing it would
                        // get a broken pipe instead of the reason.
                        use tokio::io::AsyncReadExt;
                        let (rd, mut wr) = stream.into_split();
                        let mut line = String::new();
                        let _ = BufReader::new(rd.take(MAX_REQUEST))
                            .read_line(&mut line)
                            .await;
                        let _ =
                            answer::<Empty>(&mut wr, Err(ApiError::new(ErrorCode::Denied, why)))
                                .await;
                        return;
                    }
                    if let Err(e) = handle(stream, vms, peer).await {
                        tracing::debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn unknown_vm(vms: &Vms, vm: &str) -> ApiError {
    let known = vms.names();
    ApiError::new(
        ErrorCode::UnknownVm,
        if known.is_empty() {
            format!(
                "unknown VM {vm:?}: no VMs are configured (add a [[vm]] section to vesper.toml)"
            )
        } else {
            format!("unknown VM {vm:?} (configured: {})", known.join(", "))
        },
    )
}

async fn ask<T>(
    h: &VmHandle,
    make: impl FnOnce(oneshot::Sender<T>) -> SessionCmd,
) -> Result<T, ApiError> {
    let (tx, rx) = oneshot::channel();
    let gone = |why: &str| ApiError::new(ErrorCode::NoAnswer, why);
    // A session whose queue is full counts as not answering, like one that is slow.
    let asked = async {
        h.cmds
            .send(make(tx))
            .await
            .map_err(|_| gone("the VM's session has stopped"))?;
        rx.await
            .map_err(|_| gone("the VM's session dropped the request"))
    };
    match tokio::time::timeout(REPLY_TIMEOUT, asked).await {
        Ok(r) => r,
        Err(_) => Err(gone(&format!(
            "no answer from the VM's session within {} s",
            REPLY_TIMEOUT.as_secs()
        ))),
    }
}

/// Asks a session something it answers with a result of its own.
async fn ask_for<T>(
    h: &VmHandle,
    make: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> SessionCmd,
) -> Result<T, ApiError> {
    ask(h, make).await?
}

/// Every VM's status, asked of all sessions at once: one session that does not answer
/// costs one timeout, not one per VM, and is listed apart instead of failing the call.
pub async fn statuses(vms: &Vms) -> (Vec<crate::session::VmStatus>, Vec<Unanswered>) {
    let mut asked = tokio::task::JoinSet::new();
    for (name, h) in vms.handles() {
        asked.spawn(async move {
            let r = ask(&h, |reply| SessionCmd::Status { reply }).await;
            (name, r)
        });
    }
    let (mut all, mut missing) = (Vec::new(), Vec::new());
    while let Some(done) = asked.join_next().await {
        match done {
            Ok((_, Ok(s))) => all.push(s),
            Ok((vm, Err(e))) => {
                tracing::warn!(vm = %vm, error = %e, "no status from the session");
                missing.push(Unanswered { vm, error: e.error });
            }
            Err(e) => tracing::error!(error = %e, "a status request failed"),
        }
    }
    all.sort_by(|a, b| a.name.cmp(&b.name));
    missing.sort_by(|a, b| a.vm.cmp(&b.vm));
    (all, missing)
}

async fn handle(stream: UnixStream, vms: Vms, peer: Option<Peer>) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let (rd, mut wr) = stream.into_split();
    let mut line = String::new();
    BufReader::new(rd.take(MAX_REQUEST))
        .read_line(&mut line)
        .await?;
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            let bad = ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}"));
            return answer::<Empty>(&mut wr, Err(bad)).await;
        }
    };
    let handle_of = |vm: &str| vms.get(vm).ok_or_else(|| unknown_vm(&vms, vm));
    let wr = &mut wr;
    match req {
        Request::Status => {
            let (all, unanswered) = statuses(&vms).await;
            let pacemaker = format!(
                "{}; {}",
                crate::pacemaker::controller().describe(),
                crate::pacemaker::live::describe()
            );
            let reply = StatusReply {
                vms: all,
                unanswered,
                disk: vms.disk.stats(),
                pacemaker,
            };
            answer(wr, Ok(reply)).await
        }
        Request::Probes { vm } => {
            let r = match handle_of(&vm) {
                Ok(h) => ask(&h, |reply| SessionCmd::Status { reply }).await,
                Err(e) => Err(e),
            };
            answer(wr, r.map(|vm| ProbesReply { vm })).await
        }
        Request::Load {
            vm,
            probe,
            source,
            file,
            object_hex,
        } => {
            let r = match (
                handle_of(&vm),
                probe_source(probe, source, file, object_hex),
            ) {
                (Ok(h), Ok(probe)) => {
                    tracing::info!(%vm, probe = %probe.name(), by = %access::describe(peer), "probe load requested");
                    ask_for(&h, |reply| SessionCmd::Load { probe, reply }).await
                }
                (Err(e), _) | (_, Err(e)) => Err(e),
            };
            answer(wr, r.map(|result| LoadReply { result })).await
        }
        Request::KernelInfo { vm, keys } => {
            let r = match handle_of(&vm) {
                Ok(h) if keys.len() <= 256 => {
                    ask_for(&h, |reply| SessionCmd::KernelInfo { keys, reply }).await
                }
                Ok(_) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    "at most 256 keys per request",
                )),
                Err(e) => Err(e),
            };
            answer(wr, r.map(|kernel| KernelInfoReply { kernel })).await
        }
        Request::Why { target, last } => {
            let entries = match vms.why.lock() {
                Ok(w) => w.about(&target, last.unwrap_or(10)),
                Err(p) => p.into_inner().about(&target, last.unwrap_or(10)),
            };
            let vm = vms.vm_or_resource(&target);
            if vm.is_none() && entries.is_empty() {
                return answer::<Empty>(wr, Err(unknown_vm(&vms, &target))).await;
            }
            // What the cluster holds, from every node: on the node a VM moved to, the
            // cause and the failure that moved it were recorded elsewhere.
            let resource = vm
                .and_then(|h| h.resource.clone())
                .or_else(|| entries.iter().find_map(|e| e.verdict.resource.clone()));
            let cluster = match resource {
                Some(r) => Some(match crate::cluster::resource_view(&r).await {
                    Ok(view) => ClusterReport::View(view),
                    Err(error) => ClusterReport::Unreadable { resource: r, error },
                }),
                None => None,
            };
            answer(wr, Ok(WhyReply { entries, cluster })).await
        }
        Request::Check { vm } => {
            let r = match vms.vm_or_resource(&vm) {
                Some(h) => ask(&h, |reply| SessionCmd::Status { reply }).await,
                None => Err(unknown_vm(&vms, &vm)),
            };
            // A verdict stands until the agent connects again (the guest was restarted,
            // or its agent was).
            let r = r.map(|st| {
                let since = st.connected_since_ms.unwrap_or(0);
                let open = st.last_verdict.filter(|v| v.time_ms >= since);
                CheckReply {
                    vm: st.name,
                    healthy: open.is_none(),
                    state: st.state,
                    guest: st.guest,
                    cause: open.map(|v| v.cause),
                }
            });
            answer(wr, r).await
        }
        Request::Unload { vm, probe } => {
            let r = match handle_of(&vm) {
                Ok(h) => {
                    tracing::info!(%vm, %probe, by = %access::describe(peer), "probe unload requested");
                    ask_for(&h, |reply| SessionCmd::Unload { probe, reply }).await
                }
                Err(e) => Err(e),
            };
            answer(wr, r.map(|maps| MapsReply { maps })).await
        }
        Request::Maps { vm, probe } => {
            let r = match handle_of(&vm) {
                Ok(h) => ask_for(&h, |reply| SessionCmd::Maps { probe, reply }).await,
                Err(e) => Err(e),
            };
            answer(wr, r.map(|maps| MapsReply { maps })).await
        }
        Request::Events {
            vm,
            probe,
            follow,
            last,
        } => match handle_of(&vm) {
            Ok(h) => events(wr, &h, probe, follow, last).await,
            Err(e) => answer::<Empty>(wr, Err(e)).await,
        },
    }
}

fn probe_source(
    probe: String,
    source: Option<String>,
    file: Option<String>,
    object_hex: Option<String>,
) -> Result<vesper_probe::ProbeSource, ApiError> {
    let bad = |why: String| ApiError::new(ErrorCode::BadRequest, why);
    match probe_source_of(probe, source, file, object_hex) {
        Ok(p) => Ok(p),
        Err(Refused::Bad(why)) => Err(bad(why)),
        Err(Refused::Object(why)) => Err(ApiError::new(ErrorCode::ProbeRefused, why)),
    }
}

/// Why a load request names no probe vesperd can load.
enum Refused {
    /// The request is malformed.
    Bad(String),
    /// The object is not one vesperd can load.
    Object(String),
}

fn probe_source_of(
    probe: String,
    source: Option<String>,
    file: Option<String>,
    object_hex: Option<String>,
) -> Result<vesper_probe::ProbeSource, Refused> {
    use vesper_probe::ProbeSource;
    let valid = !probe.is_empty()
        && probe.len() <= 64
        && probe
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(Refused::Bad(format!(
            "{probe:?} is not a probe name (letters, digits, '-', '_')"
        )));
    }
    match (source, object_hex) {
        (Some(text), None) => Ok(ProbeSource::Script {
            file: file.unwrap_or_else(|| format!("{probe}.vsp")),
            name: probe,
            text,
        }),
        (None, Some(hex)) => {
            let bytes = decode_hex(&hex)
                .ok_or_else(|| Refused::Bad("object_hex is not valid hex".into()))?;
            ProbeSource::from_object(&probe, bytes).map_err(|e| Refused::Object(e.to_string()))
        }
        (None, None) if vesper_probe::builtin::is_builtin(&probe) => {
            Ok(ProbeSource::Builtin(probe))
        }
        (None, None) => Err(Refused::Bad(format!(
            "unknown built-in probe {probe:?} (built-in probes: {}; or give a .vsp or .o file)",
            vesper_probe::builtin::names().join(", ")
        ))),
        (Some(_), Some(_)) => Err(Refused::Bad("give a script or an object, not both".into())),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// One answer line: `{"ok":true, …}` or the refusal.
async fn answer<T: Serialize>(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    r: Result<T, ApiError>,
) -> std::io::Result<()> {
    let line = match r {
        Ok(v) => serde_json::to_string(&Answer::ok(v)),
        Err(e) => serde_json::to_string(&Answer::<Empty>::refused(e)),
    };
    let mut line = line.map_err(std::io::Error::other)?;
    line.push('\n');
    wr.write_all(line.as_bytes()).await
}

async fn events(
    wr: &mut tokio::net::unix::OwnedWriteHalf,
    h: &VmHandle,
    probe: Option<String>,
    follow: bool,
    last: Option<usize>,
) -> std::io::Result<()> {
    // Snapshot and subscribe under one lock: nothing is missed or repeated in between.
    let (backlog, mut rx) = {
        let store = match h.store.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        (
            store.tail(probe.as_deref(), last),
            follow.then(|| store.subscribe()),
        )
    };
    answer(wr, Ok(Empty {})).await?;
    let mut out = Vec::with_capacity(64 * 1024);
    for r in backlog {
        out.extend_from_slice(r.json.as_bytes());
        out.push(b'\n');
        if out.len() > 60 * 1024 {
            wr.write_all(&out).await?;
            out.clear();
        }
    }
    wr.write_all(&out).await?;
    let Some(rx) = rx.as_mut() else { return Ok(()) };
    loop {
        match rx.recv().await {
            Ok(r) => {
                if probe.as_deref().is_some_and(|p| p != &*r.probe) {
                    continue;
                }
                let mut line = r.json.to_string();
                line.push('\n');
                wr.write_all(line.as_bytes()).await?;
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                let line = format!(
                    "{}\n",
                    json!({ "lagged": n, "note": "this follower fell behind; records are in the store and its file" })
                );
                wr.write_all(line.as_bytes()).await?;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
