//! Actions: what happens when a rule reaches a verdict. Runs in its own task so a slow
//! cluster tool never holds up a session. Every verdict, its actions and the cluster's
//! reaction go to the why-log (memory and `state_dir/why.jsonl`).
//!
//! - `pacemaker`: records the cause as a node attribute (`vesper-cause-RESOURCE`, shown by
//!   `crm_mon -A`), then marks the resource failed (`crm_resource --fail`), then reads the
//!   fail-count back as the cluster's reaction.
//! - `exec`: runs a hook with the verdict as JSON on stdin.
//!
//! One fault, one failure: verdicts for a resource within `debounce` of the last acted-on
//! one, on the same agent connection, are logged as debounced, not acted on. Failed actions are retried with backoff.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::pacemaker::calls::ClusterCalls;
use crate::rules::Verdict;

const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
];
const WHY_KEPT: usize = 500;
/// The why-log file is rotated beyond this (one old file kept): a guest that keeps killing
/// its own watched services must not fill the host's disk.
const WHY_FILE_MAX: u64 = 16 << 20;

/// What to do for one VM's verdicts.
#[derive(Debug, Clone)]
pub struct VmActions {
    pub pacemaker: bool,
    pub hooks: Vec<PathBuf>,
    pub debounce: Duration,
}

pub use vesper_api::{ActionOutcome, WhyEntry};

/// Where the why-log goes on disk.
#[derive(Debug, Clone)]
pub struct WhyFile {
    pub path: PathBuf,
    pub disk: crate::disk::DiskWriter,
}

#[derive(Debug)]
pub struct WhyLog {
    entries: VecDeque<WhyEntry>,
    file: Option<WhyFile>,
    /// Counts of every finished entry, for the metrics.
    pub stats: crate::metrics::ActionStats,
}

impl WhyLog {
    pub fn new(file: Option<WhyFile>) -> Self {
        Self {
            entries: VecDeque::new(),
            file,
            stats: Default::default(),
        }
    }
    /// A why-log that starts with the latest entries of `file`: a verdict outlives the
    /// vesperd that reached it (its node may have been fenced right after). A verdict whose
    /// actions never finished is kept as such. Lines that do not parse are skipped; the
    /// file is bounded by its rotation.
    /// (Read once at start, before any session runs.)
    pub fn load(file: WhyFile) -> Self {
        let text = std::fs::read_to_string(&file.path).unwrap_or_default();
        let path = file.path.clone();
        let mut log = Self::new(Some(file));
        let mut kept: Vec<WhyEntry> = Vec::new();
        // Newest first: the first line seen for a verdict is its last word.
        for mut e in text
            .lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<WhyEntry>(l).ok())
        {
            let same = |o: &WhyEntry| {
                o.verdict.vm == e.verdict.vm
                    && o.verdict.id == e.verdict.id
                    && o.verdict.time_ms == e.verdict.time_ms
            };
            if kept.iter().any(same) {
                continue;
            }
            if e.pending {
                e.pending = false;
                e.actions.push(ActionOutcome {
                    kind: "vesperd".into(),
                    ok: false,
                    attempts: 0,
                    ms: 0,
                    detail: "vesperd stopped before this verdict's actions finished (its node may have been fenced or lost power)".into(),
                });
            }
            kept.push(e);
            if kept.len() == WHY_KEPT {
                break;
            }
        }
        kept.reverse();
        if !kept.is_empty() {
            tracing::info!(file = %path.display(), entries = kept.len(), "why-log: verdicts from before this start kept");
        }
        log.entries.extend(kept);
        log
    }
    /// Adds an entry, or replaces the pending one for the same verdict. Every entry goes
    /// to the file, pending ones too: a verdict must survive its node being powered off
    /// before its actions finish. The line is queued for the disk before the cluster is
    /// called, but the call does not wait for it: on a stalled disk the failover matters
    /// more than its log line (Pacemaker keeps its own record of the failure).
    fn push(&mut self, e: WhyEntry) {
        if !e.pending {
            self.stats.observe(&e);
        }
        if let Some(f) = &self.file {
            let mut line = serde_json::to_vec(&e).unwrap_or_default();
            line.push(b'\n');
            // A full queue is logged and counted by the writer; the entry stays in memory.
            f.disk.append(&f.path, line, WHY_FILE_MAX);
        }
        let same = |o: &WhyEntry| {
            o.pending && o.verdict.vm == e.verdict.vm && o.verdict.id == e.verdict.id
        };
        if let Some(slot) = self.entries.iter_mut().rev().find(|o| same(o)) {
            *slot = e;
            return;
        }
        self.entries.push_back(e);
        while self.entries.len() > WHY_KEPT {
            self.entries.pop_front();
        }
    }
    /// The latest `n` entries about `target` (a VM or a resource), oldest first.
    pub fn about(&self, target: &str, n: usize) -> Vec<WhyEntry> {
        let m: Vec<&WhyEntry> = self
            .entries
            .iter()
            .filter(|e| e.verdict.vm == target || e.verdict.resource.as_deref() == Some(target))
            .collect();
        let mut m = m;
        // Actions finish out of order; the timeline is in verdict order.
        m.sort_by_key(|e| (e.verdict.time_ms, e.verdict.id));
        m[m.len().saturating_sub(n)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    }
}

/// Each VM's actions by name, shared with reloads (which add and remove VMs).
pub type ActionConfigs = Arc<std::sync::RwLock<HashMap<String, VmActions>>>;

/// Runs the action task; returns where sessions send verdicts.
pub fn spawn(
    node: Option<String>,
    vms: ActionConfigs,
    why: Arc<Mutex<WhyLog>>,
) -> mpsc::Sender<Verdict> {
    let (tx, mut rx) = mpsc::channel::<Verdict>(256);
    if node.is_none() {
        // Learn the node name before the first fault needs it.
        tokio::spawn(async {
            while crm_node_name().await.is_none() {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    tokio::spawn(async move {
        let mut last: HashMap<String, (Instant, u64)> = HashMap::new();
        while let Some(v) = rx.recv().await {
            let known = match vms.read() {
                Ok(m) => m.get(&v.vm).cloned(),
                Err(p) => p.into_inner().get(&v.vm).cloned(),
            };
            let cfg = known.unwrap_or(VmActions {
                pacemaker: false,
                hooks: Vec::new(),
                debounce: Duration::from_secs(30),
            });
            let key = v.resource.clone().unwrap_or_else(|| v.vm.clone());
            let debounced = last
                .get(&key)
                .is_some_and(|(t, conn)| *conn == v.connection && t.elapsed() < cfg.debounce);
            if debounced {
                tracing::info!(vm = %v.vm, resource = %key, cause = %v.cause, "verdict debounced (resource already failed for this fault)");
                let entry = WhyEntry {
                    verdict: v,
                    debounced,
                    actions: Vec::new(),
                    cluster: None,
                    pending: false,
                };
                push(&why, entry);
                continue;
            }
            last.insert(key, (Instant::now(), v.connection));
            // Each verdict's actions run on their own, so a cluster tool that hangs or a
            // hook being retried never delays another VM's failover.
            tokio::spawn(act(v, cfg, node.clone(), why.clone()));
        }
    });
    tx
}

fn push(why: &Mutex<WhyLog>, entry: WhyEntry) {
    match why.lock() {
        Ok(mut w) => w.push(entry),
        Err(p) => p.into_inner().push(entry),
    }
}

/// Runs one verdict's actions and logs the outcome.
async fn act(v: Verdict, cfg: VmActions, node: Option<String>, why: Arc<Mutex<WhyLog>>) {
    let started = Instant::now();
    let mut entry = WhyEntry {
        verdict: v.clone(),
        debounced: false,
        actions: Vec::new(),
        cluster: None,
        pending: true,
    };
    push(&why, entry.clone());
    entry.pending = false;
    if let (true, Some(resource)) = (cfg.pacemaker, &v.resource) {
        let node = match node {
            Some(n) => Some(n),
            None => crm_node_name().await,
        };
        let cm = crate::pacemaker::calls::Pacemaker;
        let outcome = pacemaker(&cm, node.as_deref(), resource, &v.cause, started).await;
        if outcome.ok {
            entry.cluster = failcount(&cm, node.as_deref(), resource).await;
        }
        entry.actions.push(outcome);
    }
    for hook in &cfg.hooks {
        entry.actions.push(exec_hook(hook, &v, started).await);
    }
    for a in &entry.actions {
        if a.ok {
            tracing::info!(vm = %v.vm, action = %a.kind, ms = a.ms, attempts = a.attempts, "action done");
        } else {
            tracing::error!(vm = %v.vm, action = %a.kind, attempts = a.attempts, error = %a.detail, "action failed");
        }
    }
    push(&why, entry);
}

/// Runs a cluster tool with a timeout; its stdout, or its status and stderr.
pub(crate) async fn run_tool(
    program: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.stdin(if stdin.is_some() {
        std::process::Stdio::piped()
    } else {
        std::process::Stdio::null()
    });
    cmd.kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{program}: {e}"))?;
    if let (Some(data), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(data).await;
    }
    let out = tokio::time::timeout(TOOL_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| format!("{program}: no answer within {} s", TOOL_TIMEOUT.as_secs()))?
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "{program} {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `step` until it succeeds or the backoff schedule is used up; its value and the
/// attempts it took, or the failed outcome.
pub(crate) async fn retrying<T, F, Fut>(
    kind: &str,
    started: Instant,
    mut step: F,
) -> Result<(T, u32), ActionOutcome>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        match step().await {
            Ok(v) => return Ok((v, attempts)),
            Err(e) if attempts as usize > BACKOFF.len() => {
                return Err(ActionOutcome {
                    kind: kind.into(),
                    ok: false,
                    attempts,
                    ms: started.elapsed().as_millis() as u64,
                    detail: e,
                });
            }
            Err(e) => {
                tracing::warn!(action = kind, attempt = attempts, error = %e, "action failed; retrying");
                tokio::time::sleep(BACKOFF[attempts as usize - 1]).await;
            }
        }
    }
}

/// [`retrying`] for a step whose value is its outcome's detail.
pub(crate) async fn with_retries<F, Fut>(kind: &str, started: Instant, step: F) -> ActionOutcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    match retrying(kind, started, step).await {
        Ok((detail, attempts)) => ActionOutcome {
            kind: kind.into(),
            ok: true,
            attempts,
            ms: started.elapsed().as_millis() as u64,
            detail,
        },
        Err(failed) => failed,
    }
}

/// Fails the resource (counted once) and records the cause as a node attribute.
pub(crate) async fn pacemaker(
    cm: &impl ClusterCalls,
    node: Option<&str>,
    resource: &str,
    cause: &str,
    started: Instant,
) -> ActionOutcome {
    let Some(node) = node else {
        return ActionOutcome {
            kind: "pacemaker".into(),
            ok: false,
            attempts: 0,
            ms: 0,
            detail: "no Pacemaker node name: set [daemon] node, or run where `crm_node -n` answers"
                .into(),
        };
    };
    let attr = crate::cluster::cause_attribute(resource);
    // The failure first: it is what starts recovery, and the cause's write is a CIB change
    // that would make the live copy the fail is checked against stale for a moment.
    let mut out = crate::pacemaker::fail::fail_once(cm, node, resource, started).await;
    let cause_out = with_retries("pacemaker", started, || async {
        cm.set_transient(node, &attr, cause)
            .await
            .map(|()| String::new())
    })
    .await;
    out.attempts = out.attempts.max(cause_out.attempts);
    out.ms = started.elapsed().as_millis() as u64;
    if !cause_out.ok {
        out.ok = false;
        out.detail = format!(
            "{}; the cause attribute failed: {}",
            out.detail, cause_out.detail
        );
    } else if out.ok {
        out.detail = format!("{}; cause in node attribute {attr}", out.detail);
    }
    out
}

/// The cluster's reaction as the operator would read it: "fail-count 3 on node1".
async fn failcount(cm: &impl ClusterCalls, node: Option<&str>, resource: &str) -> Option<String> {
    let node = node?;
    let out = cm.failcount(node, resource).await.ok()?;
    // "scope=status  name=fail-count-R value=N"
    let n = out.rsplit("value=").next()?.trim();
    Some(format!("Pacemaker: fail-count {n} on {node}"))
}

/// This host's cluster node name, asked of `crm_node -n` once (at start, or at the first
/// fault if the cluster was not up then) and kept: a fault does not wait for it again.
async fn crm_node_name() -> Option<String> {
    static NAME: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    NAME.get_or_try_init(|| async {
        run_tool("crm_node", &["-n"], None)
            .await
            .ok()
            .filter(|n| !n.is_empty())
            .ok_or(())
    })
    .await
    .ok()
    .cloned()
}

async fn exec_hook(hook: &std::path::Path, v: &Verdict, started: Instant) -> ActionOutcome {
    let json = serde_json::to_vec(v).unwrap_or_default();
    let program = hook.display().to_string();
    with_retries(&format!("exec {program}"), started, || async {
        run_tool(&program, &[], Some(&json)).await.map(|out| {
            if out.is_empty() {
                "exit 0".into()
            } else {
                format!("exit 0: {out}")
            }
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u64, time_ms: u64, pending: bool) -> WhyEntry {
        WhyEntry {
            verdict: Verdict {
                id,
                vm: "web1".into(),
                resource: Some("vm-web1".into()),
                rule: "service-killed".into(),
                cause: format!("cause {id}"),
                time_ms,
                connection: 1,
                evidence: Vec::new(),
            },
            debounced: false,
            actions: Vec::new(),
            cluster: None,
            pending,
        }
    }

    #[test]
    fn a_finished_entry_replaces_its_pending_one_and_both_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("why.jsonl");
        let disk = crate::disk::DiskWriter::start(1 << 20).unwrap();
        let mut log = WhyLog::new(Some(WhyFile {
            path: file.clone(),
            disk: disk.clone(),
        }));
        log.push(entry(1, 100, true));
        log.push(entry(2, 90, false));
        assert_eq!(log.about("vm-web1", 10).len(), 2);
        assert!(
            log.about("web1", 10)[1].pending,
            "verdict order, not arrival order"
        );
        log.push(entry(1, 100, false));
        let all = log.about("web1", 10);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|e| !e.pending));
        assert!(disk.flush(Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&file).unwrap().lines().count(), 3);
        assert!(log.about("other", 10).is_empty());
    }

    #[test]
    fn a_restart_keeps_the_verdicts_in_the_file_and_skips_broken_lines() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("why.jsonl");
        let disk = crate::disk::DiskWriter::start(1 << 20).unwrap();
        let why = WhyFile {
            path: file.clone(),
            disk: disk.clone(),
        };
        let mut log = WhyLog::new(Some(why.clone()));
        log.push(entry(1, 100, true));
        log.push(entry(1, 100, false));
        // Its node lost power while this one's actions ran.
        log.push(entry(2, 200, true));
        drop(log);
        assert!(disk.flush(Duration::from_secs(5)));
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str("{\"half a line\n");
        std::fs::write(&file, text).unwrap();
        let log = WhyLog::load(why);
        let kept = log.about("web1", 10);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert!(kept.iter().all(|e| !e.pending));
        assert!(kept[0].actions.is_empty(), "finished, with no action");
        assert_eq!(kept[1].verdict.time_ms, 200);
        assert!(kept[1].actions[0].detail.contains("stopped before"));
    }
}
