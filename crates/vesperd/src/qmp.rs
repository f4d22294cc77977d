//! Watches a VM's QEMU monitor (QMP) for what the hypervisor sees without any guest
//! code: a guest kernel panic (pvpanic → GUEST_PANICKED) and shutdowns.

use std::path::PathBuf;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::session::{HostEvent, SessionCmd};

/// QMP lines longer than this are not believed.
const MAX_LINE: u64 = 64 * 1024;

/// Connects (and reconnects) to the QMP socket and forwards events until the session goes.
pub async fn watch(vm: String, path: PathBuf, tx: mpsc::Sender<SessionCmd>) {
    let mut logged = false;
    loop {
        match tokio::net::UnixStream::connect(&path).await {
            Ok(s) => {
                tracing::info!(vm = %vm, qmp = %path.display(), "QMP connected");
                logged = false;
                if let Err(e) = follow(s, &tx).await {
                    tracing::warn!(vm = %vm, error = %e, "QMP connection ended");
                }
            }
            Err(e) if !logged => {
                tracing::warn!(vm = %vm, qmp = %path.display(), error = %e, "cannot reach QMP; retrying");
                logged = true;
            }
            Err(_) => {}
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn follow(s: tokio::net::UnixStream, tx: &mpsc::Sender<SessionCmd>) -> std::io::Result<()> {
    let (rd, mut wr) = s.into_split();
    wr.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .await?;
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = String::new();
        let n = (&mut rd).take(MAX_LINE).read_line(&mut line).await?;
        if n == 0 {
            return Ok(());
        }
        if let Some(ev) = parse_event(&line)
            && tx.send(SessionCmd::Host(ev)).await.is_err()
        {
            return Ok(());
        }
    }
}

/// The host event a QMP line announces, if any.
pub fn parse_event(line: &str) -> Option<HostEvent> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let data = &v["data"];
    match v["event"].as_str()? {
        "GUEST_PANICKED" => Some(HostEvent::Panicked {
            detail: data["info"].to_string().chars().take(512).collect(),
        }),
        "SHUTDOWN" => Some(HostEvent::Shutdown {
            reason: data["reason"]
                .as_str()
                .unwrap_or("unknown")
                .chars()
                .take(64)
                .collect(),
            by_guest: data["guest"].as_bool().unwrap_or(false),
        }),
        "RESET" => Some(HostEvent::Reset),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_panic_and_shutdown() {
        let p = parse_event(
            r#"{"timestamp":{"seconds":1,"microseconds":2},"event":"GUEST_PANICKED","data":{"action":"pause"}}"#,
        );
        assert!(matches!(p, Some(HostEvent::Panicked { .. })));
        let s = parse_event(r#"{"event":"SHUTDOWN","data":{"guest":true,"reason":"guest-panic"}}"#);
        assert_eq!(
            s,
            Some(HostEvent::Shutdown {
                reason: "guest-panic".into(),
                by_guest: true
            })
        );
        assert_eq!(parse_event(r#"{"return":{}}"#), None);
        assert_eq!(parse_event("not json"), None);
    }
}
