//! The original system's scenario on a real cluster: two Pacemaker nodes on this machine,
//! the lab guest as the VirtualDomain resource `vm-web1`, each node with its own vesperd.
//! The probes are built for the guest's kernel and loaded into it, httpd is killed in the
//! guest, Vesper explains it and fails the resource, Pacemaker recovers the VM, and the
//! service answers again. Everything is torn down at the end, failures included.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vesper_tests::cluster::{Cluster, VM_DOMAIN, VM_HTTP_PORT, VM_RESOURCE};

use crate::util::{self, progress};

fn wait(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
    let t = Instant::now();
    while !f() {
        if t.elapsed() > timeout {
            bail!("timed out after {} s waiting for {what}", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    if !util::is_root() {
        bail!(
            "the demo runs a cluster of namespaces with QEMU guests: run `cargo xtask demo` as root (`--native` for the one-host demo, also as root)"
        );
    }
    let t0 = Instant::now();
    let c = crate::cluster::up(2, false, None)?;
    let result = scenario(&c, t0);
    progress("tearing the cluster down");
    c.down();
    result?;
    progress(&format!("demo done in {:.0} s", t0.elapsed().as_secs_f64()));
    Ok(())
}

fn scenario(c: &Cluster, t0: Instant) -> anyhow::Result<()> {
    let cli = util::target_dir()?.join("release").join("vesper");
    let vesper = |node: &str, args: &[&str]| c.vesper(&cli, node, args);
    progress("waiting for the guest's agent and its probes (web1 watches httpd: signal, oom)");
    let mut host = String::new();
    wait("the VM to be watched", Duration::from_secs(180), || {
        c.watched_on(&cli, VM_DOMAIN).map(|n| host = n).is_some()
    })?;
    let other = c
        .node_names()
        .into_iter()
        .find(|n| *n != host)
        .context("a second node")?;
    progress(&format!(
        "{VM_RESOURCE} runs on {host}; {:.0} s since the start",
        t0.elapsed().as_secs_f64()
    ));
    print!(
        "\n[{host}] $ vesper status\n{}",
        vesper(&host, &["status"])?
    );
    print!(
        "\n[{other}] $ vesper status\n{}",
        vesper(&other, &["status"])?
    );
    // The original system's probe_httpd, built on the host for the guest's own kernel and
    // loaded into the guest (as `stap -p4` and `vsp_to guest insmod` did).
    let script = util::workspace_root().join("examples/probe_httpd.vsp");
    let work = util::target_dir()?.join("demo");
    std::fs::create_dir_all(&work)?;
    let (info, object) = (work.join("web1-kernel.json"), work.join("probe_httpd.o"));
    let script_arg = script.display().to_string();
    std::fs::write(
        &info,
        vesper(&host, &["kernel-info", VM_DOMAIN, "--for", &script_arg])?,
    )?;
    println!(
        "\n$ cat examples/probe_httpd.vsp\n{}",
        std::fs::read_to_string(&script)?
    );
    print!(
        "[{host}] $ vesper kernel-info {VM_DOMAIN} --for probe_httpd.vsp > web1-kernel.json\n[{host}] $ vesper build probe_httpd.vsp --kernel-info web1-kernel.json -o probe_httpd.o\n{}",
        vesper(
            &host,
            &[
                "build",
                &script_arg,
                "--kernel-info",
                &info.display().to_string(),
                "-o",
                &object.display().to_string(),
            ],
        )?
    );
    print!(
        "[{host}] $ vesper load {VM_DOMAIN} probe_httpd.o\n{}",
        vesper(&host, &["load", VM_DOMAIN, &object.display().to_string()])?
    );
    print!(
        "\n[{host}] $ vesper probes {VM_DOMAIN}   # signal and oom: loaded because web1 watches httpd\n{}",
        vesper(&host, &["probes", VM_DOMAIN])?
    );

    progress("killing httpd in the guest: /bin/kill -TERM $(pidof httpd)");
    let killed = Instant::now();
    c.guest(
        VM_DOMAIN,
        "/bin/kill -TERM $(pidof httpd)",
        Duration::from_secs(10),
    )?;
    let mut why = String::new();
    wait(
        "Vesper's verdict and its action",
        Duration::from_secs(30),
        || {
            why = vesper(&host, &["why", VM_DOMAIN, "--last", "1"]).unwrap_or_default();
            why.contains("action    pacemaker")
        },
    )?;
    let acted = killed.elapsed();
    print!(
        "\n[{host}] $ vesper events {VM_DOMAIN} --probe probe_httpd\n{}",
        vesper(&host, &["events", VM_DOMAIN, "--probe", "probe_httpd"])?
    );
    print!("\n[{host}] $ vesper why {VM_DOMAIN}\n{why}");
    println!(
        "\nexplained and reported to Pacemaker {:.0} ms after the kill",
        acted.as_secs_f64() * 1000.0
    );
    let (mon, _) = c.exec(&other, "crm_mon -1 -A -f", Duration::from_secs(20))?;
    print!("\n[{other}] $ crm_mon -1 -A -f\n{mon}");

    progress("waiting for Pacemaker to recover the VM and for httpd to answer");
    let mut back = String::new();
    wait(
        "the VM watched again",
        Duration::from_secs(180),
        || match c.watched_on(&cli, VM_DOMAIN) {
            Some(n) if c.http_answers(&n) => {
                back = n;
                true
            }
            _ => false,
        },
    )?;
    let (page, _) = c.exec(
        &back,
        &format!("curl -sf -m 5 http://127.0.0.1:{VM_HTTP_PORT}/"),
        Duration::from_secs(10),
    )?;
    print!("\n[{back}] $ curl http://127.0.0.1:{VM_HTTP_PORT}/\n{page}");
    println!(
        "\nhttpd answers again on {back} {:.1} s after the kill (Pacemaker restarted the VM; the guest booted)",
        killed.elapsed().as_secs_f64()
    );
    print!(
        "\n[{back}] $ vesper status\n{}",
        vesper(&back, &["status"])?
    );
    Ok(())
}
