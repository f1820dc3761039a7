//! PostgreSQL store, for deployments where several recorders write to one database: the same
//! rows as SQLite ([`super::rows`]) in the same tables, one transaction per batch, committed
//! with PostgreSQL's synchronous commit so a batch is durable when `append` returns.
//!
//! One chain, many writers: the one-row table `chain_head` holds the newest record's number
//! and hash, and every append locks it (`SELECT … FOR UPDATE`) before it links its records,
//! so appends from different recorders queue up and each links to the one committed before.
//! A side effect: deleting the newest records in SQL leaves `chain_head` pointing at them,
//! so the next append links to the deleted hash and `verify` reports the gap.
//!
//! Limit: connections are plain (no TLS); keep the database on a trusted network or socket.

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
use ::postgres::types::ToSql;
use ::postgres::{Client, GenericClient, IsolationLevel, NoTls, Row};
use serde_json::Value;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

const SCHEMA_VERSION: &str = "2";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    seq BIGINT PRIMARY KEY,
    exchange_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    subject TEXT,
    start_ms BIGINT,
    model TEXT,
    decision TEXT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    body TEXT NOT NULL,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    key_id TEXT,
    seal BYTEA
);
CREATE INDEX IF NOT EXISTS records_by_session ON records (session_id, seq);
CREATE INDEX IF NOT EXISTS records_by_subject ON records (subject, start_ms);
CREATE INDEX IF NOT EXISTS records_by_exchange ON records (exchange_id);
CREATE INDEX IF NOT EXISTS records_by_start ON records (start_ms);
CREATE TABLE IF NOT EXISTS query_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    subject TEXT,
    auditor BOOLEAN NOT NULL,
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
    created_ms BIGINT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS documents_by_key ON documents (kind, key, created_ms);
CREATE INDEX IF NOT EXISTS documents_by_subject ON documents (kind, subject, created_ms);
CREATE TABLE IF NOT EXISTS contents (hash TEXT PRIMARY KEY, bytes BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS chain_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL
);
";

/// Serialises schema creation when several recorders start at once on an empty database
/// (`CREATE TABLE IF NOT EXISTS` is not safe against a concurrent twin).
const SCHEMA_LOCK: i64 = 0x5c41_4d00;

/// Rows fetched per round trip when walking every record.
const PAGE_ROWS: i32 = 256;

/// The PostgreSQL backend of [`Store`].
pub struct PostgresStore {
    url: String,
    // The trait reads through `&self`; the client needs `&mut` for every query.
    client: Mutex<Client>,
    /// Seal appends and check seals in `verify`; `None`: plain hashes only.
    keys: Option<Arc<ChainKeys>>,
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db`) and creates the tables if absent.
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        let mut client = Client::connect(url, NoTls)?;
        let mut tx = client.transaction()?;
        tx.batch_execute(&format!("SELECT pg_advisory_xact_lock({SCHEMA_LOCK})"))?;
        tx.batch_execute(SCHEMA)?;
        tx.execute(
            "INSERT INTO chain_head (seq, hash) VALUES (0, $1) ON CONFLICT DO NOTHING",
            &[&chain::GENESIS.as_slice()],
        )?;
        let found: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'schema'", &[])?
            .map(|r| r.get(0));
        match found {
            None => {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', $1)",
                    &[&SCHEMA_VERSION],
                )?;
            }
            Some(v) if v == SCHEMA_VERSION => {}
            // Version 1 had no seal columns; its records stay unsealed (verify names them).
            Some(v) if v == "1" => {
                tx.batch_execute(
                    "ALTER TABLE records ADD COLUMN IF NOT EXISTS key_id TEXT;
                     ALTER TABLE records ADD COLUMN IF NOT EXISTS seal BYTEA;
                     UPDATE meta SET value = '2' WHERE key = 'schema';",
                )?;
            }
            Some(v) => {
                return Err(StoreError::SchemaVersion {
                    found: v,
                    expected: SCHEMA_VERSION.into(),
                })
            }
        }
        tx.commit()?;
        Ok(PostgresStore {
            url: url.to_owned(),
            client: Mutex::new(client),
            keys: None,
        })
    }

    /// Seals every appended record with `keys` and checks seals in `verify`.
    pub fn with_chain_keys(mut self, keys: Option<Arc<ChainKeys>>) -> Self {
        self.keys = keys;
        self
    }

    /// The connection, re-established if the server closed it (restart, failover).
    fn client(&self) -> Result<MutexGuard<'_, Client>, StoreError> {
        let mut client = self
            .client
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if client.is_closed() {
            *client = Client::connect(&self.url, NoTls)?;
        }
        Ok(client)
    }
}

fn purged_before_ms(c: &mut impl GenericClient) -> Result<Option<i64>, StoreError> {
    Ok(
        c.query_opt("SELECT value FROM meta WHERE key = 'purged_before_ms'", &[])?
            .and_then(|r| r.get::<_, String>(0).parse().ok()),
    )
}


/// A batch encoded into rows and its distinct pieces, before any lock is taken (other
/// recorders then wait only for the inserts).
struct EncodedBatch {
    rows: Vec<rows::NewRow>,
    piece_hashes: Vec<String>,
    piece_bytes: Vec<Vec<u8>>,
}

fn encode_batch(batch: &[StoredRecord]) -> EncodedBatch {
    let mut pieces = Vec::new();
    let rows: Vec<_> = batch
        .iter()
        .map(|stored| rows::encode(stored, &mut pieces))
        .collect();
    let mut seen = HashSet::new();
    let (piece_hashes, piece_bytes): (Vec<String>, Vec<Vec<u8>>) = pieces
        .into_iter()
        .filter(|(h, _)| seen.insert(h.clone()))
        .unzip();

    EncodedBatch { rows, piece_hashes, piece_bytes }
}

/// Links and inserts `batch` inside `tx`: locks the chain head (`FOR UPDATE`), so appends of
/// every recorder on the database queue up and each links to the one committed before.
fn append_in(tx: &mut ::postgres::Transaction<'_>, batch: EncodedBatch, keys: Option<&ChainKeys>) -> Result<(), StoreError> {
    let EncodedBatch { rows: encoded, piece_hashes, piece_bytes } = batch;
    let head = tx.query_one("SELECT seq, hash FROM chain_head FOR UPDATE", &[])?;
    let head_seq: i64 = head.get(0);
    let mut prev: Vec<u8> = head.get(1);
    // Numbers continue after the highest row too, so rows someone added by hand cannot
    // make every later append fail on a duplicate key.
    let max_seq: i64 = tx
        .query_one("SELECT coalesce(max(seq), 0) FROM records", &[])?
        .get(0);
    let mut seq = head_seq.max(max_seq);

    let n = encoded.len();
    let mut seqs = Vec::with_capacity(n);
    let mut exchange_ids = Vec::with_capacity(n);
    let mut session_ids = Vec::with_capacity(n);
    let mut subjects = Vec::with_capacity(n);
    let mut starts = Vec::with_capacity(n);
    let mut models = Vec::with_capacity(n);
    let mut decisions = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    let mut outputs = Vec::with_capacity(n);
    let mut bodies = Vec::with_capacity(n);
    let mut prevs = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    let mut key_ids = Vec::with_capacity(n);
    let mut seals = Vec::with_capacity(n);
    for row in encoded {
        seq += 1;
        let hash = chain::link_hash(&prev, row.body.as_bytes()).to_vec();
        let c = row.columns;
        seqs.push(seq);
        exchange_ids.push(c.exchange_id);
        session_ids.push(c.session_id);
        subjects.push(c.subject);
        starts.push(c.start_ms);
        models.push(c.model);
        decisions.push(c.decision);
        inputs.push(c.input_tokens);
        outputs.push(c.output_tokens);
        bodies.push(row.body);
        let (key_id, seal) = rows::seal(keys, &hash);
        key_ids.push(key_id);
        seals.push(seal);
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    // One statement per table for the whole batch (arrays unnested server-side): the
    // round trips, not the rows, are what a batch costs.
    tx.execute(
        "INSERT INTO contents (hash, bytes)
         SELECT * FROM unnest($1::text[], $2::bytea[])
         ON CONFLICT (hash) DO NOTHING",
        &[&piece_hashes, &piece_bytes],
    )?;
    tx.execute(
        "INSERT INTO records (seq, exchange_id, session_id, subject, start_ms, model,
            decision, input_tokens, output_tokens, body, prev_hash, hash, key_id, seal)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[],
            $5::bigint[], $6::text[], $7::text[], $8::bigint[], $9::bigint[], $10::text[],
            $11::bytea[], $12::bytea[], $13::text[], $14::bytea[])",
        &[
            &seqs,
            &exchange_ids,
            &session_ids,
            &subjects,
            &starts,
            &models,
            &decisions,
            &inputs,
            &outputs,
            &bodies,
            &prevs,
            &hashes,
            &key_ids,
            &seals,
        ],
    )?;
    tx.execute("UPDATE chain_head SET seq = $1, hash = $2", &[&seq, &prev])?;
    Ok(())
}

type Params = Vec<Box<dyn ToSql + Sync>>;

fn param_refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p.as_ref()).collect()
}

/// The `WHERE` clause and its parameters for `filter`; only set filters become conditions, so
/// the planner sees plain indexed comparisons. Group and rule live only in the body (the
/// chain covers it) and are read as JSON after the indexed conditions narrowed the rows.
fn filter_sql(filter: &ExchangeFilter) -> (String, Params) {
    let mut conditions = Vec::new();
    let mut params: Params = Vec::new();
    let mut add = |condition: &str, value: Box<dyn ToSql + Sync>| {
        params.push(value);
        conditions.push(condition.replace("$?", &format!("${}", params.len())));
    };
    if let Some(v) = &filter.subject {
        add("subject = $?", Box::new(v.clone()));
    }
    if let Some(v) = filter.from_ms {
        add("start_ms >= $?", Box::new(v));
    }
    if let Some(v) = filter.to_ms {
        add("start_ms < $?", Box::new(v));
    }
    if let Some(v) = &filter.model {
        add("model = $?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.decision {
        add("decision = $?", Box::new(v.clone()));
    }
    if let Some(v) = &filter.group {
        add(
            "coalesce(body::jsonb #> '{record,user,groups}', '[]'::jsonb) ? $?::text",
            Box::new(v.clone()),
        );
    }
    if let Some(v) = &filter.rule {
        add(
            "EXISTS (SELECT 1 FROM jsonb_array_elements(
                         coalesce(body::jsonb #> '{record,masked}', '[]'::jsonb)) m
                     WHERE m->>'rule' = $?::text AND (m->>'count')::bigint > 0)",
            Box::new(v.clone()),
        );
    }
    if conditions.is_empty() {
        (String::new(), params)
    } else {
        (format!("WHERE {}", conditions.join(" AND ")), params)
    }
}

/// A session summary from the columns of the sessions queries.
fn summary(r: &Row) -> SessionSummary {
    let strings = |v: Vec<Option<String>>| -> Vec<String> {
        let mut v: Vec<String> = v.into_iter().flatten().collect();
        v.sort();
        v
    };
    SessionSummary {
        session_id: r.get(0),
        subjects: strings(r.get(1)),
        exchanges: r.get::<_, i64>(2) as u64,
        refused: r.get::<_, i64>(3) as u64,
        first_ms: r.get(4),
        last_ms: r.get(5),
        input_tokens: r.get::<_, i64>(6) as u64,
        output_tokens: r.get::<_, i64>(7) as u64,
        models: strings(r.get(8)),
        last_seq: r.get(9),
    }
}

/// Session summary columns, in the order [`summary`] reads them.
const SUMMARY_COLUMNS: &str = "session_id, array_agg(DISTINCT subject), count(*),
    count(*) FILTER (WHERE decision <> 'allowed'), min(start_ms), max(start_ms),
    coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(output_tokens), 0)::bigint,
    array_agg(DISTINCT model), max(seq)";

/// The stored pieces among `hashes`.
fn load_many(
    c: &mut impl GenericClient,
    hashes: &[String],
) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
    Ok(c.query(
        "SELECT hash, bytes FROM contents WHERE hash = ANY($1)",
        &[&hashes],
    )?
    .into_iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Rows of `(seq, hash, body)` as exchanges, with every piece they reach fetched level by
/// level (a few queries) rather than one query per piece.
fn exchanges(c: &mut impl GenericClient, found: &[Row]) -> Result<Vec<Exchange>, StoreError> {
    let mut roots = Vec::new();
    for row in found {
        if let Ok(v) = serde_json::from_str::<Value>(row.get(2)) {
            dedup::references(&v, &mut roots);
        }
    }
    let pieces = rows::reachable(roots, &mut |h| load_many(c, h))?;
    found
        .iter()
        .map(|row| {
            rows::decode(row.get(0), row.get(1), row.get(2), &mut |h| {
                pieces.get(h).cloned()
            })
        })
        .collect()
}

impl Store for PostgresStore {
    fn append(&mut self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        let encoded = encode_batch(batch);
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        append_in(&mut tx, encoded, self.keys.as_deref())?;
        tx.commit()?;
        Ok(())
    }

    fn probe_write(&mut self, now_ms: i64) -> Result<(), StoreError> {
        // A real write and synchronous commit: fails while the server is down, read-only (a
        // standby) or out of disk.
        self.client()?.execute(
            "INSERT INTO meta (key, value) VALUES ('health_probe_ms', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&now_ms.to_string()],
        )?;
        Ok(())
    }

    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionSummary>, StoreError> {
        let limit = query.limit.map(|l| l.min(i64::MAX as u64) as i64);
        let found = self.client()?.query(
            &format!(
                "SELECT {SUMMARY_COLUMNS}
                 FROM records
                 WHERE $1::text IS NULL
                    OR session_id IN (SELECT session_id FROM records WHERE subject = $1)
                 GROUP BY session_id
                 ORDER BY max(seq) DESC
                 LIMIT $2"
            ),
            &[&query.subject, &limit],
        )?;
        Ok(found.iter().map(summary).collect())
    }

    fn session(&self, session_id: &str) -> Result<Vec<Exchange>, StoreError> {
        let mut client = self.client()?;
        let found = client.query(
            "SELECT seq, hash, body FROM records WHERE session_id = $1 ORDER BY seq",
            &[&session_id],
        )?;
        exchanges(&mut *client, &found)
    }

    fn for_each(
        &self,
        f: &mut dyn FnMut(Exchange) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let mut client = self.client()?;
        // A cursor inside one snapshot: constant memory, and pieces are fetched per page.
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let portal = tx.bind("SELECT seq, hash, body FROM records ORDER BY seq", &[])?;
        loop {
            let page = tx.query_portal(&portal, PAGE_ROWS)?;
            if page.is_empty() {
                break;
            }
            for ex in exchanges(&mut tx, &page)? {
                f(ex)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        let mut client = self.client()?;
        // One snapshot, so a purge or append running meanwhile cannot look like tampering.
        let mut tx = client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()?;
        let mut verifier = Verifier::new(purged_before_ms(&mut tx)?, self.keys.as_deref());
        let portal = tx.bind(
            "SELECT seq, exchange_id, session_id, subject, start_ms, model, decision,
                    input_tokens, output_tokens, body, prev_hash, hash, key_id, seal
             FROM records ORDER BY seq",
            &[],
        )?;
        loop {
            let page = tx.query_portal(&portal, PAGE_ROWS * 4)?;
            if page.is_empty() {
                break;
            }
            for r in page {
                let stored_columns = Columns {
                    exchange_id: r.get(1),
                    session_id: r.get(2),
                    subject: r.get(3),
                    start_ms: r.get(4),
                    model: r.get(5),
                    decision: r.get(6),
                    input_tokens: r.get(7),
                    output_tokens: r.get(8),
                };
                verifier.record(
                    r.get(0),
                    stored_columns,
                    r.get(9),
                    r.get(10),
                    r.get(11),
                    r.get(12),
                    r.get(13),
                );
            }
        }
        let portal = tx.bind("SELECT hash, bytes FROM contents ORDER BY hash", &[])?;
        loop {
            let page = tx.query_portal(&portal, PAGE_ROWS * 4)?;
            if page.is_empty() {
                break;
            }
            for r in page {
                verifier.piece(r.get(0), r.get(1));
            }
        }
        tx.commit()?;
        Ok(verifier.finish())
    }

    fn usage(&self) -> Result<StorageUsage, StoreError> {
        let mut client = self.client()?;
        let records = client.query_one(
            "SELECT count(*), coalesce(sum(octet_length(body) + octet_length(prev_hash)
                    + octet_length(hash)), 0)::bigint
             FROM records",
            &[],
        )?;
        let pieces = client.query_one(
            "SELECT count(*), coalesce(sum(octet_length(bytes) + octet_length(hash)), 0)::bigint
             FROM contents",
            &[],
        )?;
        Ok(StorageUsage {
            records: records.get::<_, i64>(0) as u64,
            record_bytes: records.get::<_, i64>(1) as u64,
            content_pieces: pieces.get::<_, i64>(0) as u64,
            content_bytes: pieces.get::<_, i64>(1) as u64,
        })
    }

    fn purge(&mut self, request: &PurgeRequest) -> Result<PurgeReport, StoreError> {
        let before_ms = request.before_ms;
        let mut client = self.client()?;
        let mut tx = client.transaction()?;
        // Hold the chain lock: no append may add a reference to a piece between the
        // reachability walk and the delete.
        tx.query_one("SELECT seq FROM chain_head FOR UPDATE", &[])?;
        let horizon = purged_before_ms(&mut tx)?.map_or(before_ms, |h| h.max(before_ms));
        let mut roots = Vec::new();
        for r in tx.query(
            "SELECT body FROM records WHERE start_ms IS NULL OR start_ms >= $1",
            &[&horizon],
        )? {
            if let Ok(v) = serde_json::from_str::<Value>(r.get(0)) {
                dedup::references(&v, &mut roots);
            }
        }
        let keep: Vec<String> = rows::reachable(roots, &mut |h| load_many(&mut tx, h))?
            .into_keys()
            .collect();
        let removed = tx.query(
            "DELETE FROM contents WHERE hash <> ALL($1) RETURNING octet_length(bytes)",
            &[&keep],
        )?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('purged_before_ms', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&horizon.to_string()],
        )?;
        let bytes_removed: u64 = removed.iter().map(|r| r.get::<_, i32>(0) as u64).sum();
        let event = rows::purge_event(
            horizon,
            removed.len() as u64,
            bytes_removed,
            &request.command,
            request.now_ms,
        );
        append_in(&mut tx, encode_batch(std::slice::from_ref(&event)), self.keys.as_deref())?;
        let records_before: i64 = tx
            .query_one(
                "SELECT count(*) FROM records WHERE start_ms < $1",
                &[&horizon],
            )?
            .get(0);
        tx.commit()?;
        // Lets PostgreSQL reuse the dead rows' space; the bytes leave the disk when that space
        // is reused (VACUUM FULL rewrites the table at once, at the price of a table lock).
        client.batch_execute("VACUUM contents")?;
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
        let (where_sql, mut params) = filter_sql(filter);
        params.push(Box::new(before.unwrap_or(i64::MAX)));
        let before_arg = params.len();
        params.push(Box::new(limit.min(i64::MAX as u64) as i64));
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM records {where_sql}
             GROUP BY session_id HAVING max(seq) < ${before_arg}
             ORDER BY max(seq) DESC LIMIT ${}",
            params.len()
        );
        let found = self.client()?.query(&sql, &param_refs(&params))?;
        Ok(found.iter().map(summary).collect())
    }

    fn exchange(&self, exchange_id: &str) -> Result<Vec<Exchange>, StoreError> {
        let mut client = self.client()?;
        let found = client.query(
            "SELECT seq, hash, body FROM records WHERE exchange_id = $1 ORDER BY seq",
            &[&exchange_id],
        )?;
        exchanges(&mut *client, &found)
    }

    fn usage_by_user(&self, filter: &ExchangeFilter) -> Result<Vec<UserUsage>, StoreError> {
        let (where_sql, params) = filter_sql(filter);
        // Byte order and nulls first, as SQLite sorts, whatever the database's collation.
        let sql = format!(
            "SELECT subject, count(*),
                    coalesce(sum(input_tokens), 0)::bigint, coalesce(sum(output_tokens), 0)::bigint,
                    coalesce(sum((body::jsonb #>> '{{record,usage,cache_read_input_tokens}}')::bigint), 0)::bigint,
                    coalesce(sum((body::jsonb #>> '{{record,usage,cache_creation_input_tokens}}')::bigint), 0)::bigint,
                    coalesce(sum((SELECT sum((m->>'count')::bigint) FROM jsonb_array_elements(
                        coalesce(body::jsonb #> '{{record,masked}}', '[]'::jsonb)) m)), 0)::bigint,
                    count(*) FILTER (WHERE decision <> 'allowed')
             FROM records {where_sql}
             GROUP BY subject
             ORDER BY subject COLLATE \"C\" NULLS FIRST"
        );
        let found = self.client()?.query(&sql, &param_refs(&params))?;
        let n = |r: &Row, i| r.get::<_, i64>(i).max(0) as u64;
        Ok(found
            .iter()
            .map(|r| UserUsage {
                subject: r.get(0),
                requests: n(r, 1),
                input_tokens: n(r, 2),
                output_tokens: n(r, 3),
                cache_read_input_tokens: n(r, 4),
                cache_creation_input_tokens: n(r, 5),
                masked: n(r, 6),
                refused: n(r, 7),
            })
            .collect())
    }

    fn log_query(&mut self, entry: &QueryLogEntry) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO query_log (at_ms, subject, auditor, method, path, query, status)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                &entry.at_ms,
                &entry.subject,
                &entry.auditor,
                &entry.method,
                &entry.path,
                &entry.query,
                &i32::from(entry.status),
            ],
        )?;
        Ok(())
    }

    fn put_document(&mut self, d: &Document) -> Result<(), StoreError> {
        self.client()?.execute(
            "INSERT INTO documents (kind, id, key, subject, issuer, created_ms, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (kind, id) DO UPDATE SET key = EXCLUDED.key, subject = EXCLUDED.subject,
                 issuer = EXCLUDED.issuer, created_ms = EXCLUDED.created_ms, body = EXCLUDED.body",
            &[&d.kind, &d.id, &d.key, &d.subject, &d.issuer, &d.created_ms, &d.body],
        )?;
        Ok(())
    }

    fn document(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        let row = self.client()?.query_opt(
            &format!("SELECT {DOCUMENT_COLUMNS} FROM documents WHERE kind = $1 AND id = $2"),
            &[&kind, &id],
        )?;
        Ok(row.as_ref().map(document))
    }

    fn documents(&self, kind: &str, key: Option<&str>, subject: Option<&str>) -> Result<Vec<Document>, StoreError> {
        let rows = self.client()?.query(
            &format!(
                "SELECT {DOCUMENT_COLUMNS} FROM documents
                 WHERE kind = $1 AND ($2::text IS NULL OR key = $2) AND ($3::text IS NULL OR subject = $3)
                 ORDER BY created_ms DESC, id DESC"
            ),
            &[&kind, &key, &subject],
        )?;
        Ok(rows.iter().map(document).collect())
    }
}

const DOCUMENT_COLUMNS: &str = "kind, id, key, subject, issuer, created_ms, body";

fn document(r: &Row) -> Document {
    Document {
        kind: r.get(0),
        id: r.get(1),
        key: r.get(2),
        subject: r.get(3),
        issuer: r.get(4),
        created_ms: r.get(5),
        body: r.get(6),
    }
}
