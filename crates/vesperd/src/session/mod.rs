//! The per-VM session: one task per VM, one readable state machine.
//!
//! ```text
//!  Elsewhere ──channel appears (arrived)──┐
//!      ▲                                  ▼
//!      └──channel absent (departed)── Disconnected
//!                                      ▲  │ connect ok
//!                                      │  ▼           Hello               frame arrives
//!                                      │ Handshake ─────────▶ Ready ◀──────────────────┐
//!        EOF, I/O error, bad frame,    │    │                   │ silent for deadtime  │
//!        hello timeout                 └────┴───────────── Unresponsive ───────────────┘
//! ```
//!
//! Each state carries the data only it has ([`Link`]); the replies the session owes, in
//! any state, are in one place (`pending.rs`). The session is split by job:
//!
//! | file | what |
//! |------|------|
//! | `mod.rs` | the states, the connection loop, timers |
//! | `messages.rs` | what the agent sends, by state |
//! | `commands.rs` | control API requests, connected or not |
//! | `pending.rs` | replies owed, and how each ends with the connection |
//! | `probes.rs` | compiling probes for this guest and shipping them |
//! | `ingest.rs` | the frame reader and records: accounted, stored, judged |
//! | `gaps.rs` | unobserved time, arrival and departure |
//! | `host.rs` | what the hypervisor reports (QMP) |
//! | `maps.rs` | reading probes' maps, interval probes |
//! | `kernel_fetch.rs` | the guest kernel's types, its own small state machine |
//! | `status.rs` | what status shows |
//!
//! - **Disconnected**: no stream. Connects with backoff (100 ms doubling to 5 s).
//!   Commands still work: `load`/`unload` edit the desired probe set.
//! - **Elsewhere**: the VM's channel is not on this host (no socket, or a socket nobody
//!   serves): in a cluster the VM runs on another node, or nowhere. Not an error, a gap or
//!   a verdict. Looked for every [`ELSEWHERE_POLL`]; a VM that leaves after being here
//!   gets a `departed` record, and when it arrives (`arrived`), the time from its channel's
//!   appearance to its probes being attached is reported as a gap.
//! - **Handshake**: connected, waiting (at most [`HELLO_TIMEOUT`]) for the agent's Hello.
//! - **Ready**: Hello seen. Kernel info is fetched for the probes' events, every probe
//!   in the desired set is compiled for *this* guest's kernel and loaded; records are
//!   decoded with the host's manifest, accounted by sequence number and stored.
//!   The guest kernel's BTF and symbols are fetched once per kernel build
//!   (`kernel_fetch.rs`, its own small state machine) while records flow.
//! - **Unresponsive**: Ready, but the agent has been silent for longer than the VM's
//!   deadtime. Any frame brings it back to Ready.
//!
//! Anything malformed from the guest ends the connection with one log line and
//! nothing else: the guest is untrusted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};
use vesper_probe::{KernelInfo, Manifest, ProbeSource, parse_format};
use vesper_proto::{
    AttachPoint, DEFAULT_MAX_PAYLOAD, FrameDecoder, Hello, LoadProbe, Message, Records,
    encode_frame,
};

use crate::channel::{BoxStream, Connector};
use crate::rate::{Limiter, RateLimits, ReadCounters};
use crate::store::{RecordStore, StoredRecord};

mod commands;
mod gaps;
mod host;
mod ingest;
mod kernel_fetch;
mod maps;
mod messages;
mod pending;
mod probes;
mod status;

use ingest::read_frames;
pub use ingest::{record_json, record_value};
pub use kernel_fetch::{KernelFetch, KernelTypesStatus};
pub use status::{AgentInfo, LastVerdict, ProbeStatus, VmStatus};

pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often a VM that is elsewhere is looked for: a failed connect to an absent socket
/// costs one syscall, and a VM that migrates in should get its probes within a second.
pub const ELSEWHERE_POLL: Duration = Duration::from_millis(200);
pub use vesper_config::DEFAULT_BOOT_TIMEOUT;
/// How often a session with nothing due wakes anyway (a safety net for its checks).
const IDLE_WAKE: Duration = Duration::from_secs(1);
/// How often the seen file is written while probes are attached.
const SEEN_EVERY: Duration = Duration::from_secs(1);

/// The session's state as status and metrics name it (see [`Link`] for each one's data).
pub use vesper_api::State;
pub use vesper_api::{ApiError, ErrorCode, GuestState, LoadOutcome, ProbePhase};

/// The connection's state, each with what only it has.
#[derive(Debug)]
enum Link {
    /// No stream; connecting with backoff.
    Disconnected,
    /// The VM's channel is not on this host (no socket, or nobody serves it).
    Elsewhere,
    /// Connected since `since`; the agent's Hello is due within [`HELLO_TIMEOUT`].
    Handshake { since: Instant },
    /// The agent said Hello and has been heard from within its deadtime.
    Ready(Greeted),
    /// The agent said Hello but has been silent for longer than the deadtime.
    Unresponsive(Greeted),
}

/// What a Hello brought, kept while that agent is on the connection.
#[derive(Debug)]
struct Greeted {
    agent: AgentInfo,
    /// When QMP reported a guest reset that no Hello has followed yet: the old agent is
    /// gone, and the new boot's has the boot timeout to connect before the VM counts as
    /// silent.
    reset_at: Option<Instant>,
}

impl Link {
    fn state(&self) -> State {
        match self {
            Link::Disconnected => State::Disconnected,
            Link::Elsewhere => State::Elsewhere,
            Link::Handshake { .. } => State::Handshake,
            Link::Ready(_) => State::Ready,
            Link::Unresponsive(_) => State::Unresponsive,
        }
    }

    fn greeted(&self) -> Option<&Greeted> {
        match self {
            Link::Ready(g) | Link::Unresponsive(g) => Some(g),
            _ => None,
        }
    }

    fn greeted_mut(&mut self) -> Option<&mut Greeted> {
        match self {
            Link::Ready(g) | Link::Unresponsive(g) => Some(g),
            _ => None,
        }
    }
}

/// Requests from the control API to a session.
#[derive(Debug)]
pub enum SessionCmd {
    Load {
        probe: ProbeSource,
        reply: LoadReply,
    },
    /// Unloads a probe; the reply carries its maps' last values.
    Unload {
        probe: String,
        reply: maps::MapsReply,
    },
    /// Reads a probe's maps (`vesper maps`).
    Maps {
        probe: String,
        reply: maps::MapsReply,
    },
    Status {
        reply: oneshot::Sender<VmStatus>,
    },
    /// Something the hypervisor saw (QMP).
    Host(HostEvent),
    /// The guest kernel's layouts for these keys ("cat:name", "kprobe:func").
    KernelInfo {
        keys: Vec<String>,
        reply: KernelInfoReply,
    },
}

/// What the host sees of a guest without any guest code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    Panicked { detail: String },
    Shutdown { reason: String, by_guest: bool },
    Reset,
}

/// The pseudo-probe under which the host's own observations are stored as records.
pub const HOST_PROBE: &str = "vesper";

struct ActiveProbe {
    status: ProbeStatus,
    manifest: Manifest,
    name: Arc<str>,
    /// When each of the manifest's interval probes runs next (set once loaded).
    next_interval: Vec<Option<Instant>>,
}

/// Where a session's records are judged: its rules, and where verdicts go.
#[derive(Debug)]
pub struct Judge {
    pub rules: Vec<crate::rules::Rule>,
    pub verdicts: mpsc::Sender<crate::rules::Verdict>,
}

/// Why a connection ended.
type End = String;
pub type LoadReply = oneshot::Sender<Result<LoadOutcome, ApiError>>;
pub type KernelInfoReply = oneshot::Sender<Result<KernelInfo, ApiError>>;

pub struct Session {
    pub name: String,
    connector: Box<dyn Connector>,
    resource: Option<String>,
    deadtime: Duration,
    store: Arc<Mutex<RecordStore>>,
    cmds: mpsc::Receiver<SessionCmd>,
    link: Link,
    desired: Vec<ProbeSource>,
    kernel: KernelInfo,
    probes: BTreeMap<u32, ActiveProbe>,
    next_probe_id: u32,
    /// Replies owed to the control API, answered as the agent does or the connection ends.
    pending: pending::Pending,
    /// When the agent was last heard from (on this connection or an earlier one).
    last_heard: Option<Instant>,
    /// Unix ms of the last Hello: verdicts older than this are history.
    connected_since_ms: Option<u64>,
    judge: Option<Judge>,
    verdict_seq: u64,
    last_verdict: Option<LastVerdict>,
    guest: GuestState,
    host_seq: u64,
    host_probe: Arc<str>,
    connects: u64,
    last_error: Option<String>,
    unknown_probe_records: u64,
    /// Records for unknown probes were logged on this connection (once: a flood must not
    /// become a flood of log lines).
    unknown_probe_logged: bool,
    out_seq: u64,
    limits: RateLimits,
    counters: Arc<ReadCounters>,
    /// Unix ms when probes were last known attached, while none are (the start of a gap
    /// in what is observed), and why the gap began.
    observed_until_ms: Option<u64>,
    gap_reason: &'static str,
    /// Where `observed_until_ms` survives a vesperd restart: written at every probe load
    /// and once a second while probes are attached, so a gap after a crash is overstated
    /// by at most a second.
    seen_file: Option<(PathBuf, crate::disk::DiskWriter)>,
    seen_written: Option<Instant>,
    gaps: u64,
    unobserved_ms: u64,
    /// How long a reset guest's new agent may take to connect (see [`Greeted::reset_at`]).
    boot_timeout: Duration,
    /// The guest kernel's types: where their transfer is, and the cache shared by all VMs.
    kernel_fetch: KernelFetch,
    kernels: Arc<crate::kernels::KernelCache>,
    /// Where blocking-pool work for this connection (cache lookups, parsing) reports back.
    kernel_done: Option<mpsc::Sender<KernelDone>>,
    /// "guest kernel types known" was logged on this connection.
    kernel_logged: bool,
}

/// Work done off the runtime for [`KernelFetch`].
#[derive(Debug)]
enum KernelDone {
    Looked(Result<Option<Arc<crate::kernels::GuestKernel>>, String>),
    Stored(Result<Arc<crate::kernels::GuestKernel>, String>),
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("link", &self.link)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(
        name: String,
        connector: Box<dyn Connector>,
        probes: Vec<ProbeSource>,
        resource: Option<String>,
        deadtime: Duration,
        store: Arc<Mutex<RecordStore>>,
        cmds: mpsc::Receiver<SessionCmd>,
    ) -> Self {
        Self {
            name,
            connector,
            resource,
            deadtime,
            store,
            cmds,
            link: Link::Disconnected,
            desired: probes,
            kernel: KernelInfo::default(),
            probes: BTreeMap::new(),
            next_probe_id: 1,
            pending: pending::Pending::default(),
            last_heard: None,
            connected_since_ms: None,
            judge: None,
            verdict_seq: 0,
            last_verdict: None,
            guest: GuestState::Running,
            host_seq: 0,
            host_probe: HOST_PROBE.into(),
            connects: 0,
            last_error: None,
            unknown_probe_records: 0,
            unknown_probe_logged: false,
            out_seq: 0,
            limits: RateLimits {
                records_per_sec: 0,
                bytes_per_sec: 0,
            },
            counters: ReadCounters::new(),
            observed_until_ms: None,
            gap_reason: "",
            seen_file: None,
            seen_written: None,
            gaps: 0,
            unobserved_ms: 0,
            boot_timeout: DEFAULT_BOOT_TIMEOUT,
            kernel_fetch: KernelFetch::Idle,
            kernels: crate::kernels::KernelCache::new(None),
            kernel_done: None,
            kernel_logged: false,
        }
    }

    /// How long a rebooting guest's agent may take to connect before it counts as silent.
    pub fn with_boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// Shares guest kernels' types with other sessions (and a disk cache).
    pub fn with_kernel_cache(mut self, kernels: Arc<crate::kernels::KernelCache>) -> Self {
        self.kernels = kernels;
        self
    }

    /// Limits what this VM may send per second.
    pub fn with_rate_limits(mut self, limits: RateLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Judges this session's records with `judge`'s rules.
    pub fn with_judge(mut self, judge: Judge) -> Self {
        self.judge = Some(judge);
        self
    }

    /// Runs the rules over a record; a match becomes a verdict (never blocks: the
    /// action task has a bounded queue, and a full one is logged).
    fn judge(&mut self, record: &serde_json::Value) {
        let Some(j) = &self.judge else { return };
        let Some((rule, cause)) = j
            .rules
            .iter()
            .find_map(|r| r.check(record).map(|c| (r.name.clone(), c)))
        else {
            return;
        };
        self.verdict_seq += 1;
        let v = crate::rules::Verdict {
            id: self.verdict_seq,
            vm: self.name.clone(),
            resource: self.resource.clone(),
            rule,
            cause,
            time_ms: now_ms(),
            connection: self.connects,
            evidence: vec![record.clone()],
        };
        tracing::warn!(vm = %self.name, resource = ?self.resource, rule = %v.rule, cause = %v.cause, "verdict");
        self.last_verdict = Some(LastVerdict {
            time_ms: v.time_ms,
            rule: v.rule.clone(),
            cause: v.cause.clone(),
        });
        if let Err(e) = j.verdicts.try_send(v) {
            tracing::error!(vm = %self.name, error = %e, "verdict not acted on: the action queue is full or gone");
        }
    }

    /// Moves to `next` (logged when the state's name changes).
    fn enter(&mut self, next: Link) {
        let (from, to) = (self.link.state(), next.state());
        if from != to {
            tracing::info!(vm = %self.name, from = ?from, to = ?to, "session state");
        }
        self.link = next;
    }

    /// Ready and Unresponsive swap; the agent's data goes along.
    fn set_responsive(&mut self, responsive: bool) {
        let from = self.link.state();
        self.link = match std::mem::replace(&mut self.link, Link::Disconnected) {
            Link::Ready(g) | Link::Unresponsive(g) if responsive => Link::Ready(g),
            Link::Ready(g) | Link::Unresponsive(g) => Link::Unresponsive(g),
            other => other,
        };
        let to = self.link.state();
        if from != to {
            tracing::info!(vm = %self.name, from = ?from, to = ?to, "session state");
        }
    }

    /// Runs forever (until the command channel closes).
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if !matches!(self.link, Link::Elsewhere) {
                self.enter(Link::Disconnected);
            }
            let connected = tokio::select! {
                r = self.connector.connect() => r,
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => { self.command_offline(cmd); continue; }
                    None => return,
                },
            };
            let pause = match connected {
                Ok(stream) => {
                    self.on_connected();
                    backoff = BACKOFF_MIN;
                    self.connects += 1;
                    let end = self.serve(stream).await;
                    tracing::warn!(vm = %self.name, reason = %end, "session down");
                    self.last_error = Some(end);
                    self.reset_connection();
                    if self.cmds.is_closed() {
                        return;
                    }
                    backoff
                }
                Err(e) if crate::channel::is_absent(&e) => {
                    self.depart(&e);
                    backoff = BACKOFF_MIN;
                    ELSEWHERE_POLL
                }
                Err(e) => {
                    let msg = format!("connecting to {}: {e}", self.connector.describe());
                    if self.last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(vm = %self.name, error = %msg, "cannot reach the agent; retrying");
                    }
                    self.last_error = Some(msg);
                    self.enter(Link::Disconnected);
                    backoff
                }
            };
            // Wait, still answering commands.
            let until = tokio::time::Instant::now() + pause;
            backoff = (backoff * 2).min(BACKOFF_MAX);
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(until) => break,
                    cmd = self.cmds.recv() => match cmd {
                        Some(cmd) => self.command_offline(cmd),
                        None => return,
                    },
                }
            }
        }
    }

    fn reset_connection(&mut self) {
        // The agent was last known alive when it was last heard from.
        let last_alive = self.last_heard.map_or(now_ms(), |t| {
            now_ms().saturating_sub(t.elapsed().as_millis() as u64)
        });
        self.begin_gap(last_alive, "the agent's connection ended");
        // Loads still waiting were answered "pending": they run at the next connect.
        let waiting: Vec<ProbeSource> = self.pending.waiting_probes().cloned().collect();
        for probe in waiting {
            if !self.desired.iter().any(|d| d.name() == probe.name()) {
                self.desired.push(probe);
            }
        }
        self.pending.connection_ended();
        self.probes.clear();
        self.enter(Link::Disconnected);
        self.kernel = KernelInfo::default();
        // The next agent may run another kernel: asked again (one round trip when cached).
        self.kernel_fetch = KernelFetch::Idle;
        self.kernel_done = None;
        self.kernel_logged = false;
    }

    async fn serve(&mut self, stream: BoxStream) -> End {
        let (rd, mut wr) = tokio::io::split(stream);
        let (ftx, mut frx) = mpsc::channel(64);
        let (ktx, mut krx) = mpsc::channel(2);
        self.kernel_done = Some(ktx);
        let reader = tokio::spawn(read_frames(
            rd,
            ftx,
            self.name.clone(),
            self.limits,
            self.counters.clone(),
        ));
        self.out_seq = 0;
        self.enter(Link::Handshake {
            since: Instant::now(),
        });
        let end = loop {
            let wake = tokio::time::Instant::from_std(self.next_wake());
            let step = tokio::select! {
                m = frx.recv() => match m {
                    Some(Ok(msg)) => self.on_message(msg, &mut wr).await,
                    Some(Err(e)) => Err(e),
                    None => Err("agent closed the channel".to_string()),
                },
                cmd = self.cmds.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd, &mut wr).await,
                    None => Err("daemon shutting down".to_string()),
                },
                _ = tokio::time::sleep_until(wake) => {
                    let step = self.kernel_fetch.check_timeout();
                    match self.kernel_step(step, &mut wr).await {
                        Ok(()) => match self.run_intervals(&mut wr).await {
                            Ok(()) => self.on_tick(),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    }
                }
                Some(done) = krx.recv() => {
                    let step = match done {
                        KernelDone::Looked(r) => self.kernel_fetch.looked_up(r),
                        KernelDone::Stored(r) => self.kernel_fetch.stored(r),
                    };
                    self.kernel_step(step, &mut wr).await
                }
            };
            if let Err(e) = step {
                break e;
            }
        };
        reader.abort();
        end
    }

    /// When the session next has something to do on its own: a timeout, the deadtime, a
    /// reset guest's boot timeout, an interval probe's turn, the seen file's write. With
    /// nothing due it wakes once a second anyway: 500 quiet sessions wake 500 times a
    /// second, not the 5,000 a fixed 100 ms tick cost.
    fn next_wake(&self) -> Instant {
        // Checks are "more than the timeout ago": a wake just past the deadline, not on it.
        const PAST: Duration = Duration::from_millis(2);
        let now = Instant::now();
        let mut at = now + IDLE_WAKE;
        let mut soon = |t: Instant| at = at.min(t);
        if self.observing() {
            soon(self.seen_written.map_or(now, |t| t + SEEN_EVERY));
        }
        match &self.link {
            Link::Handshake { since } => soon(*since + HELLO_TIMEOUT + PAST),
            Link::Ready(g) => {
                if let Some(t) = g.reset_at {
                    soon(t + self.boot_timeout + PAST);
                }
                if let Some(t) = self.last_heard {
                    soon(t + self.deadtime + PAST);
                }
            }
            _ => {}
        }
        if let Some(t) = self.kernel_fetch.deadline() {
            soon(t + PAST);
        }
        let loaded = self
            .probes
            .values()
            .filter(|p| p.status.phase == ProbePhase::Loaded);
        for p in loaded {
            // An interval not started yet starts at once.
            p.next_interval.iter().for_each(|n| soon(n.unwrap_or(now)));
        }
        at
    }

    fn on_tick(&mut self) -> Result<(), End> {
        if self.observing() {
            self.note_observing(false);
        }
        let silent = self.last_heard.map(|t| t.elapsed());
        match &self.link {
            Link::Handshake { since } if since.elapsed() > HELLO_TIMEOUT => Err(format!(
                "no Hello from the agent within {} s",
                HELLO_TIMEOUT.as_secs()
            )),
            // A rebooting guest has no agent until its new boot starts one.
            Link::Ready(Greeted {
                reset_at: Some(t), ..
            }) if t.elapsed() <= self.boot_timeout => Ok(()),
            Link::Ready(g) if silent.is_some_and(|s| s > self.deadtime) => {
                let detail = match g.reset_at {
                    Some(t) => format!(
                        "no agent since the guest reset {} ms ago (boot_timeout_ms {})",
                        t.elapsed().as_millis(),
                        self.boot_timeout.as_millis()
                    ),
                    None => format!(
                        "no frame for {} ms (deadtime {} ms)",
                        silent.unwrap_or_default().as_millis(),
                        self.deadtime.as_millis()
                    ),
                };
                self.host_record("agent_unresponsive", detail, false);
                tracing::warn!(vm = %self.name, deadtime_ms = self.deadtime.as_millis() as u64, "agent unresponsive");
                self.set_responsive(false);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    async fn send(&mut self, wr: &mut WriteHalf<BoxStream>, msg: &Message) -> Result<(), End> {
        let frame = encode_frame(msg, self.out_seq);
        self.out_seq += 1;
        wr.write_all(&frame)
            .await
            .map_err(|e| format!("writing to the agent: {e}"))
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
