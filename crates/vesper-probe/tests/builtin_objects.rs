//! Built-in probes compile against a recorded kernel layout into objects whose shape
//! a loader expects; checked without a kernel.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use vesper_probe::{BuildError, KernelInfo, builtin, parse_format};

fn kernel_6_18() -> KernelInfo {
    let text = include_str!("data/signal_generate.6.18.format");
    let mut k = KernelInfo {
        release: "6.18".into(),
        ..Default::default()
    };
    k.formats.insert(
        "signal:signal_generate".into(),
        Some(parse_format("signal:signal_generate", text).unwrap()),
    );
    k
}

#[test]
fn signal_object_is_a_bpf_elf_with_program_maps_and_relocations() {
    let p = builtin::build("signal", &kernel_6_18()).unwrap();
    let o = &p.object;
    assert_eq!(&o[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([o[18], o[19]]), 247, "EM_BPF");
    let text = String::from_utf8_lossy(o);
    for name in [
        "tracepoint/signal/signal_generate",
        ".reltracepoint/signal/signal_generate",
        "maps",
        "license",
        "events",
        "drops",
    ] {
        assert!(text.contains(name), "object lacks {name}");
    }
    assert_eq!(p.manifest.record.size, 64);
    assert_eq!(p.manifest.attach[0].target, "signal:signal_generate");
}

#[test]
fn reads_the_tracepoint_fields_at_the_kernels_offsets() {
    // In 6.18, `pid` is at offset 36: the program must load ctx+36 as a 32-bit word.
    let p = builtin::build("signal", &kernel_6_18()).unwrap();
    let o = &p.object;
    let ldxw_r1_r6_36 = [0x61u8, 0x61, 36, 0];
    assert!(o.windows(4).any(|w| w == ldxw_r1_r6_36));
}

#[test]
fn a_kernel_without_the_field_gets_a_message_listing_the_fields() {
    let mut k = kernel_6_18();
    let fmt = k
        .formats
        .get_mut("signal:signal_generate")
        .unwrap()
        .as_mut()
        .unwrap();
    fmt.fields.retain(|f| f.name != "result");
    let err = builtin::build("signal", &k).unwrap_err();
    assert!(matches!(err, BuildError::MissingField { ref field, .. } if field == "result"));
    assert!(
        err.to_string()
            .contains("sig, errno, code, comm, pid, group"),
        "{err}"
    );
}

#[test]
fn unknown_builtin_names_the_known_ones() {
    let err = builtin::build("nope", &kernel_6_18()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown built-in probe \"nope\" (built-in probes: signal)"
    );
}
