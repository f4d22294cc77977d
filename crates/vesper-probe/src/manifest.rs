//! The manifest: what the host must know about a compiled probe to load it and to
//! decode its records. Records are always decoded with the manifest the *host*
//! compiled, never with anything a guest says.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachKind {
    Tracepoint,
    Kprobe,
    Kretprobe,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    pub program: String,
    pub kind: AttachKind,
    /// "category:name" for tracepoints, a function name for kprobes.
    pub target: String,
    /// Where the program's code comes from in the script: (first instruction, start and
    /// end byte of the source), in instruction order. Lets a verifier's refusal, which
    /// names an instruction, be shown at its source line.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<[u32; 3]>,
}

/// How a record field is stored and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum FieldKind {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    /// NUL-padded string of at most `len` bytes.
    Str {
        len: u32,
    },
    /// An i32 signal number; shown as the number and, in `<name>_name`, its name.
    Signal,
    /// A kernel stack: a u64 byte count (bpf_get_stack's result) and then `depth` return
    /// addresses, innermost first.
    Stack {
        depth: u32,
    },
    /// `len` raw bytes (a `u8 x[len]` array), shown as bpftrace shows them: `[10,0,0,1]`.
    Bytes {
        len: u32,
    },
    /// `ntop()`: an IPv4 (4 bytes) or IPv6 (16) address as it lies in memory (network
    /// order), shown as text.
    Inet {
        len: u32,
    },
}

impl FieldKind {
    pub fn size(self) -> u32 {
        match self {
            FieldKind::U8 | FieldKind::I8 => 1,
            FieldKind::U16 | FieldKind::I16 => 2,
            FieldKind::U32 | FieldKind::I32 | FieldKind::Signal => 4,
            FieldKind::U64 | FieldKind::I64 => 8,
            FieldKind::Str { len } | FieldKind::Bytes { len } | FieldKind::Inet { len } => len,
            FieldKind::Stack { depth } => 8 + 8 * depth,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    pub name: String,
    pub offset: u32,
    #[serde(flatten)]
    pub kind: FieldKind,
}

/// The layout of one record as the BPF program writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub size: u32,
    pub fields: Vec<FieldSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Kernel release the object was compiled against, if known.
    pub kernel_release: Option<String>,
    pub attach: Vec<Attach>,
    pub ring_map: String,
    pub drops_map: String,
    /// Record layouts; a record's u32 at offset 8 is its index here.
    pub schemas: Vec<Schema>,
    /// The script's maps (`@name[...]`), in the order they first appear.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub maps: Vec<MapSpec>,
    /// `interval` probes: what the host does with the maps, and how often.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<IntervalSpec>,
}

/// An `interval:s:N` probe, run by the host: every `every_ms`, the maps (symbols) in
/// `print` are read and stored as a record, and those in `clear` emptied (a map both
/// printed and cleared is read and emptied at once: nothing counted between is lost).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntervalSpec {
    pub every_ms: u64,
    pub print: Vec<String>,
    pub clear: Vec<String>,
}

/// One part of a map's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum KeyPart {
    /// A 64-bit integer.
    Int,
    /// A NUL-padded string of at most `len` bytes.
    Str { len: u32 },
}

impl KeyPart {
    /// Bytes it takes in the key (strings round up to 8).
    pub fn size(self) -> u32 {
        match self {
            KeyPart::Int => 8,
            KeyPart::Str { len } => len.div_ceil(8) * 8,
        }
    }
}

/// What a map's values are: integers the probe stores, or an aggregation kept in the
/// kernel (bpftrace's count(), sum(), ...), one value per CPU, merged on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MapValue {
    /// `@m[k] = expr`: an i64.
    #[default]
    Int,
    /// count(): a u64 per CPU.
    Count,
    /// sum(x): an i64 per CPU.
    Sum,
    /// min(x) / max(x): an i64 and a u64 "seen" flag per CPU.
    Min,
    Max,
    /// avg(x): an i64 sum and a u64 count per CPU.
    Avg,
    /// hist(x): a count per power-of-two bucket, the bucket being the key's last u64
    /// (0: negative, 1: zero, k + 2: [2^k, 2^(k+1))).
    Hist,
    /// lhist(x, min, max, step): a count per linear bucket, the key's last u64
    /// (0: below min, i + 1: [min + i*step, min + (i+1)*step), last: max and above).
    Lhist {
        min: i64,
        max: i64,
        step: i64,
    },
}

impl MapValue {
    /// An aggregation: per-CPU values, updated only by its function.
    pub fn is_aggregation(self) -> bool {
        self != MapValue::Int
    }
    /// The key ends with a bucket number.
    pub fn bucketed(self) -> bool {
        matches!(self, MapValue::Hist | MapValue::Lhist { .. })
    }
    /// Bytes of one value (per CPU for an aggregation).
    pub fn size(self) -> u32 {
        match self {
            MapValue::Min | MapValue::Max | MapValue::Avg => 16,
            _ => 8,
        }
    }
    /// bpftrace's name of the aggregation: `count`, `hist`, ...; `value` for stored integers.
    pub fn function(self) -> &'static str {
        match self {
            MapValue::Int => "value",
            MapValue::Count => "count",
            MapValue::Sum => "sum",
            MapValue::Min => "min",
            MapValue::Max => "max",
            MapValue::Avg => "avg",
            MapValue::Hist => "hist",
            MapValue::Lhist { .. } => "lhist",
        }
    }
}

/// A map of the script: the BPF hash map `symbol` in the object (a per-CPU hash for an
/// aggregation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapSpec {
    /// As written in the script: `@start`.
    pub name: String,
    pub symbol: String,
    /// The key's parts as the script writes them (a bucketed map adds its bucket).
    pub key: Vec<KeyPart>,
    #[serde(default)]
    pub value: MapValue,
    pub max_entries: u32,
}

impl MapSpec {
    /// Bytes of the script's key parts.
    pub fn user_key_size(&self) -> u32 {
        self.key.iter().map(|k| k.size()).sum()
    }
    /// Bytes of key: the parts, the bucket of a histogram, and at least 8 (a keyless
    /// map's key is a single 0).
    pub fn key_size(&self) -> u32 {
        (self.user_key_size() + if self.value.bucketed() { 8 } else { 0 }).max(8)
    }
}

impl Manifest {
    /// Decodes one record with the schema its header names.
    pub fn decode(&self, rec: &[u8]) -> Result<Vec<(String, Value)>, RecordError> {
        let idx = rec
            .get(8..12)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or(RecordError::TooShort {
                got: rec.len(),
                want: 12,
            })?;
        let schema = self
            .schemas
            .get(idx as usize)
            .ok_or(RecordError::UnknownSchema(idx))?;
        schema.decode(rec)
    }
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Value {
    Int(i64),
    UInt(u64),
    Str(String),
    /// Return addresses, innermost first (the host names them with the guest's symbols).
    Stack(Vec<u64>),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::UInt(v) => write!(f, "{v}"),
            Value::Str(s) => write!(f, "{s}"),
            Value::Stack(frames) => {
                let hex: Vec<String> = frames.iter().map(|a| format!("{a:#x}")).collect();
                write!(f, "{}", hex.join(" <- "))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record names schema {0}, which the probe does not have")]
    UnknownSchema(u32),
    #[error("record of {got} bytes is shorter than the schema's {want}")]
    TooShort { got: usize, want: u32 },
    #[error("field {field} at {offset}+{size} lies outside the {len}-byte record")]
    FieldOutOfBounds {
        field: String,
        offset: u32,
        size: u32,
        len: usize,
    },
}

impl Schema {
    /// Decodes one record. Never panics, whatever the bytes: a record shorter than
    /// the schema, or a schema field past the end, is an error.
    pub fn decode(&self, rec: &[u8]) -> Result<Vec<(String, Value)>, RecordError> {
        if rec.len() < self.size as usize {
            return Err(RecordError::TooShort {
                got: rec.len(),
                want: self.size,
            });
        }
        let mut out = Vec::with_capacity(self.fields.len() + 1);
        for f in &self.fields {
            let size = f.kind.size();
            let start = f.offset as usize;
            let bytes = start
                .checked_add(size as usize)
                .and_then(|end| rec.get(start..end))
                .ok_or_else(|| RecordError::FieldOutOfBounds {
                    field: f.name.clone(),
                    offset: f.offset,
                    size,
                    len: rec.len(),
                })?;
            let le = |n: usize| {
                let mut b = [0u8; 8];
                b[..n].copy_from_slice(&bytes[..n]);
                u64::from_le_bytes(b)
            };
            let value = match f.kind {
                FieldKind::U8 | FieldKind::U16 | FieldKind::U32 | FieldKind::U64 => {
                    Value::UInt(le(size as usize))
                }
                FieldKind::I8 => Value::Int(le(1) as u8 as i8 as i64),
                FieldKind::I16 => Value::Int(le(2) as u16 as i16 as i64),
                FieldKind::I32 => Value::Int(le(4) as u32 as i32 as i64),
                FieldKind::I64 => Value::Int(le(8) as i64),
                FieldKind::Str { .. } => Value::Str(c_string(bytes)),
                FieldKind::Bytes { .. } => {
                    let parts: Vec<String> = bytes.iter().map(|b| b.to_string()).collect();
                    Value::Str(format!("[{}]", parts.join(",")))
                }
                FieldKind::Inet { .. } => Value::Str(inet(bytes)),
                FieldKind::Stack { depth } => {
                    // The count is the guest's: a negative (an error) or oversized one is
                    // bounded by the field's own size.
                    let written = le(8) as i64;
                    let frames = (written.max(0) as u64 / 8).min(u64::from(depth)) as usize;
                    Value::Stack(
                        bytes[8..]
                            .chunks_exact(8)
                            .take(frames)
                            .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                            .collect(),
                    )
                }
                FieldKind::Signal => {
                    let sig = le(4) as u32 as i32;
                    out.push((f.name.clone(), Value::Int(sig.into())));
                    out.push((format!("{}_name", f.name), Value::Str(signal_name(sig))));
                    continue;
                }
            };
            out.push((f.name.clone(), value));
        }
        Ok(out)
    }
}

/// An address in network order as text: IPv4 from 4 bytes, IPv6 from 16.
fn inet(bytes: &[u8]) -> String {
    if let Ok(a) = <[u8; 4]>::try_from(bytes) {
        std::net::Ipv4Addr::from(a).to_string()
    } else if let Ok(a) = <[u8; 16]>::try_from(bytes) {
        std::net::Ipv6Addr::from(a).to_string()
    } else {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Bytes up to the first NUL, as text (invalid UTF-8 replaced, never trusted).
fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The conventional name of a Linux signal number.
pub fn signal_name(sig: i32) -> String {
    const NAMES: [&str; 32] = [
        "0",
        "SIGHUP",
        "SIGINT",
        "SIGQUIT",
        "SIGILL",
        "SIGTRAP",
        "SIGABRT",
        "SIGBUS",
        "SIGFPE",
        "SIGKILL",
        "SIGUSR1",
        "SIGSEGV",
        "SIGUSR2",
        "SIGPIPE",
        "SIGALRM",
        "SIGTERM",
        "SIGSTKFLT",
        "SIGCHLD",
        "SIGCONT",
        "SIGSTOP",
        "SIGTSTP",
        "SIGTTIN",
        "SIGTTOU",
        "SIGURG",
        "SIGXCPU",
        "SIGXFSZ",
        "SIGVTALRM",
        "SIGPROF",
        "SIGWINCH",
        "SIGIO",
        "SIGPWR",
        "SIGSYS",
    ];
    match sig {
        0..=31 => NAMES[sig as usize].to_string(),
        34..=64 => format!("SIGRTMIN+{}", sig - 34),
        _ => format!("SIG{sig}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        Schema {
            size: 24,
            fields: vec![
                FieldSpec {
                    name: "ts_ns".into(),
                    offset: 0,
                    kind: FieldKind::U64,
                },
                FieldSpec {
                    name: "sig".into(),
                    offset: 8,
                    kind: FieldKind::Signal,
                },
                FieldSpec {
                    name: "comm".into(),
                    offset: 12,
                    kind: FieldKind::Str { len: 8 },
                },
                FieldSpec {
                    name: "neg".into(),
                    offset: 20,
                    kind: FieldKind::I32,
                },
            ],
        }
    }

    #[test]
    fn decodes_fields_and_signal_names() {
        let mut rec = vec![0u8; 24];
        rec[0..8].copy_from_slice(&7u64.to_le_bytes());
        rec[8..12].copy_from_slice(&15i32.to_le_bytes());
        rec[12..16].copy_from_slice(b"pkil");
        rec[20..24].copy_from_slice(&(-3i32).to_le_bytes());
        let d = schema().decode(&rec).unwrap();
        assert_eq!(d[0], ("ts_ns".into(), Value::UInt(7)));
        assert_eq!(d[1], ("sig".into(), Value::Int(15)));
        assert_eq!(d[2], ("sig_name".into(), Value::Str("SIGTERM".into())));
        assert_eq!(d[3], ("comm".into(), Value::Str("pkil".into())));
        assert_eq!(d[4], ("neg".into(), Value::Int(-3)));
    }

    #[test]
    fn short_record_is_rejected() {
        assert_eq!(
            schema().decode(&[0; 5]),
            Err(RecordError::TooShort { got: 5, want: 24 })
        );
    }

    #[test]
    fn lying_schema_cannot_read_past_the_record() {
        let mut s = schema();
        s.fields.push(FieldSpec {
            name: "far".into(),
            offset: u32::MAX,
            kind: FieldKind::U64,
        });
        assert!(matches!(
            s.decode(&[0; 24]),
            Err(RecordError::FieldOutOfBounds { .. })
        ));
    }

    #[test]
    fn signal_names() {
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(34), "SIGRTMIN+0");
        assert_eq!(signal_name(-1), "SIG-1");
    }
}
