//! Getting a guest kernel's BTF and symbols, once per kernel build (see [`crate::kernels`]).
//!
//! ```text
//!  Idle ──Hello with KERNEL_FILES──▶ Identifying ──id in memory──────────────────────▶ Known
//!                                       │ id not in memory
//!                                       ▼
//!                                    Looking (disk, blocking pool) ──found───────────▶ Known
//!                                       │ not on disk
//!                                       ▼
//!                                    Receiving BTF ──eof──▶ Receiving symbols ──eof──▶ Storing ──▶ Known
//!  any state ── a piece out of order, too large, no answer for ANSWER_TIMEOUT, a BTF that
//!               does not parse ──▶ Failed (this VM only, logged once, shown in status)
//! ```
//!
//! One piece is asked for at a time, so records keep flowing between pieces and a guest
//! cannot make the host buffer more than what was asked for.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vesper_proto::{KernelFileKind, KernelFilePiece, Message};

use crate::kernels::GuestKernel;

/// What one request asks for: large enough that 5 MiB take ~80 round trips, small enough that
/// a record never waits long behind a piece.
pub const PIECE: u32 = 64 * 1024;
/// The largest file accepted from a guest (a distribution kernel's BTF is 5–6 MiB, its text
/// symbols 4–8 MiB).
pub const MAX_FILE: usize = 64 << 20;
/// How long the agent may take to answer one request.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the transfer is.
#[derive(Debug, Default)]
pub enum KernelFetch {
    /// Not started: not connected, or the agent cannot send kernel files.
    #[default]
    Idle,
    /// Asked for the BTF's kernel id and size.
    Identifying {
        since: Instant,
        started: Instant,
    },
    /// Looking for the id in the disk cache (on the blocking pool).
    Looking {
        kernel_id: String,
        total: u64,
        started: Instant,
    },
    /// Receiving `file` piece by piece; `btf` holds the BTF once it is complete.
    Receiving {
        file: KernelFileKind,
        kernel_id: String,
        total: u64,
        buf: Vec<u8>,
        btf: Option<Vec<u8>>,
        since: Instant,
        started: Instant,
    },
    /// Both files here, being parsed and cached (on the blocking pool).
    Storing {
        kernel_id: String,
        started: Instant,
    },
    /// Known: from memory or disk (`fetched_ms` None) or fetched in `fetched_ms`.
    Known {
        kernel: Arc<GuestKernel>,
        fetched_ms: Option<u64>,
    },
    Failed(String),
}

/// What the session does next.
#[derive(Debug)]
pub enum FetchStep {
    Nothing,
    Send(Message),
    /// Look the id up on disk; the answer comes back through [`KernelFetch::looked_up`].
    Lookup(String),
    /// Parse and cache; the answer comes back through [`KernelFetch::stored`].
    Store {
        kernel_id: String,
        btf: Vec<u8>,
        symbols: Vec<u8>,
    },
    /// Failed with this reason (already the state).
    Failed(String),
}

fn ask(file: KernelFileKind, offset: u64, max_len: u32) -> FetchStep {
    FetchStep::Send(Message::KernelFileRequest {
        file,
        offset,
        max_len,
    })
}

impl KernelFetch {
    /// Starts after Hello.
    pub fn start(&mut self) -> FetchStep {
        let now = Instant::now();
        *self = KernelFetch::Identifying {
            since: now,
            started: now,
        };
        ask(KernelFileKind::Btf, 0, 0)
    }

    pub fn kernel(&self) -> Option<&Arc<GuestKernel>> {
        match self {
            KernelFetch::Known { kernel, .. } => Some(kernel),
            _ => None,
        }
    }

    fn fail(&mut self, why: String) -> FetchStep {
        *self = KernelFetch::Failed(why.clone());
        FetchStep::Failed(why)
    }

    /// A piece from the agent, checked against what was asked; `in_memory` answers from the
    /// shared cache without leaving the runtime.
    pub fn on_piece(
        &mut self,
        p: KernelFilePiece,
        in_memory: impl FnOnce(&str) -> Option<Arc<GuestKernel>>,
    ) -> FetchStep {
        match std::mem::take(self) {
            KernelFetch::Identifying { started, .. } => {
                if p.file != KernelFileKind::Btf || p.offset != 0 || !p.data.is_empty() {
                    return self.fail(format!(
                        "the agent answered a request for the BTF's id with {:?} at offset {} ({} bytes)",
                        p.file,
                        p.offset,
                        p.data.len()
                    ));
                }
                if p.kernel_id.is_empty() || p.kernel_id.len() > 256 {
                    return self.fail(format!(
                        "the agent's kernel id is {} bytes (1 to 256 expected)",
                        p.kernel_id.len()
                    ));
                }
                if p.total == 0 || p.total > MAX_FILE as u64 {
                    return self.fail(format!(
                        "the guest's BTF is {} bytes (1 to {MAX_FILE} accepted)",
                        p.total
                    ));
                }
                if let Some(kernel) = in_memory(&p.kernel_id) {
                    *self = KernelFetch::Known {
                        kernel,
                        fetched_ms: None,
                    };
                    return FetchStep::Nothing;
                }
                *self = KernelFetch::Looking {
                    kernel_id: p.kernel_id.clone(),
                    total: p.total,
                    started,
                };
                FetchStep::Lookup(p.kernel_id)
            }
            KernelFetch::Receiving {
                file,
                kernel_id,
                total,
                mut buf,
                btf,
                started,
                ..
            } => {
                let expected = buf.len() as u64;
                if p.file != file || p.kernel_id != kernel_id || p.offset != expected {
                    return self.fail(format!(
                        "the agent sent {:?} of kernel {:?} at offset {} while {file:?} of {kernel_id:?} at offset {expected} was asked for",
                        p.file, p.kernel_id, p.offset
                    ));
                }
                if p.data.len() > PIECE as usize {
                    return self.fail(format!(
                        "the agent sent a piece of {} bytes ({PIECE} asked for)",
                        p.data.len()
                    ));
                }
                if buf.len() + p.data.len() > MAX_FILE {
                    return self.fail(format!(
                        "the guest's {file:?} file grew past {MAX_FILE} bytes"
                    ));
                }
                if p.data.is_empty() && !p.eof {
                    return self.fail(format!(
                        "the agent sent an empty piece of {file:?} before its end"
                    ));
                }
                buf.extend_from_slice(&p.data);
                let complete = match file {
                    KernelFileKind::Btf => p.eof || buf.len() as u64 >= total,
                    KernelFileKind::Symbols => p.eof,
                };
                if !complete {
                    let offset = buf.len() as u64;
                    *self = KernelFetch::Receiving {
                        file,
                        kernel_id,
                        total,
                        buf,
                        btf,
                        since: Instant::now(),
                        started,
                    };
                    return ask(file, offset, PIECE);
                }
                match (file, btf) {
                    (KernelFileKind::Btf, _) => {
                        if buf.len() as u64 != total {
                            return self.fail(format!(
                                "the guest's BTF ended at {} bytes, {total} were announced",
                                buf.len()
                            ));
                        }
                        *self = KernelFetch::Receiving {
                            file: KernelFileKind::Symbols,
                            kernel_id,
                            total: 0,
                            buf: Vec::new(),
                            btf: Some(buf),
                            since: Instant::now(),
                            started,
                        };
                        ask(KernelFileKind::Symbols, 0, PIECE)
                    }
                    (KernelFileKind::Symbols, Some(btf)) => {
                        *self = KernelFetch::Storing {
                            kernel_id: kernel_id.clone(),
                            started,
                        };
                        FetchStep::Store {
                            kernel_id,
                            btf,
                            symbols: buf,
                        }
                    }
                    (KernelFileKind::Symbols, None) => {
                        self.fail("symbols arrived before the BTF".to_string())
                    }
                }
            }
            other => {
                let state = other.name();
                *self = other;
                // Not asked for: a confused or hostile agent. The transfer in progress (if
                // any) stays as it is; the piece is dropped.
                tracing::debug!(state, "kernel file piece not asked for, dropped");
                FetchStep::Nothing
            }
        }
    }

    /// The disk cache's answer for the id being looked up.
    pub fn looked_up(&mut self, found: Result<Option<Arc<GuestKernel>>, String>) -> FetchStep {
        let KernelFetch::Looking {
            kernel_id,
            total,
            started,
        } = std::mem::take(self)
        else {
            return FetchStep::Nothing;
        };
        match found {
            Ok(Some(kernel)) => {
                *self = KernelFetch::Known {
                    kernel,
                    fetched_ms: None,
                };
                FetchStep::Nothing
            }
            // A cache that cannot be read is not the guest's fault: fetch it again.
            Ok(None) | Err(_) => {
                if let Err(e) = found {
                    tracing::warn!(kernel = %kernel_id, error = %e, "kernel cache unreadable; fetching from the guest");
                }
                *self = KernelFetch::Receiving {
                    file: KernelFileKind::Btf,
                    kernel_id,
                    total,
                    buf: Vec::with_capacity(total.min(MAX_FILE as u64) as usize),
                    btf: None,
                    since: Instant::now(),
                    started,
                };
                ask(KernelFileKind::Btf, 0, PIECE)
            }
        }
    }

    /// The parse-and-store result.
    pub fn stored(&mut self, result: Result<Arc<GuestKernel>, String>) -> FetchStep {
        let KernelFetch::Storing { started, .. } = std::mem::take(self) else {
            return FetchStep::Nothing;
        };
        match result {
            Ok(kernel) => {
                *self = KernelFetch::Known {
                    kernel,
                    fetched_ms: Some(started.elapsed().as_millis() as u64),
                };
                FetchStep::Nothing
            }
            Err(e) => self.fail(e),
        }
    }

    /// The agent refused a request (its error message).
    pub fn refused(&mut self, message: &str) -> FetchStep {
        match self {
            KernelFetch::Identifying { .. } | KernelFetch::Receiving { .. } => self.fail(format!(
                "the agent could not send its kernel's files: {message}"
            )),
            _ => FetchStep::Nothing,
        }
    }

    /// Called on every tick: an agent that stopped answering fails the transfer.
    /// When the agent's answer is due, while one is awaited.
    pub fn deadline(&self) -> Option<Instant> {
        match self {
            KernelFetch::Identifying { since, .. } | KernelFetch::Receiving { since, .. } => {
                Some(*since + ANSWER_TIMEOUT)
            }
            _ => None,
        }
    }

    pub fn check_timeout(&mut self) -> FetchStep {
        let since = match self {
            KernelFetch::Identifying { since, .. } | KernelFetch::Receiving { since, .. } => *since,
            _ => return FetchStep::Nothing,
        };
        if since.elapsed() > ANSWER_TIMEOUT {
            return self.fail(format!(
                "the agent did not answer a kernel file request within {} s",
                ANSWER_TIMEOUT.as_secs()
            ));
        }
        FetchStep::Nothing
    }

    fn name(&self) -> &'static str {
        match self {
            KernelFetch::Idle => "idle",
            KernelFetch::Identifying { .. } => "identifying",
            KernelFetch::Looking { .. } => "looking in the cache",
            KernelFetch::Receiving { .. } => "receiving",
            KernelFetch::Storing { .. } => "storing",
            KernelFetch::Known { .. } => "known",
            KernelFetch::Failed(_) => "failed",
        }
    }

    /// What `vesper status` shows.
    pub fn status(&self) -> KernelTypesStatus {
        let (kernel, fetched_ms) = match self {
            KernelFetch::Known { kernel, fetched_ms } => (Some(kernel), *fetched_ms),
            _ => (None, None),
        };
        let received = match self {
            KernelFetch::Receiving { buf, btf, .. } => buf.len() + btf.as_ref().map_or(0, Vec::len),
            _ => 0,
        };
        KernelTypesStatus {
            state: self.name().into(),
            kernel_id: kernel.map(|k| k.id.clone()),
            types: kernel.map(|k| k.types.len()),
            symbols: kernel.map(|k| k.symbols.len()),
            btf_bytes: kernel.map(|k| k.btf_bytes),
            symbol_bytes: kernel.map(|k| k.symbol_bytes),
            fetched_ms,
            received_bytes: received,
            error: match self {
                KernelFetch::Failed(e) => Some(e.clone()),
                _ => None,
            },
        }
    }
}

pub use vesper_api::KernelTypesStatus;

impl super::Session {
    /// Does what the transfer asks for: a request to the agent, or blocking-pool work whose
    /// answer comes back to this connection's loop.
    pub(super) async fn kernel_step(
        &mut self,
        step: FetchStep,
        wr: &mut tokio::io::WriteHalf<crate::channel::BoxStream>,
    ) -> Result<(), super::End> {
        let job = match step {
            FetchStep::Nothing => {
                if let KernelFetch::Known { kernel, fetched_ms } = &self.kernel_fetch
                    && !self.kernel_logged
                {
                    self.kernel_logged = true;
                    tracing::info!(vm = %self.name, kernel = %kernel.id, types = kernel.types.len(),
                        symbols = kernel.symbols.len(), btf_bytes = kernel.btf_bytes, fetched_ms = ?fetched_ms,
                        "guest kernel types known");
                    self.kernel.types = Some(kernel.types.clone());
                }
                return self.resume_type_waiters(wr).await;
            }
            FetchStep::Send(m) => return self.send(wr, &m).await,
            FetchStep::Failed(why) => {
                tracing::warn!(vm = %self.name, error = %why, "guest kernel types unavailable (probes that need them are refused)");
                return self.resume_type_waiters(wr).await;
            }
            FetchStep::Lookup(id) => {
                let kernels = self.kernels.clone();
                Box::new(move || {
                    super::KernelDone::Looked(kernels.load(&id).map_err(|e| e.to_string()))
                }) as Box<dyn FnOnce() -> super::KernelDone + Send>
            }
            FetchStep::Store {
                kernel_id,
                btf,
                symbols,
            } => {
                let kernels = self.kernels.clone();
                Box::new(move || {
                    super::KernelDone::Stored(
                        kernels
                            .store(&kernel_id, &btf, &symbols)
                            .map_err(|e| e.to_string()),
                    )
                })
            }
        };
        let Some(done) = self.kernel_done.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            // The connection may be gone by now: its answer is then moot.
            let _ = done.blocking_send(job());
        });
        Ok(())
    }

    /// Whether a load that needs the kernel's types must wait for them (a transfer is under
    /// way); once known or failed, [`Self::resume_type_waiters`] starts it again.
    pub(super) fn types_pending(&self) -> bool {
        matches!(
            self.kernel_fetch,
            KernelFetch::Identifying { .. }
                | KernelFetch::Looking { .. }
                | KernelFetch::Receiving { .. }
                | KernelFetch::Storing { .. }
        )
    }

    async fn resume_type_waiters(
        &mut self,
        wr: &mut tokio::io::WriteHalf<crate::channel::BoxStream>,
    ) -> Result<(), super::End> {
        if self.types_pending() {
            return Ok(());
        }
        for (probe, reply) in std::mem::take(&mut self.pending.kernel_types) {
            self.start_load(probe, reply, wr).await?;
        }
        Ok(())
    }
}
