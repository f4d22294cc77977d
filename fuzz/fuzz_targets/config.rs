//! Arbitrary text as vesperd's configuration file: must never panic; a refusal names the
//! file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = vesperd::config::Config::parse(Path::new("fuzz.toml"), text) {
        assert!(e.to_string().contains("fuzz.toml"), "{e}");
    }
});
