//! `diode-chat`: the low side of the approval path. Signs approval envelopes with the adapter's Ed25519
//! key, records each one in a hash-chained audit log, and writes it into the sender's outbox. This
//! version has the break-glass path (`sign`, from flags); the Slack and Teams adapter builds on it.
#![forbid(unsafe_code)]

use diode_chat::pipeline_client::{self, Answer, Ask};
use diode_chat::secret::Secret;
use diode_chat::{audit_ship, breakglass, clock, config, console, emit, returned, server};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use config::Config;
use diode_host::audit::AuditLog;
use diode_host::keyfile;
use diode_proto::envelope::{Decision, SignerRole};
use serde_json::{Map, Value};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

const DEFAULT_CONFIG: &str = "/etc/diode/adapter.toml";

#[derive(Parser)]
#[command(
    name = "diode-chat",
    version,
    about = "Sign approval envelopes for the high side and hand them to the sender"
)]
struct Cli {
    /// Configuration file (every key is documented in adapter.example.toml)
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Write a new adapter signing key pair: DIR/adapter.key (mode 0600) and DIR/adapter.pub (give it to
    /// the high side). With --pipeline, a pipeline key pair instead: DIR/pipeline.key (mode 0600, for
    /// `diode-send request` on the high side) and DIR/pipeline.pub (for [reverse] pipeline_keys here)
    Keygen {
        #[arg(long)]
        dir: PathBuf,
        /// A pipeline key (signs requests sent out through the reverse diode), not an adapter key
        #[arg(long)]
        pipeline: bool,
    },
    /// Break-glass: sign an envelope from these flags (for a pipeline, or when chat is down), record it
    /// in the audit log and write it into the sender's outbox
    Sign(SignArgs),
    /// Run the chat adapter: Slack endpoints, the pipeline API, reminders, escalations and deadlines
    Serve,
    /// For a pipeline on the low side: ask the adapter for a deployment (POST /v1/requests) and print
    /// the request id. With --wait, wait for the decision and exit 0 approved (prints the envelope id),
    /// 2 rejected, 3 expired (no decision by the deadline), 4 no decision within --timeout, 1 error: the
    /// codes of `diode-recv approvals wait`. With --id, look at a request made before (prints how it
    /// stands, as JSON) or, with --wait, wait for it. Needs no adapter.toml
    Request(RequestArgs),
    /// The adapter's audit log
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// A read-only web page for the operator (open requests with their votes, deadlines and escalation
    /// tier, recent decisions, the high side's outcomes, the audit chain), read from what `serve` writes;
    /// a process of its own
    Console(diode_console::Command),
}

#[derive(clap::Args)]
struct SignArgs {
    /// Artifact name, e.g. billing
    #[arg(long)]
    artifact: String,
    /// Artifact version, e.g. 1.4.2
    #[arg(long = "version")]
    artifact_version: String,
    /// Content digest of the artifact: sha256: and 64 lowercase hex digits
    #[arg(long)]
    digest: String,
    /// Target environment, e.g. prod (the high side must have a rule for it)
    #[arg(long)]
    env: String,
    /// A person who decided, as id:name:role; repeat for each (each person once, never the requester)
    #[arg(long = "approver", required = true)]
    approvers: Vec<String>,
    /// Who asked for the deployment (their id)
    #[arg(long)]
    requester: String,
    /// Why chat is bypassed; signed into the rule as "break-glass: <reason>" and audited
    #[arg(long)]
    reason: String,
    /// The request this decides (default: a new random id)
    #[arg(long)]
    request_id: Option<String>,
    /// How long the envelope is valid, e.g. 30m (default: default_validity from the config)
    #[arg(long)]
    valid: Option<String>,
    /// Sign a rejection instead of an approval
    #[arg(long)]
    reject: bool,
}

#[derive(clap::Args)]
struct RequestArgs {
    /// The adapter's address ([http] listen, or the TLS proxy in front of it)
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The pipeline token: file:PATH (mode 0600) or env:NAME, never the token itself
    #[arg(long)]
    token: String,
    /// Artifact name, e.g. billing
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    app: Option<String>,
    /// Artifact version, e.g. 1.4.2
    #[arg(
        long = "version",
        required_unless_present = "id",
        conflicts_with = "id"
    )]
    artifact_version: Option<String>,
    /// Target environment, e.g. prod
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    env: Option<String>,
    /// Content digest of the artifact: sha256: and 64 lowercase hex digits
    #[arg(long, required_unless_present = "id", conflicts_with = "id")]
    digest: Option<String>,
    /// The person the pipeline asks for (their key, Slack or Teams id), who then may not approve
    #[arg(long, conflicts_with = "id")]
    on_behalf_of: Option<String>,
    /// Why this deploy, e.g. a ticket or change number (at most 500 characters; shown to the
    /// reviewers and audited, not signed into the envelope)
    #[arg(long, conflicts_with = "id")]
    reason: Option<String>,
    /// A request made before (its request id), instead of asking anew
    #[arg(long)]
    id: Option<String>,
    /// Wait until the request is decided
    #[arg(long)]
    wait: bool,
    /// How long to wait, e.g. 30m, 2h
    #[arg(long, default_value = "30m", requires = "wait")]
    timeout: humantime::Duration,
    /// How often to ask how the request stands while waiting
    #[arg(long, default_value = "2s", requires = "wait")]
    poll: humantime::Duration,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check the hash chain of the whole log; names the first broken record. With --segments, check
    /// the segments that crossed the diode instead (on the high side; no config needed)
    Verify {
        /// A folder of shipped segments (`<name>-<first>-<last>.jsonl`), e.g. the receiver's
        /// inbox/audit: the chain is checked across them, from record 1, and a broken line is named
        #[arg(long)]
        segments: Option<PathBuf>,
    },
}

fn main() {
    diode_host::init_logs();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("diode-chat: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Keygen { dir, pipeline } => keygen(&dir, pipeline),
        Cmd::Sign(args) => sign(&Config::load(&cli.config)?, args),
        Cmd::Console(c) => c.run("diode-chat", console::PORT, |plan| {
            console::serve(Config::load(&cli.config)?, plan)
        }),
        Cmd::Serve => {
            let cfg = Config::load(&cli.config)?;
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(async {
                let running = server::start(&cfg, std::sync::Arc::new(clock::SystemClock)).await?;
                println!("diode-chat listening on {}", running.addr);
                running.wait().await
            })
        }
        Cmd::Request(args) => {
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            if let Some(answer) = rt.block_on(request(args))? {
                std::process::exit(answer.code());
            }
            Ok(())
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify {
                segments: Some(dir),
            },
        } => {
            for c in audit_ship::verify_segments(&dir)? {
                println!(
                    "ok: {} records of {} in {} segment(s) in {}",
                    c.records,
                    c.name,
                    c.segments,
                    dir.display()
                );
            }
            Ok(())
        }
        Cmd::Audit {
            cmd: AuditCmd::Verify { segments: None },
        } => {
            let cfg = Config::load(&cli.config)?;
            let n = AuditLog::new(&cfg.audit).verify()?;
            println!("ok: {n} records");
            // the high side's records that came back as outcomes: signatures, hashes, their chain
            let keys = cfg
                .reverse
                .iter()
                .flat_map(|r| r.outcome_keys.iter())
                .map(|p| keyfile::load_verifying(p, SignerRole::Outcome))
                .collect::<Result<Vec<_>>>()?;
            for c in returned::verify_copies(diode_host::audit::records(&cfg.audit), &keys)? {
                let gaps = if c.gaps.is_empty() {
                    "none missing in between".to_string()
                } else {
                    let g: Vec<String> = c.gaps.iter().map(|(a, b)| format!("{a}-{b}")).collect();
                    format!("not come back (yet): {}", g.join(", "))
                };
                println!(
                    "ok: {} of {}'s records returned ({}-{}), each linked to the one before it; {} signature(s) checked again ({} by keys no longer listed); {gaps}",
                    c.records,
                    c.receiver,
                    c.first,
                    c.last,
                    c.signatures_checked,
                    c.records - c.signatures_checked.min(c.records),
                );
            }
            Ok(())
        }
    }
}

fn keygen(dir: &std::path::Path, pipeline: bool) -> Result<()> {
    let role = if pipeline {
        SignerRole::Pipeline
    } else {
        SignerRole::Adapter
    };
    let (k, p) = keyfile::generate_signing(dir, role)?;
    let line =
        std::fs::read_to_string(&p).with_context(|| format!("cannot read back {}", p.display()))?;
    println!(
        "wrote {} (secret, mode 0600) and {}",
        k.display(),
        p.display()
    );
    println!("{}", line.trim_end());
    if pipeline {
        println!(
            "keep {} on the high side for `diode-send request` (pipeline key); list {} in the \
             adapter's adapter.toml ([reverse] pipeline_keys); requests signed by any other key are \
             refused there",
            k.display(),
            p.display()
        );
        return Ok(());
    }
    println!(
        "install {} on the high side as a trusted adapter key in recv.toml ([approvals] adapters); \
         envelopes signed by any other key are refused there",
        p.display()
    );
    Ok(())
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    hex::encode(b)
}

/// Who ran the command: the person behind sudo if there is one.
fn operator() -> String {
    ["SUDO_USER", "USER"]
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .find(|u| !u.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

fn sign(cfg: &Config, a: SignArgs) -> Result<()> {
    let valid: Duration = match &a.valid {
        Some(v) => config::parse_validity(v).context("--valid")?,
        None => cfg.default_validity()?,
    };
    let req = breakglass::Request {
        artifact: a.artifact,
        version: a.artifact_version,
        digest: a.digest,
        environment: a.env,
        approvers: a.approvers,
        requester: a.requester,
        reason: a.reason,
        request_id: a.request_id,
        valid,
        decision: if a.reject {
            Decision::Reject
        } else {
            Decision::Approve
        },
    };
    let envelope = breakglass::build(&req, diode_host::unix_now(), random_hex(), random_hex())?;
    let key = keyfile::load_signing(&cfg.key, SignerRole::Adapter)?;
    let signed = envelope.sign(&key);

    let mut extra = Map::new();
    extra.insert("via".into(), Value::from("break-glass"));
    extra.insert("reason".into(), Value::from(req.reason.trim()));
    extra.insert("operator".into(), Value::from(operator()));
    let log = AuditLog::new(&cfg.audit);
    let path = emit::emit(&cfg.outbox, &log, &signed, extra)?;
    // the envelope is out; its audit record follows it across the diode (a failure here is retried
    // by the next `sign` or by `serve`, which ship whatever is not shipped yet)
    if let Err(e) = audit_ship::ship(&log, &cfg.outbox, &cfg.audit_shipping) {
        eprintln!("diode-chat: warning: the audit log was not shipped this time: {e:#}");
    }

    let e = &signed.envelope;
    let expires = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(e.expires_at));
    println!("envelope {}", e.id);
    println!("file {}", path.display());
    println!(
        "{} of {} {} for {}, request {}, expires {}",
        e.decision, e.artifact.name, e.artifact.version, e.environment, e.request_id, expires
    );
    Ok(())
}

/// `diode-chat request`: Some(answer) when it waited (the exit code is the answer's).
async fn request(a: RequestArgs) -> Result<Option<Answer>> {
    let token = Secret::load(&a.token, std::path::Path::new("."), "--token")?;
    let client = pipeline_client::Client::new(&a.url, token)?;
    let id = match (a.id, a.app, a.artifact_version, a.env, a.digest) {
        (Some(id), ..) if !a.wait => {
            let v = client.status(&id).await?;
            println!("{}", serde_json::to_string_pretty(&v)?);
            return Ok(None);
        }
        (Some(id), ..) => id,
        (None, Some(app), Some(version), Some(environment), Some(digest)) => {
            let ask = Ask {
                app,
                version,
                environment,
                digest,
                on_behalf_of: a.on_behalf_of,
                reason: a.reason,
            };
            let v = client.create(&ask).await?;
            let id = v["request_id"]
                .as_str()
                .context("the adapter's answer has no request_id")?
                .to_string();
            eprintln!(
                "request {id} for {} {} to {} posted in {} for approval; deadline {}",
                ask.app,
                ask.version,
                ask.environment,
                v["channel"].as_str().unwrap_or("?"),
                v["deadline_at"]
                    .as_u64()
                    .map(diode_chat::approval::rfc3339)
                    .unwrap_or_else(|| "?".into()),
            );
            if !a.wait {
                println!("{id}");
                return Ok(None);
            }
            id
        }
        // clap requires all four without --id
        _ => anyhow::bail!("give --app, --version, --env and --digest, or --id"),
    };
    let answer = client.wait(&id, a.timeout.into(), a.poll.into()).await?;
    match &answer {
        Answer::Approved(envelope) => println!("{envelope}"),
        Answer::Rejected(what) => eprintln!("request {id} was rejected {what}"),
        Answer::Expired(what) => eprintln!("request {id} expired: {what}"),
        Answer::TimedOut => eprintln!("request {id}: no decision within {}", a.timeout),
    }
    Ok(Some(answer))
}
