//! vesper.toml: the daemon's configuration. Every mistake names the file, the key and
//! what to do about it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::ChannelSpec;

pub const DEFAULT_PATH: &str = "/etc/vesper/vesper.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    #[serde(default)]
    pub vm: Vec<VmConfig>,
    /// Extra rules: records that mean a resource failed.
    #[serde(default)]
    pub rule: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// Only this VM's records (default: every VM).
    #[serde(default)]
    pub vm: Option<String>,
    /// The probe whose records the rule reads (`vesper` for host events).
    pub probe: String,
    /// A condition in the probe language's predicate syntax over the record's fields.
    pub when: String,
    /// The cause, with `{field}` filled from the record.
    pub cause: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Control API socket for the CLI (mode 0600, or 0660 with `socket_group`).
    pub socket: PathBuf,
    /// A group whose members may use the control API too (from /etc/group).
    pub socket_group: Option<String>,
    /// Record files and caches.
    pub state_dir: PathBuf,
    /// Records kept in memory per VM.
    pub store_max_records: usize,
    /// Memory the records kept per VM may take: their JSON and about 70 bytes of
    /// bookkeeping each (every record is in the VM's file too). The default suits a few
    /// VMs; for many, the memory given to the stores divided by the VMs (500 VMs at
    /// 512 KiB: 250 MiB; docs/evaluation.md, section 7).
    pub store_max_bytes: usize,
    /// Size at which a VM's record file is rotated (one old file is kept).
    pub file_max_bytes: u64,
    /// This host's Pacemaker node name (default: asked from `crm_node -n`).
    pub node: Option<String>,
    /// Records per second one VM may send; past it vesperd stops reading from that VM
    /// until its budget refills, and the guest drops and counts (0: no limit). A VM's
    /// `records_per_sec` overrides it.
    pub records_per_sec: u64,
    /// Bytes per second one VM may send, any message (0: no limit).
    pub bytes_per_sec: u64,
    /// Where to serve Prometheus metrics (`GET /metrics`), e.g. "127.0.0.1:9477"
    /// (default: not served).
    pub metrics: Option<std::net::SocketAddr>,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            socket: "/run/vesper/vesper.sock".into(),
            socket_group: None,
            state_dir: "/var/lib/vesper".into(),
            store_max_records: 100_000,
            store_max_bytes: 64 << 20,
            file_max_bytes: 256 << 20,
            node: None,
            // 0.7 µs of host work per record: one VM at the limit takes about 15 % of a
            // core. The lab's virtio-serial port carries about 100,000 records/s.
            records_per_sec: 200_000,
            bytes_per_sec: 32 << 20,
            metrics: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    pub name: String,
    /// `unix:PATH`: the QEMU/libvirt chardev socket (server) vesperd connects to.
    pub channel: String,
    /// Probes (re)loaded on every agent connect: built-in names, or paths to `.vsp`
    /// scripts or `.o` objects (relative to the config file's directory).
    #[serde(default)]
    pub probes: Vec<String>,
    /// `probes`, read and checked.
    #[serde(skip)]
    pub sources: Vec<vesper_probe::ProbeSource>,
    /// The Pacemaker resource this VM backs.
    #[serde(default)]
    pub resource: Option<String>,
    /// `unix:PATH`: the VM's QEMU monitor (QMP) socket, for guest panics and shutdowns
    /// seen by the hypervisor (optional).
    #[serde(default)]
    pub qmp: Option<String>,
    /// Services (task names) whose death by a fatal signal or the OOM killer is this VM's
    /// resource failing.
    #[serde(default)]
    pub watch: Vec<String>,
    /// Mark `resource` failed in Pacemaker on a verdict (default: true when `resource` is set).
    #[serde(default)]
    pub pacemaker: Option<bool>,
    /// Programs run on every verdict, with the verdict as JSON on stdin.
    #[serde(default)]
    pub hooks: Vec<PathBuf>,
    /// Verdicts for the same resource within this window are one fault.
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
    /// An agent silent for this long is reported unresponsive.
    #[serde(default = "default_deadtime_ms")]
    pub deadtime_ms: u64,
    /// After QMP reports a guest reset, how long the new boot's agent may take to connect
    /// before the agent counts as silent (the deadtime does not apply meanwhile).
    #[serde(default = "default_boot_timeout_ms")]
    pub boot_timeout_ms: u64,
    /// This VM's record rate limit (default: `[daemon] records_per_sec`).
    #[serde(default)]
    pub records_per_sec: Option<u64>,
    /// This VM's byte rate limit (default: `[daemon] bytes_per_sec`).
    #[serde(default)]
    pub bytes_per_sec: Option<u64>,
    /// This VM's quotas (default: the `[daemon]` keys of the same names).
    #[serde(default)]
    pub store_max_records: Option<usize>,
    #[serde(default)]
    pub store_max_bytes: Option<usize>,
    #[serde(default)]
    pub file_max_bytes: Option<u64>,
}

fn default_deadtime_ms() -> u64 {
    5000
}

fn default_boot_timeout_ms() -> u64 {
    crate::DEFAULT_BOOT_TIMEOUT.as_millis() as u64
}

fn default_debounce_ms() -> u64 {
    30_000
}

impl VmConfig {
    pub fn deadtime(&self) -> Duration {
        Duration::from_millis(self.deadtime_ms)
    }
    pub fn rate_limits(&self, daemon: &DaemonConfig) -> vesper_api::RateLimits {
        vesper_api::RateLimits {
            records_per_sec: self.records_per_sec.unwrap_or(daemon.records_per_sec),
            bytes_per_sec: self.bytes_per_sec.unwrap_or(daemon.bytes_per_sec),
        }
    }
    pub fn store_limits(&self, daemon: &DaemonConfig) -> crate::StoreLimits {
        crate::StoreLimits {
            max_records: self.store_max_records.unwrap_or(daemon.store_max_records),
            max_bytes: self.store_max_bytes.unwrap_or(daemon.store_max_bytes),
            file_max_bytes: self.file_max_bytes.unwrap_or(daemon.file_max_bytes),
        }
    }
    pub fn channel_spec(&self) -> Result<ChannelSpec, String> {
        self.channel.parse()
    }
}

/// A configuration mistake: where it is and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| {
            let message = match e.span() {
                Some(span) => {
                    let line = text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count()
                        + 1;
                    format!("line {line}: {}", e.message())
                }
                None => e.message().to_string(),
            };
            ConfigError::Parse {
                path: path.into(),
                message,
            }
        })?;
        cfg.validate(path)?;
        cfg.resolve_probes(path)?;
        cfg.check_rules(path)?;
        Ok(cfg)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: String, reason: String| ConfigError::Invalid {
            path: path.into(),
            key,
            reason,
        };
        let mut names = HashSet::new();
        for (i, vm) in self.vm.iter().enumerate() {
            let key = |k: &str| format!("vm[{i}].{k}");
            if vm.name.is_empty()
                || !vm
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err(invalid(
                    key("name"),
                    format!(
                        "{:?} must be non-empty letters, digits, '-', '_' or '.'",
                        vm.name
                    ),
                ));
            }
            if !names.insert(vm.name.as_str()) {
                return Err(invalid(
                    key("name"),
                    format!(
                        "VM {:?} is defined twice; give each [[vm]] its own name",
                        vm.name
                    ),
                ));
            }
            vm.channel_spec().map_err(|r| invalid(key("channel"), r))?;
            if let Some(q) = &vm.qmp
                && q.strip_prefix("unix:").is_none_or(str::is_empty)
            {
                return Err(invalid(
                    key("qmp"),
                    format!("{q:?} is not a QMP socket; write unix:/path/to/vm.qmp"),
                ));
            }
            for p in &vm.probes {
                if !vesper_probe::builtin::is_builtin(p)
                    && !p.ends_with(".vsp")
                    && !p.ends_with(".o")
                {
                    return Err(invalid(
                        key("probes"),
                        format!(
                            "unknown probe {p:?}; built-in probes are: {} (or name a .vsp script or .o object)",
                            vesper_probe::builtin::names().join(", ")
                        ),
                    ));
                }
            }
            if vm.deadtime_ms < 100 {
                return Err(invalid(
                    key("deadtime_ms"),
                    "must be at least 100 (the agent heartbeats every 1000 ms)".into(),
                ));
            }
        }
        for (i, r) in self.rule.iter().enumerate() {
            if let Some(vm) = &r.vm
                && self.vm(vm).is_none()
            {
                return Err(invalid(
                    format!("rule[{i}].vm"),
                    format!("no [[vm]] is named {vm:?}"),
                ));
            }
            crate::rules::Rule::new(&r.name, &r.probe, &r.when, &r.cause)
                .map_err(|e| invalid(format!("rule[{i}].when"), format!("\n{e}")))?;
        }
        if self.daemon.store_max_records == 0 {
            return Err(invalid(
                "daemon.store_max_records".into(),
                "must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// Checks each rule against the records of its probe in every VM it applies to: the
    /// fields it names exist, and its condition evaluates over their types (a type only
    /// the guest's kernel decides is checked when the probe is compiled for the guest).
    fn check_rules(&self, path: &Path) -> Result<(), ConfigError> {
        for (i, r) in self.rule.iter().enumerate() {
            let invalid = |e: crate::rules::RuleError| ConfigError::Invalid {
                path: path.into(),
                key: match e {
                    crate::rules::RuleError::UnknownField { .. } => format!("rule[{i}]"),
                    _ => format!("rule[{i}].when"),
                },
                reason: e.to_string(),
            };
            let rule =
                crate::rules::Rule::new(&r.name, &r.probe, &r.when, &r.cause).map_err(invalid)?;
            let mut vms = self
                .vm
                .iter()
                .filter(|vm| r.vm.as_deref().is_none_or(|v| v == vm.name))
                .map(|vm| vm.sources.as_slice())
                .peekable();
            let none: &[vesper_probe::ProbeSource] = &[];
            let sources: Vec<_> = if vms.peek().is_none() {
                vec![none]
            } else {
                vms.collect()
            };
            for s in sources {
                if let Some(fields) = crate::rules::fields_of(&r.probe, s) {
                    rule.validate(&fields).map_err(invalid)?;
                }
            }
        }
        Ok(())
    }

    /// Reads the probe files a VM names and checks their syntax now, so a broken probe
    /// is reported at startup with its file and line, not at the next connect.
    fn resolve_probes(&mut self, path: &Path) -> Result<(), ConfigError> {
        let base = path.parent().unwrap_or(Path::new("."));
        for (i, vm) in self.vm.iter_mut().enumerate() {
            let key = format!("vm[{i}].probes");
            let invalid = |reason: String| ConfigError::Invalid {
                path: path.into(),
                key: key.clone(),
                reason,
            };
            let mut sources = Vec::new();
            for p in &vm.probes {
                if vesper_probe::builtin::is_builtin(p) {
                    sources.push(vesper_probe::ProbeSource::Builtin(p.clone()));
                    continue;
                }
                let file = base.join(p);
                let name = vesper_probe::probe_name_from_path(p)
                    .ok_or_else(|| invalid(format!("{p:?}: the file name must be letters, digits, '-' or '_' (it names the probe)")))?;
                let src = if p.ends_with(".o") {
                    let bytes = std::fs::read(&file)
                        .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                    vesper_probe::ProbeSource::from_object(&name, bytes)
                        .map_err(|e| invalid(e.to_string()))?
                } else {
                    let text = std::fs::read_to_string(&file)
                        .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
                    let s = vesper_probe::ProbeSource::Script {
                        name,
                        file: file.display().to_string(),
                        text,
                    };
                    s.kernel_keys().map_err(|e| invalid(format!("\n{e}")))?;
                    s
                };
                if sources
                    .iter()
                    .any(|s: &vesper_probe::ProbeSource| s.name() == src.name())
                {
                    return Err(invalid(format!("two probes are named {:?}", src.name())));
                }
                sources.push(src);
            }
            vm.sources = sources;
        }
        // A rule on a built-in probe needs its records: load that probe too (a VM that
        // watches services gets `signal` and `oom` without listing them).
        let needed: Vec<Vec<String>> = self
            .vm
            .iter()
            .map(|vm| self.rules_for(vm).into_iter().map(|r| r.probe).collect())
            .collect();
        for (vm, needed) in self.vm.iter_mut().zip(needed) {
            for p in needed {
                if vesper_probe::builtin::is_builtin(&p)
                    && !vm.sources.iter().any(|s| s.name() == p)
                {
                    vm.sources.push(vesper_probe::ProbeSource::Builtin(p));
                }
            }
        }
        Ok(())
    }

    /// The rules that judge `vm`'s records: the built-in ones for a VM with a resource,
    /// then the configured ones that apply to it.
    pub fn rules_for(&self, vm: &VmConfig) -> Vec<crate::rules::Rule> {
        let mut rules = if vm.resource.is_some() {
            crate::rules::builtin(&vm.watch)
        } else {
            Vec::new()
        };
        for r in self
            .rule
            .iter()
            .filter(|r| r.vm.as_deref().is_none_or(|v| v == vm.name))
        {
            // Checked in validate().
            if let Ok(rule) = crate::rules::Rule::new(&r.name, &r.probe, &r.when, &r.cause) {
                rules.push(rule);
            }
        }
        rules
    }

    pub fn vm(&self, name: &str) -> Option<&VmConfig> {
        self.vm.iter().find(|v| v.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("vesper.toml"), text)
    }

    #[test]
    fn the_design_example_parses() {
        let c = parse(
            r#"
[daemon]
socket = "/run/vesper/vesper.sock"
state_dir = "/var/lib/vesper"
[[vm]]
name = "web1"
channel = "unix:/run/vesper/web1.sock"
probes = ["signal"]
resource = "web1"
"#,
        )
        .unwrap();
        assert_eq!(c.vm[0].name, "web1");
        assert_eq!(c.vm[0].resource.as_deref(), Some("web1"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = parse("[daemon]\nsockett = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("vesper.toml: line 2:"), "{e}");
        assert!(e.contains("sockett"), "{e}");
    }

    #[test]
    fn unknown_probe_lists_the_known_ones() {
        let e = parse("[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\nprobes = [\"sigal\"]\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "vesper.toml: key `vm[0].probes`: unknown probe \"sigal\"; built-in probes are: \
             signal, oom, exit, fork, reclaim, hung (or name a .vsp script or .o object)"
        );
    }

    #[test]
    fn duplicate_vm_and_bad_channel_are_named() {
        let e = parse("[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\n[[vm]]\nname = \"a\"\nchannel = \"unix:/y\"\n").unwrap_err();
        assert!(e.to_string().contains("vm[1].name"), "{e}");
        let e = parse("[[vm]]\nname = \"a\"\nchannel = \"tcp:1\"\n").unwrap_err();
        assert!(e.to_string().contains("vm[0].channel"), "{e}");
    }

    #[test]
    fn the_pacemaker_example_parses_and_watching_loads_the_probes_it_needs() {
        let text = include_str!("../../../examples/pacemaker/vesper.toml");
        let c = parse(text).unwrap();
        let vm = &c.vm[0];
        assert_eq!(vm.resource.as_deref(), Some("vm-web1"));
        let rules: Vec<String> = c.rules_for(vm).into_iter().map(|r| r.name).collect();
        assert_eq!(
            rules,
            [
                "service-killed",
                "service-oom",
                "agent-silent",
                "guest-panic",
                "guest-shutdown",
                "sshd-gone"
            ]
        );
        let watching = parse(
            "[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\nresource = \"r\"\nwatch = [\"httpd\"]\n",
        )
        .unwrap();
        let probes: Vec<&str> = watching.vm[0].sources.iter().map(|s| s.name()).collect();
        assert_eq!(probes, ["signal", "oom"]);
    }

    #[test]
    fn a_rule_on_a_field_the_probe_lacks_is_refused_with_the_fields_it_has() {
        let e = parse(
            "[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\n[[rule]]\nname = \"r\"\nprobe = \"oom\"\nwhen = 'victim == \"x\"'\ncause = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(
                "vesper.toml: key `rule[0]`: rule \"r\": records of probe \"oom\" have no field \"victim\""
            ),
            "{e}"
        );
        assert!(e.contains("victim_comm"), "{e}");
    }

    #[test]
    fn a_rule_with_a_literal_of_the_wrong_type_is_refused_with_the_fix() {
        let e = parse(
            "[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\n[[rule]]\nname = \"kill9\"\nprobe = \"signal\"\nwhen = 'sig == \"9\"'\ncause = \"c\"\n",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "vesper.toml: key `rule[0].when`: rule \"kill9\" on probe \"signal\": sig is an integer and \"9\" is a string: write sig == 9"
        );
    }

    #[test]
    fn a_rule_on_a_script_probe_is_typed_by_the_script() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("opens.vsp"),
            "tracepoint:syscalls:sys_enter_openat { emit { who = comm, n = pid } }\n",
        )
        .unwrap();
        let config = dir.path().join("vesper.toml");
        let text = |when: &str| {
            format!(
                "[[vm]]\nname = \"a\"\nchannel = \"unix:/x\"\nprobes = [\"opens.vsp\"]\n[[rule]]\nname = \"o\"\nprobe = \"opens\"\nwhen = '{when}'\ncause = \"{{who}}\"\n"
            )
        };
        assert!(Config::parse(&config, &text("who == \"cat\" && n > 1")).is_ok());
        let e = Config::parse(&config, &text("who == 1"))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("who is a string and 1 is an integer: write who == \"1\""),
            "{e}"
        );
    }
}
