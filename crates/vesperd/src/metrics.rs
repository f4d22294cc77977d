//! Prometheus metrics: `GET /metrics` on `[daemon] metrics` (an address; off when unset).
//!
//! Counters are read from the sessions' status and the why-log's [`ActionStats`] at each
//! scrape, so nothing on the record path changes for them. Rates (records/s, bytes/s) are
//! the counters' `rate()` in Prometheus. The listener reads at most one bounded request
//! per connection and answers with `Connection: close`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::actions::WhyEntry;
use crate::control::Vms;
use crate::session::{State, VmStatus};

const MAX_REQUEST: usize = 8 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Upper bounds (seconds) of the action latency histogram: verdict to action done.
const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0];

#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at most each bucket's bound (not cumulative; summed when rendered).
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| seconds <= b) {
            self.buckets[i] += 1;
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// What the action task did, counted as verdicts finish.
#[derive(Debug, Default, Clone)]
pub struct ActionStats {
    /// (vm, rule, debounced) → verdicts.
    verdicts: BTreeMap<(String, String, bool), u64>,
    /// (vm, action kind) → latency of the successful ones.
    latency: BTreeMap<(String, String), Histogram>,
    /// (vm, action kind) → actions that failed after all retries.
    failed: BTreeMap<(String, String), u64>,
}

impl ActionStats {
    /// Counts a finished why-log entry.
    pub fn observe(&mut self, e: &WhyEntry) {
        let vm = e.verdict.vm.clone();
        *self
            .verdicts
            .entry((vm.clone(), e.verdict.rule.clone(), e.debounced))
            .or_default() += 1;
        for a in &e.actions {
            let key = (vm.clone(), a.kind.clone());
            if a.ok {
                self.latency
                    .entry(key)
                    .or_default()
                    .observe(a.ms as f64 / 1000.0);
            } else {
                *self.failed.entry(key).or_default() += 1;
            }
        }
    }
}

/// A label value, escaped as the text format wants (guest-chosen strings never reach
/// labels, but probe names come from users).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
            .collect();
        if labels.is_empty() {
            let _ = writeln!(self.0, "{name} {value}");
        } else {
            let _ = writeln!(self.0, "{name}{{{}}} {value}", labels.join(","));
        }
    }
}

const STATES: [(State, &str); 5] = [
    (State::Disconnected, "disconnected"),
    (State::Elsewhere, "elsewhere"),
    (State::Handshake, "handshake"),
    (State::Ready, "ready"),
    (State::Unresponsive, "unresponsive"),
];

/// The daemon's own figures.
#[derive(Debug, Default)]
pub struct Daemon {
    pub disk: crate::disk::DiskStats,
    /// Sessions that did not answer the status request behind this page.
    pub unanswered: usize,
}

/// The text exposition of every VM's status, the action statistics and the daemon's own.
pub fn render(vms: &[VmStatus], stats: &ActionStats, daemon: &Daemon) -> String {
    let mut o = Out(String::new());
    let d = &daemon.disk;
    let own: [(&str, &str, &str, f64); 6] = [
        (
            "vesper_disk_queued_bytes",
            "gauge",
            "Bytes waiting for the disk writer (record files, why-log, seen files).",
            d.queued_bytes as f64,
        ),
        (
            "vesper_disk_oldest_wait_seconds",
            "gauge",
            "How long the oldest queued write has waited: above a second, the disk is stalled.",
            d.oldest_wait_ms as f64 / 1000.0,
        ),
        (
            "vesper_disk_written_bytes_total",
            "counter",
            "Bytes the disk writer wrote.",
            d.written_bytes as f64,
        ),
        (
            "vesper_disk_dropped_bytes_total",
            "counter",
            "Bytes not written because the disk fell behind and the queue was full (the records stayed in memory).",
            d.dropped_bytes as f64,
        ),
        (
            "vesper_disk_failed_writes_total",
            "counter",
            "Writes the disk refused (the error is in the VM's store_file_error or the log).",
            d.failed_writes as f64,
        ),
        (
            "vesper_status_unanswered_sessions",
            "gauge",
            "Sessions that did not answer within the reply timeout for this page (left out of it).",
            daemon.unanswered as f64,
        ),
    ];
    for (name, kind, help, v) in own {
        o.family(name, kind, help);
        o.sample(name, &[], v);
    }
    o.family(
        "vesper_pacemaker_library_info",
        "gauge",
        "How vesperd tells Pacemaker: path=\"ipc\" with the library's SONAME and series, or path=\"tools\" (crm_resource) with why.",
    );
    match crate::pacemaker::controller().library() {
        Ok((soname, series)) => o.sample(
            "vesper_pacemaker_library_info",
            &[("path", "ipc"), ("library", soname), ("series", series)],
            1,
        ),
        Err(e) => o.sample(
            "vesper_pacemaker_library_info",
            &[("path", "tools"), ("reason", &e.to_string())],
            1,
        ),
    }
    o.family(
        "vesper_vm_state",
        "gauge",
        "The VM's session state (1 for the current one).",
    );
    for vm in vms {
        for (s, name) in STATES {
            o.sample(
                "vesper_vm_state",
                &[("vm", &vm.name), ("state", name)],
                u8::from(vm.state == s),
            );
        }
    }
    type VmGetter = fn(&VmStatus) -> f64;
    let per_vm: [(&str, &str, &str, VmGetter); 11] = [
        (
            "vesper_vm_connects_total",
            "counter",
            "Connections to the VM's agent.",
            |v| v.connects as f64,
        ),
        (
            "vesper_vm_received_bytes_total",
            "counter",
            "Bytes read from the VM's channel.",
            |v| v.bytes_received as f64,
        ),
        (
            "vesper_vm_unknown_probe_records_total",
            "counter",
            "Records for probes that are not loaded, dropped on the host.",
            |v| v.unknown_probe_records as f64,
        ),
        (
            "vesper_vm_stored_records",
            "gauge",
            "Records held in memory for the VM.",
            |v| v.stored_records as f64,
        ),
        (
            "vesper_vm_stored_bytes",
            "gauge",
            "Bytes of records held in memory for the VM.",
            |v| v.stored_bytes as f64,
        ),
        (
            "vesper_vm_evicted_records_total",
            "counter",
            "Records pushed out of memory by the VM's quota (still on disk).",
            |v| v.evicted_records as f64,
        ),
        (
            "vesper_vm_rate_limited_seconds_total",
            "counter",
            "Time reading from the VM was paused by its rate limits.",
            |v| v.rate_limited_ms as f64 / 1000.0,
        ),
        (
            "vesper_vm_gaps_total",
            "counter",
            "Times probes were attached again after none were.",
            |v| v.gaps as f64,
        ),
        (
            "vesper_vm_unobserved_seconds_total",
            "counter",
            "Time with no probe attached in the VM after one had been.",
            |v| v.unobserved_ms as f64 / 1000.0,
        ),
        (
            "vesper_vm_store_file_dropped_records_total",
            "counter",
            "Records that never reached the VM's record file: the disk fell behind (kept in memory).",
            |v| v.store_file_dropped as f64,
        ),
        (
            "vesper_vm_store_file_error",
            "gauge",
            "1 while the VM's record file cannot be written (records kept in memory).",
            |v| f64::from(u8::from(v.store_file_error.is_some())),
        ),
    ];
    for (name, kind, help, get) in per_vm {
        o.family(name, kind, help);
        for vm in vms {
            o.sample(name, &[("vm", &vm.name)], get(vm));
        }
    }
    o.family(
        "vesper_vm_last_verdict_timestamp_seconds",
        "gauge",
        "Unix time of the VM's latest verdict (absent: none since vesperd started).",
    );
    for vm in vms {
        if let Some(v) = &vm.last_verdict {
            o.sample(
                "vesper_vm_last_verdict_timestamp_seconds",
                &[("vm", &vm.name)],
                v.time_ms as f64 / 1000.0,
            );
        }
    }
    type ProbeGetter = fn(&crate::session::ProbeStatus) -> u64;
    let per_probe: [(&str, &str, ProbeGetter); 6] = [
        (
            "vesper_probe_records_total",
            "Records received and stored.",
            |p| p.received,
        ),
        (
            "vesper_probe_kernel_drops_total",
            "Records the probe could not write in the guest (ring buffer full).",
            |p| p.kernel_drops,
        ),
        (
            "vesper_probe_agent_drops_total",
            "Records the guest agent read but could not send.",
            |p| p.agent_drops,
        ),
        (
            "vesper_probe_transport_lost_total",
            "Sequence numbers that never arrived.",
            |p| p.transport_lost,
        ),
        (
            "vesper_probe_replayed_total",
            "Records with a sequence number already seen, dropped on the host.",
            |p| p.replayed,
        ),
        (
            "vesper_probe_malformed_total",
            "Records that did not match the probe's schema, dropped on the host.",
            |p| p.malformed,
        ),
    ];
    for (name, help, get) in per_probe {
        o.family(name, "counter", help);
        for vm in vms {
            for p in &vm.probes {
                o.sample(name, &[("vm", &vm.name), ("probe", &p.name)], get(p));
            }
        }
    }
    o.family(
        "vesper_verdicts_total",
        "counter",
        "Verdicts: records that meant a resource failed.",
    );
    for ((vm, rule, debounced), n) in &stats.verdicts {
        let d = if *debounced { "true" } else { "false" };
        o.sample(
            "vesper_verdicts_total",
            &[("vm", vm), ("rule", rule), ("debounced", d)],
            n,
        );
    }
    o.family(
        "vesper_rule_errors_total",
        "counter",
        "Records a rule could not judge (a field missing or of another type, or the rule refused by its probe's record types); the first is logged.",
    );
    for ((vm, rule), n) in crate::rules::error_counts() {
        o.sample(
            "vesper_rule_errors_total",
            &[("vm", &vm), ("rule", &rule)],
            n,
        );
    }
    o.family(
        "vesper_action_failures_total",
        "counter",
        "Actions that failed after every retry.",
    );
    for ((vm, kind), n) in &stats.failed {
        o.sample(
            "vesper_action_failures_total",
            &[("vm", vm), ("action", kind)],
            n,
        );
    }
    let h = "vesper_action_latency_seconds";
    o.family(
        h,
        "histogram",
        "From the verdict to its action done (successful actions).",
    );
    for ((vm, kind), hist) in &stats.latency {
        let mut cumulative = 0;
        for (bound, n) in LATENCY_BUCKETS.iter().zip(hist.buckets) {
            cumulative += n;
            o.sample(
                &format!("{h}_bucket"),
                &[("vm", vm), ("action", kind), ("le", &bound.to_string())],
                cumulative,
            );
        }
        let labels = [("vm", vm.as_str()), ("action", kind.as_str())];
        o.sample(
            &format!("{h}_bucket"),
            &[labels[0], labels[1], ("le", "+Inf")],
            hist.count,
        );
        o.sample(&format!("{h}_sum"), &labels, hist.sum);
        o.sample(&format!("{h}_count"), &labels, hist.count);
    }
    o.0
}

pub async fn serve(listener: TcpListener, vms: Vms) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let vms = vms.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, vms).await {
                        tracing::debug!(error = %e, "metrics connection ended");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Reads one request head (bounded in size and time) and answers it.
async fn answer(mut stream: TcpStream, vms: Vms) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, kind, body) = match (method, path) {
        ("GET", "/metrics") => {
            let (statuses, unanswered) = crate::control::statuses(&vms).await;
            let stats = match vms.why.lock() {
                Ok(w) => w.stats.clone(),
                Err(p) => p.into_inner().stats.clone(),
            };
            (
                "200 OK",
                "text/plain; version=0.0.4; charset=utf-8",
                render(
                    &statuses,
                    &stats,
                    &Daemon {
                        disk: vms.disk.stats(),
                        unanswered: unanswered.len(),
                    },
                ),
            )
        }
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "vesperd: metrics at /metrics\n".to_string(),
        ),
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(reply.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::ActionOutcome;
    use crate::rules::Verdict;

    fn entry(vm: &str, ok: bool, ms: u64) -> WhyEntry {
        WhyEntry {
            verdict: Verdict {
                id: 1,
                vm: vm.into(),
                resource: Some(vm.into()),
                rule: "service-killed".into(),
                cause: "httpd killed".into(),
                time_ms: 0,
                connection: 1,
                evidence: Vec::new(),
            },
            debounced: false,
            actions: vec![ActionOutcome {
                kind: "pacemaker".into(),
                ok,
                attempts: 1,
                ms,
                detail: String::new(),
            }],
            cluster: None,
            pending: false,
        }
    }

    #[test]
    fn the_histogram_is_cumulative_and_counts_every_success() {
        let mut s = ActionStats::default();
        s.observe(&entry("web1", true, 7));
        s.observe(&entry("web1", true, 40));
        s.observe(&entry("web1", true, 60_000));
        s.observe(&entry("web1", false, 9));
        let text = render(&[], &s, &Daemon::default());
        let has = |l: &str| assert!(text.lines().any(|x| x == l), "{l} not in\n{text}");
        has("vesper_verdicts_total{vm=\"web1\",rule=\"service-killed\",debounced=\"false\"} 4");
        has(
            "vesper_action_latency_seconds_bucket{vm=\"web1\",action=\"pacemaker\",le=\"0.005\"} 0",
        );
        has("vesper_action_latency_seconds_bucket{vm=\"web1\",action=\"pacemaker\",le=\"0.01\"} 1");
        has("vesper_action_latency_seconds_bucket{vm=\"web1\",action=\"pacemaker\",le=\"0.05\"} 2");
        has("vesper_action_latency_seconds_bucket{vm=\"web1\",action=\"pacemaker\",le=\"30\"} 2");
        has("vesper_action_latency_seconds_bucket{vm=\"web1\",action=\"pacemaker\",le=\"+Inf\"} 3");
        has("vesper_action_latency_seconds_count{vm=\"web1\",action=\"pacemaker\"} 3");
        has("vesper_action_failures_total{vm=\"web1\",action=\"pacemaker\"} 1");
    }

    #[test]
    fn records_a_rule_could_not_judge_are_counted() {
        let r = crate::rules::Rule::new("big", "oom", "anon_rss_kb > 1", "c").unwrap();
        let odd = serde_json::json!({"vm": "metrics-vm", "probe": "oom"});
        assert_eq!(r.check(&odd), None);
        assert_eq!(r.check(&odd), None);
        let text = render(&[], &ActionStats::default(), &Daemon::default());
        assert!(
            text.contains("vesper_rule_errors_total{vm=\"metrics-vm\",rule=\"big\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
