//! Loaded probes: BPF objects, their attachments, ring buffers and drop counters.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Instant;

use aya::maps::{Array, MapData, RingBuf};
use aya::programs::{KProbe, TracePoint};
use aya::{Ebpf, EbpfLoader};
use vesper_proto::{AttachKind, LoadProbe, ProbeStat};

use crate::ring::{BpfRing, Ring};

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("probe id {0} is already loaded")]
    Duplicate(u32),
    #[error("loading the object of probe {probe}: {source}")]
    Object {
        probe: String,
        source: Box<aya::EbpfError>,
    },
    #[error("probe {probe}: the object has no program {program}")]
    NoProgram { probe: String, program: String },
    #[error("probe {probe}: program {program} cannot be used as a {kind:?}: {source}")]
    WrongKind {
        probe: String,
        program: String,
        kind: AttachKind,
        source: aya::programs::ProgramError,
    },
    #[error("probe {probe}: loading program {program} into the kernel: {source}")]
    Verify {
        probe: String,
        program: String,
        source: aya::programs::ProgramError,
    },
    #[error("probe {probe}: attaching {program} to {target}: {source}")]
    Attach {
        probe: String,
        program: String,
        target: String,
        source: aya::programs::ProgramError,
    },
    #[error("probe {probe}: bad attach target {target:?} (expected category:name)")]
    BadTarget { probe: String, target: String },
    #[error("probe {probe}: map {map}: {reason}")]
    Map {
        probe: String,
        map: String,
        reason: String,
    },
}

/// One probe, live in the kernel. Dropping it detaches and unloads everything.
pub struct LoadedProbe {
    pub name: String,
    ring: Box<dyn Ring>,
    /// Next record sequence number.
    pub next_seq: u64,
    /// Records the agent took from the ring and could not send (too large for a frame).
    pub agent_drops: u64,
    /// The drop counts last sent to the host.
    pub reported_drops: (u64, u64),
    // Holds the programs and links (None: a ring without a kernel, in tests); dropped
    // after the ring.
    ebpf: Option<Ebpf>,
}

impl std::fmt::Debug for LoadedProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedProbe")
            .field("name", &self.name)
            .field("next_seq", &self.next_seq)
            .finish()
    }
}

/// Whether an object carries CO-RE relocations (a `.BTF.ext` section), which need the
/// kernel's BTF. Vesper's compiler emits none; a clang-built object may. A section name is
/// a NUL-terminated string in the object, so looking for it errs only towards loading BTF.
fn needs_kernel_btf(object: &[u8]) -> bool {
    object.windows(9).any(|w| w == b".BTF.ext\0")
}

/// The loader of objects without CO-RE relocations, made once for the agent's life.
/// `EbpfLoader::new` reads and parses the kernel's BTF whatever comes next (6 MB on 6.x
/// kernels, ~11 MB of small allocations): made for every load, that left the probes'
/// allocations scattered over the freed parse, 1.3 MB resident for 0.2 MB in use.
static LOADER: Mutex<Option<EbpfLoader<'static>>> = Mutex::new(None);

fn loader_without_btf() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    // For CO-RE relocations only; Vesper's objects have none.
    loader.btf(None);
    loader
}

/// Makes the loader at start, while the heap is nearly empty, and gives the parse's
/// memory back.
pub fn init_loader() {
    let loader = loader_without_btf();
    *LOADER.lock().unwrap_or_else(|e| e.into_inner()) = Some(loader);
    crate::sys::trim_heap();
}

impl LoadedProbe {
    pub fn load(req: &LoadProbe) -> Result<Self, ProbeError> {
        let probe = req.name.clone();
        let loaded = if needs_kernel_btf(&req.object) {
            EbpfLoader::new().load(&req.object)
        } else {
            let mut shared = LOADER.lock().unwrap_or_else(|e| e.into_inner());
            shared
                .get_or_insert_with(loader_without_btf)
                .load(&req.object)
        };
        let mut ebpf = loaded.map_err(|e| ProbeError::Object {
            probe: probe.clone(),
            source: Box::new(e),
        })?;
        let mut loaded: Vec<&str> = Vec::new();
        for a in &req.attach {
            let prog = ebpf
                .program_mut(&a.program)
                .ok_or_else(|| ProbeError::NoProgram {
                    probe: probe.clone(),
                    program: a.program.clone(),
                })?;
            let first = !loaded.contains(&a.program.as_str());
            let wrong = |source| ProbeError::WrongKind {
                probe: probe.clone(),
                program: a.program.clone(),
                kind: a.kind,
                source,
            };
            let verify = |source| ProbeError::Verify {
                probe: probe.clone(),
                program: a.program.clone(),
                source,
            };
            let attach = |source| ProbeError::Attach {
                probe: probe.clone(),
                program: a.program.clone(),
                target: a.target.clone(),
                source,
            };
            match a.kind {
                AttachKind::Tracepoint => {
                    let (cat, name) =
                        a.target
                            .split_once(':')
                            .ok_or_else(|| ProbeError::BadTarget {
                                probe: probe.clone(),
                                target: a.target.clone(),
                            })?;
                    let tp: &mut TracePoint = prog.try_into().map_err(wrong)?;
                    if first {
                        tp.load().map_err(verify)?;
                    }
                    tp.attach(cat, name).map_err(attach)?;
                }
                AttachKind::Kprobe | AttachKind::Kretprobe => {
                    let kp: &mut KProbe = prog.try_into().map_err(wrong)?;
                    if first {
                        kp.load().map_err(verify)?;
                    }
                    kp.attach(&a.target, 0).map_err(attach)?;
                }
            }
            loaded.push(&a.program);
        }
        let map_err = |map: &str, reason: String| ProbeError::Map {
            probe: probe.clone(),
            map: map.into(),
            reason,
        };
        let ring = ebpf
            .take_map(&req.ring_map)
            .ok_or_else(|| map_err(&req.ring_map, "not in the object".into()))?;
        let ring = RingBuf::try_from(ring).map_err(|e| map_err(&req.ring_map, e.to_string()))?;
        let drops = ebpf
            .take_map(&req.drops_map)
            .ok_or_else(|| map_err(&req.drops_map, "not in the object".into()))?;
        let drops = Array::try_from(drops).map_err(|e| map_err(&req.drops_map, e.to_string()))?;
        Ok(Self::with_ring(
            probe,
            Box::new(BpfRing { ring, drops }),
            Some(ebpf),
        ))
    }

    /// A probe reading `ring`; `ebpf` keeps its programs attached.
    pub fn with_ring(name: String, ring: Box<dyn Ring>, ebpf: Option<Ebpf>) -> Self {
        Self {
            name,
            ring,
            next_seq: 0,
            agent_drops: 0,
            reported_drops: (0, 0),
            ebpf,
        }
    }

    /// One of the object's maps (a script's `@name` maps are `map_N`).
    pub fn map_data(&self, name: &str) -> Option<&MapData> {
        use aya::maps::Map;
        match self.ebpf.as_ref()?.map(name)? {
            Map::HashMap(d) | Map::PerCpuHashMap(d) | Map::Array(d) | Map::PerCpuArray(d) => {
                Some(d)
            }
            _ => None,
        }
    }

    pub fn ring(&self) -> &dyn Ring {
        self.ring.as_ref()
    }

    /// Reservations the BPF program could not make (ring full), since load.
    pub fn kernel_drops(&self) -> u64 {
        self.ring.kernel_drops()
    }

    /// Moves records out of the ring into `out` until `max_bytes` are taken. A record
    /// longer than `max_record` is dropped and counted in `agent_drops`: it would make a
    /// frame the host refuses. Returns the number of records taken.
    pub fn drain(&mut self, out: &mut Vec<Vec<u8>>, max_bytes: usize, max_record: usize) -> usize {
        let mut bytes = 0;
        let mut n = 0;
        while bytes < max_bytes {
            let Some(item) = self.ring.pop() else { break };
            if item.len() > max_record {
                self.agent_drops += 1;
                continue;
            }
            bytes += item.len() + 2;
            out.push(item);
            n += 1;
        }
        n
    }
}

/// All probes of the current session, by the host's probe id.
#[derive(Debug, Default)]
pub struct ProbeSet {
    pub probes: BTreeMap<u32, LoadedProbe>,
}

impl ProbeSet {
    pub fn load(&mut self, req: &LoadProbe) -> Result<u64, ProbeError> {
        if self.probes.contains_key(&req.probe_id) {
            return Err(ProbeError::Duplicate(req.probe_id));
        }
        let t = Instant::now();
        let p = LoadedProbe::load(req)?;
        self.probes.insert(req.probe_id, p);
        Ok(t.elapsed().as_micros() as u64)
    }

    /// A probe with no kernel side (tests).
    #[cfg(test)]
    pub fn insert(&mut self, id: u32, probe: LoadedProbe) {
        self.probes.insert(id, probe);
    }

    pub fn unload(&mut self, id: u32) -> bool {
        self.probes.remove(&id).is_some()
    }

    pub fn stats(&self) -> Vec<ProbeStat> {
        self.probes
            .iter()
            .map(|(&probe_id, p)| ProbeStat {
                probe_id,
                name: p.name.clone(),
                records: p.next_seq,
                kernel_drops: p.kernel_drops(),
                agent_drops: p.agent_drops,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::needs_kernel_btf;

    #[test]
    fn only_objects_with_core_relocations_load_the_kernel_btf() {
        assert!(needs_kernel_btf(b"\0.text\0.BTF\0.BTF.ext\0.maps\0"));
        assert!(!needs_kernel_btf(b"\0.text\0.BTF\0.maps\0license\0"));
        assert!(!needs_kernel_btf(b".BTF.ex"));
    }
}
