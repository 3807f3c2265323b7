//! The sans-I/O heart of the diode suite: wire format, keys and sessions, frame sealing, FEC blocks,
//! object metadata and reassembly, gap ranges and journal records.
//!
//! Nothing here touches sockets, files, threads or clocks: time and randomness are passed in, so every
//! protocol behaviour can be exercised in a unit or property test and the same code runs over UDP and
//! serial. `docs/protocol.md` documents the wire format byte by byte.
#![forbid(unsafe_code)]

pub mod audit;
pub mod envelope;
pub mod fec;
pub mod frame;
pub mod gap;
pub mod hash;
pub mod journal;
pub mod keys;
pub mod object;
pub mod outcome;
pub mod receiver;
pub mod reception;
pub mod request;
pub mod schedule;
pub mod sender;
pub mod session;
pub mod stream;
#[cfg(test)]
mod testkit;

/// Maps and sets looked up for every frame on the receive path. foldhash, seeded per process: std's
/// SipHash cost ~4 % of the receiver's CPU there. Their keys come from authenticated frames (sessions
/// from MAC-checked announces, objects from sealed metadata), so nobody on the wire can fill them with
/// colliding keys; the seed guards the rest.
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub(crate) type FastSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

pub use fec::{BlockAssembly, BlockEncoder, Geometry};
pub use frame::{FrameKind, SealedHeader};
pub use keys::{KeyId, PublicKey, Role, SecretKey};
pub use object::{Assembly, ObjectKind, ObjectMeta};
pub use session::{DropReason, SenderSession, SessionTable};
