//! The replies a session owes: every request waiting on the agent, or on a state still to
//! come, in one place, and how each is answered when the connection ends.

use std::collections::HashMap;

use vesper_probe::ProbeSource;
use vesper_probe::map_values::MapDump;

use super::maps::{After, MapRead, MapsReply};
use super::{ApiError, ErrorCode, KernelInfoReply, LoadOutcome, LoadReply};

fn gone() -> ApiError {
    ApiError::new(
        ErrorCode::NotConnected,
        "the agent disconnected before answering",
    )
}

#[derive(Default)]
pub(super) struct Pending {
    /// Loads asked for during the handshake: started once the agent says Hello.
    pub hello: Vec<(ProbeSource, LoadReply)>,
    /// Loads waiting for the layouts of their events (one `KernelInfoRequest` is out).
    pub kernel_info: Vec<(ProbeSource, Option<LoadReply>)>,
    /// Loads waiting for the guest kernel's types (a transfer is under way).
    pub kernel_types: Vec<(ProbeSource, Option<LoadReply>)>,
    /// `vesper kernel-info` requests waiting for the agent's answer.
    pub info: Vec<(Vec<String>, KernelInfoReply)>,
    /// Loads sent to the agent, by probe id: answered by its `ProbeLoaded` or `Error`.
    pub loads: HashMap<u32, LoadReply>,
    /// Unloads sent, with the maps' last values read before.
    pub unloads: HashMap<u32, (MapsReply, Vec<MapDump>)>,
    /// Reads of probes' maps under way.
    pub map_reads: Vec<MapRead>,
}

impl Pending {
    /// The probes of loads not sent to the agent yet.
    pub fn waiting_probes(&self) -> impl Iterator<Item = &ProbeSource> {
        let (hello, info, types) = (&self.hello, &self.kernel_info, &self.kernel_types);
        hello
            .iter()
            .map(|(p, _)| p)
            .chain(info.iter().chain(types).map(|(p, _)| p))
    }

    /// The connection ended. A load is pending (it runs at the next connect: the probe
    /// stays in the desired set); a question to the agent fails; an unload is done (an
    /// agent's end unloads all).
    pub fn connection_ended(&mut self) {
        let pending = || Ok(LoadOutcome::Pending);
        for (_, reply) in self
            .kernel_info
            .drain(..)
            .chain(self.kernel_types.drain(..))
        {
            if let Some(r) = reply {
                let _ = r.send(pending());
            }
        }
        for (_, r) in self.hello.drain(..) {
            let _ = r.send(pending());
        }
        for (_, r) in self.loads.drain() {
            let _ = r.send(pending());
        }
        for (_, r) in self.info.drain(..) {
            let _ = r.send(Err(gone()));
        }
        for (_, (r, last)) in self.unloads.drain() {
            let _ = r.send(Ok(last));
        }
        for r in self.map_reads.drain(..) {
            match r.then {
                After::Unload(reply) => {
                    let _ = reply.send(Ok(Vec::new()));
                }
                After::Reply(reply) => {
                    let _ = reply.send(Err(gone()));
                }
                After::Store { .. } => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    #[test]
    fn every_owed_reply_is_answered_when_the_connection_ends() {
        let mut p = Pending::default();
        let (load, load_rx) = oneshot::channel();
        let (hello, hello_rx) = oneshot::channel();
        let (info, info_rx) = oneshot::channel();
        let (unload, unload_rx) = oneshot::channel();
        p.loads.insert(3, load);
        p.hello.push((ProbeSource::Builtin("signal".into()), hello));
        p.info.push((vec!["signal:signal_generate".into()], info));
        p.unloads.insert(4, (unload, Vec::new()));
        p.connection_ended();
        assert!(matches!(
            load_rx.blocking_recv(),
            Ok(Ok(LoadOutcome::Pending))
        ));
        assert!(matches!(
            hello_rx.blocking_recv(),
            Ok(Ok(LoadOutcome::Pending))
        ));
        assert!(matches!(info_rx.blocking_recv(), Ok(Err(_))));
        assert!(matches!(unload_rx.blocking_recv(), Ok(Ok(v)) if v.is_empty()));
        assert!(p.loads.is_empty() && p.hello.is_empty() && p.info.is_empty());
    }
}
