//! `vesper-testkit web`: a minimal HTTP server standing in for a guest's web service in the
//! benchmarks. Pacemaker's monitor checks it over HTTP, the way `ocf:heartbeat:apache`
//! does; the faults are a SIGTERM (use case I) and an OOM kill after a leak (use case II).

use std::io::{self, Read, Write};
use std::net::TcpListener;

use crate::sys;

pub struct Options {
    pub comm: String,
    pub bind: String,
    pub port: u16,
    pub cgroup: Option<String>,
    pub ballast_mib: usize,
    pub leave_free_mib: Option<usize>,
    pub pidfile: Option<String>,
}

/// MemAvailable from /proc/meminfo, in MiB.
fn available_mib() -> io::Result<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .map(|kb| kb / 1024)
        .ok_or_else(|| io::Error::other("no MemAvailable in /proc/meminfo"))
}

/// Allocates and touches `mib` MiB, so that it is resident.
fn hold(mib: usize) -> Vec<Vec<u8>> {
    (0..mib).map(|_| vec![1u8; 1 << 20]).collect()
}

pub fn run(o: &Options) -> io::Result<()> {
    if let Some(dir) = &o.cgroup {
        let procs = std::path::Path::new(dir).join("cgroup.procs");
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", procs.display())))?;
    }
    sys::set_comm(&o.comm);
    let ballast = match o.leave_free_mib {
        Some(free) => available_mib()?.saturating_sub(free),
        None => o.ballast_mib,
    };
    let mut held = hold(ballast);
    let listener = TcpListener::bind((o.bind.as_str(), o.port))?;
    if let Some(p) = &o.pidfile {
        std::fs::write(p, std::process::id().to_string())?;
    }
    for conn in listener.incoming() {
        let Ok(mut c) = conn else { continue };
        let mut req = [0u8; 512];
        let n = c.read(&mut req).unwrap_or(0);
        let leak = req[..n].starts_with(b"GET /leak");
        let body = if leak { "leaking\n" } else { "ok\n" };
        let _ = c.write_all(
            format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
        drop(c);
        if leak {
            // Until the OOM killer takes this process.
            loop {
                held.push(vec![1u8; 1 << 20]);
            }
        }
    }
    Ok(())
}
