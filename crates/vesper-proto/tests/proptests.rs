//! Round trips for every message and the decoder's behaviour on hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use proptest::prelude::*;
use vesper_proto::*;

fn arb_string() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9:_ -]{0,24}"
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_string(), arb_string(), any::<u32>(), arb_string()).prop_map(|(a, k, c, b)| {
            Message::Hello(Hello {
                agent_version: a,
                kernel_release: k,
                capabilities: c,
                boot_id: b,
            })
        }),
        prop::collection::vec(arb_string(), 0..5)
            .prop_map(|events| Message::KernelInfoRequest { events }),
        (
            arb_string(),
            any::<bool>(),
            prop::collection::vec((arb_string(), prop::option::of(arb_string())), 0..4)
        )
            .prop_map(|(release, btf, f)| Message::KernelInfo(KernelInfo {
                release,
                btf,
                formats: f
                    .into_iter()
                    .map(|(event, format)| EventFormat { event, format })
                    .collect(),
            })),
        (
            any::<u32>(),
            arb_string(),
            prop::collection::vec(any::<u8>(), 0..256),
            arb_string(),
            arb_string()
        )
            .prop_map(
                |(probe_id, name, object, ring_map, drops_map)| Message::LoadProbe(LoadProbe {
                    probe_id,
                    name,
                    object,
                    ring_map,
                    drops_map,
                    attach: vec![AttachPoint {
                        program: "p".into(),
                        kind: AttachKind::Kprobe,
                        target: "f".into()
                    }],
                })
            ),
        (any::<u32>(), any::<u64>())
            .prop_map(|(probe_id, load_us)| Message::ProbeLoaded { probe_id, load_us }),
        any::<u32>().prop_map(|probe_id| Message::UnloadProbe { probe_id }),
        any::<u32>().prop_map(|probe_id| Message::ProbeUnloaded { probe_id }),
        Just(Message::ListProbes),
        prop::collection::vec((any::<u32>(), arb_string(), any::<u64>()), 0..4).prop_map(|v| {
            Message::ProbeList {
                probes: v
                    .into_iter()
                    .map(|(probe_id, name, n)| ProbeStat {
                        probe_id,
                        name,
                        records: n,
                        kernel_drops: n / 2,
                        agent_drops: 1,
                    })
                    .collect(),
            }
        }),
        (
            any::<u32>(),
            any::<u64>(),
            any::<u64>(),
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..20)
        )
            .prop_map(
                |(probe_id, first_seq, kernel_drops, records)| Message::Records(Records {
                    probe_id,
                    first_seq,
                    kernel_drops,
                    agent_drops: 0,
                    records
                })
            ),
        (any::<u64>(), any::<u32>())
            .prop_map(|(uptime_ms, probes)| Message::Heartbeat { uptime_ms, probes }),
        (any::<u32>(), any::<u16>(), arb_string()).prop_map(|(probe_id, code, message)| {
            Message::Error {
                probe_id,
                code,
                message,
            }
        }),
        (any::<bool>(), any::<u64>(), any::<u32>()).prop_map(|(btf, offset, max_len)| {
            Message::KernelFileRequest {
                file: if btf {
                    KernelFileKind::Btf
                } else {
                    KernelFileKind::Symbols
                },
                offset,
                max_len,
            }
        }),
        (
            any::<bool>(),
            arb_string(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..256)
        )
            .prop_map(|(btf, kernel_id, total, offset, eof, data)| {
                Message::KernelFile(KernelFilePiece {
                    file: if btf {
                        KernelFileKind::Btf
                    } else {
                        KernelFileKind::Symbols
                    },
                    kernel_id,
                    total,
                    offset,
                    eof,
                    data,
                })
            }),
        (any::<u32>(), arb_string(), any::<u32>(), any::<bool>()).prop_map(
            |(probe_id, map, max_bytes, clear)| Message::MapRequest {
                probe_id,
                map,
                max_bytes,
                clear,
            }
        ),
        (
            any::<u32>(),
            arb_string(),
            1u32..4,
            1u32..24,
            1u32..24,
            any::<u32>(),
            0usize..6
        )
            .prop_flat_map(|(probe_id, map, cpus, key_size, value_size, total, n)| {
                let len = (key_size + value_size * cpus) as usize;
                prop::collection::vec(prop::collection::vec(any::<u8>(), len), n).prop_map(
                    move |raw| {
                        Message::MapEntries(MapEntries {
                            probe_id,
                            map: map.clone(),
                            cpus,
                            key_size,
                            value_size,
                            total,
                            entries: raw
                                .into_iter()
                                .map(|mut e| {
                                    let v = e.split_off(key_size as usize);
                                    (e, v)
                                })
                                .collect(),
                        })
                    },
                )
            }),
    ]
}

proptest! {
    #[test]
    fn messages_round_trip_through_frames_in_any_chunking(
        msgs in prop::collection::vec(arb_message(), 1..8),
        chunk in 1usize..64,
    ) {
        let mut wire = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            wire.extend(encode_frame(m, i as u64));
        }
        let mut dec = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        let mut got = Vec::new();
        for c in wire.chunks(chunk) {
            for f in dec.decode_all(c).unwrap() {
                got.push(f.message().unwrap());
            }
        }
        prop_assert_eq!(got, msgs);
    }

    #[test]
    fn random_bytes_never_panic_and_stay_bounded(data in prop::collection::vec(any::<u8>(), 0..4096), limit in 0u32..2048) {
        let mut dec = FrameDecoder::new(limit);
        if let Ok(frames) = dec.decode_all(&data) {
            for f in frames {
                prop_assert!(f.payload.len() <= limit as usize);
                let _ = f.message();
            }
        }
    }

    #[test]
    fn random_payloads_never_panic(kind in 0u8..16, data in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(k) = MessageKind::try_from(kind) {
            let _ = Message::decode(k, &data);
        }
    }

    #[test]
    fn any_flipped_byte_is_detected(m in arb_message(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut wire = encode_frame(&m, 0);
        let i = pos.index(wire.len());
        wire[i] ^= 1 << bit;
        let mut dec = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
        // A flipped length may leave the frame incomplete (Ok(empty)); anything decoded must not be `m`.
        if let Ok(frames) = dec.decode_all(&wire) { prop_assert!(frames.is_empty(), "corruption at byte {} went unnoticed", i) }
    }
}

#[test]
fn lying_length_is_rejected_before_any_allocation() {
    let mut wire = encode_frame(&Message::ListProbes, 0);
    wire[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut dec = FrameDecoder::new(1024);
    assert_eq!(
        dec.decode_all(&wire),
        Err(DecodeError::TooLarge {
            len: u32::MAX,
            limit: 1024
        })
    );
}

#[test]
fn replayed_sequence_is_rejected() {
    let mut wire = encode_frame(&Message::ListProbes, 0);
    wire.extend(encode_frame(&Message::ListProbes, 0));
    let mut dec = FrameDecoder::new(1024);
    assert_eq!(
        dec.decode_all(&wire),
        Err(DecodeError::BadSequence {
            expected: 1,
            got: 0
        })
    );
}

#[test]
fn errors_are_sticky() {
    let mut dec = FrameDecoder::new(1024);
    assert!(dec.decode_all(b"GARBAGE GARBAGE GARBAGE GARBAGE").is_err());
    let good = encode_frame(&Message::ListProbes, 0);
    assert!(dec.decode_all(&good).is_err());
}

#[test]
fn record_count_larger_than_payload_is_rejected() {
    let mut w = Writer::new();
    w.u32(1).u64(0).u64(0).u64(0).u32(u32::MAX);
    let err = Message::decode(MessageKind::Records, &w.into_inner()).unwrap_err();
    assert!(matches!(err, DecodeError::Truncated { .. }));
}
