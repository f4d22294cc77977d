//! `vesper-testkit fake-agents --dir D --count N [--rate R] [--record-bytes B]`: N
//! well-behaved agents in one process, for measuring one vesperd serving many VMs. Agent
//! `i` listens on `D/fake{i}.sock` (`unix-listen:`, as `vesper-agent --channel` does),
//! answers like an agent up to the first probe load, then streams R valid records per
//! second for that probe (zeroed records: schema 0, every field 0 or empty), in a batch
//! every 100 ms, with a heartbeat every second, until vesperd hangs up; then it listens
//! again.
//!
//! One process with a small thread per agent, not a process per agent: 500 processes
//! would cost the 2-core host more than the vesperd being measured. Each thread sleeps
//! between batches, so the whole kit's CPU is what writing the records costs; the bench
//! reads it from /proc and reports it beside vesperd's.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vesper_proto::{Message, Records, encode_frame};

use crate::hostile::{Conn, accept_first_load, hello};

const BATCH_EVERY: Duration = Duration::from_millis(100);
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct Options {
    pub dir: PathBuf,
    pub count: usize,
    pub rate: u64,
    pub record_bytes: usize,
}

/// Writes all of `buf` to a non-blocking socket, waiting while its buffer is full.
fn write_all_nb(c: &mut Conn, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match c.s.write(buf) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads and discards what vesperd sent (its heartbeats): a peer that never reads
/// would fill the socket and stall vesperd's writes to it. False once vesperd hung up.
fn drain(c: &mut Conn, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        match c.s.read(buf) {
            Ok(0) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `phase`: this agent's offset into the batch period. Independent VMs do not send in
/// step; 500 agents that did would hand vesperd one burst every 100 ms.
fn stream(c: &mut Conn, opt: &Options, boot: &str, phase: Duration) -> io::Result<()> {
    hello(c, boot)?;
    let probe_id = accept_first_load(c)?;
    c.s.set_nonblocking(true)?;
    // Fractional records per batch carry over, so any rate holds on average.
    let per_batch = opt.rate as f64 * BATCH_EVERY.as_secs_f64();
    let (mut owed, mut first_seq) = (0.0, 0u64);
    let started = Instant::now();
    let (mut next, mut next_hb) = (started + phase, started + phase);
    std::thread::sleep(phase);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !drain(c, &mut buf)? {
            return Ok(());
        }
        owed += per_batch;
        let n = owed as usize;
        owed -= n as f64;
        if n > 0 {
            let f = encode_frame(
                &Message::Records(Records {
                    probe_id,
                    first_seq,
                    kernel_drops: 0,
                    agent_drops: 0,
                    records: vec![vec![0u8; opt.record_bytes]; n],
                }),
                c.seq,
            );
            c.seq += 1;
            write_all_nb(c, &f)?;
            first_seq += n as u64;
        }
        let now = Instant::now();
        if now >= next_hb {
            let f = encode_frame(
                &Message::Heartbeat {
                    uptime_ms: started.elapsed().as_millis() as u64,
                    probes: 1,
                },
                c.seq,
            );
            c.seq += 1;
            write_all_nb(c, &f)?;
            next_hb += HEARTBEAT_EVERY;
        }
        // Absolute deadlines: a late batch does not shift the ones after it, and after a
        // pause (the bench stops the kit) whole periods are skipped, keeping the phase.
        next += BATCH_EVERY;
        let now = Instant::now();
        while next <= now {
            next += BATCH_EVERY;
        }
        std::thread::sleep(next - now);
    }
}

fn serve(path: &Path, opt: &Options, i: usize) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for (n, s) in l.incoming().enumerate() {
        let mut c = Conn::new(s?);
        let phase = BATCH_EVERY.mul_f64(i as f64 / opt.count.max(1) as f64);
        match stream(&mut c, opt, &format!("fake{i}-{n}"), phase) {
            // vesperd went away: it is stopped between runs.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                ) => {}
            Err(e) => eprintln!("fake-agents: {}: connection ended: {e}", path.display()),
            Ok(()) => {}
        }
    }
    Ok(())
}

/// Starts every agent; returns only if one cannot listen.
pub fn run(opt: &Options) -> io::Result<()> {
    std::fs::create_dir_all(&opt.dir)?;
    let mut threads = Vec::with_capacity(opt.count);
    for i in 0..opt.count {
        let path = opt.dir.join(format!("fake{i}.sock"));
        let opt = opt.clone();
        // Small stacks: 500 threads of the default 8 MiB reserve 4 GiB of address space.
        threads.push(
            std::thread::Builder::new()
                .name(format!("fake{i}"))
                .stack_size(256 * 1024)
                .spawn(move || serve(&path, &opt, i))?,
        );
    }
    println!("{} agents listening in {}", opt.count, opt.dir.display());
    let _ = io::stdout().flush();
    for t in threads {
        match t.join() {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::other("an agent thread panicked")),
        }
    }
    Ok(())
}
