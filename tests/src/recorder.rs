//! The recorder service running in-process on loopback (SQLite in a given file), for tests
//! and `make run`, with a handle to query what it stored.

use scrim_recorder::ingest::{serve, Ingest, IngestConfig, SharedStore};
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::{Exchange, SessionQuery, SessionSummary};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub struct Recorder {
    pub addr: SocketAddr,
    pub db: PathBuf,
    store: SharedStore,
    stop: Option<oneshot::Sender<()>>,
}

impl Recorder {
    pub async fn start(listener: tokio::net::TcpListener, db: &Path) -> Result<Recorder, String> {
        let store = SqliteStore::open(db).map_err(|e| format!("recorder store {}: {e}", db.display()))?;
        let store: SharedStore = Arc::new(Mutex::new(store));
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let ingest = Ingest::new(store.clone(), IngestConfig::default());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = serve(listener, ingest, async {
                let _ = stopped.await;
            })
            .await;
        });
        Ok(Recorder { addr, db: db.to_path_buf(), store, stop: Some(stop) })
    }

    pub fn sessions(&self) -> Vec<SessionSummary> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.sessions(&SessionQuery::default()).unwrap_or_default()
    }

    pub fn session(&self, id: &str) -> Vec<Exchange> {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.session(id).unwrap_or_default()
    }

    /// Every stored exchange, in chain order.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.sessions().iter().flat_map(|s| self.session(&s.session_id)).collect()
    }

    /// Waits until an exchange with this id is stored (Envoy ships access logs in batches).
    pub async fn wait_for(&self, exchange_id: &str, limit: Duration) -> Option<Exchange> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(x) = self.exchanges().into_iter().find(|x| x.stored.record.exchange_id == exchange_id) {
                return Some(x);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `n` exchanges are stored.
    pub async fn wait_for_count(&self, n: usize, limit: Duration) -> Vec<Exchange> {
        let deadline = Instant::now() + limit;
        loop {
            let all = self.exchanges();
            if all.len() >= n || Instant::now() > deadline {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.stop();
    }
}
