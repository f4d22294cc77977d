//! Reading a probe's BPF maps for the host: every entry, keys and values as the kernel
//! keeps them (per-CPU values side by side), bounded in bytes; optionally emptied.

use std::os::fd::{AsFd, AsRawFd};

use vesper_proto::MapEntries;

use crate::probes::LoadedProbe;
use crate::sys;

/// Largest key or value (per CPU) the agent reads; the compiler's maps are far smaller.
const MAX_SIZE: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MapReadError {
    #[error("probe {probe} has no map {map}")]
    NoMap { probe: String, map: String },
    #[error("map {map}: {what}")]
    Kernel { map: String, what: String },
    #[error("map {map}: key of {key_size} or value of {value_size} bytes is beyond {MAX_SIZE}")]
    TooLarge {
        map: String,
        key_size: u32,
        value_size: u32,
    },
}

/// Reads map `name` of `probe`: at most `max_bytes` of entries (the rest are counted in
/// `total`, not sent); with `clear`, each entry read is deleted.
pub fn read(
    probe: &LoadedProbe,
    probe_id: u32,
    name: &str,
    max_bytes: u32,
    clear: bool,
) -> Result<MapEntries, MapReadError> {
    let kernel = |what: String| MapReadError::Kernel {
        map: name.into(),
        what,
    };
    let data = probe.map_data(name).ok_or_else(|| MapReadError::NoMap {
        probe: probe.name.clone(),
        map: name.into(),
    })?;
    let info = data.info().map_err(|e| kernel(e.to_string()))?;
    let per_cpu = matches!(
        info.map_type(),
        Ok(aya::maps::MapType::PerCpuHash | aya::maps::MapType::PerCpuArray)
    );
    let (key_size, mut value_size) = (info.key_size(), info.value_size());
    if key_size > MAX_SIZE || value_size > MAX_SIZE || key_size == 0 {
        return Err(MapReadError::TooLarge {
            map: name.into(),
            key_size,
            value_size,
        });
    }
    let cpus = if per_cpu {
        // The kernel lays per-CPU values out 8-byte aligned, one per possible CPU.
        value_size = value_size.div_ceil(8) * 8;
        aya::util::nr_cpus().map_err(|(f, e)| kernel(format!("{f}: {e}")))? as u32
    } else {
        1
    };
    let fd = data.fd().as_fd().as_raw_fd();
    let entry = key_size as usize + value_size as usize * cpus as usize;
    let mut out = MapEntries {
        probe_id,
        map: name.into(),
        cpus,
        key_size,
        value_size,
        total: 0,
        entries: Vec::new(),
    };
    // The keys first, then their values: deleting while walking would restart the walk.
    // A hash map changing meanwhile can restart it too; max_entries bounds it.
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..=info.max_entries() {
        let mut next = vec![0u8; key_size as usize];
        let more = sys::map_next_key(fd, keys.last().map(|k| k.as_slice()), &mut next)
            .map_err(|e| kernel(format!("next key: {e}")))?;
        // A restarted walk comes back to keys it gave: the end, for this read.
        if !more || !seen.insert(next.clone()) {
            break;
        }
        keys.push(next);
    }
    let mut bytes = 0usize;
    for key in keys {
        let mut value = vec![0u8; value_size as usize * cpus as usize];
        let found =
            sys::map_lookup(fd, &key, &mut value).map_err(|e| kernel(format!("lookup: {e}")))?;
        if !found {
            continue;
        }
        out.total += 1;
        // What does not fit stays in the map, counted in `total`, even with `clear`.
        if bytes + entry > max_bytes as usize {
            continue;
        }
        bytes += entry;
        if clear {
            sys::map_delete(fd, &key).map_err(|e| kernel(format!("delete: {e}")))?;
        }
        out.entries.push((key, value));
    }
    Ok(out)
}
