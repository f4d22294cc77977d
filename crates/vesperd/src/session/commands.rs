//! Requests from the control API to a session: answered while disconnected (editing the
//! desired probe set) and while connected (sent to the agent).

use super::*;

fn not_connected(why: String) -> ApiError {
    ApiError::new(ErrorCode::NotConnected, why)
}

impl Session {
    pub(super) fn command_offline(&mut self, cmd: SessionCmd) {
        match cmd {
            SessionCmd::Load { probe, reply } => {
                if let Err(e) = probe.kernel_keys() {
                    let _ = reply.send(Err(ApiError::new(ErrorCode::ProbeRefused, e.to_string())));
                    return;
                }
                if self.desired.iter().any(|d| d.name() == probe.name()) {
                    let _ = reply.send(Err(self.already_loaded(probe.name())));
                    return;
                }
                self.desired.push(probe);
                let _ = reply.send(Ok(LoadOutcome::Pending));
            }
            SessionCmd::Unload { probe, reply } => {
                let r = if self.desired.iter().any(|d| d.name() == probe) {
                    self.desired.retain(|d| d.name() != probe);
                    Ok(Vec::new())
                } else {
                    Err(ApiError::new(
                        ErrorCode::NotLoaded,
                        format!("probe {probe:?} is not loaded in {}", self.name),
                    ))
                };
                let _ = reply.send(r);
            }
            SessionCmd::Status { reply } => {
                let _ = reply.send(self.status());
            }
            SessionCmd::Maps { reply, .. } => {
                let _ = reply.send(Err(not_connected(format!(
                    "{} is not connected (state {:?}): its maps live in its kernel, read through its agent",
                    self.name,
                    self.link.state()
                ))));
            }
            SessionCmd::Host(ev) => self.on_host_event(ev),
            SessionCmd::KernelInfo { reply, .. } => {
                let _ = reply.send(Err(not_connected(format!(
                    "{} is not connected (state {:?}); its agent must be up to ask its kernel",
                    self.name,
                    self.link.state()
                ))));
            }
        }
    }

    pub(super) async fn on_command(
        &mut self,
        cmd: SessionCmd,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        if matches!(self.link, Link::Handshake { .. }) {
            // Not ready to talk to the agent yet: loads wait for Hello (moments away),
            // anything else is answered as if offline.
            match cmd {
                SessionCmd::Load { probe, reply } => self.pending.hello.push((probe, reply)),
                other => self.command_offline(other),
            }
            return Ok(());
        }
        match cmd {
            SessionCmd::Load { probe, reply } => self.start_load(probe, Some(reply), wr).await,
            SessionCmd::Unload { probe, reply } => {
                self.desired.retain(|d| d.name() != probe);
                // The maps are read first: their last values go with the reply.
                self.read_maps(&probe, true, reply, wr).await
            }
            SessionCmd::Maps { probe, reply } => self.read_maps(&probe, false, reply, wr).await,
            SessionCmd::Status { reply } => {
                let _ = reply.send(self.status());
                Ok(())
            }
            SessionCmd::Host(ev) => {
                self.on_host_event(ev);
                Ok(())
            }
            SessionCmd::KernelInfo { keys, reply } => {
                if keys.iter().any(|k| k == vesper_probe::compiler::TYPES_KEY)
                    && self.kernel.types.is_none()
                {
                    let why = match self.kernel_fetch.status() {
                        s if self.types_pending() => ApiError::new(ErrorCode::TryAgain, format!(
                            "the guest kernel's types are still arriving ({} KiB so far): try again in a moment",
                            s.received_bytes / 1024
                        )),
                        s => ApiError::new(ErrorCode::AgentFailed, format!(
                            "the guest kernel's types are unavailable: {}",
                            s.error.unwrap_or_else(|| {
                                "its agent does not send them (an older agent, or a kernel without /sys/kernel/btf/vmlinux)".into()
                            })
                        )),
                    };
                    let _ = reply.send(Err(why));
                    return Ok(());
                }
                if let Some(k) = self.kernel_subset(&keys) {
                    let _ = reply.send(Ok(k));
                    return Ok(());
                }
                let missing = self.missing_formats(&keys);
                self.pending.info.push((keys, reply));
                self.send(wr, &Message::KernelInfoRequest { events: missing })
                    .await
            }
        }
    }
}
