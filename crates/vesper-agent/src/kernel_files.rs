//! The guest kernel's BTF and symbol table, handed to the host in pieces on request (the host
//! compiles against them; nothing here parses them).
//!
//! BTF is a sysfs file of known size, read at any offset. The symbol table is streamed: only
//! text symbols (`t`/`T`, the ones a stack holds) of `/proc/kallsyms`, read once front to back;
//! a request for offset 0 starts it again, any other offset must be where the last piece
//! ended.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vesper_proto::{KernelFileKind, KernelFilePiece};

use crate::sys;

const BTF: &str = "/sys/kernel/btf/vmlinux";
const KALLSYMS: &str = "/proc/kallsyms";
const NOTES: &str = "/sys/kernel/notes";
/// The most one piece carries, whatever the host asks for: a piece holds up the agent's loop
/// while it is read, and records wait behind it on the wire.
const MAX_PIECE: u32 = 256 * 1024;
/// ELF note type of the GNU build id.
const NT_GNU_BUILD_ID: u32 = 3;

/// The running kernel's identity: its GNU build id in hex, or (a kernel built without one)
/// its release and version string.
pub fn kernel_id() -> String {
    if let Some(id) = std::fs::read(NOTES).ok().and_then(|n| build_id(&n)) {
        return id;
    }
    let version = std::fs::read_to_string("/proc/sys/kernel/version").unwrap_or_default();
    format!("{} {}", sys::kernel_release(), version.trim())
}

/// The GNU build id in a sequence of ELF notes (4-byte aligned, as the kernel writes them).
fn build_id(notes: &[u8]) -> Option<String> {
    let word = |at: usize| -> Option<u32> {
        let b = notes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let align = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0;
    while at + 12 <= notes.len() {
        let namesz = word(at)? as usize;
        let descsz = word(at + 4)? as usize;
        let ty = word(at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(align(namesz)?)?;
        let end = desc_at.checked_add(align(descsz)?)?;
        if ty == NT_GNU_BUILD_ID && notes.get(name_at..name_at + namesz)? == b"GNU\0" {
            let desc = notes.get(desc_at..desc_at + descsz)?;
            return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
        }
        at = end;
    }
    None
}

/// Where the symbol stream is.
struct SymbolStream {
    lines: BufReader<File>,
    /// Bytes handed out so far.
    pos: u64,
    /// A line read that did not fit in the last piece: the next one starts with it.
    carry: Vec<u8>,
    done: bool,
}

/// The agent's side of kernel-file transfers (one per connection).
#[derive(Default)]
pub struct KernelFiles {
    id: Option<String>,
    symbols: Option<SymbolStream>,
}

impl KernelFiles {
    /// One piece of `file` from `offset`, at most `max_len` bytes (0: the id and size only).
    pub fn piece(
        &mut self,
        file: KernelFileKind,
        offset: u64,
        max_len: u32,
    ) -> Result<KernelFilePiece, String> {
        let kernel_id = self.id.get_or_insert_with(kernel_id).clone();
        let max = max_len.min(MAX_PIECE) as usize;
        match file {
            KernelFileKind::Btf => {
                let f = File::open(BTF).map_err(|e| format!("{BTF}: {e}"))?;
                let total = f.metadata().map_err(|e| format!("{BTF}: {e}"))?.len();
                let want = (total.saturating_sub(offset) as usize).min(max);
                let mut data = vec![0u8; want];
                let mut got = 0;
                while got < want {
                    match f.read_at(&mut data[got..], offset + got as u64) {
                        Ok(0) => break,
                        Ok(n) => got += n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(format!("{BTF}: {e}")),
                    }
                }
                data.truncate(got);
                Ok(KernelFilePiece {
                    file,
                    kernel_id,
                    total,
                    offset,
                    eof: offset + got as u64 >= total,
                    data,
                })
            }
            KernelFileKind::Symbols => {
                let stream = self.symbol_stream(offset)?;
                // Whole lines only, and never more than asked for: a line that does not fit
                // waits for the next piece.
                // Sized at once: grown by doubling, the buffer would leave its smaller
                // steps scattered in the heap.
                let mut data = Vec::with_capacity(max);
                data.append(&mut stream.carry);
                let mut line = Vec::new();
                while !stream.done {
                    line.clear();
                    match stream.lines.read_until(b'\n', &mut line) {
                        Ok(0) => stream.done = true,
                        Ok(_) if is_text_symbol(&line) => {
                            if !line.ends_with(b"\n") {
                                line.push(b'\n');
                            }
                            if data.len() + line.len() > max {
                                stream.carry = std::mem::take(&mut line);
                                break;
                            }
                            data.extend_from_slice(&line);
                        }
                        Ok(_) => {}
                        Err(e) => return Err(format!("{KALLSYMS}: {e}")),
                    }
                }
                let piece = KernelFilePiece {
                    file,
                    kernel_id,
                    total: 0,
                    offset,
                    eof: stream.done && stream.carry.is_empty(),
                    data,
                };
                stream.pos += piece.data.len() as u64;
                Ok(piece)
            }
        }
    }

    fn symbol_stream(&mut self, offset: u64) -> Result<&mut SymbolStream, String> {
        let at = self.symbols.as_ref().map(|s| s.pos);
        if offset == 0 && at != Some(0) {
            let f = File::open(Path::new(KALLSYMS)).map_err(|e| format!("{KALLSYMS}: {e}"))?;
            self.symbols = Some(SymbolStream {
                lines: BufReader::new(f),
                pos: 0,
                carry: Vec::new(),
                done: false,
            });
        } else if at != Some(offset) {
            return Err(format!(
                "symbols are streamed in order: offset {offset} asked, the stream is at {}",
                at.map_or("its start".to_string(), |p| p.to_string())
            ));
        }
        self.symbols
            .as_mut()
            .ok_or_else(|| "the symbol stream is not open".to_string())
    }
}

/// `ffffffff81000000 T _stext` or `... t name\t[module]`: a text symbol.
fn is_text_symbol(line: &[u8]) -> bool {
    let mut parts = line.split(|&b| b == b' ');
    let _addr = parts.next();
    matches!(parts.next(), Some(b"t" | b"T"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_gnu_build_id_among_notes() {
        let mut notes = Vec::new();
        // A Xen note first (name "Xen", type 1), then the build id.
        for (name, ty, desc) in [
            (&b"Xen\0"[..], 1u32, &[1u8, 2, 3][..]),
            (
                &b"GNU\0"[..],
                NT_GNU_BUILD_ID,
                &[0xde, 0xad, 0xbe, 0xef][..],
            ),
        ] {
            notes.extend((name.len() as u32).to_le_bytes());
            notes.extend((desc.len() as u32).to_le_bytes());
            notes.extend(ty.to_le_bytes());
            notes.extend(name);
            notes.extend(desc);
            notes.resize(notes.len().next_multiple_of(4), 0);
        }
        assert_eq!(build_id(&notes).as_deref(), Some("deadbeef"));
        assert_eq!(build_id(&notes[..20]), None);
        assert_eq!(build_id(&[0xff; 40]), None);
    }

    #[test]
    fn keeps_text_symbols_only() {
        assert!(is_text_symbol(b"ffffffff81000000 T _stext\n"));
        assert!(is_text_symbol(b"ffffffffc0000000 t foo\t[mod]\n"));
        assert!(!is_text_symbol(b"ffffffff82000000 D jiffies\n"));
        assert!(!is_text_symbol(b"garbage"));
    }
}
