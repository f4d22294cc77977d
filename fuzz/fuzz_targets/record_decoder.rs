//! Arbitrary bytes as a record from a guest, decoded with a manifest the host compiled
//! (one schema of every field kind, and a second one): must never panic, and every value
//! must come from inside the record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesper_probe::manifest::{FieldKind, FieldSpec, Manifest, Schema, Value};

fn manifest() -> Manifest {
    let kinds = [
        FieldKind::U8,
        FieldKind::U16,
        FieldKind::U32,
        FieldKind::U64,
        FieldKind::I8,
        FieldKind::I16,
        FieldKind::I32,
        FieldKind::I64,
        FieldKind::Signal,
        FieldKind::Str { len: 16 },
        FieldKind::Stack { depth: 4 },
    ];
    let mut offset = 12;
    let mut fields = vec![FieldSpec {
        name: "ts_ns".into(),
        offset: 0,
        kind: FieldKind::U64,
    }];
    for (i, kind) in kinds.into_iter().enumerate() {
        fields.push(FieldSpec {
            name: format!("f{i}"),
            offset,
            kind,
        });
        offset += kind.size();
    }
    let all = Schema {
        size: offset,
        fields,
    };
    let small = Schema {
        size: 16,
        fields: vec![FieldSpec {
            name: "s".into(),
            offset: 12,
            kind: FieldKind::Str { len: 4 },
        }],
    };
    Manifest {
        name: "fuzz".into(),
        kernel_release: None,
        attach: Vec::new(),
        ring_map: "ring".into(),
        drops_map: "drops".into(),
        schemas: vec![all, small],
    }
}

fuzz_target!(|data: &[u8]| {
    let m = manifest();
    if let Ok(fields) = m.decode(data) {
        for (_, v) in fields {
            if let Value::Str(s) = v {
                assert!(s.len() <= data.len() * 4, "a string longer than the record");
            }
        }
    }
});
