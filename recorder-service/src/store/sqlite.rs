//! SQLite store: one file in WAL mode, every batch one transaction, `synchronous=FULL` so a
//! committed batch survives a crash or power cut.
//!
//! Tables: `records` (one row per exchange: indexed columns, the JSON body with shared
//! pieces as references, the chain hashes) and `contents` (each shared piece once, keyed by
//! its SHA-256). Indexed columns are copies of body fields for queries; `verify` checks them
//! against the body, which the chain covers. What goes in a row is shared with the other
//! backends ([`super::rows`]). One writer at a time: appends take the write lock first.

use super::rows::{self, Columns, Verifier};
use super::{
    Document,
    Exchange, ExchangeFilter, PurgeReport, PurgeRequest, QueryLogEntry, SessionQuery, SessionSummary,
    StorageUsage, Store, StoreError, UserUsage, VerifyReport,
};
use crate::chain;
use crate::chain_keys::ChainKeys;
use crate::dedup;
use crate::record::StoredRecord;
use rusqlite::types::Value as SqlValue;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;

const SCHEMA_VERSION: &str = "2";

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
    hash BLOB NOT NULL,
    key_id TEXT,
    seal BLOB
);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session_id, seq);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (subject, start_ms);
CREATE INDEX IF NOT EXISTS records_by_exchange ON records (exchange_id);
CREATE INDEX IF NOT EXISTS records_by_start ON records (start_ms);
CREATE TABLE IF NOT EXISTS query_log (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    subject TEXT,
    auditor INTEGER NOT NULL,
    method TEXT NOT NULL,
    path TEXT NOT NULL,
    query TEXT NOT NULL,
    status INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS documents (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    key TEXT NOT NULL,
    subject TEXT NOT NULL,
    issuer TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS documents_by_key ON documents (kind, key, created_ms);
CREATE INDEX IF NOT EXISTS documents_by_subject ON documents (kind, subject, created_ms);
CREATE TABLE IF NOT EXISTS contents (hash TEXT PRIMARY KEY, bytes BLOB NOT NULL) WITHOUT ROWID;
";

/// The SQLite backend of [`Store`].
pub struct SqliteStore {
    conn: Connection,
    /// Seal appends and check seals in `verify`; `None`: plain hashes only.
    keys: Option<Arc<ChainKeys>>,
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
            // Version 1 had no seal columns; its records stay unsealed (verify names them).
            Some(v) if v == "1" => {
                conn.execute_batch(
                    "BEGIN IMMEDIATE;
                     ALTER TABLE records ADD COLUMN key_id TEXT;
                     ALTER TABLE records ADD COLUMN seal BLOB;
                     UPDATE meta SET value = '2' WHERE key = 'schema';
                     COMMIT;",
                )?;
            }
            Some(v) => {
                return Err(StoreError::SchemaVersion {
                    found: v,
                    expected: SCHEMA_VERSION.into(),
                })
            }
        }
        Ok(SqliteStore { conn, keys: None })
    }

    /// Seals every appended record with `keys` and checks seals in `verify`.
    pub fn with_chain_keys(mut self, keys: Option<Arc<ChainKeys>>) -> Self {
        self.keys = keys;
        self
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
        rows::decode(seq, &hash, &body, &mut |h| self.load_piece(h))
    }

    fn purged_before_ms(conn: &Connection) -> Result<Option<i64>, StoreError> {
        let v: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'purged_before_ms'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        Ok(v.and_then(|v| v.parse().ok()))
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

/// The `WHERE` clause and its arguments for `filter`. Only set filters become conditions:
/// `(?1 IS NULL OR subject = ?1)` would keep SQLite from using the subject index. Group and
/// rule live only in the body (the chain covers it), so they are read with JSON functions
/// after the indexed conditions have narrowed the rows.
fn filter_sql(filter: &ExchangeFilter) -> (String, Vec<SqlValue>) {
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    let mut add = |condition: &str, value: SqlValue| {
        args.push(value);
        conditions.push(condition.replace('?', &format!("?{}", args.len())));
    };
    let text = |s: &String| SqlValue::Text(s.clone());
    if let Some(v) = &filter.subject {
        add("subject = ?", text(v));
    }
    if let Some(v) = filter.from_ms {
        add("start_ms >= ?", SqlValue::Integer(v));
    }
    if let Some(v) = filter.to_ms {
        add("start_ms < ?", SqlValue::Integer(v));
    }
    if let Some(v) = &filter.model {
        add("model = ?", text(v));
    }
    if let Some(v) = &filter.decision {
        add("decision = ?", text(v));
    }
    if let Some(v) = &filter.group {
        add(
            "EXISTS (SELECT 1 FROM json_each(body, '$.record.user.groups') WHERE value = ?)",
            text(v),
        );
    }
    if let Some(v) = &filter.rule {
        add(
            "EXISTS (SELECT 1 FROM json_each(body, '$.record.masked')
                     WHERE json_extract(value, '$.rule') = ? AND json_extract(value, '$.count') > 0)",
            text(v),
        );
    }
    if conditions.is_empty() {
        (String::new(), args)
    } else {
        (format!("WHERE {}", conditions.join(" AND ")), args)
    }
}

/// Appends `batch` to the chain inside `tx`, which must hold the write lock.
fn append_in(
    tx: &rusqlite::Transaction<'_>,
    batch: &[StoredRecord],
    keys: Option<&ChainKeys>,
) -> Result<(), StoreError> {
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
           input_tokens, output_tokens, body, prev_hash, hash, key_id, seal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut pieces = Vec::new();
    for stored in batch {
        pieces.clear();
        let row = rows::encode(stored, &mut pieces);
        for (hash, bytes) in &pieces {
            put_piece.execute(params![hash, bytes])?;
        }
        let (c, body) = (row.columns, row.body);
        let hash = chain::link_hash(&prev, body.as_bytes()).to_vec();
        let (key_id, seal) = rows::seal(keys, &hash);
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
            hash,
            key_id,
            seal
        ])?;
        prev = hash;
    }
    Ok(())
}

/// Distinct names from `json_group_array(DISTINCT x)`, sorted, without nulls.
/// One session summary from a row of the two listing queries, which select the same columns
/// in the same order.
fn summary_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionSummary> {
    Ok(SessionSummary {
        session_id: r.get(0)?,
        subjects: json_strings(r.get(1)?),
        exchanges: r.get::<_, i64>(2)? as u64,
        refused: r.get::<_, i64>(3)? as u64,
        first_ms: r.get(4)?,
        last_ms: r.get(5)?,
        input_tokens: r.get::<_, i64>(6)? as u64,
        output_tokens: r.get::<_, i64>(7)? as u64,
        models: json_strings(r.get(8)?),
        last_seq: r.get(9)?,
    })
}

/// The columns [`summary_row`] reads, over one session's group of rows.
const SUMMARY_COLUMNS: &str = "session_id, json_group_array(DISTINCT subject), count(*),
    sum(decision != 'allowed'), min(start_ms), max(start_ms),
    sum(input_tokens), sum(output_tokens), json_group_array(DISTINCT model), max(seq)";

fn json_strings(json: String) -> Vec<String> {
    let mut v: Vec<String> = serde_json::from_str::<Vec<Option<String>>>(&json)
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    v.sort();
    v
}

impl Store for SqliteStore {
    fn append(&mut self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        // Take the write lock before reading the head: a second writer on the file then
        // waits instead of failing to upgrade its read after the head moved.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        append_in(&tx, batch, self.keys.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    fn probe_write(&mut self, now_ms: i64) -> Result<(), StoreError> {
        // A real write and commit (journal and fsync included): fails on a read-only or full
        // filesystem, or when another process holds the write lock past the busy timeout.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('health_probe_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [now_ms.to_string()],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionSummary>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {SUMMARY_COLUMNS}
             FROM records
             WHERE ?1 IS NULL OR session_id IN (SELECT session_id FROM records WHERE subject = ?1)
             GROUP BY session_id
             ORDER BY max(seq) DESC
             LIMIT ?2"
        ))?;
        let limit = query.limit.map(|l| l as i64).unwrap_or(-1);
        let rows = stmt.query_map(params![query.subject, limit], summary_row)?;
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
        let mut verifier = Verifier::new(Self::purged_before_ms(&self.conn)?, self.keys.as_deref());
        let mut stmt = self.conn.prepare(
            "SELECT seq, exchange_id, session_id, subject, start_ms, model, decision,
                    input_tokens, output_tokens, body, prev_hash, hash, key_id, seal
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
            verifier.record(
                r.get(0)?,
                stored_columns,
                &body,
                r.get(10)?,
                r.get(11)?,
                r.get(12)?,
                r.get(13)?,
            );
        }
        let mut stmt = self
            .conn
            .prepare("SELECT hash, bytes FROM contents ORDER BY hash")?;
        let mut q = stmt.query([])?;
        while let Some(r) = q.next()? {
            let bytes: Vec<u8> = r.get(1)?;
            verifier.piece(r.get(0)?, &bytes);
        }
        Ok(verifier.finish())
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

    fn purge(&mut self, request: &PurgeRequest) -> Result<PurgeReport, StoreError> {
        let before_ms = request.before_ms;
        // Overwrite deleted content with zeros instead of leaving it in free pages.
        self.conn.pragma_update(None, "secure_delete", "ON")?;
        // Immediate: no append may add a reference to a piece between the reachability walk
        // and the delete.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let horizon = Self::purged_before_ms(&tx)?.map_or(before_ms, |h| h.max(before_ms));
        let mut roots = Vec::new();
        {
            let mut stmt =
                tx.prepare("SELECT body FROM records WHERE start_ms IS NULL OR start_ms >= ?1")?;
            let mut q = stmt.query([horizon])?;
            while let Some(r) = q.next()? {
                let body: String = r.get(0)?;
                if let Ok(v) = serde_json::from_str(&body) {
                    dedup::references(&v, &mut roots);
                }
            }
        }
        let keep = {
            let mut load = tx.prepare("SELECT bytes FROM contents WHERE hash = ?1")?;
            rows::reachable(roots, &mut |hashes| {
                let mut found = Vec::new();
                for h in hashes {
                    if let Some(b) = load.query_row([h], |r| r.get(0)).optional()? {
                        found.push((h.clone(), b));
                    }
                }
                Ok(found)
            })?
        };
        let mut removed = Vec::new();
        {
            let mut stmt = tx.prepare("SELECT hash, length(bytes) FROM contents")?;
            let mut q = stmt.query([])?;
            while let Some(r) = q.next()? {
                let hash: String = r.get(0)?;
                if !keep.contains_key(&hash) {
                    removed.push((hash, r.get::<_, i64>(1)?));
                }
            }
            let mut delete = tx.prepare("DELETE FROM contents WHERE hash = ?1")?;
            for (hash, _) in &removed {
                delete.execute([hash])?;
            }
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('purged_before_ms', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [horizon.to_string()],
        )?;
        let bytes_removed: u64 = removed.iter().map(|(_, n)| *n as u64).sum();
        let event = rows::purge_event(
            horizon,
            removed.len() as u64,
            bytes_removed,
            &request.command,
            request.now_ms,
        );
        append_in(&tx, std::slice::from_ref(&event), self.keys.as_deref())?;
        let records_before: i64 = tx.query_row(
            "SELECT count(*) FROM records WHERE start_ms < ?1",
            [horizon],
            |r| r.get(0),
        )?;
        tx.commit()?;
        Ok(PurgeReport {
            purged_before_ms: horizon,
            records_before: records_before as u64,
            pieces_removed: removed.len() as u64,
            bytes_removed,
        })
    }
    fn find_sessions(
        &self,
        filter: &ExchangeFilter,
        limit: u64,
        before: Option<i64>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let (where_sql, mut args) = filter_sql(filter);
        args.push(SqlValue::Integer(before.unwrap_or(i64::MAX)));
        let before_arg = args.len();
        args.push(SqlValue::Integer(limit.min(i64::MAX as u64) as i64));
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}
             FROM records {where_sql}
             GROUP BY session_id
             HAVING max(seq) < ?{before_arg}
             ORDER BY max(seq) DESC
             LIMIT ?{}",
            args.len()
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), summary_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn exchange(&self, exchange_id: &str) -> Result<Vec<Exchange>, StoreError> {
        let mut out = Vec::new();
        self.exchanges(
            "SELECT seq, hash, body FROM records WHERE exchange_id = ?1 ORDER BY seq",
            &[&exchange_id],
            &mut |ex| {
                out.push(ex);
                Ok(())
            },
        )?;
        Ok(out)
    }

    fn usage_by_user(&self, filter: &ExchangeFilter) -> Result<Vec<UserUsage>, StoreError> {
        let (where_sql, args) = filter_sql(filter);
        let sql = format!(
            "SELECT subject, count(*), sum(input_tokens), sum(output_tokens),
                    sum(coalesce(json_extract(body, '$.record.usage.cache_read_input_tokens'), 0)),
                    sum(coalesce(json_extract(body, '$.record.usage.cache_creation_input_tokens'), 0)),
                    sum(coalesce((SELECT sum(json_extract(value, '$.count'))
                                  FROM json_each(body, '$.record.masked')), 0)),
                    sum(decision != 'allowed')
             FROM records {where_sql}
             GROUP BY subject
             ORDER BY subject"
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let n = |r: &rusqlite::Row<'_>, i| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
        let rows = stmt.query_map(params_from_iter(args), |r| {
            Ok(UserUsage {
                subject: r.get(0)?,
                requests: n(r, 1)?,
                input_tokens: n(r, 2)?,
                output_tokens: n(r, 3)?,
                cache_read_input_tokens: n(r, 4)?,
                cache_creation_input_tokens: n(r, 5)?,
                masked: n(r, 6)?,
                refused: n(r, 7)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn log_query(&mut self, entry: &QueryLogEntry) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO query_log (at_ms, subject, auditor, method, path, query, status)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                entry.at_ms,
                entry.subject,
                entry.auditor,
                entry.method,
                entry.path,
                entry.query,
                entry.status
            ])?;
        Ok(())
    }

    fn put_document(&mut self, d: &Document) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR REPLACE INTO documents (kind, id, key, subject, issuer, created_ms, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![d.kind, d.id, d.key, d.subject, d.issuer, d.created_ms, d.body])?;
        Ok(())
    }

    fn document(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .conn
            .prepare_cached(&format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kind = ?1 AND id = ?2"))?
            .query_row(params![kind, id], document_row)
            .optional()?)
    }

    fn documents(&self, kind: &str, key: Option<&str>, subject: Option<&str>) -> Result<Vec<Document>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {DOCUMENT_COLUMNS} FROM documents
             WHERE kind = ?1 AND (?2 IS NULL OR key = ?2) AND (?3 IS NULL OR subject = ?3)
             ORDER BY created_ms DESC, id DESC"
        ))?;
        let rows = stmt.query_map(params![kind, key, subject], document_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

const DOCUMENT_COLUMNS: &str = "kind, id, key, subject, issuer, created_ms, body";

fn document_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Document> {
    Ok(Document {
        kind: r.get(0)?,
        id: r.get(1)?,
        key: r.get(2)?,
        subject: r.get(3)?,
        issuer: r.get(4)?,
        created_ms: r.get(5)?,
        body: r.get(6)?,
    })
}
