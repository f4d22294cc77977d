//! The session against in-memory rings and a unix socket pair for the host: what it does
//! when the host is slow, absent or flooding it. No kernel, no root.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use vesper_proto::{DEFAULT_MAX_PAYLOAD, FrameDecoder, HEADER_LEN, Message, encode_frame};

use super::{Config, OUT_KEEP, READ_CHUNK, Session};
use crate::probes::LoadedProbe;
use crate::ring::fake::{self, Producer};

fn cfg() -> Config {
    Config {
        heartbeat: Duration::from_millis(5),
        batch_bytes: 4096,
        max_record: 1024,
        out_limit: 16 * 1024,
        memory_locked: false,
    }
}

/// A session with one in-memory ring per `(probe id, capacity)`, and the host's end.
fn session<'a>(
    cfg: &'a Config,
    rings: &[(u32, usize)],
) -> (Session<'a>, UnixStream, Vec<Producer>) {
    let (agent, host) = UnixStream::pair().unwrap();
    agent.set_nonblocking(true).unwrap();
    host.set_nonblocking(true).unwrap();
    let mut s = Session::new(Box::new(agent), cfg, Instant::now());
    let mut producers = Vec::new();
    for &(id, capacity) in rings {
        let (ring, producer) = fake::ring(capacity);
        s.probes.insert(
            id,
            LoadedProbe::with_ring(format!("p{id}"), Box::new(ring), None),
        );
        producers.push(producer);
    }
    (s, host, producers)
}

/// One turn, which must not wait on the host: at most until the next heartbeat.
fn turn(s: &mut Session<'_>, buf: &mut [u8]) {
    let t = Instant::now();
    s.turn(buf).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "a turn took {:?}",
        t.elapsed()
    );
}

/// What the host has been sent so far.
struct Host {
    sock: UnixStream,
    dec: FrameDecoder,
    got: Vec<Message>,
}

impl Host {
    fn new(sock: UnixStream) -> Self {
        Self {
            sock,
            dec: FrameDecoder::new(DEFAULT_MAX_PAYLOAD),
            got: Vec::new(),
        }
    }
    /// Reads what is there; the number of bytes read.
    fn read(&mut self) -> usize {
        let mut buf = [0u8; 8192];
        let mut total = 0;
        loop {
            match self.sock.read(&mut buf) {
                Ok(0) => return total,
                Ok(n) => {
                    total += n;
                    for f in self.dec.decode_all(&buf[..n]).unwrap() {
                        self.got.push(f.message().unwrap());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return total,
                Err(e) => panic!("host read: {e}"),
            }
        }
    }
    /// (records received, the last kernel and agent drop counts) of `probe`, checking that
    /// batches follow each other with no gap in sequence numbers.
    fn records(&self, probe: u32) -> (u64, u64, u64) {
        let (mut n, mut kernel, mut agent) = (0u64, 0, 0);
        for m in &self.got {
            if let Message::Records(r) = m
                && r.probe_id == probe
            {
                assert_eq!(r.first_seq, n, "a gap in the sequence numbers");
                assert!(r.kernel_drops >= kernel && r.agent_drops >= agent);
                n += r.records.len() as u64;
                (kernel, agent) = (r.kernel_drops, r.agent_drops);
            }
        }
        (n, kernel, agent)
    }
}

/// Turns while the host reads everything, until only heartbeats come (for several
/// heartbeats: the drop reports ride on them).
fn settle(s: &mut Session<'_>, host: &mut Host, buf: &mut [u8]) {
    let news = |h: &Host| {
        (h.got.iter())
            .filter(|m| !matches!(m, Message::Heartbeat { .. }))
            .count()
    };
    let mut quiet = 0;
    while quiet < 20 {
        let before = news(host);
        turn(s, buf);
        host.read();
        quiet = if news(host) == before { quiet + 1 } else { 0 };
    }
}

/// Most the session may hold for the host: its limit, the batch that crossed it, a
/// heartbeat and the quiet-drop reports.
fn out_bound(cfg: &Config) -> usize {
    cfg.out_limit + cfg.batch_bytes + cfg.max_record + 1024
}

#[test]
fn a_host_that_does_not_read_makes_the_rings_drop_and_count_not_the_agent_grow() {
    let cfg = cfg();
    let (mut s, host, producers) = session(&cfg, &[(1, 64 * 1024), (2, 64 * 1024)]);
    let mut buf = vec![0u8; READ_CHUNK];
    let mut emitted = [0u64; 2];
    // A burst far beyond the rings, the socket and the output limit together, while the
    // host reads nothing.
    for round in 0..400 {
        for (i, p) in producers.iter().enumerate() {
            for k in 0..50u64 {
                p.emit((round * 50 + k).to_le_bytes().repeat(8));
                emitted[i] += 1;
            }
        }
        turn(&mut s, &mut buf);
        assert!(
            s.out.len() <= out_bound(&cfg),
            "the agent holds {} bytes for the host",
            s.out.len()
        );
    }
    // Stuck, the loop waits in poll (until the next heartbeat), it does not spin.
    let t = Instant::now();
    for _ in 0..20 {
        turn(&mut s, &mut buf);
    }
    assert!(
        t.elapsed() >= cfg.heartbeat * 15,
        "20 turns in {:?}",
        t.elapsed()
    );
    for p in &producers {
        assert!(p.drops() > 0, "the rings never filled");
        assert!(p.waiting() > 0, "the rings were emptied into memory");
    }
    // The host comes back: every record is either delivered or counted as dropped.
    let mut host = Host::new(host);
    settle(&mut s, &mut host, &mut buf);
    for (i, p) in producers.iter().enumerate() {
        let (received, kernel_drops, agent_drops) = host.records(i as u32 + 1);
        assert_eq!(kernel_drops, p.drops());
        assert_eq!(agent_drops, 0);
        assert_eq!(received + kernel_drops, emitted[i], "probe {}", i + 1);
        assert_eq!(p.waiting(), 0);
    }
    // The buffer that held the burst is given back.
    assert!(s.out.capacity() <= OUT_KEEP, "{}", s.out.capacity());
}

#[test]
fn drops_of_a_ring_that_lets_nothing_through_reach_the_host() {
    let cfg = cfg();
    // Too small for any record: every write fails, as a full ring's would.
    let (mut s, host, producers) = session(&cfg, &[(7, 8)]);
    for _ in 0..5 {
        assert!(!producers[0].emit(vec![1; 16]));
    }
    let mut host = Host::new(host);
    let mut buf = vec![0u8; READ_CHUNK];
    settle(&mut s, &mut host, &mut buf);
    assert_eq!(host.records(7), (0, 5, 0));
}

#[test]
fn a_record_too_large_for_a_frame_is_dropped_and_counted_by_the_agent() {
    let cfg = cfg();
    let (mut s, host, producers) = session(&cfg, &[(3, 64 * 1024)]);
    producers[0].emit(vec![1; 16]);
    producers[0].emit(vec![2; cfg.max_record + 1]);
    producers[0].emit(vec![3; 16]);
    let mut host = Host::new(host);
    let mut buf = vec![0u8; READ_CHUNK];
    settle(&mut s, &mut host, &mut buf);
    assert_eq!(host.records(3), (2, 0, 1));
    assert_eq!(s.probes.stats()[0].agent_drops, 1);
}

#[test]
fn a_host_that_asks_and_never_reads_cannot_grow_the_agent() {
    let cfg = cfg();
    let (mut s, mut host, _) = session(&cfg, &[]);
    let mut buf = vec![0u8; READ_CHUNK];
    // Requests until the channel takes no more, answered into a host that does not read.
    let mut asked = 0u64;
    let mut stuck = 0;
    while stuck < 20 {
        let frame = encode_frame(&Message::ListProbes, asked);
        match host.write(&frame) {
            Ok(n) => {
                assert_eq!(n, frame.len(), "a partial frame");
                asked += 1;
                stuck = 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stuck += 1;
                turn(&mut s, &mut buf);
            }
            Err(e) => panic!("{e}"),
        }
        assert!(s.out.len() <= out_bound(&cfg), "{}", s.out.len());
        assert!(
            s.pending.len() <= READ_CHUNK / HEADER_LEN,
            "{}",
            s.pending.len()
        );
    }
    assert!(asked > 1000, "the channel took only {asked} requests");
    // Once the host reads, every request gets its answer.
    let mut host = Host::new(host);
    settle(&mut s, &mut host, &mut buf);
    let answers = host
        .got
        .iter()
        .filter(|m| matches!(m, Message::ProbeList { .. }))
        .count() as u64;
    assert_eq!(answers, asked);
}

#[test]
fn the_host_closing_ends_the_session() {
    let cfg = cfg();
    let (mut s, host, _) = session(&cfg, &[(1, 4096)]);
    drop(host);
    let mut buf = vec![0u8; READ_CHUNK];
    let end = (0..100).find_map(|_| s.turn(&mut buf).err());
    assert!(
        matches!(end, Some(super::End::HostClosed | super::End::Io(_))),
        "{end:?}"
    );
}
