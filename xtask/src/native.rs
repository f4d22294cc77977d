//! Vesper running natively on this host: an agent (standing in for a guest's) and a
//! vesperd that knows it as one VM. Used by the demo and the benchmarks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub struct NativeStack {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub socket: PathBuf,
    pub vm: String,
    procs: Vec<Child>,
}

impl Drop for NativeStack {
    fn drop(&mut self) {
        for c in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn wait_for(path: &Path, what: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    while !path.exists() {
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{what} did not appear at {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

impl NativeStack {
    /// Starts agent and vesperd from the binaries in `bin`, with `probes` configured and
    /// `vm_extra` lines added to the VM's section.
    pub fn start(
        bin: &Path,
        vm: &str,
        probes: &[&str],
        vm_extra: &str,
    ) -> anyhow::Result<NativeStack> {
        let dir = std::env::temp_dir().join(format!("vesper-{vm}-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("vesper.sock");
        let agent_sock = dir.join(format!("{vm}.sock"));
        let probes: Vec<String> = probes.iter().map(|p| format!("\"{p}\"")).collect();
        std::fs::write(
            dir.join("vesper.toml"),
            format!(
                "[daemon]\nsocket = \"{}\"\nstate_dir = \"{}\"\n\n[[vm]]\nname = \"{vm}\"\nchannel = \"unix:{}\"\nprobes = [{}]\n{vm_extra}\n",
                socket.display(),
                dir.join("state").display(),
                agent_sock.display(),
                probes.join(", ")
            ),
        )?;
        let mut s = NativeStack {
            dir: dir.clone(),
            bin: bin.to_path_buf(),
            socket: socket.clone(),
            vm: vm.to_string(),
            procs: Vec::new(),
        };
        s.procs.push(
            Command::new(bin.join("vesper-agent"))
                .arg("--channel")
                .arg(format!("unix-listen:{}", agent_sock.display()))
                .stderr(std::fs::File::create(dir.join("agent.log"))?)
                .spawn()
                .context("starting vesper-agent")?,
        );
        wait_for(&agent_sock, "the agent's socket")?;
        s.procs.push(
            Command::new(bin.join("vesperd"))
                .arg("--config")
                .arg(dir.join("vesper.toml"))
                .stderr(std::fs::File::create(dir.join("vesperd.log"))?)
                .spawn()
                .context("starting vesperd")?,
        );
        wait_for(&socket, "vesperd's control socket")?;
        let t = Instant::now();
        while !s
            .vesper(&["status", "--json"])?
            .contains("\"state\":\"ready\"")
        {
            if t.elapsed() > Duration::from_secs(10) {
                bail!(
                    "the session did not come up; see {}",
                    dir.join("vesperd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(s)
    }

    pub fn vesper(&self, args: &[&str]) -> anyhow::Result<String> {
        let o = Command::new(self.bin.join("vesper"))
            .env("VESPER_SOCKET", &self.socket)
            .args(args)
            .output()?;
        if !o.status.success() {
            bail!("vesper {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    pub fn wait_loaded(&self, probe: &str) -> anyhow::Result<()> {
        let t = Instant::now();
        loop {
            let st = self.vesper(&["probes", &self.vm, "--json"])?;
            if st.lines().any(|l| {
                l.contains(&format!("\"name\":\"{probe}\"")) && l.contains("\"phase\":\"loaded\"")
            }) {
                return Ok(());
            }
            if t.elapsed() > Duration::from_secs(15) {
                bail!(
                    "{probe} did not load; see {}",
                    self.dir.join("vesperd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a testkit helper; it is stopped with the stack.
    pub fn spawn_testkit(&mut self, args: &[&str]) -> anyhow::Result<&mut Child> {
        let c = Command::new(self.bin.join("vesper-testkit"))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("starting vesper-testkit")?;
        self.procs.push(c);
        self.procs.last_mut().context("just pushed")
    }
}
