//! The storage contract: append batches atomically to the hash chain, list and show sessions,
//! export, verify, purge old payload. [`sqlite::SqliteStore`] (one file, one recorder) and
//! [`postgres::PostgresStore`] (several recorders on one database) implement it; [`open`]
//! picks one from the `--db` argument. Both store the same rows ([`rows`]).

pub mod postgres;
mod rows;
pub mod sqlite;

use crate::chain::Problem;
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
}

/// Filters for [`Store::sessions`]; empty means all.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    pub subject: Option<String>,
    pub limit: Option<u64>,
}

/// Outcome of [`Store::verify`].
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub records: u64,
    pub content_pieces: u64,
    /// Sequence number and hex hash of the newest record: keep it elsewhere to detect
    /// deletion of the newest records or a rebuilt chain.
    pub head: Option<(i64, String)>,
    /// Payload of records that started before this (epoch ms) was purged; their pieces may
    /// be absent without it being a problem.
    pub purged_before_ms: Option<i64>,
    pub problems: Vec<Problem>,
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
    /// `before_ms`, except pieces a newer record shares; metadata and hashes stay, so
    /// `verify` still passes. Records without a start time are kept whole.
    fn purge(&mut self, before_ms: i64) -> Result<PurgeReport, StoreError>;
}

/// Opens the store `db` names: a `postgres://` (or `postgresql://`) URL selects PostgreSQL,
/// anything else is a SQLite file path.
pub fn open(db: &str) -> Result<Box<dyn Store>, StoreError> {
    if db.starts_with("postgres://") || db.starts_with("postgresql://") {
        Ok(Box::new(postgres::PostgresStore::connect(db)?))
    } else {
        Ok(Box::new(sqlite::SqliteStore::open(std::path::Path::new(db))?))
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
    fn purge(&mut self, before_ms: i64) -> Result<PurgeReport, StoreError> {
        (**self).purge(before_ms)
    }
}
