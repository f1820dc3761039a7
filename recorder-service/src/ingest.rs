//! The gRPC `AccessLogService` that Envoy's `envoy.access_loggers.http_grpc` streams to.
//!
//! Each message's entries are extracted ([`crate::envoy::extract`]) and the good ones appended
//! to the store in one transaction (together with any messages already waiting on the same
//! stream), and only then is the stream read again: when the handler returns, everything it
//! received has been committed. Rejected entries are counted in
//! [`IngestStats`] and logged; ingestion goes on. A store failure ends the stream with
//! `UNAVAILABLE` so Envoy reconnects instead of believing the batch was taken.
//!
//! Every stream must carry `authorization: Bearer <ingest token>` in its initial metadata
//! (Envoy's `grpc_service.initial_metadata`) when a token is configured ([`Ingest::with_token`]);
//! a stream without it is refused with `UNAUTHENTICATED` before any of its entries is read,
//! counted in [`IngestStats::unauthenticated`] and logged with the peer's address.
//!
//! Envoy's protocol has no acknowledgement: entries sent while the recorder is down, or in a
//! batch whose commit failed, are lost (the filter's `audit.required` mode is the answer).

use crate::envoy::{self, Reject};
use crate::record::StoredRecord;
use crate::store::Store;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{
    StreamAccessLogsMessage, StreamAccessLogsResponse,
};
use serde::Serialize;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// Limits of the ingest side.
#[derive(Debug, Clone, Copy)]
pub struct IngestConfig {
    /// Largest audit record accepted; larger ones are counted as oversized and dropped.
    pub max_record_bytes: usize,
    /// Largest gRPC message (a batch of entries) decoded. Above tonic's 4 MiB default because
    /// one entry can carry a whole agent conversation; a larger message ends that stream.
    pub max_message_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_record_bytes: 16 << 20,
            max_message_bytes: 64 << 20,
        }
    }
}

/// Counters since start.
#[derive(Debug, Default)]
pub struct IngestStats {
    pub messages: AtomicU64,
    pub stored: AtomicU64,
    pub missing_record: AtomicU64,
    pub malformed: AtomicU64,
    pub oversized: AtomicU64,
    /// TCP access-log entries (not ours) that were ignored.
    pub ignored: AtomicU64,
    pub store_failures: AtomicU64,
    /// Streams refused for a missing or wrong ingest token (none of their entries is read).
    pub unauthenticated: AtomicU64,
}

/// A copy of [`IngestStats`] at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub messages: u64,
    pub stored: u64,
    pub missing_record: u64,
    pub malformed: u64,
    pub oversized: u64,
    pub ignored: u64,
    pub store_failures: u64,
    pub unauthenticated: u64,
}

impl IngestStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            messages: g(&self.messages),
            stored: g(&self.stored),
            missing_record: g(&self.missing_record),
            malformed: g(&self.malformed),
            oversized: g(&self.oversized),
            ignored: g(&self.ignored),
            store_failures: g(&self.store_failures),
            unauthenticated: g(&self.unauthenticated),
        }
    }
}

pub type SharedStore = Arc<Mutex<dyn Store>>;

/// The service implementation; cheap to clone.
#[derive(Clone)]
pub struct Ingest {
    store: SharedStore,
    stats: Arc<IngestStats>,
    config: IngestConfig,
    /// The bearer token every stream must present; `None` accepts any stream (library
    /// tests only: `serve` refuses to start without one).
    token: Option<Arc<str>>,
}

impl Ingest {
    pub fn new(store: SharedStore, config: IngestConfig) -> Self {
        Ingest {
            store,
            stats: Arc::default(),
            config,
            token: None,
        }
    }

    /// Refuses every stream that does not present `authorization: Bearer <token>`.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Whether the stream's metadata carries the configured token.
    fn authorised<T>(&self, request: &Request<T>) -> bool {
        let Some(expected) = &self.token else {
            return true;
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        crate::secret_file::same_secret(given.as_bytes(), expected.as_bytes())
    }

    pub fn stats(&self) -> Arc<IngestStats> {
        self.stats.clone()
    }

    /// The tonic service with the raised decoding limit, ready to add to a server.
    pub fn into_service(self) -> AccessLogServiceServer<Ingest> {
        let max = self.config.max_message_bytes;
        AccessLogServiceServer::new(self).max_decoding_message_size(max)
    }

    /// Extracts the storable records of one message, counting the rest.
    fn batch(&self, message: StreamAccessLogsMessage) -> Vec<StoredRecord> {
        self.stats.messages.fetch_add(1, Ordering::Relaxed);
        let entries = match message.log_entries {
            Some(LogEntries::HttpLogs(h)) => h.log_entry,
            Some(LogEntries::TcpLogs(t)) => {
                self.stats
                    .ignored
                    .fetch_add(t.log_entry.len() as u64, Ordering::Relaxed);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        let mut batch = Vec::with_capacity(entries.len());
        for entry in &entries {
            match envoy::extract(entry, self.config.max_record_bytes) {
                Ok(stored) => batch.push(stored),
                Err(reject) => {
                    let counter = match reject {
                        Reject::MissingRecord => &self.stats.missing_record,
                        Reject::Oversized { .. } => &self.stats.oversized,
                        Reject::Malformed(_) => &self.stats.malformed,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    let request_id = entry
                        .request
                        .as_ref()
                        .map(|r| r.request_id.as_str())
                        .unwrap_or("");
                    log::warn!("rejected access-log entry (request id {request_id:?}): {reject}");
                }
            }
        }
        batch
    }

    async fn commit(&self, batch: Vec<StoredRecord>) -> Result<(), Status> {
        let n = batch.len() as u64;
        let store = self.store.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut store = store
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            store.append(&batch)
        })
        .await;
        match result {
            Ok(Ok(())) => {
                self.stats.stored.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Ok(Err(e)) => {
                self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("store append failed, closing the stream: {e}");
                Err(Status::unavailable("recorder store unavailable"))
            }
            Err(join) => {
                self.stats.store_failures.fetch_add(1, Ordering::Relaxed);
                log::error!("store append task failed: {join}");
                Err(Status::internal("recorder store task failed"))
            }
        }
    }
}

#[tonic::async_trait]
impl AccessLogService for Ingest {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        if !self.authorised(&request) {
            self.stats.unauthenticated.fetch_add(1, Ordering::Relaxed);
            let peer = request
                .remote_addr()
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unknown peer".into());
            log::warn!("refused an access-log stream from {peer}: missing or wrong ingest token");
            return Err(Status::unauthenticated("ingest token required"));
        }
        let mut stream = request.into_inner();
        while let Some(message) = stream.message().await? {
            let mut batch = self.batch(message);
            // Group commit: messages that arrived while the last commit ran join this one, so
            // a backlog costs one fsync per group instead of one per message.
            while batch.len() < MAX_GROUP_RECORDS {
                match ready_message(&mut stream).await {
                    Some(Ok(message)) => batch.extend(self.batch(message)),
                    Some(Err(status)) => {
                        // Keep what already arrived, then end the stream with the error.
                        if !batch.is_empty() {
                            self.commit(batch).await?;
                        }
                        return Err(status);
                    }
                    None => break,
                }
            }
            if !batch.is_empty() {
                self.commit(batch).await?;
            }
        }
        Ok(Response::new(StreamAccessLogsResponse {}))
    }
}

/// Most records committed in one transaction.
const MAX_GROUP_RECORDS: usize = 1000;

/// The next message if one is already decoded or buffered, without waiting for the network.
/// `None` also when the stream ended (the outer loop then sees the end).
async fn ready_message(
    stream: &mut Streaming<StreamAccessLogsMessage>,
) -> Option<Result<StreamAccessLogsMessage, Status>> {
    use tokio_stream::Stream;
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut *stream).poll_next(cx) {
        std::task::Poll::Ready(Some(item)) => std::task::Poll::Ready(Some(item)),
        std::task::Poll::Ready(None) | std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

/// Serves the ingest service on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    ingest: Ingest,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ingest.into_service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
}
