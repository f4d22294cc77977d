//! A guest kernel's BTF and symbols reach the host piece by piece, once per kernel build,
//! and a guest that sends them wrong loses them for itself only. Driven by a fake guest.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use vesper_proto::message::caps;
use vesper_proto::{Hello, KernelFileKind, KernelFilePiece, Message};
use vesperd::kernels::KernelCache;
use vesperd::session::{Session, SessionCmd, State, VmStatus};
use vesperd::store::{RecordStore, StoreLimits};
use vesperd::testing::{FakeGuest, MemoryListener, memory_channel};

/// A BTF of `n` ints named "int" plus `struct task { int pid; }` (n + 2 types with void):
/// over 64 KiB for large `n`,
/// so it takes several pieces.
fn btf(n: usize) -> Vec<u8> {
    let strings = b"\0int\0task\0pid\0";
    let mut types = Vec::new();
    let mut w = |ws: &[u32]| ws.iter().for_each(|w| types.extend(w.to_le_bytes()));
    for _ in 0..n {
        w(&[1, 1 << 24, 4, (1 << 24) | 32]);
    }
    w(&[5, (4 << 24) | 1, 4]);
    w(&[10, 1, 0]);
    let mut out = vec![0x9f, 0xeb, 1, 0];
    for x in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend(x.to_le_bytes());
    }
    out.extend(types);
    out.extend(strings);
    out
}

const SYMBOLS: &[u8] = b"ffffffff81000000 T _stext\nffffffff81000100 t do_exit\n";

struct Rig {
    cmds: mpsc::Sender<SessionCmd>,
    listener: MemoryListener,
}

fn rig(kernels: Arc<KernelCache>) -> Rig {
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
        Vec::new(),
        None,
        Duration::from_secs(30),
        store,
        rx,
    )
    .with_kernel_cache(kernels);
    tokio::spawn(s.run());
    Rig { cmds, listener }
}

async fn status(r: &Rig) -> VmStatus {
    let (reply, rx) = oneshot::channel();
    r.cmds.send(SessionCmd::Status { reply }).await.unwrap();
    rx.await.unwrap()
}

async fn wait_kernel(r: &Rig, state: &str) -> VmStatus {
    for _ in 0..300 {
        let st = status(r).await;
        if st.kernel_types.state == state {
            return st;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "kernel types never got to {state}: {:?}",
        status(r).await.kernel_types
    );
}

async fn hello(g: &mut FakeGuest, capabilities: u32) {
    g.send(&Message::Hello(Hello {
        agent_version: "fake".into(),
        kernel_release: "6.1-fake".into(),
        capabilities,
        boot_id: "b1".into(),
    }))
    .await;
}

fn piece(file: KernelFileKind, total: u64, offset: u64, eof: bool, data: &[u8]) -> Message {
    Message::KernelFile(KernelFilePiece {
        file,
        kernel_id: "00c0ffee00c0ffee".into(),
        total,
        offset,
        eof,
        data: data.to_vec(),
    })
}

/// Serves every request like an agent would; returns how many pieces were asked for.
async fn serve(g: &mut FakeGuest, btf: &[u8]) -> usize {
    let mut asked = 0;
    loop {
        let Message::KernelFileRequest {
            file,
            offset,
            max_len,
        } = g.recv().await
        else {
            panic!("expected a kernel file request");
        };
        asked += 1;
        let whole = match file {
            KernelFileKind::Btf => btf,
            KernelFileKind::Symbols => SYMBOLS,
        };
        let from = offset as usize;
        let to = (from + max_len as usize).min(whole.len());
        let eof = to == whole.len();
        let total = if file == KernelFileKind::Btf {
            btf.len() as u64
        } else {
            0
        };
        g.send(&piece(file, total, offset, eof, &whole[from..to]))
            .await;
        if file == KernelFileKind::Symbols && eof {
            return asked;
        }
    }
}

#[tokio::test]
async fn fetched_once_per_kernel_build_and_shared() {
    let kernels = KernelCache::new(None);
    let blob = btf(5000);
    assert!(blob.len() > 64 * 1024);
    let r = rig(kernels.clone());
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::RINGBUF | caps::KERNEL_FILES).await;
    let asked = serve(&mut g, &blob).await;
    // The id, two BTF pieces, one symbols piece.
    assert_eq!(asked, 4);
    let st = wait_kernel(&r, "known").await;
    let k = &st.kernel_types;
    assert_eq!(k.kernel_id.as_deref(), Some("00c0ffee00c0ffee"));
    assert_eq!(k.types, Some(5002));
    assert_eq!(k.symbols, Some(2));
    assert_eq!(k.btf_bytes, Some(blob.len()));
    assert!(k.fetched_ms.is_some());
    let kernel = kernels.in_memory("00c0ffee00c0ffee").unwrap();
    let task = kernel.types.record("task", false).unwrap();
    assert_eq!(kernel.types.field(task, "pid").unwrap().bit_offset, 0);
    assert_eq!(kernel.symbols.describe(0xffffffff81000104), "do_exit+0x4");

    // A second VM on the same kernel: the id is asked for, nothing else.
    let r2 = rig(kernels.clone());
    let mut g2 = r2.listener.guest().await;
    hello(&mut g2, caps::KERNEL_FILES).await;
    match g2.recv().await {
        Message::KernelFileRequest { max_len: 0, .. } => {}
        other => panic!("expected the id request, got {other:?}"),
    }
    g2.send(&piece(
        KernelFileKind::Btf,
        blob.len() as u64,
        0,
        false,
        &[],
    ))
    .await;
    let st = wait_kernel(&r2, "known").await;
    assert_eq!(st.kernel_types.fetched_ms, None, "from the cache");
}

#[tokio::test]
async fn kept_on_disk_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let blob = btf(10);
    {
        let r = rig(KernelCache::new(Some(dir.path().to_path_buf())));
        let mut g = r.listener.guest().await;
        hello(&mut g, caps::KERNEL_FILES).await;
        serve(&mut g, &blob).await;
        wait_kernel(&r, "known").await;
    }
    assert!(dir.path().join("00c0ffee00c0ffee/btf").is_file());
    // A new vesperd (an empty memory cache) over the same directory.
    let r = rig(KernelCache::new(Some(dir.path().to_path_buf())));
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::KERNEL_FILES).await;
    let _id_request = g.recv().await;
    g.send(&piece(
        KernelFileKind::Btf,
        blob.len() as u64,
        0,
        false,
        &[],
    ))
    .await;
    let st = wait_kernel(&r, "known").await;
    assert_eq!(st.kernel_types.fetched_ms, None);
    assert_eq!(st.kernel_types.types, Some(12));
}

#[tokio::test]
async fn a_guest_that_sends_them_wrong_loses_them_for_itself_only() {
    let kernels = KernelCache::new(None);
    // A piece at an offset that was not asked for.
    let r = rig(kernels.clone());
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::KERNEL_FILES).await;
    let _ = g.recv().await;
    g.send(&piece(KernelFileKind::Btf, 100, 0, false, &[]))
        .await;
    let _ = g.recv().await;
    g.send(&piece(KernelFileKind::Btf, 100, 50, false, &[0; 10]))
        .await;
    let st = wait_kernel(&r, "failed").await;
    assert!(st.kernel_types.error.unwrap().contains("offset 50"));
    assert_eq!(st.state, State::Ready, "the connection stays");

    // A BTF that does not parse: refused, not cached.
    let r = rig(kernels.clone());
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::KERNEL_FILES).await;
    let mut bad = btf(3);
    bad[0] = 0;
    serve(&mut g, &bad).await;
    let st = wait_kernel(&r, "failed").await;
    assert!(
        st.kernel_types
            .error
            .as_deref()
            .unwrap()
            .contains("malformed"),
        "{:?}",
        st.kernel_types.error
    );
    assert!(kernels.in_memory("00c0ffee00c0ffee").is_none());

    // An announced size past the bound.
    let r = rig(kernels.clone());
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::KERNEL_FILES).await;
    let _ = g.recv().await;
    g.send(&piece(KernelFileKind::Btf, 1 << 40, 0, false, &[]))
        .await;
    let st = wait_kernel(&r, "failed").await;
    assert!(st.kernel_types.error.unwrap().contains("bytes (1 to"));

    // An agent without the capability is never asked.
    let r = rig(kernels);
    let mut g = r.listener.guest().await;
    hello(&mut g, caps::RINGBUF).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(status(&r).await.kernel_types.state, "idle");
}
