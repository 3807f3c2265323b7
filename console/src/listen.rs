//! Where a console listens, and what it needs there. Loopback needs nothing more: the operator reaches
//! it through an SSH tunnel. Any other address is served only over TLS (rustls) with every request
//! signed in (HTTP Basic against the users file); without both the console refuses to start, saying
//! what to configure. TLS and sign-in also go together on loopback: either alone would be a half
//! measure (a password in clear, or TLS that serves anyone).

use crate::users::Users;
use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The console's listening options, the same for every console.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsoleArgs {
    /// Where to listen (default: 127.0.0.1 and this console's port). Loopback needs nothing more; any
    /// other address needs --tls-cert, --tls-key and --users
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// TLS certificate chain, PEM (the server's certificate first)
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key, PEM (mode 0600)
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Who may look: one `name:$argon2id$...` line per person (mode 0600), written by `console passwd`
    #[arg(long)]
    pub users: Option<PathBuf>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ConsoleCmd {
    /// Add a person to the console's users file, or change their password: the password is read from
    /// standard input (one line) and stored as an Argon2id hash; the file is written with mode 0600
    Passwd {
        /// The users file (created if missing)
        #[arg(long)]
        users: PathBuf,
        /// The name the person signs in with
        #[arg(long)]
        user: String,
    },
}

/// `console` of each binary: serve, or `console passwd`.
#[derive(clap::Args, Debug, Clone)]
pub struct Command {
    #[command(flatten)]
    pub args: ConsoleArgs,
    #[command(subcommand)]
    pub cmd: Option<ConsoleCmd>,
}

impl Command {
    /// `passwd`, or `serve` the plan the options make (checked before `serve` reads any config: the
    /// answer does not depend on it); `program` is the binary, `default_port` its console's port.
    pub fn run(
        self,
        program: &str,
        default_port: u16,
        serve: impl FnOnce(Plan) -> Result<()>,
    ) -> Result<()> {
        match self.cmd {
            Some(ConsoleCmd::Passwd { users, user }) => crate::users::passwd(&users, &user),
            None => serve(self.args.plan(program, default_port)?),
        }
    }
}

/// A checked plan: where, and with what.
pub struct Plan {
    pub listen: SocketAddr,
    pub(crate) secure: Option<Secure>,
}

pub(crate) struct Secure {
    pub tls: Arc<rustls::ServerConfig>,
    pub users: Arc<Users>,
}

impl ConsoleArgs {
    /// Check the options and load what they name; `program` is the binary (for the messages).
    pub fn plan(&self, program: &str, default_port: u16) -> Result<Plan> {
        let listen = self
            .listen
            .unwrap_or(SocketAddr::from((Ipv4Addr::LOCALHOST, default_port)));
        let tls = self.tls_cert.as_deref().zip(self.tls_key.as_deref());
        let secure = match (tls, &self.users) {
            (None, None) => {
                if !listen.ip().is_loopback() {
                    bail!(
                        "refusing to listen on {listen}: beyond loopback the console needs TLS and \
                         authentication; give --tls-cert CERT.pem --tls-key KEY.pem (mode 0600) and \
                         --users FILE (mode 0600, made with `{program} console passwd --users FILE \
                         --user NAME`), or stay on 127.0.0.1 and reach it through an SSH tunnel, e.g. \
                         `ssh -L {port}:127.0.0.1:{port} <this host>`",
                        port = default_port
                    );
                }
                None
            }
            (Some((cert, key)), Some(users)) => Some(Secure {
                tls: tls_config(cert, key)?,
                users: Arc::new(Users::load(users)?),
            }),
            _ => bail!(
                "--tls-cert/--tls-key and --users go together: TLS without sign-in serves anyone who \
                 reaches the port, and sign-in without TLS sends passwords in clear"
            ),
        };
        Ok(Plan { listen, secure })
    }
}

/// rustls with ring (the provider the rest of the suite uses), HTTP/1.1 only, as the console speaks.
fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    diode_host::keyfile::check_private(key)?;
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read the TLS certificate {}", cert.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", cert.display());
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read the TLS key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS key does not fit the certificate, or is not usable")?;
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(listen: &str) -> ConsoleArgs {
        ConsoleArgs {
            listen: Some(listen.parse().unwrap()),
            tls_cert: None,
            tls_key: None,
            users: None,
        }
    }

    #[test]
    fn loopback_needs_nothing_and_elsewhere_needs_tls_and_sign_in() {
        for ok in ["127.0.0.1:8440", "[::1]:8440", "127.0.0.2:1"] {
            assert!(args(ok).plan("diode-x", 1).is_ok(), "{ok}");
        }
        for bad in ["0.0.0.0:8440", "[::]:8440", "192.0.2.7:80"] {
            let e = args(bad).plan("diode-x", 1).err().map(|e| e.to_string());
            assert!(
                e.as_deref()
                    .is_some_and(|e| e.contains("needs TLS and authentication")
                        && e.contains("--tls-cert")
                        && e.contains("diode-x console passwd")),
                "{bad}: {e:?}"
            );
        }
        assert!(args("127.0.0.1:0").plan("d", 1).unwrap().secure.is_none());
        assert_eq!(
            ConsoleArgs {
                listen: None,
                ..args("127.0.0.1:0")
            }
            .plan("d", 8441)
            .unwrap()
            .listen,
            "127.0.0.1:8441".parse().unwrap()
        );
    }

    #[test]
    fn tls_without_sign_in_or_sign_in_without_tls_is_refused_even_on_loopback() {
        let a = ConsoleArgs {
            users: Some("/nonexistent".into()),
            ..args("127.0.0.1:0")
        };
        let e = a.plan("d", 1).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("go together")));
        let a = ConsoleArgs {
            tls_cert: Some("/c".into()),
            tls_key: Some("/k".into()),
            ..args("0.0.0.0:0")
        };
        let e = a.plan("d", 1).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("go together")));
    }
}
