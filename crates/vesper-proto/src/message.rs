//! Typed messages and their payload encodings.
//!
//! Direction: H→A host to agent, A→H agent to host.
//!
//! | kind | message            | dir | payload |
//! |------|--------------------|-----|---------|
//! | 1    | Hello              | A→H | agent_version str, kernel_release str, capabilities u32, boot_id str |
//! | 2    | KernelInfoRequest  | H→A | count u32, event str × count ("category:name") |
//! | 3    | KernelInfo         | A→H | release str, btf u8, count u32, (event str, found u8, format str) × count |
//! | 4    | LoadProbe          | H→A | probe_id u32, name str, object bytes, ring_map str, drops_map str, count u32, (program str, kind u8, target str) × count |
//! | 5    | ProbeLoaded        | A→H | probe_id u32, load_us u64 |
//! | 6    | UnloadProbe        | H→A | probe_id u32 |
//! | 7    | ProbeUnloaded      | A→H | probe_id u32 |
//! | 8    | ListProbes         | H→A | (empty) |
//! | 9    | ProbeList          | A→H | count u32, (probe_id u32, name str, records u64, kernel_drops u64, agent_drops u64) × count |
//! | 10   | Records            | A→H | probe_id u32, first_seq u64, kernel_drops u64, agent_drops u64, count u32, (len u16, bytes) × count |
//! | 11   | Heartbeat          | both| uptime_ms u64, probes u32 |
//! | 12   | Error              | both| probe_id u32 (0: none), code u16, message str |
//! | 13   | KernelFileRequest  | H→A | file u8 (1 BTF, 2 symbols), offset u64, max_len u32 |
//! | 14   | KernelFile         | A→H | file u8, kernel_id str, total u64 (0: not known), offset u64, eof u8, data bytes |
//! | 15   | MapRequest         | H→A | probe_id u32, map str, max_bytes u32, clear u8 |
//! | 16   | MapEntries         | A→H | probe_id u32, map str, cpus u32, key_size u32, value_size u32, total u32, count u32, (key, value × cpus) × count |
//!
//! `Records` carries per-probe sequence numbers: record *i* of the batch has
//! `first_seq + i`. `kernel_drops` counts records the BPF program could not reserve
//! ring-buffer space for; `agent_drops` counts records the agent read but could not
//! send. Both are cumulative since the probe was loaded, so the host can prove
//! `produced == received + kernel_drops + agent_drops` or say exactly what is missing.
//!
//! `KernelFileRequest`/`KernelFile` move the guest kernel's BTF and symbol table to the host
//! in pieces, one request per piece, so records keep flowing between them. `kernel_id` (the
//! kernel's GNU build id, or its release and version) lets the host answer from its cache
//! after the first piece; `max_len` 0 asks for the id and size only. Only an agent that
//! announces [`caps::KERNEL_FILES`] is asked.
//!
//! `MapRequest`/`MapEntries` read one of a probe's BPF maps (its `@name[...]` maps and
//! aggregations): every entry the map holds, keys and values as the kernel stores them;
//! a per-CPU map has `cpus` values per entry (each `value_size` bytes, rounded up to 8),
//! merged by the host. Entries beyond `max_bytes` are left out (`total` says how many
//! there were). With `clear`, each entry sent is deleted from the map. Only an agent that
//! announces [`caps::MAPS`] is asked.

use crate::codec::{Reader, Writer};
use crate::frame::DecodeError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageKind {
    Hello = 1,
    KernelInfoRequest = 2,
    KernelInfo = 3,
    LoadProbe = 4,
    ProbeLoaded = 5,
    UnloadProbe = 6,
    ProbeUnloaded = 7,
    ListProbes = 8,
    ProbeList = 9,
    Records = 10,
    Heartbeat = 11,
    Error = 12,
    KernelFileRequest = 13,
    KernelFile = 14,
    MapRequest = 15,
    MapEntries = 16,
}

impl TryFrom<u8> for MessageKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        use MessageKind::*;
        Ok(match v {
            1 => Hello,
            2 => KernelInfoRequest,
            3 => KernelInfo,
            4 => LoadProbe,
            5 => ProbeLoaded,
            6 => UnloadProbe,
            7 => ProbeUnloaded,
            8 => ListProbes,
            9 => ProbeList,
            10 => Records,
            11 => Heartbeat,
            12 => Error,
            13 => KernelFileRequest,
            14 => KernelFile,
            15 => MapRequest,
            16 => MapEntries,
            other => return Err(DecodeError::UnknownKind(other)),
        })
    }
}

/// Capability bits an agent announces in [`Hello`].
pub mod caps {
    pub const RINGBUF: u32 = 1 << 0;
    pub const TRACEPOINT: u32 = 1 << 1;
    pub const KPROBE: u32 = 1 << 2;
    pub const BTF: u32 = 1 << 3;
    /// Answers [`super::Message::KernelFileRequest`].
    pub const KERNEL_FILES: u32 = 1 << 4;
    /// Answers [`super::Message::MapRequest`].
    pub const MAPS: u32 = 1 << 5;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub agent_version: String,
    pub kernel_release: String,
    pub capabilities: u32,
    /// Changes on every guest boot: lets the host tell a reboot from a reconnect.
    pub boot_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventFormat {
    /// "category:name".
    pub event: String,
    /// The tracefs `format` file's text, or `None` if the event does not exist.
    pub format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelInfo {
    pub release: String,
    pub btf: bool,
    pub formats: Vec<EventFormat>,
}

/// Which of the guest kernel's files a [`Message::KernelFileRequest`] is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum KernelFileKind {
    /// `/sys/kernel/btf/vmlinux`.
    Btf = 1,
    /// The text symbols of `/proc/kallsyms` ("address type name [module]" lines).
    Symbols = 2,
}

impl TryFrom<u8> for KernelFileKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Btf),
            2 => Ok(Self::Symbols),
            other => Err(DecodeError::BadValue {
                field: "kernel file",
                value: other.into(),
            }),
        }
    }
}

/// One piece of a guest kernel file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFilePiece {
    pub file: KernelFileKind,
    pub kernel_id: String,
    /// The file's size, or 0 when the agent cannot know it before the end (symbols).
    pub total: u64,
    pub offset: u64,
    /// No more data after this piece.
    pub eof: bool,
    pub data: Vec<u8>,
}

/// The entries of one BPF map, as the agent read them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntries {
    pub probe_id: u32,
    pub map: String,
    /// Values per entry: 1, or the guest's possible CPUs for a per-CPU map.
    pub cpus: u32,
    pub key_size: u32,
    /// Bytes of one value, rounded up to 8 when `cpus` > 1 (the kernel's per-CPU layout).
    pub value_size: u32,
    /// Entries the map held when read (more than `entries` when some did not fit).
    pub total: u32,
    /// (key, values) pairs: `key_size` and `cpus × value_size` bytes.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
}

impl MapEntries {
    /// Bytes one entry takes on the wire, if the sizes are sane (None when they overflow).
    pub fn entry_len(key_size: u32, value_size: u32, cpus: u32) -> Option<usize> {
        (value_size as usize)
            .checked_mul(cpus as usize)?
            .checked_add(key_size as usize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum AttachKind {
    Tracepoint = 1,
    Kprobe = 2,
    Kretprobe = 3,
}

impl TryFrom<u8> for AttachKind {
    type Error = DecodeError;
    fn try_from(v: u8) -> Result<Self, DecodeError> {
        match v {
            1 => Ok(Self::Tracepoint),
            2 => Ok(Self::Kprobe),
            3 => Ok(Self::Kretprobe),
            other => Err(DecodeError::BadValue {
                field: "attach kind",
                value: other.into(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachPoint {
    /// Program (function symbol) name in the object.
    pub program: String,
    pub kind: AttachKind,
    /// "category:name" for tracepoints, the function name for kprobes.
    pub target: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProbe {
    pub probe_id: u32,
    pub name: String,
    /// A BPF ELF object.
    pub object: Vec<u8>,
    /// The BPF_MAP_TYPE_RINGBUF map the programs write records to.
    pub ring_map: String,
    /// A one-entry u64 array the programs count failed reservations in.
    pub drops_map: String,
    pub attach: Vec<AttachPoint>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeStat {
    pub probe_id: u32,
    pub name: String,
    pub records: u64,
    pub kernel_drops: u64,
    pub agent_drops: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Records {
    pub probe_id: u32,
    pub first_seq: u64,
    pub kernel_drops: u64,
    pub agent_drops: u64,
    pub records: Vec<Vec<u8>>,
}

impl Records {
    /// Encoded size of a batch holding `records` of the given total byte count.
    pub fn encoded_len(count: usize, bytes: usize) -> usize {
        4 + 8 + 8 + 8 + 4 + 2 * count + bytes
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    KernelInfoRequest {
        events: Vec<String>,
    },
    KernelInfo(KernelInfo),
    LoadProbe(LoadProbe),
    ProbeLoaded {
        probe_id: u32,
        load_us: u64,
    },
    UnloadProbe {
        probe_id: u32,
    },
    ProbeUnloaded {
        probe_id: u32,
    },
    ListProbes,
    ProbeList {
        probes: Vec<ProbeStat>,
    },
    Records(Records),
    Heartbeat {
        uptime_ms: u64,
        probes: u32,
    },
    Error {
        probe_id: u32,
        code: u16,
        message: String,
    },
    KernelFileRequest {
        file: KernelFileKind,
        offset: u64,
        max_len: u32,
    },
    KernelFile(KernelFilePiece),
    MapRequest {
        probe_id: u32,
        map: String,
        max_bytes: u32,
        clear: bool,
    },
    MapEntries(MapEntries),
}

/// Error codes carried by [`Message::Error`].
pub mod error_code {
    pub const LOAD_FAILED: u16 = 1;
    pub const ATTACH_FAILED: u16 = 2;
    pub const UNKNOWN_PROBE: u16 = 3;
    pub const BAD_REQUEST: u16 = 4;
    pub const INTERNAL: u16 = 5;
    /// A kernel file (BTF, symbols) could not be read or was asked for out of order.
    pub const KERNEL_FILE: u16 = 6;
    /// A map could not be read (no such probe or map, or the kernel refused).
    pub const MAP_READ: u16 = 7;
}

/// Longest record the wire can carry (u16 length).
pub const MAX_RECORD_LEN: usize = u16::MAX as usize;

impl Message {
    pub fn kind(&self) -> MessageKind {
        match self {
            Message::Hello(_) => MessageKind::Hello,
            Message::KernelInfoRequest { .. } => MessageKind::KernelInfoRequest,
            Message::KernelInfo(_) => MessageKind::KernelInfo,
            Message::LoadProbe(_) => MessageKind::LoadProbe,
            Message::ProbeLoaded { .. } => MessageKind::ProbeLoaded,
            Message::UnloadProbe { .. } => MessageKind::UnloadProbe,
            Message::ProbeUnloaded { .. } => MessageKind::ProbeUnloaded,
            Message::ListProbes => MessageKind::ListProbes,
            Message::ProbeList { .. } => MessageKind::ProbeList,
            Message::Records(_) => MessageKind::Records,
            Message::Heartbeat { .. } => MessageKind::Heartbeat,
            Message::Error { .. } => MessageKind::Error,
            Message::KernelFileRequest { .. } => MessageKind::KernelFileRequest,
            Message::KernelFile(_) => MessageKind::KernelFile,
            Message::MapRequest { .. } => MessageKind::MapRequest,
            Message::MapEntries(_) => MessageKind::MapEntries,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        match self {
            Message::Hello(h) => {
                w.str(&h.agent_version)
                    .str(&h.kernel_release)
                    .u32(h.capabilities)
                    .str(&h.boot_id);
            }
            Message::KernelInfoRequest { events } => {
                w.u32(events.len() as u32);
                for e in events {
                    w.str(e);
                }
            }
            Message::KernelInfo(k) => {
                w.str(&k.release)
                    .u8(k.btf as u8)
                    .u32(k.formats.len() as u32);
                for f in &k.formats {
                    w.str(&f.event)
                        .u8(f.format.is_some() as u8)
                        .str(f.format.as_deref().unwrap_or(""));
                }
            }
            Message::LoadProbe(p) => {
                w.u32(p.probe_id)
                    .str(&p.name)
                    .bytes(&p.object)
                    .str(&p.ring_map)
                    .str(&p.drops_map);
                w.u32(p.attach.len() as u32);
                for a in &p.attach {
                    w.str(&a.program).u8(a.kind as u8).str(&a.target);
                }
            }
            Message::ProbeLoaded { probe_id, load_us } => {
                w.u32(*probe_id).u64(*load_us);
            }
            Message::UnloadProbe { probe_id } | Message::ProbeUnloaded { probe_id } => {
                w.u32(*probe_id);
            }
            Message::ListProbes => {}
            Message::ProbeList { probes } => {
                w.u32(probes.len() as u32);
                for p in probes {
                    w.u32(p.probe_id)
                        .str(&p.name)
                        .u64(p.records)
                        .u64(p.kernel_drops)
                        .u64(p.agent_drops);
                }
            }
            Message::Records(r) => {
                w.u32(r.probe_id)
                    .u64(r.first_seq)
                    .u64(r.kernel_drops)
                    .u64(r.agent_drops);
                w.u32(r.records.len() as u32);
                for rec in &r.records {
                    let len = rec.len().min(MAX_RECORD_LEN);
                    w.u16(len as u16).raw(&rec[..len]);
                }
            }
            Message::Heartbeat { uptime_ms, probes } => {
                w.u64(*uptime_ms).u32(*probes);
            }
            Message::Error {
                probe_id,
                code,
                message,
            } => {
                w.u32(*probe_id).u16(*code).str(message);
            }
            Message::KernelFileRequest {
                file,
                offset,
                max_len,
            } => {
                w.u8(*file as u8).u64(*offset).u32(*max_len);
            }
            Message::KernelFile(p) => {
                w.u8(p.file as u8)
                    .str(&p.kernel_id)
                    .u64(p.total)
                    .u64(p.offset)
                    .u8(p.eof as u8)
                    .bytes(&p.data);
            }
            Message::MapRequest {
                probe_id,
                map,
                max_bytes,
                clear,
            } => {
                w.u32(*probe_id).str(map).u32(*max_bytes).u8(*clear as u8);
            }
            Message::MapEntries(m) => {
                w.u32(m.probe_id)
                    .str(&m.map)
                    .u32(m.cpus)
                    .u32(m.key_size)
                    .u32(m.value_size)
                    .u32(m.total)
                    .u32(m.entries.len() as u32);
                // Entries of the wrong size are a caller bug; they are cut or padded so the
                // frame stays decodable.
                let vlen = m.value_size as usize * m.cpus as usize;
                for (k, v) in &m.entries {
                    let mut k = k.clone();
                    k.resize(m.key_size as usize, 0);
                    let mut v = v.clone();
                    v.resize(vlen, 0);
                    w.raw(&k).raw(&v);
                }
            }
        }
        w.into_inner()
    }

    pub fn decode(kind: MessageKind, payload: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(payload);
        let msg = match kind {
            MessageKind::Hello => Message::Hello(Hello {
                agent_version: r.string()?,
                kernel_release: r.string()?,
                capabilities: r.u32()?,
                boot_id: r.string()?,
            }),
            MessageKind::KernelInfoRequest => {
                let n = r.count(4)?;
                let mut events = Vec::with_capacity(n);
                for _ in 0..n {
                    events.push(r.string()?);
                }
                Message::KernelInfoRequest { events }
            }
            MessageKind::KernelInfo => {
                let release = r.string()?;
                let btf = r.u8()? != 0;
                let n = r.count(9)?;
                let mut formats = Vec::with_capacity(n);
                for _ in 0..n {
                    let event = r.string()?;
                    let found = r.u8()? != 0;
                    let text = r.string()?;
                    formats.push(EventFormat {
                        event,
                        format: found.then_some(text),
                    });
                }
                Message::KernelInfo(KernelInfo {
                    release,
                    btf,
                    formats,
                })
            }
            MessageKind::LoadProbe => {
                let probe_id = r.u32()?;
                let name = r.string()?;
                let object = r.bytes()?.to_vec();
                let ring_map = r.string()?;
                let drops_map = r.string()?;
                let n = r.count(9)?;
                let mut attach = Vec::with_capacity(n);
                for _ in 0..n {
                    let program = r.string()?;
                    let kind = AttachKind::try_from(r.u8()?)?;
                    let target = r.string()?;
                    attach.push(AttachPoint {
                        program,
                        kind,
                        target,
                    });
                }
                Message::LoadProbe(LoadProbe {
                    probe_id,
                    name,
                    object,
                    ring_map,
                    drops_map,
                    attach,
                })
            }
            MessageKind::ProbeLoaded => Message::ProbeLoaded {
                probe_id: r.u32()?,
                load_us: r.u64()?,
            },
            MessageKind::UnloadProbe => Message::UnloadProbe { probe_id: r.u32()? },
            MessageKind::ProbeUnloaded => Message::ProbeUnloaded { probe_id: r.u32()? },
            MessageKind::ListProbes => Message::ListProbes,
            MessageKind::ProbeList => {
                let n = r.count(32)?;
                let mut probes = Vec::with_capacity(n);
                for _ in 0..n {
                    probes.push(ProbeStat {
                        probe_id: r.u32()?,
                        name: r.string()?,
                        records: r.u64()?,
                        kernel_drops: r.u64()?,
                        agent_drops: r.u64()?,
                    });
                }
                Message::ProbeList { probes }
            }
            MessageKind::Records => {
                let probe_id = r.u32()?;
                let first_seq = r.u64()?;
                let kernel_drops = r.u64()?;
                let agent_drops = r.u64()?;
                let n = r.count(2)?;
                let mut records = Vec::with_capacity(n);
                for _ in 0..n {
                    let len = r.u16()? as usize;
                    records.push(r.raw(len)?.to_vec());
                }
                Message::Records(Records {
                    probe_id,
                    first_seq,
                    kernel_drops,
                    agent_drops,
                    records,
                })
            }
            MessageKind::Heartbeat => Message::Heartbeat {
                uptime_ms: r.u64()?,
                probes: r.u32()?,
            },
            MessageKind::Error => Message::Error {
                probe_id: r.u32()?,
                code: r.u16()?,
                message: r.string()?,
            },
            MessageKind::KernelFileRequest => Message::KernelFileRequest {
                file: KernelFileKind::try_from(r.u8()?)?,
                offset: r.u64()?,
                max_len: r.u32()?,
            },
            MessageKind::KernelFile => Message::KernelFile(KernelFilePiece {
                file: KernelFileKind::try_from(r.u8()?)?,
                kernel_id: r.string()?,
                total: r.u64()?,
                offset: r.u64()?,
                eof: r.u8()? != 0,
                data: r.bytes()?.to_vec(),
            }),
            MessageKind::MapRequest => Message::MapRequest {
                probe_id: r.u32()?,
                map: r.string()?,
                max_bytes: r.u32()?,
                clear: r.u8()? != 0,
            },
            MessageKind::MapEntries => {
                let probe_id = r.u32()?;
                let map = r.string()?;
                let cpus = r.u32()?;
                let key_size = r.u32()?;
                let value_size = r.u32()?;
                let total = r.u32()?;
                let len = MapEntries::entry_len(key_size, value_size, cpus)
                    .filter(|&l| l > 0 && cpus > 0)
                    .ok_or(DecodeError::BadValue {
                        field: "map entry size",
                        value: u64::from(key_size).max(u64::from(value_size)),
                    })?;
                let n = r.count(len)?;
                let mut entries = Vec::with_capacity(n);
                for _ in 0..n {
                    let k = r.raw(key_size as usize)?.to_vec();
                    let v = r.raw(len - key_size as usize)?.to_vec();
                    entries.push((k, v));
                }
                Message::MapEntries(MapEntries {
                    probe_id,
                    map,
                    cpus,
                    key_size,
                    value_size,
                    total,
                    entries,
                })
            }
        };
        r.finish()?;
        Ok(msg)
    }
}
