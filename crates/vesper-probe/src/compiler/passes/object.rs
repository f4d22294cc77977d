//! Pass 6: programs to a BPF ELF object, with the manifest embedded in a
//! `.vesper.manifest` section so an object built elsewhere carries its own schema.

use crate::DEFAULT_RING_BYTES;
use crate::compiler::diag::Diagnostic;
use crate::compiler::passes::codegen::{DROPS_MAP, RING_MAP};
use crate::elf::{self, MapDef, ProgramCode, map_type};
use crate::manifest::{Attach, IntervalSpec, Manifest, MapSpec, Schema};

pub const MANIFEST_SECTION: &str = ".vesper.manifest";

pub fn object(
    name: &str,
    release: &str,
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
    let mut maps = vec![
        MapDef {
            name: RING_MAP.into(),
            map_type: map_type::RINGBUF,
            key_size: 0,
            value_size: 0,
            max_entries: DEFAULT_RING_BYTES,
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
