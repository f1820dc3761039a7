//! The storage contract: append batches atomically to the hash chain, list and show sessions,
//! export, verify. [`sqlite::SqliteStore`] implements it; a PostgreSQL store is to follow
//! behind the same trait.

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
    pub problems: Vec<Problem>,
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
}
