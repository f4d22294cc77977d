//! Frame header, encoder and the incremental, bounded decoder.

use crate::message::{Message, MessageKind};

pub const MAGIC: [u8; 4] = *b"VSPR";
pub const PROTOCOL_VERSION: u8 = 1;
pub const HEADER_LEN: usize = 24;
/// Default payload limit: a record batch is at most 256 KiB, a probe object far less.
pub const DEFAULT_MAX_PAYLOAD: u32 = 1 << 20;

/// Everything that can be wrong with bytes from a peer. None of these panic; after
/// any of them the stream is out of sync and the session must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("bad magic {0:02x?} (expected \"VSPR\")")]
    BadMagic([u8; 4]),
    #[error("unsupported protocol version {0} (this side speaks {PROTOCOL_VERSION})")]
    BadVersion(u8),
    #[error("reserved flags set: {0:#06x}")]
    BadFlags(u16),
    #[error("frame payload of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: u32, limit: u32 },
    #[error("CRC mismatch: header says {expected:#010x}, data gives {actual:#010x}")]
    BadCrc { expected: u32, actual: u32 },
    #[error("frame sequence {got}, expected {expected}")]
    BadSequence { expected: u64, got: u64 },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("payload truncated: needed {needed} bytes, {remaining} remain")]
    Truncated { needed: usize, remaining: usize },
    #[error("{0} unexpected trailing bytes in payload")]
    TrailingBytes(usize),
    #[error("string is not valid UTF-8")]
    BadUtf8,
    #[error("invalid value {value} for {field}")]
    BadValue { field: &'static str, value: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: u8,
    pub length: u32,
    pub seq: u64,
    pub crc: u32,
}

impl FrameHeader {
    fn parse(raw: &[u8; HEADER_LEN], limit: u32) -> Result<Self, DecodeError> {
        let magic = [raw[0], raw[1], raw[2], raw[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if raw[4] != PROTOCOL_VERSION {
            return Err(DecodeError::BadVersion(raw[4]));
        }
        let flags = u16::from_le_bytes([raw[6], raw[7]]);
        if flags != 0 {
            return Err(DecodeError::BadFlags(flags));
        }
        let length = u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]);
        if length > limit {
            return Err(DecodeError::TooLarge { len: length, limit });
        }
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&raw[12..20]);
        Ok(Self {
            kind: raw[5],
            length,
            seq: u64::from_le_bytes(seq),
            crc: u32::from_le_bytes([raw[20], raw[21], raw[22], raw[23]]),
        })
    }
}

/// One checked frame: a header that passed every test and its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: u8,
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Decodes the payload as a typed message.
    pub fn message(&self) -> Result<Message, DecodeError> {
        let kind = MessageKind::try_from(self.kind)?;
        Message::decode(kind, &self.payload)
    }
    /// Total bytes this frame took on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }
}

/// Encodes `msg` as one frame with sequence number `seq`.
pub fn encode_frame(msg: &Message, seq: u64) -> Vec<u8> {
    let payload = msg.encode();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(PROTOCOL_VERSION);
    out.push(msg.kind() as u8);
    out.extend_from_slice(&0u16.to_le_bytes());
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out[..20]);
    h.update(&payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Incremental decoder for a byte stream of frames.
///
/// Feed it any chunks with [`push`](Self::push) (it takes only what completes the
/// current frame) and collect frames with [`next_frame`](Self::next_frame). It holds
/// at most `HEADER_LEN + max_payload` bytes. The first error is sticky: a stream that
/// lost sync cannot be trusted again.
#[derive(Debug)]
pub struct FrameDecoder {
    max_payload: u32,
    header: [u8; HEADER_LEN],
    header_len: usize,
    parsed: Option<FrameHeader>,
    payload: Vec<u8>,
    next_seq: u64,
    error: Option<DecodeError>,
    bytes_in: u64,
}

impl FrameDecoder {
    pub fn new(max_payload: u32) -> Self {
        Self {
            max_payload,
            header: [0; HEADER_LEN],
            header_len: 0,
            parsed: None,
            payload: Vec::new(),
            next_seq: 0,
            error: None,
            bytes_in: 0,
        }
    }

    /// Total bytes accepted so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// Takes bytes from `input` up to the end of the current frame and returns how
    /// many it took. Returns 0 when a complete frame (or an error) is waiting in
    /// [`next_frame`](Self::next_frame).
    pub fn push(&mut self, input: &[u8]) -> usize {
        if self.error.is_some() || self.frame_complete() {
            return 0;
        }
        let mut used = 0;
        if self.parsed.is_none() {
            let n = (HEADER_LEN - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&input[..n]);
            self.header_len += n;
            used += n;
            if self.header_len < HEADER_LEN {
                self.bytes_in += used as u64;
                return used;
            }
            match FrameHeader::parse(&self.header, self.max_payload) {
                Ok(h) => {
                    // Bounded by max_payload, checked in parse.
                    self.payload = Vec::with_capacity(h.length as usize);
                    self.parsed = Some(h);
                }
                Err(e) => {
                    self.error = Some(e);
                    self.bytes_in += used as u64;
                    return used;
                }
            }
        }
        if let Some(h) = self.parsed {
            let want = h.length as usize - self.payload.len();
            let n = want.min(input.len() - used);
            self.payload.extend_from_slice(&input[used..used + n]);
            used += n;
        }
        self.bytes_in += used as u64;
        used
    }

    fn frame_complete(&self) -> bool {
        matches!(self.parsed, Some(h) if self.payload.len() == h.length as usize)
    }

    /// The next complete, checked frame, `Ok(None)` if more bytes are needed, or the
    /// (sticky) error that broke the stream.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        if !self.frame_complete() {
            return Ok(None);
        }
        let Some(h) = self.parsed.take() else {
            return Ok(None);
        };
        self.header_len = 0;
        let payload = std::mem::take(&mut self.payload);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&self.header[..20]);
        hasher.update(&payload);
        let actual = hasher.finalize();
        let result = if actual != h.crc {
            Err(DecodeError::BadCrc {
                expected: h.crc,
                actual,
            })
        } else if h.seq != self.next_seq {
            Err(DecodeError::BadSequence {
                expected: self.next_seq,
                got: h.seq,
            })
        } else {
            self.next_seq += 1;
            Ok(Some(Frame {
                kind: h.kind,
                seq: h.seq,
                payload,
            }))
        };
        if let Err(e) = &result {
            self.error = Some(e.clone());
        }
        result
    }

    /// Convenience for callers holding a whole buffer: decodes every complete frame
    /// in `input`, keeping any partial tail for the next call.
    pub fn decode_all(&mut self, mut input: &[u8]) -> Result<Vec<Frame>, DecodeError> {
        let mut out = Vec::new();
        loop {
            let n = self.push(input);
            input = &input[n..];
            match self.next_frame()? {
                Some(f) => out.push(f),
                None if input.is_empty() || n == 0 => return Ok(out),
                None => {}
            }
        }
    }
}
