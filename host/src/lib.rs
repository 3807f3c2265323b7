//! OS glue shared by `diode-send` and `diode-recv`: key files on disk, atomic writes, the UDP link with
//! GSO/GRO batching, the serial link, pacing, clocks and log setup. Protocol logic lives in `diode-proto`; this crate only
//! moves bytes and time between the OS and it.

pub mod atomic;
pub mod audit;
pub mod keyfile;
pub mod link;
pub mod mapped;
pub mod pace;
pub mod sandbox;
pub mod threads;

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Microseconds since the Unix epoch, for seeding session counters.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Logs to stderr; `RUST_LOG` overrides the level (default info). `DIODE_LOG=json` for JSON lines.
pub fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if std::env::var("DIODE_LOG").as_deref() == Ok("json") {
        b.json().init();
    } else {
        b.init();
    }
}
