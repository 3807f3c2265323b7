//! The adapter's state in SQLite: requests, votes and the progress of each request's clock (reminders
//! sent, escalation tier reached), and the chat message that shows it. Everything a restart needs is
//! here; the timers are recomputed from it, so they resume where they were.

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Pending,
    Approved,
    Rejected,
    Expired,
}

impl Status {
    pub fn word(&self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Expired => "expired",
        }
    }

    fn from_word(w: &str) -> Status {
        match w {
            "approved" => Status::Approved,
            "rejected" => Status::Rejected,
            "expired" => Status::Expired,
            _ => Status::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub app: String,
    pub version: String,
    pub environment: String,
    pub digest: String,
    /// The requester's id where they asked (Slack or Teams user id, or `pipeline:<token>`).
    pub requester: String,
    /// The requester's key in `[people]`, when they are one.
    pub requester_person: Option<String>,
    pub requester_name: String,
    pub source: String,
    pub created_at: u64,
    pub deadline_at: u64,
    pub status: Status,
    /// Chosen when the request is made, so that a request can only ever yield one envelope id (the
    /// high side accepts each id once).
    pub envelope_id: String,
    pub decided_at: Option<u64>,
    /// Who rejected (their name), for the message.
    pub decided_by: Option<String>,
    pub reminders: u32,
    pub tier: u32,
    pub channel: String,
    /// Slack message timestamp, once posted.
    pub ts: Option<String>,
    /// The message does not yet show the current state.
    pub dirty: bool,
    /// Why, as the requester put it (signed requests from the reverse diode carry one).
    pub reason: Option<String>,
}

/// What the high side did with a request's envelope, as a signed outcome told (`crate::returned`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Returned {
    /// The high side's name and the record's place in its audit log.
    pub receiver: String,
    pub seq: u64,
    /// The record's hash, 64 hex digits.
    pub hash: String,
    /// The high side's event word: accept, reject, consume, hook, ...; `hook_failed` for a hook run
    /// that did not succeed.
    pub event: String,
    pub envelope_id: Option<String>,
    /// The request it belongs to here, when one does.
    pub request_id: Option<String>,
    /// When the high side recorded it (its clock).
    pub at: u64,
    /// One sentence for people ("Deployed to prod at 2026-12-05 14:02 UTC by ci-runner-3 ...").
    pub summary: String,
    /// When it arrived here (the adapter's clock).
    pub received_at: u64,
}

#[derive(Debug, Clone)]
pub struct Vote {
    pub person: String,
    pub user_id: String,
    pub name: String,
    pub source: String,
    /// The roles this person may approve as in the request's environment.
    pub roles: Vec<String>,
    pub at: u64,
}

pub struct Store {
    db: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS requests (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL, version TEXT NOT NULL, environment TEXT NOT NULL, digest TEXT NOT NULL,
    requester TEXT NOT NULL, requester_person TEXT, requester_name TEXT NOT NULL, source TEXT NOT NULL,
    created_at INTEGER NOT NULL, deadline_at INTEGER NOT NULL,
    status TEXT NOT NULL, envelope_id TEXT NOT NULL UNIQUE, decided_at INTEGER, decided_by TEXT,
    reminders INTEGER NOT NULL DEFAULT 0, tier INTEGER NOT NULL DEFAULT 0,
    channel TEXT NOT NULL, ts TEXT, dirty INTEGER NOT NULL DEFAULT 0, reason TEXT
);
CREATE TABLE IF NOT EXISTS votes (
    request_id TEXT NOT NULL REFERENCES requests(id),
    person TEXT NOT NULL, user_id TEXT NOT NULL, name TEXT NOT NULL, source TEXT NOT NULL,
    roles TEXT NOT NULL, at INTEGER NOT NULL,
    PRIMARY KEY (request_id, person)
);
CREATE INDEX IF NOT EXISTS requests_status ON requests(status);
CREATE TABLE IF NOT EXISTS deliveries (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outcomes (
    receiver TEXT NOT NULL, seq INTEGER NOT NULL, hash TEXT NOT NULL, event TEXT NOT NULL,
    envelope_id TEXT, request_id TEXT, at INTEGER NOT NULL, summary TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (receiver, seq)
);
CREATE INDEX IF NOT EXISTS outcomes_request ON outcomes(request_id);
CREATE TABLE IF NOT EXISTS teams_cards (
    request_id TEXT NOT NULL REFERENCES requests(id), via TEXT NOT NULL,
    activity_id TEXT, shown TEXT NOT NULL,
    PRIMARY KEY (request_id, via)
);
";

const COLUMNS: &str = "id, app, version, environment, digest, requester, requester_person, requester_name, \
    source, created_at, deadline_at, status, envelope_id, decided_at, decided_by, reminders, tier, channel, ts, dirty, reason";

fn row_request(r: &rusqlite::Row<'_>) -> rusqlite::Result<Request> {
    Ok(Request {
        id: r.get(0)?,
        app: r.get(1)?,
        version: r.get(2)?,
        environment: r.get(3)?,
        digest: r.get(4)?,
        requester: r.get(5)?,
        requester_person: r.get(6)?,
        requester_name: r.get(7)?,
        source: r.get(8)?,
        created_at: r.get::<_, i64>(9)? as u64,
        deadline_at: r.get::<_, i64>(10)? as u64,
        status: Status::from_word(&r.get::<_, String>(11)?),
        envelope_id: r.get(12)?,
        decided_at: r.get::<_, Option<i64>>(13)?.map(|v| v as u64),
        decided_by: r.get(14)?,
        reminders: r.get::<_, i64>(15)? as u32,
        tier: r.get::<_, i64>(16)? as u32,
        channel: r.get(17)?,
        ts: r.get(18)?,
        dirty: r.get::<_, i64>(19)? != 0,
        reason: r.get(20)?,
    })
}

impl Store {
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let db = Connection::open(path)
            .with_context(|| format!("cannot open the state database {}", path.display()))?;
        // WAL + FULL: a vote acknowledged in chat is on disk before the next one is taken.
        db.pragma_update(None, "journal_mode", "WAL")
            .and_then(|_| db.pragma_update(None, "synchronous", "FULL"))
            .and_then(|_| db.execute_batch(SCHEMA))
            .with_context(|| format!("cannot set up the state database {}", path.display()))?;
        // a database from before requests had a reason
        let has_reason = db
            .prepare("SELECT 1 FROM pragma_table_info('requests') WHERE name = 'reason'")
            .and_then(|mut st| st.exists([]))
            .with_context(|| format!("cannot read the schema of {}", path.display()))?;
        if !has_reason {
            db.execute_batch("ALTER TABLE requests ADD COLUMN reason TEXT")
                .with_context(|| format!("cannot add requests.reason to {}", path.display()))?;
        }
        // a database from before every chat delivery was taken once: its Teams activity ids carry over
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS teams_activities (id TEXT PRIMARY KEY, at INTEGER NOT NULL);
             INSERT OR IGNORE INTO deliveries (id, at) SELECT 'teams:' || id, at FROM teams_activities;
             DROP TABLE teams_activities;",
        )
        .with_context(|| format!("cannot move teams_activities into deliveries in {}", path.display()))?;
        Ok(Store { db })
    }

    /// The database as it stands, read-only and changing nothing (not even the schema): for
    /// `diode-chat console`, while `diode-chat serve` writes it.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let flags =
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let db = Connection::open_with_flags(path, flags).with_context(|| {
            format!("cannot open the state database {} to read", path.display())
        })?;
        db.pragma_update(None, "query_only", true)
            .with_context(|| {
                format!("cannot open the state database {} to read", path.display())
            })?;
        Ok(Store { db })
    }

    /// The `limit` requests decided last, newest first.
    pub fn decided(&self, limit: usize) -> Result<Vec<Request>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLUMNS} FROM requests WHERE status != 'pending' ORDER BY decided_at DESC, id LIMIT ?1"
        ))?;
        let rows = st.query_map([limit as i64], row_request)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn insert(&self, r: &Request) -> Result<()> {
        self.db.execute(
            &format!("INSERT INTO requests ({COLUMNS}) VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?12,?13,?14,?15,?16,?17,?18,?19,?20,?21)"),
            params![
                r.id, r.app, r.version, r.environment, r.digest, r.requester, r.requester_person,
                r.requester_name, r.source, r.created_at as i64, r.deadline_at as i64, r.status.word(),
                r.envelope_id, r.decided_at.map(|v| v as i64), r.decided_by, r.reminders as i64,
                r.tier as i64, r.channel, r.ts, r.dirty as i64, r.reason
            ],
        )?;
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<Request>> {
        Ok(self
            .db
            .query_row(
                &format!("SELECT {COLUMNS} FROM requests WHERE id = ?1"),
                [id],
                row_request,
            )
            .optional()?)
    }

    pub fn pending(&self) -> Result<Vec<Request>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLUMNS} FROM requests WHERE status = 'pending' ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], row_request)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Ids of requests pending, or decided at or after `since`.
    pub fn recent(&self, since: u64) -> Result<Vec<String>> {
        let mut st = self.db.prepare(
            "SELECT id FROM requests WHERE status = 'pending' OR decided_at >= ?1 ORDER BY created_at, id",
        )?;
        let rows = st.query_map([since as i64], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Requests whose message needs posting or updating.
    pub fn unsynced(&self) -> Result<Vec<Request>> {
        let mut st = self.db.prepare(&format!(
            "SELECT {COLUMNS} FROM requests WHERE dirty = 1 OR ts IS NULL ORDER BY created_at, id"
        ))?;
        let rows = st.query_map([], row_request)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    pub fn votes(&self, id: &str) -> Result<Vec<Vote>> {
        let mut st = self.db.prepare(
            "SELECT person, user_id, name, source, roles, at FROM votes WHERE request_id = ?1 ORDER BY at, rowid",
        )?;
        let rows = st.query_map([id], |r| {
            let roles: String = r.get(4)?;
            Ok(Vote {
                person: r.get(0)?,
                user_id: r.get(1)?,
                name: r.get(2)?,
                source: r.get(3)?,
                roles: roles
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                at: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Record a vote; false if this person has already voted on this request.
    pub fn add_vote(&self, id: &str, v: &Vote) -> Result<bool> {
        let n = self.db.execute(
            "INSERT OR IGNORE INTO votes (request_id, person, user_id, name, source, roles, at) VALUES (?1,?2,?3,?4,?5,?6,?7)",
            params![id, v.person, v.user_id, v.name, v.source, v.roles.join(","), v.at as i64],
        )?;
        self.mark_dirty(id)?;
        Ok(n == 1)
    }

    /// Run `f` in a transaction: decisions are written with the envelope, or not at all.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let tx = self.db.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    pub fn decide(
        db: &Connection,
        id: &str,
        status: &Status,
        at: u64,
        by: Option<&str>,
    ) -> Result<()> {
        db.execute(
            "UPDATE requests SET status = ?2, decided_at = ?3, decided_by = ?4, dirty = 1 WHERE id = ?1 AND status = 'pending'",
            params![id, status.word(), at as i64, by],
        )?;
        Ok(())
    }

    pub fn set_progress(&self, id: &str, reminders: u32, tier: u32) -> Result<()> {
        self.db.execute(
            "UPDATE requests SET reminders = ?2, tier = ?3 WHERE id = ?1",
            params![id, reminders as i64, tier as i64],
        )?;
        Ok(())
    }

    pub fn set_posted(&self, id: &str, ts: &str) -> Result<()> {
        self.db
            .execute("UPDATE requests SET ts = ?2 WHERE id = ?1", params![id, ts])?;
        Ok(())
    }

    pub fn mark_dirty(&self, id: &str) -> Result<()> {
        self.db
            .execute("UPDATE requests SET dirty = 1 WHERE id = ?1", [id])?;
        Ok(())
    }

    /// The message shows the state as of `votes`, `outcomes` and status: clear the flag only if nothing
    /// changed since it was rendered.
    pub fn mark_clean(
        &self,
        id: &str,
        status: &Status,
        votes: usize,
        outcomes: usize,
    ) -> Result<()> {
        self.db.execute(
            "UPDATE requests SET dirty = 0 WHERE id = ?1 AND status = ?2 \
             AND (SELECT count(*) FROM votes WHERE request_id = ?1) = ?3 \
             AND (SELECT count(*) FROM outcomes WHERE request_id = ?1) = ?4",
            params![id, status.word(), votes as i64, outcomes as i64],
        )?;
        Ok(())
    }

    /// The request whose envelope has this id.
    pub fn request_by_envelope(&self, envelope_id: &str) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row(
                "SELECT id FROM requests WHERE envelope_id = ?1",
                [envelope_id],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// The hash of the high side's record `seq` from `receiver`, if it came before.
    pub fn outcome_hash(&self, receiver: &str, seq: u64) -> Result<Option<String>> {
        Ok(self
            .db
            .query_row(
                "SELECT hash FROM outcomes WHERE receiver = ?1 AND seq = ?2",
                params![receiver, seq as i64],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Keep an outcome, and mark its request's message out of date.
    pub fn add_outcome(&self, o: &Returned) -> Result<()> {
        self.db.execute(
            "INSERT INTO outcomes (receiver, seq, hash, event, envelope_id, request_id, at, summary, received_at) \
             VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9)",
            params![o.receiver, o.seq as i64, o.hash, o.event, o.envelope_id, o.request_id,
                o.at as i64, o.summary, o.received_at as i64],
        )?;
        if let Some(id) = &o.request_id {
            self.mark_dirty(id)?;
        }
        Ok(())
    }

    /// Take an outcome back out (its audit record could not be written).
    pub fn remove_outcome(&self, receiver: &str, seq: u64) -> Result<()> {
        self.db.execute(
            "DELETE FROM outcomes WHERE receiver = ?1 AND seq = ?2",
            params![receiver, seq as i64],
        )?;
        Ok(())
    }

    /// A request's outcomes, in the order the high side recorded them.
    pub fn outcomes(&self, request_id: &str) -> Result<Vec<Returned>> {
        let mut st = self.db.prepare(
            "SELECT receiver, seq, hash, event, envelope_id, request_id, at, summary, received_at \
             FROM outcomes WHERE request_id = ?1 ORDER BY at, receiver, seq",
        )?;
        let rows = st.query_map([request_id], |r| {
            Ok(Returned {
                receiver: r.get(0)?,
                seq: r.get::<_, i64>(1)? as u64,
                hash: r.get(2)?,
                event: r.get(3)?,
                envelope_id: r.get(4)?,
                request_id: r.get(5)?,
                at: r.get::<_, i64>(6)? as u64,
                summary: r.get(7)?,
                received_at: r.get::<_, i64>(8)? as u64,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Take a delivery from chat once, by every identity it carries (`ids`, each prefixed with what
    /// it is, e.g. `slack-trigger:`): false, and nothing recorded, if any of them was taken within
    /// `keep` seconds before `now` (a replay or a retry). Older ids are forgotten; the signature or
    /// timestamp window refuses such old deliveries anyway.
    pub fn take_delivery(&mut self, ids: &[String], now: u64, keep: u64) -> Result<bool> {
        let tx = self.db.transaction()?;
        tx.execute(
            "DELETE FROM deliveries WHERE at < ?1",
            [now.saturating_sub(keep) as i64],
        )?;
        let mut taken = 0;
        for id in ids {
            taken += tx.execute(
                "INSERT OR IGNORE INTO deliveries (id, at) VALUES (?1, ?2)",
                params![id, now as i64],
            )?;
        }
        if taken < ids.len() {
            // rolled back on drop: none of its ids is recorded by this attempt
            return Ok(false);
        }
        tx.commit()?;
        Ok(true)
    }

    /// Forget a delivery taken by `take_delivery`, so that it can be run again (it failed before
    /// anything of it was recorded).
    pub fn release_delivery(&self, ids: &[String]) -> Result<()> {
        for id in ids {
            self.db
                .execute("DELETE FROM deliveries WHERE id = ?1", [id])?;
        }
        Ok(())
    }

    /// The Teams card of a request posted `via` the Bot Connector or a Workflow: (activity id, once the
    /// Bot Connector gave one; what the card last posted shows).
    pub fn teams_card(&self, request: &str, via: &str) -> Result<Option<(Option<String>, String)>> {
        Ok(self
            .db
            .query_row(
                "SELECT activity_id, shown FROM teams_cards WHERE request_id = ?1 AND via = ?2",
                [request, via],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn set_teams_card(
        &self,
        request: &str,
        via: &str,
        activity_id: Option<&str>,
        shown: &str,
    ) -> Result<()> {
        self.db.execute(
            "INSERT INTO teams_cards (request_id, via, activity_id, shown) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(request_id, via) DO UPDATE SET activity_id = coalesce(?3, activity_id), shown = ?4",
            params![request, via, activity_id, shown],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A state database as an older adapter left it: its schema, and one row.
    fn older_database(path: &Path, schema: &str, row: &str) {
        let db = Connection::open(path).unwrap();
        db.execute_batch(schema).unwrap();
        db.execute(row, []).unwrap();
    }

    #[test]
    fn a_database_from_before_reasons_gets_the_column_and_keeps_its_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("chat.sqlite");
        older_database(
            &path,
            &SCHEMA.replace(", reason TEXT", ""),
            "INSERT INTO requests (id, app, version, environment, digest, requester, requester_name, \
             source, created_at, deadline_at, status, envelope_id, channel) \
             VALUES ('req-1', 'a', '1', 'prod', 'd', 'U1', 'U', 'slack', 1, 2, 'pending', 'e1', 'C')",
        );
        let store = Store::open(&path).unwrap();
        let r = store.get("req-1").unwrap().unwrap();
        assert_eq!((r.app.as_str(), r.reason), ("a", None));
        // and again: the column is there now
        drop(store);
        Store::open(&path).unwrap();
    }

    #[test]
    fn the_console_reads_the_database_and_cannot_change_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("chat.sqlite");
        assert!(
            Store::open_read_only(&path).is_err(),
            "a missing database is not created"
        );
        assert!(!path.exists());
        let row = |id: &str, status: &str, decided: Option<i64>| {
            format!(
                "INSERT INTO requests (id, app, version, environment, digest, requester, requester_name, \
                 source, created_at, deadline_at, status, envelope_id, channel, decided_at) \
                 VALUES ('{id}', 'a', '1', 'prod', 'd', 'U1', 'U', 'slack', 1, 2, '{status}', 'e-{id}', 'C', {})",
                decided.map_or("NULL".into(), |d| d.to_string())
            )
        };
        let writer = Store::open(&path).unwrap();
        for r in [
            row("req-1", "pending", None),
            row("req-2", "approved", Some(10)),
            row("req-3", "rejected", Some(20)),
        ] {
            writer.db.execute_batch(&r).unwrap();
        }
        let ro = Store::open_read_only(&path).unwrap();
        assert_eq!(ro.pending().unwrap().len(), 1);
        let ids: Vec<String> = ro.decided(5).unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["req-3", "req-2"], "newest decision first");
        assert_eq!(ro.decided(1).unwrap().len(), 1);
        // what the daemon writes meanwhile is seen; the console's own writes are refused
        writer
            .db
            .execute_batch(&row("req-4", "pending", None))
            .unwrap();
        assert_eq!(ro.pending().unwrap().len(), 2);
        assert!(ro.db.execute_batch(&row("req-5", "pending", None)).is_err());
        assert!(ro.mark_dirty("req-1").is_err());
    }

    #[test]
    fn a_delivery_is_taken_once_by_any_of_its_ids_and_teams_ids_survive_the_upgrade() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("chat.sqlite");
        // a database from before the delivery log, holding a Teams activity id taken at 1000
        older_database(
            &path,
            &SCHEMA.replace("deliveries", "teams_activities"),
            "INSERT INTO teams_activities (id, at) VALUES ('act-1', 1000)",
        );
        let mut store = Store::open(&path).unwrap();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(!store
            .take_delivery(&ids(&["teams:act-1"]), 1010, 660)
            .unwrap());
        // an envelope retried with a new id but the same event id is the same delivery; its new id is
        // not recorded by the refused attempt
        assert!(store
            .take_delivery(&ids(&["slack-envelope:e1", "slack-event:Ev1"]), 1010, 660)
            .unwrap());
        assert!(!store
            .take_delivery(&ids(&["slack-envelope:e2", "slack-event:Ev1"]), 1020, 660)
            .unwrap());
        assert!(store
            .take_delivery(&ids(&["slack-envelope:e2"]), 1020, 660)
            .unwrap());
        // given back after a failure: taken again
        store
            .release_delivery(&ids(&["slack-envelope:e2"]))
            .unwrap();
        assert!(store
            .take_delivery(&ids(&["slack-envelope:e2"]), 1030, 660)
            .unwrap());
        // forgotten once older than `keep`
        assert!(store
            .take_delivery(&ids(&["teams:act-1"]), 1000 + 661, 660)
            .unwrap());
        drop(store);
        Store::open(&path).unwrap();
    }
}
