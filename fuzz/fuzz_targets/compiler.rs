//! Arbitrary text into the whole probe compiler, against a kernel that has every
//! tracepoint the script names (with a few fields): must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesper_probe::{KernelInfo, TracepointField, TracepointFormat, compile, required_kernel_keys};

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(keys) = required_kernel_keys(src, "fuzz.vsp") else {
        return;
    };
    let mut k = KernelInfo {
        release: "fuzz".into(),
        ..Default::default()
    };
    for key in keys {
        let field = |name: &str, decl: &str, offset, size, signed| TracepointField {
            name: name.into(),
            decl: decl.into(),
            offset,
            size,
            signed,
        };
        let fields = vec![
            field("sig", "int sig", 8, 4, true),
            field("comm", "char comm[16]", 12, 16, false),
            field("name", "__data_loc char[] name", 28, 4, false),
            field("big", "unsigned long big", 32, 8, false),
            field("flag", "bool flag", 40, 1, false),
        ];
        k.formats.insert(
            key.clone(),
            Some(TracepointFormat {
                event: key,
                id: None,
                fields,
            }),
        );
    }
    let _ = compile(src, "fuzz.vsp", "fuzz", &k);
});
