//! A guest kernel's own type information: its BTF (`/sys/kernel/btf/vmlinux`), parsed on the
//! host so that struct layouts, field offsets and function prototypes come from the kernel that
//! will run the probe, with no headers or debug info in the guest.
//!
//! The blob comes from a guest and is hostile: every offset and count is checked against the
//! blob, type references are checked against the type count, and chains of typedefs and
//! qualifiers are followed a bounded number of steps, so a malformed or cyclic BTF gives an
//! error or "not found", never a panic or a loop. Layout: the kernel's Documentation/bpf/btf.rst.

use std::collections::HashMap;

/// The largest BTF accepted (a distribution kernel's is 5–6 MiB).
pub const MAX_BTF_BYTES: usize = 64 << 20;
/// How many typedef/qualifier links are followed before a chain counts as broken.
const MAX_CHAIN: usize = 32;
/// How deep anonymous struct/union members are searched for a field name.
const MAX_NESTING: usize = 8;

const MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

/// A BTF type id; 0 is `void`.
pub type TypeId = u32;

/// One type, as the compiler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    Void,
    Int {
        name: u32,
        size: u32,
        signed: bool,
        /// `char`-like (BTF_INT_CHAR) or `_Bool`.
        char_like: bool,
    },
    Ptr(TypeId),
    Array {
        elem: TypeId,
        len: u32,
    },
    /// A struct or union; its members are `members[first..first + count]`.
    Record {
        name: u32,
        union: bool,
        size: u32,
        first: u32,
        count: u32,
    },
    Enum {
        name: u32,
        size: u32,
    },
    Fwd {
        name: u32,
        union: bool,
    },
    Typedef {
        name: u32,
        target: TypeId,
    },
    /// const, volatile, restrict and type tags: the same layout as their target.
    Qualified(TypeId),
    Func {
        name: u32,
        proto: TypeId,
    },
    /// A prototype; its parameters are `params[first..first + count]`.
    FuncProto {
        ret: TypeId,
        first: u32,
        count: u32,
    },
    Float {
        name: u32,
        size: u32,
    },
    /// Variables, data sections, declaration tags: nothing a probe reads through.
    Other,
}

/// A struct or union member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawMember {
    name: u32,
    pub ty: TypeId,
    /// Offset from the start of the record, in bits.
    pub bit_offset: u32,
    /// Width for a bitfield, 0 otherwise.
    pub bit_size: u32,
}

/// A function parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RawParam {
    name: u32,
    ty: TypeId,
}

/// A field found by name, its offset counted from the outermost record (anonymous members
/// already flattened in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub ty: TypeId,
    pub bit_offset: u32,
    pub bit_size: u32,
}

/// A function's parameter, by name and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub ty: TypeId,
}

/// Why a BTF blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypesError {
    #[error("BTF is {len} bytes, more than the {max} accepted")]
    TooLarge { len: usize, max: usize },
    #[error("BTF is truncated: {what} needs bytes up to {need}, the blob has {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("not BTF: magic {0:#06x} (expected 0xeb9f, little-endian)")]
    BadMagic(u16),
    #[error("BTF version {0} is not supported (1 is)")]
    Version(u8),
    #[error("BTF type {id}: unknown kind {kind}")]
    UnknownKind { id: TypeId, kind: u32 },
    #[error("BTF type {id} refers to type {to}, past the last type {last}")]
    BadReference {
        id: TypeId,
        to: TypeId,
        last: TypeId,
    },
    #[error("BTF type {id}: name offset {off} is outside the string section ({len} bytes)")]
    BadName { id: TypeId, off: u32, len: usize },
}

/// A parsed kernel BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelTypes {
    /// The blob as the kernel wrote it, for kernel-info files and the host's cache.
    raw: Vec<u8>,
    strings: Vec<u8>,
    types: Vec<Type>,
    members: Vec<RawMember>,
    params: Vec<RawParam>,
    /// Named structs, unions, typedefs, enums: name → ids (a name can be both a struct and a
    /// typedef, and modules can repeat one).
    by_name: HashMap<String, Vec<TypeId>>,
    funcs: HashMap<String, TypeId>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn u32(&mut self, what: &'static str) -> Result<u32, TypesError> {
        let need = self.pos + 4;
        let b = self.buf.get(self.pos..need).ok_or(TypesError::Truncated {
            what,
            need,
            have: self.buf.len(),
        })?;
        self.pos = need;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

fn word(buf: &[u8], at: usize) -> Result<u32, TypesError> {
    Cursor { buf, pos: at }.u32("the header")
}

impl KernelTypes {
    /// Parses a kernel's BTF blob (little-endian, as on x86-64).
    pub fn parse(blob: &[u8]) -> Result<KernelTypes, TypesError> {
        if blob.len() > MAX_BTF_BYTES {
            return Err(TypesError::TooLarge {
                len: blob.len(),
                max: MAX_BTF_BYTES,
            });
        }
        if blob.len() < HEADER_MIN {
            return Err(TypesError::Truncated {
                what: "the header",
                need: HEADER_MIN,
                have: blob.len(),
            });
        }
        let magic = u16::from_le_bytes([blob[0], blob[1]]);
        if magic != MAGIC {
            return Err(TypesError::BadMagic(magic));
        }
        if blob[2] != 1 {
            return Err(TypesError::Version(blob[2]));
        }
        let hdr_len = word(blob, 4)? as usize;
        let section = |off_at: usize, what: &'static str| -> Result<&[u8], TypesError> {
            let off = word(blob, off_at)? as usize;
            let len = word(blob, off_at + 4)? as usize;
            let start = hdr_len.saturating_add(off);
            let end = start.saturating_add(len);
            blob.get(start..end).ok_or(TypesError::Truncated {
                what,
                need: end,
                have: blob.len(),
            })
        };
        let type_sec = section(8, "the type section")?;
        let strings = section(16, "the string section")?.to_vec();
        let mut t = KernelTypes {
            raw: blob.to_vec(),
            strings,
            types: vec![Type::Void],
            members: Vec::new(),
            params: Vec::new(),
            by_name: HashMap::new(),
            funcs: HashMap::new(),
        };
        t.read_types(type_sec)?;
        t.check_references()?;
        t.index();
        Ok(t)
    }

    fn read_types(&mut self, sec: &[u8]) -> Result<(), TypesError> {
        let mut c = Cursor { buf: sec, pos: 0 };
        while c.pos < sec.len() {
            let id = self.types.len() as TypeId;
            let name = c.u32("a type's name")?;
            let info = c.u32("a type's info")?;
            let size_or_type = c.u32("a type's size")?;
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let kind_flag = info >> 31 == 1;
            self.check_name(id, name)?;
            let ty = match kind {
                1 => {
                    let enc = c.u32("an int's encoding")?;
                    let encoding = enc >> 24;
                    Type::Int {
                        name,
                        size: size_or_type,
                        signed: encoding & 1 == 1,
                        char_like: encoding & 6 != 0,
                    }
                }
                2 => Type::Ptr(size_or_type),
                3 => {
                    let elem = c.u32("an array")?;
                    let _index = c.u32("an array")?;
                    let len = c.u32("an array")?;
                    Type::Array { elem, len }
                }
                4 | 5 => {
                    let first = self.members.len() as u32;
                    for _ in 0..vlen {
                        let m_name = c.u32("a member")?;
                        let ty = c.u32("a member")?;
                        let off = c.u32("a member")?;
                        self.check_name(id, m_name)?;
                        let (bit_offset, bit_size) = if kind_flag {
                            (off & 0x00ff_ffff, off >> 24)
                        } else {
                            (off, 0)
                        };
                        self.members.push(RawMember {
                            name: m_name,
                            ty,
                            bit_offset,
                            bit_size,
                        });
                    }
                    Type::Record {
                        name,
                        union: kind == 5,
                        size: size_or_type,
                        first,
                        count: vlen,
                    }
                }
                6 | 19 => {
                    let words = if kind == 6 { 2 } else { 3 };
                    for _ in 0..vlen * words {
                        c.u32("an enum value")?;
                    }
                    Type::Enum {
                        name,
                        size: size_or_type,
                    }
                }
                7 => Type::Fwd {
                    name,
                    union: kind_flag,
                },
                8 => Type::Typedef {
                    name,
                    target: size_or_type,
                },
                9 | 10 | 11 | 18 => Type::Qualified(size_or_type),
                12 => Type::Func {
                    name,
                    proto: size_or_type,
                },
                13 => {
                    let first = self.params.len() as u32;
                    for _ in 0..vlen {
                        let p_name = c.u32("a parameter")?;
                        let ty = c.u32("a parameter")?;
                        self.check_name(id, p_name)?;
                        self.params.push(RawParam { name: p_name, ty });
                    }
                    Type::FuncProto {
                        ret: size_or_type,
                        first,
                        count: vlen,
                    }
                }
                14 => {
                    c.u32("a variable")?;
                    Type::Other
                }
                15 => {
                    for _ in 0..vlen * 3 {
                        c.u32("a data section")?;
                    }
                    Type::Other
                }
                16 => Type::Float {
                    name,
                    size: size_or_type,
                },
                17 => {
                    c.u32("a declaration tag")?;
                    Type::Other
                }
                other => return Err(TypesError::UnknownKind { id, kind: other }),
            };
            self.types.push(ty);
        }
        Ok(())
    }

    fn check_name(&self, id: TypeId, off: u32) -> Result<(), TypesError> {
        if (off as usize) < self.strings.len() || off == 0 {
            Ok(())
        } else {
            Err(TypesError::BadName {
                id,
                off,
                len: self.strings.len(),
            })
        }
    }

    fn check_references(&self) -> Result<(), TypesError> {
        let last = (self.types.len() - 1) as TypeId;
        let check = |id: usize, to: TypeId| {
            if to > last {
                Err(TypesError::BadReference {
                    id: id as TypeId,
                    to,
                    last,
                })
            } else {
                Ok(())
            }
        };
        for (id, ty) in self.types.iter().enumerate() {
            match *ty {
                Type::Ptr(to) | Type::Qualified(to) => check(id, to)?,
                Type::Typedef { target, .. } => check(id, target)?,
                Type::Array { elem, .. } => check(id, elem)?,
                Type::Func { proto, .. } => check(id, proto)?,
                Type::Record { first, count, .. } => {
                    for m in &self.members[first as usize..(first + count) as usize] {
                        check(id, m.ty)?;
                    }
                }
                Type::FuncProto { ret, first, count } => {
                    check(id, ret)?;
                    for p in &self.params[first as usize..(first + count) as usize] {
                        check(id, p.ty)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn index(&mut self) {
        for (id, ty) in self.types.iter().enumerate() {
            let name = match *ty {
                Type::Record { name, .. }
                | Type::Typedef { name, .. }
                | Type::Enum { name, .. }
                | Type::Int { name, .. }
                | Type::Float { name, .. } => name,
                Type::Func { name, proto } => {
                    let n = self.str(name).to_string();
                    self.funcs.entry(n).or_insert(proto);
                    continue;
                }
                _ => continue,
            };
            if name != 0 {
                let n = self.str(name).to_string();
                self.by_name.entry(n).or_default().push(id as TypeId);
            }
        }
    }

    /// A name from the string section ("" when it is not valid UTF-8).
    fn str(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    /// The BTF as parsed (what `parse` was given).
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// How many types (void included).
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.len() <= 1
    }

    pub fn get(&self, id: TypeId) -> &Type {
        self.types.get(id as usize).unwrap_or(&Type::Void)
    }

    /// The type under typedefs and qualifiers (bounded; a broken chain ends at `void`).
    pub fn resolve(&self, mut id: TypeId) -> TypeId {
        for _ in 0..MAX_CHAIN {
            match *self.get(id) {
                Type::Typedef { target, .. } | Type::Qualified(target) => id = target,
                _ => return id,
            }
        }
        0
    }

    /// `struct NAME` (or `union NAME` with `union`), the definition rather than a forward
    /// declaration.
    pub fn record(&self, name: &str, union: bool) -> Option<TypeId> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| matches!(*self.get(id), Type::Record { union: u, .. } if u == union))
    }

    /// A named type as a cast would name it: a typedef or base type (`u64`, `pid_t`).
    pub fn named(&self, name: &str) -> Option<TypeId> {
        self.by_name.get(name)?.iter().copied().find(|&id| {
            matches!(
                *self.get(id),
                Type::Typedef { .. } | Type::Int { .. } | Type::Float { .. }
            )
        })
    }

    /// Size in bytes (pointers are 8; `None` for void, functions and unsized things).
    pub fn size_of(&self, id: TypeId) -> Option<u32> {
        self.size_at_depth(id, 0)
    }

    /// Arrays of arrays are followed a bounded number of steps: a hostile BTF can make an
    /// array its own element.
    fn size_at_depth(&self, id: TypeId, depth: usize) -> Option<u32> {
        if depth > MAX_CHAIN {
            return None;
        }
        match *self.get(self.resolve(id)) {
            Type::Int { size, .. }
            | Type::Record { size, .. }
            | Type::Enum { size, .. }
            | Type::Float { size, .. } => Some(size),
            Type::Ptr(_) => Some(8),
            Type::Array { elem, len } => self
                .size_at_depth(elem, depth + 1)
                .and_then(|s| s.checked_mul(len)),
            _ => None,
        }
    }

    /// The members of a record (empty for anything else).
    pub fn members(&self, id: TypeId) -> &[RawMember] {
        match *self.get(self.resolve(id)) {
            Type::Record { first, count, .. } => self
                .members
                .get(first as usize..(first + count) as usize)
                .unwrap_or_default(),
            _ => &[],
        }
    }

    pub fn member_name(&self, m: &RawMember) -> &str {
        self.str(m.name)
    }

    /// A field of record `id` by name, looking into anonymous structs and unions as C does.
    pub fn field(&self, id: TypeId, name: &str) -> Option<Field> {
        self.field_in(id, name, 0)
    }

    fn field_in(&self, id: TypeId, name: &str, depth: usize) -> Option<Field> {
        if depth > MAX_NESTING {
            return None;
        }
        for m in self.members(id) {
            if m.name != 0 {
                if self.str(m.name) == name {
                    return Some(Field {
                        ty: m.ty,
                        bit_offset: m.bit_offset,
                        bit_size: m.bit_size,
                    });
                }
            } else if let Some(f) = self.field_in(m.ty, name, depth + 1) {
                return Some(Field {
                    bit_offset: f.bit_offset.saturating_add(m.bit_offset),
                    ..f
                });
            }
        }
        None
    }

    /// Every field name reachable from record `id` (anonymous members flattened), for hints.
    pub fn field_names(&self, id: TypeId) -> Vec<&str> {
        let mut out = Vec::new();
        self.collect_names(id, 0, &mut out);
        out
    }

    fn collect_names<'a>(&'a self, id: TypeId, depth: usize, out: &mut Vec<&'a str>) {
        if depth > MAX_NESTING {
            return;
        }
        for m in self.members(id) {
            if m.name == 0 {
                self.collect_names(m.ty, depth + 1, out);
            } else {
                out.push(self.str(m.name));
            }
        }
    }

    /// A kernel function's parameters, from its BTF prototype.
    pub fn func_params(&self, name: &str) -> Option<Vec<Param>> {
        let proto = *self.funcs.get(name)?;
        match *self.get(proto) {
            Type::FuncProto { first, count, .. } => Some(
                self.params
                    .get(first as usize..(first + count) as usize)?
                    .iter()
                    .map(|p| Param {
                        name: self.str(p.name).to_string(),
                        ty: p.ty,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    /// Record names (struct or union), for "did you mean" hints.
    pub fn record_names(&self, union: bool) -> impl Iterator<Item = &str> {
        self.by_name.iter().filter_map(move |(n, ids)| {
            ids.iter()
                .any(|&id| matches!(*self.get(id), Type::Record { union: u, .. } if u == union))
                .then_some(n.as_str())
        })
    }

    /// The type as C would write it: `struct task_struct *`, `char[16]`, `pid_t`.
    pub fn describe(&self, id: TypeId) -> String {
        self.describe_depth(id, 0)
    }

    fn describe_depth(&self, id: TypeId, depth: usize) -> String {
        if depth > MAX_CHAIN {
            return "?".into();
        }
        let named = |prefix: &str, name: u32| {
            let n = self.str(name);
            if n.is_empty() {
                format!("{prefix} (anonymous)")
            } else {
                format!("{prefix} {n}")
            }
        };
        match *self.get(id) {
            Type::Void => "void".into(),
            Type::Int { name, .. } | Type::Float { name, .. } | Type::Typedef { name, .. } => {
                self.str(name).to_string()
            }
            Type::Ptr(to) => format!("{} *", self.describe_depth(to, depth + 1)),
            Type::Array { elem, len } => {
                format!("{}[{len}]", self.describe_depth(elem, depth + 1))
            }
            Type::Record { name, union, .. } | Type::Fwd { name, union } => {
                named(if union { "union" } else { "struct" }, name)
            }
            Type::Enum { name, .. } => named("enum", name),
            Type::Qualified(to) => self.describe_depth(to, depth + 1),
            Type::Func { name, .. } => format!("function {}", self.str(name)),
            Type::FuncProto { .. } => "function".into(),
            Type::Other => "?".into(),
        }
    }
}

/// The candidates closest to `wanted` (edit distance ≤ a third of its length, at most
/// `max`), best first: for "unknown member `pdi`; did you mean `pid`?".
pub fn closest<'a>(
    wanted: &str,
    candidates: impl Iterator<Item = &'a str>,
    max: usize,
) -> Vec<&'a str> {
    let limit = (wanted.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, &str)> = candidates
        .filter_map(|c| {
            let d = edit_distance(wanted, c);
            (d <= limit || c.contains(wanted) && !wanted.is_empty()).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(max).map(|(_, c)| c).collect()
}

/// Edit distance counting a swap of two neighbours as one edit (`pdi` is one from `pid`).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let w = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * w];
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            d[i * w + j] = if i == 0 || j == 0 {
                i + j
            } else {
                let mut best = (d[(i - 1) * w + j - 1] + usize::from(a[i - 1] != b[j - 1]))
                    .min(d[(i - 1) * w + j] + 1)
                    .min(d[i * w + j - 1] + 1);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[(i - 2) * w + j - 2] + 1);
                }
                best
            };
        }
    }
    d[a.len() * w + b.len()]
}

/// `KernelInfo.types` in JSON: the raw BTF in base64 (a kernel-info file carries it for
/// offline builds), parsed and checked again when read.
pub mod serde_base64 {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    use super::KernelTypes;

    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn serialize<S: Serializer>(t: &Option<Arc<KernelTypes>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&encode(t.raw())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Arc<KernelTypes>>, D::Error> {
        let Some(text) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let blob = decode(&text)
            .ok_or_else(|| serde::de::Error::custom("types: not base64-encoded BTF"))?;
        KernelTypes::parse(&blob)
            .map(|t| Some(Arc::new(t)))
            .map_err(|e| serde::de::Error::custom(format!("types: {e}")))
    }

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }

    pub fn decode(text: &str) -> Option<Vec<u8>> {
        // A table, not a search: a kernel's BTF is 7 MiB of base64.
        let mut value = [u8::MAX; 256];
        for (i, &a) in ALPHABET.iter().enumerate() {
            value[a as usize] = i as u8;
        }
        let text = text.trim_end_matches('=').as_bytes();
        let mut out = Vec::with_capacity(text.len() * 3 / 4);
        let (mut acc, mut bits) = (0u32, 0u32);
        for &c in text {
            let v = match value[c as usize] {
                u8::MAX => return None,
                v => u32::from(v),
            };
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests;
