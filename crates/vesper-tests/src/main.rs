//! vesper-testkit: small processes the end-to-end tests drive.
//!
//! - `victim [--comm NAME] [--mortal]`: names itself, ignores SIGTERM (unless --mortal) and
//!   SIGUSR1, prints its pid, sleeps.
//! - `signal --comm NAME --to PID --sig N [--count N]`: names itself, sends the signal, prints its pid.
//! - `memhog [--comm NAME] [--cgroup DIR] MIB`: joins the cgroup DIR, then allocates and
//!   touches MIB MiB.
//! - `exit --comm NAME CODE`: names itself and exits with CODE.
//! - `fork --comm NAME`: names itself, starts `true` and waits for it.
//! - `ticker --comm NAME --to PID --sig N --every-ms N`: names itself, signals PID every N ms until killed.
//! - `web --comm NAME --port P [--bind ADDR] [--cgroup DIR] [--ballast MIB | --leave-free MIB]
//!   [--pidfile F]`: a minimal HTTP server standing in for a web service. It holds `MIB` MiB
//!   (or all the available memory but `--leave-free` MiB) so that a small leak exhausts the
//!   memory; `GET /leak` makes it leak until the OOM killer takes it.
//! - `blaster --comm NAME --count N [--rate R]`: names itself and calls getppid(2) N times, R
//!   per second (default: as fast as it can); prints `calls elapsed_ns`.
//! - `lab-exec SOCK CMD`: runs CMD in the lab guest through its command port.
//! - `power-switch DIR`: the cluster lab's power switch for fencing (see `cluster::power`).
//! - `power SOCK REQUEST...`: one request to that switch; prints the answer.
//! - `hostile-agent PATH MODE`: an attacker's program in place of the agent (see `hostile.rs`).
//! - `fake-agents --dir D --count N [--rate R] [--record-bytes B]`: N well-behaved agents
//!   streaming R records/s each, in one process (see `fake_agents.rs`).

mod fake_agents;
mod hostile;
mod sys;
mod web;

use std::io::Write;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

fn num(args: &[String], name: &str, default: i64) -> i64 {
    arg(args, name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| die(&format!("{name}: not a number: {v}")))
    })
}

fn die(msg: &str) -> ! {
    eprintln!("vesper-testkit: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("victim") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| "victim".into()));
            if !args.iter().any(|a| a == "--mortal") {
                sys::ignore_signal(libc::SIGTERM);
            }
            sys::ignore_signal(libc::SIGUSR1);
            println!("{}", std::process::id());
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        Some("signal") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| die("signal needs --comm NAME")));
            let to = num(&args, "--to", -1);
            if to <= 0 {
                die("signal needs --to PID");
            }
            let sig = num(&args, "--sig", 15) as i32;
            let count = num(&args, "--count", 1);
            let mut failed = 0;
            for _ in 0..count {
                if !sys::kill(to as i32, sig) {
                    failed += 1;
                }
            }
            println!("{}", std::process::id());
            if failed > 0 {
                die(&format!("{failed} of {count} kill() calls failed"));
            }
        }
        Some("memhog") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| "memhog".into()));
            if let Some(dir) = arg(&args, "--cgroup") {
                let procs = std::path::Path::new(&dir).join("cgroup.procs");
                std::fs::write(&procs, std::process::id().to_string())
                    .unwrap_or_else(|e| die(&format!("{}: {e}", procs.display())));
            }
            let mib: usize = args
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die("memhog needs MIB"));
            let mut chunks = Vec::new();
            for _ in 0..mib {
                // Touch every page so it is really resident.
                chunks.push(vec![1u8; 1 << 20]);
            }
            println!("allocated {} MiB", chunks.len());
        }
        Some("exit") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| die("exit needs --comm NAME")));
            let code = args
                .last()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| die("exit needs CODE"));
            std::process::exit(code);
        }
        Some("fork") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| die("fork needs --comm NAME")));
            let child = std::process::Command::new("true")
                .spawn()
                .unwrap_or_else(|e| die(&format!("spawn: {e}")));
            println!("{}", child.id());
            let _ = { child }.wait();
        }
        Some("ticker") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| "ticker".into()));
            let to = num(&args, "--to", -1);
            let sig = num(&args, "--sig", 10) as i32;
            let every = std::time::Duration::from_millis(num(&args, "--every-ms", 2) as u64);
            if to <= 0 {
                die("ticker needs --to PID");
            }
            while sys::kill(to as i32, sig) {
                std::thread::sleep(every);
            }
        }
        Some("web") => web::run(&web::Options {
            comm: arg(&args, "--comm").unwrap_or_else(|| "httpd".into()),
            bind: arg(&args, "--bind").unwrap_or_else(|| "127.0.0.1".into()),
            port: u16::try_from(num(&args, "--port", 8080))
                .unwrap_or_else(|_| die("--port: out of range")),
            cgroup: arg(&args, "--cgroup"),
            ballast_mib: num(&args, "--ballast", 0).max(0) as usize,
            leave_free_mib: arg(&args, "--leave-free")
                .map(|_| num(&args, "--leave-free", 0).max(0) as usize),
            pidfile: arg(&args, "--pidfile"),
        })
        .unwrap_or_else(|e| die(&format!("web: {e}"))),
        Some("blaster") => {
            sys::set_comm(&arg(&args, "--comm").unwrap_or_else(|| "blaster".into()));
            let count = num(&args, "--count", 1_000_000).max(0) as u64;
            let rate = num(&args, "--rate", 0).max(0) as u64;
            let t = std::time::Instant::now();
            if rate == 0 {
                for _ in 0..count {
                    sys::getppid();
                }
            } else {
                // Paced in 1 ms slices, so the rate holds over any window longer than that.
                let mut done = 0u64;
                while done < count {
                    let due = (t.elapsed().as_micros() as u64 * rate / 1_000_000).min(count);
                    while done < due {
                        sys::getppid();
                        done += 1;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
            println!("{count} {}", t.elapsed().as_nanos());
        }
        Some("power-switch") => {
            let dir = args.get(1).unwrap_or_else(|| die("power-switch needs DIR"));
            if let Err(e) = vesper_tests::cluster::power::serve(std::path::Path::new(dir)) {
                die(&e.to_string());
            }
        }
        Some("power") => {
            let sock = args
                .get(1)
                .unwrap_or_else(|| die("power needs SOCK REQUEST"));
            match vesper_tests::cluster::power::request(
                std::path::Path::new(sock),
                &args[2..].join(" "),
            ) {
                Ok(answer) if !answer.starts_with("error") => println!("{answer}"),
                Ok(answer) => die(&answer),
                Err(e) => die(&format!("{sock}: {e}")),
            }
        }
        Some("hostile-agent") => {
            let (Some(path), Some(mode)) = (args.get(1), args.get(2)) else {
                die("hostile-agent needs PATH MODE")
            };
            hostile::run(path, mode).unwrap_or_else(|e| die(&format!("hostile-agent: {e}")));
        }
        Some("fake-agents") => {
            let dir = arg(&args, "--dir").unwrap_or_else(|| die("fake-agents needs --dir D"));
            let opt = fake_agents::Options {
                dir: dir.into(),
                count: num(&args, "--count", 1).max(0) as usize,
                rate: num(&args, "--rate", 100).max(0) as u64,
                record_bytes: num(&args, "--record-bytes", 256).clamp(1, 65536) as usize,
            };
            fake_agents::run(&opt).unwrap_or_else(|e| die(&format!("fake-agents: {e}")));
        }
        Some("lab-exec") => {
            let (Some(sock), Some(cmd)) = (args.get(1), args.get(2)) else {
                die("lab-exec needs SOCK CMD")
            };
            match vesper_tests::lab_port::exec(
                std::path::Path::new(sock),
                cmd,
                std::time::Duration::from_secs(60),
            ) {
                Ok((out, rc)) => {
                    print!("{out}");
                    std::process::exit(rc);
                }
                Err(e) => die(&format!("lab-exec: {e}")),
            }
        }
        _ => die(
            "usage: vesper-testkit victim|signal|memhog|exit|fork|web|blaster|lab-exec|hostile-agent|fake-agents ...",
        ),
    }
}
