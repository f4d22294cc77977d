use super::*;

/// Builds a small BTF by hand: the layout tests below know every offset.
struct Blob {
    types: Vec<u8>,
    strings: Vec<u8>,
}

impl Blob {
    fn new() -> Self {
        Blob {
            types: Vec::new(),
            strings: vec![0],
        }
    }
    fn s(&mut self, s: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }
    fn w(&mut self, ws: &[u32]) {
        for w in ws {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&0xeb9fu16.to_le_bytes());
        out.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

/// 1 int, 2 pid_t, 3 struct task { pid_t pid @32; union { int a; int b; } @64; char comm[4] @96; int flag:3 @128 },
/// 4 the anonymous union, 5 char, 6 char[4], 7 struct task *, 8 func_proto(struct task *t), 9 func wake(t).
fn sample() -> Vec<u8> {
    let mut b = Blob::new();
    let (int, pid_t, task, pid, a, bb, comm, ch, flag, wake, t) = (
        b.s("int"),
        b.s("pid_t"),
        b.s("task"),
        b.s("pid"),
        b.s("a"),
        b.s("b"),
        b.s("comm"),
        b.s("char"),
        b.s("flag"),
        b.s("wake"),
        b.s("t"),
    );
    b.w(&[int, 1 << 24, 4, (1 << 24) | 32]); // 1: int, signed
    b.w(&[pid_t, 8 << 24, 1]); // 2: typedef int pid_t
    b.w(&[task, (4 << 24) | (1 << 31) | 4, 24]); // 3: struct task, kind_flag (bitfields)
    b.w(&[pid, 2, 32]);
    b.w(&[0, 4, 64]);
    b.w(&[comm, 6, 96]);
    b.w(&[flag, 1, (3 << 24) | 128]);
    b.w(&[0, (5 << 24) | 2, 4]); // 4: union { int a; int b; }
    b.w(&[a, 1, 0]);
    b.w(&[bb, 1, 0]);
    b.w(&[ch, 1 << 24, 1, (2 << 24) | 8]); // 5: char
    b.w(&[0, 3 << 24, 0, 5, 1, 4]); // 6: char[4]
    b.w(&[0, 2 << 24, 3]); // 7: struct task *
    b.w(&[0, (13 << 24) | 1, 0]); // 8: void (struct task *t)
    b.w(&[t, 7]);
    b.w(&[wake, 12 << 24, 8]); // 9: func wake
    b.bytes()
}

#[test]
fn layouts_come_from_the_blob() {
    let k = KernelTypes::parse(&sample()).unwrap();
    assert_eq!(k.len(), 10);
    let task = k.record("task", false).unwrap();
    assert_eq!(task, 3);
    assert_eq!(k.size_of(task), Some(24));
    let pid = k.field(task, "pid").unwrap();
    assert_eq!((pid.bit_offset, pid.bit_size), (32, 0));
    assert_eq!(k.describe(pid.ty), "pid_t");
    assert_eq!(k.size_of(pid.ty), Some(4));
    // Through the anonymous union.
    assert_eq!(k.field(task, "b").unwrap().bit_offset, 64);
    let comm = k.field(task, "comm").unwrap();
    assert_eq!(k.describe(comm.ty), "char[4]");
    assert_eq!(k.size_of(comm.ty), Some(4));
    let flag = k.field(task, "flag").unwrap();
    assert_eq!((flag.bit_offset, flag.bit_size), (128, 3));
    assert_eq!(k.field(task, "nope"), None);
    assert_eq!(k.field_names(task), vec!["pid", "a", "b", "comm", "flag"]);
    assert_eq!(k.describe(7), "struct task *");
    let params = k.func_params("wake").unwrap();
    assert_eq!(params.len(), 1);
    assert_eq!(params[0].name, "t");
    assert_eq!(k.describe(params[0].ty), "struct task *");
    assert_eq!(k.named("pid_t"), Some(2));
    assert_eq!(k.record("task", true), None);
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let blob = sample();
    for n in 0..blob.len() {
        // Cutting the string section can leave a valid prefix only if no name points past it.
        let _ = KernelTypes::parse(&blob[..n]);
    }
    assert!(KernelTypes::parse(&blob[..10]).is_err());
    assert!(matches!(
        KernelTypes::parse(&blob[..40]),
        Err(TypesError::Truncated { .. })
    ));
}

#[test]
fn hostile_blobs_are_refused_with_the_reason() {
    let mut bad_magic = sample();
    bad_magic[0] = 0;
    assert!(matches!(
        KernelTypes::parse(&bad_magic),
        Err(TypesError::BadMagic(_))
    ));

    // A pointer to a type that does not exist.
    let mut b = Blob::new();
    b.w(&[0, 2 << 24, 99]);
    assert_eq!(
        KernelTypes::parse(&b.bytes()),
        Err(TypesError::BadReference {
            id: 1,
            to: 99,
            last: 1
        })
    );

    // A name past the strings.
    let mut b = Blob::new();
    b.w(&[500, 1 << 24, 4, 32]);
    assert!(matches!(
        KernelTypes::parse(&b.bytes()),
        Err(TypesError::BadName { .. })
    ));

    // An unknown kind.
    let mut b = Blob::new();
    b.w(&[0, 30 << 24, 0]);
    assert!(matches!(
        KernelTypes::parse(&b.bytes()),
        Err(TypesError::UnknownKind { kind: 30, .. })
    ));

    // A typedef cycle and a self-containing anonymous member: bounded, not a hang.
    let mut b = Blob::new();
    let x = b.s("x");
    b.w(&[x, 8 << 24, 2]); // 1: typedef x -> 2
    b.w(&[x, 8 << 24, 1]); // 2: typedef x -> 1
    b.w(&[0, (4 << 24) | 1, 4]); // 3: struct { <anon> 3 }
    b.w(&[0, 3, 0]);
    b.w(&[0, 3 << 24, 0, 4, 1, 2]); // 4: an array whose element is itself (found by the fuzzer)
    let k = KernelTypes::parse(&b.bytes()).unwrap();
    assert_eq!(k.size_of(4), None);
    assert!(k.describe(4).starts_with('?') && k.describe(4).len() < 200);
    assert_eq!(k.resolve(1), 0);
    assert_eq!(k.size_of(1), None);
    assert_eq!(k.field(3, "y"), None);
    assert_eq!(k.describe(1), "x");
    assert!(k.field_names(3).is_empty());
}

#[test]
fn byte_flips_never_panic() {
    let blob = sample();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut m = blob.clone();
        let at = (seed as usize) % m.len();
        m[at] = (seed >> 32) as u8;
        if let Ok(k) = KernelTypes::parse(&m) {
            for id in 0..k.len() as u32 + 2 {
                let _ = (
                    k.size_of(id),
                    k.describe(id),
                    k.field(id, "pid"),
                    k.field_names(id),
                );
            }
            let _ = k.func_params("wake");
        }
    }
}

#[test]
fn closest_names_first() {
    let names = ["pid", "tgid", "comm", "pids", "real_parent"];
    assert_eq!(closest("pdi", names.iter().copied(), 3), vec!["pid"]);
    assert_eq!(
        closest("parent", names.iter().copied(), 3),
        vec!["real_parent"]
    );
    assert!(closest("zzzzzz", names.iter().copied(), 3).is_empty());
}

/// The machine's own kernel: a real BTF of 5+ MiB, with the layouts every probe reads.
#[test]
fn this_machines_kernel_btf() {
    let path = "/sys/kernel/btf/vmlinux";
    let Ok(blob) = std::fs::read(path) else {
        eprintln!("skipped: {path} is not readable here (a kernel without CONFIG_DEBUG_INFO_BTF)");
        return;
    };
    let t0 = std::time::Instant::now();
    let k = KernelTypes::parse(&blob).unwrap();
    eprintln!(
        "parsed {} types from {} bytes in {:?}",
        k.len(),
        blob.len(),
        t0.elapsed()
    );
    assert!(k.len() > 10_000);
    let task = k.record("task_struct", false).expect("struct task_struct");
    let pid = k.field(task, "pid").expect("task_struct.pid");
    assert_eq!(k.describe(pid.ty), "pid_t");
    assert_eq!(k.size_of(pid.ty), Some(4));
    assert_eq!(pid.bit_offset % 8, 0);
    let comm = k.field(task, "comm").unwrap();
    assert_eq!(k.describe(comm.ty), "char[16]");
    let oc = k.record("oom_control", false).expect("struct oom_control");
    let chosen = k.field(oc, "chosen").unwrap();
    assert_eq!(k.describe(chosen.ty), "struct task_struct *");
    let params = k
        .func_params("oom_kill_process")
        .expect("oom_kill_process's prototype");
    assert_eq!(k.describe(params[0].ty), "struct oom_control *");
    assert!(closest("pdi", k.field_names(task).into_iter(), 3).contains(&"pid"));
}

#[test]
fn base64_round_trips_and_refuses_junk() {
    use super::serde_base64::{decode, encode};
    for n in 0..10 {
        let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 11) as u8).collect();
        assert_eq!(decode(&encode(&bytes)).unwrap(), bytes);
    }
    assert_eq!(encode(b"Man"), "TWFu");
    assert_eq!(encode(b"Ma"), "TWE=");
    assert_eq!(decode("TWE=").unwrap(), b"Ma");
    assert_eq!(decode("T!E="), None);
    let k = crate::KernelInfo {
        types: Some(std::sync::Arc::new(KernelTypes::parse(&sample()).unwrap())),
        ..Default::default()
    };
    let json = serde_json::to_string(&k).unwrap();
    let back: crate::KernelInfo = serde_json::from_str(&json).unwrap();
    assert_eq!(back.types.unwrap().len(), 10);
    let bad = json.replace("\"types\":\"", "\"types\":\"AAAA");
    assert!(serde_json::from_str::<crate::KernelInfo>(&bad).is_err());
}
