//! Arbitrary bytes as a guest's BTF: parsing must never panic, and every query on what
//! parsed must end (cycles and self-containing records are bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesper_probe::kernel_types::{KernelTypes, closest};

fuzz_target!(|data: &[u8]| {
    let Ok(k) = KernelTypes::parse(data) else {
        return;
    };
    for id in 0..(k.len() as u32).min(512) + 2 {
        let _ = k.size_of(id);
        let _ = k.describe(id);
        let _ = k.field(id, "pid");
        let names = k.field_names(id);
        let _ = closest("pdi", names.into_iter(), 3);
    }
    let _ = k.func_params("wake");
    let _ = k.record("task", false);
    let _ = k.named("pid_t");
});
