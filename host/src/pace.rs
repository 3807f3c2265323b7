//! Pacing: the sender never puts more than `rate` bits per second on the link (counting IP and UDP
//! headers), because a diode has no flow control: anything above the link's rate is lost.

use std::time::{Duration, Instant};

/// Parse "200Mbit", "1Gbit", "115200bit", "800kbit", "50MB" (bytes) into bits per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("rate {text:?}: expected a number and a unit like 200Mbit"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "bit" | "bps" => 1.0,
        "kbit" | "kbps" => 1e3,
        "mbit" | "mbps" => 1e6,
        "gbit" | "gbps" => 1e9,
        "b" => 8.0,
        "kb" => 8e3,
        "mb" => 8e6,
        "gb" => 8e9,
        u => {
            return Err(format!(
                "rate {text:?}: unknown unit {u:?} (use bit, kbit, Mbit, Gbit, or kB, MB, GB)"
            ))
        }
    };
    let bps = n * mult;
    if !(1000.0..=1e12).contains(&bps) {
        return Err(format!("rate {text:?} is outside 1kbit..1000Gbit"));
    }
    Ok(bps as u64)
}

/// How far behind the pacer may catch up at full speed. A burst above the rate is lost where the NIC is
/// faster than the diode (no flow control), so this is kept to what a NIC ring or a tbf queue takes:
/// 5 ms is 62 KB at 100 Mbit/s. With 20 ms, a 100 Mbit/s sender that had been descheduled sent 250 KB at
/// once, and the emulated diode's 125 Mbit/s line (16 KB bucket, 10 ms queue) dropped 18 frames of it.
/// With 2 ms, a loaded 2-core machine lost about 8 % of its loopback goodput to deschedules never made up.
const CATCH_UP: Duration = Duration::from_millis(5);

pub struct Pacer {
    ns_per_byte: f64,
    next: Instant,
}

impl Pacer {
    pub fn new(rate_bps: u64) -> Self {
        Pacer {
            ns_per_byte: 8e9 / rate_bps as f64,
            next: Instant::now(),
        }
    }

    /// Wait until `bytes` more may go out, then account for them.
    pub fn wait(&mut self, bytes: usize) {
        let now = Instant::now();
        if self.next > now {
            let d = self.next - now;
            if d > Duration::from_micros(50) {
                std::thread::sleep(d);
            }
        } else if now - self.next > CATCH_UP {
            // late (idle, or this thread was not scheduled): no credit for more than CATCH_UP of the
            // past, or the next burst would exceed the rate by more than the link's buffers absorb
            self.next = now.checked_sub(CATCH_UP).unwrap_or(now);
        }
        self.next += Duration::from_nanos((bytes as f64 * self.ns_per_byte) as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn rates() {
        assert_eq!(parse_rate("200Mbit"), Ok(200_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("115200bit"), Ok(115_200));
        assert_eq!(parse_rate("50MB"), Ok(400_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("10 parsecs").is_err());
    }
}
