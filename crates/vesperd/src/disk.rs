//! DiskWriter: every file vesperd writes while it runs (the record files, the why-log, the
//! seen files) is written by one thread of its own, fed through a queue bounded in bytes.
//!
//! Why: the sessions and the task that calls Pacemaker share a single-threaded runtime. A
//! disk that stalls (a hung NFS server, a dying SSD, a full thin pool) must not stall them:
//! a failover waits on nothing but the cluster. Callers never block and never wait for
//! the disk. When the queue is full a write is dropped and counted ([`DiskStats`]); the
//! records themselves stay in the store's memory within its bounds, so `vesper events` and
//! the rules lose nothing.
//!
//! Writes to one file keep their order. A replacement of a small file (the seen file) that
//! is still queued is overwritten in place: only its latest content matters.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes waiting for the disk, across all files, before writes are dropped: about a minute
/// of a busy host's records; memory, not disk, is what a stall must not exhaust.
pub const QUEUE_MAX_BYTES: usize = 16 << 20;

/// Appending with no size limit.
pub const NO_ROTATION: u64 = u64::MAX;

#[derive(Debug)]
enum Job {
    /// Appends whole lines; beyond `rotate_at` bytes the file becomes `NAME.1` (the
    /// extension gains `.1`) and a new one is started, at a line boundary.
    Append {
        path: PathBuf,
        data: Vec<u8>,
        rotate_at: u64,
    },
    /// Replaces the file's content.
    Replace {
        path: PathBuf,
        data: Vec<u8>,
    },
    Remove {
        path: PathBuf,
    },
}

impl Job {
    fn len(&self) -> usize {
        match self {
            Job::Append { data, .. } | Job::Replace { data, .. } => data.len(),
            Job::Remove { .. } => 0,
        }
    }
    fn path(&self) -> &Path {
        match self {
            Job::Append { path, .. } | Job::Replace { path, .. } | Job::Remove { path } => path,
        }
    }
}

/// What the writer has done and dropped, for status and metrics.
pub use vesper_api::DiskStats;

#[derive(Debug, Default)]
struct Queue {
    jobs: VecDeque<(Instant, Job)>,
    /// The number of jobs ever taken off the queue: `jobs[i]` is job `head + i`.
    head: u64,
    /// The job of each file whose last queued job is a replacement: a newer replacement
    /// overwrites it in place (found at once, however long the queue of a stalled disk).
    last_replace: HashMap<PathBuf, u64>,
    bytes: usize,
    /// A job is being written (taken off the queue, not done).
    busy: Option<Instant>,
    closed: bool,
    stats: DiskStats,
    /// The latest error per file; cleared by the next successful write to it.
    errors: HashMap<PathBuf, String>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when a job is queued (the writer waits on it).
    work: Condvar,
    /// Signalled when a job is done (flush waits on it).
    done: Condvar,
    max_bytes: usize,
}

/// A handle to the writer thread; clones share it. The thread ends when the last handle
/// is dropped, after writing what is queued.
#[derive(Debug, Clone)]
pub struct DiskWriter {
    shared: Arc<Shared>,
    _owner: Arc<Owner>,
}

/// Closes the queue when the last handle goes.
#[derive(Debug)]
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        lock(&self.0.queue).closed = true;
        self.0.work.notify_all();
    }
}

fn lock(m: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl DiskWriter {
    /// Starts the writer thread with a queue of at most `max_bytes`.
    pub fn start(max_bytes: usize) -> std::io::Result<DiskWriter> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            max_bytes,
        });
        let worker = shared.clone();
        std::thread::Builder::new()
            .name("vesper-disk".into())
            .spawn(move || run(&worker))?;
        Ok(DiskWriter {
            _owner: Arc::new(Owner(shared.clone())),
            shared,
        })
    }

    /// Queues whole lines for `path`; false if they were dropped (the queue is full).
    pub fn append(&self, path: &Path, data: Vec<u8>, rotate_at: u64) -> bool {
        self.queue(Job::Append {
            path: path.to_path_buf(),
            data,
            rotate_at,
        })
    }

    /// Queues a replacement of `path`'s content (a queued one for it is overwritten).
    pub fn replace(&self, path: &Path, data: Vec<u8>) -> bool {
        {
            let mut q = lock(&self.shared.queue);
            let q = &mut *q;
            let queued = q.last_replace.get(path).map(|&n| (n - q.head) as usize);
            if let Some((_, Job::Replace { data: old, .. })) =
                queued.and_then(|i| q.jobs.get_mut(i))
            {
                q.bytes = q.bytes - old.len() + data.len();
                *old = data;
                return true;
            }
        }
        self.queue(Job::Replace {
            path: path.to_path_buf(),
            data,
        })
    }

    pub fn remove(&self, path: &Path) -> bool {
        self.queue(Job::Remove {
            path: path.to_path_buf(),
        })
    }

    fn queue(&self, job: Job) -> bool {
        let mut q = lock(&self.shared.queue);
        let len = job.len();
        if q.bytes + len > self.shared.max_bytes {
            if q.stats.dropped_writes == 0 {
                tracing::error!(file = %job.path().display(), queued_bytes = q.bytes, "the disk is not keeping up: writes are dropped (records stay in memory; counted in vesper_disk_dropped_bytes_total)");
            }
            q.stats.dropped_writes += 1;
            q.stats.dropped_bytes += len as u64;
            return false;
        }
        q.bytes += len;
        let n = q.head + q.jobs.len() as u64;
        match &job {
            Job::Replace { path, .. } => q.last_replace.insert(path.clone(), n),
            other => q.last_replace.remove(other.path()),
        };
        q.jobs.push_back((Instant::now(), job));
        drop(q);
        self.shared.work.notify_one();
        true
    }

    /// The latest write error for `path`, if its last write failed.
    pub fn error(&self, path: &Path) -> Option<String> {
        lock(&self.shared.queue).errors.get(path).cloned()
    }

    pub fn stats(&self) -> DiskStats {
        let q = lock(&self.shared.queue);
        let oldest = q.busy.or_else(|| q.jobs.front().map(|(t, _)| *t));
        DiskStats {
            queued_bytes: q.bytes as u64,
            oldest_wait_ms: oldest.map_or(0, |t| t.elapsed().as_millis() as u64),
            ..q.stats
        }
    }

    /// Waits until everything queued is written, at most `timeout`; true if it was.
    /// (Tests, and shutdown: never on the runtime.)
    pub fn flush(&self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        let mut q = lock(&self.shared.queue);
        while !q.jobs.is_empty() || q.busy.is_some() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            q = match self.shared.done.wait_timeout(q, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }
}

/// The writer thread: takes every queued job at each wake-up, until the queue is closed
/// and empty. Appends to one file queued since the last wake-up become one write (a busy
/// host queues a batch per VM every few milliseconds: one system call each was the cost).
fn run(shared: &Shared) {
    let mut files = Files::default();
    loop {
        let jobs = {
            let mut q = lock(&shared.queue);
            loop {
                if !q.jobs.is_empty() {
                    q.busy = Some(Instant::now());
                    q.head += q.jobs.len() as u64;
                    q.last_replace.clear();
                    break std::mem::take(&mut q.jobs);
                }
                if q.closed {
                    return;
                }
                q = match shared.work.wait(q) {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
            }
        };
        for (job, queued) in merge(jobs.into_iter().map(|(_, j)| j)) {
            let result = files.write(&job);
            let mut q = lock(&shared.queue);
            // Its bytes stay counted until written: they are memory held until then.
            q.bytes -= queued;
            match result {
                Ok(n) => {
                    q.stats.written_bytes += n;
                    q.errors.remove(job.path());
                }
                Err(e) => {
                    let msg = format!("{}: {e}", job.path().display());
                    if q.errors.get(job.path()) != Some(&msg) {
                        tracing::warn!(error = %msg, "cannot write to the disk; records and verdicts are kept in memory only");
                    }
                    q.stats.failed_writes += 1;
                    q.errors.insert(job.path().to_path_buf(), msg);
                }
            }
        }
        lock(&shared.queue).busy = None;
        shared.done.notify_all();
    }
}

/// Joins each file's consecutive appends (same rotation) into one, and keeps only the last
/// of its consecutive replacements; the order of each file's jobs is kept. Each job comes
/// with the bytes the queue counted for the jobs it stands for.
fn merge(jobs: impl Iterator<Item = Job>) -> Vec<(Job, usize)> {
    let mut out: Vec<(Job, usize)> = Vec::new();
    let mut last: HashMap<PathBuf, usize> = HashMap::new();
    for job in jobs {
        let len = job.len();
        if let Some(&i) = last.get(job.path()) {
            let (merged, queued) = &mut out[i];
            *queued += len;
            match (merged, job) {
                (
                    Job::Append {
                        data, rotate_at, ..
                    },
                    Job::Append {
                        data: more,
                        rotate_at: r,
                        ..
                    },
                ) if *rotate_at == r => {
                    data.extend_from_slice(&more);
                    continue;
                }
                (Job::Replace { data, .. }, Job::Replace { data: newer, .. }) => {
                    *data = newer;
                    continue;
                }
                (_, job) => {
                    out[i].1 -= len;
                    last.insert(job.path().to_path_buf(), out.len());
                    out.push((job, len));
                    continue;
                }
            }
        }
        last.insert(job.path().to_path_buf(), out.len());
        out.push((job, len));
    }
    out
}

/// The files the writer keeps open for appending, and their lengths.
#[derive(Default)]
struct Files {
    open: HashMap<PathBuf, (File, u64)>,
}

impl Files {
    fn write(&mut self, job: &Job) -> std::io::Result<u64> {
        match job {
            Job::Append {
                path,
                data,
                rotate_at,
            } => {
                let r = self.append(path, data, *rotate_at);
                if r.is_err() {
                    // Reopened on the next write: the file may come back.
                    self.open.remove(path);
                }
                r
            }
            Job::Replace { path, data } => {
                with_parent(path, || std::fs::write(path, data))?;
                Ok(data.len() as u64)
            }
            Job::Remove { path } => {
                self.open.remove(path);
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                    _ => Ok(0),
                }
            }
        }
    }

    fn append(&mut self, path: &Path, mut data: &[u8], rotate_at: u64) -> std::io::Result<u64> {
        let written = data.len() as u64;
        while !data.is_empty() {
            let (file, len) = self.file(path)?;
            let room = rotate_at.saturating_sub(*len);
            let cut = if data.len() as u64 <= room {
                data.len()
            } else {
                // Whole lines that fit; a line longer than the limit goes alone into a
                // fresh file.
                let within = &data[..room as usize];
                match within.iter().rposition(|&b| b == b'\n') {
                    Some(i) => i + 1,
                    None if *len == 0 => data
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(data.len(), |i| i + 1),
                    None => 0,
                }
            };
            if cut == 0 {
                self.rotate(path)?;
                continue;
            }
            file.write_all(&data[..cut])?;
            *len += cut as u64;
            data = &data[cut..];
        }
        Ok(written)
    }

    fn file(&mut self, path: &Path) -> std::io::Result<&mut (File, u64)> {
        if !self.open.contains_key(path) {
            let f = with_parent(path, || {
                OpenOptions::new().create(true).append(true).open(path)
            })?;
            let len = f.metadata()?.len();
            self.open.insert(path.to_path_buf(), (f, len));
        }
        self.open
            .get_mut(path)
            .ok_or_else(|| std::io::Error::other("file not open"))
    }

    /// The file becomes the old one (one kept), and the next write starts a new one.
    fn rotate(&mut self, path: &Path) -> std::io::Result<()> {
        self.open.remove(path);
        let mut old = path.as_os_str().to_owned();
        old.push(".1");
        std::fs::rename(path, PathBuf::from(old))
    }
}

/// Runs `f`, creating `path`'s directory first if it is missing.
fn with_parent<T>(path: &Path, f: impl Fn() -> std::io::Result<T>) -> std::io::Result<T> {
    match f() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            f()
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    /// A FIFO with no reader: writing to it blocks, as on a stalled disk, until it is
    /// opened for reading.
    fn stalled_file(dir: &Path) -> PathBuf {
        let fifo = dir.join("stalled");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        fifo
    }

    fn lines(p: &Path) -> usize {
        std::fs::read_to_string(p).map_or(0, |t| t.lines().count())
    }

    #[test]
    fn appends_in_order_and_rotates_at_line_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("records/web1.jsonl");
        let w = DiskWriter::start(1 << 20).unwrap();
        // 10-byte lines (9 and a newline), 25-byte files: two lines fit, the third rotates.
        let line = |i: u8| {
            let mut l = vec![b'a' + i; 9];
            l.push(b'\n');
            l
        };
        for i in 0..3 {
            assert!(w.append(&path, line(i), 25));
        }
        assert!(w.flush(WAIT));
        assert_eq!(lines(&path.with_extension("jsonl.1")), 2);
        assert_eq!(lines(&path), 1);
        assert!(std::fs::read_to_string(&path).unwrap().starts_with("ccc"));
        // One batch across the limit is split at a line boundary too.
        let batch: Vec<u8> = (0..3).flat_map(line).collect();
        assert!(w.append(&path, batch, 25));
        assert!(w.flush(WAIT));
        assert!(
            std::fs::metadata(&path).unwrap().len() <= 25,
            "never beyond the limit"
        );
        assert_eq!(w.stats().queued_bytes, 0);
        assert!(w.error(&path).is_none());
    }

    #[test]
    fn a_stalled_disk_drops_and_counts_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = stalled_file(dir.path());
        let w = DiskWriter::start(100).unwrap();
        assert!(w.replace(&fifo, Vec::new()));
        let path = dir.path().join("a.jsonl");
        let t = Instant::now();
        assert!(
            w.append(&path, vec![b'x'; 60], NO_ROTATION),
            "fits the queue"
        );
        for _ in 0..10 {
            assert!(
                !w.append(&path, vec![b'x'; 60], NO_ROTATION),
                "beyond the queue"
            );
        }
        assert!(t.elapsed() < Duration::from_secs(1), "queueing never waits");
        assert!(!w.flush(Duration::from_millis(100)), "the disk is stalled");
        let s = w.stats();
        assert_eq!((s.dropped_writes, s.dropped_bytes), (10, 600));
        assert_eq!(s.queued_bytes, 60);
        assert!(s.oldest_wait_ms >= 50, "the stall shows: {s:?}");
        // The disk comes back: what was queued is written.
        let reader = std::fs::File::open(&fifo).unwrap();
        assert!(w.flush(WAIT));
        drop(reader);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 60);
        assert_eq!(w.stats().written_bytes, 60);
        assert_eq!(w.stats().queued_bytes, 0, "every queued byte released");
    }

    #[test]
    fn queued_jobs_are_merged_per_file_in_order_and_their_bytes_released() {
        let (a, b) = (PathBuf::from("a.jsonl"), PathBuf::from("b.seen"));
        let app = |p: &PathBuf, d: &[u8]| Job::Append {
            path: p.clone(),
            data: d.to_vec(),
            rotate_at: NO_ROTATION,
        };
        let rep = |p: &PathBuf, d: &[u8]| Job::Replace {
            path: p.clone(),
            data: d.to_vec(),
        };
        let jobs = vec![
            app(&a, b"1\n"),
            rep(&b, b"10"),
            app(&a, b"2\n"),
            rep(&b, b"200"),
            Job::Remove { path: b.clone() },
            app(&a, b"3\n"),
        ];
        let queued: usize = jobs.iter().map(Job::len).sum();
        let merged = merge(jobs.into_iter());
        assert_eq!(merged.iter().map(|(_, n)| n).sum::<usize>(), queued);
        let shapes: Vec<String> = merged
            .iter()
            .map(|(j, n)| match j {
                Job::Append { data, .. } => {
                    format!("append {} ({n})", String::from_utf8_lossy(data))
                }
                Job::Replace { data, .. } => {
                    format!("replace {} ({n})", String::from_utf8_lossy(data))
                }
                Job::Remove { .. } => format!("remove ({n})"),
            })
            .collect();
        assert_eq!(
            shapes,
            ["append 1\n2\n3\n (6)", "replace 200 (5)", "remove (0)"]
        );
    }

    #[test]
    fn a_queued_replacement_keeps_only_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web1.seen");
        let w = DiskWriter::start(1 << 20).unwrap();
        for i in 0..100 {
            assert!(w.replace(&path, format!("{i}").into_bytes()));
        }
        assert!(w.flush(WAIT));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "99");
        assert!(w.remove(&path));
        assert!(w.flush(WAIT));
        assert!(!path.exists());
        // Stalled: replace, remove, replace keeps its order.
        let fifo = stalled_file(dir.path());
        assert!(w.replace(&fifo, Vec::new()));
        std::thread::sleep(Duration::from_millis(50));
        for (i, remove) in [(1, false), (2, true), (3, false), (4, false)] {
            assert!(w.replace(&path, format!("{i}").into_bytes()));
            if remove {
                assert!(w.remove(&path));
            }
        }
        let reader = std::fs::File::open(&fifo).unwrap();
        assert!(w.flush(WAIT));
        drop(reader);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "4");
        assert_eq!(w.stats().queued_bytes, 0);
    }

    #[test]
    fn a_failed_write_is_kept_per_file_and_cleared_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("why.jsonl");
        std::fs::create_dir(&path).unwrap();
        let w = DiskWriter::start(1 << 20).unwrap();
        w.append(&path, b"x\n".to_vec(), NO_ROTATION);
        assert!(w.flush(WAIT));
        assert!(w.error(&path).is_some_and(|e| e.contains("why.jsonl")));
        assert_eq!(w.stats().failed_writes, 1);
        std::fs::remove_dir(&path).unwrap();
        w.append(&path, b"y\n".to_vec(), NO_ROTATION);
        assert!(w.flush(WAIT));
        assert!(w.error(&path).is_none());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "y\n");
    }
}
