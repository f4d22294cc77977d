//! Parses tracefs `events/CAT/NAME/format` files: the layout of a tracepoint's record.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointField {
    pub name: String,
    /// The C declaration as the kernel prints it, e.g. `char comm[16]`, `__data_loc char[] comm`.
    pub decl: String,
    pub offset: u32,
    pub size: u32,
    pub signed: bool,
}

impl TracepointField {
    /// A fixed-size `char name[N]` array (a NUL-padded string).
    pub fn is_char_array(&self) -> bool {
        self.decl.starts_with("char ") && self.decl.ends_with(']') && !self.is_data_loc()
    }
    /// A `__data_loc` field: a u32 whose low 16 bits are the offset of the data from the
    /// start of the record and high 16 bits its length.
    pub fn is_data_loc(&self) -> bool {
        self.decl.starts_with("__data_loc")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TracepointFormat {
    pub event: String,
    pub id: Option<u32>,
    /// The event's own fields (the `common_*` header is left out).
    pub fields: Vec<TracepointField>,
}

impl TracepointFormat {
    pub fn field(&self, name: &str) -> Option<&TracepointField> {
        self.fields.iter().find(|f| f.name == name)
    }
    pub fn field_names(&self) -> Vec<&str> {
        self.fields.iter().map(|f| f.name.as_str()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tracepoint format of {event}, line {line}: {reason}")]
pub struct FormatError {
    pub event: String,
    pub line: usize,
    pub reason: String,
}

/// Parses the text of a format file. `event` is "category:name", used in messages.
pub fn parse_format(event: &str, text: &str) -> Result<TracepointFormat, FormatError> {
    let mut fields = Vec::new();
    let mut id = None;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        let err = |reason: &str| FormatError {
            event: event.to_string(),
            line: i + 1,
            reason: reason.to_string(),
        };
        if let Some(v) = line.strip_prefix("ID:") {
            id = v.trim().parse().ok();
            continue;
        }
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        // field:char comm[16];	offset:20;	size:16;	signed:0;
        let mut parts = rest.split(';').map(str::trim);
        let decl = parts
            .next()
            .ok_or_else(|| err("missing declaration"))?
            .to_string();
        let mut offset = None;
        let mut size = None;
        let mut signed = false;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.parse().ok();
            } else if let Some(v) = p.strip_prefix("signed:") {
                signed = v == "1";
            }
        }
        let name = decl_name(&decl).ok_or_else(|| err("cannot find the field name"))?;
        if name.starts_with("common_") {
            continue;
        }
        fields.push(TracepointField {
            name,
            decl,
            offset: offset.ok_or_else(|| err("missing offset"))?,
            size: size.ok_or_else(|| err("missing size"))?,
            signed,
        });
    }
    Ok(TracepointFormat {
        event: event.to_string(),
        id,
        fields,
    })
}

/// `char comm[16]` → comm, `__data_loc char[] comm` → comm, `pid_t pid` → pid.
fn decl_name(decl: &str) -> Option<String> {
    let last = decl.split_whitespace().last()?;
    let name = last.split('[').next()?.trim_start_matches('*');
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIGNAL_GENERATE: &str = "name: signal_generate\nID: 261\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int sig;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:char comm[16];\toffset:20;\tsize:16;\tsigned:0;\n\
\tfield:pid_t pid;\toffset:36;\tsize:4;\tsigned:1;\n\
\tfield:__data_loc char[] name;\toffset:40;\tsize:4;\tsigned:0;\n\nprint fmt: \"sig=%d\"\n";

    #[test]
    fn parses_fields_and_skips_common_ones() {
        let f = parse_format("signal:signal_generate", SIGNAL_GENERATE).unwrap();
        assert_eq!(f.id, Some(261));
        assert_eq!(f.field_names(), ["sig", "comm", "pid", "name"]);
        let comm = f.field("comm").unwrap();
        assert_eq!((comm.offset, comm.size, comm.signed), (20, 16, false));
        assert!(comm.is_char_array());
        assert!(f.field("name").unwrap().is_data_loc());
        assert!(f.field("pid").unwrap().signed);
    }

    #[test]
    fn a_field_without_offset_is_an_error_with_its_line() {
        let e = parse_format("x:y", "format:\n\tfield:int a;\tsize:4;\n").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
