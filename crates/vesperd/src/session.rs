//! The per-VM session: one task per VM, one readable state machine.
//!
//! ```text
//!            connect ok               Hello                 frame arrives
//! Disconnected ───────▶ Handshake ─────────▶ Ready ◀──────────────────────┐
//!      ▲                    │                  │ nothing heard for deadtime │
//!      │  EOF, I/O error,   │                  ▼                           │
//!      └── bad frame, ──────┴──────────── Unresponsive ───────────────────┘
//!          hello timeout
//! ```
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
    Unload {
        probe: String,
        reply: oneshot::Sender<Result<(), String>>,
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

#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub version: String,
    pub kernel_release: String,
    pub boot_id: String,
    pub capabilities: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbePhase {
    Loading,
    Loaded,
}

/// Host-side accounting for one loaded probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    pub name: String,
    pub probe_id: u32,
    pub phase: ProbePhase,
    /// Records received and stored.
    pub received: u64,
    /// Next sequence number expected from the agent.
    pub next_seq: u64,
    /// Records the BPF program could not write (ring buffer full), as the agent reports.
    pub kernel_drops: u64,
    /// Records the agent read but could not send.
    pub agent_drops: u64,
    /// Sequence numbers that never arrived.
    pub transport_lost: u64,
    /// Records with a sequence number already seen (dropped).
    pub replayed: u64,
    /// Records that did not match the probe's schema (dropped).
    pub malformed: u64,
    pub load_us: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VmStatus {
    pub name: String,
    pub state: State,
    /// The guest as the hypervisor reports it (QMP).
    pub guest: GuestState,
    pub channel: String,
    pub resource: Option<String>,
    pub agent: Option<AgentInfo>,
    /// Unix ms of the agent's last Hello (None: never connected since vesperd started).
    pub connected_since_ms: Option<u64>,
    /// Milliseconds since the agent was last heard from (None: never).
    pub last_heard_ms: Option<u64>,
    pub connects: u64,
    pub last_error: Option<String>,
    /// The latest verdict on this VM (kept by the session, so it is known at once, before
    /// any action has finished).
    pub last_verdict: Option<LastVerdict>,
    pub desired_probes: Vec<String>,
    pub probes: Vec<ProbeStatus>,
    /// Records for probes that are not loaded (dropped).
    pub unknown_probe_records: u64,
    pub stored_records: usize,
    pub stored_bytes: usize,
    pub evicted_records: u64,
    pub store_file_error: Option<String>,
    pub rate_limits: RateLimits,
    /// Bytes read from the VM's channel (all connections).
    pub bytes_received: u64,
    /// Milliseconds reading from this VM was paused by its rate limits, and how often.
    pub rate_limited_ms: u64,
    pub rate_limited_pauses: u64,
    /// Times probes were attached again after none were (agent reconnects, vesperd
    /// restarts), and the milliseconds in between, when nothing was observed.
    pub gaps: u64,
    pub unobserved_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastVerdict {
    pub time_ms: u64,
    pub rule: String,
    pub cause: String,
}

struct ActiveProbe {
    status: ProbeStatus,
    manifest: Manifest,
    name: Arc<str>,
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
    /// `vesper kernel-info` requests waiting for the agent's answer.
    info_waiters: Vec<(Vec<String>, KernelInfoReply)>,
    /// Loads asked for during the handshake: started once the agent said Hello.
    waiting_hello: Vec<(ProbeSource, LoadReply)>,
    load_replies: HashMap<u32, LoadReply>,
    unload_replies: HashMap<u32, oneshot::Sender<Result<(), String>>>,
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
    seen_file: Option<PathBuf>,
    seen_written: Option<Instant>,
    gaps: u64,
    unobserved_ms: u64,
    /// When QMP reported a guest reset that no agent Hello has followed yet: the old
    /// agent is gone, and the new boot's has `boot_timeout` to connect.
    reset_at: Option<Instant>,
    boot_timeout: Duration,
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
            waiting_hello: Vec::new(),
            info_waiters: Vec::new(),
            load_replies: HashMap::new(),
            unload_replies: HashMap::new(),
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
        }
    }

    /// How long a rebooting guest's agent may take to connect before it counts as silent.
    pub fn with_boot_timeout(mut self, t: Duration) -> Self {
        self.boot_timeout = t;
        self
    }

    /// Keeps the time probes were last attached in `path`, so that the time vesperd was
    /// not running is reported as a gap when the probes are back.
    pub fn with_seen_file(mut self, path: PathBuf) -> Self {
        if let Some(ms) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
        {
            self.observed_until_ms = Some(ms);
            self.gap_reason = "vesperd was not watching the VM";
        }
        self.seen_file = Some(path);
        self
    }

    /// Probes are attached in the guest, as far as the host knows.
    fn observing(&self) -> bool {
        self.observed_until_ms.is_none()
            && self
                .probes
                .values()
                .any(|p| p.status.phase == ProbePhase::Loaded)
    }

    /// Starts a gap at `since_ms` if probes were attached.
    fn begin_gap(&mut self, since_ms: u64, reason: &'static str) {
        if self.observing() {
            self.observed_until_ms = Some(since_ms);
            self.gap_reason = reason;
            self.write_seen(since_ms);
        }
    }

    /// Notes that probes are attached now (in the seen file, at most once a second).
    fn note_observing(&mut self, force: bool) {
        if !force
            && self
                .seen_written
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.seen_written = Some(Instant::now());
        self.write_seen(now_ms());
    }

    /// Keeps `ms` as the time probes were last known attached.
    fn write_seen(&self, ms: u64) {
        if let Some(path) = &self.seen_file {
            // A full disk only costs the gap's start after a restart: the next write retries.
            let _ = std::fs::write(path, ms.to_string());
        }
    }

    /// Probes are attached again: the time they were not is reported as loss.
    fn end_gap(&mut self) {
        let Some(since) = self.observed_until_ms.take() else {
            return;
        };
        let gap = now_ms().saturating_sub(since);
        self.gaps += 1;
        self.unobserved_ms += gap;
        tracing::warn!(vm = %self.name, gap_ms = gap, reason = self.gap_reason, "probes attached again after a gap: events in it were not observed");
        self.host_record(
            "unobserved",
            format!(
                "no probe was attached for {gap} ms ({}): events in that time were not recorded",
                self.gap_reason
            ),
            false,
        );
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

    /// The VM's channel is not on this host. Nothing here can miss its events, so a gap
    /// that was open is closed without being counted (the node it moved to reports its own).
    fn depart(&mut self, e: &std::io::Error) {
        if self.state == State::Elsewhere {
            return;
        }
        let was_here = self.state == State::Disconnected && self.last_heard.is_some();
        self.set_state(State::Elsewhere);
        self.observed_until_ms = None;
        self.reset_at = None;
        if let Some(path) = &self.seen_file {
            let _ = std::fs::remove_file(path);
        }
        self.last_error = None;
        if was_here {
            let heard = self.last_heard.map_or(0, |t| t.elapsed().as_millis());
            tracing::info!(vm = %self.name, channel = %self.connector.describe(), last_heard_ms = heard as u64, "the VM left this node (its channel is gone)");
            self.host_record(
                "departed",
                format!("the VM's channel is gone from this node ({e}); its agent was last heard {heard} ms ago"),
                false,
            );
        } else {
            tracing::info!(vm = %self.name, channel = %self.connector.describe(), "the VM is not on this node (no channel); watching for it to arrive");
        }
    }

    /// A connection is made. A VM that was elsewhere, or whose channel is newer than the
    /// last time probes were seen attached, arrived here: the time from its channel's
    /// appearance to its probes being attached is a gap.
    fn on_connected(&mut self) {
        let appeared = self
            .connector
            .appeared_at()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as u64);
        let newer = matches!((self.observed_until_ms, appeared), (Some(seen), Some(a)) if a > seen);
        if self.state != State::Elsewhere && !newer {
            return;
        }
        let since = appeared.unwrap_or_else(now_ms).min(now_ms());
        let ago = now_ms() - since;
        tracing::info!(vm = %self.name, channel = %self.connector.describe(), appeared_ms_ago = ago, "the VM arrived on this node");
        self.host_record(
            "arrived",
            format!("the VM's channel appeared on this node {ago} ms ago"),
            false,
        );
        self.observed_until_ms = Some(since);
        self.gap_reason = "the VM arrived on this node";
        self.set_state(State::Disconnected);
    }

    fn reset_connection(&mut self) {
        // The agent was last known alive when it was last heard from.
        let last_alive = self.last_heard.map_or(now_ms(), |t| {
            now_ms().saturating_sub(t.elapsed().as_millis() as u64)
        });
        self.begin_gap(last_alive, "the agent's connection ended");
        for (_, reply) in self.waiting_kernel_info.drain(..) {
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
        for (_, r) in self.unload_replies.drain() {
            let _ = r.send(Ok(()));
        }
        self.probes.clear();
        self.agent = None;
        self.kernel = KernelInfo::default();
    }

    fn command_offline(&mut self, cmd: SessionCmd) {
        match cmd {
            SessionCmd::Load { probe, reply } => {
                if let Err(e) = probe.kernel_keys() {
                    let _ = reply.send(Err(e.to_string()));
                    return;
                }
                if self.desired.iter().any(|d| d.name() == probe.name()) {
                    let _ = reply.send(Err(self.already_loaded(probe.name())));
                    return;
                }
                self.desired.push(probe);
                let _ = reply.send(Ok(LoadOutcome::Pending));
            }
            SessionCmd::Unload { probe, reply } => {
                let r = if self.desired.iter().any(|d| d.name() == probe) {
                    self.desired.retain(|d| d.name() != probe);
                    Ok(())
                } else {
                    Err(format!("probe {probe:?} is not loaded in {}", self.name))
                };
                let _ = reply.send(r);
            }
            SessionCmd::Status { reply } => {
                let _ = reply.send(self.status());
            }
            SessionCmd::Host(ev) => self.on_host_event(ev),
            SessionCmd::KernelInfo { reply, .. } => {
                let _ = reply.send(Err(format!(
                    "{} is not connected (state {:?}); its agent must be up to ask its kernel",
                    self.name, self.state
                )));
            }
        }
    }

    /// The cached kernel info restricted to `keys`, if every key is known.
    fn kernel_subset(&self, keys: &[String]) -> Option<KernelInfo> {
        let mut k = KernelInfo {
            release: self.kernel.release.clone(),
            btf: self.kernel.btf,
            formats: Default::default(),
        };
        for key in keys {
            k.formats
                .insert(key.clone(), self.kernel.formats.get(key)?.clone());
        }
        Some(k)
    }

    /// Records what the host saw, as a record of the `vesper` pseudo-probe, and judges it.
    fn host_record(&mut self, event: &str, detail: String, by_guest: bool) {
        let fields = vec![
            ("ts_ns".to_string(), vesper_probe::Value::UInt(0)),
            (
                "event".to_string(),
                vesper_probe::Value::Str(event.to_string()),
            ),
            ("detail".to_string(), vesper_probe::Value::Str(detail)),
            (
                "by_guest".to_string(),
                vesper_probe::Value::UInt(u64::from(by_guest)),
            ),
        ];
        let seq = self.host_seq;
        self.host_seq += 1;
        let value = record_value(&self.name, HOST_PROBE, seq, fields, now_ms());
        self.judge(&value);
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        store.push(StoredRecord {
            probe: self.host_probe.clone(),
            seq,
            json: value.to_string().into(),
        });
    }

    fn on_host_event(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Panicked { detail } => {
                tracing::warn!(vm = %self.name, detail = %detail, "guest kernel panicked (QMP GUEST_PANICKED)");
                self.guest = GuestState::Panicked;
                self.host_record("guest_panicked", detail, true);
            }
            HostEvent::Shutdown { reason, by_guest } => {
                tracing::warn!(vm = %self.name, reason = %reason, by_guest, "guest shut down (QMP SHUTDOWN)");
                if self.guest != GuestState::Panicked {
                    self.guest = GuestState::Shutdown;
                }
                let who = if by_guest {
                    "by the guest"
                } else {
                    "by the host"
                };
                self.host_record("guest_shutdown", format!("{reason} ({who})"), by_guest);
            }
            HostEvent::Reset => {
                tracing::info!(vm = %self.name, "guest reset (QMP RESET)");
                // The probes went with the old boot, whatever the channel still shows.
                self.begin_gap(now_ms(), "the guest was reset");
                self.reset_at.get_or_insert_with(Instant::now);
                self.guest = GuestState::Running;
                self.host_record("guest_reset", String::new(), false);
            }
        }
    }

    async fn serve(&mut self, stream: BoxStream) -> End {
        let (rd, mut wr) = tokio::io::split(stream);
        let (ftx, mut frx) = mpsc::channel(64);
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
                _ = tick.tick() => self.on_tick(connected_at),
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
                if let Some(r) = self.unload_replies.remove(&probe_id) {
                    let _ = r.send(Ok(()));
                }
                Ok(())
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
                if failed && let Some(p) = self.probes.remove(&probe_id) {
                    tracing::warn!(vm = %self.name, probe = %p.name, error = %message, "probe failed to load");
                    self.desired.retain(|d| d.name() != &*p.name);
                }
                let message = truncate(&message, 4096);
                if let Some(r) = self.load_replies.remove(&probe_id) {
                    let _ = r.send(Err(format!(
                        "the agent in {} could not load the probe: {message}",
                        self.name
                    )));
                } else if let Some(r) = self.unload_replies.remove(&probe_id) {
                    let _ = r.send(Err(message));
                } else if !failed {
                    tracing::warn!(vm = %self.name, probe_id, code, error = %message, "agent reported an error");
                }
                Ok(())
            }
            (_, Message::Records(batch)) => {
                self.on_records(batch);
                Ok(())
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
        for probe in self.desired.clone() {
            self.start_load(probe, None, wr).await?;
        }
        for (probe, reply) in std::mem::take(&mut self.waiting_hello) {
            self.start_load(probe, Some(reply), wr).await?;
        }
        Ok(())
    }

    /// Compiles `probe` for this guest's kernel and ships it, fetching the kernel's
    /// tracepoint formats first if they are not known yet.
    async fn start_load(
        &mut self,
        probe: ProbeSource,
        reply: Option<LoadReply>,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let fail = |reply: Option<oneshot::Sender<_>>, msg: String| {
            if let Some(r) = reply {
                let _ = r.send(Err(msg));
            }
        };
        let events = match probe.kernel_keys() {
            Ok(e) => e,
            Err(e) => {
                fail(reply, e.to_string());
                return Ok(());
            }
        };
        if self.probes.values().any(|p| &*p.name == probe.name()) {
            fail(reply, self.already_loaded(probe.name()));
            return Ok(());
        }
        let missing: Vec<String> = events
            .iter()
            .filter(|e| !self.kernel.formats.contains_key(e.as_str()))
            .map(|e| e.to_string())
            .collect();
        if !missing.is_empty() {
            let ask = !self.waiting_kernel_info.is_empty();
            self.waiting_kernel_info.push((probe, reply));
            if !ask {
                self.send(wr, &Message::KernelInfoRequest { events: missing })
                    .await?;
            }
            return Ok(());
        }
        let compiled = match probe.build(&self.kernel) {
            Ok(c) => c,
            Err(e) => {
                let name = probe.name();
                tracing::warn!(vm = %self.name, probe = %name, error = %e, "cannot build probe for this guest");
                self.desired.retain(|d| d.name() != name);
                fail(
                    reply,
                    format!(
                        "cannot build {name} for {} (kernel {}):\n{e}",
                        self.name, self.kernel.release
                    ),
                );
                return Ok(());
            }
        };
        let name = probe.name().to_string();
        if !self.desired.iter().any(|d| d.name() == name) {
            self.desired.push(probe);
        }
        let probe_id = self.next_probe_id;
        self.next_probe_id += 1;
        let m = &compiled.manifest;
        let load = LoadProbe {
            probe_id,
            name: name.clone(),
            object: compiled.object,
            ring_map: m.ring_map.clone(),
            drops_map: m.drops_map.clone(),
            attach: m
                .attach
                .iter()
                .map(|a| AttachPoint {
                    program: a.program.clone(),
                    kind: attach_kind(a.kind),
                    target: a.target.clone(),
                })
                .collect(),
        };
        self.probes.insert(
            probe_id,
            ActiveProbe {
                status: ProbeStatus {
                    name: name.clone(),
                    probe_id,
                    phase: ProbePhase::Loading,
                    received: 0,
                    next_seq: 0,
                    kernel_drops: 0,
                    agent_drops: 0,
                    transport_lost: 0,
                    replayed: 0,
                    malformed: 0,
                    load_us: None,
                },
                manifest: compiled.manifest,
                name: name.into(),
            },
        );
        if let Some(r) = reply {
            self.load_replies.insert(probe_id, r);
        }
        self.send(wr, &Message::LoadProbe(load)).await
    }

    async fn on_command(
        &mut self,
        cmd: SessionCmd,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        if self.state == State::Handshake {
            // Not ready to talk to the agent yet: loads wait for Hello (moments away),
            // anything else is answered as if offline.
            match cmd {
                SessionCmd::Load { probe, reply } => self.waiting_hello.push((probe, reply)),
                other => self.command_offline(other),
            }
            return Ok(());
        }
        match cmd {
            SessionCmd::Load { probe, reply } => self.start_load(probe, Some(reply), wr).await,
            SessionCmd::Unload { probe, reply } => {
                self.desired.retain(|d| d.name() != probe);
                let id = self
                    .probes
                    .iter()
                    .find(|(_, p)| &*p.name == probe.as_str())
                    .map(|(id, _)| *id);
                match id {
                    Some(probe_id) => {
                        self.unload_replies.insert(probe_id, reply);
                        self.send(wr, &Message::UnloadProbe { probe_id }).await
                    }
                    None => {
                        let _ = reply.send(Err(format!(
                            "probe {probe:?} is not loaded in {}",
                            self.name
                        )));
                        Ok(())
                    }
                }
            }
            SessionCmd::Status { reply } => {
                let _ = reply.send(self.status());
                Ok(())
            }
            SessionCmd::Host(ev) => {
                self.on_host_event(ev);
                Ok(())
            }
            SessionCmd::KernelInfo { keys, reply } => {
                if let Some(k) = self.kernel_subset(&keys) {
                    let _ = reply.send(Ok(k));
                    return Ok(());
                }
                let missing: Vec<String> = keys
                    .iter()
                    .filter(|k| !self.kernel.formats.contains_key(k.as_str()))
                    .cloned()
                    .collect();
                self.info_waiters.push((keys, reply));
                self.send(wr, &Message::KernelInfoRequest { events: missing })
                    .await
            }
        }
    }

    fn on_records(&mut self, batch: Records) {
        let Some(p) = self.probes.get_mut(&batch.probe_id) else {
            self.unknown_probe_records += batch.records.len() as u64;
            if !self.unknown_probe_logged {
                self.unknown_probe_logged = true;
                tracing::warn!(vm = %self.name, probe_id = batch.probe_id, "records for a probe that is not loaded: dropped and counted (unknown_probe_records); logged once per connection");
            }
            return;
        };
        let judged = self
            .judge
            .as_ref()
            .is_some_and(|j| j.rules.iter().any(|r| *r.probe == *p.name));
        let mut verdict_inputs = Vec::new();
        let st = &mut p.status;
        st.kernel_drops = st.kernel_drops.max(batch.kernel_drops);
        st.agent_drops = st.agent_drops.max(batch.agent_drops);
        if batch.first_seq > st.next_seq {
            let gap = batch.first_seq - st.next_seq;
            st.transport_lost += gap;
            tracing::warn!(vm = %self.name, probe = %p.name, lost = gap, "sequence gap: records lost in transit");
        }
        let host_ms = now_ms();
        let mut stored = Vec::with_capacity(batch.records.len());
        for (i, rec) in batch.records.iter().enumerate() {
            let seq = batch.first_seq.saturating_add(i as u64);
            if seq < st.next_seq {
                st.replayed += 1;
                continue;
            }
            st.next_seq = seq.saturating_add(1);
            match p.manifest.decode(rec) {
                Ok(fields) => {
                    st.received += 1;
                    let json = record_json(&self.name, &p.name, seq, &fields, host_ms);
                    if judged {
                        verdict_inputs
                            .push(record_value(&self.name, &p.name, seq, fields, host_ms));
                    }
                    stored.push(StoredRecord {
                        probe: p.name.clone(),
                        seq,
                        json: json.into(),
                    });
                }
                Err(_) => st.malformed += 1,
            }
        }
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        store.push_batch(stored);
        drop(store);
        for v in verdict_inputs {
            self.judge(&v);
        }
    }

    fn already_loaded(&self, probe: &str) -> String {
        format!(
            "probe {probe:?} is already loaded in {}; unload it first",
            self.name
        )
    }

    fn status(&self) -> VmStatus {
        let store = match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        VmStatus {
            name: self.name.clone(),
            state: self.state,
            guest: self.guest,
            channel: self.connector.describe(),
            resource: self.resource.clone(),
            agent: self.agent.clone(),
            connected_since_ms: self.connected_since_ms,
            last_heard_ms: self.last_heard.map(|t| t.elapsed().as_millis() as u64),
            connects: self.connects,
            last_error: self.last_error.clone(),
            last_verdict: self.last_verdict.clone(),
            desired_probes: self.desired.iter().map(|d| d.name().to_string()).collect(),
            probes: self.probes.values().map(|p| p.status.clone()).collect(),
            unknown_probe_records: self.unknown_probe_records,
            stored_records: store.len(),
            stored_bytes: store.bytes(),
            evicted_records: store.evicted,
            store_file_error: store.file_error.clone(),
            rate_limits: self.limits,
            bytes_received: self.counters.bytes(),
            rate_limited_ms: self.counters.ms(),
            rate_limited_pauses: self.counters.pauses(),
            gaps: self.gaps,
            unobserved_ms: self.unobserved_ms,
        }
    }
}

fn attach_kind(k: vesper_probe::AttachKind) -> vesper_proto::AttachKind {
    match k {
        vesper_probe::AttachKind::Tracepoint => vesper_proto::AttachKind::Tracepoint,
        vesper_probe::AttachKind::Kprobe => vesper_proto::AttachKind::Kprobe,
        vesper_probe::AttachKind::Kretprobe => vesper_proto::AttachKind::Kretprobe,
    }
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// The record as JSON: `vm`, `probe`, `seq`, then the schema's fields (ts_ns first), plus
/// `host_ms`, the host's wall clock at receipt. For rules; the store takes [`record_json`].
pub fn record_value(
    vm: &str,
    probe: &str,
    seq: u64,
    fields: Vec<(String, vesper_probe::Value)>,
    host_ms: u64,
) -> serde_json::Value {
    let mut m = serde_json::Map::with_capacity(fields.len() + 4);
    m.insert("vm".into(), vm.into());
    m.insert("probe".into(), probe.into());
    m.insert("seq".into(), seq.into());
    for (k, v) in fields {
        let v = match v {
            vesper_probe::Value::Int(i) => i.into(),
            vesper_probe::Value::UInt(u) => u.into(),
            vesper_probe::Value::Str(s) => s.into(),
        };
        m.insert(k, v);
    }
    m.insert("host_ms".into(), host_ms.into());
    serde_json::Value::Object(m)
}

/// The same record as [`record_value`], written straight to its JSON line: the ingest path
/// builds one per record, and a map per record cost more than everything else on it.
pub fn record_json(
    vm: &str,
    probe: &str,
    seq: u64,
    fields: &[(String, vesper_probe::Value)],
    host_ms: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + fields.len() * 24);
    out.push_str("{\"vm\":");
    push_json_str(&mut out, vm);
    out.push_str(",\"probe\":");
    push_json_str(&mut out, probe);
    let _ = write!(out, ",\"seq\":{seq}");
    for (k, v) in fields {
        out.push(',');
        push_json_str(&mut out, k);
        out.push(':');
        match v {
            vesper_probe::Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            vesper_probe::Value::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            vesper_probe::Value::Str(s) => push_json_str(&mut out, s),
        }
    }
    let _ = write!(out, ",\"host_ms\":{host_ms}}}");
    out
}

/// Appends `s` as a JSON string (quotes, backslashes and control characters escaped).
fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads frames from the agent until EOF or the first bad byte, pausing while the VM is
/// over its rate limits (logged once per connection).
async fn read_frames(
    mut rd: ReadHalf<BoxStream>,
    tx: mpsc::Sender<Result<Message, String>>,
    vm: String,
    limits: RateLimits,
    counters: Arc<ReadCounters>,
) {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = vec![0u8; 64 * 1024];
    let mut limiter = Limiter::new(limits, Instant::now());
    let mut logged = false;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                counters.read(n);
                n
            }
            Err(e) => {
                let _ = tx.send(Err(format!("reading from the agent: {e}"))).await;
                return;
            }
        };
        let mut records = 0u64;
        let mut rest = &buf[..n];
        loop {
            let used = dec.push(rest);
            rest = &rest[used..];
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let msg = f
                        .message()
                        .map_err(|e| format!("bad frame from the agent: {e}"));
                    if let Ok(Message::Records(r)) = &msg {
                        records += r.records.len() as u64;
                    }
                    let bad = msg.is_err();
                    if tx.send(msg).await.is_err() || bad {
                        return;
                    }
                }
                Ok(None) if rest.is_empty() => break,
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("bad frame from the agent: {e}"))).await;
                    return;
                }
            }
        }
        let pause = limiter.charge(records, n as u64, Instant::now());
        if !pause.is_zero() {
            if !logged {
                logged = true;
                tracing::warn!(vm = %vm, records_per_sec = limits.records_per_sec, bytes_per_sec = limits.bytes_per_sec, "VM over its rate limit: reading from it is paused while over (the guest drops and counts); logged once per connection, see rate_limited_ms in status");
            }
            counters.paused(pause);
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vesper_probe::Value as V;

    #[test]
    fn the_stored_json_line_is_the_rules_record_exactly() {
        for s in [
            "httpd",
            "",
            "a\"b\\c",
            "tab\there\nnl\r",
            "\u{1}\u{1f}\u{7f}",
            "é✓🦀",
        ] {
            let fields = vec![
                ("ts_ns".to_string(), V::UInt(u64::MAX)),
                ("sig".to_string(), V::Int(-15)),
                ("comm".to_string(), V::Str(s.to_string())),
            ];
            let line = record_json("web\"1", "signal", 7, &fields, 42);
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                parsed,
                record_value("web\"1", "signal", 7, fields, 42),
                "{line}"
            );
            // Same key order too: vm, probe, seq, the fields, host_ms.
            assert_eq!(parsed.to_string(), line);
        }
    }
}
