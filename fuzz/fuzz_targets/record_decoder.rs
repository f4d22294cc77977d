//! Arbitrary bytes as a record from a guest, decoded with a manifest the host compiled
//! (one schema of every field kind, and a second one): must never panic, and every value
//! must come from inside the record. The same bytes as a guest's map entries
//! (`MapEntries`), decoded with each kind of map the compiler makes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesper_probe::manifest::{
    FieldKind, FieldSpec, KeyPart, Manifest, MapSpec, MapValue, Schema, Value,
};
use vesper_proto::{Message, MessageKind};

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
        FieldKind::Bytes { len: 5 },
        FieldKind::Inet { len: 4 },
        FieldKind::Inet { len: 16 },
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
        maps: Vec::new(),
        intervals: Vec::new(),
    }
}

fn map_spec(pick: u8) -> MapSpec {
    let values = [
        MapValue::Int,
        MapValue::Count,
        MapValue::Min,
        MapValue::Avg,
        MapValue::Hist,
        MapValue::Lhist {
            min: -5,
            max: 100,
            step: 7,
        },
    ];
    MapSpec {
        name: "@m".into(),
        symbol: "map_0".into(),
        key: if pick & 0x80 != 0 {
            vec![KeyPart::Int, KeyPart::Str { len: 12 }]
        } else {
            Vec::new()
        },
        value: values[(pick & 0x7f) as usize % values.len()],
        max_entries: 64,
    }
}

fuzz_target!(|data: &[u8]| {
    if let [pick, rest @ ..] = data
        && let Ok(Message::MapEntries(e)) = Message::decode(MessageKind::MapEntries, rest)
        && let Ok(d) = vesper_probe::map_values::decode(
            &map_spec(*pick),
            e.cpus,
            e.key_size,
            e.value_size,
            e.total,
            &e.entries,
        )
    {
        assert!(d.entries.len() <= e.entries.len());
        let _ = d.to_text();
    }
    let m = manifest();
    if let Ok(fields) = m.decode(data) {
        for (_, v) in fields {
            if let Value::Str(s) = v {
                assert!(s.len() <= data.len() * 4, "a string longer than the record");
            }
        }
    }
});
