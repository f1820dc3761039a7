//! The recorder service running in-process on loopback (a SQLite file or a PostgreSQL URL),
//! for tests and `make run`, with a handle to query what it stored. Ingest refuses streams
//! without the token Envoy is given ([`RecorderOptions::ingest_token`]).

use scrim_recorder::ingest::{serve, Ingest, IngestConfig, IngestStats, SharedStore, StatsSnapshot};
use scrim_recorder::api::{self, ApiConfig};
use scrim_recorder::chain_keys::ChainKeys;
use scrim_recorder::store;
use scrim_recorder::store::VerifyReport;
use scrim_recorder::store::{Exchange, SessionQuery, SessionSummary};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The recorder's HTTP API beside ingest: where it listens and how it is configured.
pub struct RecorderApi {
    pub listener: tokio::net::TcpListener,
    pub config: ApiConfig,
}

/// How the recorder runs besides its listeners.
#[derive(Clone, Default)]
pub struct RecorderOptions {
    pub ingest: IngestConfig,
    /// The bearer token every access-log stream must present (`None`: any stream is taken).
    pub ingest_token: Option<String>,
    /// Seal records (ingest and the API's review and grant events) with these keys.
    pub chain_keys: Option<Arc<ChainKeys>>,
}

pub struct Recorder {
    pub addr: SocketAddr,
    /// The HTTP API's address, when it serves one.
    pub api_addr: Option<SocketAddr>,
    api_config: Option<ApiConfig>,
    pub db: PathBuf,
    /// The `--db` argument: the SQLite path or the PostgreSQL URL.
    pub db_url: String,
    options: RecorderOptions,
    store: SharedStore,
    stats: Arc<IngestStats>,
    /// Dropping or sending on it ends the recorder's runtime.
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Recorder {
    /// Serves on `listener` from a runtime of its own, so `kill` can end every connection at
    /// once the way a crashed process would.
    pub async fn start(
        listener: tokio::net::TcpListener,
        db: &Path,
        options: RecorderOptions,
        api: Option<RecorderApi>,
    ) -> Result<Recorder, String> {
        Recorder::start_url(listener, &db.to_string_lossy(), options, api).await
    }

    /// As [`Recorder::start`] on any store `--db` accepts (a `postgres://` URL too).
    pub async fn start_url(
        listener: tokio::net::TcpListener,
        db: &str,
        options: RecorderOptions,
        api: Option<RecorderApi>,
    ) -> Result<Recorder, String> {
        let store = store::open_keyed(db, options.chain_keys.clone())
            .map_err(|e| format!("recorder store {db}: {e}"))?;
        let store: SharedStore = Arc::new(Mutex::new(store));
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let listener = listener.into_std().map_err(|e| e.to_string())?;
        let api_addr = match &api {
            Some(a) => Some(a.listener.local_addr().map_err(|e| e.to_string())?),
            None => None,
        };
        let api_config = api.as_ref().map(|a| a.config.clone());
        let api = match api {
            Some(a) => Some((a.listener.into_std().map_err(|e| e.to_string())?, a.config)),
            None => None,
        };
        let db_path = db.to_owned();
        let api_keys = options.chain_keys.clone();
        let mut ingest = Ingest::new(store.clone(), options.ingest);
        if let Some(token) = &options.ingest_token {
            ingest = ingest.with_token(token);
        }
        let stats = ingest.stats();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let thread = std::thread::spawn(move || {
            runtime.spawn(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                let _ = serve(listener, ingest, std::future::pending()).await;
            });
            if let Some((listener, config)) = api {
                runtime.spawn(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
                    let open: api::OpenStore =
                        Arc::new(move || store::open_keyed(&db_path, api_keys.clone()));
                    let api = api::Api::start(config, open).await;
                    let _ = api::serve(listener, api::router(api), std::future::pending()).await;
                });
            }
            let _ = killed.recv();
            runtime.shutdown_background();
        });
        Ok(Recorder {
            addr,
            api_addr,
            api_config,
            db: PathBuf::from(db),
            db_url: db.to_owned(),
            options,
            store,
            stats,
            kill: Some(kill),
            thread: Some(thread),
        })
    }

    /// Dies at once, as a crashed process would: every connection is cut, nothing beyond what
    /// was already committed is kept.
    pub fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// Starts again on the same address and database after `kill`.
    pub async fn restart(&mut self) -> Result<(), String> {
        self.kill();
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .map_err(|e| format!("rebind {}: {e}", self.addr))?;
        let api = match (self.api_addr, self.api_config.clone()) {
            (Some(addr), Some(config)) => Some(RecorderApi {
                listener: tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("rebind {addr}: {e}"))?,
                config,
            }),
            _ => None,
        };
        let db = self.db_url.clone();
        *self = Recorder::start_url(listener, &db, self.options.clone(), api).await?;
        Ok(())
    }

    /// The HTTP API's base URL (`http://127.0.0.1:port`).
    pub fn api_url(&self) -> String {
        self.api_addr.map(|a| format!("http://{a}")).unwrap_or_default()
    }

    /// What ingest counted since this (re)start: stored, rejected and why.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// Walks the chain with the recorder's keys.
    pub fn verify(&self) -> VerifyReport {
        let store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        store.verify().expect("verify runs")
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

    /// Waits until every one of these exchanges is stored; returns those still missing at the
    /// deadline (Envoy's workers ship their entries on separate streams, in no common order).
    pub async fn wait_for_all(&self, exchange_ids: &[String], limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let stored: std::collections::HashSet<String> =
                self.exchanges().into_iter().map(|x| x.stored.record.exchange_id).collect();
            let missing: Vec<String> = exchange_ids.iter().filter(|id| !stored.contains(*id)).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
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
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.kill();
    }
}
