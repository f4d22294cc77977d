//! Probe loading: compiling a probe for this guest's kernel (fetching the kernel info it
//! needs first) and shipping it.

use super::*;

impl Session {
    /// The cached kernel info restricted to `keys`, if every key is known.
    pub(super) fn kernel_subset(&self, keys: &[String]) -> Option<KernelInfo> {
        let mut k = KernelInfo {
            release: self.kernel.release.clone(),
            btf: self.kernel.btf,
            formats: Default::default(),
            // 5+ MiB of BTF only for a script that reads kernel types.
            types: keys
                .iter()
                .any(|k| k == vesper_probe::compiler::TYPES_KEY)
                .then(|| self.kernel.types.clone())
                .flatten(),
        };
        for key in keys
            .iter()
            .filter(|k| *k != vesper_probe::compiler::TYPES_KEY)
        {
            k.formats
                .insert(key.clone(), self.kernel.formats.get(key)?.clone());
        }
        Some(k)
    }

    /// The tracepoint and function keys of `keys` this session has no layout for yet (the
    /// types come by their own transfer, not by a KernelInfo request).
    pub(super) fn missing_formats<'k>(
        &self,
        keys: impl IntoIterator<Item = &'k String>,
    ) -> Vec<String> {
        keys.into_iter()
            .filter(|k| {
                *k != vesper_probe::compiler::TYPES_KEY
                    && !self.kernel.formats.contains_key(k.as_str())
            })
            .cloned()
            .collect()
    }

    /// Compiles `probe` for this guest's kernel and ships it, fetching the kernel's
    /// tracepoint formats first if they are not known yet.
    pub(super) async fn start_load(
        &mut self,
        probe: ProbeSource,
        reply: Option<LoadReply>,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let fail = |reply: Option<LoadReply>, e: ApiError| {
            if let Some(r) = reply {
                let _ = r.send(Err(e));
            }
        };
        let events = match probe.kernel_keys() {
            Ok(e) => e,
            Err(e) => {
                fail(reply, ApiError::new(ErrorCode::ProbeRefused, e.to_string()));
                return Ok(());
            }
        };
        if self.probes.values().any(|p| &*p.name == probe.name()) {
            fail(reply, self.already_loaded(probe.name()));
            return Ok(());
        }
        if events
            .iter()
            .any(|e| e == vesper_probe::compiler::TYPES_KEY)
            && self.types_pending()
        {
            self.pending.kernel_types.push((probe, reply));
            return Ok(());
        }
        let missing = self.missing_formats(&events);
        if !missing.is_empty() {
            let ask = !self.pending.kernel_info.is_empty();
            self.pending.kernel_info.push((probe, reply));
            if !ask {
                self.send(wr, &Message::KernelInfoRequest { events: missing })
                    .await?;
            }
            return Ok(());
        }
        let compiled = match probe.build(&self.kernel) {
            Ok(c) => c,
            Err(e) => {
                let name = probe.name();
                tracing::warn!(vm = %self.name, probe = %name, error = %e, "cannot build probe for this guest");
                self.desired.retain(|d| d.name() != name);
                fail(
                    reply,
                    ApiError::new(
                        ErrorCode::ProbeRefused,
                        format!(
                            "cannot build {name} for {} (kernel {}):\n{e}",
                            self.name, self.kernel.release
                        ),
                    ),
                );
                return Ok(());
            }
        };
        let name = probe.name().to_string();
        // The rules on this probe, against its records as this guest's kernel shapes them.
        if let Some(j) = &self.judge {
            for r in j.rules.iter().filter(|r| r.probe == name) {
                r.bind(&self.name, &compiled.manifest);
            }
        }
        if !self.desired.iter().any(|d| d.name() == name) {
            self.desired.push(probe);
        }
        let probe_id = self.next_probe_id;
        self.next_probe_id += 1;
        let m = &compiled.manifest;
        let load = LoadProbe {
            probe_id,
            name: name.clone(),
            object: compiled.object,
            ring_map: m.ring_map.clone(),
            drops_map: m.drops_map.clone(),
            attach: m
                .attach
                .iter()
                .map(|a| AttachPoint {
                    program: a.program.clone(),
                    kind: attach_kind(a.kind),
                    target: a.target.clone(),
                })
                .collect(),
        };
        self.probes.insert(
            probe_id,
            ActiveProbe {
                status: ProbeStatus {
                    name: name.clone(),
                    probe_id,
                    phase: ProbePhase::Loading,
                    received: 0,
                    next_seq: 0,
                    kernel_drops: 0,
                    agent_drops: 0,
                    transport_lost: 0,
                    replayed: 0,
                    malformed: 0,
                    load_us: None,
                },
                next_interval: vec![None; compiled.manifest.intervals.len()],
                manifest: compiled.manifest,
                name: name.into(),
            },
        );
        if let Some(r) = reply {
            self.pending.loads.insert(probe_id, r);
        }
        self.send(wr, &Message::LoadProbe(load)).await
    }

    pub(super) fn already_loaded(&self, probe: &str) -> ApiError {
        ApiError::new(
            ErrorCode::AlreadyLoaded,
            format!(
                "probe {probe:?} is already loaded in {}; unload it first",
                self.name
            ),
        )
    }
}

pub(super) fn attach_kind(k: vesper_probe::AttachKind) -> vesper_proto::AttachKind {
    match k {
        vesper_probe::AttachKind::Tracepoint => vesper_proto::AttachKind::Tracepoint,
        vesper_probe::AttachKind::Kprobe => vesper_proto::AttachKind::Kprobe,
        vesper_probe::AttachKind::Kretprobe => vesper_proto::AttachKind::Kretprobe,
    }
}

/// A verifier's refusal of a script's program, shown at the script's line it came from
/// (the agent's message names the program and carries the verifier's log).
pub(super) fn refusal_at_source(
    desired: &[ProbeSource],
    probe: &ActiveProbe,
    message: &str,
) -> Option<String> {
    let (file, text) = desired.iter().find_map(|d| match d {
        ProbeSource::Script { name, file, text } if **name == *probe.name => Some((file, text)),
        _ => None,
    })?;
    let program = message.split_once("loading program ")?.1.split_once(' ')?.0;
    let log = message.split_once("Verifier output:")?.1;
    vesper_probe::compiler::verifier::explain(&probe.manifest, program, log, file, text)
        .map(|d| d.to_string())
}
