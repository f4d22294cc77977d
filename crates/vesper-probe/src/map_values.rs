//! A script's maps as the host shows them: the raw entries an agent read (keys and, for
//! an aggregation, one value per CPU) decoded with the map's [`MapSpec`], per-CPU values
//! merged, histogram buckets gathered under their key; and printed as bpftrace prints them.
//!
//! The entries come from the guest: sizes are checked against the spec, and a bucket that
//! cannot exist is refused, never trusted.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::manifest::{KeyPart, MapSpec, MapValue};

/// The guest's entries do not match what the compiler made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapDecodeError {
    #[error("map {map}: the guest sent keys of {got} bytes, the probe's are {want}")]
    KeySize { map: String, got: u32, want: u32 },
    #[error("map {map}: the guest sent values of {got} bytes × {cpus}, the probe's are {want}")]
    ValueSize {
        map: String,
        got: u32,
        cpus: u32,
        want: u32,
    },
    #[error("map {map}: an entry holds {got} bytes, its sizes say {want}")]
    Entry {
        map: String,
        got: usize,
        want: usize,
    },
    #[error("map {map}: bucket {bucket} does not exist in its {kind}()")]
    Bucket {
        map: String,
        bucket: u64,
        kind: &'static str,
    },
}

/// One part of a key, as shown.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KeyValue {
    Int(i64),
    Str(String),
}

/// One bucket of a histogram: `[low, high)`, unbounded where `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub low: Option<i64>,
    pub high: Option<i64>,
    pub count: u64,
}

/// An entry's value: an integer (a stored value, count, sum, min, max, or an average with
/// the number of values it is of), or a histogram's buckets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EntryValue {
    Buckets { buckets: Vec<Bucket> },
    Avg { value: i64, count: u64 },
    Int { value: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntry {
    pub key: Vec<KeyValue>,
    #[serde(flatten)]
    pub value: EntryValue,
}

/// A map's contents at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapDump {
    /// `@name`.
    pub name: String,
    /// `value` for a map of stored integers, else the aggregation: `count`, `hist`, ...
    pub kind: String,
    /// Entries the map held; more than `entries` shows when they did not all fit.
    pub total: u32,
    pub entries: Vec<MapEntry>,
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(a)
}

fn key_values(spec: &MapSpec, key: &[u8]) -> Vec<KeyValue> {
    let mut at = 0usize;
    let mut out = Vec::with_capacity(spec.key.len());
    for part in &spec.key {
        let size = part.size() as usize;
        let bytes = key.get(at..at + size).unwrap_or_default();
        out.push(match part {
            KeyPart::Int => KeyValue::Int(le_u64(bytes) as i64),
            KeyPart::Str { .. } => {
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                KeyValue::Str(String::from_utf8_lossy(&bytes[..end]).into_owned())
            }
        });
        at += size;
    }
    out
}

/// `[low, high)` of bucket `b` of a histogram, or None if there is no such bucket.
fn bucket_range(value: MapValue, b: u64) -> Option<(Option<i64>, Option<i64>)> {
    match value {
        MapValue::Hist => match b {
            0 => Some((None, Some(0))),
            1 => Some((Some(0), Some(1))),
            2..=64 => {
                let k = (b - 2) as u32;
                Some((Some(1i64 << k), 1i64.checked_shl(k + 1).filter(|v| *v > 0)))
            }
            _ => None,
        },
        MapValue::Lhist { min, max, step } => {
            let last = ((max - min - 1) / step + 2) as u64;
            match b {
                0 => Some((None, Some(min))),
                b if b == last => Some((Some(max), None)),
                b if b < last => {
                    let low = min + (b as i64 - 1) * step;
                    Some((Some(low), Some((low + step).min(max))))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// Decodes the entries an agent read from map `spec`: `cpus` values of `value_size`
/// bytes each per entry.
pub fn decode(
    spec: &MapSpec,
    cpus: u32,
    key_size: u32,
    value_size: u32,
    total: u32,
    entries: &[(Vec<u8>, Vec<u8>)],
) -> Result<MapDump, MapDecodeError> {
    let map = || spec.name.clone();
    if key_size != spec.key_size() {
        return Err(MapDecodeError::KeySize {
            map: map(),
            got: key_size,
            want: spec.key_size(),
        });
    }
    let want = spec.value.size();
    if value_size < want || cpus == 0 || (!spec.value.is_aggregation() && cpus != 1) {
        return Err(MapDecodeError::ValueSize {
            map: map(),
            got: value_size,
            cpus,
            want,
        });
    }
    let kind = spec.value.function();
    let mut scalar: Vec<MapEntry> = Vec::new();
    let mut hists: BTreeMap<Vec<KeyValue>, BTreeMap<u64, u64>> = BTreeMap::new();
    let user_key = spec.user_key_size() as usize;
    for (k, v) in entries {
        let want_len = value_size as usize * cpus as usize;
        if k.len() != key_size as usize || v.len() != want_len {
            return Err(MapDecodeError::Entry {
                map: map(),
                got: k.len() + v.len(),
                want: key_size as usize + want_len,
            });
        }
        let per_cpu: Vec<&[u8]> = v.chunks(value_size as usize).collect();
        let first = |c: &[u8]| le_u64(&c[..8]);
        let second = |c: &[u8]| le_u64(&c[8..16]);
        let key = key_values(spec, k);
        let sum = || per_cpu.iter().fold(0u64, |a, c| a.wrapping_add(first(c)));
        let value = match spec.value {
            MapValue::Hist | MapValue::Lhist { .. } => {
                let bucket = le_u64(&k[user_key..user_key + 8]);
                if bucket_range(spec.value, bucket).is_none() {
                    return Err(MapDecodeError::Bucket {
                        map: map(),
                        bucket,
                        kind,
                    });
                }
                let slot = hists.entry(key).or_default().entry(bucket).or_default();
                *slot = slot.wrapping_add(sum());
                continue;
            }
            MapValue::Int | MapValue::Count | MapValue::Sum => EntryValue::Int {
                value: sum() as i64,
            },
            MapValue::Avg => {
                let count = per_cpu.iter().fold(0u64, |a, c| a.wrapping_add(second(c)));
                let total = sum() as i64;
                EntryValue::Avg {
                    value: if count == 0 {
                        0
                    } else {
                        total.wrapping_div(count as i64)
                    },
                    count,
                }
            }
            MapValue::Min | MapValue::Max => {
                let seen = per_cpu
                    .iter()
                    .filter(|c| second(c) != 0)
                    .map(|c| first(c) as i64);
                let v = if spec.value == MapValue::Min {
                    seen.min()
                } else {
                    seen.max()
                };
                EntryValue::Int {
                    value: v.unwrap_or(0),
                }
            }
        };
        scalar.push(MapEntry { key, value });
    }
    // bpftrace's order: by value, smallest first; histograms by key.
    scalar.sort_by(|a, b| {
        let v = |e: &MapEntry| match e.value {
            EntryValue::Int { value } | EntryValue::Avg { value, .. } => value,
            EntryValue::Buckets { .. } => 0,
        };
        v(a).cmp(&v(b)).then_with(|| a.key.cmp(&b.key))
    });
    scalar.extend(hists.into_iter().map(|(key, buckets)| {
        MapEntry {
            key,
            value: EntryValue::Buckets {
                buckets: buckets
                    .into_iter()
                    .filter_map(|(b, count)| {
                        let (low, high) = bucket_range(spec.value, b)?;
                        Some(Bucket { low, high, count })
                    })
                    .collect(),
            },
        }
    }));
    Ok(MapDump {
        name: spec.name.clone(),
        kind: kind.to_string(),
        total,
        entries: scalar,
    })
}

/// 1024 → "1K", as bpftrace labels power-of-two buckets.
fn short(v: i64) -> String {
    for (shift, unit) in [
        (60, "E"),
        (50, "P"),
        (40, "T"),
        (30, "G"),
        (20, "M"),
        (10, "K"),
    ] {
        let u = 1i64 << shift;
        if v != 0 && v % u == 0 {
            return format!("{}{unit}", v / u);
        }
    }
    v.to_string()
}

impl MapDump {
    /// The map as bpftrace prints it: `@name[key]: value` lines, or a histogram with bars.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let label = |key: &[KeyValue]| {
            if key.is_empty() {
                self.name.clone()
            } else {
                let parts: Vec<String> = key
                    .iter()
                    .map(|k| match k {
                        KeyValue::Int(i) => i.to_string(),
                        KeyValue::Str(s) => s.clone(),
                    })
                    .collect();
                format!("{}[{}]", self.name, parts.join(", "))
            }
        };
        for e in &self.entries {
            match &e.value {
                EntryValue::Int { value } | EntryValue::Avg { value, .. } => {
                    let _ = writeln!(out, "{}: {value}", label(&e.key));
                }
                EntryValue::Buckets { buckets } => {
                    let _ = writeln!(out, "{}:", label(&e.key));
                    let most = buckets.iter().map(|b| b.count).max().unwrap_or(0).max(1);
                    let hist = self.kind == "hist";
                    for b in buckets {
                        let text = match (b.low, b.high) {
                            (None, Some(h)) => format!("(..., {})", short(h)),
                            (Some(l), None) => format!("[{}, ...)", short(l)),
                            (Some(l), Some(h)) if hist && h == l + 1 => format!("[{}]", short(l)),
                            (Some(l), Some(h)) => format!("[{}, {})", short(l), short(h)),
                            (None, None) => "(..., ...)".into(),
                        };
                        let width = (b.count * 52).div_ceil(most) as usize;
                        let _ = writeln!(
                            out,
                            "{text:<20} {:>8} |{:<52}|",
                            b.count,
                            "@".repeat(width.min(52))
                        );
                    }
                    out.push('\n');
                }
            }
        }
        if self.total as usize > self.entries.len() && self.kind != "hist" && self.kind != "lhist" {
            let _ = writeln!(
                out,
                "({} of {} entries shown: the rest did not fit in one read)",
                self.entries.len(),
                self.total
            );
        }
        if self.entries.is_empty() {
            let _ = writeln!(out, "{}: (empty)", self.name);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;

    fn spec(key: Vec<KeyPart>, value: MapValue) -> MapSpec {
        MapSpec {
            name: "@m".into(),
            symbol: "map_0".into(),
            key,
            value,
            max_entries: 16,
        }
    }

    fn cpu_values(vals: &[(u64, u64)], size: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for (a, b) in vals {
            out.extend_from_slice(&a.to_le_bytes());
            if size == 16 {
                out.extend_from_slice(&b.to_le_bytes());
            }
        }
        out
    }

    #[test]
    fn per_cpu_counts_add_up_and_sort_by_value() {
        let s = spec(vec![KeyPart::Str { len: 16 }], MapValue::Count);
        let key = |name: &str| {
            let mut k = name.as_bytes().to_vec();
            k.resize(16, 0);
            k
        };
        let entries = vec![
            (key("bash"), cpu_values(&[(3, 0), (4, 0)], 8)),
            (key("sshd"), cpu_values(&[(1, 0), (0, 0)], 8)),
        ];
        let d = decode(&s, 2, 16, 8, 2, &entries).unwrap();
        assert_eq!(d.entries[0].key, vec![KeyValue::Str("sshd".into())]);
        assert_eq!(d.entries[1].value, EntryValue::Int { value: 7 });
        assert_eq!(d.to_text(), "@m[sshd]: 1\n@m[bash]: 7\n");
    }

    #[test]
    fn min_ignores_cpus_that_saw_nothing_and_avg_divides_the_sums() {
        let s = spec(vec![], MapValue::Min);
        let k = vec![0u8; 8];
        let v = cpu_values(&[(0, 0), (5, 1), (9, 1)], 16);
        let d = decode(&s, 3, 8, 16, 1, &[(k.clone(), v)]).unwrap();
        assert_eq!(d.entries[0].value, EntryValue::Int { value: 5 });
        let s = spec(vec![], MapValue::Avg);
        let v = cpu_values(&[(10, 2), (20, 3)], 16);
        let d = decode(&s, 2, 8, 16, 1, &[(k, v)]).unwrap();
        assert_eq!(d.entries[0].value, EntryValue::Avg { value: 6, count: 5 });
    }

    #[test]
    fn histogram_buckets_gather_under_their_key_and_print_like_bpftrace() {
        let s = spec(vec![], MapValue::Hist);
        let entry = |bucket: u64, n: u64| (bucket.to_le_bytes().to_vec(), cpu_values(&[(n, 0)], 8));
        let d = decode(&s, 1, 8, 8, 3, &[entry(12, 4), entry(1, 1), entry(2, 2)]).unwrap();
        let EntryValue::Buckets { buckets } = &d.entries[0].value else {
            panic!("{d:?}")
        };
        assert_eq!(buckets.len(), 3);
        assert_eq!((buckets[2].low, buckets[2].high), (Some(1024), Some(2048)));
        let text = d.to_text();
        assert!(text.starts_with("@m:\n[0] "), "{text}");
        assert!(text.contains("[1K, 2K)"), "{text}");
        assert!(
            text.contains("|@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@|"),
            "{text}"
        );
    }

    #[test]
    fn lhist_has_an_underflow_and_an_overflow_bucket() {
        let v = MapValue::Lhist {
            min: 0,
            max: 100,
            step: 10,
        };
        assert_eq!(bucket_range(v, 0), Some((None, Some(0))));
        assert_eq!(bucket_range(v, 1), Some((Some(0), Some(10))));
        assert_eq!(bucket_range(v, 10), Some((Some(90), Some(100))));
        assert_eq!(bucket_range(v, 11), Some((Some(100), None)));
        assert_eq!(bucket_range(v, 12), None);
    }

    #[test]
    fn a_guests_entries_that_do_not_fit_the_spec_are_refused() {
        let s = spec(vec![], MapValue::Hist);
        let bad_bucket = (99u64.to_le_bytes().to_vec(), vec![0u8; 8]);
        assert!(matches!(
            decode(&s, 1, 8, 8, 1, &[bad_bucket]),
            Err(MapDecodeError::Bucket { bucket: 99, .. })
        ));
        assert!(matches!(
            decode(&s, 1, 16, 8, 0, &[]),
            Err(MapDecodeError::KeySize { .. })
        ));
        let short = (vec![0u8; 8], vec![0u8; 3]);
        assert!(matches!(
            decode(&s, 1, 8, 8, 1, &[short]),
            Err(MapDecodeError::Entry { .. })
        ));
        // A plain map is never per CPU.
        let plain = spec(vec![], MapValue::Int);
        assert!(decode(&plain, 2, 8, 8, 0, &[]).is_err());
    }
}
