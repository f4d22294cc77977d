//! The control API from the client's side: one typed request, one typed answer
//! (`vesper_api`, the types vesperd answers with).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use vesper_api::{ApiError, ErrorCode, Request};

/// Why a request got no answer it could use.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(
        "cannot reach vesperd at {}: {source} (is vesperd running? use --socket or VESPER_SOCKET)",
        socket.display()
    )]
    Unreachable {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to vesperd: {0}")]
    Io(#[from] std::io::Error),
    #[error("vesperd closed the connection without an answer")]
    NoAnswer,
    /// vesperd refused: its code and its words.
    #[error("{0}")]
    Refused(ApiError),
    #[error(
        "vesperd's answer does not fit this vesper ({0}); are vesper and vesperd the same version?"
    )]
    Malformed(String),
}

impl CallError {
    /// The refusal's code, if vesperd refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CallError::Refused(e) => Some(e.code),
            _ => None,
        }
    }
}

/// Sends `req`; returns its answer and the connection, for answers that go on (events).
pub fn call_streaming<T: DeserializeOwned>(
    socket: &Path,
    req: &Request,
) -> Result<(T, BufReader<UnixStream>), CallError> {
    let mut s = UnixStream::connect(socket).map_err(|source| CallError::Unreachable {
        socket: socket.to_path_buf(),
        source,
    })?;
    let mut line = serde_json::to_string(req).map_err(|e| CallError::Malformed(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut r = BufReader::new(s);
    let mut first = String::new();
    r.read_line(&mut first)?;
    if first.is_empty() {
        return Err(CallError::NoAnswer);
    }
    Ok((decode(&first)?, r))
}

/// Sends `req`; returns its answer.
pub fn call<T: DeserializeOwned>(socket: &Path, req: &Request) -> Result<T, CallError> {
    call_streaming(socket, req).map(|(v, _)| v)
}

/// An answer line: the reply if `ok`, the refusal if not.
fn decode<T: DeserializeOwned>(line: &str) -> Result<T, CallError> {
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| CallError::Malformed(e.to_string()))?;
    let fit = |e: serde_json::Error| CallError::Malformed(e.to_string());
    match v.get("ok") {
        Some(serde_json::Value::Bool(true)) => serde_json::from_value(v).map_err(fit),
        Some(serde_json::Value::Bool(false)) => {
            Err(CallError::Refused(serde_json::from_value(v).map_err(fit)?))
        }
        _ => Err(CallError::Malformed("no \"ok\" in the answer".into())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test
    use super::*;
    use vesper_api::CheckReply;

    #[test]
    fn an_answer_is_its_reply_or_its_refusal() {
        let ok: CheckReply = decode(
            r#"{"ok":true,"vm":"web1","healthy":true,"state":"ready","guest":"running","cause":null}"#,
        )
        .unwrap();
        assert!(ok.healthy);
        let refused = decode::<CheckReply>(
            r#"{"ok":false,"code":"unknown-vm","error":"unknown VM \"x\" (configured: web1)"}"#,
        )
        .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::UnknownVm));
        assert_eq!(refused.to_string(), "unknown VM \"x\" (configured: web1)");
        // A field of the wrong type is an error, never a default (a renamed field shows).
        let bad = decode::<CheckReply>(r#"{"ok":true,"vm":"web1","healthy":1}"#).unwrap_err();
        assert!(matches!(bad, CallError::Malformed(_)), "{bad}");
    }
}
