//! The content hash of every object: BLAKE3 (protocol 2 and later, docs/protocol.md §6.2), 32 bytes, the
//! same as `b3sum` prints. One place for it, so sender, receiver and tests cannot disagree.

/// Hashes an object's content as it streams by.
#[derive(Default, Clone)]
pub struct ContentHasher(blake3::Hasher);

impl ContentHasher {
    pub fn new() -> Self {
        ContentHasher(blake3::Hasher::new())
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finalize(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// The content hash of `bytes` at once.
pub fn content_hash(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The known answer of BLAKE3 for the empty input and for "abc", streamed or at once.
    #[test]
    fn the_content_hash_is_blake3() {
        assert_eq!(
            hex::encode(content_hash(b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        let mut h = ContentHasher::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finalize(), content_hash(b"abc"));
        assert_eq!(
            hex::encode(content_hash(b"abc")),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
