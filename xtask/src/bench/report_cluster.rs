//! The report's cluster section (`results["cluster"]`, from the evaluation's
//! `benches/evaluation/cluster.rs`): tables of the use cases against VirtualDomain's 10 s
//! monitor, node loss and live migration.

use std::fmt::Write as _;

use serde_json::Value;

use super::report::{f, table};

const CASES: [(&str, &str); 2] = [
    ("sigterm", "I: SIGTERM to httpd"),
    ("oom", "II: OOM killer takes httpd"),
];

fn stat_cells(s: &Value) -> Vec<String> {
    ["mean", "p50", "min", "max"]
        .iter()
        .map(|k| f(&s[*k], 0))
        .collect()
}

/// Section 6: the host's Pacemaker (`cluster`), then Debian 13's (`cluster_debian13`)
/// when it was measured.
pub fn section(r: &Value) -> String {
    let mut out = String::new();
    let host = &r["cluster"];
    if !host.is_null() {
        out.push_str("## 6. On a Pacemaker cluster\n\n");
        out.push_str(&one(host));
    }
    let d13 = &r["cluster_debian13"];
    if !d13.is_null() {
        out.push_str("### 6.1 The same on Debian 13\n\n");
        out.push_str(&one(d13));
    }
    out
}

fn one(c: &Value) -> String {
    let mut out = String::new();
    if let Some(p) = c["pacemaker"].as_str().filter(|p| !p.is_empty()) {
        let _ = writeln!(out, "{p}, {}.\n", c["system"].as_str().unwrap_or("?"));
    }
    let _ = writeln!(
        out,
        "\
{} nodes on this machine (namespaces; corosync, Pacemaker, libvirtd and vesperd each; {}), \
the lab guest (TCG, 256 MiB) as the VirtualDomain resource `vm-web1`. {} trials per use-case \
row, each fault at a random moment of the 10 s monitor's cycle, after a cleanup and the VM \
back, watched and answering. **Vesper**: the VM's host's vesperd fails the resource. \
**Poller**: every vesperd stopped; VirtualDomain's own 10 s monitor runs \
`benches/evaluation/guest-http-check` (`monitor_scripts`: an HTTP GET of the guest's httpd \
through the node). \"Recorded\": fault → the timestamp of Pacemaker's alert for the failed \
operation (an `<alert>` agent on whichever node recorded it). \"Answering\": fault → the \
guest's httpd answering again through a node (curl every 100 ms), after Pacemaker restarted \
the VM. Use case I: `/bin/kill -TERM $(pidof httpd)` in the guest; use case II: `memhog 1024` \
in the guest, with httpd's `oom_score_adj` at 1000 so that the OOM killer takes the service \
the poller checks (otherwise it takes memhog and httpd keeps answering: the poller never \
notices).\n",
        c["nodes"].as_u64().unwrap_or(0),
        if c["fencing"] == true {
            "with fencing"
        } else {
            "no fencing"
        },
        c["trials"].as_u64().unwrap_or(0),
    );
    let mut rows = Vec::new();
    for (case, name) in CASES {
        for (arm, arm_name) in [("poller_10s", "10 s monitor"), ("vesper", "Vesper")] {
            let v = &c[format!("{case}_{arm}")];
            if v.is_null() {
                continue;
            }
            let n = v["trials"].as_array().map_or(0, Vec::len);
            let mut row = vec![name.to_string(), arm_name.into(), n.to_string()];
            row.extend(stat_cells(&v["recorded_ms"]));
            row.extend(stat_cells(&v["answering_ms"]));
            row.push(if arm == "vesper" {
                format!("{}/{n}", v["identified"].as_u64().unwrap_or(0))
            } else {
                "–".into()
            });
            rows.push(row);
        }
        let ratio = &c[format!("{case}_ratio")];
        if !ratio.is_null() {
            let mut row = vec![
                name.to_string(),
                "**poller / Vesper**".into(),
                String::new(),
            ];
            row.extend([format!("**{}×**", f(&ratio["recorded"], 1))]);
            row.extend(std::iter::repeat_n(String::new(), 3));
            row.extend([format!("**{}×**", f(&ratio["answering"], 2))]);
            row.extend(std::iter::repeat_n(String::new(), 4));
            rows.push(row);
        }
    }
    table(
        &mut out,
        &[
            "use case",
            "detector",
            "n",
            "recorded mean ms",
            "p50",
            "min",
            "max",
            "answering mean ms",
            "p50",
            "min",
            "max",
            "cause identified",
        ],
        &rows,
    );
    let loss = &c["node_loss"];
    let mig = &c["migration"];
    let mut rows = Vec::new();
    let mut add = |what: &str, n: usize, s: &Value| {
        let mut row = vec![what.to_string(), n.to_string()];
        row.extend(stat_cells(s));
        rows.push(row);
    };
    let nl = loss["trials"].as_array().map_or(0, Vec::len);
    add(
        "node loss: kill → VM watched on the peer",
        nl,
        &loss["watched_ms"],
    );
    add(
        "node loss: kill → httpd answering on the peer",
        nl,
        &loss["answering_ms"],
    );
    let nm = mig["trials"].as_array().map_or(0, Vec::len);
    add(
        "live migration: `--move` → watched on the destination",
        nm,
        &mig["move_ms"],
    );
    add(
        "live migration: no probe attached (source's last frame → destination's probes)",
        nm,
        &mig["gap_ms"],
    );
    add(
        "live migration: gap the destination reports",
        nm,
        &mig["reported_gap_ms"],
    );
    out.push_str(
        "Node loss: the VM's host killed (SIGKILL to its PID namespace: a power cut); the VM \
is started on the peer. Live migration: `crm_resource --move` to the other node, then \
`--clear`.\n\n",
    );
    table(&mut out, &["", "n", "mean ms", "p50", "min", "max"], &rows);
    let mut rows = Vec::new();
    for t in mig["trials"].as_array().into_iter().flatten() {
        rows.push(vec![
            format!(
                "{} → {}",
                t["src"].as_str().unwrap_or("?"),
                t["dst"].as_str().unwrap_or("?")
            ),
            if t["same_boot"] == true {
                "yes"
            } else {
                "**no**"
            }
            .into(),
            t["stream_sent"].to_string(),
            t["stream_on_src"].to_string(),
            t["stream_on_dst"].to_string(),
            t["stream_unseen"].to_string(),
            t["drops"].to_string(),
            t["transport_lost"].to_string(),
            t["unaccounted"].to_string(),
        ]);
    }
    out.push_str(
        "Each migration carries a steady stream: a guest loop sending SIGCONT to a sleeping \
process (≤ 1000/s) from 1 s before the move until 2 s after. \"Unseen\": signals sent but \
stored on neither node (sent while no probe was attached). Kernel and agent drops, \
`transport_lost` and unaccounted sequence numbers (`next_seq` − received − replayed − \
malformed − transport_lost) are summed over both nodes and all probes.\n\n",
    );
    table(
        &mut out,
        &[
            "move",
            "same boot",
            "signals sent",
            "stored on source",
            "stored on destination",
            "unseen",
            "drops",
            "transport_lost",
            "unaccounted",
        ],
        &rows,
    );
    out
}
