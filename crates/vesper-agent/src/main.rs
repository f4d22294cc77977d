//! vesper-agent: runs in the guest (or on the host for native tests), loads the
//! probes the host sends and streams their records back.

mod channel;
mod kernel;
mod kernel_files;
mod maps;
mod probes;
mod ring;
mod session;
mod sys;

use std::time::{Duration, Instant};

use channel::{Channel, ChannelSpec};

const USAGE: &str = "usage: vesper-agent [--channel auto|/dev/vportNpM|unix-listen:PATH] [--heartbeat-ms N] [--lock-memory] [--oom-protect]
  --lock-memory   mlockall: guest memory pressure cannot page the agent out
  --oom-protect   oom_score_adj -1000: the OOM killer never picks the agent (it reports the OOM)";

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info
            || (m.level() <= log::Level::Debug && m.target().starts_with("vesper"))
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!(
                "vesper-agent {}: {}",
                r.level().as_str().to_lowercase(),
                r.args()
            );
        }
    }
    fn flush(&self) {}
}

fn main() {
    let _ = log::set_logger(&StderrLog).map(|()| log::set_max_level(log::LevelFilter::Info));
    if let Err(e) = run() {
        eprintln!("vesper-agent: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let started = Instant::now();
    let mut spec = ChannelSpec::Auto;
    let mut cfg = session::Config::default();
    let mut lock = false;
    let mut oom_protect = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match a.as_str() {
            "--channel" => spec = value("--channel")?.parse()?,
            "--heartbeat-ms" => {
                let v = value("--heartbeat-ms")?;
                let ms: u64 = v.parse().map_err(|_| {
                    format!("--heartbeat-ms: {v:?} is not a number of milliseconds")
                })?;
                cfg.heartbeat = Duration::from_millis(ms.max(10));
            }
            "--lock-memory" => lock = true,
            "--oom-protect" => oom_protect = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    sys::tune_allocator();
    // Before the lock: the loader's transient megabytes can then be given back.
    probes::init_loader();
    if lock {
        match sys::lock_memory() {
            Ok(()) => cfg.memory_locked = true,
            Err(e) => log::warn!("mlockall failed ({e}); continuing unlocked"),
        }
    }
    if oom_protect && let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        log::warn!("setting oom_score_adj -1000 failed ({e}); the OOM killer may pick the agent");
    }
    kernel::ensure_tracefs();
    let channel = Channel::new(spec.clone()).map_err(|e| format!("channel {spec:?}: {e}"))?;
    log::info!(
        "agent {} on kernel {}, channel {spec:?}",
        env!("CARGO_PKG_VERSION"),
        sys::kernel_release()
    );
    loop {
        let conn = match channel.connect() {
            Ok(c) => c,
            Err(e) => {
                log::warn!("waiting for the host channel: {e}");
                std::thread::sleep(Duration::from_millis(500));
                continue;
            }
        };
        log::info!("host connected");
        match session::Session::new(conn, &cfg, started).run() {
            session::End::HostClosed => log::info!("host disconnected; probes unloaded"),
            session::End::Io(e) => log::warn!("channel error: {e}; probes unloaded"),
            session::End::Protocol(e) => {
                log::warn!("bad frame from host: {e}; session closed, probes unloaded")
            }
        }
        if !matches!(spec, ChannelSpec::UnixListen(_)) {
            // A device port reports hang-up until the host reopens it: don't spin.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
