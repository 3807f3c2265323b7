//! The people who may sign in to a console beyond loopback: a file of `name:PHC` lines, each PHC string
//! an Argon2id hash (RFC 9106, the `argon2` crate; its verification compares in constant time). The file
//! is a secret like a key file (mode 0600, refused otherwise). `console passwd` writes it; so may
//! anything that makes PHC strings, e.g. `argon2 SALT -id -e` (Debian's argon2 package).

use anyhow::{bail, Context, Result};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

pub struct Users {
    by_name: BTreeMap<String, String>,
    /// Checked for an unknown name, so that a wrong name costs the time a wrong password does.
    decoy: String,
}

/// A name a person signs in with: printable, no `:` (the separator in Basic credentials and the file).
fn check_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || name.contains(':')
        || name.chars().any(char::is_control)
        || name.chars().any(char::is_whitespace)
    {
        bail!("user name {name:?}: use 1 to 64 printable characters, no spaces and no ':'");
    }
    Ok(())
}

fn hash(password: &[u8]) -> Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("cannot hash the password: {e}"))
}

/// The lines of a users file as (name, PHC), checked; `what` names it in errors.
fn parse(text: &str, what: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, phc)) = line.split_once(':') else {
            bail!(
                "{} line {}: not `name:$argon2id$...`",
                what.display(),
                n + 1
            );
        };
        check_name(name).with_context(|| format!("{} line {}", what.display(), n + 1))?;
        let ok = PasswordHash::new(phc).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"));
        if !ok {
            bail!(
                "{} line {}: the hash is not an Argon2 PHC string ($argon2id$v=19$...)",
                what.display(),
                n + 1
            );
        }
        out.push((name.to_string(), phc.to_string()));
    }
    Ok(out)
}

impl Users {
    pub fn load(path: &Path) -> Result<Users> {
        diode_host::keyfile::check_private(path)?;
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the users file {}", path.display()))?;
        let by_name: BTreeMap<String, String> = parse(&text, path)?.into_iter().collect();
        if by_name.is_empty() {
            bail!(
                "{} names nobody: add a person with `console passwd --users {} --user NAME`",
                path.display(),
                path.display()
            );
        }
        let decoy = hash(&rand::random::<[u8; 16]>())?;
        Ok(Users { by_name, decoy })
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Whether `name` signs in with `password`. Slow on purpose (Argon2id): call it off the runtime.
    pub fn check(&self, name: &str, password: &[u8]) -> bool {
        let known = self.by_name.get(name);
        let phc = known.unwrap_or(&self.decoy);
        let ok = PasswordHash::new(phc)
            .is_ok_and(|h| Argon2::default().verify_password(password, &h).is_ok());
        ok && known.is_some()
    }
}

/// `console passwd`: set `user`'s password (one line on standard input) in the users file.
pub fn passwd(users: &Path, user: &str) -> Result<()> {
    check_name(user)?;
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password from standard input")?;
    let password = line.trim_end_matches(['\r', '\n']);
    if password.chars().count() < 12 {
        bail!("the password is shorter than 12 characters");
    }
    set(users, user, password)?;
    println!(
        "{user} can sign in; {} (mode 0600) now names {user}",
        users.display()
    );
    Ok(())
}

fn set(users: &Path, user: &str, password: &str) -> Result<()> {
    let mut entries = match std::fs::read_to_string(users) {
        Ok(text) => {
            diode_host::keyfile::check_private(users)?;
            parse(&text, users)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", users.display())),
    };
    let phc = hash(password.as_bytes())?;
    match entries.iter_mut().find(|(n, _)| n == user) {
        Some(e) => e.1 = phc,
        None => entries.push((user.to_string(), phc)),
    }
    let text: String = entries.iter().map(|(n, p)| format!("{n}:{p}\n")).collect();
    diode_host::atomic::write_atomic(users, text.as_bytes(), 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_person_signs_in_with_their_password_only() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("users");
        set(&f, "ada", "correct horse battery").unwrap();
        set(&f, "bob", "another long password").unwrap();
        set(&f, "ada", "a changed password!").unwrap();
        assert_eq!(
            std::fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains("changed"), "the password itself is stored");
        assert_eq!(text.lines().count(), 2, "{text}");
        let u = Users::load(&f).unwrap();
        assert!(u.check("ada", b"a changed password!"));
        assert!(!u.check("ada", b"correct horse battery"));
        assert!(u.check("bob", b"another long password"));
        assert!(!u.check("bob", b"another long passwore"));
        assert!(!u.check("eve", b"a changed password!"));
        assert!(!u.check("", b""));
    }

    #[test]
    fn a_users_file_readable_by_others_or_not_argon2_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("users");
        set(&f, "ada", "correct horse battery").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Users::load(&f).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("chmod 600")));
        std::fs::write(&f, "ada:$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = Users::load(&f).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("not an Argon2 PHC string")));
        std::fs::write(&f, "# nobody\n").unwrap();
        let e = Users::load(&f).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("names nobody")));
        assert!(
            check_name("a:b").is_err() && check_name("a b").is_err() && check_name("ada").is_ok()
        );
    }
}
