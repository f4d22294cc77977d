//! The script's `config = { key = value; ... }` block (bpftrace's form), first in the
//! script. Its settings are checked here, where their source locations are at hand.
//!
//! ```text
//! config    := 'config' '=' '{' (IDENT '=' INT ((';' | ',') IDENT '=' INT)* (';' | ',')?)? '}' ';'?
//! ```

use super::{PResult, Parser};
use crate::compiler::diag::{Diagnostic, Span};
use crate::compiler::passes::lex::Tok;

/// The kernel's page size on the targets Vesper runs on (x86_64): a ring buffer's size must
/// be a power of two and a multiple of it.
pub const PAGE_BYTES: u64 = 4096;
/// Largest ring a script may ask for: a ring is kernel memory of the guest, and the
/// agent maps it (its resident size grows by as much).
pub const MAX_RING_BYTES: u64 = 256 << 20;

const KEYS: &str = "ring_kib, ring_bytes";

/// What a script's config block set (None: the compiler's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScriptConfig {
    /// Size of the probe's ring buffer in bytes: already checked.
    pub ring_bytes: Option<u32>,
}

impl Parser<'_> {
    /// At the script's start: `config = {`.
    pub(super) fn at_config(&self) -> bool {
        self.is_ident("config")
            && matches!(
                self.toks.get(self.pos + 1).map(|t| &t.tok),
                Some(Tok::Punct("="))
            )
    }

    /// The block; a mistake in one setting is reported and the others are still read.
    pub(super) fn config(&mut self, cfg: &mut ScriptConfig) -> PResult<()> {
        self.bump(); // `config` and `=`, seen by at_config
        self.bump();
        self.expect_punct(
            "{",
            Some("the config block is `config = { ring_kib = 64 }`"),
        )?;
        let mut ring: Option<Span> = None;
        while !self.eat_punct("}") {
            let (key, key_span) = self.expect_ident("a setting name or `}`")?;
            self.expect_punct("=", Some("a setting is `name = value`"))?;
            let value = self.bump();
            let Tok::Int(v) = value.tok else {
                return self.error(
                    value.span,
                    format!(
                        "`{key}` takes a number, found {}",
                        Self::describe(&value.tok)
                    ),
                    None,
                );
            };
            let at = key_span.to(value.span);
            match key.as_str() {
                "ring_kib" | "ring_bytes" => {
                    if ring.is_some() {
                        self.diags.push(
                            Diagnostic::new(at, "the ring buffer's size is set twice")
                                .hint("keep one of ring_kib and ring_bytes"),
                        );
                    } else {
                        ring = Some(at);
                        let bytes = if key == "ring_kib" {
                            v.checked_mul(1024)
                        } else {
                            Some(v)
                        };
                        match check_ring_bytes(bytes, &key, v) {
                            Ok(b) => cfg.ring_bytes = Some(b),
                            Err(d) => self.diags.push(d(at)),
                        }
                    }
                }
                other => {
                    self.diags.push(
                        Diagnostic::new(key_span, format!("unknown config setting `{other}`"))
                            .hint(format!("settings: {KEYS}")),
                    );
                }
            }
            if !self.eat_punct(";") && !self.eat_punct(",") && !self.is_punct("}") {
                let t = self.peek().clone();
                return self.error(
                    t.span,
                    format!(
                        "expected `;` or `}}` after a setting, found {}",
                        Self::describe(&t.tok)
                    ),
                    None,
                );
            }
        }
        self.eat_punct(";");
        Ok(())
    }
}

/// A ring size the kernel accepts, or the diagnostic (placed by the caller) with the fix.
fn check_ring_bytes(
    bytes: Option<i64>,
    key: &str,
    value: i64,
) -> Result<u32, impl FnOnce(Span) -> Diagnostic> {
    let ok = bytes.filter(|&b| {
        b > 0
            && (b as u64).is_power_of_two()
            && (b as u64).is_multiple_of(PAGE_BYTES)
            && b as u64 <= MAX_RING_BYTES
    });
    match ok {
        Some(b) => Ok(b as u32),
        None => Err(move |at: Span| {
            let (lo, hi) = nearest_rings(bytes.unwrap_or(i64::MAX));
            let show = |b: u64| {
                if key == "ring_kib" {
                    format!("ring_kib = {}", b / 1024)
                } else {
                    format!("ring_bytes = {b}")
                }
            };
            let fix = match (lo, hi) {
                (lo, hi) if lo != hi => format!("use {} or {}", show(lo), show(hi)),
                (b, _) => format!("use {}", show(b)),
            };
            Diagnostic::new(
                at,
                format!(
                    "{key} = {value}: a ring buffer's size must be a power of two and a multiple of the {PAGE_BYTES}-byte page, from {} KiB to {} MiB",
                    PAGE_BYTES / 1024,
                    MAX_RING_BYTES >> 20
                ),
            )
            .hint(fix)
        }),
    }
}

/// The valid sizes either side of `bytes` (the same one twice at the ends).
fn nearest_rings(bytes: i64) -> (u64, u64) {
    let b = (bytes.max(0) as u64).clamp(PAGE_BYTES, MAX_RING_BYTES);
    let hi = b.next_power_of_two();
    let lo = if hi == b { b } else { hi / 2 };
    (lo, hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_the_kernel_takes() {
        assert_eq!(
            check_ring_bytes(Some(4096), "ring_bytes", 4096).ok(),
            Some(4096)
        );
        assert_eq!(
            check_ring_bytes(Some(64 << 10), "ring_kib", 64).ok(),
            Some(64 << 10)
        );
        for bad in [0, -4096, 2048, 6 << 10, 12288, (MAX_RING_BYTES * 2) as i64] {
            assert!(
                check_ring_bytes(Some(bad), "ring_bytes", bad).is_err(),
                "{bad}"
            );
        }
        assert!(check_ring_bytes(None, "ring_kib", i64::MAX).is_err());
    }

    #[test]
    fn the_fix_names_the_nearest_valid_sizes() {
        let hint = |bytes: i64, key: &str, v: i64| match check_ring_bytes(Some(bytes), key, v) {
            Err(d) => d(Span::default()).hints.join(""),
            Ok(_) => String::new(),
        };
        assert_eq!(
            hint(100 << 10, "ring_kib", 100),
            "use ring_kib = 64 or ring_kib = 128"
        );
        assert_eq!(hint(1000, "ring_bytes", 1000), "use ring_bytes = 4096");
        assert_eq!(
            hint(1 << 30, "ring_kib", 1 << 20),
            format!("use ring_kib = {}", MAX_RING_BYTES / 1024)
        );
    }
}
