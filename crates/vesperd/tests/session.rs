//! The per-VM session state machine, driven by a fake guest over an in-memory channel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vesper_proto::{EventFormat, Hello, KernelInfo, Message, Records};
use vesperd::session::{HostEvent, LoadOutcome, Session, SessionCmd, State, VmStatus};
use vesperd::store::{RecordStore, StoreLimits};
use vesperd::testing::{FakeGuest, MemoryListener, memory_channel};

const FORMAT: &str =
    include_str!("../../vesper-probe/tests/data/tracefs-6.18/events/signal/signal_generate/format");

struct Rig {
    cmds: mpsc::Sender<SessionCmd>,
    store: Arc<Mutex<RecordStore>>,
    listener: MemoryListener,
}

fn rig(probes: &[&str]) -> Rig {
    rig_with(probes, vesperd::session::DEFAULT_BOOT_TIMEOUT)
}

/// A session whose deadtime is 300 ms and whose reset guests get `boot_timeout`.
fn rig_with(probes: &[&str], boot_timeout: Duration) -> Rig {
    let (connector, listener) = memory_channel();
    let limits = StoreLimits {
        max_records: 1000,
        max_bytes: 1 << 20,
        file_max_bytes: 1 << 20,
    };
    let store = Arc::new(Mutex::new(RecordStore::new(limits, None)));
    let (tx, rx) = mpsc::channel(8);
    let s = Session::new(
        "web1".into(),
        Box::new(connector),
        probes
            .iter()
            .map(|p| vesper_probe::ProbeSource::Builtin(p.to_string()))
            .collect(),
        None,
        Duration::from_millis(300),
        store.clone(),
        rx,
    )
    .with_boot_timeout(boot_timeout);
    tokio::spawn(s.run());
    Rig {
        cmds: tx,
        store,
        listener,
    }
}

async fn status(r: &Rig) -> VmStatus {
    let (reply, rx) = oneshot::channel();
    r.cmds.send(SessionCmd::Status { reply }).await.unwrap();
    rx.await.unwrap()
}

async fn wait_for(r: &Rig, what: &str, f: impl Fn(&VmStatus) -> bool) -> VmStatus {
    for _ in 0..200 {
        let st = status(r).await;
        if f(&st) {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("session never got to {what}: {:?}", status(r).await);
}

async fn wait_state(r: &Rig, s: State) -> VmStatus {
    wait_for(r, &format!("{s:?}"), |st| st.state == s).await
}

/// Disconnected *after* a connection ended (the session also starts out disconnected).
async fn wait_dropped(r: &Rig) -> VmStatus {
    wait_for(r, "a dropped connection", |st| {
        st.state == State::Disconnected && st.last_error.is_some()
    })
    .await
}

/// Hello → KernelInfoRequest → KernelInfo → LoadProbe → ProbeLoaded. Returns the probe
/// id and the manifest embedded in the object the host sent.
async fn handshake_and_load(g: &mut FakeGuest) -> (u32, vesper_probe::Manifest) {
    g.send(&Message::Hello(Hello {
        agent_version: "fake".into(),
        kernel_release: "6.18-fake".into(),
        capabilities: 3,
        boot_id: "b1".into(),
    }))
    .await;
    match g.recv().await {
        Message::KernelInfoRequest { events } => assert_eq!(events, ["signal:signal_generate"]),
        other => panic!("expected KernelInfoRequest, got {other:?}"),
    }
    g.send(&Message::KernelInfo(KernelInfo {
        release: "6.18-fake".into(),
        btf: true,
        formats: vec![EventFormat {
            event: "signal:signal_generate".into(),
            format: Some(FORMAT.into()),
        }],
    }))
    .await;
    let load = match g.recv().await {
        Message::LoadProbe(l) => l,
        other => panic!("expected LoadProbe, got {other:?}"),
    };
    assert_eq!(load.name, "signal");
    assert_eq!(load.attach[0].target, "signal:signal_generate");
    assert_eq!(&load.object[..4], b"\x7fELF");
    g.send(&Message::ProbeLoaded {
        probe_id: load.probe_id,
        load_us: 42,
    })
    .await;
    (
        load.probe_id,
        vesper_probe::manifest_of_object(&load.object).expect("manifest in object"),
    )
}

/// A Hello from an agent that can do nothing but stream records.
async fn hello(g: &mut FakeGuest) {
    g.send(&Message::Hello(Hello {
        agent_version: "f".into(),
        kernel_release: "k".into(),
        capabilities: 0,
        boot_id: "b".into(),
    }))
    .await;
}

/// A record laid out as the manifest says (as the BPF program would write it).
fn signal_record(m: &vesper_probe::Manifest, sig: i32, sender: &[u8], target: &[u8]) -> Vec<u8> {
    let schema = &m.schemas[0];
    let mut r = vec![0u8; schema.size as usize];
    let at = |name: &str| {
        schema
            .fields
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .offset as usize
    };
    r[0..8].copy_from_slice(&123u64.to_le_bytes());
    r[at("sender_pid")..][..8].copy_from_slice(&301u64.to_le_bytes());
    r[at("sig")..][..4].copy_from_slice(&sig.to_le_bytes());
    r[at("target_pid")..][..8].copy_from_slice(&212i64.to_le_bytes());
    r[at("sender_comm")..][..sender.len()].copy_from_slice(sender);
    r[at("target_comm")..][..target.len()].copy_from_slice(target);
    r
}

#[tokio::test]
async fn loads_configured_probes_on_connect_and_accounts_every_sequence_number() {
    let r = rig(&["signal"]);
    let mut g = r.listener.guest().await;
    let (id, manifest) = handshake_and_load(&mut g).await;
    let rec = signal_record(&manifest, 15, b"pkill", b"httpd");
    let batch = |first_seq, records: Vec<Vec<u8>>| {
        Message::Records(Records {
            probe_id: id,
            first_seq,
            kernel_drops: 2,
            agent_drops: 0,
            records,
        })
    };
    g.send(&batch(0, vec![rec.clone(), rec.clone()])).await; // seq 0, 1
    g.send(&batch(5, vec![rec.clone()])).await; // 2..4 lost in transit
    g.send(&batch(5, vec![rec.clone()])).await; // replay
    g.send(&batch(6, vec![vec![1, 2, 3]])).await; // malformed
    g.send(&Message::Records(Records {
        probe_id: 99,
        first_seq: 0,
        kernel_drops: 0,
        agent_drops: 0,
        records: vec![rec],
    }))
    .await;

    tokio::time::sleep(Duration::from_millis(100)).await;
    let st = wait_state(&r, State::Ready).await;
    let p = &st.probes[0];
    assert_eq!(
        (
            p.received,
            p.transport_lost,
            p.replayed,
            p.malformed,
            p.kernel_drops
        ),
        (3, 3, 1, 1, 2)
    );
    assert_eq!(p.next_seq, 7);
    assert_eq!(st.unknown_probe_records, 1);
    let recs = r.store.lock().unwrap().tail(None, None);
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 5]);
    let v: serde_json::Value = serde_json::from_str(&recs[0].json).unwrap();
    let keys: Vec<&str> = v
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .take(6)
        .collect();
    assert_eq!(keys, ["vm", "probe", "seq", "ts_ns", "sig", "sig_name"]);
    assert_eq!(v["sig_name"], "SIGTERM");
    assert_eq!(v["sender_comm"], "pkill");
    assert_eq!(v["target_comm"], "httpd");
    assert_eq!(v["target_pid"], 212);
}

#[tokio::test]
async fn garbage_closes_the_session_and_a_new_connection_reloads_probes() {
    let r = rig(&["signal"]);
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    g.send_raw(b"\xde\xad\xbe\xef not a frame at all, 24+ bytes")
        .await;
    let st = wait_state(&r, State::Disconnected).await;
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("bad frame"),
        "{:?}",
        st.last_error
    );
    assert!(st.probes.is_empty());
    assert_eq!(st.desired_probes, ["signal"]);

    let mut g2 = r.listener.guest().await;
    handshake_and_load(&mut g2).await;
    let st = wait_state(&r, State::Ready).await;
    assert_eq!(st.connects, 2);
}

#[tokio::test]
async fn a_silent_agent_is_unresponsive_after_deadtime_and_recovers_on_any_frame() {
    let r = rig(&[]);
    let mut g = r.listener.guest().await;
    hello(&mut g).await;
    wait_state(&r, State::Ready).await;
    wait_state(&r, State::Unresponsive).await; // deadtime is 300 ms
    g.send(&Message::Heartbeat {
        uptime_ms: 1,
        probes: 0,
    })
    .await;
    wait_state(&r, State::Ready).await;
}

#[tokio::test]
async fn messages_before_hello_and_host_only_messages_end_the_session() {
    let r = rig(&[]);
    let mut g = r.listener.guest().await;
    g.send(&Message::Heartbeat {
        uptime_ms: 1,
        probes: 0,
    })
    .await;
    let st = wait_dropped(&r).await;
    assert!(st.last_error.unwrap().contains("before Hello"));
}

/// The host's own records (`vesper` pseudo-probe) as (event, detail).
fn host_events(r: &Rig) -> Vec<(String, String)> {
    r.store
        .lock()
        .unwrap()
        .tail(Some("vesper"), None)
        .iter()
        .map(|rec| {
            let v: serde_json::Value = serde_json::from_str(&rec.json).unwrap();
            (
                v["event"].as_str().unwrap().to_string(),
                v["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_vm_elsewhere_is_no_error_and_its_arrival_and_departure_are_recorded() {
    let r = rig(&["signal"]);
    // Not on this node: elsewhere, with no error to show and nothing recorded.
    r.listener.absent().await;
    let st = wait_state(&r, State::Elsewhere).await;
    assert!(st.last_error.is_none(), "{st:?}");
    assert!(host_events(&r).is_empty(), "{:?}", host_events(&r));

    // It arrives: the time until its probes are attached is one gap.
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    let st = wait_for(&r, "the arrival gap", |st| st.gaps == 1).await;
    assert_eq!(st.state, State::Ready);
    let events = host_events(&r);
    assert_eq!(events[0].0, "arrived", "{events:?}");
    assert_eq!(events[1].0, "unobserved", "{events:?}");
    assert!(
        events[1].1.contains("the VM arrived on this node"),
        "{events:?}"
    );

    // It leaves (migrated away): a departed record, and the time away is no gap here.
    drop(g);
    r.listener.absent().await;
    wait_state(&r, State::Elsewhere).await;
    let events = host_events(&r);
    assert_eq!(events.last().unwrap().0, "departed", "{events:?}");
    assert!(
        events.last().unwrap().1.contains("last heard"),
        "{events:?}"
    );

    // Back again: a second arrival, one more gap, none for the time it was away.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    let st = wait_for(&r, "the second arrival gap", |st| st.gaps == 2).await;
    assert!(
        st.unobserved_ms < 300,
        "the time away counted as unobserved: {st:?}"
    );
    assert_eq!(
        host_events(&r).iter().filter(|e| e.0 == "arrived").count(),
        2
    );
}

/// A QMP event, as the hypervisor watcher sends it.
async fn host(r: &Rig, ev: HostEvent) {
    r.cmds.send(SessionCmd::Host(ev)).await.unwrap();
}

#[tokio::test]
async fn a_reset_guest_is_given_its_boot_timeout_and_its_new_boot_closes_the_gap() {
    let r = rig_with(&["signal"], Duration::from_secs(30));
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    wait_for(&r, "the probe loaded", |st| {
        st.probes.iter().any(|p| p.load_us.is_some())
    })
    .await;
    host(&r, HostEvent::Reset).await;
    // Silent for three deadtimes: a rebooting guest, not an unresponsive one.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let st = status(&r).await;
    assert_eq!(st.state, State::Ready, "{st:?}");
    assert!(
        host_events(&r).iter().all(|e| e.0 != "agent_unresponsive"),
        "{:?}",
        host_events(&r)
    );
    // The new boot's agent, on a new connection: its probes are loaded again and the time
    // since the reset is one gap.
    drop(g);
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    let st = wait_for(&r, "the reset's gap", |st| st.gaps == 1).await;
    assert!(st.unobserved_ms >= 900, "{st:?}");
    let events = host_events(&r);
    assert_eq!(events[0].0, "guest_reset", "{events:?}");
    let gap = events.iter().find(|e| e.0 == "unobserved").unwrap();
    assert!(gap.1.contains("the guest was reset"), "{events:?}");
}

#[tokio::test]
async fn a_reset_guest_whose_agent_never_returns_is_unresponsive_after_its_boot_timeout() {
    let r = rig_with(&[], Duration::from_millis(600));
    let mut g = r.listener.guest().await;
    hello(&mut g).await;
    wait_state(&r, State::Ready).await;
    host(&r, HostEvent::Reset).await;
    let t = std::time::Instant::now();
    wait_state(&r, State::Unresponsive).await;
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "before the boot timeout: {:?}",
        t.elapsed()
    );
    let events = host_events(&r);
    let silent = events.iter().find(|e| e.0 == "agent_unresponsive").unwrap();
    assert!(
        silent.1.contains("no agent since the guest reset")
            && silent.1.contains("boot_timeout_ms 600"),
        "{events:?}"
    );
    drop(g);
}

#[tokio::test]
async fn a_reconnect_is_one_gap_and_the_probes_come_back() {
    let r = rig(&["signal"]);
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    wait_for(&r, "the probe loaded", |st| {
        st.probes.iter().any(|p| p.load_us.is_some())
    })
    .await;
    drop(g);
    let st = wait_dropped(&r).await;
    assert!(st.probes.is_empty() && st.agent.is_none(), "{st:?}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut g = r.listener.guest().await;
    handshake_and_load(&mut g).await;
    let st = wait_for(&r, "the reconnect's gap", |st| st.gaps == 1).await;
    assert!(st.unobserved_ms >= 200, "{st:?}");
    let events = host_events(&r);
    assert!(
        events
            .iter()
            .any(|e| e.0 == "unobserved" && e.1.contains("the agent's connection ended")),
        "{events:?}"
    );
}

#[tokio::test]
async fn a_load_during_the_handshake_waits_for_hello_and_for_the_kernels_layouts() {
    let r = rig(&[]);
    let mut g = r.listener.guest().await;
    wait_state(&r, State::Handshake).await;
    let (reply, answer) = oneshot::channel();
    r.cmds
        .send(SessionCmd::Load {
            probe: vesper_probe::ProbeSource::Builtin("signal".into()),
            reply,
        })
        .await
        .unwrap();
    // Loaded once the agent said Hello and sent the event's layout.
    let (probe_id, _) = handshake_and_load(&mut g).await;
    match answer.await.unwrap() {
        Ok(LoadOutcome::Loaded { probe_id: id, .. }) => assert_eq!(id, probe_id),
        other => panic!("expected the load done, got {other:?}"),
    }
}

#[tokio::test]
async fn waits_on_the_agent_are_answered_when_it_goes() {
    let r = rig(&[]);
    let mut g = r.listener.guest().await;
    hello(&mut g).await;
    wait_state(&r, State::Ready).await;
    // A load waiting for its event's layout, and a kernel-info question.
    let (load, load_answer) = oneshot::channel();
    r.cmds
        .send(SessionCmd::Load {
            probe: vesper_probe::ProbeSource::Builtin("signal".into()),
            reply: load,
        })
        .await
        .unwrap();
    assert!(matches!(g.recv().await, Message::KernelInfoRequest { .. }));
    let (info, info_answer) = oneshot::channel();
    r.cmds
        .send(SessionCmd::KernelInfo {
            keys: vec!["signal:signal_generate".into()],
            reply: info,
        })
        .await
        .unwrap();
    assert!(matches!(g.recv().await, Message::KernelInfoRequest { .. }));
    drop(g);
    // The load runs at the next connect (the probe is wanted); the question has no answer.
    assert!(matches!(
        load_answer.await.unwrap(),
        Ok(LoadOutcome::Pending)
    ));
    let err = info_answer.await.unwrap().unwrap_err();
    assert_eq!(err.code, vesperd::session::ErrorCode::NotConnected);
    assert!(err.error.contains("disconnected before answering"), "{err}");
    let st = wait_dropped(&r).await;
    assert_eq!(st.desired_probes, ["signal"], "{st:?}");
}
