//! One connection to the host: answer requests, stream records, heartbeat.
//!
//! The loop never blocks on the host, and what it holds for the host is bounded: output
//! goes to a buffer; while that buffer is over `out_limit` the rings are not read (the BPF
//! programs then fail to reserve and count the drop: the guest kernel never waits for
//! anyone) and the host's requests are not taken in (they wait in the channel, so a host
//! that asks and never reads cannot grow the agent either).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use vesper_proto::message::error_code;
use vesper_proto::{
    DEFAULT_MAX_PAYLOAD, Frame, FrameDecoder, Hello, Message, Records, encode_frame,
};

use crate::channel::{Conn, raw_fd};
use crate::kernel;
use crate::kernel_files::KernelFiles;
use crate::probes::ProbeSet;
use crate::sys;

#[derive(Debug, Clone)]
pub struct Config {
    pub heartbeat: Duration,
    /// Largest record batch in one frame.
    pub batch_bytes: usize,
    /// Largest record sent; a longer one is dropped and counted (`agent_drops`).
    pub max_record: usize,
    /// Output buffered for the host beyond which rings are left to fill (and drop).
    pub out_limit: usize,
    /// The agent's memory is locked (mlockall): freeing memory needs the lock lifted.
    pub memory_locked: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            batch_bytes: 64 * 1024,
            max_record: 64 * 1024,
            // A burst the host is slow to take (it is writing to disk, say) waits here
            // rather than being dropped; the buffer is given back once sent, so it costs
            // nothing idle.
            out_limit: 4 << 20,
            memory_locked: false,
        }
    }
}

/// The output buffer beyond which an emptied one is given back (a burst's buffer must not
/// stay resident).
const OUT_KEEP: usize = 64 * 1024;
/// Bytes read from the host at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Heap freed since the last trim beyond which the next heartbeat gives it back: loads,
/// the kernel-file transfers and bursts free memory among what they keep, and the lock
/// would keep it resident.
const TRIM_AFTER: usize = 128 * 1024;

pub struct Session<'a> {
    conn: Box<dyn Conn>,
    cfg: &'a Config,
    dec: FrameDecoder,
    /// Frames read but not handled yet: handled while the output has room.
    pending: VecDeque<Frame>,
    out: Vec<u8>,
    out_seq: u64,
    pub(crate) probes: ProbeSet,
    kernel_files: KernelFiles,
    started: Instant,
    next_hb: Instant,
    /// Free heap right after the last trim.
    heap_free_at_trim: usize,
}

/// How a session ended.
#[derive(Debug)]
pub enum End {
    HostClosed,
    Io(io::Error),
    Protocol(vesper_proto::DecodeError),
}

impl<'a> Session<'a> {
    pub fn new(conn: Box<dyn Conn>, cfg: &'a Config, started: Instant) -> Self {
        Self {
            conn,
            cfg,
            dec: FrameDecoder::new(DEFAULT_MAX_PAYLOAD),
            pending: VecDeque::new(),
            out: Vec::new(),
            out_seq: 0,
            probes: ProbeSet::default(),
            kernel_files: KernelFiles::default(),
            started,
            next_hb: Instant::now() + cfg.heartbeat,
            heap_free_at_trim: sys::heap_free_bytes(),
        }
    }

    fn send(&mut self, msg: &Message) {
        self.out.extend(encode_frame(msg, self.out_seq));
        self.out_seq += 1;
    }

    fn out_full(&self) -> bool {
        self.out.len() >= self.cfg.out_limit
    }

    /// Runs until the host goes away. Probes are unloaded when the session ends; the
    /// host loads its probes again on the next connection.
    pub fn run(mut self) -> End {
        self.hello();
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            if let Err(end) = self.turn(&mut buf) {
                return end;
            }
        }
    }

    fn hello(&mut self) {
        self.send(&Message::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: sys::kernel_release(),
            capabilities: kernel::capabilities(),
            boot_id: kernel::boot_id(),
        }));
    }

    /// One turn of the loop: write what the host can take, wait (at most until the next
    /// heartbeat) for the host or a ring, take in requests and records while there is
    /// room. Never waits on the host.
    fn turn(&mut self, buf: &mut [u8]) -> Result<(), End> {
        self.flush().map_err(End::Io)?;
        if self.out.is_empty() && self.out.capacity() > OUT_KEEP {
            self.out = Vec::new();
        }
        let conn_fd = raw_fd(self.conn.as_ref());
        let mut events = 0;
        if !self.out_full() && self.pending.is_empty() {
            events |= libc::POLLIN;
        }
        if !self.out.is_empty() {
            events |= libc::POLLOUT;
        }
        let mut fds = vec![sys::pollfd(conn_fd, events)];
        if !self.out_full() {
            fds.extend(
                (self.probes.probes.values())
                    .filter_map(|p| p.ring().poll_fd())
                    .map(|fd| sys::pollfd(fd, libc::POLLIN)),
            );
        }
        // Rounded up: a wait rounded down to 0 would spin until the heartbeat is due.
        let wait = (self.next_hb.saturating_duration_since(Instant::now()))
            .as_micros()
            .div_ceil(1000)
            .min(1000) as i32;
        sys::poll(&mut fds, wait).map_err(End::Io)?;
        let conn_ev = fds[0].revents;
        // A hang-up is reported whatever was asked: read on to the end of the stream (a
        // host that is gone sends no more), or the loop would spin on it.
        let hup = conn_ev & (libc::POLLHUP | libc::POLLERR) != 0;
        let readable = conn_ev & libc::POLLIN != 0 && self.pending.is_empty();
        if (readable || hup) && !self.read_input(buf)? {
            return Err(End::HostClosed);
        }
        self.handle_pending()?;
        self.drain_rings();
        if Instant::now() >= self.next_hb {
            // With the output full the host is not reading: a heartbeat would only add to
            // what waits (and the drop counts go with a later one).
            if !self.out_full() {
                let uptime_ms = self.started.elapsed().as_millis() as u64;
                let probes = self.probes.probes.len() as u32;
                self.send(&Message::Heartbeat { uptime_ms, probes });
                self.report_quiet_drops();
            }
            self.give_back_memory();
            self.next_hb = Instant::now() + self.cfg.heartbeat;
        }
        Ok(())
    }

    /// Gives freed heap back if much was freed since the last time (checked once a
    /// heartbeat: a trim with the memory locked costs an unlock and a lock).
    fn give_back_memory(&mut self) {
        if sys::heap_free_bytes() > self.heap_free_at_trim + TRIM_AFTER {
            sys::give_back_free_heap(self.cfg.memory_locked);
            self.heap_free_at_trim = sys::heap_free_bytes();
        }
    }

    /// Handles the frames read, while the output has room.
    fn handle_pending(&mut self) -> Result<(), End> {
        while !self.out_full() {
            let Some(f) = self.pending.pop_front() else {
                break;
            };
            let m = f.message().map_err(End::Protocol)?;
            self.handle(m);
        }
        Ok(())
    }

    /// Reads one chunk of what the host sent into `pending`. Ok(false) when the host
    /// closed the stream.
    fn read_input(&mut self, buf: &mut [u8]) -> Result<bool, End> {
        loop {
            match self.conn.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let frames = self.dec.decode_all(&buf[..n]).map_err(End::Protocol)?;
                    self.pending.extend(frames);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Io(e)),
            }
        }
    }

    fn handle(&mut self, msg: Message) {
        match msg {
            Message::KernelInfoRequest { events } => {
                let info = kernel::kernel_info(&events);
                self.send(&Message::KernelInfo(info));
            }
            Message::LoadProbe(req) => self.load(&req),
            Message::UnloadProbe { probe_id } => {
                if self.probes.unload(probe_id) {
                    log::info!("probe id {probe_id} unloaded");
                    self.send(&Message::ProbeUnloaded { probe_id });
                } else {
                    let message = format!("no probe with id {probe_id} is loaded");
                    self.send(&Message::Error {
                        probe_id,
                        code: error_code::UNKNOWN_PROBE,
                        message,
                    });
                }
            }
            Message::ListProbes => {
                let probes = self.probes.stats();
                self.send(&Message::ProbeList { probes });
            }
            Message::KernelFileRequest {
                file,
                offset,
                max_len,
            } => match self.kernel_files.piece(file, offset, max_len) {
                Ok(piece) => self.send(&Message::KernelFile(piece)),
                Err(message) => {
                    log::warn!("kernel file {file:?}: {message}");
                    self.send(&Message::Error {
                        probe_id: 0,
                        code: error_code::KERNEL_FILE,
                        message,
                    });
                }
            },
            Message::MapRequest {
                probe_id,
                map,
                max_bytes,
                clear,
            } => {
                let read = match self.probes.probes.get(&probe_id) {
                    Some(p) => crate::maps::read(p, probe_id, &map, max_bytes, clear)
                        .map_err(|e| e.to_string()),
                    None => Err(format!("no probe with id {probe_id} is loaded")),
                };
                match read {
                    Ok(m) => self.send(&Message::MapEntries(m)),
                    Err(message) => {
                        log::warn!("{message}");
                        self.send(&Message::Error {
                            probe_id,
                            code: error_code::MAP_READ,
                            message,
                        });
                    }
                }
            }
            Message::Heartbeat { .. } => {}
            other => {
                let message = format!("the agent does not accept {:?} messages", other.kind());
                self.send(&Message::Error {
                    probe_id: 0,
                    code: error_code::BAD_REQUEST,
                    message,
                });
            }
        }
    }

    fn load(&mut self, req: &vesper_proto::LoadProbe) {
        match self.probes.load(req) {
            Ok(load_us) => {
                log::info!(
                    "probe {} (id {}) loaded and attached in {} us",
                    req.name,
                    req.probe_id,
                    load_us
                );
                self.send(&Message::ProbeLoaded {
                    probe_id: req.probe_id,
                    load_us,
                });
            }
            Err(e) => {
                log::warn!("{e}");
                let message = format!("{e}{}", source_chain(&e));
                self.send(&Message::Error {
                    probe_id: req.probe_id,
                    code: error_code::LOAD_FAILED,
                    message,
                });
            }
        }
    }

    /// Moves records from the rings to the output, a batch per probe in turn, until the
    /// rings are empty or the output is over its limit (the rest wait in the rings).
    fn drain_rings(&mut self) {
        let mut batch = Vec::new();
        let mut progress = true;
        while progress && !self.out_full() {
            progress = false;
            let ids: Vec<u32> = self.probes.probes.keys().copied().collect();
            for id in ids {
                if self.out_full() {
                    return;
                }
                let Some(p) = self.probes.probes.get_mut(&id) else {
                    continue;
                };
                let agent_before = p.agent_drops;
                let n = p.drain(&mut batch, self.cfg.batch_bytes, self.cfg.max_record);
                if n == 0 && p.agent_drops == agent_before {
                    continue;
                }
                progress = true;
                let kernel_drops = p.kernel_drops();
                p.reported_drops = (kernel_drops, p.agent_drops);
                let rec = Records {
                    probe_id: id,
                    first_seq: p.next_seq,
                    kernel_drops,
                    agent_drops: p.agent_drops,
                    records: std::mem::take(&mut batch),
                };
                p.next_seq += n as u64;
                self.send(&Message::Records(rec));
            }
        }
    }

    /// Drops of a probe that sends no records (a full map's refusals, or a ring so full
    /// nothing got through) still reach the host: an empty batch with the counters.
    fn report_quiet_drops(&mut self) {
        let mut batches = Vec::new();
        for (&id, p) in self.probes.probes.iter_mut() {
            let drops = (p.kernel_drops(), p.agent_drops);
            if drops != p.reported_drops {
                p.reported_drops = drops;
                batches.push(Records {
                    probe_id: id,
                    first_seq: p.next_seq,
                    kernel_drops: drops.0,
                    agent_drops: drops.1,
                    records: Vec::new(),
                });
            }
        }
        for b in batches {
            self.send(&Message::Records(b));
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        while !self.out.is_empty() {
            match self.conn.write(&self.out) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "host channel closed",
                    ));
                }
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// ": cause: cause…" for an error's sources (the verifier log is in there).
fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
