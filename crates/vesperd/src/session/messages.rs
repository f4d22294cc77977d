//! What the agent sends, by state: the Hello that makes a session Ready, then kernel
//! layouts, probe load and unload answers, records, map entries, kernel files and errors.

use super::*;

impl Session {
    pub(super) async fn on_message(
        &mut self,
        msg: Message,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let handshake = matches!(self.link, Link::Handshake { .. });
        if !handshake && matches!(msg, Message::Hello(_)) {
            // Not "heard from": the agent that was is gone (a new one on the same channel).
            return Err("agent sent a second Hello".into());
        }
        self.last_heard = Some(Instant::now());
        if matches!(self.link, Link::Unresponsive(_)) {
            tracing::info!(vm = %self.name, "agent heard from again");
            self.host_record("agent_responsive", String::new(), false);
            self.set_responsive(true);
        }
        match (handshake, msg) {
            (true, Message::Hello(h)) => self.on_hello(h, wr).await,
            (true, other) => Err(format!("agent sent {:?} before Hello", other.kind())),
            (_, Message::KernelInfo(k)) => {
                for f in k.formats {
                    let parsed = f.format.and_then(|t| parse_format(&f.event, &t).ok());
                    self.kernel.formats.insert(f.event, parsed);
                }
                self.kernel.btf = k.btf;
                self.kernel.release = k.release;
                for (keys, reply) in std::mem::take(&mut self.pending.info) {
                    let _ = reply.send(self.kernel_subset(&keys).ok_or_else(|| {
                        ApiError::new(ErrorCode::AgentFailed, "the agent did not answer every key")
                    }));
                }
                let waiting: Vec<_> = self.pending.kernel_info.drain(..).collect();
                for (probe, reply) in waiting {
                    self.start_load(probe, reply, wr).await?;
                }
                Ok(())
            }
            (_, Message::ProbeLoaded { probe_id, load_us }) => {
                if let Some(p) = self.probes.get_mut(&probe_id) {
                    p.status.phase = ProbePhase::Loaded;
                    p.status.load_us = Some(load_us);
                    tracing::info!(vm = %self.name, probe = %p.name, probe_id, load_us, "probe loaded");
                    self.end_gap();
                    self.note_observing(true);
                }
                if let Some(r) = self.pending.loads.remove(&probe_id) {
                    let _ = r.send(Ok(LoadOutcome::Loaded { probe_id, load_us }));
                }
                Ok(())
            }
            (_, Message::ProbeUnloaded { probe_id }) => {
                if let Some(p) = self.probes.remove(&probe_id) {
                    tracing::info!(vm = %self.name, probe = %p.name, probe_id, "probe unloaded");
                }
                if let Some((r, last)) = self.pending.unloads.remove(&probe_id) {
                    let _ = r.send(Ok(last));
                }
                Ok(())
            }
            (
                _,
                Message::Error {
                    probe_id: 0,
                    code,
                    message,
                },
            ) if code == vesper_proto::message::error_code::KERNEL_FILE => {
                let step = self.kernel_fetch.refused(&truncate(&message, 4096));
                self.kernel_step(step, wr).await
            }
            (
                _,
                Message::Error {
                    probe_id,
                    code,
                    message,
                },
            ) if code == vesper_proto::message::error_code::MAP_READ => {
                self.map_read_failed(probe_id, &truncate(&message, 4096), wr)
                    .await
            }
            (
                _,
                Message::Error {
                    probe_id,
                    code,
                    message,
                },
            ) => {
                let failed = self
                    .probes
                    .get(&probe_id)
                    .filter(|p| p.status.phase == ProbePhase::Loading)
                    .is_some();
                let mut at_source = None;
                if failed && let Some(p) = self.probes.remove(&probe_id) {
                    tracing::warn!(vm = %self.name, probe = %p.name, error = %message, "probe failed to load");
                    at_source = probes::refusal_at_source(&self.desired, &p, &message);
                    self.desired.retain(|d| d.name() != &*p.name);
                }
                let message = truncate(&message, 4096);
                if let Some(r) = self.pending.loads.remove(&probe_id) {
                    let why = match at_source {
                        Some(d) => {
                            format!("the agent in {} could not load the probe:\n{d}", self.name)
                        }
                        None => format!(
                            "the agent in {} could not load the probe: {message}",
                            self.name
                        ),
                    };
                    let _ = r.send(Err(ApiError::new(ErrorCode::ProbeRefused, why)));
                } else if let Some((r, _)) = self.pending.unloads.remove(&probe_id) {
                    let _ = r.send(Err(ApiError::new(ErrorCode::AgentFailed, message)));
                } else if !failed {
                    tracing::warn!(vm = %self.name, probe_id, code, error = %message, "agent reported an error");
                }
                Ok(())
            }
            (_, Message::MapEntries(m)) => self.on_map_entries(m, wr).await,
            (_, Message::Records(batch)) => {
                self.on_records(batch);
                Ok(())
            }
            (_, Message::KernelFile(piece)) => {
                let kernels = &self.kernels;
                let step = self
                    .kernel_fetch
                    .on_piece(piece, |id| kernels.in_memory(id));
                self.kernel_step(step, wr).await
            }
            (_, Message::Heartbeat { .. } | Message::ProbeList { .. }) => Ok(()),
            (_, other) => Err(format!(
                "agent sent a host-only message ({:?})",
                other.kind()
            )),
        }
    }

    async fn on_hello(&mut self, h: Hello, wr: &mut WriteHalf<BoxStream>) -> Result<(), End> {
        let agent = AgentInfo {
            version: truncate(&h.agent_version, 64),
            kernel_release: truncate(&h.kernel_release, 128),
            boot_id: truncate(&h.boot_id, 64),
            capabilities: h.capabilities,
        };
        tracing::info!(vm = %self.name, agent = %agent.version, kernel = %agent.kernel_release, "session up");
        self.unknown_probe_logged = false;
        self.kernel.release = agent.kernel_release.clone();
        if self.guest != GuestState::Running {
            self.guest = GuestState::Running;
            self.host_record(
                "guest_back",
                format!("agent connected, boot id {}", agent.boot_id),
                false,
            );
        }
        self.enter(Link::Ready(Greeted {
            agent,
            reset_at: None,
        }));
        self.connected_since_ms = Some(now_ms());
        if h.capabilities & vesper_proto::message::caps::KERNEL_FILES != 0 {
            let step = self.kernel_fetch.start();
            self.kernel_step(step, wr).await?;
        }
        for probe in self.desired.clone() {
            self.start_load(probe, None, wr).await?;
        }
        for (probe, reply) in std::mem::take(&mut self.pending.hello) {
            self.start_load(probe, Some(reply), wr).await?;
        }
        Ok(())
    }
}
