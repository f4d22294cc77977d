//! Property tests of the record decoder (the host's view of a guest's bytes): whatever the
//! guest sends, decoding never panics and never reads outside the record; what a probe
//! wrote comes back as written. The fuzz target `record_decoder` explores the same ground.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;
use vesper_probe::manifest::{FieldKind, FieldSpec, Schema, Value};

fn kind() -> impl Strategy<Value = FieldKind> {
    prop_oneof![
        Just(FieldKind::U8),
        Just(FieldKind::U16),
        Just(FieldKind::U32),
        Just(FieldKind::U64),
        Just(FieldKind::I8),
        Just(FieldKind::I16),
        Just(FieldKind::I32),
        Just(FieldKind::I64),
        Just(FieldKind::Signal),
        (1u32..32).prop_map(|len| FieldKind::Str { len }),
        (1u32..8).prop_map(|depth| FieldKind::Stack { depth }),
        (1u32..8).prop_map(|len| FieldKind::Bytes { len }),
        Just(FieldKind::Inet { len: 4 }),
        Just(FieldKind::Inet { len: 16 }),
    ]
}

/// A field's value and its bytes as a probe writes them.
fn encode(kind: FieldKind, raw: u64, text: &str) -> (Value, Vec<u8>) {
    let size = kind.size() as usize;
    match kind {
        FieldKind::U8 | FieldKind::U16 | FieldKind::U32 | FieldKind::U64 => {
            let v = if size == 8 {
                raw
            } else {
                raw & ((1u64 << (size * 8)) - 1)
            };
            (Value::UInt(v), v.to_le_bytes()[..size].to_vec())
        }
        FieldKind::I8 => (Value::Int(raw as u8 as i8 as i64), vec![raw as u8]),
        FieldKind::I16 => (
            Value::Int(raw as u16 as i16 as i64),
            (raw as u16).to_le_bytes().to_vec(),
        ),
        FieldKind::I32 | FieldKind::Signal => (
            Value::Int(raw as u32 as i32 as i64),
            (raw as u32).to_le_bytes().to_vec(),
        ),
        FieldKind::I64 => (Value::Int(raw as i64), raw.to_le_bytes().to_vec()),
        FieldKind::Str { len } => {
            let s: String = text.chars().take(len as usize).collect();
            let mut b = s.as_bytes().to_vec();
            b.resize(len as usize, 0);
            (Value::Str(s), b)
        }
        FieldKind::Bytes { len } => {
            let b: Vec<u8> = raw
                .to_le_bytes()
                .iter()
                .copied()
                .cycle()
                .take(len as usize)
                .collect();
            let text: Vec<String> = b.iter().map(|x| x.to_string()).collect();
            (Value::Str(format!("[{}]", text.join(","))), b)
        }
        FieldKind::Inet { len: 4 } => {
            let b = (raw as u32).to_le_bytes();
            (
                Value::Str(std::net::Ipv4Addr::from(b).to_string()),
                b.to_vec(),
            )
        }
        FieldKind::Inet { len } => {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&raw.to_le_bytes());
            b[15] = len as u8;
            (
                Value::Str(std::net::Ipv6Addr::from(b).to_string()),
                b.to_vec(),
            )
        }
        FieldKind::Stack { depth } => {
            // `raw % (depth + 1)` frames written, each a distinct address.
            let n = raw % (u64::from(depth) + 1);
            let frames: Vec<u64> = (0..n).map(|i| raw.wrapping_add(i)).collect();
            let mut b = (n * 8).to_le_bytes().to_vec();
            for i in 0..u64::from(depth) {
                b.extend(frames.get(i as usize).copied().unwrap_or(0).to_le_bytes());
            }
            (Value::Stack(frames), b)
        }
    }
}

proptest! {
    #[test]
    fn what_a_probe_wrote_decodes_as_written(
        fields in prop::collection::vec((kind(), any::<u64>(), "[a-z0-9]{0,31}"), 1..12),
        trailing in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut rec = vec![0u8; 12];
        let mut specs = Vec::new();
        let mut expect = Vec::new();
        for (i, (kind, raw, text)) in fields.iter().enumerate() {
            let (value, bytes) = encode(*kind, *raw, text);
            specs.push(FieldSpec { name: format!("f{i}"), offset: rec.len() as u32, kind: *kind });
            rec.extend_from_slice(&bytes);
            expect.push((format!("f{i}"), value));
        }
        let schema = Schema { size: rec.len() as u32, fields: specs };
        rec.extend_from_slice(&trailing);
        let got: Vec<(String, Value)> = schema
            .decode(&rec)
            .unwrap()
            .into_iter()
            .filter(|(name, _)| !name.ends_with("_name"))
            .collect();
        prop_assert_eq!(got, expect);
    }

    #[test]
    fn any_bytes_decode_or_are_refused_without_reading_outside(
        fields in prop::collection::vec((kind(), 0u32..80), 0..8),
        size in 0u32..96,
        rec in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let schema = Schema {
            size,
            fields: fields.iter().enumerate().map(|(i, (kind, offset))| FieldSpec {
                name: format!("f{i}"), offset: *offset, kind: *kind,
            }).collect(),
        };
        if let Ok(values) = schema.decode(&rec) {
            for (_, v) in values {
                if let Value::Str(s) = v {
                    // Lossy UTF-8 at most triples a byte.
                    prop_assert!(s.len() <= rec.len() * 3);
                }
            }
        }
    }
}
