//! The compiler, checked without a kernel: built-in probes against recorded kernel
//! layouts, golden outputs of the parser and code generator, a corpus of bad scripts
//! with their exact messages, and arbitrary input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

mod common;

use common::golden;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use vesper_probe::compiler::{Diagnostics, passes};
use vesper_probe::{KernelInfo, builtin, compile, manifest_of_object, required_kernel_keys};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests")
}

/// The 6.18 host kernel's layouts, recorded; every key a test may ask for.
fn kernel_6_18(keys: &[String]) -> KernelInfo {
    KernelInfo::read_tracefs(&data().join("data/tracefs-6.18"), "6.18-recorded", keys)
}

fn compile_for_618(src: &str, file: &str) -> Result<vesper_probe::CompiledProbe, Diagnostics> {
    let keys = required_kernel_keys(src, file)?;
    compile(src, file, "t", &kernel_6_18(&keys))
}

#[test]
fn every_builtin_compiles_against_the_recorded_kernel() {
    for name in builtin::names() {
        let keys = builtin::events(name).unwrap();
        let p = builtin::build(name, &kernel_6_18(&keys)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&p.object[..4], b"\x7fELF");
        assert_eq!(
            u16::from_le_bytes([p.object[18], p.object[19]]),
            247,
            "EM_BPF"
        );
        assert_eq!(
            manifest_of_object(&p.object).as_ref(),
            Some(&p.manifest),
            "{name}: embedded manifest"
        );
        assert_eq!(p.manifest.name, name);
        assert!(!p.manifest.schemas.is_empty());
    }
}

#[test]
fn the_design_example_compiles_as_written() {
    let src = "tracepoint:signal:signal_generate /args.sig == 15 && comm == \"stopper\"/ {\n    emit { sig = args.sig, target = args.pid, by = comm }\n}\n";
    let p = compile_for_618(src, "design.vsp").unwrap();
    let names: Vec<&str> = p.manifest.schemas[0]
        .fields
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(names, ["ts_ns", "sig", "target", "by"]);
}

#[test]
fn golden_parse_and_codegen() {
    let dir = data().join("golden");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "vsp") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let mut diags = Vec::new();
        let toks = passes::lex::lex(&src, &mut diags);
        let ast = passes::parse::parse(&toks, &mut diags);
        assert!(diags.is_empty(), "{}: {diags:?}", path.display());
        golden(&path.with_extension("ast"), &format!("{ast:#?}\n"));
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let p = compile_for_618(&src, &file).unwrap_or_else(|e| panic!("{e}"));
        golden(
            &path.with_extension("asm"),
            &listing(&p.object, &p.manifest),
        );
        n += 1;
    }
    assert!(n >= 3, "golden corpus is missing");
}

/// Disassembly of every program section, plus the manifest's records, maps and intervals.
fn listing(object: &[u8], m: &vesper_probe::Manifest) -> String {
    let mut out = vesper_probe::disasm::disasm_object(object, m);
    out.push_str(&serde_json::to_string_pretty(&m.schemas).unwrap());
    out.push('\n');
    if !m.maps.is_empty() {
        out.push_str("maps: ");
        out.push_str(&serde_json::to_string_pretty(&m.maps).unwrap());
        out.push('\n');
    }
    if !m.intervals.is_empty() {
        out.push_str("intervals: ");
        out.push_str(&serde_json::to_string_pretty(&m.intervals).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn bad_scripts_get_their_expected_messages() {
    let dir = data().join("bad");
    let mut n = 0;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for path in paths {
        if path.extension().is_none_or(|e| e != "vsp") {
            continue;
        }
        let src = std::fs::read_to_string(&path).unwrap();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let err = match compile_for_618(&src, &file) {
            Ok(_) => panic!("{file} compiled, but it is in the bad corpus"),
            Err(e) => e.to_string(),
        };
        golden(&path.with_extension("err"), &err);
        n += 1;
    }
    assert!(n >= 10, "bad corpus is missing");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(src in "\\PC{0,200}") {
        let _ = compile_for_618(&src, "fuzz.vsp");
    }

    #[test]
    fn token_soup_never_panics(toks in prop::collection::vec(prop::sample::select(vec![
        "tracepoint", ":", "signal", "signal_generate", "kprobe", "kretprobe", "do_exit", "/", "{", "}", "emit",
        "=", ",", "args", ".", "sig", "pid", "comm", "==", "&&", "||", "!", "(", ")", "in", "[", "]", "\"x\"", "15",
        "-", "*", "%", "starts_with", "signal", "arg0", "retval", "<<", ">>", ";",
        "->", "$x", "$y", "struct", "task_struct", "curtask", "kstack", "str", "args.oc",
        "@m", "@", "if", "else", "delete", "count", "hist", "lhist", "avg", "interval", "s", "ms", "1",
        "print", "clear", "tid", "nsecs",
    ]), 0..60)) {
        let src = toks.join(" ");
        let _ = compile_for_618(&src, "soup.vsp");
    }
}

#[test]
fn the_bpftrace_tool_ports_compile_against_the_recorded_kernel() {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tools");
    // oomkill.vsp reads struct oom_control: it is checked against BTF in tests/types.rs.
    for (tool, maps) in [
        ("killsnoop", vec!["@inkill", "@tpid", "@tsig"]),
        ("opensnoop", vec!["@filename", "@flags"]),
        ("runqlat", vec!["@qtime", "@usecs"]),
        ("tcpretrans", vec![]),
    ] {
        let file = format!("{tool}.vsp");
        let src = std::fs::read_to_string(tools.join(&file)).unwrap();
        let p = compile_for_618(&src, &file).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = p.manifest.maps.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, maps, "{tool}");
    }
}
