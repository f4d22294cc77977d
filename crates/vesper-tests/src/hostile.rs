//! `vesper-testkit hostile-agent PATH MODE`: an attacker's program in place of the guest
//! agent. It listens where the agent would (`unix-listen:PATH`), greets vesperd like an
//! agent, then misbehaves in one way per connection:
//!
//! | mode | what it sends |
//! |------|---------------|
//! | `garbage` | bytes that are not frames |
//! | `bad-crc` | a heartbeat frame whose checksum is wrong |
//! | `oversize` | a frame header that claims 4 GiB |
//! | `truncated` | half a frame, then nothing |
//! | `lying-length` | a well-framed batch that claims 1000 records and carries 1 |
//! | `flood` | valid batches of records for a probe never loaded, as fast as the socket takes them |
//! | `loaded-flood` | answers like an agent up to the first probe load, then valid records for that probe as fast as the socket takes them |
//! | `replay` | answers like an agent up to the first probe load, then sends one batch twice (replayed sequence numbers) |

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::Duration;

use vesper_proto::message::caps;
use vesper_proto::{
    EventFormat, FrameDecoder, Hello, KernelInfo, Message, Records, Writer, encode_frame,
};

pub(crate) struct Conn {
    pub(crate) s: UnixStream,
    pub(crate) seq: u64,
    /// vesperd's frames, in order (the decoder checks their sequence numbers).
    pub(crate) dec: FrameDecoder,
}

impl Conn {
    pub(crate) fn new(s: UnixStream) -> Conn {
        Conn {
            s,
            seq: 0,
            dec: FrameDecoder::new(vesper_proto::DEFAULT_MAX_PAYLOAD),
        }
    }

    pub(crate) fn send(&mut self, msg: &Message) -> io::Result<()> {
        let f = encode_frame(msg, self.seq);
        self.seq += 1;
        self.s.write_all(&f)
    }

    /// Reads frames from vesperd until `want` matches one.
    fn wait_for<T>(&mut self, want: impl Fn(&Message) -> Option<T>) -> io::Result<T> {
        let mut buf = [0u8; 65536];
        loop {
            let n = self.s.read(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let frames = self
                .dec
                .decode_all(&buf[..n])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            for f in frames {
                if let Some(t) = f.message().ok().as_ref().and_then(&want) {
                    return Ok(t);
                }
            }
        }
    }
}

/// A frame around `payload` with a correct checksum, whatever the payload says.
fn raw_frame(kind: u8, payload: &[u8], seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&vesper_proto::MAGIC);
    out.push(vesper_proto::PROTOCOL_VERSION);
    out.push(kind);
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn batch(probe_id: u32, first_seq: u64, count: usize) -> Message {
    Message::Records(Records {
        probe_id,
        first_seq,
        kernel_drops: 0,
        agent_drops: 0,
        records: (0..count).map(|i| vec![i as u8; 64]).collect(),
    })
}

/// Answers like a real agent up to the first probe load (kernel formats from this host's
/// tracefs, then "loaded"); returns the probe's id.
pub(crate) fn accept_first_load(c: &mut Conn) -> io::Result<u32> {
    let events = c.wait_for(|m| match m {
        Message::KernelInfoRequest { events } => Some(events.clone()),
        _ => None,
    })?;
    let formats = events
        .into_iter()
        .map(|event| {
            let path = format!(
                "/sys/kernel/tracing/events/{}/format",
                event.replace(':', "/")
            );
            EventFormat {
                format: std::fs::read_to_string(path).ok(),
                event,
            }
        })
        .collect();
    c.send(&Message::KernelInfo(KernelInfo {
        release: "6.1.0-hostile".into(),
        btf: false,
        formats,
    }))?;
    let probe_id = c.wait_for(|m| match m {
        Message::LoadProbe(l) => Some(l.probe_id),
        _ => None,
    })?;
    c.send(&Message::ProbeLoaded {
        probe_id,
        load_us: 1,
    })?;
    Ok(probe_id)
}

/// The greeting an agent opens its connection with.
pub(crate) fn hello(c: &mut Conn, boot_id: &str) -> io::Result<()> {
    c.send(&Message::Hello(Hello {
        agent_version: "hostile".into(),
        kernel_release: "6.1.0-hostile".into(),
        capabilities: caps::RINGBUF | caps::TRACEPOINT,
        boot_id: boot_id.into(),
    }))
}

fn misbehave(c: &mut Conn, mode: &str) -> io::Result<()> {
    hello(c, "hostile")?;
    std::thread::sleep(Duration::from_millis(200));
    match mode {
        "garbage" => {
            c.s.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xfe not a frame")?
        }
        "bad-crc" => {
            let mut f = encode_frame(
                &Message::Heartbeat {
                    uptime_ms: 1,
                    probes: 0,
                },
                c.seq,
            );
            f[20] ^= 0xff;
            c.s.write_all(&f)?;
        }
        "oversize" => {
            let mut f = encode_frame(
                &Message::Heartbeat {
                    uptime_ms: 1,
                    probes: 0,
                },
                c.seq,
            );
            f[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            c.s.write_all(&f[..vesper_proto::HEADER_LEN])?;
        }
        "truncated" => {
            let f = encode_frame(&batch(1, 0, 10), c.seq);
            c.s.write_all(&f[..f.len() / 2])?;
        }
        "lying-length" => {
            let mut w = Writer::new();
            w.u32(1).u64(0).u64(0).u64(0).u32(1000).bytes(&[7u8; 16]);
            c.s.write_all(&raw_frame(10, &w.into_inner(), c.seq))?;
        }
        "flood" => {
            let mut first = 0;
            loop {
                c.send(&batch(999, first, 256))?;
                first += 256;
            }
        }
        "replay" => {
            let probe_id = accept_first_load(c)?;
            std::thread::sleep(Duration::from_millis(200));
            c.send(&batch(probe_id, 0, 10))?;
            c.send(&batch(probe_id, 0, 10))?;
        }
        "loaded-flood" => {
            // Zeroed records: schema 0, every field 0 or empty; valid for any probe whose
            // records are at most 256 bytes.
            let probe_id = accept_first_load(c)?;
            let mut first = 0;
            loop {
                c.send(&Message::Records(Records {
                    probe_id,
                    first_seq: first,
                    kernel_drops: 0,
                    agent_drops: 0,
                    records: vec![vec![0u8; 256]; 256],
                }))?;
                first += 256;
            }
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unknown mode {other}"),
            ));
        }
    }
    // Stay on the line until vesperd hangs up.
    let mut sink = [0u8; 4096];
    while c.s.read(&mut sink)? > 0 {}
    Ok(())
}

pub fn run(path: &str, mode: &str) -> io::Result<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    for s in l.incoming() {
        let mut c = Conn::new(s?);
        if let Err(e) = misbehave(&mut c, mode) {
            if e.kind() == io::ErrorKind::InvalidInput {
                return Err(e);
            }
            eprintln!("hostile-agent {mode}: connection ended: {e}");
        }
    }
    Ok(())
}
