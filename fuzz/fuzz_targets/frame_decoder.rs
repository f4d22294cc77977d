//! Arbitrary bytes, in arbitrary chunks, into the frame decoder and message parser:
//! must never panic and never hold more than one frame's worth of memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vesper_proto::{FrameDecoder, HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let limit = 4096;
    let mut dec = FrameDecoder::new(limit);
    for chunk in rest.chunks(split as usize + 1) {
        match dec.decode_all(chunk) {
            Ok(frames) => {
                for f in frames {
                    assert!(f.payload.len() <= limit as usize);
                    assert!(f.wire_len() <= HEADER_LEN + limit as usize);
                    let _ = f.message();
                }
            }
            Err(_) => return,
        }
    }
});
