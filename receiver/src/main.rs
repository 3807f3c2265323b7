//! `diode-recv`: the high side. Authenticates every frame, rebuilds files through loss, writes them
//! atomically into the inbox, and reports exactly which blocks are missing. It never transmits.

mod approvals;
mod config;
mod console;
mod hook_runner;
mod opening;
mod outcomes;
mod receive;
mod sandbox;
mod status;
mod store;
mod wait;
mod writer;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use diode_host::keyfile;
use diode_proto::envelope::SignerRole;
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
    /// With --outcome: the outcome signing key pair instead, DIR/outcome.key (0600) and DIR/outcome.pub,
    /// which signs what goes back to the low side ([approvals.outcomes]; outcome.pub goes to diode-chat)
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        /// An outcome signing key, not the link's receiver key
        #[arg(long)]
        outcome: bool,
    },
    /// Sessions, link health, objects in progress, and for each incomplete object the missing blocks and
    /// the exact `diode-send replay` line to run on the low side
    Status {
        /// Print the status as JSON
        #[arg(long)]
        json: bool,
    },
    /// Approval envelopes for a deploy pipeline: list them, check for one, consume one exactly once
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCmd,
    },
    /// The high side's audit log
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// A read-only web page for the operator (links, objects, gaps with their replay lines, received
    /// files, approvals, the audit chain), read from what the daemon writes; a process of its own
    Console(diode_console::Command),
    /// Internal: runs the approval hook outside the daemon's sandbox (started by the daemon)
    #[command(hide = true)]
    HookRunner,
}

#[derive(Subcommand)]
enum ApprovalsCmd {
    /// Every accepted envelope with its state now: valid, consumed, expired, rejection, invalid
    List {
        #[arg(long)]
        json: bool,
    },
    /// Exit 0 only if a valid, unconsumed approval exists for this artifact digest and environment
    /// (exit 1 if none); prints its id
    Check {
        /// Artifact digest, sha256:<64 hex>
        #[arg(long)]
        artifact: String,
        #[arg(long)]
        env: String,
    },
    /// Use one valid approval exactly once (of concurrent callers, one wins); exit 0 and print its id,
    /// exit 1 if there is none
    Consume {
        #[arg(long)]
        artifact: String,
        #[arg(long)]
        env: String,
        /// A particular envelope id (otherwise the newest valid one)
        #[arg(long)]
        id: Option<String>,
        /// Who consumes it, for the audit log and the outcome the low side sees ("deployed by
        /// ci-runner-3"); default the user running this
        #[arg(long)]
        by: Option<String>,
    },
    /// Block until the answer to a request made with `diode-send request` comes back (an envelope whose
    /// request_id is ID). Exit 0 approved (prints the envelope id), 2 rejected, 3 expired (no decision
    /// by the low side's deadline, or the approval ran out before use), 4 no answer within --timeout,
    /// 5 the approval was already used, 1 error.
    Wait {
        /// The request id `diode-send request` printed
        #[arg(long)]
        request: String,
        /// How long to wait, e.g. 30m, 2h
        #[arg(long, default_value = "30m")]
        timeout: humantime::Duration,
        /// Consume the approval (exactly once) as soon as it is there
        #[arg(long)]
        consume: bool,
        /// With --consume: who consumes it (as for `approvals consume --by`)
        #[arg(long, requires = "consume")]
        by: Option<String>,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain: names the first edited, removed or reordered record; exit 1 if broken
    Verify,
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
        Some(Cmd::Keygen { dir, outcome: true }) => {
            let (k, p) = keyfile::generate_signing(&dir, SignerRole::Outcome)?;
            println!(
                "wrote {} (secret, mode 0600) and {}",
                k.display(),
                p.display()
            );
            println!(
                "set key = \"{}\" in recv.toml's [approvals.outcomes]; copy {} to the low side and list it in diode-chat's [reverse] outcome_keys",
                k.display(),
                p.display()
            );
            Ok(())
        }
        Some(Cmd::Keygen {
            dir,
            outcome: false,
        }) => {
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
                // a pid still alive, and the room left where the status is written, say why it is stale
                let running = std::fs::read_to_string(format!("/proc/{}/comm", s.pid))
                    .is_ok_and(|c| c.trim() == "diode-recv");
                let free = diode_host::atomic::free_space_at(&cfg.state);
                status::print(&s, diode_host::unix_now(), running, free);
            }
            Ok(())
        }
        Some(Cmd::Approvals { cmd }) => {
            let cfg = Config::load(&cli.config)?;
            match cmd {
                ApprovalsCmd::List { json } => {
                    let all = approvals::list(&cfg)?;
                    if json {
                        let v: Vec<serde_json::Value> = all
                            .iter()
                            .map(|l| serde_json::json!({"state": l.state, "detail": l.detail, "envelope": l.env}))
                            .collect();
                        println!("{}", serde_json::to_string_pretty(&v)?);
                    } else if all.is_empty() {
                        println!("no approval envelopes");
                    }
                    if !json {
                        for l in &all {
                            let e = &l.env.envelope;
                            println!(
                                "{} {:9} {} {} {} {} {} expires {} by {}{}",
                                e.id,
                                l.state,
                                e.decision,
                                e.environment,
                                e.artifact.name,
                                e.artifact.version,
                                e.artifact.digest,
                                e.expires_at,
                                e.approvers
                                    .iter()
                                    .map(|a| a.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(", "),
                                if l.detail.is_empty() {
                                    String::new()
                                } else {
                                    format!(" ({})", l.detail)
                                }
                            );
                        }
                    }
                    Ok(())
                }
                ApprovalsCmd::Check { artifact, env } => {
                    let found = approvals::find(&cfg, &artifact, &env, None)?;
                    print_or_exit(found, &artifact, &env)
                }
                ApprovalsCmd::Wait {
                    request,
                    timeout,
                    consume,
                    by,
                } => {
                    let answer =
                        wait::wait(&cfg, &request, timeout.into(), consume, by.as_deref())?;
                    match &answer {
                        wait::Answer::Approved(id) => println!("{id}"),
                        wait::Answer::Rejected(what) => {
                            eprintln!("request {request} was rejected: {what}")
                        }
                        wait::Answer::Expired(what) => {
                            eprintln!("request {request} expired: {what}")
                        }
                        wait::Answer::Consumed(id) => {
                            eprintln!("request {request}: approval {id} was already used")
                        }
                        wait::Answer::TimedOut => {
                            eprintln!("request {request}: no answer within {timeout}")
                        }
                    }
                    std::process::exit(answer.code());
                }
                ApprovalsCmd::Consume {
                    artifact,
                    env,
                    id,
                    by,
                } => {
                    let found =
                        approvals::consume(&cfg, &artifact, &env, id.as_deref(), by.as_deref())?;
                    print_or_exit(found, &artifact, &env)
                }
            }
        }
        Some(Cmd::Audit {
            cmd: AuditCmd::Verify,
        }) => {
            let cfg = Config::load(&cli.config)?;
            let log = approvals::audit_log(&cfg);
            let n = log.verify()?;
            println!("ok: {n} records in {}", log.path().display());
            Ok(())
        }
        Some(Cmd::Console(c)) => c.run("diode-recv", console::PORT, |plan| {
            console::serve(Config::load(&cli.config)?, plan)
        }),
        Some(Cmd::HookRunner) => hook_runner::serve(&Config::load(&cli.config)?),
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
            // order matters: the hook runner before any sandbox (it must stay outside), Landlock before
            // the first thread (it covers the calling thread and those it starts), seccomp once the link
            // is open (it covers every thread)
            let hooks = hook_runner::start(&cli.config, &cfg)?;
            let sandbox = sandbox::restrict_files(&cfg, &cli.config)?;
            let mut receiver = receive::Receiver::new(cfg, table, hooks)?;
            sandbox.forbid_sending(receiver.link())?;
            receiver.run()
        }
    }
}

/// The id of the approval found (exit 0), or exit 1 saying there is none.
fn print_or_exit(
    found: Option<diode_proto::envelope::SignedEnvelope>,
    artifact: &str,
    env: &str,
) -> Result<()> {
    match found {
        Some(e) => {
            println!("{}", e.envelope.id);
            Ok(())
        }
        None => {
            eprintln!("diode-recv: no valid, unconsumed approval for {artifact} in {env}");
            std::process::exit(1)
        }
    }
}
