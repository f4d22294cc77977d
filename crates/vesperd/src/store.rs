//! RecordStore: a VM's records, bounded in memory (count and bytes), appended to a
//! JSON-lines file under the state directory (through the [`DiskWriter`], never on the
//! caller's thread), and fanned out to followers.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::disk::DiskWriter;

/// One record as the host keeps it: its JSON line is built once at ingest.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub probe: Arc<str>,
    pub seq: u64,
    pub json: Arc<str>,
}

pub use vesper_config::StoreLimits;

/// Where a store's records go on disk.
#[derive(Debug, Clone)]
pub struct RecordFile {
    pub path: PathBuf,
    pub disk: DiskWriter,
}

#[derive(Debug)]
pub struct RecordStore {
    limits: StoreLimits,
    records: VecDeque<StoredRecord>,
    bytes: usize,
    /// Records pushed out of memory by the limits (still in the file).
    pub evicted: u64,
    pub total: u64,
    file: Option<RecordFile>,
    /// Records that never reached the file: the disk fell behind and its queue was full
    /// (they were kept in memory like any other).
    pub file_dropped: u64,
    followers: broadcast::Sender<StoredRecord>,
}

impl RecordStore {
    /// `file`: where to append records (None: memory only).
    pub fn new(limits: StoreLimits, file: Option<RecordFile>) -> Self {
        let (followers, _) = broadcast::channel(8192);
        Self {
            limits,
            records: VecDeque::new(),
            bytes: 0,
            evicted: 0,
            total: 0,
            file,
            file_dropped: 0,
            followers,
        }
    }

    /// Why the record file is not being written, if its last write failed.
    pub fn file_error(&self) -> Option<String> {
        self.file.as_ref().and_then(|f| f.disk.error(&f.path))
    }

    pub fn push(&mut self, rec: StoredRecord) {
        self.push_batch(std::iter::once(rec));
    }

    /// Stores a batch of records; the file gets them as one queued write (one system call
    /// per batch, not per record: the ingest path's main cost otherwise).
    pub fn push_batch(&mut self, recs: impl IntoIterator<Item = StoredRecord>) {
        let mut lines = Vec::new();
        let mut count = 0;
        for rec in recs {
            if self.file.is_some() {
                lines.extend_from_slice(rec.json.as_bytes());
                lines.push(b'\n');
                count += 1;
            }
            self.bytes += rec.json.len();
            self.total += 1;
            let _ = self.followers.send(rec.clone());
            self.records.push_back(rec);
        }
        if let Some(f) = &self.file
            && !lines.is_empty()
            && !f.disk.append(&f.path, lines, self.limits.file_max_bytes)
        {
            self.file_dropped += count;
        }
        while self.records.len() > self.limits.max_records || self.bytes > self.limits.max_bytes {
            match self.records.pop_front() {
                Some(old) => {
                    self.bytes -= old.json.len();
                    self.evicted += 1;
                }
                None => break,
            }
        }
    }

    /// The last `n` records (all if None), optionally of one probe.
    pub fn tail(&self, probe: Option<&str>, n: Option<usize>) -> Vec<StoredRecord> {
        let matching: Vec<&StoredRecord> = self
            .records
            .iter()
            .filter(|r| probe.is_none_or(|p| &*r.probe == p))
            .collect();
        let skip = n.map_or(0, |n| matching.len().saturating_sub(n));
        matching.into_iter().skip(skip).cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<StoredRecord> {
        self.followers.subscribe()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, probe: &str, len: usize) -> StoredRecord {
        StoredRecord {
            probe: probe.into(),
            seq,
            json: "x".repeat(len).into(),
        }
    }

    #[test]
    fn bounded_by_count_and_bytes() {
        let limits = StoreLimits {
            max_records: 3,
            max_bytes: 25,
            file_max_bytes: 1 << 20,
        };
        let mut s = RecordStore::new(limits, None);
        for i in 0..5 {
            s.push(rec(i, "signal", 10));
        }
        assert_eq!(s.len(), 2, "25 bytes hold two 10-byte records");
        assert_eq!(s.evicted, 3);
        assert_eq!(
            s.tail(None, None).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn tail_filters_by_probe() {
        let limits = StoreLimits {
            max_records: 10,
            max_bytes: 1000,
            file_max_bytes: 1 << 20,
        };
        let mut s = RecordStore::new(limits, None);
        for i in 0..6 {
            s.push(rec(i, if i % 2 == 0 { "a" } else { "b" }, 1));
        }
        assert_eq!(
            s.tail(Some("b"), Some(2))
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [3, 5]
        );
    }

    #[test]
    fn file_is_appended_and_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records/web1.jsonl");
        let limits = StoreLimits {
            max_records: 10,
            max_bytes: 1000,
            file_max_bytes: 25,
        };
        let disk = DiskWriter::start(1 << 20).unwrap();
        let file = RecordFile {
            path: path.clone(),
            disk: disk.clone(),
        };
        let mut s = RecordStore::new(limits, Some(file));
        for i in 0..3 {
            s.push(rec(i, "a", 10));
        }
        assert!(disk.flush(std::time::Duration::from_secs(5)));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
        assert_eq!(
            std::fs::read_to_string(path.with_extension("jsonl.1"))
                .unwrap()
                .lines()
                .count(),
            2
        );
        assert!(s.file_error().is_none());
    }

    #[test]
    fn a_batch_is_written_whole_and_still_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web1.jsonl");
        let limits = StoreLimits {
            max_records: 10,
            max_bytes: 1000,
            file_max_bytes: 25,
        };
        let disk = DiskWriter::start(1 << 20).unwrap();
        let file = RecordFile {
            path: path.clone(),
            disk: disk.clone(),
        };
        let mut s = RecordStore::new(limits, Some(file));
        s.push_batch((0..3).map(|i| rec(i, "a", 10)));
        assert!(disk.flush(std::time::Duration::from_secs(5)));
        let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(lines(&path.with_extension("jsonl.1")), 2);
        assert_eq!(lines(&path), 1);
        assert_eq!(s.len(), 3);
    }
}
