//! RecordStore: a VM's records, bounded in memory (count and bytes), appended to a
//! JSON-lines file under the state directory (through the [`DiskWriter`], never on the
//! caller's thread), and fanned out to followers.

use std::cell::RefCell;
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
    /// Made on the first `subscribe` and dropped once no one follows: the channel
    /// allocates all its slots at once (about 0.5 MiB), and most VMs have no follower.
    /// (A cell: `subscribe` is called through a shared borrow of the locked store.)
    followers: RefCell<Option<broadcast::Sender<StoredRecord>>>,
}

/// Slots of a followers' channel: a follower that falls further behind is told how many
/// it missed (they are in the store and its file).
const FOLLOWER_SLOTS: usize = 8192;

/// What a kept record costs beyond its JSON: its place in the queue and the shared
/// string's counters and allocation. Counted against `max_bytes`, so that the limit
/// bounds the memory the records take, not only their text.
pub const RECORD_OVERHEAD: usize = std::mem::size_of::<StoredRecord>() + 32;

fn cost(rec: &StoredRecord) -> usize {
    rec.json.len() + RECORD_OVERHEAD
}

impl RecordStore {
    /// `file`: where to append records (None: memory only).
    pub fn new(limits: StoreLimits, file: Option<RecordFile>) -> Self {
        Self {
            limits,
            records: VecDeque::new(),
            bytes: 0,
            evicted: 0,
            total: 0,
            file,
            file_dropped: 0,
            followers: RefCell::new(None),
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
        let followers = self.followers.get_mut();
        if followers.as_ref().is_some_and(|f| f.receiver_count() == 0) {
            *followers = None;
        }
        let followers = followers.clone();
        for rec in recs {
            if self.file.is_some() {
                lines.extend_from_slice(rec.json.as_bytes());
                lines.push(b'\n');
                count += 1;
            }
            self.bytes += cost(&rec);
            self.total += 1;
            if let Some(f) = &followers {
                let _ = f.send(rec.clone());
            }
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
                    self.bytes -= cost(&old);
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
        self.followers
            .borrow_mut()
            .get_or_insert_with(|| broadcast::channel(FOLLOWER_SLOTS).0)
            .subscribe()
    }

    /// Whether a followers' channel exists (someone followed since the last batch).
    pub fn has_followers_channel(&self) -> bool {
        self.followers.borrow().is_some()
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
            max_bytes: 2 * (10 + RECORD_OVERHEAD) + 5,
            file_max_bytes: 1 << 20,
        };
        let mut s = RecordStore::new(limits, None);
        for i in 0..5 {
            s.push(rec(i, "signal", 10));
        }
        assert_eq!(
            s.len(),
            2,
            "the bytes hold two 10-byte records and their bookkeeping"
        );
        assert_eq!(s.bytes(), 2 * (10 + RECORD_OVERHEAD));
        assert_eq!(s.evicted, 3);
        assert_eq!(
            s.tail(None, None).iter().map(|r| r.seq).collect::<Vec<_>>(),
            [3, 4]
        );
    }

    #[test]
    fn the_followers_channel_exists_only_while_someone_follows() {
        let limits = StoreLimits {
            max_records: 10,
            max_bytes: 1 << 20,
            file_max_bytes: 1 << 20,
        };
        let mut s = RecordStore::new(limits, None);
        s.push(rec(0, "a", 1));
        assert!(!s.has_followers_channel(), "no slots allocated for no one");
        let mut rx = s.subscribe();
        s.push(rec(1, "a", 1));
        assert_eq!(rx.try_recv().unwrap().seq, 1);
        drop(rx);
        s.push(rec(2, "a", 1));
        assert!(
            !s.has_followers_channel(),
            "freed when the last follower left"
        );
        let mut again = s.subscribe();
        s.push(rec(3, "a", 1));
        assert_eq!(again.try_recv().unwrap().seq, 3);
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
