//! A person's inbox, whichever chat they use: the open requests waiting for their vote (they may approve
//! in that environment, did not ask for it and have not voted yet) and their own open requests. Slack
//! shows it in the App Home tab (`slack::home`), Teams answers `@Deploy pending` with it.

use crate::approval::{Engine, View};
use crate::policy::Source;
use crate::store::Status;

pub struct Inbox {
    pub waiting: Vec<View>,
    pub mine: Vec<View>,
}

/// The inbox of `user_id` in `source`.
pub fn of(engine: &Engine, source: Source, user_id: &str) -> anyhow::Result<Inbox> {
    let policy = engine.policy();
    let me = policy.by_user(source, user_id);
    let (mut waiting, mut mine) = (Vec::new(), Vec::new());
    for v in engine.recent(0)? {
        if v.request.status != Status::Pending {
            continue;
        }
        let asked = v.request.source == source.word() && v.request.requester == user_id
            || me.is_some_and(|p| v.request.requester_person.as_deref() == Some(p.key.as_str()));
        let votes = me.is_some_and(|p| {
            policy
                .environments
                .get(&v.request.environment)
                .is_some_and(|env| policy.eligible(env).any(|e| e.key == p.key))
                && !v.votes.iter().any(|x| x.person == p.key)
        });
        if asked {
            mine.push(v);
        } else if votes {
            waiting.push(v);
        }
    }
    Ok(Inbox { waiting, mine })
}
