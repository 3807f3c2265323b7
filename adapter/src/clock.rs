//! Time for the approval engine: passed in, never read from the OS inside the engine, so that tests
//! can walk a request through its reminders, escalations and deadline without waiting for them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Unix seconds.
pub trait Clock: Send + Sync {
    fn now(&self) -> u64;
}

/// The system clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        diode_host::unix_now()
    }
}

/// A clock that moves only when told to (tests, simulations).
pub struct ManualClock(AtomicU64);

impl ManualClock {
    pub fn new(t: u64) -> Self {
        ManualClock(AtomicU64::new(t))
    }

    pub fn set(&self, t: u64) {
        self.0.store(t, Ordering::SeqCst);
    }

    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
