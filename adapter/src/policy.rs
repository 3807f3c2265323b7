//! The approval policy, owned by the admins who write `adapter.toml` and by no chat user: who is who,
//! which roles may request, approve and reject in each environment, how many approvals are needed, and
//! the clock of a request (reminders, escalation tiers, final deadline). Parsed once from the config
//! into typed values; the decisions here are pure functions of the policy, the votes and the time.

use crate::config::{parse_validity, Config, EnvironmentConfig};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

/// Where a person acted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Slack,
    Teams,
    Pipeline,
}

impl Source {
    pub fn word(self) -> &'static str {
        match self {
            Source::Slack => "slack",
            Source::Teams => "teams",
            Source::Pipeline => "pipeline",
        }
    }

    pub fn from_word(w: &str) -> Option<Source> {
        match w {
            "slack" => Some(Source::Slack),
            "teams" => Some(Source::Teams),
            "pipeline" => Some(Source::Pipeline),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Person {
    /// The key in `[people]`: one person, whichever chat they use.
    pub key: String,
    pub name: String,
    pub slack: Option<String>,
    pub teams: Option<String>,
    pub roles: BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct Escalation {
    pub after: u64,
    pub notify: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub channel: String,
    pub requesters: BTreeSet<String>,
    pub approvers: BTreeSet<String>,
    pub approvals: u32,
    pub required_roles: Vec<String>,
    pub rejecters: BTreeSet<String>,
    pub deadline: u64,
    pub remind_every: u64,
    pub escalation: Vec<Escalation>,
    pub validity: u64,
}

#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub people: BTreeMap<String, Person>,
    pub environments: BTreeMap<String, Environment>,
}

fn secs(s: &str, what: &str) -> Result<u64> {
    let d = humantime::parse_duration(s)
        .with_context(|| format!("{what} = {s:?} is not a duration: use e.g. \"30m\", \"4h\""))?;
    if d.as_secs() == 0 {
        bail!("{what} = {s:?} must be at least one second");
    }
    Ok(d.as_secs())
}

impl Policy {
    pub fn from_config(c: &Config) -> Result<Policy> {
        let mut people = BTreeMap::new();
        let mut slack_ids = BTreeSet::new();
        let mut teams_ids = BTreeSet::new();
        let mut roles = BTreeSet::new();
        for (key, p) in &c.people {
            if p.slack.is_none() && p.teams.is_none() {
                bail!("people.{key}: give a slack or a teams user id (or both)");
            }
            if let Some(id) = &p.slack {
                if !slack_ids.insert(id.clone()) {
                    bail!("people.{key}: slack id {id} is given to two people");
                }
            }
            if let Some(id) = &p.teams {
                if !teams_ids.insert(id.clone()) {
                    bail!("people.{key}: teams id {id} is given to two people");
                }
            }
            roles.extend(p.roles.iter().cloned());
            people.insert(
                key.clone(),
                Person {
                    key: key.clone(),
                    name: p.name.clone(),
                    slack: p.slack.clone(),
                    teams: p.teams.clone(),
                    roles: p.roles.iter().cloned().collect(),
                },
            );
        }
        let mut environments = BTreeMap::new();
        for (name, e) in &c.environments {
            let env = Self::environment(name, e, &roles)
                .with_context(|| format!("environments.{name}"))?;
            environments.insert(name.clone(), env);
        }
        let policy = Policy {
            people,
            environments,
        };
        for env in policy.environments.values() {
            let eligible: Vec<&Person> = policy.eligible(env).collect();
            if (eligible.len() as u64) < env.approvals as u64 {
                bail!(
                    "environments.{}: {} approvals needed but only {} people hold an approver role",
                    env.name,
                    env.approvals,
                    eligible.len()
                );
            }
        }
        Ok(policy)
    }

    fn environment(
        name: &str,
        e: &EnvironmentConfig,
        roles: &BTreeSet<String>,
    ) -> Result<Environment> {
        for r in e
            .requesters
            .iter()
            .chain(&e.approvers)
            .chain(&e.required_roles)
            .chain(&e.rejecters)
            .chain(e.escalation.iter().flat_map(|x| &x.notify))
        {
            if !roles.contains(r) {
                bail!("role {r:?} is held by nobody in [people] (a typo?)");
            }
        }
        if e.approvals == 0 {
            bail!("approvals = 0: at least one approval is needed");
        }
        if e.approvers.is_empty() || e.rejecters.is_empty() {
            bail!("approvers and rejecters must each name at least one role");
        }
        for r in &e.required_roles {
            if !e.approvers.contains(r) {
                bail!("required role {r:?} is not among the approver roles");
            }
        }
        if e.required_roles.len() as u64 > e.approvals as u64 {
            bail!(
                "{} required roles but only {} approvals: each required role needs an approver of its own",
                e.required_roles.len(),
                e.approvals
            );
        }
        let deadline = secs(&e.deadline, "deadline")?;
        let remind_every = secs(&e.remind_every, "remind_every")?;
        let mut escalation = Vec::new();
        let mut last = 0;
        for (i, x) in e.escalation.iter().enumerate() {
            let after = secs(&x.after, &format!("escalation[{i}].after"))?;
            if after <= last || after >= deadline {
                bail!("escalation[{i}].after must be later than the tier before it and earlier than the deadline");
            }
            if x.notify.is_empty() {
                bail!("escalation[{i}].notify names nobody");
            }
            last = after;
            escalation.push(Escalation {
                after,
                notify: x.notify.clone(),
            });
        }
        let validity = parse_validity(&e.validity).context("validity")?.as_secs();
        if e.channel.trim().is_empty() {
            bail!("channel is empty");
        }
        Ok(Environment {
            name: name.to_string(),
            channel: e.channel.clone(),
            requesters: e.requesters.iter().cloned().collect(),
            approvers: e.approvers.iter().cloned().collect(),
            approvals: e.approvals,
            required_roles: e.required_roles.clone(),
            rejecters: e.rejecters.iter().cloned().collect(),
            deadline,
            remind_every,
            escalation,
            validity,
        })
    }

    pub fn by_user(&self, source: Source, user_id: &str) -> Option<&Person> {
        self.people.values().find(|p| match source {
            Source::Slack => p.slack.as_deref() == Some(user_id),
            Source::Teams => p.teams.as_deref() == Some(user_id),
            Source::Pipeline => false,
        })
    }

    /// A person named by their key, Slack id or Teams id (what a pipeline gives as `on_behalf_of`).
    pub fn by_any_id(&self, id: &str) -> Option<&Person> {
        self.people.get(id).or_else(|| {
            self.people
                .values()
                .find(|p| p.slack.as_deref() == Some(id) || p.teams.as_deref() == Some(id))
        })
    }

    /// People who hold an approver role of `env`.
    pub fn eligible<'a>(&'a self, env: &'a Environment) -> impl Iterator<Item = &'a Person> + 'a {
        self.people
            .values()
            .filter(|p| p.roles.iter().any(|r| env.approvers.contains(r)))
    }

    /// People holding any of `roles`.
    pub fn holders<'a>(&'a self, roles: &'a [String]) -> impl Iterator<Item = &'a Person> + 'a {
        self.people
            .values()
            .filter(|p| p.roles.iter().any(|r| roles.contains(r)))
    }
}

impl Environment {
    /// One line for the message and the envelope's `rule` field.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} approval(s) from {}",
            self.name,
            self.approvals,
            self.approvers
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        if !self.required_roles.is_empty() {
            s.push_str(&format!(
                ", including {}",
                self.required_roles.join(" and ")
            ));
        }
        s.push_str(", never the requester");
        s
    }

    /// The roles of `person` that count as approver roles here.
    pub fn approver_roles(&self, person: &Person) -> Vec<String> {
        person
            .roles
            .iter()
            .filter(|r| self.approvers.contains(*r))
            .cloned()
            .collect()
    }
}

/// Assign one role to each voter so that every required role is held by a distinct voter. `votes` are
/// (voter, roles they may approve as), in vote order. Returns the role of each voter when the rule is
/// met (enough distinct voters, every required role covered), else None.
pub fn tally(env: &Environment, votes: &[(String, Vec<String>)]) -> Option<Vec<String>> {
    if (votes.len() as u64) < env.approvals as u64 {
        return None;
    }
    // Bipartite matching of required roles to voters (Kuhn's augmenting paths; the sets are tiny).
    let mut owner: Vec<Option<usize>> = vec![None; env.required_roles.len()]; // role -> voter
    fn augment(
        voter: usize,
        env: &Environment,
        votes: &[(String, Vec<String>)],
        owner: &mut Vec<Option<usize>>,
        seen: &mut Vec<bool>,
    ) -> bool {
        for (ri, role) in env.required_roles.iter().enumerate() {
            if seen[ri] || !votes[voter].1.contains(role) {
                continue;
            }
            seen[ri] = true;
            let free = match owner[ri] {
                None => true,
                Some(other) => augment(other, env, votes, owner, seen),
            };
            if free {
                owner[ri] = Some(voter);
                return true;
            }
        }
        false
    }
    for v in 0..votes.len() {
        let mut seen = vec![false; env.required_roles.len()];
        augment(v, env, votes, &mut owner, &mut seen);
    }
    if owner.iter().any(Option::is_none) {
        return None;
    }
    let mut roles: Vec<String> = votes
        .iter()
        .map(|(_, r)| r.first().cloned().unwrap_or_default())
        .collect();
    for (ri, o) in owner.iter().enumerate() {
        if let Some(v) = o {
            roles[*v] = env.required_roles[ri].clone();
        }
    }
    Some(roles)
}

/// What the clock of one pending request calls for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Reminder number `n` (1-based) is due; `n` is the latest one due, earlier missed ones are folded in.
    Reminder(u32),
    /// Escalation tier `t` (0-based).
    Escalation(usize),
    /// The final deadline: reject.
    Deadline,
}

/// The events due at `now` for a request created at `created`, having sent `reminders` reminders and
/// reached `tier` escalation tiers, in the order they fell due. After the deadline only the deadline
/// counts: nothing is reminded or escalated about a request that is already over.
pub fn due(env: &Environment, created: u64, reminders: u32, tier: usize, now: u64) -> Vec<Due> {
    let deadline = created.saturating_add(env.deadline);
    if now >= deadline {
        return vec![Due::Deadline];
    }
    let mut out: Vec<(u64, Due)> = Vec::new();
    for (t, x) in env.escalation.iter().enumerate().skip(tier) {
        let at = created.saturating_add(x.after);
        if at <= now {
            out.push((at, Due::Escalation(t)));
        }
    }
    let n = ((now - created) / env.remind_every) as u32;
    if n > reminders {
        let at = created.saturating_add(n as u64 * env.remind_every);
        if at < deadline {
            out.push((at, Due::Reminder(n)));
        }
    }
    out.sort_by_key(|(at, d)| (*at, matches!(d, Due::Reminder(_))));
    out.into_iter().map(|(_, d)| d).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Environment {
        Environment {
            name: "prod".into(),
            channel: "C1".into(),
            requesters: BTreeSet::new(),
            approvers: ["rm", "sec"].iter().map(|s| s.to_string()).collect(),
            approvals: 2,
            required_roles: vec!["rm".into(), "sec".into()],
            rejecters: BTreeSet::new(),
            deadline: 400,
            remind_every: 100,
            escalation: vec![
                Escalation {
                    after: 150,
                    notify: vec!["rm".into()],
                },
                Escalation {
                    after: 250,
                    notify: vec!["sec".into()],
                },
            ],
            validity: 3600,
        }
    }

    fn v(who: &str, roles: &[&str]) -> (String, Vec<String>) {
        (who.into(), roles.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn tally_needs_count_and_every_required_role() {
        let e = env();
        assert_eq!(tally(&e, &[v("a", &["rm"])]), None);
        assert_eq!(tally(&e, &[v("a", &["rm"]), v("b", &["rm"])]), None);
        assert_eq!(
            tally(&e, &[v("a", &["rm"]), v("b", &["sec"])]),
            Some(vec!["rm".into(), "sec".into()])
        );
        // a holds both roles and votes first: the matching gives a "sec" so that b's "rm" counts
        assert_eq!(
            tally(&e, &[v("a", &["rm", "sec"]), v("b", &["rm"])]),
            Some(vec!["sec".into(), "rm".into()])
        );
    }

    #[test]
    fn timeline_in_order_and_nothing_after_the_deadline() {
        let e = env();
        assert_eq!(due(&e, 1000, 0, 0, 1099), vec![]);
        assert_eq!(due(&e, 1000, 0, 0, 1100), vec![Due::Reminder(1)]);
        assert_eq!(due(&e, 1000, 1, 0, 1150), vec![Due::Escalation(0)]);
        // a long pause: escalation at 150, then the folded reminder at 200, then tier 1 at 250
        assert_eq!(
            due(&e, 1000, 1, 0, 1260),
            vec![Due::Escalation(0), Due::Reminder(2), Due::Escalation(1)]
        );
        assert_eq!(due(&e, 1000, 3, 2, 1399), vec![]);
        assert_eq!(due(&e, 1000, 0, 0, 1400), vec![Due::Deadline]);
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../adapter.example.toml");

    fn load(text: &str) -> Result<Policy> {
        let c: Config = toml::from_str(text)?;
        Policy::from_config(&c)
    }

    #[test]
    fn the_example_policy_loads() {
        let p = load(EXAMPLE).unwrap();
        let prod = &p.environments["prod"];
        assert_eq!(
            (prod.approvals, prod.deadline, prod.remind_every),
            (2, 4 * 3600, 3600)
        );
        assert_eq!(prod.escalation.len(), 2);
        assert_eq!(p.by_user(Source::Slack, "U0CAT").unwrap().key, "cat");
        assert_eq!(p.by_any_id("29:ada").unwrap().key, "ada");
        assert!(p.by_user(Source::Teams, "U0CAT").is_none());
    }

    #[test]
    fn policy_mistakes_are_refused_with_the_key_named() {
        let err = |from: &str, to: &str| {
            let text = EXAMPLE.replacen(from, to, 1);
            assert_ne!(text, EXAMPLE, "{from} not in the example");
            format!("{:#}", load(&text).unwrap_err())
        };
        assert!(err("approvals = 2", "approvals = 4").contains("only 3 people"));
        assert!(err("approvals = 2", "approvals = 0").contains("at least one"));
        assert!(err("notify = [\"on-call\"]", "notify = [\"oncall\"]").contains("\"oncall\""));
        assert!(err("after = \"3h\"", "after = \"5h\"").contains("earlier than the deadline"));
        assert!(err("slack = \"U0BOB\"", "slack = \"U0ADA\"").contains("two people"));
        assert!(err("deadline = \"4h\"", "deadline = \"soon\"").contains("not a duration"));
    }
}
