//! Static X25519 keys (the HPKE KEM keys of RFC 9180, DHKEM(X25519, HKDF-SHA256)) and their text form.
//!
//! A public key file is one line a person can read aloud or type over the phone:
//! `diode sender key 8f1c22ab 39cd0e11 ... (8 groups of 8 hex digits) check 9f3e`, where `check` is the
//! first two bytes of SHA-256 over the key, so a typo is caught instead of silently trusting another key.
//! A secret key file is `diode sender secret <64 hex digits>`; the binaries keep it mode 0600.
//!
//! The two lines are written and read here alone (`key_line`, `secret_line` and their parsers), for these
//! keys and for the Ed25519 signing keys of `envelope`, whose files differ only in the role word.

use hpke::{kem::X25519HkdfSha256, Deserializable, Kem as KemTrait, Serializable};
use sha2::{Digest, Sha256};
use std::fmt;

pub(crate) type Kem = X25519HkdfSha256;

/// Which end a key belongs to. Written into the key files so that a sender key cannot be configured
/// where a receiver key belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Sender,
    Receiver,
}

impl Role {
    fn word(self) -> &'static str {
        match self {
            Role::Sender => "sender",
            Role::Receiver => "receiver",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not a diode key file (expected `diode {0} key ...`)")]
    Format(&'static str),
    #[error("this is a {found} key, but a {expected} key is needed here")]
    WrongRole {
        found: String,
        expected: &'static str,
    },
    #[error("key digits are not 64 hex digits")]
    Digits,
    #[error("check digits do not match the key: it was mistyped or damaged")]
    Check,
    #[error("not a valid X25519 key")]
    Invalid,
}

/// Eight bytes that name a public key on the wire: SHA-256 of the key, truncated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

#[derive(Clone)]
pub struct PublicKey {
    pub(crate) key: <Kem as KemTrait>::PublicKey,
    bytes: [u8; 32],
}

#[derive(Clone)]
pub struct SecretKey {
    pub(crate) key: <Kem as KemTrait>::PrivateKey,
    pub(crate) public: PublicKey,
}

impl PublicKey {
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key = <Kem as KemTrait>::PublicKey::from_bytes(bytes).map_err(|_| KeyError::Invalid)?;
        Ok(PublicKey { key, bytes: *bytes })
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.bytes
    }

    pub fn id(&self) -> KeyId {
        let d = Sha256::digest(self.bytes);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d[..8]);
        KeyId(id)
    }

    /// The one-line text form (with a trailing newline).
    pub fn to_text(&self, role: Role) -> String {
        key_line(role.word(), &self.bytes)
    }

    /// Parse the text form; `role` is the role this place in a config expects.
    pub fn from_text(text: &str, role: Role) -> Result<Self, KeyError> {
        let bytes = parse_key_line(text, role.word()).map_err(|e| e.into_key_error(role))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.id())
    }
}

impl SecretKey {
    /// A fresh key from 32 bytes of randomness supplied by the caller.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let (key, public) = Kem::derive_keypair(seed);
        let bytes: [u8; 32] = public.to_bytes().into();
        SecretKey {
            key,
            public: PublicKey { key: public, bytes },
        }
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        let key =
            <Kem as KemTrait>::PrivateKey::from_bytes(bytes).map_err(|_| KeyError::Invalid)?;
        let public = Kem::sk_to_pk(&key);
        let pbytes: [u8; 32] = public.to_bytes().into();
        Ok(SecretKey {
            key,
            public: PublicKey {
                key: public,
                bytes: pbytes,
            },
        })
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    pub fn to_text(&self, role: Role) -> String {
        secret_line(role.word(), &self.key.to_bytes().into())
    }

    pub fn from_text(text: &str, role: Role) -> Result<Self, KeyError> {
        let bytes = parse_secret_line(text, role.word()).map_err(|e| e.into_key_error(role))?;
        Self::from_bytes(&bytes)
    }
}

impl fmt::Debug for SecretKey {
    // Never print secret material, even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public.id())
    }
}

/// What is wrong with a key line, before the caller names the kind of key it wanted.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineError {
    /// Not `diode <role> key ... check ...` (or `diode <role> secret ...`).
    Format,
    /// A well-formed line of another role: the word found.
    WrongRole(String),
    /// The key is not 64 hex digits.
    Digits,
    /// The check group does not match the key.
    Check,
}

impl LineError {
    fn into_key_error(self, role: Role) -> KeyError {
        match self {
            LineError::Format => KeyError::Format(role.word()),
            LineError::WrongRole(found) => KeyError::WrongRole {
                found,
                expected: role.word(),
            },
            LineError::Digits => KeyError::Digits,
            LineError::Check => KeyError::Check,
        }
    }
}

/// The check group of a key line: the first two bytes of SHA-256 of the key, 4 hex digits.
fn check_group(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..2])
}

/// `diode <role> key <8 groups of 8 hex digits> check <4 hex digits>` and a newline.
pub(crate) fn key_line(role: &str, key: &[u8; 32]) -> String {
    let hex = hex::encode(key);
    let groups: Vec<&str> = (0..8).map(|i| &hex[i * 8..i * 8 + 8]).collect();
    format!(
        "diode {role} key {} check {}\n",
        groups.join(" "),
        check_group(key)
    )
}

/// The key of a `key_line` for `role`: any whitespace between the 13 words, hex digits and the check
/// group in either case.
pub(crate) fn parse_key_line(text: &str, role: &str) -> Result<[u8; 32], LineError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() != 13 || words[0] != "diode" || words[2] != "key" || words[11] != "check" {
        return Err(LineError::Format);
    }
    if words[1] != role {
        return Err(LineError::WrongRole(words[1].to_string()));
    }
    let key = decode32(&words[3..11].concat())?;
    if !words[12].eq_ignore_ascii_case(&check_group(&key)) {
        return Err(LineError::Check);
    }
    Ok(key)
}

/// `diode <role> secret <64 hex digits>` and a newline.
pub(crate) fn secret_line(role: &str, key: &[u8; 32]) -> String {
    format!("diode {role} secret {}\n", hex::encode(key))
}

/// The key of a `secret_line` for `role`.
pub(crate) fn parse_secret_line(text: &str, role: &str) -> Result<[u8; 32], LineError> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() != 4 || words[0] != "diode" || words[2] != "secret" {
        return Err(LineError::Format);
    }
    if words[1] != role {
        return Err(LineError::WrongRole(words[1].to_string()));
    }
    decode32(words[3])
}

fn decode32(digits: &str) -> Result<[u8; 32], LineError> {
    let v = hex::decode(digits).map_err(|_| LineError::Digits)?;
    v.try_into().map_err(|_| LineError::Digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_typo_detection() {
        let sk = SecretKey::from_seed(&[7u8; 32]);
        let text = sk.public().to_text(Role::Sender);
        assert_eq!(text.lines().count(), 1);
        assert!(text
            .trim_end()
            .chars()
            .all(|c| c.is_ascii_graphic() || c == ' '));
        let pk = PublicKey::from_text(&text, Role::Sender).unwrap();
        assert_eq!(pk.as_bytes(), sk.public().as_bytes());
        assert!(matches!(
            PublicKey::from_text(&text, Role::Receiver),
            Err(KeyError::WrongRole { .. })
        ));
        // one mistyped digit is caught by the check group
        let typo = text.replacen(
            &text[17..18],
            if &text[17..18] == "0" { "1" } else { "0" },
            1,
        );
        assert_eq!(
            PublicKey::from_text(&typo, Role::Sender).unwrap_err(),
            KeyError::Check
        );
        let st = sk.to_text(Role::Sender);
        let back = SecretKey::from_text(&st, Role::Sender).unwrap();
        assert_eq!(back.public().as_bytes(), sk.public().as_bytes());
        assert!(!format!("{back:?}").contains(&st[14..30]));
        // the secret line: another role, then digits of the wrong length
        assert!(matches!(
            SecretKey::from_text(&st, Role::Receiver),
            Err(KeyError::WrongRole { .. })
        ));
        assert_eq!(
            SecretKey::from_text(&st.replacen(" secret ", " secret 0", 1), Role::Sender)
                .unwrap_err(),
            KeyError::Digits
        );
    }
}
