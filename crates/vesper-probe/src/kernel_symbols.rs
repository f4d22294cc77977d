//! A guest kernel's text symbols (the `t`/`T` lines of `/proc/kallsyms` the agent sends), for
//! turning a kernel stack's addresses into `function+offset` on the host.
//!
//! The text is hostile: lines are bounded, unparsable ones are counted and skipped, and the
//! table is capped, so a guest cannot make the host hold more than the cap.

/// The most symbols kept (a distribution kernel with modules has about 150k text symbols).
pub const MAX_SYMBOLS: usize = 2_000_000;
/// Longest name kept (kernel symbol names are at most 512 bytes, KSYM_NAME_LEN).
const MAX_NAME: usize = 512;

/// Text symbols sorted by address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSymbols {
    /// (address, start of the name in `names`, its length), sorted by address.
    table: Vec<(u64, u32, u16)>,
    names: String,
    /// Lines that were not "address type name [module]".
    pub skipped: usize,
}

impl KernelSymbols {
    pub fn parse(text: &[u8]) -> KernelSymbols {
        let mut s = KernelSymbols::default();
        for line in text.split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            if s.table.len() >= MAX_SYMBOLS || !s.add(line) {
                s.skipped += 1;
            }
        }
        s.table.sort_unstable_by_key(|e| e.0);
        s
    }

    fn add(&mut self, line: &[u8]) -> bool {
        let Ok(line) = std::str::from_utf8(line) else {
            return false;
        };
        let mut parts = line.split_whitespace();
        let (Some(addr), Some(_kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(addr) = u64::from_str_radix(addr, 16) else {
            return false;
        };
        // Zero addresses mean kptr_restrict hid them: useless for symbolizing.
        if addr == 0 || name.len() > MAX_NAME || self.names.len() > u32::MAX as usize - MAX_NAME {
            return false;
        }
        let module = parts
            .next()
            .map(|m| m.trim_matches(|c| c == '[' || c == ']'));
        let start = self.names.len() as u32;
        self.names.push_str(name);
        if let Some(m) = module.filter(|m| !m.is_empty() && m.len() <= 64) {
            self.names.push_str(" [");
            self.names.push_str(m);
            self.names.push(']');
        }
        let len = (self.names.len() - start as usize) as u16;
        self.table.push((addr, start, len));
        true
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The symbol `addr` falls in and the offset into it: `("do_exit", 0x1a)`.
    pub fn lookup(&self, addr: u64) -> Option<(&str, u64)> {
        let i = self.table.partition_point(|e| e.0 <= addr).checked_sub(1)?;
        let (start, off, len) = self.table[i];
        let name = self.names.get(off as usize..off as usize + len as usize)?;
        Some((name, addr - start))
    }

    /// `do_exit+0x1a`, or the address in hex when no symbol covers it.
    pub fn describe(&self, addr: u64) -> String {
        match self.lookup(addr) {
            Some((name, 0)) => name.to_string(),
            Some((name, off)) => format!("{name}+{off:#x}"),
            None => format!("{addr:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbolizes_addresses_and_skips_junk() {
        let text = b"ffffffff81000200 T second\nffffffff81000100 t first\n\
                     zzzz T bad\n0000000000000000 T hidden\nffffffffc0001000 t in_mod\t[ext4]\n\xff\xfe\n";
        let s = KernelSymbols::parse(text);
        assert_eq!(s.len(), 3);
        assert_eq!(s.skipped, 3);
        assert_eq!(s.describe(0xffffffff81000100), "first");
        assert_eq!(s.describe(0xffffffff81000150), "first+0x50");
        assert_eq!(s.describe(0xffffffff81000210), "second+0x10");
        assert_eq!(s.describe(0xffffffffc0001004), "in_mod [ext4]+0x4");
        assert_eq!(s.describe(0x10), "0x10");
    }

    #[test]
    fn this_machines_symbols() {
        let path = "/proc/kallsyms";
        let Ok(text) = std::fs::read(path) else {
            eprintln!("skipped: {path} is not readable here");
            return;
        };
        let s = KernelSymbols::parse(&text);
        if s.is_empty() {
            eprintln!("skipped: {path} shows no addresses to this user (kptr_restrict)");
            return;
        }
        let (name, _) = s.lookup(s.table[s.len() / 2].0).unwrap();
        assert!(!name.is_empty());
    }
}
