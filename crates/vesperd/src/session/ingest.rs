//! Ingest: records from the guest decoded with the host's manifest, accounted by sequence
//! number and stored as one JSON line each; and the reader task that frames the channel's
//! bytes within the VM's rate limits.

use super::*;

impl Session {
    pub(super) fn on_records(&mut self, batch: Records) {
        let kernel = self.kernel_fetch.kernel().cloned();
        let Some(p) = self.probes.get_mut(&batch.probe_id) else {
            self.unknown_probe_records += batch.records.len() as u64;
            if !self.unknown_probe_logged {
                self.unknown_probe_logged = true;
                tracing::warn!(vm = %self.name, probe_id = batch.probe_id, "records for a probe that is not loaded: dropped and counted (unknown_probe_records); logged once per connection");
            }
            return;
        };
        let judged = self
            .judge
            .as_ref()
            .is_some_and(|j| j.rules.iter().any(|r| *r.probe == *p.name));
        let mut verdict_inputs = Vec::new();
        let st = &mut p.status;
        st.kernel_drops = st.kernel_drops.max(batch.kernel_drops);
        st.agent_drops = st.agent_drops.max(batch.agent_drops);
        if batch.first_seq > st.next_seq {
            let gap = batch.first_seq - st.next_seq;
            st.transport_lost += gap;
            tracing::warn!(vm = %self.name, probe = %p.name, lost = gap, "sequence gap: records lost in transit");
        }
        let host_ms = now_ms();
        let mut stored = Vec::with_capacity(batch.records.len());
        for (i, rec) in batch.records.iter().enumerate() {
            let seq = batch.first_seq.saturating_add(i as u64);
            if seq < st.next_seq {
                st.replayed += 1;
                continue;
            }
            st.next_seq = seq.saturating_add(1);
            match p.manifest.decode(rec) {
                Ok(mut fields) => {
                    name_stacks(&mut fields, kernel.as_deref());
                    st.received += 1;
                    let json = record_json(&self.name, &p.name, seq, &fields, host_ms);
                    if judged {
                        verdict_inputs
                            .push(record_value(&self.name, &p.name, seq, fields, host_ms));
                    }
                    stored.push(StoredRecord {
                        probe: p.name.clone(),
                        seq,
                        json: json.into(),
                    });
                }
                Err(_) => st.malformed += 1,
            }
        }
        let mut store = match self.store.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        store.push_batch(stored);
        drop(store);
        for v in verdict_inputs {
            self.judge(&v);
        }
    }
}

/// A stack's return addresses as `function+offset` with the guest kernel's symbols,
/// innermost first, joined by ` <- ` (addresses stay hex where no symbol is known).
fn name_stacks(
    fields: &mut [(String, vesper_probe::Value)],
    kernel: Option<&crate::kernels::GuestKernel>,
) {
    for (_, v) in fields.iter_mut() {
        if let vesper_probe::Value::Stack(frames) = v
            && let Some(k) = kernel
        {
            let named: Vec<String> = frames.iter().map(|&a| k.symbols.describe(a)).collect();
            *v = vesper_probe::Value::Str(named.join(" <- "));
        }
    }
}

/// The record as JSON: `vm`, `probe`, `seq`, then the schema's fields (ts_ns first), plus
/// `host_ms`, the host's wall clock at receipt. For rules; the store takes [`record_json`].
pub fn record_value(
    vm: &str,
    probe: &str,
    seq: u64,
    fields: Vec<(String, vesper_probe::Value)>,
    host_ms: u64,
) -> serde_json::Value {
    let mut m = serde_json::Map::with_capacity(fields.len() + 4);
    m.insert("vm".into(), vm.into());
    m.insert("probe".into(), probe.into());
    m.insert("seq".into(), seq.into());
    for (k, v) in fields {
        let v = match v {
            vesper_probe::Value::Int(i) => i.into(),
            vesper_probe::Value::UInt(u) => u.into(),
            vesper_probe::Value::Str(s) => s.into(),
            stack @ vesper_probe::Value::Stack(_) => stack.to_string().into(),
        };
        m.insert(k, v);
    }
    m.insert("host_ms".into(), host_ms.into());
    serde_json::Value::Object(m)
}

/// The same record as [`record_value`], written straight to its JSON line: the ingest path
/// builds one per record, and a map per record cost more than everything else on it.
pub fn record_json(
    vm: &str,
    probe: &str,
    seq: u64,
    fields: &[(String, vesper_probe::Value)],
    host_ms: u64,
) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(64 + fields.len() * 24);
    out.push_str("{\"vm\":");
    push_json_str(&mut out, vm);
    out.push_str(",\"probe\":");
    push_json_str(&mut out, probe);
    let _ = write!(out, ",\"seq\":{seq}");
    for (k, v) in fields {
        out.push(',');
        push_json_str(&mut out, k);
        out.push(':');
        match v {
            vesper_probe::Value::Int(i) => {
                let _ = write!(out, "{i}");
            }
            vesper_probe::Value::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            vesper_probe::Value::Str(s) => push_json_str(&mut out, s),
            stack @ vesper_probe::Value::Stack(_) => push_json_str(&mut out, &stack.to_string()),
        }
    }
    let _ = write!(out, ",\"host_ms\":{host_ms}}}");
    out
}

/// Appends `s` as a JSON string (quotes, backslashes and control characters escaped).
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                use std::fmt::Write as _;
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Reads frames from the agent until EOF or the first bad byte, pausing while the VM is
/// over its rate limits (logged once per connection).
pub(super) async fn read_frames(
    mut rd: ReadHalf<BoxStream>,
    tx: mpsc::Sender<Result<Message, String>>,
    vm: String,
    limits: RateLimits,
    counters: Arc<ReadCounters>,
) {
    let mut dec = FrameDecoder::new(DEFAULT_MAX_PAYLOAD);
    let mut buf = vec![0u8; 64 * 1024];
    let mut limiter = Limiter::new(limits, Instant::now());
    let mut logged = false;
    loop {
        let n = match rd.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => {
                counters.read(n);
                n
            }
            Err(e) => {
                let _ = tx.send(Err(format!("reading from the agent: {e}"))).await;
                return;
            }
        };
        let mut records = 0u64;
        let mut rest = &buf[..n];
        loop {
            let used = dec.push(rest);
            rest = &rest[used..];
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let msg = f
                        .message()
                        .map_err(|e| format!("bad frame from the agent: {e}"));
                    if let Ok(Message::Records(r)) = &msg {
                        records += r.records.len() as u64;
                    }
                    let bad = msg.is_err();
                    if tx.send(msg).await.is_err() || bad {
                        return;
                    }
                }
                Ok(None) if rest.is_empty() => break,
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(format!("bad frame from the agent: {e}"))).await;
                    return;
                }
            }
        }
        let pause = limiter.charge(records, n as u64, Instant::now());
        if !pause.is_zero() {
            if !logged {
                logged = true;
                tracing::warn!(vm = %vm, records_per_sec = limits.records_per_sec, bytes_per_sec = limits.bytes_per_sec, "VM over its rate limit: reading from it is paused while over (the guest drops and counts); logged once per connection, see rate_limited_ms in status");
            }
            counters.paused(pause);
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use vesper_probe::Value as V;

    #[test]
    fn the_stored_json_line_is_the_rules_record_exactly() {
        for s in [
            "httpd",
            "",
            "a\"b\\c",
            "tab\there\nnl\r",
            "\u{1}\u{1f}\u{7f}",
            "é✓🦀",
        ] {
            let fields = vec![
                ("ts_ns".to_string(), V::UInt(u64::MAX)),
                ("sig".to_string(), V::Int(-15)),
                ("comm".to_string(), V::Str(s.to_string())),
            ];
            let line = record_json("web\"1", "signal", 7, &fields, 42);
            let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(
                parsed,
                record_value("web\"1", "signal", 7, fields, 42),
                "{line}"
            );
            // Same key order too: vm, probe, seq, the fields, host_ms.
            assert_eq!(parsed.to_string(), line);
        }
    }
}
