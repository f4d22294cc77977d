//! The host side of the channel to a guest agent, behind a trait so sessions can be
//! driven by an in-memory stream and a fake guest in tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::SystemTime;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream to one agent.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

pub type BoxStream = Box<dyn AgentStream>;
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<BoxStream>> + Send + 'a>>;

/// Opens a new stream to the agent each time it is asked.
pub trait Connector: Send + Sync {
    fn connect(&self) -> ConnectFuture<'_>;
    fn describe(&self) -> String;
    /// When the channel came into being on this host (the VM's QEMU created its socket),
    /// if known: the VM cannot have been observed here before then.
    fn appeared_at(&self) -> Option<SystemTime> {
        None
    }
}

/// A failed connect that means the VM's channel is not on this host: no socket file, or a
/// socket file nobody serves (its QEMU was killed and left it behind). In a cluster the VM
/// then runs on another node, or nowhere; neither is this host's fault.
pub fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
    )
}

pub use vesper_config::ChannelSpec;

impl Connector for ChannelSpec {
    fn connect(&self) -> ConnectFuture<'_> {
        Box::pin(async move {
            match self {
                ChannelSpec::Unix(p) => {
                    let s = tokio::net::UnixStream::connect(p).await?;
                    Ok(Box::new(s) as BoxStream)
                }
            }
        })
    }
    fn describe(&self) -> String {
        match self {
            ChannelSpec::Unix(p) => format!("unix:{}", p.display()),
        }
    }
    fn appeared_at(&self) -> Option<SystemTime> {
        match self {
            // A socket's inode is made by bind(2) and not touched by traffic.
            ChannelSpec::Unix(p) => std::fs::metadata(p).and_then(|m| m.modified()).ok(),
        }
    }
}
