//! The approval engine: requests, votes, refusals, reminders, escalations and the final deadline,
//! under the admins' policy. It writes state to SQLite, every event to the hash-chained audit log, and
//! each decision as a signed envelope into the sender's outbox (`emit`). It never talks to chat itself:
//! it returns the `Effect`s (post, update, ephemeral, thread reply) that the chat drivers carry out, so
//! that the same rules hold whichever way a request or a click arrives.

use crate::clock::Clock;
use crate::emit;
use crate::policy::{self, Due, Environment, Person, Policy, Source};
use crate::refusal_limit::{RefusalLimit, Stranger, Summary, Verdict};
use crate::store::{Request, Returned, Status, Store, Vote};
use anyhow::{anyhow, Context, Result};
use diode_host::audit::AuditLog;
use diode_proto::envelope::{
    digest_ok, Approver, Artifact, Decision, Envelope, Reject, SignedEnvelope, SigningKey,
    VerifyingKey,
};
use diode_proto::request::SignedRequest;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

/// How long the id of a delivery from chat is remembered. Slack and the Teams webhook accept a delivery
/// until 5 minutes after its timestamp, which may itself be 5 minutes ahead of the clock when it is
/// first taken: 10 minutes cover every copy the signature window lets in; one more for clock steps.
/// Slack's own retries (Events API, Socket Mode) come within this too.
pub const DELIVERY_KEEP_SECS: u64 = 2 * crate::slack::signature::WINDOW_SECS + 60;

/// What a chat driver must do after an engine call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Post the request's message in its environment's channel (or update it if already posted).
    Post { request: String },
    /// Bring the request's message up to date.
    Update { request: String },
    /// Tell one user something only they see.
    Ephemeral {
        source: Source,
        channel: String,
        user: String,
        text: String,
    },
    /// Reply in the request's thread, mentioning `notify` (person keys).
    Thread {
        request: String,
        text: String,
        notify: Vec<String>,
    },
}

/// Someone acting in chat.
#[derive(Debug, Clone)]
pub struct Actor {
    pub source: Source,
    pub user_id: String,
    /// The display name chat gave (used only when the person is not in `[people]`, for the audit).
    pub name: String,
    /// Where they acted, for an ephemeral answer.
    pub channel: Option<String>,
}

/// Who asks for a deployment.
#[derive(Debug, Clone)]
pub enum Requester {
    Chat(Actor),
    /// A pipeline by its token's name, possibly naming the person behind it (their key, Slack or Teams
    /// id), who then may not approve either.
    Pipeline {
        token: String,
        /// Environments the token may request for; empty: all.
        scope: Vec<String>,
        on_behalf_of: Option<String>,
    },
    /// A pipeline inside the air gap, by the `requester` its signed request names (a person's key or
    /// chat id, who then may not approve, or the pipeline's own name), signed by pipeline key `signer`.
    Signed {
        requester: String,
        signer: String,
    },
}

/// The pipeline keys that signed requests from the reverse diode are checked against, and how old or
/// how far ahead such a request may be (seconds).
#[derive(Debug, Clone)]
pub struct PipelineKeys {
    pub keys: Vec<VerifyingKey>,
    pub skew: u64,
    pub max_age: u64,
}

/// A signed request that was not refused.
#[derive(Debug, Clone)]
pub enum Taken {
    /// A new request, under the signed request's id.
    New(Box<Request>),
    /// That id was taken before (the reverse link repeats small objects): nothing more happens.
    Repeat(String),
}

#[derive(Debug, Clone)]
pub struct NewRequest {
    pub app: String,
    pub version: String,
    pub environment: String,
    pub digest: String,
    /// Why this deploy, as the requester put it (a ticket or change number, a sentence): cleaned and
    /// bounded by `clean_reason`; never signed into the envelope (it has no place for it).
    pub reason: Option<String>,
}

/// The longest reason a person or a pipeline may give here, in characters (the form says so too).
/// Signed requests from the reverse diode are bounded by their own format instead.
pub const MAX_REASON_CHARS: usize = 500;

/// A reason as it is kept and shown: control characters (but line breaks, and tabs as spaces) and
/// invisible format characters (bidi overrides, zero-width characters: `diode_proto::object::invisible`)
/// taken out, surrounding blanks trimmed; None if nothing is left. Longer than `max` characters
/// after that: refused, never cut (a cut reason could say something else).
pub fn clean_reason(reason: Option<&str>, max: usize) -> Result<Option<String>, Refusal> {
    let Some(raw) = reason else {
        return Ok(None);
    };
    let cleaned: String = raw
        .chars()
        .filter_map(|c| match c {
            '\n' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control() || diode_proto::object::invisible(c) => None,
            c => Some(c),
        })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return Ok(None);
    }
    let n = cleaned.chars().count();
    if n > max {
        return Err(Refusal::BadRequest(format!(
            "the reason is {n} characters long; at most {max} are kept (a ticket or change number will do)"
        )));
    }
    Ok(Some(cleaned.to_string()))
}

/// Why an action was refused. `code()` is the stable word in audit records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("you are not in the approval policy of this adapter ({0} user {1}); ask an admin to add you to [people]")]
    NotMember(&'static str, String),
    #[error("nobody may approve their own request")]
    SelfApproval,
    #[error("your roles ({0}) may not approve in {1}")]
    NotApprover(String, String),
    #[error("your roles ({0}) may not reject in {1}")]
    NotRejecter(String, String),
    #[error("your roles ({0}) may not request deployments to {1}")]
    NotRequester(String, String),
    #[error("you have already approved this request; each person counts once")]
    AlreadyVoted,
    #[error("this request is already {0}")]
    Closed(&'static str),
    #[error("no such request {0}")]
    UnknownRequest(String),
    #[error("environment {0:?} has no approval rule here")]
    UnknownEnvironment(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("the pipeline token {0:?} may not request deployments to {1}")]
    TokenScope(String, String),
    #[error("{0} cannot be approved without the requester: too few other approvers hold the roles needed")]
    Unapprovable(String),
    #[error("signed request refused: {0}")]
    Signed(Reject),
    #[error("request {0} was already taken with a different artifact or environment")]
    Conflict(String),
}

impl Refusal {
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::NotMember(..) => "not_member",
            Refusal::SelfApproval => "self_approval",
            Refusal::NotApprover(..) => "not_approver",
            Refusal::NotRejecter(..) => "not_rejecter",
            Refusal::NotRequester(..) => "not_requester",
            Refusal::AlreadyVoted => "already_voted",
            Refusal::Closed(_) => "closed",
            Refusal::UnknownRequest(_) => "unknown_request",
            Refusal::UnknownEnvironment(_) => "unknown_environment",
            Refusal::BadRequest(_) => "bad_request",
            Refusal::TokenScope(..) => "token_scope",
            Refusal::Unapprovable(_) => "unapprovable",
            Refusal::Signed(r) => r.code(),
            Refusal::Conflict(_) => "conflicting_request",
        }
    }
}

/// The result of a click: effects to carry out, and the refusal if there was one.
#[derive(Debug, Default)]
pub struct Outcome {
    pub effects: Vec<Effect>,
    pub refusal: Option<Refusal>,
}

/// A request with its votes, for rendering a message.
#[derive(Debug, Clone)]
pub struct View {
    pub request: Request,
    pub votes: Vec<Vote>,
    pub rule: String,
    pub approvals: u32,
    /// What the high side did with the envelope, as its signed outcomes told (oldest first).
    pub outcomes: Vec<Returned>,
}

impl View {
    /// Who has approved so far, with their roles ("none yet" before the first), for messages.
    pub fn approvals_text(&self) -> String {
        if self.votes.is_empty() {
            return "none yet".to_string();
        }
        self.votes
            .iter()
            .map(|x| format!("{} ({})", x.name, x.roles.join("/")))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub struct Engine {
    policy: Policy,
    store: Mutex<Store>,
    audit: AuditLog,
    /// How many refusals of people outside the policy are audited one by one.
    refusals: Mutex<RefusalLimit>,
    key: SigningKey,
    outbox: PathBuf,
    clock: Arc<dyn Clock>,
}

fn random_hex() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::rng(), &mut b);
    hex::encode(b)
}

fn field_ok(s: &str, what: &str) -> Result<(), Refusal> {
    if s.is_empty() || s.len() > 128 || s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(Refusal::BadRequest(format!(
            "{what} must be 1-128 characters without spaces"
        )));
    }
    Ok(())
}

fn roles_text(p: &Person) -> String {
    if p.roles.is_empty() {
        "none".into()
    } else {
        p.roles.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}

impl Engine {
    pub fn new(
        policy: Policy,
        store: Store,
        audit: AuditLog,
        key: SigningKey,
        outbox: PathBuf,
        clock: Arc<dyn Clock>,
        refusals: RefusalLimit,
    ) -> Engine {
        Engine {
            policy,
            store: Mutex::new(store),
            audit,
            refusals: Mutex::new(refusals),
            key,
            outbox,
            clock,
        }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        // A panic while holding the lock leaves SQLite consistent (transactions), so carry on.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn audit(&self, event: &str, mut fields: Map<String, Value>) -> Result<()> {
        fields.insert("clock".into(), self.clock.now().into());
        self.audit
            .append(event, Value::Object(fields))
            .with_context(|| format!("cannot write the audit log {}", self.audit.path().display()))
    }

    /// Audit a refusal, unless `stranger` (someone outside the policy) has had theirs recorded in
    /// full for this interval already: then it is counted into the interval's summary. The refusal is
    /// returned either way, for the person to be told.
    fn refuse(
        &self,
        action: &str,
        request: Option<&str>,
        who: Value,
        stranger: Option<Stranger>,
        r: Refusal,
    ) -> Result<Refusal> {
        if let Some(s) = stranger {
            let (ended, verdict) = self.refusal_limit().refusal(&s, self.clock.now());
            if let Some(ended) = ended {
                self.summarise(&ended)?;
            }
            if verdict == Verdict::Count {
                return Ok(r);
            }
        }
        let mut f = Map::new();
        f.insert("action".into(), action.into());
        if let Some(id) = request {
            f.insert("request_id".into(), id.into());
        }
        f.insert("who".into(), who);
        f.insert("reason".into(), r.code().into());
        f.insert("message".into(), r.to_string().into());
        self.audit("refused", f)?;
        Ok(r)
    }

    fn refusal_limit(&self) -> MutexGuard<'_, RefusalLimit> {
        // counts only: whatever a panic left half-done is harmless
        self.refusals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Someone acting in chat whom the policy does not know.
    fn stranger(&self, source: Source, user_id: &str) -> Option<Stranger> {
        self.policy
            .by_user(source, user_id)
            .is_none()
            .then(|| (source, user_id.to_string()))
    }

    /// The one record for the refusals of a stranger counted in an interval.
    fn summarise(&self, s: &Summary) -> Result<()> {
        let (source, user) = &s.who;
        let mut f = Map::new();
        f.insert("who".into(), json!({"source": source.word(), "user": user}));
        f.insert("count".into(), s.count.into());
        f.insert("from".into(), s.from.into());
        f.insert("until".into(), s.until.into());
        f.insert(
            "message".into(),
            format!(
                "{} more refusal(s) of {} user {user}, who is not in the policy, suppressed between {} and {}",
                s.count,
                source.word(),
                rfc3339(s.from),
                rfc3339(s.until)
            )
            .into(),
        );
        self.audit("refusals_suppressed", f)
    }

    /// A new deployment request. Outer error: the adapter failed (disk, database); inner: refused.
    pub fn request(&self, who: Requester, new: NewRequest) -> Result<Result<Request, Refusal>> {
        let id = format!("req-{}", &random_hex()[..16]);
        self.create(who, new, id, Map::new())
    }

    /// A signed request from a pipeline inside the air gap, as read from the reverse receiver's inbox
    /// (at most `MAX_REQUEST_BYTES` + 1 bytes of it). Taken under its own id, which is the approval's
    /// `request_id`, with its digest; then under the policy like any other request. Its signature and
    /// shape are checked before anything else, its id against those already taken next (a repeat is
    /// no event, however old), its age last. Outer error: the adapter failed; inner: refused.
    pub fn request_signed(
        &self,
        bytes: &[u8],
        trust: &PipelineKeys,
    ) -> Result<Result<Taken, Refusal>> {
        let now = self.clock.now();
        let refused =
            |id: Option<&str>, who: Value, r: Refusal| -> Result<Result<Taken, Refusal>> {
                Ok(Err(self.refuse("signed_request", id, who, None, r)?))
            };
        let s = match SignedRequest::parse(bytes) {
            Ok(s) => s,
            Err(r) => {
                let who = json!({"source": "reverse", "bytes": bytes.len()});
                return refused(None, who, Refusal::Signed(r));
            }
        };
        let r = &s.request;
        let who = json!({"source": "reverse", "signer": s.signer, "requester": r.requester});
        let id = Some(r.id.as_str());
        // signer and signature whatever the age, so that a repeat is recognised only if it is genuine
        if let Err(e) = s.verify(&trust.keys, now, trust.skew, u64::MAX) {
            return refused(id, who, Refusal::Signed(e));
        }
        if let Some(prev) = self.store().get(&r.id)? {
            if (&prev.app, &prev.version, &prev.digest, &prev.environment)
                == (
                    &r.artifact.name,
                    &r.artifact.version,
                    &r.artifact.digest,
                    &r.environment,
                )
            {
                return Ok(Ok(Taken::Repeat(prev.id)));
            }
            return refused(id, who, Refusal::Conflict(r.id.clone()));
        }
        if let Err(e) = s.verify(&trust.keys, now, trust.skew, trust.max_age) {
            return refused(id, who, Refusal::Signed(e));
        }
        let mut extra = Map::new();
        extra.insert("via".into(), "reverse".into());
        extra.insert("signer".into(), s.signer.clone().into());
        extra.insert("created_at".into(), r.created_at.into());
        extra.insert("reason".into(), r.reason.clone().into());
        let requester = Requester::Signed {
            requester: r.requester.clone(),
            signer: s.signer.clone(),
        };
        let new = NewRequest {
            app: r.artifact.name.clone(),
            version: r.artifact.version.clone(),
            environment: r.environment.clone(),
            digest: r.artifact.digest.clone(),
            reason: Some(r.reason.clone()),
        };
        Ok(self
            .create(requester, new, r.id.clone(), extra)?
            .map(|r| Taken::New(Box::new(r))))
    }

    fn create(
        &self,
        who: Requester,
        new: NewRequest,
        id: String,
        extra: Map<String, Value>,
    ) -> Result<Result<Request, Refusal>> {
        let signed = matches!(who, Requester::Signed { .. });
        let who_json = match &who {
            Requester::Chat(a) => {
                json!({"source": a.source.word(), "user": a.user_id, "name": a.name})
            }
            Requester::Pipeline {
                token,
                on_behalf_of,
                ..
            } => json!({"source": "pipeline", "token": token, "on_behalf_of": on_behalf_of}),
            Requester::Signed { requester, signer } => {
                json!({"source": "reverse", "signer": signer, "requester": requester})
            }
        };
        // a signed request's reason is bounded by its format (and was signed as it is)
        let max = if signed { usize::MAX } else { MAX_REASON_CHARS };
        let checked = self
            .check_request(&who, &new)
            .and_then(|ok| clean_reason(new.reason.as_deref(), max).map(|reason| (ok, reason)));
        match checked {
            Ok(((env, requester, person, name, source), reason)) => {
                let now = self.clock.now();
                let req = Request {
                    id,
                    app: new.app,
                    version: new.version,
                    environment: env.name.clone(),
                    digest: new.digest,
                    requester,
                    requester_person: person,
                    requester_name: name,
                    source: source.into(),
                    created_at: now,
                    deadline_at: now.saturating_add(env.deadline),
                    status: Status::Pending,
                    envelope_id: random_hex(),
                    decided_at: None,
                    decided_by: None,
                    reminders: 0,
                    tier: 0,
                    channel: env.channel.clone(),
                    ts: None,
                    dirty: true,
                    reason,
                };
                let mut f = Map::new();
                f.insert("request_id".into(), req.id.clone().into());
                f.insert(
                    "artifact".into(),
                    json!({"name": req.app, "version": req.version, "digest": req.digest}),
                );
                f.insert("environment".into(), req.environment.clone().into());
                f.insert("requester".into(), req.requester.clone().into());
                f.insert("who".into(), who_json);
                f.insert("rule".into(), env.describe().into());
                f.insert("deadline_at".into(), req.deadline_at.into());
                f.insert("envelope_id".into(), req.envelope_id.clone().into());
                if let Some(reason) = &req.reason {
                    f.insert("reason".into(), reason.clone().into());
                }
                // (a signed request's `extra` carries its reason as it was signed)
                f.extend(extra);
                let store = self.store();
                self.audit("request", f)?;
                store.insert(&req).context("cannot store the request")?;
                Ok(Ok(req))
            }
            Err(r) => {
                let id = signed.then_some(id);
                let stranger = match &who {
                    Requester::Chat(a) => self.stranger(a.source, &a.user_id),
                    _ => None,
                };
                Ok(Err(self.refuse(
                    "request",
                    id.as_deref(),
                    who_json,
                    stranger,
                    r,
                )?))
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn check_request(
        &self,
        who: &Requester,
        new: &NewRequest,
    ) -> Result<(&Environment, String, Option<String>, String, &'static str), Refusal> {
        if let Requester::Pipeline { token, scope, .. } = who {
            if !scope.is_empty() && !scope.contains(&new.environment) {
                return Err(Refusal::TokenScope(token.clone(), new.environment.clone()));
            }
        }
        field_ok(&new.app, "app")?;
        field_ok(&new.version, "version")?;
        field_ok(&new.environment, "environment")?;
        if !digest_ok(&new.digest) {
            return Err(Refusal::BadRequest(
                "digest must be sha256: followed by 64 lowercase hex digits".into(),
            ));
        }
        let env = self
            .policy
            .environments
            .get(&new.environment)
            .ok_or_else(|| Refusal::UnknownEnvironment(new.environment.clone()))?;
        let (requester, person, name, source) = match who {
            Requester::Chat(a) => {
                let p = self
                    .policy
                    .by_user(a.source, &a.user_id)
                    .ok_or_else(|| Refusal::NotMember(a.source.word(), a.user_id.clone()))?;
                if !env.requesters.is_empty() && !p.roles.iter().any(|r| env.requesters.contains(r))
                {
                    return Err(Refusal::NotRequester(roles_text(p), env.name.clone()));
                }
                (
                    a.user_id.clone(),
                    Some(p.key.clone()),
                    p.name.clone(),
                    a.source.word(),
                )
            }
            Requester::Pipeline { token, scope, .. }
                if !scope.is_empty() && !scope.contains(&env.name) =>
            {
                return Err(Refusal::TokenScope(token.clone(), env.name.clone()));
            }
            Requester::Pipeline {
                token,
                on_behalf_of,
                ..
            } => match on_behalf_of {
                Some(id) => {
                    let p = self.policy.by_any_id(id).ok_or_else(|| {
                        Refusal::BadRequest(format!("on_behalf_of {id:?} is not in [people]"))
                    })?;
                    (id.clone(), Some(p.key.clone()), p.name.clone(), "pipeline")
                }
                None => (
                    format!("pipeline:{token}"),
                    None,
                    format!("pipeline {token}"),
                    "pipeline",
                ),
            },
            Requester::Signed { requester, signer } => match self.policy.by_any_id(requester) {
                // a person named as the requester may not approve what they asked for
                Some(p) => (
                    requester.clone(),
                    Some(p.key.clone()),
                    format!("{} (signed by pipeline key {signer})", p.name),
                    "reverse diode",
                ),
                None => {
                    let name = requester.strip_prefix("pipeline:").unwrap_or(requester);
                    (
                        format!("pipeline:{name}"),
                        None,
                        format!("pipeline {name} (signed by pipeline key {signer})"),
                        "reverse diode",
                    )
                }
            },
        };
        // Refuse now a request that could only ever be approved by its own requester.
        let others: Vec<(String, Vec<String>)> = self
            .policy
            .eligible(env)
            .filter(|p| Some(&p.key) != person.as_ref())
            .map(|p| (p.key.clone(), env.approver_roles(p)))
            .collect();
        if policy::tally(env, &others).is_none() {
            return Err(Refusal::Unapprovable(env.name.clone()));
        }
        Ok((env, requester, person, name, source))
    }

    /// A click on Approve or Reject.
    pub fn act(&self, request_id: &str, actor: &Actor, decision: Decision) -> Result<Outcome> {
        let mut store = self.store();
        let who = json!({"source": actor.source.word(), "user": actor.user_id, "name": actor.name});
        let checked = self.check_act(&store, request_id, actor, decision);
        let (req, env, person, roles) = match checked? {
            Ok(v) => v,
            Err(r) => {
                let stranger = self.stranger(actor.source, &actor.user_id);
                let r = self.refuse(&decision.to_string(), Some(request_id), who, stranger, r)?;
                let mut out = Outcome::default();
                if let Some(channel) = &actor.channel {
                    out.effects.push(Effect::Ephemeral {
                        source: actor.source,
                        channel: channel.clone(),
                        user: actor.user_id.clone(),
                        text: format!("Not counted: {r}."),
                    });
                }
                out.refusal = Some(r);
                return Ok(out);
            }
        };
        let now = self.clock.now();
        let vote = Vote {
            person: person.key.clone(),
            user_id: actor.user_id.clone(),
            name: person.name.clone(),
            source: actor.source.word().into(),
            roles,
            at: now,
        };
        let mut f = Map::new();
        f.insert("request_id".into(), req.id.clone().into());
        f.insert("decision".into(), decision.to_string().into());
        f.insert("person".into(), person.key.clone().into());
        f.insert("who".into(), who);
        f.insert("roles".into(), vote.roles.clone().into());
        self.audit("vote", f)?;
        let mut out = Outcome::default();
        match decision {
            Decision::Approve => {
                store.add_vote(&req.id, &vote)?;
                let votes = store.votes(&req.id)?;
                let ballots: Vec<(String, Vec<String>)> = votes
                    .iter()
                    .map(|v| (v.person.clone(), v.roles.clone()))
                    .collect();
                if let Some(assigned) = policy::tally(env, &ballots) {
                    let approvers = votes
                        .iter()
                        .zip(assigned)
                        .map(|(v, role)| Approver {
                            id: v.user_id.clone(),
                            name: v.name.clone(),
                            role,
                            source: v.source.clone(),
                            at: v.at,
                        })
                        .collect();
                    self.decide(
                        &mut store,
                        &req,
                        env,
                        Decision::Approve,
                        approvers,
                        env.describe(),
                        Status::Approved,
                        None,
                    )?;
                }
            }
            Decision::Reject => {
                let approver = Approver {
                    id: actor.user_id.clone(),
                    name: person.name.clone(),
                    role: vote.roles.first().cloned().unwrap_or_default(),
                    source: vote.source.clone(),
                    at: now,
                };
                self.decide(
                    &mut store,
                    &req,
                    env,
                    Decision::Reject,
                    vec![approver],
                    format!("{}: rejected by {}", env.name, person.name),
                    Status::Rejected,
                    Some(&person.name),
                )?;
            }
        }
        out.effects.push(Effect::Update {
            request: req.id.clone(),
        });
        Ok(out)
    }

    #[allow(clippy::type_complexity)]
    fn check_act(
        &self,
        store: &Store,
        request_id: &str,
        actor: &Actor,
        decision: Decision,
    ) -> Result<Result<(Request, &Environment, &Person, Vec<String>), Refusal>> {
        let Some(req) = store.get(request_id)? else {
            return Ok(Err(Refusal::UnknownRequest(request_id.into())));
        };
        if req.status != Status::Pending {
            return Ok(Err(Refusal::Closed(req.status.word())));
        }
        let Some(env) = self.policy.environments.get(&req.environment) else {
            return Ok(Err(Refusal::UnknownEnvironment(req.environment.clone())));
        };
        let Some(person) = self.policy.by_user(actor.source, &actor.user_id) else {
            return Ok(Err(Refusal::NotMember(
                actor.source.word(),
                actor.user_id.clone(),
            )));
        };
        if self.clock.now() >= req.deadline_at {
            return Ok(Err(Refusal::Closed("past its deadline")));
        }
        let roles = match decision {
            Decision::Approve => {
                if Some(&person.key) == req.requester_person.as_ref()
                    || actor.user_id == req.requester
                {
                    return Ok(Err(Refusal::SelfApproval));
                }
                let roles = env.approver_roles(person);
                if roles.is_empty() {
                    return Ok(Err(Refusal::NotApprover(
                        roles_text(person),
                        env.name.clone(),
                    )));
                }
                if store.votes(&req.id)?.iter().any(|v| v.person == person.key) {
                    return Ok(Err(Refusal::AlreadyVoted));
                }
                roles
            }
            Decision::Reject => {
                let roles: Vec<String> = person
                    .roles
                    .iter()
                    .filter(|r| env.rejecters.contains(*r))
                    .cloned()
                    .collect();
                if roles.is_empty() {
                    return Ok(Err(Refusal::NotRejecter(
                        roles_text(person),
                        env.name.clone(),
                    )));
                }
                roles
            }
        };
        Ok(Ok((req, env, person, roles)))
    }

    /// Sign the decision and emit it with the status change, in one database transaction: if the
    /// envelope cannot be recorded and written, the request stays pending.
    #[allow(clippy::too_many_arguments)]
    fn decide(
        &self,
        store: &mut Store,
        req: &Request,
        env: &Environment,
        decision: Decision,
        approvers: Vec<Approver>,
        rule: String,
        status: Status,
        by: Option<&str>,
    ) -> Result<()> {
        let now = self.clock.now();
        let envelope = Envelope {
            id: req.envelope_id.clone(),
            request_id: req.id.clone(),
            decision,
            artifact: Artifact {
                name: req.app.clone(),
                version: req.version.clone(),
                digest: req.digest.clone(),
            },
            environment: req.environment.clone(),
            approvers,
            requester: req.requester.clone(),
            rule,
            issued_at: now,
            expires_at: now.saturating_add(env.validity),
        };
        envelope
            .check_shape()
            .map_err(|e| anyhow!("request {}: refusing to sign: {e}", req.id))?;
        // A crash after the envelope was written but before the status was committed leaves the file
        // in the outbox (until the sender takes it): that envelope stands, under the same id, and the
        // status follows it. (Once the sender has taken it, a new envelope reuses the id, and the high
        // side, which accepts each id once, keeps the first.)
        let path = self.outbox.join(format!("{}.envelope", req.envelope_id));
        if let Some(prev) = std::fs::read(&path)
            .ok()
            .and_then(|b| SignedEnvelope::parse(&b).ok())
            .filter(|p| p.envelope.request_id == req.id)
        {
            let status = match prev.envelope.decision {
                Decision::Approve => Status::Approved,
                Decision::Reject if prev.envelope.approvers.is_empty() => Status::Expired,
                Decision::Reject => Status::Rejected,
            };
            let mut f = Map::new();
            f.insert("request_id".into(), req.id.clone().into());
            f.insert("envelope_id".into(), req.envelope_id.clone().into());
            f.insert("outcome".into(), status.word().into());
            self.audit("recovered", f)?;
            let by = prev.envelope.approvers.first().map(|a| a.name.clone());
            return store.transaction(|tx| Store::decide(tx, &req.id, &status, now, by.as_deref()));
        }
        let signed = envelope.sign(&self.key);
        let mut extra = Map::new();
        extra.insert("via".into(), "chat".into());
        extra.insert("outcome".into(), status.word().into());
        extra.insert("clock".into(), now.into());
        store.transaction(|tx| {
            Store::decide(tx, &req.id, &status, now, by)?;
            emit::emit(&self.outbox, &self.audit, &signed, extra)?;
            Ok(())
        })
    }

    /// Reminders, escalations and deadlines due now, and messages not yet in step with the state.
    pub fn tick(&self) -> Result<Vec<Effect>> {
        let now = self.clock.now();
        let summaries = self.refusal_limit().due(now);
        for s in &summaries {
            self.summarise(s)?;
        }
        let mut store = self.store();
        let mut effects = Vec::new();
        for req in store.pending()? {
            let Some(env) = self.policy.environments.get(&req.environment) else {
                continue;
            };
            let (mut reminders, mut tier) = (req.reminders, req.tier);
            for d in policy::due(env, req.created_at, reminders, tier as usize, now) {
                let mut f = Map::new();
                f.insert("request_id".into(), req.id.clone().into());
                match d {
                    Due::Reminder(n) => {
                        let missing = env
                            .approvals
                            .saturating_sub(store.votes(&req.id)?.len() as u32);
                        f.insert("reminder".into(), n.into());
                        self.audit("reminder", f)?;
                        reminders = n;
                        store.set_progress(&req.id, reminders, tier)?;
                        effects.push(Effect::Thread {
                            request: req.id.clone(),
                            text: format!(
                                "Reminder {n}: {} {} to {} still needs a decision ({} more approval(s) at least). Deadline {}.",
                                req.app,
                                req.version,
                                req.environment,
                                missing.max(1),
                                rfc3339(req.deadline_at)
                            ),
                            notify: vec![],
                        });
                    }
                    Due::Escalation(t) => {
                        let x = &env.escalation[t];
                        let notify: Vec<String> = self
                            .policy
                            .holders(&x.notify)
                            .map(|p| p.key.clone())
                            .collect();
                        f.insert("tier".into(), (t + 1).into());
                        f.insert("roles".into(), x.notify.clone().into());
                        f.insert("people".into(), notify.clone().into());
                        self.audit("escalation", f)?;
                        tier = t as u32 + 1;
                        store.set_progress(&req.id, reminders, tier)?;
                        effects.push(Effect::Thread {
                            request: req.id.clone(),
                            text: format!(
                                "Escalation tier {}: {} {} to {} is still undecided and is rejected at {}.",
                                t + 1,
                                req.app,
                                req.version,
                                req.environment,
                                rfc3339(req.deadline_at)
                            ),
                            notify,
                        });
                    }
                    Due::Deadline => {
                        f.insert("deadline_at".into(), req.deadline_at.into());
                        f.insert("votes".into(), store.votes(&req.id)?.len().into());
                        self.audit("expired", f)?;
                        self.decide(
                            &mut store,
                            &req,
                            env,
                            Decision::Reject,
                            vec![],
                            format!("{}: no decision by the deadline", env.name),
                            Status::Expired,
                            None,
                        )?;
                        effects.push(Effect::Update {
                            request: req.id.clone(),
                        });
                    }
                }
            }
        }
        for req in store.unsynced()? {
            let e = if req.ts.is_none() {
                Effect::Post { request: req.id }
            } else {
                Effect::Update { request: req.id }
            };
            if !effects.contains(&e) {
                effects.push(e);
            }
        }
        Ok(effects)
    }

    pub fn view(&self, id: &str) -> Result<Option<View>> {
        let store = self.store();
        let Some(request) = store.get(id)? else {
            return Ok(None);
        };
        let votes = store.votes(id)?;
        let outcomes = store.outcomes(id)?;
        let (rule, approvals) = match self.policy.environments.get(&request.environment) {
            Some(env) => (env.describe(), env.approvals),
            None => ("(environment no longer configured)".into(), 0),
        };
        Ok(Some(View {
            request,
            votes,
            rule,
            approvals,
            outcomes,
        }))
    }

    /// Requests pending, or decided within the last `secs` (adapter clock), for bringing chat messages
    /// that missed a change up to date.
    pub fn recent(&self, secs: u64) -> Result<Vec<View>> {
        let ids = self.store().recent(self.clock.now().saturating_sub(secs))?;
        let mut out = Vec::new();
        for id in ids {
            if let Some(v) = self.view(&id)? {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Run `f` for a delivery from chat unless one with any of the same `ids` (Slack's trigger_id,
    /// envelope_id or event_id, a Teams activity id: see `Store::take_delivery`) was taken within
    /// `DELIVERY_KEEP_SECS`: `None` then, and `f` is not run. The ids are taken before `f` runs, so two
    /// copies arriving at once run it once; they are persisted, so a copy after a restart is caught
    /// too. If `f` fails the ids are given back, so that the platform's retry runs it.
    pub fn once<T>(&self, ids: &[String], f: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        let now = self.clock.now();
        if !self.store().take_delivery(ids, now, DELIVERY_KEEP_SECS)? {
            return Ok(None);
        }
        match f() {
            Ok(v) => Ok(Some(v)),
            Err(e) => {
                if let Err(r) = self.store().release_delivery(ids) {
                    tracing::error!("cannot give back the delivery ids {ids:?}: {r:#}");
                }
                Err(e)
            }
        }
    }

    pub fn teams_card(&self, request: &str, via: &str) -> Result<Option<(Option<String>, String)>> {
        self.store().teams_card(request, via)
    }

    pub fn set_teams_card(
        &self,
        request: &str,
        via: &str,
        activity_id: Option<&str>,
        shown: &str,
    ) -> Result<()> {
        self.store()
            .set_teams_card(request, via, activity_id, shown)
    }

    pub fn set_posted(&self, id: &str, ts: &str) -> Result<()> {
        self.store().set_posted(id, ts)
    }

    pub fn mark_clean(&self, v: &View) -> Result<()> {
        self.store().mark_clean(
            &v.request.id,
            &v.request.status,
            v.votes.len(),
            v.outcomes.len(),
        )
    }

    /// Record that chat could not be told something (the message is retried on the next tick).
    pub fn chat_failed(&self, what: &str, request: Option<&str>, err: &anyhow::Error) {
        let mut f = Map::new();
        f.insert("what".into(), what.into());
        if let Some(r) = request {
            f.insert("request_id".into(), r.into());
        }
        f.insert("error".into(), format!("{err:#}").into());
        if let Err(e) = self.audit("chat_failed", f) {
            tracing::error!("{e:#}");
        }
    }
}

pub fn rfc3339(t: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_secs(t))
        .to_string()
}

#[cfg(test)]
mod reason_tests {
    use super::*;

    #[test]
    fn a_reason_is_cleaned_of_control_and_invisible_characters_and_bounded() {
        let clean = |r: &str| clean_reason(Some(r), 20);
        assert_eq!(clean_reason(None, 20), Ok(None));
        assert_eq!(clean("  \u{200b}\u{202e} \r\n"), Ok(None), "nothing left");
        assert_eq!(
            clean(" CHG-1\u{202e}2\r\n\tnow\u{7} "),
            Ok(Some("CHG-12\n now".into()))
        );
        assert_eq!(
            clean(&"é".repeat(20)),
            Ok(Some("é".repeat(20))),
            "characters, not bytes"
        );
        assert!(
            matches!(clean(&"é".repeat(21)), Err(Refusal::BadRequest(m)) if m.contains("21 characters"))
        );
    }
}
