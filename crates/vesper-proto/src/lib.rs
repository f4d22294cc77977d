//! The Vesper wire format, in one place.
//!
//! Host (vesperd) and guest (vesper-agent) exchange *frames* over a byte stream
//! (virtio-serial port, vsock or a unix socket). A frame is a fixed 24-byte header
//! followed by a payload of at most the receiver's configured limit:
//!
//! ```text
//! offset size field
//!      0    4 magic     b"VSPR"
//!      4    1 version   PROTOCOL_VERSION
//!      5    1 kind      MessageKind
//!      6    2 flags     must be 0 (reserved)
//!      8    4 length    payload length, little endian, <= the receiver's limit
//!     12    8 seq       frame sequence number per direction, starts at 0, +1 per frame
//!     20    4 crc       CRC-32 (IEEE) of bytes 0..20 and the payload
//! ```
//!
//! All integers are little endian. Payload encodings are in [`message`]. The decoder
//! ([`FrameDecoder`]) accepts arbitrary bytes in arbitrary chunks, never panics and
//! never buffers more than one header plus one payload of the configured limit.

mod codec;
mod frame;
pub mod message;

pub use codec::{Reader, Writer};
pub use frame::{
    DEFAULT_MAX_PAYLOAD, DecodeError, Frame, FrameDecoder, FrameHeader, HEADER_LEN, MAGIC,
    PROTOCOL_VERSION, encode_frame,
};
pub use message::{
    AttachKind, AttachPoint, EventFormat, Hello, KernelFileKind, KernelFilePiece, KernelInfo,
    LoadProbe, MapEntries, Message, MessageKind, ProbeStat, Records,
};
