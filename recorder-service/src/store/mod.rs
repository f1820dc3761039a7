//! The storage contract: append batches atomically to the hash chain, list and show sessions,
//! export, verify, purge old payload, answer auditor queries (filtered sessions, one exchange,
//! usage per user) and keep the query log. [`sqlite::SqliteStore`] (one file, one recorder) and
//! [`postgres::PostgresStore`] (several recorders on one database) implement it; [`open`]
//! picks one from the `--db` argument. Both store the same rows ([`rows`]).

pub mod postgres;
mod rows;
pub mod sqlite;

use crate::chain::Problem;
use crate::chain_keys::ChainKeys;
use std::sync::Arc;
use crate::record::StoredRecord;
use serde::Serialize;

/// Why a store operation failed. Messages name the operation, never record content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] rusqlite::Error),
    #[error("PostgreSQL error: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// A stored body no longer parses as a record (see `verify`).
    #[error("record {seq} cannot be read: {source}")]
    Unreadable {
        seq: i64,
        #[source]
        source: serde_json::Error,
    },
    #[error("database schema version {found} is not {expected}")]
    SchemaVersion { found: String, expected: String },
    /// A stored review or grant no longer parses.
    #[error("stored document cannot be read: {0}")]
    Corrupt(String),
    /// The backend does not implement this operation yet.
    #[error("this store does not support {0} yet")]
    Unsupported(&'static str),
}

/// One stored exchange with its place in the chain.
#[derive(Debug, Clone, Serialize)]
pub struct Exchange {
    pub seq: i64,
    /// Hex chain hash of this record.
    pub hash: String,
    /// Some payload content is gone (purged by retention, or deleted: `verify` tells which).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub content_missing: bool,
    #[serde(flatten)]
    pub stored: StoredRecord,
}

/// One session in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    pub session_id: String,
    /// Subjects seen in the session (normally one).
    pub subjects: Vec<String>,
    pub exchanges: u64,
    /// Exchanges whose decision was not `allowed`.
    pub refused: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub models: Vec<String>,
    /// Chain position of the session's newest exchange in the listing; pass it as `before`
    /// to get the next page.
    pub last_seq: i64,
}

/// Filters for [`Store::sessions`]; empty means all.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub subject: Option<String>,
    pub limit: Option<u64>,
}

/// Which exchanges an auditor query covers: an exchange matches when it passes every filter
/// that is set; unset filters pass everything. Used by [`Store::find_sessions`] and
/// [`Store::usage_by_user`]; [`ExchangeFilter::matches`] is the reference semantics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeFilter {
    /// The token's `sub` of the caller.
    pub subject: Option<String>,
    /// One of the caller's groups.
    pub group: Option<String>,
    /// Started at or after (epoch ms); exchanges without a start time never match a bound.
    pub from_ms: Option<i64>,
    /// Started before (epoch ms).
    pub to_ms: Option<i64>,
    pub model: Option<String>,
    /// Snake-case decision name (`allowed`, `denied`, ...).
    pub decision: Option<String>,
    /// A masking rule id that replaced something (either direction).
    pub rule: Option<String>,
}

impl ExchangeFilter {
    /// Whether `ex` passes every filter that is set.
    pub fn matches(&self, ex: &Exchange) -> bool {
        let r = &ex.stored.record;
        let user = r.user.as_ref();
        let start = ex.stored.envoy.start_time_ms;
        let eq = |want: &Option<String>, have: Option<&str>| {
            want.as_deref().is_none_or(|w| have == Some(w))
        };
        eq(&self.subject, user.map(|u| u.subject.as_str()))
            && self
                .group
                .as_deref()
                .is_none_or(|g| user.is_some_and(|u| u.groups.iter().any(|x| x == g)))
            && self.from_ms.is_none_or(|f| start.is_some_and(|t| t >= f))
            && self.to_ms.is_none_or(|to| start.is_some_and(|t| t < to))
            && eq(&self.model, r.model.as_deref())
            && eq(&self.decision, Some(r.decision.as_str()))
            && self
                .rule
                .as_deref()
                .is_none_or(|rule| r.masked.iter().any(|m| m.rule == rule && m.count > 0))
    }
}

/// One caller's activity over a period ([`Store::usage_by_user`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserUsage {
    /// The token's `sub`; `None` for exchanges refused before identity was known.
    pub subject: Option<String>,
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_creation_input_tokens: u64,
    /// Secrets replaced, both directions.
    pub masked: u64,
    /// Exchanges whose decision was not `allowed`.
    pub refused: u64,
}

/// One auditor query, for the query log ([`Store::log_query`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueryLogEntry {
    pub at_ms: i64,
    /// The caller's `sub`; `None` when the token was missing or invalid.
    pub subject: Option<String>,
    /// The caller saw everything (member of the auditor group).
    pub auditor: bool,
    pub method: String,
    pub path: String,
    /// The raw query string (filters as sent).
    pub query: String,
    /// HTTP status answered.
    pub status: u16,
}

/// Outcome of [`Store::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub content_pieces: u64,
    /// Sequence number and hex hash of the newest record: keep it elsewhere to detect
    /// deletion of the newest records or a rebuilt chain.
    pub head: Option<(i64, String)>,
    /// Payload of records that started before this (epoch ms) was purged, as the chain's
    /// purge events record it; their pieces may be absent without it being a problem.
    pub purged_before_ms: Option<i64>,
    /// The lowest record number any problem names: where the chain stops being trustworthy.
    pub first_bad_seq: Option<i64>,
    /// Whether seals were checked (the store was opened with the chain keys).
    pub seals_checked: bool,
    /// Records with a valid seal, per key id.
    pub sealed_by: std::collections::BTreeMap<String, u64>,
    pub problems: Vec<Problem>,
}

/// What [`Store::purge`] is asked to do, recorded in the chain event it appends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeRequest {
    /// Remove the payload of records that started before this (epoch ms).
    pub before_ms: i64,
    /// When the purge runs (epoch ms): the event's time.
    pub now_ms: i64,
    /// The command that asked for it, as typed (`purge --older-than 90`).
    pub command: String,
}

/// Outcome of [`Store::purge`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// The retention horizon now in force (epoch ms); never moves back.
    pub purged_before_ms: i64,
    /// Records older than the horizon (their metadata and hashes stay).
    pub records_before: u64,
    pub pieces_removed: u64,
    pub bytes_removed: u64,
}

/// Bytes the store holds for records and content pieces (logical, before SQLite overhead).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StorageUsage {
    pub records: u64,
    pub record_bytes: u64,
    pub content_pieces: u64,
    pub content_bytes: u64,
}

/// A review or grant as stored: indexed fields plus its JSON body. Not part of the chain:
/// every decision about one is appended to the chain as an event record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// `review` or `grant`.
    pub kind: String,
    pub id: String,
    /// What it is found by besides its id (a review's fingerprint; empty for grants).
    pub key: String,
    pub subject: String,
    pub issuer: String,
    pub created_ms: i64,
    pub body: String,
}

/// The storage contract every backend passes.
pub trait Store: Send {
    /// Appends the batch to the chain in one transaction; returns after it is durable.
    fn append(&mut self, batch: &[StoredRecord]) -> Result<(), StoreError>;
    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionSummary>, StoreError>;
    /// The session's exchanges in arrival order; empty if unknown.
    fn session(&self, session_id: &str) -> Result<Vec<Exchange>, StoreError>;
    /// Every exchange in chain order.
    fn for_each(
        &self,
        f: &mut dyn FnMut(Exchange) -> Result<(), StoreError>,
    ) -> Result<(), StoreError>;
    fn verify(&self) -> Result<VerifyReport, StoreError>;
    fn usage(&self) -> Result<StorageUsage, StoreError>;
    /// Removes the payload (request and response content) of records that started before
    /// `request.before_ms`, except pieces a newer record shares; metadata and hashes stay, so
    /// `verify` still passes. Records without a start time are kept whole. Appends a
    /// `retention.purged` event (horizon, what went, the command) in the same transaction:
    /// `verify` accepts missing content only up to the horizon the chain records.
    fn purge(&mut self, request: &PurgeRequest) -> Result<PurgeReport, StoreError>;
    /// Proves the store can write now: a small durable write that touches no record. Backs
    /// the recorder's `/healthz`, which `audit.required` asks before every exchange.
    fn probe_write(&mut self, now_ms: i64) -> Result<(), StoreError>;

    // Auditor queries (the HTTP API). The defaults refuse so a backend compiles before it
    // implements them; PostgreSQL: implement all four, with the semantics documented here.

    /// Sessions with at least one exchange matching `filter`, at most `limit`, ordered by their
    /// newest *matching* exchange (highest `seq`, its `last_seq`) first, only those whose
    /// `last_seq` is below `before` when given (the next page). A summary counts only the
    /// matching exchanges, and the order ignores the others, so a caller restricted to their
    /// own `subject` learns nothing about others' exchanges in a shared session id.
    /// Should use an index for `subject` (the common query).
    fn find_sessions(
        &self,
        filter: &ExchangeFilter,
        limit: u64,
        before: Option<i64>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        let _ = (filter, limit, before);
        Err(StoreError::Unsupported("find_sessions"))
    }
    /// Every record with this exchange id (normally one), in chain order. Needs an index on
    /// `exchange_id`.
    fn exchange(&self, exchange_id: &str) -> Result<Vec<Exchange>, StoreError> {
        let _ = exchange_id;
        Err(StoreError::Unsupported("exchange"))
    }
    /// Per-subject totals of the exchanges matching `filter`, ordered by subject (`None`
    /// first). Cache tokens and masked counts come from the record body
    /// (`record.usage.cache_*`, the sum of `record.masked[].count`).
    fn usage_by_user(&self, filter: &ExchangeFilter) -> Result<Vec<UserUsage>, StoreError> {
        let _ = filter;
        Err(StoreError::Unsupported("usage_by_user"))
    }
    /// Appends one row to the query log (a plain table `query_log` beside the records, not
    /// part of the chain); durable when it returns.
    fn log_query(&mut self, entry: &QueryLogEntry) -> Result<(), StoreError> {
        let _ = entry;
        Err(StoreError::Unsupported("log_query"))
    }
    /// Inserts or replaces (same kind and id) a document; durable when it returns.
    fn put_document(&mut self, doc: &Document) -> Result<(), StoreError> {
        let _ = doc;
        Err(StoreError::Unsupported("put_document"))
    }
    fn document(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        let _ = (kind, id);
        Err(StoreError::Unsupported("document"))
    }
    /// Documents of `kind`, newest first, narrowed by `key` and `subject` when given.
    fn documents(&self, kind: &str, key: Option<&str>, subject: Option<&str>) -> Result<Vec<Document>, StoreError> {
        let _ = (kind, key, subject);
        Err(StoreError::Unsupported("documents"))
    }
}

/// Opens the store `db` names: a `postgres://` (or `postgresql://`) URL selects PostgreSQL,
/// anything else is a SQLite file path. Without chain keys: appends are unsealed and
/// `verify` does not check seals (see [`open_keyed`]).
pub fn open(db: &str) -> Result<Box<dyn Store>, StoreError> {
    open_keyed(db, None)
}

/// As [`open`], sealing appends with `keys` and checking seals in `verify`.
pub fn open_keyed(db: &str, keys: Option<Arc<ChainKeys>>) -> Result<Box<dyn Store>, StoreError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(Box::new(postgres::PostgresStore::connect(db)?.with_chain_keys(keys)))
    } else {
        Ok(Box::new(
            sqlite::SqliteStore::open(std::path::Path::new(db))?.with_chain_keys(keys),
        ))
    }
}

/// The cut-off for `purge --older-than DAYS` at `now_ms`.
pub fn retention_cutoff_ms(now_ms: i64, days: u32) -> i64 {
    now_ms - i64::from(days) * 86_400_000
}

impl<S: Store + ?Sized> Store for Box<S> {
    fn append(&mut self, batch: &[StoredRecord]) -> Result<(), StoreError> {
        (**self).append(batch)
    }
    fn sessions(&self, query: &SessionQuery) -> Result<Vec<SessionSummary>, StoreError> {
        (**self).sessions(query)
    }
    fn session(&self, session_id: &str) -> Result<Vec<Exchange>, StoreError> {
        (**self).session(session_id)
    }
    fn for_each(
        &self,
        f: &mut dyn FnMut(Exchange) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        (**self).for_each(f)
    }
    fn verify(&self) -> Result<VerifyReport, StoreError> {
        (**self).verify()
    }
    fn usage(&self) -> Result<StorageUsage, StoreError> {
        (**self).usage()
    }
    fn purge(&mut self, request: &PurgeRequest) -> Result<PurgeReport, StoreError> {
        (**self).purge(request)
    }
    fn probe_write(&mut self, now_ms: i64) -> Result<(), StoreError> {
        (**self).probe_write(now_ms)
    }
    fn find_sessions(
        &self,
        filter: &ExchangeFilter,
        limit: u64,
        before: Option<i64>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        (**self).find_sessions(filter, limit, before)
    }
    fn exchange(&self, exchange_id: &str) -> Result<Vec<Exchange>, StoreError> {
        (**self).exchange(exchange_id)
    }
    fn usage_by_user(&self, filter: &ExchangeFilter) -> Result<Vec<UserUsage>, StoreError> {
        (**self).usage_by_user(filter)
    }
    fn log_query(&mut self, entry: &QueryLogEntry) -> Result<(), StoreError> {
        (**self).log_query(entry)
    }
    fn put_document(&mut self, doc: &Document) -> Result<(), StoreError> {
        (**self).put_document(doc)
    }
    fn document(&self, kind: &str, id: &str) -> Result<Option<Document>, StoreError> {
        (**self).document(kind, id)
    }
    fn documents(&self, kind: &str, key: Option<&str>, subject: Option<&str>) -> Result<Vec<Document>, StoreError> {
        (**self).documents(kind, key, subject)
    }
}
