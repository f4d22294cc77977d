//! A minimal `.BTF` section describing BTF-style map definitions in `.maps`, the
//! form libbpf ≥ 1.0 (bpftool) requires and aya reads too:
//!
//! ```c
//! struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1);
//!          __type(key, unsigned int); __type(value, unsigned long long); } drops SEC(".maps");
//! ```
//!
//! `__uint(name, N)` is a member `int (*name)[N]`; `__type(name, T)` is `T *name`.
//! Layout follows the kernel's Documentation/bpf/btf.rst.

use crate::elf::MapDef;

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const VAR_GLOBAL_ALLOCATED: u32 = 1;
const INT_SIGNED: u32 = 1;

#[derive(Default)]
struct Builder {
    types: Vec<u8>,
    strings: Vec<u8>,
    next_id: u32,
}

impl Builder {
    fn new() -> Self {
        Self {
            types: Vec::new(),
            strings: vec![0],
            next_id: 1,
        }
    }
    fn str(&mut self, s: &str) -> u32 {
        let off = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        off
    }
    fn words(&mut self, ws: &[u32]) {
        for w in ws {
            self.types.extend_from_slice(&w.to_le_bytes());
        }
    }
    /// Appends a type header plus its extra words; returns the new type id.
    fn ty(&mut self, name: u32, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        self.words(&[name, (kind << 24) | vlen, size_or_type]);
        self.words(extra);
        self.next_id += 1;
        self.next_id - 1
    }
}

/// Size of one map's definition struct in `.maps`.
pub fn map_def_size(m: &MapDef) -> u32 {
    8 * if m.key_size > 0 { 4 } else { 2 }
}

/// The `.BTF` section for `maps`, laid out one after another in `.maps` in order.
pub fn maps_btf(maps: &[MapDef]) -> Vec<u8> {
    let mut b = Builder::new();
    let int_name = b.str("int");
    let int = b.ty(int_name, KIND_INT, 0, 4, &[(INT_SIGNED << 24) | 32]);
    let u32_name = b.str("unsigned int");
    let u32_t = b.ty(u32_name, KIND_INT, 0, 4, &[32]);
    let u64_name = b.str("unsigned long long");
    let u64_t = b.ty(u64_name, KIND_INT, 0, 8, &[64]);
    let scalar = |size: u32| if size == 8 { u64_t } else { u32_t };

    let names: Vec<u32> = [
        "type",
        "max_entries",
        "key",
        "value",
        "key_size",
        "value_size",
    ]
    .iter()
    .map(|n| b.str(n))
    .collect();
    let mut vars = Vec::new();
    let mut offset = 0;
    for m in maps {
        let mut members = Vec::new();
        for (i, v) in [m.map_type, m.max_entries].into_iter().enumerate() {
            let arr = b.ty(0, KIND_ARRAY, 0, 0, &[int, int, v]);
            let ptr = b.ty(0, KIND_PTR, 0, arr, &[]);
            members.push((names[i], ptr));
        }
        if matches!(m.key_size, 4 | 8) && matches!(m.value_size, 4 | 8) {
            let k = b.ty(0, KIND_PTR, 0, scalar(m.key_size), &[]);
            let v = b.ty(0, KIND_PTR, 0, scalar(m.value_size), &[]);
            members.push((names[2], k));
            members.push((names[3], v));
        } else if m.key_size > 0 {
            // Keys of several parts and two-word values have no scalar type: their sizes
            // only, as libbpf's __uint(key_size, N) writes them.
            for (i, v) in [(4, m.key_size), (5, m.value_size)] {
                let arr = b.ty(0, KIND_ARRAY, 0, 0, &[int, int, v]);
                let ptr = b.ty(0, KIND_PTR, 0, arr, &[]);
                members.push((names[i], ptr));
            }
        }
        let size = 8 * members.len() as u32;
        let extra: Vec<u32> = members
            .iter()
            .enumerate()
            .flat_map(|(i, (n, t))| [*n, *t, 64 * i as u32])
            .collect();
        let st = b.ty(0, KIND_STRUCT, members.len() as u32, size, &extra);
        let var_name = b.str(&m.name);
        let var = b.ty(var_name, KIND_VAR, 0, st, &[VAR_GLOBAL_ALLOCATED]);
        vars.push((var, offset, size));
        offset += size;
    }
    let sec_name = b.str(".maps");
    let extra: Vec<u32> = vars.iter().flat_map(|(v, o, s)| [*v, *o, *s]).collect();
    b.ty(sec_name, KIND_DATASEC, vars.len() as u32, offset, &extra);

    let mut out = Vec::with_capacity(24 + b.types.len() + b.strings.len());
    out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
    out.push(1); // version
    out.push(0); // flags
    out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
    out.extend_from_slice(&0u32.to_le_bytes()); // type_off
    out.extend_from_slice(&(b.types.len() as u32).to_le_bytes());
    out.extend_from_slice(&(b.types.len() as u32).to_le_bytes()); // str_off
    out.extend_from_slice(&(b.strings.len() as u32).to_le_bytes());
    out.extend_from_slice(&b.types);
    out.extend_from_slice(&b.strings);
    out
}
