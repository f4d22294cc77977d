//! The client side of the lab guest's command port (`org.vesper.lab.0`, reached through
//! QEMU's chardev socket `lab.sock`): one command line in, its output and
//! `__VESPER_RC__ <status>` out. Lab only; never part of the agent.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

const RC_MARK: &str = "__VESPER_RC__ ";

/// Runs `cmd` (one line of shell) in the guest; returns its output and exit status.
pub fn exec(sock: &Path, cmd: &str, timeout: Duration) -> io::Result<(String, i32)> {
    if cmd.contains('\n') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the lab port takes one command line",
        ));
    }
    let mut s = UnixStream::connect(sock).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("{}: {e} (is the lab VM up?)", sock.display()),
        )
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(format!("{cmd}\n").as_bytes())?;
    let mut out = String::new();
    let mut r = BufReader::new(s);
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "the lab port closed before the command finished (output so far: {out})"
                    ),
                ));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{e} (output so far: {out})"),
                ));
            }
        }
        if let Some(rc) = line.trim_end().strip_prefix(RC_MARK) {
            return Ok((out, rc.trim().parse().unwrap_or(255)));
        }
        out.push_str(&line.replace('\r', ""));
    }
}
