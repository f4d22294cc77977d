//! An in-memory channel and a fake guest agent, for driving sessions in tests without
//! a kernel or a VM.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::{Mutex, mpsc};
use vesper_proto::{DEFAULT_MAX_PAYLOAD, FrameDecoder, Message, encode_frame};

use crate::channel::{BoxStream, ConnectFuture, Connector};

/// Hands out in-memory streams; each `connect` takes the next one a test offered.
#[derive(Debug)]
pub struct MemoryConnector {
    incoming: Mutex<mpsc::Receiver<std::io::Result<DuplexStream>>>,
}

/// The test's side of a [`MemoryConnector`]: call [`MemoryListener::guest`] to connect a new fake guest.
#[derive(Debug, Clone)]
pub struct MemoryListener {
    offer: mpsc::Sender<std::io::Result<DuplexStream>>,
}

pub fn memory_channel() -> (MemoryConnector, MemoryListener) {
    let (offer, rx) = mpsc::channel(4);
    (
        MemoryConnector {
            incoming: Mutex::new(rx),
        },
        MemoryListener { offer },
    )
}

impl Connector for MemoryConnector {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            let mut rx = self.incoming.lock().await;
            match rx.recv().await {
                Some(s) => s.map(|s| Box::new(s) as BoxStream),
                None => Err(std::io::Error::other("memory channel closed")),
            }
        })
    }
    fn describe(&self) -> String {
        "memory".into()
    }
}

impl MemoryListener {
    /// The next connect finds no channel, as when the VM runs on another host.
    pub async fn absent(&self) {
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        self.offer.send(Err(gone)).await.expect("session gone");
    }

    /// A new fake guest, connected to the session.
    pub async fn guest(&self) -> FakeGuest {
        let (host, guest) = tokio::io::duplex(1 << 20);
        self.offer.send(Ok(host)).await.expect("session gone");
        FakeGuest {
            stream: guest,
            dec: FrameDecoder::new(DEFAULT_MAX_PAYLOAD),
            seq: 0,
            pending: Vec::new(),
        }
    }
}

/// Speaks the agent's side of the protocol, as the test tells it to.
#[derive(Debug)]
pub struct FakeGuest {
    pub stream: DuplexStream,
    dec: FrameDecoder,
    seq: u64,
    /// Bytes read but not taken by the decoder yet (it takes one frame at a time).
    pending: Vec<u8>,
}

impl FakeGuest {
    pub async fn send(&mut self, msg: &Message) {
        let f = encode_frame(msg, self.seq);
        self.seq += 1;
        self.stream.write_all(&f).await.expect("write to session");
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to session");
    }

    /// The next message from the host (panics after 5 s: a test bug or a hang).
    pub async fn recv(&mut self) -> Message {
        let mut buf = [0u8; 4096];
        loop {
            loop {
                if let Some(f) = self.dec.next_frame().expect("host sent a bad frame") {
                    return f.message().expect("host sent a bad message");
                }
                let used = self.dec.push(&self.pending);
                self.pending.drain(..used);
                if used == 0 {
                    break;
                }
            }
            let n = tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf))
                .await
                .expect("no message from the host within 5 s")
                .expect("read");
            assert!(n > 0, "host closed the channel");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}
