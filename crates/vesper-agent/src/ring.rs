//! A probe's ring of records as the session sees it: the kernel's BPF ring buffer in the
//! agent, an in-memory ring in tests, so that what the session does when the host is slow
//! (leave records in the ring, which then drops and counts) runs under plain `cargo test`.

use std::os::fd::{AsRawFd, RawFd};

use aya::maps::{Array, MapData, RingBuf};

/// Where a probe's records wait until the session has room for them.
pub trait Ring {
    /// Takes the oldest record out of the ring (None: it is empty).
    fn pop(&mut self) -> Option<Vec<u8>>;
    /// Records the producer could not write because the ring was full, since load.
    fn kernel_drops(&self) -> u64;
    /// A descriptor that poll(2) reports readable while records wait; None: the session
    /// looks at the ring on every turn anyway (it does, whatever poll said).
    fn poll_fd(&self) -> Option<RawFd>;
}

/// The kernel's ring buffer of a loaded probe and its drop counter (an array of one u64
/// that the program adds to when a reservation fails).
pub struct BpfRing {
    pub ring: RingBuf<MapData>,
    pub drops: Array<MapData, u64>,
}

impl Ring for BpfRing {
    fn pop(&mut self) -> Option<Vec<u8>> {
        self.ring.next().map(|item| item.to_vec())
    }
    fn kernel_drops(&self) -> u64 {
        self.drops.get(&0, 0).unwrap_or(0)
    }
    fn poll_fd(&self) -> Option<RawFd> {
        Some(self.ring.as_raw_fd())
    }
}

#[cfg(test)]
pub mod fake {
    //! A ring with the kernel's behaviour that matters here: fixed capacity in bytes, a
    //! header per record, and a failed write counted instead of waiting.

    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// The BPF ring buffer's header per record.
    const HEADER: usize = 8;

    #[derive(Debug, Default)]
    pub struct State {
        records: VecDeque<Vec<u8>>,
        used: usize,
        capacity: usize,
        pub drops: u64,
        pub written: u64,
    }

    /// The session's end.
    pub struct FakeRing(Rc<RefCell<State>>);
    /// The producer's end (the "BPF program").
    #[derive(Clone)]
    pub struct Producer(Rc<RefCell<State>>);

    pub fn ring(capacity: usize) -> (FakeRing, Producer) {
        let s = Rc::new(RefCell::new(State {
            capacity,
            ..State::default()
        }));
        (FakeRing(s.clone()), Producer(s))
    }

    impl Producer {
        /// Writes a record if it fits, as bpf_ringbuf_reserve would; counts it if not.
        pub fn emit(&self, record: Vec<u8>) -> bool {
            let mut s = self.0.borrow_mut();
            let need = (record.len() + HEADER).next_multiple_of(8);
            if s.used + need > s.capacity {
                s.drops += 1;
                return false;
            }
            s.used += need;
            s.written += 1;
            s.records.push_back(record);
            true
        }
        pub fn drops(&self) -> u64 {
            self.0.borrow().drops
        }
        pub fn waiting(&self) -> usize {
            self.0.borrow().records.len()
        }
    }

    impl super::Ring for FakeRing {
        fn pop(&mut self) -> Option<Vec<u8>> {
            let mut s = self.0.borrow_mut();
            let r = s.records.pop_front()?;
            s.used -= (r.len() + HEADER).next_multiple_of(8);
            Some(r)
        }
        fn kernel_drops(&self) -> u64 {
            self.0.borrow().drops
        }
        fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
            None
        }
    }
}
