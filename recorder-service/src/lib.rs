//! The Scrim recorder: receives one audit record per exchange from Envoy's access-log stream,
//! stores it hash-chained, and answers auditors.
//!
//! - [`record`]: [`record::StoredRecord`], the filter's [`scrim_core::audit::AuditRecord`]
//!   merged with Envoy's own fields about the exchange.
//! - [`envoy`]: turns one Envoy `HTTPAccessLogEntry` into a `StoredRecord` (pure).
//! - [`ingest`]: the gRPC `AccessLogService` server; counts what it rejects, commits before
//!   it reads the next message.
//! - [`store`]: the [`store::Store`] contract and its SQLite implementation.
//! - [`dedup`]: content addressing that stores each repeated piece of a conversation once.
//! - [`chain`]: the hash chain and the walk that finds altered, inserted or deleted records.
//! - [`chain_keys`]: the HMAC keys that seal each record's chain hash (rotation by key id).
//! - [`time`]: formatting epoch milliseconds for people.
//! - [`api`]: the auditors' HTTP/JSON query API (OIDC tokens, scoped per caller, logged).
//! - [`replay`]: a session rebuilt as the developer saw it, masked spans located.
//! - [`secret_file`]: the ingest token and chain keys read from files, compared safely.
//! - [`reviews`]: human approvals and just-in-time grants the gateway's filter asks about.
//! - [`console`]: the web console for auditors and approvers (browser sign-in, pages).
//! - [`notify`]: webhooks told of new reviews and grant requests.

pub mod api;
pub mod chain;
pub mod chain_keys;
pub mod console;
pub mod dedup;
pub mod envoy;
pub mod ingest;
pub mod notify;
pub mod record;
pub mod replay;
pub mod reviews;
pub mod secret_file;
pub mod store;
pub mod time;
