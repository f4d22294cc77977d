//! Reading a probe's maps from its agent: one `MapRequest` per map, the answers decoded
//! with the probe's manifest and gathered, then what the read was for: the reply to
//! `vesper maps`; an unload, which reads the maps first so their last values are not lost
//! with the probe; or an `interval` probe's turn, which stores the printed maps as a record.

use super::*;
use vesper_probe::map_values::{self, MapDump};
use vesper_proto::MapEntries;

pub type MapsReply = oneshot::Sender<Result<Vec<MapDump>, ApiError>>;

/// Bytes of entries one read may bring: a frame's payload is at most 1 MiB.
const READ_BYTES: u32 = 960 * 1024;

/// What a read of maps is for.
pub(super) enum After {
    /// `vesper maps`: the maps go to the caller.
    Reply(MapsReply),
    /// Unload the probe once read; its last values go with the unload's reply.
    Unload(MapsReply),
    /// An interval probe's turn: these maps (symbols) are stored as records, the others
    /// were only cleared.
    Store { print: Vec<String> },
}

/// A read of one probe's maps under way.
pub(super) struct MapRead {
    probe_id: u32,
    /// Maps (their symbols) not answered yet.
    waiting: Vec<String>,
    got: Vec<(String, MapDump)>,
    errors: Vec<String>,
    pub(super) then: After,
}

impl Session {
    /// Asks the agent for every map of probe `name`.
    pub(super) async fn read_maps(
        &mut self,
        name: &str,
        then_unload: bool,
        reply: MapsReply,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let Some((&probe_id, p)) = self.probes.iter().find(|(_, p)| &*p.name == name) else {
            let _ = reply.send(Err(ApiError::new(
                ErrorCode::NotLoaded,
                format!("probe {name:?} is not loaded in {}", self.name),
            )));
            return Ok(());
        };
        let symbols: Vec<String> = p.manifest.maps.iter().map(|m| m.symbol.clone()).collect();
        let can = self
            .link
            .greeted()
            .is_some_and(|g| g.agent.capabilities & vesper_proto::message::caps::MAPS != 0);
        if symbols.is_empty() || !can {
            if then_unload {
                return self.unload_now(probe_id, reply, Vec::new(), wr).await;
            }
            let _ = reply.send(if symbols.is_empty() {
                Ok(Vec::new())
            } else {
                Err(ApiError::new(ErrorCode::AgentFailed, format!(
                    "the agent in {} cannot read maps (an older vesper-agent): update the guest's vesper-agent package",
                    self.name
                )))
            });
            return Ok(());
        }
        let then = if then_unload {
            After::Unload(reply)
        } else {
            After::Reply(reply)
        };
        self.request_maps(probe_id, symbols, &[], then, wr).await
    }

    /// Sends one request per map (emptying those in `clear`) and waits for the answers.
    async fn request_maps(
        &mut self,
        probe_id: u32,
        symbols: Vec<String>,
        clear: &[String],
        then: After,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        for map in &symbols {
            let msg = Message::MapRequest {
                probe_id,
                map: map.clone(),
                max_bytes: READ_BYTES,
                clear: clear.contains(map),
            };
            self.send(wr, &msg).await?;
        }
        self.pending.map_reads.push(MapRead {
            probe_id,
            waiting: symbols,
            got: Vec::new(),
            errors: Vec::new(),
            then,
        });
        Ok(())
    }

    /// Every interval probe whose time has come: its maps are read (and emptied where it
    /// says `clear`). A turn whose last read is still under way is skipped, not queued.
    pub(super) async fn run_intervals(&mut self, wr: &mut WriteHalf<BoxStream>) -> Result<(), End> {
        let now = Instant::now();
        let mut due = Vec::new();
        for (&probe_id, p) in self.probes.iter_mut() {
            if p.status.phase != ProbePhase::Loaded {
                continue;
            }
            for (spec, next) in p.manifest.intervals.iter().zip(p.next_interval.iter_mut()) {
                let every = Duration::from_millis(spec.every_ms);
                let at = *next.get_or_insert(now + every);
                if now >= at {
                    // The next turn one interval on; after a stall, one interval from now
                    // (turns missed are not made up).
                    let after = at + every;
                    *next = Some(if after <= now { now + every } else { after });
                    due.push((probe_id, spec.clone()));
                }
            }
        }
        for (probe_id, spec) in due {
            let busy = self
                .pending
                .map_reads
                .iter()
                .any(|r| r.probe_id == probe_id && matches!(r.then, After::Store { .. }));
            if busy {
                continue;
            }
            let mut symbols = spec.print.clone();
            symbols.extend(
                spec.clear
                    .iter()
                    .filter(|c| !spec.print.contains(c))
                    .cloned(),
            );
            let then = After::Store { print: spec.print };
            self.request_maps(probe_id, symbols, &spec.clear, then, wr)
                .await?;
        }
        Ok(())
    }

    /// An interval probe's printed maps, stored as records of the probe.
    fn store_maps(&mut self, probe_id: u32, dumps: Vec<MapDump>) {
        let Some(probe) = self.probes.get(&probe_id).map(|p| p.name.clone()) else {
            return;
        };
        let mut records = Vec::new();
        for d in dumps {
            let seq = self.host_seq;
            self.host_seq += 1;
            let value = serde_json::json!({
                "vm": self.name,
                "probe": &*probe,
                "seq": seq,
                "map": d.name,
                "kind": d.kind,
                "total": d.total,
                "entries": d.entries,
                "host_ms": now_ms(),
            });
            records.push(StoredRecord {
                probe: probe.clone(),
                seq,
                json: value.to_string().into(),
            });
        }
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        store.push_batch(records);
    }

    pub(super) async fn on_map_entries(
        &mut self,
        m: MapEntries,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let Some(i) = self
            .pending
            .map_reads
            .iter()
            .position(|r| r.probe_id == m.probe_id && r.waiting.contains(&m.map))
        else {
            tracing::debug!(vm = %self.name, probe_id = m.probe_id, "map entries nobody asked for");
            return Ok(());
        };
        let spec = self
            .probes
            .get(&m.probe_id)
            .and_then(|p| p.manifest.maps.iter().find(|s| s.symbol == m.map))
            .cloned();
        let read = &mut self.pending.map_reads[i];
        read.waiting.retain(|s| *s != m.map);
        match spec
            .map(|s| map_values::decode(&s, m.cpus, m.key_size, m.value_size, m.total, &m.entries))
        {
            Some(Ok(d)) => read.got.push((m.map.clone(), d)),
            Some(Err(e)) => read.errors.push(e.to_string()),
            None => read
                .errors
                .push(format!("map {}: the probe is gone", m.map)),
        }
        if !read.waiting.is_empty() {
            return Ok(());
        }
        let read = self.pending.map_reads.remove(i);
        // In the order of the manifest, whatever order the answers came in.
        let mut got = read.got;
        if let Some(p) = self.probes.get(&read.probe_id) {
            let place = |sym: &str| p.manifest.maps.iter().position(|m| m.symbol == sym);
            got.sort_by_key(|(sym, _)| place(sym));
        }
        match read.then {
            After::Unload(reply) => {
                for e in &read.errors {
                    tracing::warn!(vm = %self.name, probe_id = read.probe_id, error = %e, "a map's last values are lost with the unload");
                }
                let dumps = got.into_iter().map(|(_, d)| d).collect();
                self.unload_now(read.probe_id, reply, dumps, wr).await
            }
            After::Reply(reply) => {
                let _ = reply.send(if read.errors.is_empty() {
                    Ok(got.into_iter().map(|(_, d)| d).collect())
                } else {
                    Err(ApiError::new(
                        ErrorCode::AgentFailed,
                        read.errors.join("; "),
                    ))
                });
                Ok(())
            }
            After::Store { print } => {
                for e in &read.errors {
                    tracing::warn!(vm = %self.name, probe_id = read.probe_id, error = %e, "an interval's map could not be read");
                }
                let dumps = got
                    .into_iter()
                    .filter(|(sym, _)| print.contains(sym))
                    .map(|(_, d)| d)
                    .collect();
                self.store_maps(read.probe_id, dumps);
                Ok(())
            }
        }
    }

    /// The agent could not read a map of `probe_id`: that read fails (an unload goes on).
    pub(super) async fn map_read_failed(
        &mut self,
        probe_id: u32,
        message: &str,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let Some(i) = self
            .pending
            .map_reads
            .iter()
            .position(|r| r.probe_id == probe_id)
        else {
            return Ok(());
        };
        let read = self.pending.map_reads.remove(i);
        let why = format!("the agent in {} could not read a map: {message}", self.name);
        match read.then {
            After::Unload(reply) => {
                tracing::warn!(vm = %self.name, probe_id, error = %why, "the maps' last values are lost with the unload");
                let dumps = read.got.into_iter().map(|(_, d)| d).collect();
                self.unload_now(probe_id, reply, dumps, wr).await
            }
            After::Reply(reply) => {
                let _ = reply.send(Err(ApiError::new(ErrorCode::AgentFailed, why)));
                Ok(())
            }
            After::Store { .. } => {
                tracing::warn!(vm = %self.name, probe_id, error = %why, "an interval's maps could not be read");
                Ok(())
            }
        }
    }

    pub(super) async fn unload_now(
        &mut self,
        probe_id: u32,
        reply: MapsReply,
        last: Vec<MapDump>,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        self.pending.unloads.insert(probe_id, (reply, last));
        self.send(wr, &Message::UnloadProbe { probe_id }).await
    }
}
