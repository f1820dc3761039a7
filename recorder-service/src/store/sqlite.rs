//! SQLite store: one file in WAL mode, every batch one transaction, `synchronous=FULL` so a
//! committed batch survives a crash or power cut.
//!
//! Tables: `records` (one row per exchange: indexed columns, the JSON body with shared
//! pieces as references, the chain hashes) and `contents` (each shared piece once, keyed by
//! its SHA-256). Indexed columns are copies of body fields for queries; `verify` checks them
//! against the body, which the chain covers.

use super::{
    Exchange, SessionQuery, SessionSummary, StorageUsage, Store, StoreError, VerifyReport,
};
use crate::chain::{self, ChainRow, Problem};
use crate::dedup;
use crate::record::StoredRecord;
use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;
use std::collections::HashSet;
use std::path::Path;

const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq INTEGER PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    subject TEXT,
    start_ms INTEGER,
    model TEXT,
    decision TEXT NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    body TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session_id, seq);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (subject, start_ms);
CREATE TABLE IF NOT EXISTS contents (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL) WITHOUT ROWID;
";

/// The SQLite backend of [`Store`].
pub struct SqliteStore {
    conn: Connection,
}

/// Body fields copied into indexed columns.
#[derive(Debug, PartialEq, Eq)]
struct Columns {
    exchange_id: String,
    session_id: String,
    subject: Option<String>,
    start_ms: Option<i64>,
    model: Option<String>,
    decision: String,
    input_tokens: i64,
    output_tokens: i64,
}

impl Columns {
    fn of(body: &Value) -> Columns {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let n = |p: &str| body.pointer(p).and_then(Value::as_i64);
        Columns {
            exchange_id: s("/record/exchange_id").unwrap_or_default(),
            session_id: s("/record/session_id").unwrap_or_default(),
            subject: s("/record/user/subject"),
            start_ms: n("/envoy/start_time_ms"),
            model: s("/record/model"),
            decision: s("/record/decision").unwrap_or_default(),
            input_tokens: n("/record/usage/input_tokens").unwrap_or(0),
            output_tokens: n("/record/usage/output_tokens").unwrap_or(0),
        }
    }
}

impl SqliteStore {
    /// Opens or creates the database file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        // WAL lets auditors read while the server writes; FULL makes each commit durable
        // before the ingest side reads the next message.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.execute_batch(SCHEMA)?;
        let found: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()?;
        match found {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    [SCHEMA_VERSION],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            Some(v) => {
                return Err(StoreError::SchemaVersion {
                    found: v,
                    expected: SCHEMA_VERSION.into(),
                })
            }
        }
        Ok(SqliteStore { conn })
    }

    fn load_piece(&self, hash: &str) -> Option<Vec<u8>> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT bytes FROM contents WHERE hash = ?1")
            .ok()?;
        stmt.query_row([hash], |r| r.get(0))
            .optional()
            .ok()
            .flatten()
    }

    fn exchange(&self, seq: i64, hash: Vec<u8>, body: String) -> Result<Exchange, StoreError> {
        let value: Value =
            serde_json::from_str(&body).map_err(|source| StoreError::Unreadable { seq, source })?;
        let value = dedup::expand(value, &mut |h| self.load_piece(h));
        let stored: StoredRecord = serde_json::from_value(value)
            .map_err(|source| StoreError::Unreadable { seq, source })?;
        Ok(Exchange {
            seq,
            hash: dedup::hex(&hash),
            stored,
        })
    }

    fn exchanges(
        &self,
        sql: &str,
        args: &[&dyn rusqlite::ToSql],
        f: &mut dyn FnMut(Exchange) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut stmt = self.conn.prepare(sql)?;
        let mut rows = stmt.query(args)?;
        while let Some(row) = rows.next()? {
            let ex = self.exchange(row.get(0)?, row.get(1)?, row.get(2)?)?;
            f(ex)?;
        }
        Ok(())
    }
}

/// Moves the shareable parts of `request` and `response` into `pieces`.
fn reduce_body(stored: &StoredRecord, pieces: &mut Vec<(String, Vec<u8>)>) -> Value {
    let mut value = serde_json::to_value(stored).expect("stored record serialises");
    for field in ["request", "response"] {
        if let Some(slot) = value.pointer_mut(&format!("/record/{field}")) {
            let taken = slot.take();
            *slot =
                dedup::reduce_children(taken, &mut |h, b| pieces.push((h.to_owned(), b.to_vec())));
        }
    }
    value
}

impl Store for SqliteStore {
    fn append(&mut self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        {
            let mut prev: Vec<u8> = tx
                .query_row(
                    "SELECT hash FROM records ORDER BY seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?
                .unwrap_or_else(|| chain::GENESIS.to_vec());
            let mut put_piece =
                tx.prepare_cached("INSERT OR IGNORE INTO contents (hash, bytes) VALUES (?1, ?2)")?;
            let mut put_record = tx.prepare_cached(
                "INSERT INTO records (exchange_id, session_id, subject, start_ms, model, decision,
                   input_tokens, output_tokens, body, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut pieces = Vec::new();
            for stored in batch {
                pieces.clear();
                let value = reduce_body(stored, &mut pieces);
                for (hash, bytes) in &pieces {
                    put_piece.execute(params![hash, bytes])?;
                }
                let c = Columns::of(&value);
                let body = serde_json::to_string(&value).expect("JSON value serialises");
                let hash = chain::link_hash(&prev, body.as_bytes()).to_vec();
                put_record.execute(params![
                    c.exchange_id,
                    c.session_id,
                    c.subject,
                    c.start_ms,
                    c.model,
                    c.decision,
                    c.input_tokens,
                    c.output_tokens,
                    body,
                    prev,
                    hash
                ])?;
                prev = hash;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionSummary>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT session_id, json_group_array(DISTINCT subject), count(*),
                    sum(decision != 'allowed'), min(start_ms), max(start_ms),
                    sum(input_tokens), sum(output_tokens), json_group_array(DISTINCT model)
             FROM records
             WHERE ?1 IS NULL OR session_id IN (SELECT session_id FROM records WHERE subject = ?1)
             GROUP BY session_id
             ORDER BY max(seq) DESC
             LIMIT ?2",
        )?;
        let limit = query.limit.map(|l| l as i64).unwrap_or(-1);
        let strings = |json: String| -> Vec<String> {
            let mut v: Vec<String> = serde_json::from_str::<Vec<Option<String>>>(&json)
                .unwrap_or_default()
                .into_iter()
                .flatten()
                .collect();
            v.sort();
            v
        };
        let rows = stmt.query_map(params![query.subject, limit], |r| {
            Ok(SessionSummary {
                session_id: r.get(0)?,
                subjects: strings(r.get(1)?),
                exchanges: r.get::<_, i64>(2)? as u64,
                refused: r.get::<_, i64>(3)? as u64,
                first_ms: r.get(4)?,
                last_ms: r.get(5)?,
                input_tokens: r.get::<_, i64>(6)? as u64,
                output_tokens: r.get::<_, i64>(7)? as u64,
                models: strings(r.get(8)?),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn session(&self, session_id: &str) -> Result<Vec<Exchange>, StoreError> {
        let mut out = Vec::new();
        self.exchanges(
            "SELECT seq, hash, body FROM records WHERE session_id = ?1 ORDER BY seq",
            &[&session_id],
            &mut |ex| {
                out.push(ex);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(Exchange) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.exchanges("SELECT seq, hash, body FROM records ORDER BY seq", &[], f)
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut rows = Vec::new();
        let mut referenced: Vec<String> = Vec::new();
        let mut stmt = self.conn.prepare(
            "SELECT seq, exchange_id, session_id, subject, start_ms, model, decision,
                    input_tokens, output_tokens, body, prev_hash, hash
             FROM records ORDER BY seq",
        )?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let stored_columns = Columns {
                exchange_id: r.get(1)?,
                session_id: r.get(2)?,
                subject: r.get(3)?,
                start_ms: r.get(4)?,
                model: r.get(5)?,
                decision: r.get(6)?,
                input_tokens: r.get(7)?,
                output_tokens: r.get(8)?,
            };
            let body: String = r.get(9)?;
            let prev_hash: Vec<u8> = r.get(10)?;
            let hash: Vec<u8> = r.get(11)?;
            let hash_ok =
                chain::link_hash(&prev_hash, body.as_bytes()).as_slice() == hash.as_slice();
            let columns_ok = match serde_json::from_str::<Value>(&body) {
                Ok(v) => {
                    dedup::references(&v, &mut referenced);
                    Columns::of(&v) == stored_columns
                }
                Err(_) => false,
            };
            rows.push(ChainRow {
                seq: r.get(0)?,
                exchange_id: stored_columns.exchange_id,
                prev_hash,
                hash,
                body_intact: hash_ok && columns_ok,
            });
        }
        let mut problems = chain::walk(&rows);

        let mut present = HashSet::new();
        let mut stmt = self
            .conn
            .prepare("SELECT hash, bytes FROM contents ORDER BY hash")?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let hash: String = r.get(0)?;
            let bytes: Vec<u8> = r.get(1)?;
            if dedup::sha256_hex(&bytes) != hash {
                problems.push(Problem::ContentAltered { hash: hash.clone() });
            } else if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                dedup::references(&v, &mut referenced);
            }
            present.insert(hash);
        }
        referenced.sort();
        referenced.dedup();
        for hash in referenced {
            if !present.contains(&hash) {
                problems.push(Problem::ContentMissing { hash });
            }
        }
        Ok(VerifyReport {
            records: rows.len() as u64,
            content_pieces: present.len() as u64,
            head: rows.last().map(|r| (r.seq, dedup::hex(&r.hash))),
            problems,
        })
    }

    fn usage(&self) -> Result<StorageUsage, StoreError> {
        let (records, record_bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(CAST(body AS BLOB)) + length(prev_hash) + length(hash)), 0) FROM records",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let (pieces, piece_bytes): (i64, i64) = self.conn.query_row(
            "SELECT count(*), coalesce(sum(length(bytes) + length(hash)), 0) FROM contents",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(StorageUsage {
            records: records as u64,
            record_bytes: record_bytes as u64,
            content_pieces: pieces as u64,
            content_bytes: piece_bytes as u64,
        })
    }
}
