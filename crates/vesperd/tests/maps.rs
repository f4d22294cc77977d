//! A probe's maps read from its guest: `vesper maps`, an unload that reads them first, an
//! interval probe that stores them as records; and a guest that answers wrong loses only
//! that read. Driven by a fake guest over an in-memory channel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vesper_probe::map_values::{EntryValue, KeyValue, MapDump};
use vesper_proto::message::{caps, error_code};
use vesper_proto::{EventFormat, Hello, KernelInfo, MapEntries, Message};
use vesperd::session::{Session, SessionCmd};
use vesperd::store::{RecordStore, StoreLimits};
use vesperd::testing::{FakeGuest, memory_channel};

const FORMAT: &str =
    include_str!("../../vesper-probe/tests/data/tracefs-6.18/events/signal/signal_generate/format");

const COUNTS: &str =
    "tracepoint:signal:signal_generate { @n[args.sig] = count(); @h = hist(args.sig); }\n";

struct Rig {
    cmds: mpsc::Sender<SessionCmd>,
    store: Arc<Mutex<RecordStore>>,
    guest: FakeGuest,
    probe_id: u32,
}

/// A session (loading `probes` when connected) and its fake guest, before Hello.
async fn session(
    probes: Vec<vesper_probe::ProbeSource>,
) -> (mpsc::Sender<SessionCmd>, Arc<Mutex<RecordStore>>, FakeGuest) {
    let (connector, listener) = memory_channel();
    let limits = StoreLimits {
        max_records: 100,
        max_bytes: 1 << 20,
        file_max_bytes: 1 << 20,
    };
    let store = Arc::new(Mutex::new(RecordStore::new(limits, None)));
    let (cmds, rx) = mpsc::channel(8);
    let s = Session::new(
        "web1".into(),
        Box::new(connector),
        probes,
        None,
        Duration::from_secs(30),
        store.clone(),
        rx,
    );
    tokio::spawn(s.run());
    (cmds, store, listener.guest().await)
}

/// Hello from a fake agent with these capabilities.
fn hello(capabilities: u32) -> Message {
    Message::Hello(Hello {
        agent_version: "fake".into(),
        kernel_release: "6.18-fake".into(),
        capabilities,
        boot_id: "b1".into(),
    })
}

/// The kernel's answer: the signal tracepoint's layout.
fn kernel_info() -> Message {
    Message::KernelInfo(KernelInfo {
        release: "6.18-fake".into(),
        btf: false,
        formats: vec![EventFormat {
            event: "signal:signal_generate".into(),
            format: Some(FORMAT.into()),
        }],
    })
}

/// A session with one script loaded in a fake guest that has (or lacks) map reading.
async fn rig(script: &str, capabilities: u32) -> Rig {
    let probe = vesper_probe::ProbeSource::Script {
        name: "counts".into(),
        file: "counts.vsp".into(),
        text: script.into(),
    };
    let (cmds, store, mut g) = session(vec![probe]).await;
    g.send(&hello(capabilities)).await;
    assert!(matches!(g.recv().await, Message::KernelInfoRequest { .. }));
    g.send(&kernel_info()).await;
    let Message::LoadProbe(load) = g.recv().await else {
        panic!("expected LoadProbe")
    };
    g.send(&Message::ProbeLoaded {
        probe_id: load.probe_id,
        load_us: 1,
    })
    .await;
    Rig {
        cmds,
        store,
        guest: g,
        probe_id: load.probe_id,
    }
}

/// Entries of `@n` (map_0): signal → per-CPU counts on 2 CPUs.
fn counts(probe_id: u32, key_size: u32, rows: &[(i64, u64, u64)]) -> Message {
    Message::MapEntries(MapEntries {
        probe_id,
        map: "map_0".into(),
        cpus: 2,
        key_size,
        value_size: 8,
        total: rows.len() as u32,
        entries: rows
            .iter()
            .map(|(k, a, b)| {
                let mut v = a.to_le_bytes().to_vec();
                v.extend(b.to_le_bytes());
                (k.to_le_bytes().to_vec(), v)
            })
            .collect(),
    })
}

/// Entries of `@h` (map_1): bucket → count on 2 CPUs.
fn hist(probe_id: u32, rows: &[(u64, u64)]) -> Message {
    Message::MapEntries(MapEntries {
        probe_id,
        map: "map_1".into(),
        cpus: 2,
        key_size: 8,
        value_size: 8,
        total: rows.len() as u32,
        entries: rows
            .iter()
            .map(|(b, n)| {
                let mut v = n.to_le_bytes().to_vec();
                v.extend(0u64.to_le_bytes());
                (b.to_le_bytes().to_vec(), v)
            })
            .collect(),
    })
}

/// The next two requests: both maps, neither cleared.
async fn expect_requests(g: &mut FakeGuest, clear: bool) -> Vec<String> {
    let mut maps = Vec::new();
    for _ in 0..2 {
        match g.recv().await {
            Message::MapRequest {
                map,
                clear: c,
                max_bytes,
                ..
            } => {
                assert_eq!(c, clear);
                assert!(max_bytes < 1 << 20, "a reply must fit a frame: {max_bytes}");
                maps.push(map);
            }
            other => panic!("expected MapRequest, got {other:?}"),
        }
    }
    maps
}

async fn ask_maps(r: &Rig) -> oneshot::Receiver<Result<Vec<MapDump>, vesperd::session::ApiError>> {
    let (reply, rx) = oneshot::channel();
    let probe = "counts".into();
    r.cmds
        .send(SessionCmd::Maps { probe, reply })
        .await
        .unwrap();
    rx
}

#[tokio::test]
async fn maps_are_read_merged_across_cpus_and_given_in_the_manifests_order() {
    let mut r = rig(COUNTS, caps::MAPS).await;
    let rx = ask_maps(&r).await;
    assert_eq!(
        expect_requests(&mut r.guest, false).await,
        ["map_0", "map_1"]
    );
    // Answers in another order than asked: the reply keeps the script's.
    r.guest.send(&hist(r.probe_id, &[(6, 2), (1, 1)])).await;
    r.guest
        .send(&counts(r.probe_id, 8, &[(15, 2, 3), (9, 1, 0)]))
        .await;
    let dumps = rx.await.unwrap().unwrap();
    assert_eq!(dumps[0].name, "@n");
    assert_eq!(dumps[0].entries[1].key, [KeyValue::Int(15)]);
    assert_eq!(dumps[0].entries[1].value, EntryValue::Int { value: 5 });
    let EntryValue::Buckets { buckets } = &dumps[1].entries[0].value else {
        panic!("{dumps:?}")
    };
    // Bucket 1 is zero, bucket 6 is [16, 32).
    assert_eq!((buckets[0].low, buckets[0].count), (Some(0), 1));
    assert_eq!((buckets[1].low, buckets[1].high), (Some(16), Some(32)));
}

#[tokio::test]
async fn a_guest_that_answers_wrong_fails_that_read_only() {
    let mut r = rig(COUNTS, caps::MAPS).await;
    let rx = ask_maps(&r).await;
    expect_requests(&mut r.guest, false).await;
    r.guest.send(&counts(r.probe_id, 16, &[(15, 1, 1)])).await;
    r.guest.send(&hist(r.probe_id, &[(99, 1)])).await;
    let err = rx.await.unwrap().unwrap_err();
    assert_eq!(err.code, vesperd::session::ErrorCode::AgentFailed);
    let err = err.to_string();
    assert!(err.contains("keys of 16 bytes"), "{err}");
    assert!(err.contains("bucket 99"), "{err}");
    // The agent says it could not read: the caller hears it in words.
    let rx = ask_maps(&r).await;
    expect_requests(&mut r.guest, false).await;
    r.guest
        .send(&Message::Error {
            probe_id: r.probe_id,
            code: error_code::MAP_READ,
            message: "map map_0: lookup: Operation not permitted".into(),
        })
        .await;
    let err = rx.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("could not read a map: map map_0"), "{err}");
    // And the session goes on: a good read after.
    let rx = ask_maps(&r).await;
    expect_requests(&mut r.guest, false).await;
    // The second request of the failed read is still answered by the agent: ignored.
    r.guest.send(&hist(r.probe_id, &[])).await;
    r.guest.send(&counts(r.probe_id, 8, &[(2, 1, 1)])).await;
    r.guest.send(&hist(r.probe_id, &[])).await;
    let dumps = rx.await.unwrap().unwrap();
    assert_eq!(dumps[0].entries[0].value, EntryValue::Int { value: 2 });
}

#[tokio::test]
async fn an_unload_reads_the_maps_first_and_returns_their_last_values() {
    let mut r = rig(COUNTS, caps::MAPS).await;
    let (reply, rx) = oneshot::channel();
    r.cmds
        .send(SessionCmd::Unload {
            probe: "counts".into(),
            reply,
        })
        .await
        .unwrap();
    expect_requests(&mut r.guest, false).await;
    r.guest.send(&counts(r.probe_id, 8, &[(15, 4, 0)])).await;
    r.guest.send(&hist(r.probe_id, &[(2, 4)])).await;
    match r.guest.recv().await {
        Message::UnloadProbe { probe_id } => assert_eq!(probe_id, r.probe_id),
        other => panic!("expected UnloadProbe after the maps, got {other:?}"),
    }
    r.guest
        .send(&Message::ProbeUnloaded {
            probe_id: r.probe_id,
        })
        .await;
    let last = rx.await.unwrap().unwrap();
    assert_eq!(last[0].to_text(), "@n[15]: 4\n");
}

#[tokio::test]
async fn an_older_agent_is_not_asked_and_the_caller_is_told_why() {
    let r = rig(COUNTS, 0).await;
    let err = ask_maps(&r).await.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("older vesper-agent"), "{err}");
}

#[tokio::test]
async fn an_interval_probe_stores_the_printed_map_and_clears_it_in_the_same_read() {
    let script = format!("{COUNTS}interval:ms:200 {{ print(@n); clear(@n); }}\n");
    let mut r = rig(&script, caps::MAPS).await;
    let started = std::time::Instant::now();
    let (map, clear) = match r.guest.recv().await {
        Message::MapRequest { map, clear, .. } => (map, clear),
        other => panic!("expected the interval's MapRequest, got {other:?}"),
    };
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert_eq!((map.as_str(), clear), ("map_0", true));
    r.guest.send(&counts(r.probe_id, 8, &[(15, 1, 2)])).await;
    let mut found = None;
    for _ in 0..100 {
        let recs = r.store.lock().unwrap().tail(Some("counts"), None);
        if let Some(rec) = recs.last() {
            found = Some(rec.json.to_string());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let json: serde_json::Value = serde_json::from_str(&found.expect("no record")).unwrap();
    assert_eq!(json["map"], "@n");
    assert_eq!(json["entries"][0]["value"], 3, "{json}");
    // Its next turn comes about 200 ms later, again.
    assert!(matches!(
        r.guest.recv().await,
        Message::MapRequest { clear: true, .. }
    ));
}

/// Not about maps, but about the same loaded script: the verifier's refusal comes back at
/// the script's line, with its words.
#[tokio::test]
async fn a_verifier_refusal_is_shown_at_the_line_it_came_from() {
    let (cmds, _store, mut g) = session(Vec::new()).await;
    g.send(&hello(caps::MAPS)).await;
    // Ready (Hello taken) before the load: a load sent while unconnected is only queued.
    for _ in 0..200 {
        let (reply, rx) = oneshot::channel();
        cmds.send(SessionCmd::Status { reply }).await.unwrap();
        if rx.await.unwrap().state == vesperd::session::State::Ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (reply, answer) = oneshot::channel();
    let text = "tracepoint:signal:signal_generate {\n    @n[args.sig] = count();\n}\n";
    let probe = vesper_probe::ProbeSource::Script {
        name: "counts".into(),
        file: "counts.vsp".into(),
        text: text.into(),
    };
    cmds.send(SessionCmd::Load { probe, reply }).await.unwrap();
    assert!(matches!(g.recv().await, Message::KernelInfoRequest { .. }));
    g.send(&kernel_info()).await;
    let Message::LoadProbe(load) = g.recv().await else {
        panic!("expected LoadProbe")
    };
    let m = vesper_probe::manifest_of_object(&load.object).unwrap();
    let [at, ..] = *m.attach[0].lines.last().unwrap();
    g.send(&Message::Error {
        probe_id: load.probe_id,
        code: error_code::LOAD_FAILED,
        message: format!(
            "probe counts: loading program p0_0 into the kernel: the BPF_PROG_LOAD syscall returned Permission denied (os error 13). Verifier output: 0: R1=ctx() R10=fp0\n{at}: (85) call bpf_map_lookup_elem#1\nR2 invalid mem access 'scalar'\nprocessed 12 insns\n"
        ),
    })
    .await;
    let err = answer.await.unwrap().unwrap_err();
    assert_eq!(err.code, vesperd::session::ErrorCode::ProbeRefused);
    let err = err.to_string();
    assert!(err.contains("--> counts.vsp:2:5"), "{err}");
    assert!(err.contains("@n[args.sig] = count();"), "{err}");
    assert!(
        err.contains("the verifier: R2 invalid mem access 'scalar'"),
        "{err}"
    );
}
