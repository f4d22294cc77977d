//! The Prometheus endpoint on the real kernel: records, drops, session state, verdicts and
//! action latency as an operator's Prometheus would scrape them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

const SIGTERM: i32 = 15;
const SIGUSR1: i32 = 10;

/// GET `path` from `addr`; returns (status line, body).
fn get(addr: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// Checks the text exposition format line by line: every sample belongs to a family
/// announced by HELP and TYPE before it, names and labels are well formed, values parse.
fn check_exposition(text: &str) {
    let mut typed: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "value: {line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()),
            "name: {line}"
        );
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| typed.iter().any(|t| t == f))
            })
            .unwrap_or(name);
        assert!(typed.iter().any(|t| t == family), "no TYPE before {line}");
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            check_labels(labels, line);
        }
    }
}

/// `{k="v",…}`: keys are lowercase identifiers; values end at an unescaped quote.
fn check_labels(labels: &str, line: &str) {
    let mut rest = labels.strip_prefix('{').expect(line);
    loop {
        let (key, after) = rest.split_once("=\"").expect(line);
        assert!(
            !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "label name: {line}"
        );
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().expect(line) {
                (_, '\\') => {
                    let (_, c) = chars.next().expect(line);
                    assert!(['\\', '"', 'n'].contains(&c), "escape: {line}");
                }
                (i, '"') => break i,
                _ => {}
            }
        };
        rest = &after[end + 1..];
        if rest == "}" {
            return;
        }
        rest = rest.strip_prefix(',').expect(line);
    }
}

/// The value of the sample `series` (name and labels exactly as written).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[test]
fn metrics_count_records_drops_states_verdicts_and_action_latency() {
    if !need_root("metrics") {
        return;
    }
    let h = Harness::start_with(
        &[VmSpec {
            name: "host1",
            agent: true,
            probes: &["signal"],
        }],
        "metrics = \"127.0.0.1:0\"",
        "resource = \"host1\"\npacemaker = false\nwatch = [\"victim\"]\nhooks = [\"/bin/true\"]\ndebounce_ms = 100",
    );
    h.wait_loaded("host1", "signal");
    let log = h.vesperd_log();
    let addr = log
        .lines()
        .find(|l| l.contains("metrics served"))
        .and_then(|l| l.split("address=").nth(1))
        .map(|a| a.split_whitespace().next().unwrap().to_string())
        .unwrap_or_else(|| panic!("no metrics address in the log:\n{log}"));

    let (_quiet, quiet_pid) = victim("quiet");
    send_signals("counted", quiet_pid, SIGUSR1, 500);
    let (_victim, pid) = mortal_victim("victim");
    send_signals("killer", pid, SIGTERM, 1);
    wait_until(
        Duration::from_secs(10),
        || {
            let (_, body) = get(&addr, "/metrics");
            body.contains(
                "vesper_action_latency_seconds_count{vm=\"host1\",action=\"exec /bin/true\"} 1",
            )
        },
        "the verdict's hook in the metrics",
    );
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    check_exposition(&body);
    let st = h.vm_status("host1");
    let received = st["probes"][0]["received"].as_u64().unwrap();
    assert!(received >= 501, "{st}");
    let scraped = value(
        &body,
        "vesper_probe_records_total{vm=\"host1\",probe=\"signal\"}",
    );
    assert!(
        scraped >= 501.0 && scraped <= received as f64,
        "scraped {scraped}, status {received}"
    );
    assert_eq!(
        value(&body, "vesper_vm_state{vm=\"host1\",state=\"ready\"}"),
        1.0
    );
    assert_eq!(
        value(
            &body,
            "vesper_vm_state{vm=\"host1\",state=\"disconnected\"}"
        ),
        0.0
    );
    assert!(value(&body, "vesper_vm_received_bytes_total{vm=\"host1\"}") > 501.0 * 32.0);
    assert_eq!(
        value(
            &body,
            "vesper_verdicts_total{vm=\"host1\",rule=\"service-killed\",debounced=\"false\"}"
        ),
        1.0
    );
    let drops = value(
        &body,
        "vesper_probe_kernel_drops_total{vm=\"host1\",probe=\"signal\"}",
    );
    assert_eq!(drops, st["probes"][0]["kernel_drops"].as_f64().unwrap());
    assert!(
        value(
            &body,
            "vesper_vm_last_verdict_timestamp_seconds{vm=\"host1\"}"
        ) > 1.7e9
    );
    eprintln!(
        "metrics: {} lines, {} bytes; records {scraped}, hook latency sum {} s",
        body.lines().count(),
        body.len(),
        value(
            &body,
            "vesper_action_latency_seconds_sum{vm=\"host1\",action=\"exec /bin/true\"}"
        )
    );

    dashboard_reads_only_what_vesperd_exports(&body);

    let (status, _) = get(&addr, "/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // A client that sends half a request and stalls does not hold the endpoint up.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled.write_all(b"GET /metr").unwrap();
    let (status, _) = get(&addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
}

/// Every metric the shipped Grafana dashboard queries is in a real scrape.
fn dashboard_reads_only_what_vesperd_exports(scrape: &str) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../packaging/grafana/vesper-dashboard.json"
    );
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("vesper_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            assert!(
                scrape.contains(&format!("# TYPE {name} "))
                    || (name.ends_with("_bucket")
                        && scrape.contains(&format!(
                            "# TYPE {} histogram",
                            name.trim_end_matches("_bucket")
                        ))),
                "the dashboard queries {name}, which vesperd does not export: {e}"
            );
            rest = &rest[i + name.len()..];
        }
    }
}

#[test]
fn a_metrics_address_in_use_stops_vesperd_with_the_key_named() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let (_dir, _, err) = vesperd_refuses(|dir| {
        format!(
            "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\nmetrics = \"{addr}\"\n",
            dir.join("s.sock").display(),
            dir.join("state").display()
        )
    });
    assert!(
        err.contains("key `daemon.metrics`") && err.contains(&addr.to_string()),
        "{err}"
    );
}

#[test]
fn vesper_top_shows_the_rate_of_a_steady_stream() {
    if !need_root("vesper top") {
        return;
    }
    let h = Harness::single(&["signal"]);
    h.wait_loaded("host1", "signal");
    let (_victim, pid) = victim("topvictim");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send_signals("topsender", pid, SIGUSR1, 100);
                sent += 100;
                std::thread::sleep(Duration::from_millis(100));
            }
            sent
        })
    };
    let t = std::time::Instant::now();
    let out = h.vesper(&["top", "--interval", "1", "--frames", "2"]);
    let secs = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = sender.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let expected = sent as f64 / secs;
    // The last frame's VM row: name, state, records/s, …
    let row = text
        .lines()
        .rfind(|l| l.starts_with("host1 "))
        .unwrap_or_else(|| panic!("{text}"));
    let shown: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
    eprintln!("vesper top: {shown} records/s shown, {expected:.0}/s sent on average\n{text}");
    assert!(
        shown > expected * 0.3 && shown < expected * 3.0,
        "top shows {shown}/s, about {expected:.0}/s were sent:\n{text}"
    );
    assert!(text.contains("  signal "), "{text}");
}
