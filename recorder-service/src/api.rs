//! The auditors' HTTP/JSON query API: authenticates each request with the gateway's own OIDC
//! verifier, scopes it to what the caller may see, logs it, and answers from the store. It
//! only reads records; the one thing it writes is the query log.
//!
//! - [`Api`] holds the verifier configuration, the issuers' keys ([`Keys`], inline or fetched
//!   over http or https and refreshed) and a small pool of store connections; [`router`] builds
//!   the service without a socket, [`serve`] runs it on a listener.
//! - Scope: members of the auditor group see everything; any other caller the configuration
//!   admits (`allowed_groups`) sees only exchanges whose subject is the token's `sub`, even
//!   inside a session id shared with someone else.
//! - Every request under `/v1/` (refused ones too) becomes a query-log row before it is
//!   answered; when that row cannot be written the query is not answered (fail closed).
//!   `/healthz` is not logged: probes would drown the log. It answers 200 only after a
//!   successful write to the store ([`crate::store::Store::probe_write`]).
//! - [`ApiError`] is this boundary's error; its `IntoResponse` is the one place that maps
//!   errors to statuses and the Anthropic error shape (token errors through the core's
//!   [`Reply`], so the gateway and the recorder refuse a token the same way).

use crate::store::{
    Exchange, ExchangeFilter, QueryLogEntry, SessionSummary, Store, StoreError, UserUsage,
};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use scrim_core::audit::Decision;
use scrim_core::auth::{self, AuthError, Verdict};
use scrim_core::config::{Config, KeySource, TokenSource};
use scrim_core::errors::{anthropic_error, Reply};
use scrim_core::jwks::KeySet;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Largest `limit` of `GET /v1/sessions`; a larger one is refused (400).
pub const MAX_LIMIT: u64 = 1000;
/// `limit` of `GET /v1/sessions` when none is given.
pub const DEFAULT_LIMIT: u64 = 50;

/// Who may query and who sees everything.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// The gateway's configuration format: `issuers`, `allowed_groups` (who may query at all),
    /// `groups_claim`, `leeway_seconds`, `jwks` timings; the rest is unused here.
    pub auth: Config,
    /// Members see every user's exchanges (and may query even when `allowed_groups` does not
    /// name this group); everyone else only their own.
    pub auditor_group: String,
    /// Certificates trusted for https `jwks_uri`s besides the system's roots (a private CA).
    pub jwks_roots: Vec<reqwest::Certificate>,
    /// Members decide reviews and grants (never their own).
    pub approver_group: String,
    /// The token the gateway's filter presents on the internal routes; `None` disables them.
    pub service_token: Option<String>,
    /// Longest just-in-time grant that may be asked for, in seconds.
    pub max_grant_seconds: u64,
    /// The web console under `/console` ([`crate::console`]); `None` serves none.
    pub console: Option<crate::console::ConsoleConfig>,
    /// Webhooks told of new reviews and grant requests ([`crate::notify`]).
    pub notifier: Option<crate::notify::Notifier>,
}

impl ApiConfig {
    /// Auditing only: no approvals, no grants.
    pub fn auditing(auth: Config, auditor_group: &str) -> ApiConfig {
        ApiConfig {
            auth,
            auditor_group: auditor_group.into(),
            jwks_roots: Vec::new(),
            approver_group: "approvers".into(),
            service_token: None,
            max_grant_seconds: 8 * 3600,
            console: None,
            notifier: None,
        }
    }
}

/// Opens one more connection to the store (the API keeps a few, apart from ingest's).
pub type OpenStore = Arc<dyn Fn() -> Result<Box<dyn Store>, StoreError> + Send + Sync>;

/// Why a request was not answered. Messages never carry record content or store internals.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// No, invalid or unauthorised token: the core's mapping (401, 403 or 503).
    #[error("{0}")]
    Auth(AuthError),
    /// A valid caller asking for what only auditors may see.
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The thing is not in a state that allows this (a review already decided, say).
    #[error("{0}")]
    Conflict(String),
    /// The store failed (logged in full; the client sees a generic message).
    #[error("audit store error: {0}")]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let refusal = match &self {
            ApiError::Auth(e) => Reply::from(e),
            ApiError::Forbidden(m) => anthropic_error(403, "permission_error", m, false),
            ApiError::BadRequest(m) => anthropic_error(400, "invalid_request_error", m, false),
            ApiError::NotFound(_) => {
                anthropic_error(404, "not_found_error", &self.to_string(), false)
            }
            ApiError::Conflict(m) => anthropic_error(409, "invalid_request_error", m, false),
            ApiError::Store(e) => {
                log::error!("query failed: {e}");
                anthropic_error(
                    500,
                    "api_error",
                    "the audit store failed; see the recorder's log",
                    true,
                )
            }
        };
        let mut response = Response::new(Body::from(refusal.body));
        *response.status_mut() = StatusCode::from_u16(refusal.status as u16)
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        for (name, value) in refusal.headers {
            if let Ok(value) = value.parse() {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// The verified caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subject: String,
    /// Member of the auditor group: sees every user's exchanges.
    pub auditor: bool,
    pub issuer: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
}

/// The signing keys of each configured issuer (`sets[i]` for `config.issuers[i]`), inline
/// ones fixed, fetched ones replaced on refresh.
pub struct Keys {
    sets: RwLock<Vec<Option<KeySet>>>,
    /// When each issuer's keys were last fetched (rate limit for unknown-`kid` refetches).
    fetched_at: Mutex<Vec<Option<Instant>>>,
    http: reqwest::Client,
}

impl Keys {
    fn new(config: &Config, roots: &[reqwest::Certificate]) -> Keys {
        let sets = config
            .issuers
            .iter()
            .map(|i| match &i.keys {
                KeySource::Inline(set) => Some(set.clone()),
                KeySource::Remote(_) => None,
            })
            .collect();
        Keys {
            sets: RwLock::new(sets),
            fetched_at: Mutex::new(vec![None; config.issuers.len()]),
            http: roots
                .iter()
                .fold(reqwest::Client::builder(), |b, root| b.add_root_certificate(root.clone()))
                .timeout(Duration::from_millis(config.jwks.fetch_timeout_ms))
                .build()
                .expect("http client with the system's roots builds"),
        }
    }

    /// Fetches issuer `i`'s JWKS (a no-op for inline keys); keeps the old keys on failure.
    async fn fetch(&self, config: &Config, i: usize) -> Result<(), String> {
        let KeySource::Remote(endpoint) = &config.issuers[i].keys else {
            return Ok(());
        };
        self.fetched_at.lock().expect("lock")[i] = Some(Instant::now());
        let url = format!(
            "{}://{}{}",
            endpoint.scheme, endpoint.authority, endpoint.path
        );
        let result = async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("status {}", response.status()));
            }
            let body = response.bytes().await.map_err(|e| e.to_string())?;
            KeySet::parse(&body).map_err(|e| e.to_string())
        }
        .await
        .map_err(|e| format!("JWKS of `{}` from {url}: {e}", config.issuers[i].issuer))?;
        self.sets.write().expect("lock")[i] = Some(result);
        Ok(())
    }

    /// Fetches every remote issuer; true when all succeeded.
    async fn fetch_all(&self, config: &Config) -> bool {
        let mut ok = true;
        for i in 0..config.issuers.len() {
            if let Err(e) = self.fetch(config, i).await {
                log::warn!("{e}");
                ok = false;
            }
        }
        ok
    }

    /// Whether an unknown `kid` may trigger a fetch of issuer `i` now.
    fn may_refetch(&self, config: &Config, i: usize) -> bool {
        let gap = Duration::from_secs(config.jwks.unknown_kid_refetch_seconds);
        self.fetched_at.lock().expect("lock")[i].is_none_or(|t| t.elapsed() >= gap)
    }
}

/// A few idle store connections; queries run on blocking threads (the store is synchronous).
pub(crate) struct Pool {
    open: OpenStore,
    idle: Mutex<Vec<Box<dyn Store>>>,
}

impl Pool {
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = pool.idle.lock().expect("lock").pop();
            let mut store = match taken {
                Some(s) => s,
                None => (pool.open)()?,
            };
            let result = f(&mut *store);
            // A connection whose query failed is dropped rather than reused.
            if result.is_ok() {
                pool.idle.lock().expect("lock").push(store);
            }
            result
        })
        .await
        .expect("store task does not panic")
    }
}

struct Inner {
    /// Woken whenever a review or grant is decided (long polls re-read).
    decided: tokio::sync::Notify,
    /// Serialises read-modify-write of reviews and grants.
    write_lock: tokio::sync::Mutex<()>,
    config: ApiConfig,
    keys: Arc<Keys>,
    pool: Arc<Pool>,
    refresher: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(task) = &self.refresher {
            task.abort();
        }
    }
}

/// The API's shared state; cheap to clone.
#[derive(Clone)]
pub struct Api(Arc<Inner>);

impl Api {
    /// Fetches remote issuers' keys once (a failure is logged; those tokens get 503 until a
    /// later fetch succeeds) and starts refreshing them every `jwks.refresh_seconds` (every
    /// `jwks.retry_seconds` while one is failing). Needs a Tokio runtime.
    pub async fn start(config: ApiConfig, open: OpenStore) -> Api {
        let keys = Arc::new(Keys::new(&config.auth, &config.jwks_roots));
        let remote = config
            .auth
            .issuers
            .iter()
            .any(|i| matches!(i.keys, KeySource::Remote(_)));
        let refresher = if remote {
            let all_ok = keys.fetch_all(&config.auth).await;
            let (keys, auth) = (keys.clone(), config.auth.clone());
            Some(tokio::spawn(async move {
                let mut ok = all_ok;
                loop {
                    let wait = if ok {
                        auth.jwks.refresh_seconds
                    } else {
                        auth.jwks.retry_seconds
                    };
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    ok = keys.fetch_all(&auth).await;
                }
            }))
        } else {
            None
        };
        Api(Arc::new(Inner {
            decided: tokio::sync::Notify::new(),
            write_lock: tokio::sync::Mutex::new(()),
            config,
            keys,
            pool: Arc::new(Pool {
                open,
                idle: Mutex::new(Vec::new()),
            }),
            refresher,
        }))
    }

    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.0.pool
    }

    pub(crate) fn decided(&self) -> &tokio::sync::Notify {
        &self.0.decided
    }

    pub(crate) async fn write_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.0.write_lock.lock().await
    }

    pub(crate) fn service_token(&self) -> Option<&str> {
        self.0.config.service_token.as_deref()
    }

    pub(crate) fn max_grant_seconds(&self) -> u64 {
        self.0.config.max_grant_seconds
    }

    pub(crate) fn notifier(&self) -> Option<&crate::notify::Notifier> {
        self.0.config.notifier.as_ref()
    }

    pub(crate) fn is_approver(&self, caller: &Caller) -> bool {
        caller.groups.contains(&self.0.config.approver_group)
    }

    /// Verifies the `Authorization: Bearer` token and decides the caller's scope: auditors,
    /// approvers and the allowed groups may query.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let caller = self.identify(headers).await?;
        let config = &self.0.config;
        // Auditors and approvers may query whatever `allowed_groups` says; everyone else
        // needs one of them.
        if !caller.auditor && !caller.groups.contains(&config.approver_group) {
            let identity = auth::Identity {
                subject: caller.subject.clone(),
                email: caller.email.clone(),
                issuer: caller.issuer.clone(),
                groups: caller.groups.clone(),
                expires_at: 0,
            };
            auth::authorize(&config.auth, &identity)?;
        }
        Ok(caller)
    }

    /// Verifies the token without asking for a permitted group (grant requests come from
    /// callers outside them).
    pub async fn identify(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let config = &self.0.config;
        let authorization = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let token = auth::extract_token(&[TokenSource::Authorization], authorization, None)
            .ok_or(AuthError::MissingToken)?;
        let mut refetched = false;
        let identity = loop {
            let verdict = {
                let sets = self.0.keys.sets.read().expect("lock");
                auth::verify(&config.auth, &sets, token, now_ms() as u64 / 1000)
            };
            match verdict {
                Verdict::Verified(identity) => break identity,
                Verdict::Rejected(e) => return Err(e),
                Verdict::NeedKeys {
                    issuer_index,
                    error,
                } => {
                    let remote =
                        matches!(config.auth.issuers[issuer_index].keys, KeySource::Remote(_));
                    if refetched || !remote || !self.0.keys.may_refetch(&config.auth, issuer_index)
                    {
                        return Err(error);
                    }
                    refetched = true;
                    if let Err(e) = self.0.keys.fetch(&config.auth, issuer_index).await {
                        log::warn!("{e}");
                    }
                }
            }
        };
        Ok(Caller {
            auditor: identity.groups.contains(&config.auditor_group),
            subject: identity.subject,
            issuer: identity.issuer,
            email: identity.email,
            groups: identity.groups,
        })
    }
}

/// Milliseconds since the Unix epoch: the API is the host side, where the clock is read.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The routes, ready to serve (tests call it without a socket too).
pub fn router(api: Api) -> Router {
    let v1 = Router::new()
        .route("/v1/sessions", get(list_sessions))
        .route("/v1/sessions/{id}", get(show_session))
        .route("/v1/exchanges/{id}", get(show_exchange))
        .route("/v1/usage", get(usage))
        .route("/v1/export", get(export))
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard));
    let approvals = crate::reviews::approver_routes()
        .layer(axum::middleware::from_fn_with_state(api.clone(), guard_identified));
    let console = api.0.config.console.clone();
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .merge(v1)
        .merge(approvals)
        .merge(crate::reviews::internal_routes())
        .with_state(api.clone());
    // The web console calls the routes above in-process, with the signed-in person's token.
    match console {
        Some(config) => routes.clone().merge(crate::console::router(config, api, routes)),
        None => routes,
    }
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Authenticates, runs the handler with the [`Caller`], and logs the query with its status.
async fn guard(State(api): State<Api>, request: Request, next: Next) -> Response {
    guarded(api, request, next, true).await
}

/// As [`guard`], for routes open to any verified caller (grant requests, own reviews).
async fn guard_identified(State(api): State<Api>, request: Request, next: Next) -> Response {
    guarded(api, request, next, false).await
}

async fn guarded(api: Api, mut request: Request, next: Next, need_group: bool) -> Response {
    let method = request.method().to_string();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let caller = if need_group {
        api.authenticate(request.headers()).await
    } else {
        api.identify(request.headers()).await
    };
    let (response, subject, auditor) = match caller {
        Ok(caller) => {
            let (subject, auditor) = (caller.subject.clone(), caller.auditor);
            request.extensions_mut().insert(caller);
            (next.run(request).await, Some(subject), auditor)
        }
        Err(e) => {
            let subject = match &e {
                AuthError::NoPermittedGroup { subject } => Some(subject.clone()),
                _ => None,
            };
            (ApiError::Auth(e).into_response(), subject, false)
        }
    };
    let entry = QueryLogEntry {
        at_ms: now_ms(),
        subject,
        auditor,
        method,
        path,
        query,
        status: response.status().as_u16(),
    };
    match api.0.pool.run(move |s| s.log_query(&entry)).await {
        Ok(()) => response,
        // An unlogged query is not answered (a streamed export stops with the response).
        Err(e) => ApiError::Store(e).into_response(),
    }
}

/// `200` only when the store can write now: the filter's `audit.required` asks this before
/// serving, so a store that answers reads but cannot commit (read-only or full disk, database
/// down) stops new exchanges instead of losing their records.
async fn healthz(State(api): State<Api>) -> Response {
    let now = now_ms();
    match api.0.pool.run(move |s| s.probe_write(now)).await {
        Ok(_) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => {
            log::warn!("health check: {e}");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n").into_response()
        }
    }
}

/// Filters shared by sessions, usage and export (epoch milliseconds for times).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterParams {
    /// Subject (`sub`); non-auditors may only name themselves.
    user: Option<String>,
    group: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
    model: Option<String>,
    decision: Option<Decision>,
    rule: Option<String>,
    /// Only for `GET /v1/sessions`.
    limit: Option<u64>,
    /// Only for `GET /v1/sessions`: the `next_before` of the previous page.
    before: Option<i64>,
}

impl FilterParams {
    /// The store filter for `caller`: a non-auditor is pinned to their own subject.
    fn scoped(self, caller: &Caller) -> Result<(ExchangeFilter, Option<u64>), ApiError> {
        let subject = match (caller.auditor, self.user) {
            (true, user) => user,
            (false, Some(user)) if user != caller.subject => {
                return Err(ApiError::Forbidden(
                    "only members of the auditor group may query other users",
                ))
            }
            (false, _) => Some(caller.subject.clone()),
        };
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(ApiError::BadRequest("`from` is after `to`".into()));
            }
        }
        let filter = ExchangeFilter {
            subject,
            group: self.group,
            from_ms: self.from,
            to_ms: self.to,
            model: self.model,
            decision: self.decision.map(|d| d.as_str().to_owned()),
            rule: self.rule,
        };
        Ok((filter, self.limit))
    }
}

fn params(q: Result<Query<FilterParams>, QueryRejection>) -> Result<FilterParams, ApiError> {
    q.map(|Query(p)| p)
        .map_err(|e| ApiError::BadRequest(format!("query parameters: {}", e.body_text())))
}

/// Whether `caller` may see this exchange: an auditor, or the same subject *of the same
/// issuer* (two identity providers may both have a user `alice`).
fn visible(caller: &Caller, ex: &Exchange) -> bool {
    caller.auditor
        || ex
            .stored
            .record
            .user
            .as_ref()
            .is_some_and(|u| u.subject == caller.subject && u.issuer == caller.issuer)
}

#[derive(Serialize)]
struct SessionList {
    data: Vec<SessionSummary>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_before: Option<i64>,
}

async fn list_sessions(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<SessionList>, ApiError> {
    let params = params(q)?;
    let before = params.before;
    let (filter, limit) = params.scoped(&caller)?;
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let data = api
        .0
        .pool
        .run(move |s| s.find_sessions(&filter, limit, before))
        .await?;
    let full = data.len() as u64 == limit;
    let next_before = full.then(|| data.last().map(|s| s.last_seq)).flatten();
    Ok(Json(SessionList { data, next_before }))
}

#[derive(Serialize)]
struct SessionView {
    session_id: String,
    exchanges: Vec<Exchange>,
}

async fn show_session(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let sid = id.clone();
    let mut exchanges = api.0.pool.run(move |s| s.session(&sid)).await?;
    exchanges.retain(|ex| visible(&caller, ex));
    // Someone else's session looks exactly like an unknown one.
    if exchanges.is_empty() {
        return Err(ApiError::NotFound("session"));
    }
    Ok(Json(SessionView {
        session_id: id,
        exchanges,
    }))
}

async fn show_exchange(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Exchange>, ApiError> {
    let found = api.0.pool.run(move |s| s.exchange(&id)).await?;
    found
        .into_iter()
        .find(|ex| visible(&caller, ex))
        .map(Json)
        .ok_or(ApiError::NotFound("exchange"))
}

#[derive(Serialize)]
struct UsageReport {
    from: Option<i64>,
    to: Option<i64>,
    data: Vec<UserUsage>,
}

async fn usage(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Json<UsageReport>, ApiError> {
    let (filter, _) = params(q)?.scoped(&caller)?;
    let (from, to) = (filter.from_ms, filter.to_ms);
    let data = api.0.pool.run(move |s| s.usage_by_user(&filter)).await?;
    Ok(Json(UsageReport { from, to, data }))
}

/// Matching exchanges as JSON Lines in chain order, streamed as the store walks them.
async fn export(
    State(api): State<Api>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<FilterParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let (filter, _) = params(q)?.scoped(&caller)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let pool = api.0.pool.clone();
    tokio::spawn(async move {
        let failed = tx.clone();
        let walked = pool
            .run(move |s| {
                let mut client_gone = false;
                let walked = s.for_each(&mut |ex| {
                    if filter.matches(&ex) {
                        let mut line = serde_json::to_vec(&ex).expect("exchange serialises");
                        line.push(b'\n');
                        if tx.blocking_send(Ok(Bytes::from(line))).is_err() {
                            // `for_each` stops only on an error; this one never leaves here.
                            client_gone = true;
                            return Err(StoreError::Unsupported("export to a closed client"));
                        }
                    }
                    Ok(())
                });
                if client_gone {
                    Ok(())
                } else {
                    walked
                }
            })
            .await;
        if let Err(e) = walked {
            log::warn!("export stopped: {e}");
            // Cut the body short so the client sees an incomplete transfer, not a clean end.
            failed
                .send(Err(std::io::Error::other("export failed")))
                .await
                .ok();
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([("content-type", "application/x-ndjson")], body).into_response())
}
