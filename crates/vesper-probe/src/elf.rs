//! Writes a relocatable BPF ELF object (the format clang emits and loaders read).
//!
//! Layout: one executable section per program (named for its attach point, e.g.
//! `tracepoint/signal/signal_generate`) with a `.rel` section for its map references,
//! a `.maps` section of BTF-described map definitions with its `.BTF` (see [`crate::btf`]),
//! `license`, `.symtab` and one string table — what clang emits, so libbpf (bpftool)
//! and aya both load it.

use crate::insn::{Insn, MapRef};

const EM_BPF: u16 = 247;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_REL: u32 = 9;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const STB_GLOBAL: u8 = 1;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const R_BPF_64_64: u64 = 1;

/// BPF map types used by generated probes (include/uapi/linux/bpf.h).
pub mod map_type {
    pub const HASH: u32 = 1;
    pub const ARRAY: u32 = 2;
    pub const PERCPU_HASH: u32 = 5;
    pub const PERCPU_ARRAY: u32 = 6;
    pub const RINGBUF: u32 = 27;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramCode {
    /// Symbol name; the agent attaches by this name.
    pub name: String,
    /// Section name, e.g. `tracepoint/signal/signal_generate` or `kprobe/do_exit`.
    pub section: String,
    pub insns: Vec<Insn>,
    pub map_refs: Vec<MapRef>,
    /// (first instruction, source) of the code a script's statements and fields became;
    /// not written to the object (the manifest carries it).
    pub lines: Vec<(u32, crate::compiler::diag::Span)>,
}

/// Why an object could not be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("program {program} refers to map {map}, which the object does not define")]
    UnknownMap { program: String, map: String },
}

#[derive(Default)]
struct Strtab {
    data: Vec<u8>,
}

impl Strtab {
    fn add(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        let off = self.data.len() as u32;
        self.data.extend_from_slice(s.as_bytes());
        self.data.push(0);
        off
    }
}

struct Shdr {
    name: u32,
    kind: u32,
    flags: u64,
    data: Vec<u8>,
    link: u32,
    info: u32,
    align: u64,
    entsize: u64,
}

/// Builds the object's bytes. `extra`: further non-loaded sections (name, bytes), e.g.
/// the embedded manifest.
pub fn write_object(
    programs: &[ProgramCode],
    maps: &[MapDef],
    license: &str,
    extra: &[(&str, Vec<u8>)],
) -> Result<Vec<u8>, ElfError> {
    let mut strtab = Strtab { data: vec![0] };
    let mut sections: Vec<Shdr> = Vec::new();
    // Section indices: 0 null, 1 strtab, then programs (+rel), maps, license, symtab.
    let strtab_name = strtab.add(".strtab");
    let first_prog = 2usize;
    let maps_idx = first_prog + programs.len() * 2;
    let license_idx = maps_idx + 1;
    let symtab_idx = license_idx + 1;

    // Symbols: null, then programs, then maps (all global).
    let mut symbols: Vec<[u8; 24]> = vec![[0; 24]];
    let sym = |name: u32, kind: u8, shndx: u16, value: u64, size: u64| {
        let mut s = [0u8; 24];
        s[0..4].copy_from_slice(&name.to_le_bytes());
        s[4] = (STB_GLOBAL << 4) | kind;
        s[6..8].copy_from_slice(&shndx.to_le_bytes());
        s[8..16].copy_from_slice(&value.to_le_bytes());
        s[16..24].copy_from_slice(&size.to_le_bytes());
        s
    };
    for (i, p) in programs.iter().enumerate() {
        let n = strtab.add(&p.name);
        let size = (p.insns.len() * 8) as u64;
        symbols.push(sym(n, STT_FUNC, (first_prog + 2 * i) as u16, 0, size));
    }
    let map_sym_base = symbols.len();
    let mut map_off = 0u64;
    for m in maps {
        let n = strtab.add(&m.name);
        let size = u64::from(crate::btf::map_def_size(m));
        symbols.push(sym(n, STT_OBJECT, maps_idx as u16, map_off, size));
        map_off += size;
    }

    for p in programs {
        let name = strtab.add(&p.section);
        sections.push(Shdr {
            name,
            kind: SHT_PROGBITS,
            flags: SHF_ALLOC | SHF_EXECINSTR,
            data: crate::insn::to_bytes(&p.insns),
            link: 0,
            info: 0,
            align: 8,
            entsize: 0,
        });
        let mut rel = Vec::new();
        for r in &p.map_refs {
            let idx =
                maps.iter()
                    .position(|m| m.name == r.map)
                    .ok_or_else(|| ElfError::UnknownMap {
                        program: p.name.clone(),
                        map: r.map.clone(),
                    })?;
            let sym_idx = (map_sym_base + idx) as u64;
            rel.extend_from_slice(&((r.insn * 8) as u64).to_le_bytes());
            rel.extend_from_slice(&((sym_idx << 32) | R_BPF_64_64).to_le_bytes());
        }
        let rel_name = strtab.add(&format!(".rel{}", p.section));
        let target = (first_prog + sections.len() - 1) as u32;
        sections.push(Shdr {
            name: rel_name,
            kind: SHT_REL,
            flags: 0,
            data: rel,
            link: symtab_idx as u32,
            info: target,
            align: 8,
            entsize: 16,
        });
    }
    // BTF-style definitions carry their values in .BTF; the section itself is zeros.
    sections.push(Shdr {
        name: strtab.add(".maps"),
        kind: SHT_PROGBITS,
        flags: SHF_ALLOC | SHF_WRITE,
        data: vec![0; map_off as usize],
        link: 0,
        info: 0,
        align: 8,
        entsize: 0,
    });
    let mut lic = license.as_bytes().to_vec();
    lic.push(0);
    sections.push(Shdr {
        name: strtab.add("license"),
        kind: SHT_PROGBITS,
        flags: SHF_ALLOC | SHF_WRITE,
        data: lic,
        link: 0,
        info: 0,
        align: 1,
        entsize: 0,
    });
    let symtab_name = strtab.add(".symtab");
    sections.push(Shdr {
        name: symtab_name,
        kind: SHT_SYMTAB,
        flags: 0,
        data: symbols.concat(),
        link: 1,
        info: 1, // index of the first global symbol
        align: 8,
        entsize: 24,
    });
    let btf = crate::btf::maps_btf(maps);
    let extra_all = std::iter::once((".BTF", &btf)).chain(extra.iter().map(|(n, d)| (*n, d)));
    for (name, data) in extra_all {
        sections.push(Shdr {
            name: strtab.add(name),
            kind: SHT_PROGBITS,
            flags: 0,
            data: data.clone(),
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        });
    }
    sections.insert(
        0,
        Shdr {
            name: strtab_name,
            kind: SHT_STRTAB,
            flags: 0,
            data: strtab.data,
            link: 0,
            info: 0,
            align: 1,
            entsize: 0,
        },
    );

    // File: ELF header, section data, section header table.
    let mut out = vec![0u8; 64];
    let mut offsets = Vec::with_capacity(sections.len());
    for s in &sections {
        while !out.len().is_multiple_of(s.align.max(1) as usize) {
            out.push(0);
        }
        offsets.push(out.len() as u64);
        out.extend_from_slice(&s.data);
    }
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len() as u64;
    out.extend_from_slice(&[0u8; 64]); // null section header
    for (s, off) in sections.iter().zip(&offsets) {
        let mut h = Vec::with_capacity(64);
        h.extend_from_slice(&s.name.to_le_bytes());
        h.extend_from_slice(&s.kind.to_le_bytes());
        h.extend_from_slice(&s.flags.to_le_bytes());
        h.extend_from_slice(&0u64.to_le_bytes()); // addr
        h.extend_from_slice(&off.to_le_bytes());
        h.extend_from_slice(&(s.data.len() as u64).to_le_bytes());
        h.extend_from_slice(&s.link.to_le_bytes());
        h.extend_from_slice(&s.info.to_le_bytes());
        h.extend_from_slice(&s.align.to_le_bytes());
        h.extend_from_slice(&s.entsize.to_le_bytes());
        out.extend_from_slice(&h);
    }
    let shnum = (sections.len() + 1) as u16;
    let hdr = &mut out[..64];
    hdr[0..4].copy_from_slice(b"\x7fELF");
    hdr[4] = 2; // 64-bit
    hdr[5] = 1; // little endian
    hdr[6] = 1; // ELF version
    hdr[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
    hdr[18..20].copy_from_slice(&EM_BPF.to_le_bytes());
    hdr[20..24].copy_from_slice(&1u32.to_le_bytes());
    hdr[40..48].copy_from_slice(&shoff.to_le_bytes());
    hdr[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    hdr[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
    hdr[60..62].copy_from_slice(&shnum.to_le_bytes());
    hdr[62..64].copy_from_slice(&1u16.to_le_bytes()); // shstrndx
    Ok(out)
}

/// The bytes of the section called `name` in an ELF64 little-endian object, checked
/// against the object's bounds at every step (objects can come from anywhere).
pub fn section_data<'a>(obj: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let u16_at = |o: usize| {
        obj.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        obj.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let u64_at = |o: usize| {
        obj.get(o..o + 8).and_then(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            usize::try_from(u64::from_le_bytes(a)).ok()
        })
    };
    if obj.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(40)?;
    let shentsize = u16_at(58)?;
    let shnum = u16_at(60)?;
    let shstrndx = u16_at(62)?;
    if shentsize < 64 {
        return None;
    }
    let header = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    let sect = |i: usize| -> Option<(usize, &'a [u8])> {
        let h = header(i)?;
        let off = u64_at(h.checked_add(24)?)?;
        let size = u64_at(h.checked_add(32)?)?;
        Some((u32_at(h)?, obj.get(off..off.checked_add(size)?)?))
    };
    let (_, strtab) = sect(shstrndx)?;
    for i in 1..shnum {
        let (name_off, data) = sect(i)?;
        let rest = strtab.get(name_off..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        if &rest[..end] == name.as_bytes() {
            return Some(data);
        }
    }
    None
}
