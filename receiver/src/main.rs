//! `diode-recv`: the high side. Authenticates every frame, rebuilds files through loss, writes them
//! atomically into the inbox, and reports exactly which blocks are missing. It never transmits.

mod config;
mod receive;
mod status;
mod store;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use diode_host::keyfile;
use diode_proto::{Role, SessionTable};
use std::path::PathBuf;

const DEFAULT_CONFIG: &str = "/etc/diode/recv.toml";

#[derive(Parser)]
#[command(
    name = "diode-recv",
    version,
    about = "Receive files one way across a data diode"
)]
struct Cli {
    /// Configuration file (every key is documented in recv.example.toml)
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new receiver key pair: DIR/receiver.key (mode 0600) and DIR/receiver.pub (give it to the low side)
    Keygen {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Sessions, link health, objects in progress, and for each incomplete object the missing blocks and
    /// the exact `diode-send replay` line to run on the low side
    Status {
        /// Print the status as JSON
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    diode_host::init_logs();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("diode-recv: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::Keygen { dir }) => {
            let (k, p) = keyfile::generate(&dir, Role::Receiver)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "copy {} to the low side and name it as `receiver` in send.toml",
                p.display()
            );
            Ok(())
        }
        Some(Cmd::Status { json }) => {
            let cfg = Config::load(&cli.config)?;
            let text = std::fs::read_to_string(cfg.status_path()).with_context(|| {
                format!(
                    "no status in {}: has diode-recv run with this config?",
                    cfg.status_path().display()
                )
            })?;
            if json {
                println!("{text}");
            } else {
                let s: status::Status =
                    serde_json::from_str(&text).context("status file is damaged")?;
                status::print(&s, diode_host::unix_now());
            }
            Ok(())
        }
        None => {
            let cfg = Config::load(&cli.config)?;
            let me = keyfile::load_secret(&cfg.key, Role::Receiver)?;
            let trusted = cfg
                .senders
                .iter()
                .map(|p| keyfile::load_public(p, Role::Sender))
                .collect::<Result<Vec<_>>>()?;
            for t in &trusted {
                tracing::info!(sender = %t.id(), "trusting sender");
            }
            std::fs::create_dir_all(&cfg.state)
                .with_context(|| format!("cannot create {}", cfg.state.display()))?;
            let table = SessionTable::new(me, trusted, receive::Receiver::load_highest(&cfg));
            receive::Receiver::new(cfg, table)?.run()
        }
    }
}
