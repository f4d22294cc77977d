//! Property tests of the configuration loader (the fuzz target `config` explores the same
//! ground): no text makes it panic, and a refusal always names the file.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

use std::path::Path;

use proptest::prelude::*;
use vesperd::config::Config;

const EXAMPLE: &str = include_str!("../../../examples/pacemaker/vesper.toml");

fn refused_or_loaded(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = Config::parse(Path::new("/etc/vesper/x.toml"), text) {
        prop_assert!(e.to_string().contains("/etc/vesper/x.toml"), "{}", e);
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_text_loads_or_is_refused_naming_the_file(text in "\\PC{0,400}") {
        refused_or_loaded(&text)?;
    }

    #[test]
    fn the_example_with_a_line_dropped_or_mangled_never_panics(
        drop_line in any::<prop::sample::Index>(),
        mangle in any::<prop::sample::Index>(),
        junk in "[\\[\\]=\"a-z0-9 .{}]{0,12}",
    ) {
        let lines: Vec<&str> = EXAMPLE.lines().collect();
        let d = drop_line.index(lines.len());
        let m = mangle.index(lines.len());
        let text: Vec<String> = lines
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != d)
            .map(|(i, l)| if i == m { format!("{l}{junk}") } else { l.to_string() })
            .collect();
        refused_or_loaded(&text.join("\n"))?;
    }
}

#[test]
fn the_example_itself_loads() {
    Config::parse(Path::new("vesper.toml"), EXAMPLE).unwrap();
}
