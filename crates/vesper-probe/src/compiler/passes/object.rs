//! Pass 6: programs to a BPF ELF object, with the manifest embedded in a
//! `.vesper.manifest` section so an object built elsewhere carries its own schema.

use crate::compiler::diag::Diagnostic;
use crate::compiler::passes::codegen::{DROPS_MAP, RING_MAP};
use crate::elf::{self, MapDef, ProgramCode, map_type};
use crate::manifest::{Attach, IntervalSpec, Manifest, MapSpec, Schema};

pub const MANIFEST_SECTION: &str = ".vesper.manifest";

/// A probe's ring buffer unless its script's config block says otherwise
/// (`config = { ring_kib = N }`): 64 KiB holds ~800 records of 72 bytes, plenty for
/// low-rate events such as signals and OOM kills (a burst test in the lab measures what a
/// small ring drops). The guest agent maps each ring, so its size is also the agent's.
pub const DEFAULT_RING_BYTES: u32 = 64 << 10;

#[allow(clippy::too_many_arguments)] // one pass, one call site: its inputs, named
pub fn object(
    name: &str,
    release: &str,
    ring_bytes: u32,
    programs: Vec<(ProgramCode, Attach)>,
    schemas: Vec<Schema>,
    script_maps: &[MapSpec],
    intervals: &[IntervalSpec],
    diags: &mut Vec<Diagnostic>,
) -> Option<(Vec<u8>, Manifest)> {
    let manifest = Manifest {
        name: name.to_string(),
        kernel_release: (!release.is_empty()).then(|| release.to_string()),
        attach: programs
            .iter()
            .map(|(code, a)| Attach {
                lines: (code.lines.iter())
                    .map(|(at, span)| [*at, span.start as u32, span.end as u32])
                    .collect(),
                ..a.clone()
            })
            .collect(),
        ring_map: RING_MAP.into(),
        drops_map: DROPS_MAP.into(),
        schemas,
        maps: script_maps.to_vec(),
        intervals: intervals.to_vec(),
    };
    let maps = map_defs(ring_bytes, script_maps);
    let code: Vec<ProgramCode> = programs.into_iter().map(|(c, _)| c).collect();
    let json = serde_json::to_vec(&manifest).unwrap_or_default();
    match elf::write_object(&code, &maps, "GPL", &[(MANIFEST_SECTION, json)]) {
        Ok(o) => Some((o, manifest)),
        Err(e) => {
            diags.push(Diagnostic::new(Default::default(), e.to_string()));
            None
        }
    }
}

/// The object's maps: the ring (`ring_bytes`, checked by the parser), the drop counter,
/// then the script's maps.
fn map_defs(ring_bytes: u32, script_maps: &[MapSpec]) -> Vec<MapDef> {
    let mut maps = vec![
        MapDef {
            name: RING_MAP.into(),
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: ring_bytes,
            flags: 0,
        },
        MapDef {
            name: DROPS_MAP.into(),
            map_type: map_type::ARRAY,
            key_size: 4,
            value_size: 8,
            max_entries: 1,
            flags: 0,
        },
    ];
    maps.extend(script_maps.iter().map(|m| MapDef {
        name: m.symbol.clone(),
        map_type: if m.value.is_aggregation() {
            map_type::PERCPU_HASH
        } else {
            map_type::HASH
        },
        key_size: m.key_size(),
        value_size: m.value.size(),
        max_entries: m.max_entries,
        flags: 0,
    }));
    maps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compiler::passes::parse::{PAGE_BYTES, ScriptConfig};

    fn config_of(src: &str) -> (ScriptConfig, Vec<Diagnostic>) {
        let mut diags = Vec::new();
        let toks = crate::compiler::passes::lex::lex(src, &mut diags);
        let (_, cfg) = crate::compiler::passes::parse::parse_with_config(&toks, &mut diags);
        (cfg, diags)
    }

    #[test]
    fn the_default_ring_is_one_the_kernel_takes() {
        let b = u64::from(DEFAULT_RING_BYTES);
        assert!(b.is_power_of_two() && b.is_multiple_of(PAGE_BYTES));
    }

    #[test]
    fn the_ring_map_has_the_size_the_script_asks_for() {
        const PROBE: &str = "tracepoint:signal:signal_generate { emit { s = args.sig } }";
        for (src, want) in [
            (PROBE.to_string(), None),
            (
                format!("config = {{ ring_kib = 256 }}\n{PROBE}"),
                Some(256 << 10),
            ),
            (
                format!("config = {{ ring_bytes = 8192; }};\n{PROBE}"),
                Some(8192),
            ),
        ] {
            let (cfg, diags) = config_of(&src);
            assert!(diags.is_empty(), "{src}: {diags:?}");
            assert_eq!(cfg.ring_bytes, want, "{src}");
            let ring = cfg.ring_bytes.unwrap_or(DEFAULT_RING_BYTES);
            let maps = map_defs(ring, &[]);
            assert_eq!(maps[0].name, RING_MAP);
            assert_eq!(maps[0].max_entries, want.unwrap_or(DEFAULT_RING_BYTES));
        }
    }

    #[test]
    fn a_bad_ring_size_is_placed_and_fixed() {
        let src =
            "config = { ring_kib = 100 }\ntracepoint:signal:signal_generate { emit { s = 1 } }";
        let (cfg, diags) = config_of(src);
        assert_eq!(cfg.ring_bytes, None);
        assert_eq!(diags.len(), 1, "{diags:?}");
        assert_eq!(
            &src[diags[0].span.start..diags[0].span.end],
            "ring_kib = 100"
        );
        assert!(diags[0].hints[0].contains("ring_kib = 64 or ring_kib = 128"));
        let (_, diags) =
            config_of("config = { ring_pages = 4 }\ntracepoint:a:b { emit { s = 1 } }");
        assert!(
            diags[0]
                .message
                .contains("unknown config setting `ring_pages`")
        );
        let (_, diags) = config_of("tracepoint:a:b { emit { s = 1 } }\nconfig = { ring_kib = 4 }");
        assert!(diags[0].message.contains("must come first"), "{diags:?}");
    }
}
