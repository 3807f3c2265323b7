//! How many worker threads a daemon's data plane runs (`seal_threads` in send.toml, `open_threads` in
//! recv.toml): `"auto"` (the default) leaves cores for the daemon's own busy threads (`reserve`: the
//! caller says how many), a number sets it, 0 keeps the work on the daemon's own thread.

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use std::fmt;

/// The most worker threads a setting may ask for.
pub const MAX_THREADS: usize = 64;

/// A `threads` setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Threads {
    /// The cores this process may run on less the caller's reserve (at most 16).
    #[default]
    Auto,
    Count(usize),
}

impl Threads {
    /// The number of worker threads, "auto" leaving `reserve` cores to the daemon's other threads: 0
    /// means none (the work stays on the calling thread).
    pub fn count(self, reserve: usize) -> usize {
        match self {
            Threads::Count(n) => n,
            Threads::Auto => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .saturating_sub(reserve)
                .min(16),
        }
    }
}

impl fmt::Display for Threads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threads::Auto => f.write_str("auto"),
            Threads::Count(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Threads {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Threads;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "\"auto\" or a number of threads from 0 to {MAX_THREADS}")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Threads, E> {
                match s {
                    "auto" => Ok(Threads::Auto),
                    _ => s
                        .parse::<i64>()
                        .map_err(|_| E::invalid_value(de::Unexpected::Str(s), &self))
                        .and_then(|n| self.visit_i64(n)),
                }
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Threads, E> {
                match usize::try_from(n) {
                    Ok(n) if n <= MAX_THREADS => Ok(Threads::Count(n)),
                    _ => Err(E::invalid_value(de::Unexpected::Signed(n), &self)),
                }
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<Threads, E> {
                self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct C {
        #[serde(default)]
        t: Threads,
    }

    fn parse(s: &str) -> Result<Threads, String> {
        toml::from_str::<C>(s)
            .map(|c| c.t)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn auto_a_number_or_a_clear_refusal() {
        assert_eq!(parse(""), Ok(Threads::Auto));
        assert_eq!(parse("t = \"auto\""), Ok(Threads::Auto));
        assert_eq!(parse("t = 3"), Ok(Threads::Count(3)));
        assert_eq!(parse("t = \"2\""), Ok(Threads::Count(2)));
        assert_eq!(parse("t = 0").map(|t| t.count(1)), Ok(0));
        for bad in ["t = -1", "t = 65", "t = \"many\"", "t = 1.5"] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains("\"auto\" or a number of threads"), "{bad}: {e}");
        }
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(Threads::Auto.count(1), (cores - 1).min(16));
        assert_eq!(Threads::Auto.count(cores), 0, "nothing left: no threads");
    }
}
