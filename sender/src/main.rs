//! `diode-send`: the low side. Watches an outbox and sends each complete file as sealed, FEC-coded,
//! paced frames over a one-way link; keeps a journal and a sent area for replay. See `--help`.

mod config;
mod console;
mod daemon;
mod encoding;
mod file;
mod journal;
mod outbox;
mod replay;
mod requests;
mod status;
mod transmit;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use diode_host::keyfile;
use diode_proto::envelope::SignerRole;
use diode_proto::Role;
use std::path::PathBuf;
use transmit::Transmitter;

const DEFAULT_CONFIG: &str = "/etc/diode/send.toml";

#[derive(Parser)]
#[command(
    name = "diode-send",
    version,
    about = "Send files one way across a data diode"
)]
struct Cli {
    /// Configuration file (every key is documented in send.example.toml)
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new sender key pair: DIR/sender.key (mode 0600) and DIR/sender.pub (give it to the high side)
    ///
    /// With --pipeline: a pipeline signing key pair instead, DIR/pipeline.key (0600) and DIR/pipeline.pub,
    /// for `diode-send request` on the high side (pipeline.pub goes to the low side's diode-chat).
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        pipeline: bool,
    },
    /// Ask for a deployment approval from inside the air gap: write a request envelope, signed with
    /// `pipeline_key`, into the outbox (of the reverse link's sender) and print its id. Wait for the
    /// answer with `diode-recv approvals wait --request ID`.
    Request(requests::NewRequest),
    /// Send files or folders once, with a progress bar, and exit when the last frame is out
    File {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Send a journaled object again, whole or some blocks, or everything sent since a moment.
    /// The running daemon picks the request up; it is kept until one runs.
    Replay {
        /// Object id as printed by `diode-recv status` or `diode-send journal`
        #[arg(long, conflicts_with = "since")]
        object: Option<String>,
        /// Blocks to send, e.g. 17-19,40 (default: the whole object)
        #[arg(long, requires = "object")]
        blocks: Option<String>,
        /// Re-send every object sent after this time: RFC 3339 (2026-11-24T10:00:00Z) or an age (2h)
        #[arg(long)]
        since: Option<String>,
    },
    /// List the objects the journal holds, with ids to match against the receiver's gap report
    Journal,
    /// A read-only web page for the operator (what is being sent and how fast, the outbox's queue, the
    /// replay requests pending, the journal), read from what the daemon writes; a process of its own
    Console(diode_console::Command),
}

fn main() {
    diode_host::init_logs();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("diode-send: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Some(Cmd::Keygen {
            dir,
            pipeline: true,
        }) => {
            let (k, p) = keyfile::generate_signing(&dir, SignerRole::Pipeline)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "set pipeline_key = \"{}\" in the reverse link's send.toml; copy {} to the low side and list it in diode-chat's [reverse] pipeline_keys",
                k.display(),
                p.display()
            );
            Ok(())
        }
        Some(Cmd::Request(new)) => {
            let cfg = Config::load(&cli.config)?;
            let (id, path) = requests::write_request(&cfg, new)?;
            eprintln!(
                "request {id} written to {}; wait for the answer with: diode-recv approvals wait --request {id}",
                path.display()
            );
            println!("{id}");
            Ok(())
        }
        Some(Cmd::Keygen {
            dir,
            pipeline: false,
        }) => {
            let (k, p) = keyfile::generate(&dir, Role::Sender)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "copy {} to the high side and list it under `senders` in recv.toml",
                p.display()
            );
            Ok(())
        }
        Some(Cmd::File { paths }) => file::send_files(&Config::load(&cli.config)?, &paths),
        Some(Cmd::Replay {
            object,
            blocks,
            since,
        }) => replay::replay(&Config::load(&cli.config)?, object, blocks, since),
        Some(Cmd::Journal) => replay::list_journal(&Config::load(&cli.config)?),
        Some(Cmd::Console(c)) => c.run("diode-send", console::PORT, |plan| {
            console::serve(Config::load(&cli.config)?, plan)
        }),
        None => daemon::daemon(&Config::load(&cli.config)?),
    }
}

pub(crate) fn open_link(cfg: &Config) -> Result<Transmitter> {
    let me = keyfile::load_secret(&cfg.key, Role::Sender)?;
    let receiver = keyfile::load_public(&cfg.receiver, Role::Receiver)?;
    std::fs::create_dir_all(&cfg.state)
        .with_context(|| format!("cannot create {}", cfg.state.display()))?;
    Transmitter::new(cfg, me, receiver)
}
