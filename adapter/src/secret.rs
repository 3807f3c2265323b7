//! Secrets (Slack signing secret and bot token, pipeline bearer tokens): named in the config as
//! `file:PATH` (the file must be mode 0600 or stricter) or `env:NAME`, never written into the config
//! itself, never printed (`Debug` shows only where it came from), compared in constant time.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct Secret {
    value: Vec<u8>,
    from: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(from {})", self.from)
    }
}

impl Secret {
    /// Load `spec` (`file:PATH` or `env:NAME`); a relative PATH is relative to `base`. `what` names the
    /// key in error messages.
    pub fn load(spec: &str, base: &Path, what: &str) -> Result<Secret> {
        let value = if let Some(p) = spec.strip_prefix("file:") {
            let path = base.join(p);
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?;
            let mode = meta.permissions().mode();
            if mode & 0o077 != 0 {
                bail!(
                    "{what}: {} is readable by others (mode {:o}): run `chmod 600 {}` and rotate the secret if others have read it",
                    path.display(),
                    mode & 0o777,
                    path.display()
                );
            }
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{what}: cannot read {}", path.display()))?;
            text.trim().as_bytes().to_vec()
        } else if let Some(name) = spec.strip_prefix("env:") {
            let v = std::env::var(name).with_context(|| {
                format!("{what}: environment variable {name} is not set (or not UTF-8)")
            })?;
            v.trim().as_bytes().to_vec()
        } else {
            bail!("{what}: use \"file:PATH\" (mode 0600) or \"env:NAME\", never the secret itself");
        };
        if value.is_empty() {
            bail!("{what}: the secret from {spec} is empty");
        }
        Ok(Secret {
            value,
            from: spec.to_string(),
        })
    }

    /// For tests and for secrets handed over in memory.
    pub fn from_bytes(value: &[u8]) -> Secret {
        Secret {
            value: value.to_vec(),
            from: "memory".into(),
        }
    }

    pub fn expose(&self) -> &[u8] {
        &self.value
    }

    pub fn expose_str(&self) -> &str {
        std::str::from_utf8(&self.value).unwrap_or("")
    }

    /// Constant-time equality. Both sides are hashed first so that neither the content nor the length
    /// of the secret leaks through timing.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let a = Sha256::digest(&self.value);
        let b = Sha256::digest(candidate);
        a.ct_eq(&b).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_be_private_and_values_never_inline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "s3cret\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = format!(
            "{:#}",
            Secret::load("file:token", dir.path(), "t").unwrap_err()
        );
        assert!(err.contains("chmod 600"), "{err}");
        assert!(!err.contains("s3cret"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Secret::load("file:token", dir.path(), "t").unwrap();
        assert!(s.matches(b"s3cret") && !s.matches(b"s3cre") && !s.matches(b"s3cret\n"));
        assert!(!format!("{s:?}").contains("s3cret"));
        let err = format!(
            "{:#}",
            Secret::load("xoxb-inline", dir.path(), "t").unwrap_err()
        );
        assert!(err.contains("never the secret itself"));
        assert!(Secret::load("env:DIODE_TEST_SURELY_UNSET", dir.path(), "t").is_err());
    }
}
