//! Nothing to build: the comparison is `benches/aead.rs` (run it with `benches/aead.sh`).
