//! Key files: the secret key mode 0600 and refused if anyone else can read it; the public key one line of
//! text to carry to the other side (see `diode_proto::keys` for the format).

use anyhow::{bail, Context, Result};
use diode_proto::envelope::{SignerRole, SigningKey, VerifyingKey};
use diode_proto::{PublicKey, Role, SecretKey};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn names(role: Role) -> (&'static str, &'static str) {
    match role {
        Role::Sender => ("sender.key", "sender.pub"),
        Role::Receiver => ("receiver.key", "receiver.pub"),
    }
}

/// Write a new key pair into `dir`; refuses to overwrite an existing secret key.
pub fn generate(dir: &Path, role: Role) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (k, p) = names(role);
    let (kp, pp) = (dir.join(k), dir.join(p));
    if kp.exists() {
        bail!(
            "{} already exists: move it away first if you really want a new key",
            kp.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let sk = SecretKey::from_seed(&seed);
    crate::atomic::write_atomic(&kp, sk.to_text(role).as_bytes(), 0o600)?;
    crate::atomic::write_atomic(&pp, sk.public().to_text(role).as_bytes(), 0o644)?;
    Ok((kp, pp))
}

/// Refuse a secret file (a key, a password hash file) that others may read.
pub fn check_private(path: &Path) -> Result<()> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}): run `chmod 600 {}` and check who has read it",
            path.display(),
            mode & 0o777,
            path.display()
        );
    }
    Ok(())
}

pub fn load_secret(path: &Path, role: Role) -> Result<SecretKey> {
    check_private(path)?;
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    SecretKey::from_text(&text, role)
        .with_context(|| format!("{} is not a usable secret key", path.display()))
}

pub fn load_public(path: &Path, role: Role) -> Result<PublicKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    PublicKey::from_text(&text, role)
        .with_context(|| format!("{} is not a usable public key", path.display()))
}

/// Write a new Ed25519 signing key pair (`adapter.key`/`adapter.pub` or `pipeline.key`/`pipeline.pub`)
/// into `dir`; refuses to overwrite an existing secret key.
pub fn generate_signing(dir: &Path, role: SignerRole) -> Result<(PathBuf, PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (kp, pp) = (
        dir.join(format!("{}.key", role.word())),
        dir.join(format!("{}.pub", role.word())),
    );
    if kp.exists() {
        bail!(
            "{} already exists: move it away first if you really want a new key",
            kp.display()
        );
    }
    let mut seed = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut seed);
    let sk = SigningKey::from_seed(&seed);
    crate::atomic::write_atomic(&kp, sk.to_text(role).as_bytes(), 0o600)?;
    crate::atomic::write_atomic(&pp, sk.public().to_text(role).as_bytes(), 0o644)?;
    Ok((kp, pp))
}

pub fn load_signing(path: &Path, role: SignerRole) -> Result<SigningKey> {
    check_private(path)?;
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read key {}", path.display()))?;
    SigningKey::from_text(&text, role)
        .with_context(|| format!("{} is not a usable signing key", path.display()))
}

pub fn load_verifying(path: &Path, role: SignerRole) -> Result<VerifyingKey> {
    let text = fs::read_to_string(path)
        .with_context(|| format!("cannot read public key {}", path.display()))?;
    VerifyingKey::from_text(&text, role).with_context(|| {
        format!(
            "{} is not a usable {} public key",
            path.display(),
            role.word()
        )
    })
}
