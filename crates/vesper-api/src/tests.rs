//! The wire names are part of the contract: a client built from an older tree still reads
//! them. These tests fail when a field or a variant is renamed.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use super::*;
use serde_json::json;

fn vm() -> VmStatus {
    VmStatus {
        name: "web1".into(),
        state: State::Ready,
        guest: GuestState::Running,
        channel: "unix:/run/web1.sock".into(),
        resource: Some("vm-web1".into()),
        agent: Some(AgentInfo {
            version: "0.1.0".into(),
            kernel_release: "6.1.0-56-amd64".into(),
            boot_id: "b".into(),
            capabilities: 15,
        }),
        connected_since_ms: Some(1),
        last_heard_ms: Some(2),
        connects: 1,
        last_error: None,
        last_verdict: Some(LastVerdict {
            time_ms: 3,
            rule: "service-killed".into(),
            cause: "httpd killed".into(),
        }),
        desired_probes: vec!["signal".into()],
        probes: vec![ProbeStatus {
            name: "signal".into(),
            probe_id: 1,
            phase: ProbePhase::Loaded,
            received: 10,
            next_seq: 10,
            kernel_drops: 1,
            agent_drops: 2,
            transport_lost: 3,
            replayed: 4,
            malformed: 5,
            load_us: Some(900),
        }],
        unknown_probe_records: 0,
        stored_records: 10,
        stored_bytes: 1000,
        evicted_records: 0,
        store_file_error: None,
        store_file_dropped: 0,
        rate_limits: RateLimits {
            records_per_sec: 200_000,
            bytes_per_sec: 1 << 25,
        },
        bytes_received: 5000,
        rate_limited_ms: 0,
        rate_limited_pauses: 0,
        gaps: 1,
        unobserved_ms: 40,
        kernel_types: KernelTypesStatus {
            state: "known".into(),
            kernel_id: Some("abc".into()),
            types: Some(1),
            symbols: Some(2),
            btf_bytes: Some(3),
            symbol_bytes: Some(4),
            fetched_ms: None,
            received_bytes: 0,
            error: None,
        },
    }
}

#[test]
fn a_status_answer_round_trips_with_its_wire_names() {
    let reply = StatusReply {
        vms: vec![vm()],
        unanswered: vec![Unanswered {
            vm: "db1".into(),
            error: "no answer from the VM's session within 30 s".into(),
        }],
        disk: DiskStats::default(),
        pacemaker: "tools".into(),
    };
    let line = serde_json::to_value(Answer::ok(reply)).unwrap();
    assert_eq!(line["ok"], true);
    assert_eq!(line["vms"][0]["state"], "ready");
    assert_eq!(line["vms"][0]["probes"][0]["kernel_drops"], 1);
    assert_eq!(line["vms"][0]["agent"]["kernel_release"], "6.1.0-56-amd64");
    assert_eq!(line["vms"][0]["last_verdict"]["cause"], "httpd killed");
    assert_eq!(line["unanswered"][0]["vm"], "db1");
    assert_eq!(line["disk"]["oldest_wait_ms"], 0);
    let back: Answer<StatusReply> = serde_json::from_value(line).unwrap();
    let back = back.into_result().unwrap();
    assert_eq!(back.vms, vec![vm()]);
    assert_eq!(back.unanswered[0].vm, "db1");
}

#[test]
fn a_refusal_carries_its_code_and_is_never_read_as_an_answer() {
    let line =
        json!({"ok": false, "code": "unknown-vm", "error": "unknown VM \"x\" (configured: web1)"});
    let a: Answer<CheckReply> = serde_json::from_value(line.clone()).unwrap();
    let e = a.into_result().unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownVm);
    assert!(e.to_string().starts_with("unknown VM"));
    assert_eq!(
        serde_json::to_value(Answer::<Empty>::refused(e)).unwrap(),
        line
    );
    // A code from a newer vesperd is still a refusal.
    let a: Answer<Empty> =
        serde_json::from_value(json!({"ok": false, "code": "new-kind", "error": "x"})).unwrap();
    assert_eq!(a.into_result().unwrap_err().code, ErrorCode::Other);
    // An answer whose fields do not fit is an error, not a default.
    let bad: Result<Answer<CheckReply>, _> =
        serde_json::from_value(json!({"ok": true, "vm": "web1", "healthy": "yes"}));
    assert!(bad.is_err());
}

#[test]
fn requests_keep_their_wire_form() {
    let r = Request::Load {
        vm: "web1".into(),
        probe: "signal".into(),
        source: None,
        file: None,
        object_hex: None,
    };
    assert_eq!(
        serde_json::to_value(&r).unwrap(),
        json!({"cmd": "load", "vm": "web1", "probe": "signal"})
    );
    let k: Request =
        serde_json::from_value(json!({"cmd": "kernel-info", "vm": "a", "keys": ["types"]}))
            .unwrap();
    assert_eq!(
        k,
        Request::KernelInfo {
            vm: "a".into(),
            keys: vec!["types".into()]
        }
    );
    let e: Request = serde_json::from_value(json!({"cmd": "events", "vm": "a"})).unwrap();
    assert_eq!(
        e,
        Request::Events {
            vm: "a".into(),
            probe: None,
            follow: false,
            last: None
        }
    );
    assert_eq!(
        serde_json::to_value(Request::Status).unwrap(),
        json!({"cmd": "status"})
    );
}

#[test]
fn a_load_and_a_check_read_back() {
    let l = serde_json::to_value(Answer::ok(LoadReply {
        result: LoadOutcome::Loaded {
            probe_id: 3,
            load_us: 1200,
        },
    }))
    .unwrap();
    assert_eq!(
        l,
        json!({"ok": true, "result": {"state": "loaded", "probe_id": 3, "load_us": 1200}})
    );
    let c: Answer<CheckReply> = serde_json::from_value(json!({
        "ok": true, "vm": "web1", "healthy": false, "state": "unresponsive",
        "guest": "panicked", "cause": "the guest kernel panicked"
    }))
    .unwrap();
    let c = c.into_result().unwrap();
    assert!(!c.healthy);
    assert_eq!(
        (c.state, c.guest),
        (State::Unresponsive, GuestState::Panicked)
    );
}

#[test]
fn the_cluster_report_is_a_view_or_why_not() {
    let r: ClusterReport =
        serde_json::from_value(json!({"resource": "vm-web1", "error": "crm_mon: not found"}))
            .unwrap();
    assert!(matches!(r, ClusterReport::Unreadable { .. }));
    let v = ResourceView {
        resource: "vm-web1".into(),
        running_on: vec!["node2".into()],
        ..Default::default()
    };
    let r: ClusterReport = serde_json::from_value(serde_json::to_value(&v).unwrap()).unwrap();
    assert_eq!(r, ClusterReport::View(v));
}
