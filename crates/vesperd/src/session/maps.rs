//! Reading a probe's maps from its agent: one `MapRequest` per map, the answers decoded
//! with the probe's manifest and gathered, then the reply: to `vesper maps`, or to an
//! unload, which reads the maps first so their last values are not lost with the probe.

use super::*;
use vesper_probe::map_values::{self, MapDump};
use vesper_proto::MapEntries;

pub type MapsReply = oneshot::Sender<Result<Vec<MapDump>, String>>;

/// Bytes of entries one read may bring: a frame's payload is at most 1 MiB.
const READ_BYTES: u32 = 960 * 1024;

/// A read of one probe's maps under way.
pub(super) struct MapRead {
    probe_id: u32,
    /// Maps (their symbols) not answered yet.
    waiting: Vec<String>,
    got: Vec<MapDump>,
    errors: Vec<String>,
    /// Unload the probe once read; its last values go with the unload's reply.
    then_unload: bool,
    reply: MapsReply,
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
            let _ = reply.send(Err(format!(
                "probe {name:?} is not loaded in {}",
                self.name
            )));
            return Ok(());
        };
        let symbols: Vec<String> = p.manifest.maps.iter().map(|m| m.symbol.clone()).collect();
        let can = self
            .agent
            .as_ref()
            .is_some_and(|a| a.capabilities & vesper_proto::message::caps::MAPS != 0);
        if symbols.is_empty() || !can {
            if then_unload {
                return self.unload_now(probe_id, reply, Vec::new(), wr).await;
            }
            let _ = reply.send(if symbols.is_empty() {
                Ok(Vec::new())
            } else {
                Err(format!(
                    "the agent in {} cannot read maps (an older vesper-agent): update the guest's vesper-agent package",
                    self.name
                ))
            });
            return Ok(());
        }
        for map in &symbols {
            let msg = Message::MapRequest {
                probe_id,
                map: map.clone(),
                max_bytes: READ_BYTES,
                clear: false,
            };
            self.send(wr, &msg).await?;
        }
        self.map_reads.push(MapRead {
            probe_id,
            waiting: symbols,
            got: Vec::new(),
            errors: Vec::new(),
            then_unload,
            reply,
        });
        Ok(())
    }

    pub(super) async fn on_map_entries(
        &mut self,
        m: MapEntries,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let Some(i) = self
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
        let read = &mut self.map_reads[i];
        read.waiting.retain(|s| *s != m.map);
        match spec
            .map(|s| map_values::decode(&s, m.cpus, m.key_size, m.value_size, m.total, &m.entries))
        {
            Some(Ok(d)) => read.got.push(d),
            Some(Err(e)) => read.errors.push(e.to_string()),
            None => read
                .errors
                .push(format!("map {}: the probe is gone", m.map)),
        }
        if !read.waiting.is_empty() {
            return Ok(());
        }
        let read = self.map_reads.remove(i);
        if read.then_unload {
            for e in &read.errors {
                tracing::warn!(vm = %self.name, probe_id = read.probe_id, error = %e, "a map's last values are lost with the unload");
            }
            return self
                .unload_now(read.probe_id, read.reply, read.got, wr)
                .await;
        }
        let _ = read.reply.send(if read.errors.is_empty() {
            Ok(read.got)
        } else {
            Err(read.errors.join("; "))
        });
        Ok(())
    }

    /// The agent could not read a map of `probe_id`: that read fails (an unload goes on).
    pub(super) async fn map_read_failed(
        &mut self,
        probe_id: u32,
        message: &str,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        let Some(i) = self.map_reads.iter().position(|r| r.probe_id == probe_id) else {
            return Ok(());
        };
        let read = self.map_reads.remove(i);
        let why = format!("the agent in {} could not read a map: {message}", self.name);
        if read.then_unload {
            tracing::warn!(vm = %self.name, probe_id, error = %why, "the maps' last values are lost with the unload");
            return self.unload_now(probe_id, read.reply, read.got, wr).await;
        }
        let _ = read.reply.send(Err(why));
        Ok(())
    }

    pub(super) async fn unload_now(
        &mut self,
        probe_id: u32,
        reply: MapsReply,
        last: Vec<MapDump>,
        wr: &mut WriteHalf<BoxStream>,
    ) -> Result<(), End> {
        self.unload_replies.insert(probe_id, (reply, last));
        self.send(wr, &Message::UnloadProbe { probe_id }).await
    }

    /// The connection ended: reads fail, unloads are done (the agent's end unloads all).
    pub(super) fn end_map_reads(&mut self) {
        for r in self.map_reads.drain(..) {
            let _ = r.reply.send(if r.then_unload {
                Ok(Vec::new())
            } else {
                Err("the agent disconnected before answering".into())
            });
        }
    }
}
