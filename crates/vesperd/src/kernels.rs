//! Guest kernels' types and symbols, kept per kernel build: a second VM on the same kernel,
//! or the same VM after a reconnect or a vesperd restart, costs no transfer.
//!
//! In memory, one [`GuestKernel`] per kernel id, shared by every session on it; on disk,
//! `state_dir/kernels/<key>/{btf,symbols}` as the guest sent them (parsed again on load, so a
//! file damaged on disk is refused like a hostile guest's). Disk and parsing run on the
//! blocking pool, never on the runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vesper_probe::kernel_symbols::KernelSymbols;
use vesper_probe::kernel_types::{KernelTypes, TypesError};

/// A guest kernel's type information and text symbols.
#[derive(Debug)]
pub struct GuestKernel {
    /// The kernel's GNU build id (or release and version), as its agent reported it.
    pub id: String,
    pub types: Arc<KernelTypes>,
    pub symbols: KernelSymbols,
    pub btf_bytes: usize,
    pub symbol_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelCacheError {
    #[error("the guest's BTF is malformed: {0}")]
    Types(#[from] TypesError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Every guest kernel this vesperd has seen.
#[derive(Debug, Default)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    kernels: Mutex<HashMap<String, Arc<GuestKernel>>>,
}

impl KernelCache {
    /// A cache kept in `dir` across restarts (`None`: memory only, as in tests).
    pub fn new(dir: Option<PathBuf>) -> Arc<KernelCache> {
        Arc::new(KernelCache {
            dir,
            kernels: Mutex::new(HashMap::new()),
        })
    }

    /// The kernel, if already in memory (cheap: the runtime may call it).
    pub fn in_memory(&self, id: &str) -> Option<Arc<GuestKernel>> {
        self.lock().get(id).cloned()
    }

    /// The kernel from disk, parsed (blocking: call it on the blocking pool). `Ok(None)` when
    /// it was never stored.
    pub fn load(&self, id: &str) -> Result<Option<Arc<GuestKernel>>, KernelCacheError> {
        if let Some(k) = self.in_memory(id) {
            return Ok(Some(k));
        }
        let Some(dir) = self.entry_dir(id) else {
            return Ok(None);
        };
        let read = |name: &str| -> Result<Option<Vec<u8>>, KernelCacheError> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(KernelCacheError::Io { path, source }),
            }
        };
        let (Some(btf), Some(symbols)) = (read("btf")?, read("symbols")?) else {
            return Ok(None);
        };
        self.remember(id, &btf, &symbols).map(Some)
    }

    /// Parses what a guest sent, keeps it in memory and writes it to disk (blocking). A disk
    /// that refuses is logged: the kernel is still known for this run.
    pub fn store(
        &self,
        id: &str,
        btf: &[u8],
        symbols: &[u8],
    ) -> Result<Arc<GuestKernel>, KernelCacheError> {
        let k = self.remember(id, btf, symbols)?;
        if let Some(dir) = self.entry_dir(id)
            && let Err(e) = write_entry(&dir, btf, symbols)
        {
            tracing::warn!(kernel = %id, error = %e, "the guest kernel's types are not cached on disk");
        }
        Ok(k)
    }

    fn remember(
        &self,
        id: &str,
        btf: &[u8],
        symbols: &[u8],
    ) -> Result<Arc<GuestKernel>, KernelCacheError> {
        let k = Arc::new(GuestKernel {
            id: id.to_string(),
            types: Arc::new(KernelTypes::parse(btf)?),
            symbols: KernelSymbols::parse(symbols),
            btf_bytes: btf.len(),
            symbol_bytes: symbols.len(),
        });
        Ok(self.lock().entry(id.to_string()).or_insert(k).clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<GuestKernel>>> {
        match self.kernels.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn entry_dir(&self, id: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(entry_key(id)))
    }
}

/// A directory name for a kernel id: a build id is hex already; anything else (a guest's
/// free text) becomes a hash of it, so no id can name a path.
pub fn entry_key(id: &str) -> String {
    let hex = id.len() >= 8 && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if hex {
        return id.to_ascii_lowercase();
    }
    // FNV-1a: stable across builds, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("v-{h:016x}")
}

/// Writes both files through temporaries, so a crash leaves the entry whole or absent.
fn write_entry(dir: &Path, btf: &[u8], symbols: &[u8]) -> Result<(), KernelCacheError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| KernelCacheError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (name, bytes) in [("btf", btf), ("symbols", symbols)] {
        let tmp = dir.join(format!("{name}.tmp"));
        std::fs::write(&tmp, bytes).map_err(io(&tmp))?;
        std::fs::rename(&tmp, dir.join(name)).map_err(io(&tmp))?;
    }
    Ok(())
}
