//! What the hypervisor reports of the guest (QMP: a panic, a shutdown, a reset), kept as
//! records of the `vesper` pseudo-probe and judged like the guest's own.

use super::*;

impl Session {
    /// Records what the host saw, as a record of the `vesper` pseudo-probe, and judges it.
    pub(super) fn host_record(&mut self, event: &str, detail: String, by_guest: bool) {
        let fields = vec![
            ("ts_ns".to_string(), vesper_probe::Value::UInt(0)),
            (
                "event".to_string(),
                vesper_probe::Value::Str(event.to_string()),
            ),
            ("detail".to_string(), vesper_probe::Value::Str(detail)),
            (
                "by_guest".to_string(),
                vesper_probe::Value::UInt(u64::from(by_guest)),
            ),
        ];
        let seq = self.host_seq;
        self.host_seq += 1;
        let value = record_value(&self.name, HOST_PROBE, seq, fields, now_ms());
        self.judge(&value);
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        store.push(StoredRecord {
            probe: self.host_probe.clone(),
            seq,
            json: value.to_string().into(),
        });
    }

    pub(super) fn on_host_event(&mut self, ev: HostEvent) {
        match ev {
            HostEvent::Panicked { detail } => {
                tracing::warn!(vm = %self.name, detail = %detail, "guest kernel panicked (QMP GUEST_PANICKED)");
                self.guest = GuestState::Panicked;
                self.host_record("guest_panicked", detail, true);
            }
            HostEvent::Shutdown { reason, by_guest } => {
                tracing::warn!(vm = %self.name, reason = %reason, by_guest, "guest shut down (QMP SHUTDOWN)");
                if self.guest != GuestState::Panicked {
                    self.guest = GuestState::Shutdown;
                }
                let who = if by_guest {
                    "by the guest"
                } else {
                    "by the host"
                };
                self.host_record("guest_shutdown", format!("{reason} ({who})"), by_guest);
            }
            HostEvent::Reset => {
                tracing::info!(vm = %self.name, "guest reset (QMP RESET)");
                // The probes went with the old boot, whatever the channel still shows.
                self.begin_gap(now_ms(), "the guest was reset");
                // The new boot's agent has the boot timeout to say Hello. (With no agent
                // greeted, its Hello is awaited anyway.)
                if let Some(g) = self.link.greeted_mut() {
                    g.reset_at.get_or_insert_with(Instant::now);
                }
                self.guest = GuestState::Running;
                self.host_record("guest_reset", String::new(), false);
            }
        }
    }
}
