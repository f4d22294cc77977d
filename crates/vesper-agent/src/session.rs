//! One connection to the host: answer requests, stream records, heartbeat.
//!
//! The loop never blocks on the host: output goes to a bounded buffer; while that
//! buffer is full the ring buffers are not read, so the BPF programs fail to reserve
//! and count the drop. The guest kernel never waits for anyone.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use vesper_proto::message::error_code;
use vesper_proto::{DEFAULT_MAX_PAYLOAD, FrameDecoder, Hello, Message, Records, encode_frame};

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
    /// Output buffered for the host beyond which rings are left to fill (and drop).
    pub out_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            batch_bytes: 256 * 1024,
            out_limit: 4 << 20,
        }
    }
}

pub struct Session<'a> {
    conn: Box<dyn Conn>,
    cfg: &'a Config,
    dec: FrameDecoder,
    out: Vec<u8>,
    out_seq: u64,
    probes: ProbeSet,
    kernel_files: KernelFiles,
    started: Instant,
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
            out: Vec::new(),
            out_seq: 0,
            probes: ProbeSet::default(),
            kernel_files: KernelFiles::default(),
            started,
        }
    }

    fn send(&mut self, msg: &Message) {
        self.out.extend(encode_frame(msg, self.out_seq));
        self.out_seq += 1;
    }

    /// Runs until the host goes away. Probes are unloaded when the session ends; the
    /// host loads its probes again on the next connection.
    pub fn run(mut self) -> End {
        self.send(&Message::Hello(Hello {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            kernel_release: sys::kernel_release(),
            capabilities: kernel::capabilities(),
            boot_id: kernel::boot_id(),
        }));
        let mut next_hb = Instant::now() + self.cfg.heartbeat;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if let Err(e) = self.flush() {
                return End::Io(e);
            }
            let conn_fd = raw_fd(self.conn.as_ref());
            let mut events = libc::POLLIN;
            if !self.out.is_empty() {
                events |= libc::POLLOUT;
            }
            let mut fds = vec![sys::pollfd(conn_fd, events)];
            if self.out.len() < self.cfg.out_limit {
                fds.extend(
                    self.probes
                        .probes
                        .values()
                        .map(|p| sys::pollfd(p.ring_fd(), libc::POLLIN)),
                );
            }
            let wait = next_hb
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(1000) as i32;
            if let Err(e) = sys::poll(&mut fds, wait) {
                return End::Io(e);
            }
            let conn_ev = fds[0].revents;
            if conn_ev & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                match self.read_input(&mut buf) {
                    Ok(true) => {}
                    Ok(false) => return End::HostClosed,
                    Err(end) => return end,
                }
            }
            self.drain_rings();
            if Instant::now() >= next_hb {
                let uptime_ms = self.started.elapsed().as_millis() as u64;
                let probes = self.probes.probes.len() as u32;
                self.send(&Message::Heartbeat { uptime_ms, probes });
                self.report_quiet_drops();
                next_hb = Instant::now() + self.cfg.heartbeat;
            }
        }
    }

    /// Reads what the host sent. Ok(false) when the host closed the stream.
    fn read_input(&mut self, buf: &mut [u8]) -> Result<bool, End> {
        loop {
            match self.conn.read(buf) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    let frames = self.dec.decode_all(&buf[..n]).map_err(End::Protocol)?;
                    for f in frames {
                        match f.message() {
                            Ok(m) => self.handle(m),
                            Err(e) => return Err(End::Protocol(e)),
                        }
                    }
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
            Message::LoadProbe(req) => match self.probes.load(&req) {
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
            },
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

    fn drain_rings(&mut self) {
        let mut batch = Vec::new();
        let ids: Vec<u32> = self.probes.probes.keys().copied().collect();
        for id in ids {
            loop {
                if self.out.len() >= self.cfg.out_limit {
                    return;
                }
                let Some(p) = self.probes.probes.get_mut(&id) else {
                    break;
                };
                batch.clear();
                let n = p.drain(&mut batch, self.cfg.batch_bytes);
                if n == 0 {
                    break;
                }
                let kernel_drops = p.kernel_drops();
                p.reported_drops = kernel_drops;
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
            let kernel_drops = p.kernel_drops();
            if kernel_drops != p.reported_drops {
                p.reported_drops = kernel_drops;
                batches.push(Records {
                    probe_id: id,
                    first_seq: p.next_seq,
                    kernel_drops,
                    agent_drops: p.agent_drops,
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
