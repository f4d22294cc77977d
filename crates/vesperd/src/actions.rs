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
//! one are logged as debounced, not acted on. Failed actions are retried with backoff.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

use crate::rules::Verdict;

const TOOL_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF: [Duration; 3] = [
    Duration::from_millis(200),
    Duration::from_secs(1),
    Duration::from_secs(5),
];
const WHY_KEPT: usize = 500;

/// What to do for one VM's verdicts.
#[derive(Debug, Clone)]
pub struct VmActions {
    pub pacemaker: bool,
    pub hooks: Vec<PathBuf>,
    pub debounce: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActionOutcome {
    pub kind: String,
    pub ok: bool,
    pub attempts: u32,
    /// From the verdict to the action's success (or last failure).
    pub ms: u64,
    pub detail: String,
}

/// One line of the why-log.
#[derive(Debug, Clone, Serialize)]
pub struct WhyEntry {
    pub verdict: Verdict,
    /// Acted on an earlier verdict for the same resource within the debounce window.
    pub debounced: bool,
    pub actions: Vec<ActionOutcome>,
    /// What the cluster reported afterwards (fail-count), if asked.
    pub cluster: Option<String>,
}

#[derive(Debug)]
pub struct WhyLog {
    entries: VecDeque<WhyEntry>,
    file: Option<PathBuf>,
}

impl WhyLog {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            entries: VecDeque::new(),
            file,
        }
    }
    fn push(&mut self, e: WhyEntry) {
        if let Some(path) = &self.file {
            let line = serde_json::to_string(&e).unwrap_or_default();
            let ok = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| writeln!(f, "{line}"));
            if let Err(err) = ok {
                tracing::warn!(file = %path.display(), error = %err, "cannot append to the why-log; kept in memory");
            }
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
        m[m.len().saturating_sub(n)..]
            .iter()
            .map(|e| (*e).clone())
            .collect()
    }
}

/// Runs the action task; returns where sessions send verdicts.
pub fn spawn(
    node: Option<String>,
    vms: HashMap<String, VmActions>,
    why: Arc<Mutex<WhyLog>>,
) -> mpsc::Sender<Verdict> {
    let (tx, mut rx) = mpsc::channel::<Verdict>(256);
    tokio::spawn(async move {
        let mut node = node;
        let mut last: HashMap<String, Instant> = HashMap::new();
        while let Some(v) = rx.recv().await {
            let cfg = vms.get(&v.vm).cloned().unwrap_or(VmActions {
                pacemaker: false,
                hooks: Vec::new(),
                debounce: Duration::from_secs(30),
            });
            let key = v.resource.clone().unwrap_or_else(|| v.vm.clone());
            let started = Instant::now();
            let debounced = last.get(&key).is_some_and(|t| t.elapsed() < cfg.debounce);
            let mut entry = WhyEntry {
                verdict: v.clone(),
                debounced,
                actions: Vec::new(),
                cluster: None,
            };
            if debounced {
                tracing::info!(vm = %v.vm, resource = %key, cause = %v.cause, "verdict debounced (resource already failed for this fault)");
            } else {
                last.insert(key.clone(), Instant::now());
                if let (true, Some(resource)) = (cfg.pacemaker, &v.resource) {
                    if node.is_none() {
                        node = crm_node_name().await;
                    }
                    let outcome = pacemaker(node.as_deref(), resource, &v.cause, started).await;
                    if outcome.ok {
                        entry.cluster = failcount(node.as_deref(), resource).await;
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
            }
            match why.lock() {
                Ok(mut w) => w.push(entry),
                Err(p) => p.into_inner().push(entry),
            }
        }
    });
    tx
}

async fn run_tool(program: &str, args: &[&str], stdin: Option<&[u8]>) -> Result<String, String> {
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

/// Runs `step` until it succeeds or the backoff schedule is used up.
async fn with_retries<F, Fut>(kind: &str, started: Instant, mut step: F) -> ActionOutcome
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let mut attempts = 0;
    loop {
        attempts += 1;
        let r = step().await;
        let ms = started.elapsed().as_millis() as u64;
        match r {
            Ok(detail) => {
                return ActionOutcome {
                    kind: kind.into(),
                    ok: true,
                    attempts,
                    ms,
                    detail,
                };
            }
            Err(e) if attempts as usize > BACKOFF.len() => {
                return ActionOutcome {
                    kind: kind.into(),
                    ok: false,
                    attempts,
                    ms,
                    detail: e,
                };
            }
            Err(e) => {
                tracing::warn!(action = kind, attempt = attempts, error = %e, "action failed; retrying");
                tokio::time::sleep(BACKOFF[attempts as usize - 1]).await;
            }
        }
    }
}

async fn pacemaker(
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
    let attr = format!("vesper-cause-{resource}");
    with_retries("pacemaker", started, || async {
        run_tool("crm_attribute", &["--node", node, "--name", &attr, "--update", cause, "--lifetime", "reboot"], None).await?;
        run_tool("crm_resource", &["--fail", "--resource", resource, "--node", node], None).await?;
        Ok(format!("crm_resource --fail --resource {resource} --node {node}; cause in node attribute {attr}"))
    })
    .await
}

async fn failcount(node: Option<&str>, resource: &str) -> Option<String> {
    let node = node?;
    run_tool(
        "crm_failcount",
        &["--query", "--resource", resource, "--node", node],
        None,
    )
    .await
    .ok()
}

async fn crm_node_name() -> Option<String> {
    run_tool("crm_node", &["-n"], None)
        .await
        .ok()
        .filter(|n| !n.is_empty())
}

async fn exec_hook(hook: &std::path::Path, v: &Verdict, started: Instant) -> ActionOutcome {
    let json = serde_json::to_vec(v).unwrap_or_default();
    let program = hook.display().to_string();
    with_retries(&format!("exec {program}"), started, || {
        run_tool(&program, &[], Some(&json))
    })
    .await
}
