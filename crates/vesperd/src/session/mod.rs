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
//! The session is split by job: connection and messages here, `commands.rs` (control API
//! requests), `probes.rs` (compile and ship), `ingest.rs` (records and the frame reader),
//! `gaps.rs` (unobserved time, arrival and departure), `status.rs` (what status shows).
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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
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
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Disconnected,
    Elsewhere,
    Handshake,
    Ready,
    Unresponsive,
}

/// Requests from the control API to a session.
#[derive(Debug)]
pub enum SessionCmd {
    Load {
        probe: ProbeSource,
        reply: oneshot::Sender<Result<LoadOutcome, String>>,
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

/// The guest as the hypervisor reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestState {
    /// Nothing reported (no QMP, or nothing happened yet).
    Running,
    Panicked,
    Shutdown,
}

/// The pseudo-probe under which the host's own observations are stored as records.
pub const HOST_PROBE: &str = "vesper";

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum LoadOutcome {
    /// Loaded and attached in the guest.
    Loaded { probe_id: u32, load_us: u64 },
    /// The VM is not connected; the probe loads when its agent connects.
    Pending,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbePhase {
    Loading,
    Loaded,
}

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
type LoadReply = oneshot::Sender<Result<LoadOutcome, String>>;
type KernelInfoReply = oneshot::Sender<Result<KernelInfo, String>>;

pub struct Session {
    pub name: String,
    connector: Box<dyn Connector>,
    resource: Option<String>,
    deadtime: Duration,
    store: Arc<Mutex<RecordStore>>,
    cmds: mpsc::Receiver<SessionCmd>,
    state: State,
    desired: Vec<ProbeSource>,
    agent: Option<AgentInfo>,
    kernel: KernelInfo,
    probes: BTreeMap<u32, ActiveProbe>,
    next_probe_id: u32,
    /// Loads waiting for kernel info.
    waiting_kernel_info: Vec<(ProbeSource, Option<LoadReply>)>,
    /// Loads waiting for the guest kernel's types (a transfer under way).
    waiting_kernel_types: Vec<(ProbeSource, Option<LoadReply>)>,
    /// `vesper kernel-info` requests waiting for the agent's answer.
    info_waiters: Vec<(Vec<String>, KernelInfoReply)>,
    /// Loads asked for during the handshake: started once the agent said Hello.
    waiting_hello: Vec<(ProbeSource, LoadReply)>,
    load_replies: HashMap<u32, LoadReply>,
    /// Unloads sent, with the maps' last values read before.
    unload_replies: HashMap<u32, (maps::MapsReply, Vec<vesper_probe::map_values::MapDump>)>,
    map_reads: Vec<maps::MapRead>,
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
    /// When QMP reported a guest reset that no agent Hello has followed yet: the old
    /// agent is gone, and the new boot's has `boot_timeout` to connect.
    reset_at: Option<Instant>,
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
            .field("state", &self.state)
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
            state: State::Disconnected,
            desired: probes,
            agent: None,
            kernel: KernelInfo::default(),
            probes: BTreeMap::new(),
            next_probe_id: 1,
            waiting_kernel_info: Vec::new(),
            waiting_kernel_types: Vec::new(),
            waiting_hello: Vec::new(),
            info_waiters: Vec::new(),
            load_replies: HashMap::new(),
            unload_replies: HashMap::new(),
            map_reads: Vec::new(),
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
            reset_at: None,
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

    fn set_state(&mut self, s: State) {
        if self.state != s {
            tracing::info!(vm = %self.name, from = ?self.state, to = ?s, "session state");
            self.state = s;
        }
    }

    /// Runs forever (until the command channel closes).
    pub async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.state != State::Elsewhere {
                self.set_state(State::Disconnected);
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
                    self.set_state(State::Disconnected);
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
        for (_, reply) in self
            .waiting_kernel_info
            .drain(..)
            .chain(self.waiting_kernel_types.drain(..))
        {
            if let Some(r) = reply {
                let _ = r.send(Ok(LoadOutcome::Pending));
            }
        }
        for (_, r) in self.info_waiters.drain(..) {
            let _ = r.send(Err("the agent disconnected before answering".into()));
        }
        for (_, r) in self.waiting_hello.drain(..) {
            let _ = r.send(Ok(LoadOutcome::Pending));
        }
        for (_, r) in self.load_replies.drain() {
            let _ = r.send(Ok(LoadOutcome::Pending));
        }
        for (_, (r, last)) in self.unload_replies.drain() {
            let _ = r.send(Ok(last));
        }
        self.end_map_reads();
        self.probes.clear();
        self.agent = None;
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
        self.set_state(State::Handshake);
        let connected_at = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let end = loop {
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
                _ = tick.tick() => {
                    let step = self.kernel_fetch.check_timeout();
                    match self.kernel_step(step, &mut wr).await {
                        Ok(()) => match self.run_intervals(&mut wr).await {
                        Ok(()) => self.on_tick(connected_at),
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

    fn on_tick(&mut self, connected_at: Instant) -> Result<(), End> {
        if self.observing() {
            self.note_observing(false);
        }
        match self.state {
            State::Handshake if connected_at.elapsed() > HELLO_TIMEOUT => Err(format!(
                "no Hello from the agent within {} s",
                HELLO_TIMEOUT.as_secs()
            )),
            // A rebooting guest has no agent until its new boot starts one.
            State::Ready
                if self
                    .reset_at
                    .is_some_and(|t| t.elapsed() <= self.boot_timeout) =>
            {
                Ok(())
            }
            State::Ready if self.last_heard.is_some_and(|t| t.elapsed() > self.deadtime) => {
                let silent = self.last_heard.map_or(0, |t| t.elapsed().as_millis());
                let detail = match self.reset_at {
                    Some(t) => format!(
                        "no agent since the guest reset {} ms ago (boot_timeout_ms {})",
                        t.elapsed().as_millis(),
                        self.boot_timeout.as_millis()
                    ),
                    None => format!(
                        "no frame for {silent} ms (deadtime {} ms)",
                        self.deadtime.as_millis()
                    ),
                };
                self.host_record("agent_unresponsive", detail, false);
                tracing::warn!(vm = %self.name, deadtime_ms = self.deadtime.as_millis() as u64, "agent unresponsive");
                self.set_state(State::Unresponsive);
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

    async fn on_message(&mut self, msg: Message, wr: &mut WriteHalf<BoxStream>) -> Result<(), End> {
        if self.state != State::Handshake && matches!(msg, Message::Hello(_)) {
            // Not "heard from": the agent that was is gone (a new one on the same channel).
            return Err("agent sent a second Hello".into());
        }
        self.last_heard = Some(Instant::now());
        if self.state == State::Unresponsive {
            tracing::info!(vm = %self.name, "agent heard from again");
            self.host_record("agent_responsive", String::new(), false);
            self.set_state(State::Ready);
        }
        match (self.state, msg) {
            (State::Handshake, Message::Hello(h)) => self.on_hello(h, wr).await,
            (State::Handshake, other) => Err(format!("agent sent {:?} before Hello", other.kind())),
            (_, Message::KernelInfo(k)) => {
                for f in k.formats {
                    let parsed = f.format.and_then(|t| parse_format(&f.event, &t).ok());
                    self.kernel.formats.insert(f.event, parsed);
                }
                self.kernel.btf = k.btf;
                self.kernel.release = k.release;
                for (keys, reply) in std::mem::take(&mut self.info_waiters) {
                    let _ = reply.send(
                        self.kernel_subset(&keys)
                            .ok_or_else(|| "the agent did not answer every key".to_string()),
                    );
                }
                let waiting: Vec<_> = self.waiting_kernel_info.drain(..).collect();
                for (probe, reply) in waiting {
                    self.start_load(probe, reply, wr).await?;
                }
                Ok(())
            }
            (_, Message::ProbeLoaded { probe_id, load_us }) => {
                if let Some(p) = self.probes.get_mut(&probe_id) {
                    p.status.phase = ProbePhase::Loaded;
                    p.status.load_us = Some(load_us);
                    tracing::info!(vm = %self.name, probe = %p.name, probe_id, load_us, "probe loaded");
                    self.end_gap();
                    self.note_observing(true);
                }
                if let Some(r) = self.load_replies.remove(&probe_id) {
                    let _ = r.send(Ok(LoadOutcome::Loaded { probe_id, load_us }));
                }
                Ok(())
            }
            (_, Message::ProbeUnloaded { probe_id }) => {
                if let Some(p) = self.probes.remove(&probe_id) {
                    tracing::info!(vm = %self.name, probe = %p.name, probe_id, "probe unloaded");
                }
                if let Some((r, last)) = self.unload_replies.remove(&probe_id) {
                    let _ = r.send(Ok(last));
                }
                Ok(())
            }
            (
                _,
                Message::Error {
                    probe_id: 0,
                    code,
                    message,
                },
            ) if code == vesper_proto::message::error_code::KERNEL_FILE => {
                let step = self.kernel_fetch.refused(&truncate(&message, 4096));
                self.kernel_step(step, wr).await
            }
            (
                _,
                Message::Error {
                    probe_id,
                    code,
                    message,
                },
            ) if code == vesper_proto::message::error_code::MAP_READ => {
                self.map_read_failed(probe_id, &truncate(&message, 4096), wr)
                    .await
            }
            (
                _,
                Message::Error {
                    probe_id,
                    code,
                    message,
                },
            ) => {
                let failed = self
                    .probes
                    .get(&probe_id)
                    .filter(|p| p.status.phase == ProbePhase::Loading)
                    .is_some();
                let mut at_source = None;
                if failed && let Some(p) = self.probes.remove(&probe_id) {
                    tracing::warn!(vm = %self.name, probe = %p.name, error = %message, "probe failed to load");
                    at_source = probes::refusal_at_source(&self.desired, &p, &message);
                    self.desired.retain(|d| d.name() != &*p.name);
                }
                let message = truncate(&message, 4096);
                if let Some(r) = self.load_replies.remove(&probe_id) {
                    let _ = r.send(Err(match at_source {
                        Some(d) => {
                            format!("the agent in {} could not load the probe:\n{d}", self.name)
                        }
                        None => format!(
                            "the agent in {} could not load the probe: {message}",
                            self.name
                        ),
                    }));
                } else if let Some((r, _)) = self.unload_replies.remove(&probe_id) {
                    let _ = r.send(Err(message));
                } else if !failed {
                    tracing::warn!(vm = %self.name, probe_id, code, error = %message, "agent reported an error");
                }
                Ok(())
            }
            (_, Message::MapEntries(m)) => self.on_map_entries(m, wr).await,
            (_, Message::Records(batch)) => {
                self.on_records(batch);
                Ok(())
            }
            (_, Message::KernelFile(piece)) => {
                let kernels = &self.kernels;
                let step = self
                    .kernel_fetch
                    .on_piece(piece, |id| kernels.in_memory(id));
                self.kernel_step(step, wr).await
            }
            (_, Message::Heartbeat { .. } | Message::ProbeList { .. }) => Ok(()),
            (_, other) => Err(format!(
                "agent sent a host-only message ({:?})",
                other.kind()
            )),
        }
    }

    async fn on_hello(&mut self, h: Hello, wr: &mut WriteHalf<BoxStream>) -> Result<(), End> {
        let agent = AgentInfo {
            version: truncate(&h.agent_version, 64),
            kernel_release: truncate(&h.kernel_release, 128),
            boot_id: truncate(&h.boot_id, 64),
            capabilities: h.capabilities,
        };
        tracing::info!(vm = %self.name, agent = %agent.version, kernel = %agent.kernel_release, "session up");
        self.unknown_probe_logged = false;
        self.kernel.release = agent.kernel_release.clone();
        if self.guest != GuestState::Running {
            self.guest = GuestState::Running;
            self.host_record(
                "guest_back",
                format!("agent connected, boot id {}", agent.boot_id),
                false,
            );
        }
        self.agent = Some(agent);
        self.reset_at = None;
        self.connected_since_ms = Some(now_ms());
        self.set_state(State::Ready);
        if h.capabilities & vesper_proto::message::caps::KERNEL_FILES != 0 {
            let step = self.kernel_fetch.start();
            self.kernel_step(step, wr).await?;
        }
        for probe in self.desired.clone() {
            self.start_load(probe, None, wr).await?;
        }
        for (probe, reply) in std::mem::take(&mut self.waiting_hello) {
            self.start_load(probe, Some(reply), wr).await?;
        }
        Ok(())
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
