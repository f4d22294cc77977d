//! The language's kernel-type features (casts, `->`/`.`, `curtask`, typed kprobe `args`)
//! against a small kernel BTF built here, so every offset the code must use is known: the
//! listings in `tests/btf/` show them, the bad scripts there their messages.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::golden;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vesper_probe::kernel_types::KernelTypes;
use vesper_probe::{KernelInfo, compile, required_kernel_keys};

/// A BTF in the kernel's format, written type by type.
#[derive(Default)]
struct Btf {
    types: Vec<u32>,
    strings: Vec<u8>,
    next: u32,
}

impl Btf {
    fn s(&mut self, name: &str) -> u32 {
        if self.strings.is_empty() {
            self.strings.push(0);
        }
        if name.is_empty() {
            return 0;
        }
        let off = self.strings.len() as u32;
        self.strings.extend(name.as_bytes());
        self.strings.push(0);
        off
    }
    fn ty(&mut self, words: &[u32]) -> u32 {
        self.types.extend(words);
        self.next += 1;
        self.next
    }
    fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
        let n = self.s(name);
        self.ty(&[n, 1 << 24, size, (u32::from(signed) << 24) | (size * 8)])
    }
    fn typedef(&mut self, name: &str, to: u32) -> u32 {
        let n = self.s(name);
        self.ty(&[n, 8 << 24, to])
    }
    fn ptr(&mut self, to: u32) -> u32 {
        self.ty(&[0, 2 << 24, to])
    }
    fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
        self.ty(&[0, 3 << 24, 0, elem, index, len])
    }
    /// `fwd` declares a struct whose members come later (`define`), for self-reference.
    fn fwd_struct(&mut self) -> u32 {
        self.ty(&[])
    }
    /// Members: (name, type, bit offset, bit size).
    fn define(&mut self, at: u32, name: &str, size: u32, members: &[(&str, u32, u32, u32)]) {
        let n = self.s(name);
        let bitfields = members.iter().any(|m| m.3 > 0);
        let mut words = vec![
            n,
            (4 << 24) | (u32::from(bitfields) << 31) | members.len() as u32,
            size,
        ];
        for &(m, ty, off, bits) in members {
            let mn = self.s(m);
            words.extend([mn, ty, if bitfields { (bits << 24) | off } else { off }]);
        }
        // Types are numbered in order: splice this one in at its place.
        let mut idx = 0;
        let mut id = 1;
        let mut pos = 0;
        while id < at {
            pos += self.len_at(idx);
            idx = pos;
            id += 1;
        }
        self.types.splice(pos..pos, words);
    }
    /// Words taken by the type starting at word `i` (placeholders take none).
    fn len_at(&self, i: usize) -> usize {
        let info = self.types[i + 1];
        let vlen = (info & 0xffff) as usize;
        3 + match info >> 24 & 0x1f {
            1 => 1,
            3 => 3,
            4 | 5 => 3 * vlen,
            13 => 2 * vlen,
            _ => 0,
        }
    }
    fn func(&mut self, name: &str, ret: u32, params: &[(&str, u32)]) {
        let mut words = vec![0, (13 << 24) | params.len() as u32, ret];
        for &(p, ty) in params {
            let pn = self.s(p);
            words.extend([pn, ty]);
        }
        let proto = self.ty(&words);
        let n = self.s(name);
        self.ty(&[n, (12 << 24) | 1, proto]);
    }
    fn bytes(&self) -> Vec<u8> {
        let types: Vec<u8> = self.types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            self.strings.len() as u32,
        ] {
            out.extend(w.to_le_bytes());
        }
        out.extend(types);
        out.extend(&self.strings);
        out
    }
}

/// `struct task_struct` { int flags:3 at bit 32+4 (bitfield); pid_t pid @1304; pid_t tgid @1308;
/// struct task_struct *real_parent @1320; struct list_head tasks @1400; char comm[16] @2000; }
/// with `struct list_head { next @0, prev @8 }` (sizes as on a real kernel,
/// offsets chosen so that no two are alike), `struct oom_control` { struct task_struct
/// *chosen @40; unsigned long totalpages @48; }, and oom_kill_process(struct oom_control *oc,
/// const char *message), do_exit(long code).
fn kernel() -> KernelInfo {
    let mut b = Btf::default();
    b.s("");
    let int = b.int("int", 4, true);
    let long = b.int("long", 8, true);
    let ulong = b.int("unsigned long", 8, false);
    let ch = b.int("char", 1, true);
    let pid_t = b.typedef("pid_t", int);
    let task = b.fwd_struct();
    let task_ptr = b.ptr(task);
    let comm = b.array(ch, int, 16);
    let list = b.fwd_struct();
    let list_ptr = b.ptr(list);
    let oc = b.fwd_struct();
    let oc_ptr = b.ptr(oc);
    let ch_ptr = b.ptr(ch);
    b.func(
        "oom_kill_process",
        0,
        &[("oc", oc_ptr), ("message", ch_ptr)],
    );
    b.func("do_exit", 0, &[("code", long)]);
    b.define(
        task,
        "task_struct",
        4096,
        &[
            ("flags", int, 36, 3),
            ("pid", pid_t, 1304 * 8, 0),
            ("tgid", pid_t, 1308 * 8, 0),
            ("real_parent", task_ptr, 1320 * 8, 0),
            ("tasks", list, 1400 * 8, 0),
            ("comm", comm, 2000 * 8, 0),
        ],
    );
    b.define(
        list,
        "list_head",
        16,
        &[("next", list_ptr, 0, 0), ("prev", list_ptr, 64, 0)],
    );
    b.define(
        oc,
        "oom_control",
        64,
        &[
            ("chosen", task_ptr, 40 * 8, 0),
            ("totalpages", ulong, 48 * 8, 0),
        ],
    );
    let types = KernelTypes::parse(&b.bytes()).expect("the test BTF parses");
    let mut k = KernelInfo {
        release: "6.1-test".into(),
        btf: true,
        types: Some(Arc::new(types)),
        ..Default::default()
    };
    // Tracepoint formats from the recorded 6.18 kernel, for tracepoint probes.
    let recorded = KernelInfo::read_tracefs(
        &dir().join("data/tracefs-6.18"),
        "6.1-test",
        &["signal:signal_generate".to_string()],
    );
    k.formats = recorded.formats;
    for f in ["oom_kill_process", "do_exit"] {
        let key = format!("kprobe:{f}");
        let found = vesper_probe::TracepointFormat {
            event: key.clone(),
            id: None,
            fields: vec![],
        };
        k.formats.insert(key, Some(found));
    }
    k
}

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

fn scripts(kind: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir().join("btf"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "vsp")
                && p.file_name().unwrap().to_string_lossy().starts_with(kind)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn the_test_kernel_has_the_layouts_it_claims() {
    let k = kernel();
    let t = k.types.unwrap();
    let task = t.record("task_struct", false).unwrap();
    assert_eq!(t.field(task, "pid").unwrap().bit_offset, 1304 * 8);
    assert_eq!(
        t.describe(t.field(task, "real_parent").unwrap().ty),
        "struct task_struct *"
    );
    assert_eq!(t.describe(t.field(task, "comm").unwrap().ty), "char[16]");
    let flags = t.field(task, "flags").unwrap();
    assert_eq!((flags.bit_offset, flags.bit_size), (36, 3));
    let p = t.func_params("oom_kill_process").unwrap();
    assert_eq!(t.describe(p[0].ty), "struct oom_control *");
}

#[test]
fn good_scripts_compile_to_reads_at_the_kernels_offsets() {
    let k = kernel();
    let paths = scripts("ok-");
    assert!(paths.len() >= 3);
    for path in paths {
        let src = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let keys = required_kernel_keys(&src, &file).unwrap();
        assert!(keys.contains(&"btf".to_string()), "{file}: {keys:?}");
        let p = compile(&src, &file, "t", &k).unwrap_or_else(|e| panic!("{e}"));
        let mut listing = vesper_probe::disasm::disasm_object(&p.object, &p.manifest);
        listing.push_str(&serde_json::to_string_pretty(&p.manifest.schemas).unwrap());
        listing.push('\n');
        golden(&path.with_extension("asm"), &listing);
    }
}

#[test]
fn mistakes_name_the_closest_struct_or_member() {
    let k = kernel();
    let paths = scripts("bad-");
    assert!(paths.len() >= 5);
    for path in paths {
        let src = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let err = match compile(&src, &file, "t", &k) {
            Ok(_) => panic!("{file} compiled"),
            Err(e) => e.to_string(),
        };
        golden(&path.with_extension("err"), &err);
    }
}

#[test]
fn without_the_kernels_types_the_message_says_how_to_get_them() {
    let mut k = kernel();
    k.types = None;
    let src = "kprobe:do_exit { emit { p = curtask->pid } }";
    let err = compile(src, "x.vsp", "t", &k).unwrap_err().to_string();
    assert!(
        err.contains("needs the kernel's type information (BTF)"),
        "{err}"
    );
    assert!(err.contains("vesper status"), "{err}");
}
