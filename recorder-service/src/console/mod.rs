//! The web console for auditors and approvers, served by the recorder beside its API: browser
//! sign-in (authorization code + PKCE against the configured issuer), a cookie session, and
//! pages (plain HTML/JS/CSS embedded at compile time) that read and act through the API's own
//! routes.
//!
//! - [`oidc`]: discovery, the authorization request and the code exchange (PKCE S256).
//! - [`sessions`]: signed-in browsers and logins under way, each with its CSRF token.
//! - [`svg`]: the usage chart, rendered here as SVG (no script library).
//!
//! What a signed-in person may see and do is exactly what the API lets their token do: every
//! page's data comes from calling the API's router in-process with the session's bearer token
//! (so the API's scoping, refusals and query log apply unchanged). The console adds only:
//! the session cookie (HttpOnly, SameSite=Strict, Secure when the console URL is https), a
//! synchronizer CSRF token required on every state-changing request (and a same-origin check
//! of `Origin`), a strict Content-Security-Policy on every response, and two views the API
//! has no route for: the chain's verify report (auditors only, logged like a query) and a
//! live change feed (server-sent events) for the review queue.

pub mod oidc;
pub mod sessions;
pub mod svg;

use crate::api::{Api, ApiError, Caller};
use crate::record::StoredRecord;
use crate::store::{Exchange, QueryLogEntry};
use axum::body::Body;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sessions::{Session, Sessions};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "scrim_console";
/// Name of the cookie that ties a login under way to the browser that started it.
pub const LOGIN_COOKIE: &str = "scrim_console_login";
/// Header that carries the session's CSRF token on state-changing requests.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Largest request body the console forwards to the API (decisions and grant requests are
/// a few hundred bytes).
const MAX_FORWARD_BYTES: usize = 64 * 1024;

/// Sent with every console response: scripts, styles, images and fetches only from the
/// recorder itself, no inline script or style, never framed.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
frame-ancestors 'none'";

/// How the console signs people in.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// Where browsers reach the recorder's HTTP listener (`https://audit.example.com`, no
    /// path); the redirect URI registered with the identity provider is
    /// `<public_url>/console/callback`. https makes the session cookie `Secure`.
    pub public_url: String,
    /// The identity provider's issuer; its discovery document is read from
    /// `<issuer>/.well-known/openid-configuration` at the first sign-in.
    pub issuer: String,
    /// The console's client id at the identity provider (a public client: PKCE, no secret).
    pub client_id: String,
    /// Scopes asked for.
    pub scopes: String,
    /// Longest a browser session lasts; it also ends when its token expires.
    pub session_max_seconds: u64,
}

impl ConsoleConfig {
    /// Checks the URLs; `public_url` loses a trailing slash.
    pub fn new(public_url: &str, issuer: &str, client_id: &str) -> Result<ConsoleConfig, String> {
        let public_url = public_url.trim_end_matches('/').to_owned();
        let origin_only = public_url
            .split_once("://")
            .is_some_and(|(scheme, rest)| matches!(scheme, "http" | "https") && !rest.is_empty() && !rest.contains('/'));
        if !origin_only {
            return Err(format!("console URL `{public_url}`: expected http(s)://host[:port] without a path"));
        }
        if !(issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(format!("console issuer `{issuer}`: expected an http(s) URL"));
        }
        if client_id.is_empty() {
            return Err("console client id is empty".into());
        }
        Ok(ConsoleConfig {
            public_url,
            issuer: issuer.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            scopes: "openid email profile".into(),
            session_max_seconds: 8 * 3600,
        })
    }

    fn secure(&self) -> bool {
        self.public_url.starts_with("https://")
    }

    pub fn redirect_uri(&self) -> String {
        format!("{}/console/callback", self.public_url)
    }

    /// The console's start page.
    pub fn url(&self) -> String {
        format!("{}/console/", self.public_url)
    }
}

struct Inner {
    config: ConsoleConfig,
    api: Api,
    /// The API's routes, called in-process with the session's token.
    routes: Router,
    sessions: Sessions,
    oidc: oidc::Client,
}

#[derive(Clone)]
struct Console(Arc<Inner>);

/// The console's routes under `/console`; `routes` are the API's routes it calls.
pub fn router(config: ConsoleConfig, api: Api, routes: Router) -> Router {
    let console = Console(Arc::new(Inner {
        oidc: oidc::Client::new(&config.issuer),
        config,
        api,
        routes,
        sessions: Sessions::default(),
    }));
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/console/login", get(login))
        .route("/console/callback", get(callback))
        .route("/console/logout", post(logout))
        .route("/console/api/me", get(me))
        .route("/console/api/replay/{id}", get(replay))
        .route("/console/api/chain", get(chain))
        .route("/console/api/events", get(events))
        .route("/console/usage.svg", get(usage_svg))
        .route("/console/api/v1/{*rest}", any(forward))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(console)
}

async fn security_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CONTENT_SECURITY_POLICY));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// A console refusal in the API's error shape.
fn refuse(status: u16, kind: &str, message: &str) -> Response {
    let r = scrim_core::errors::anthropic_error(status as u32, kind, message, false);
    let mut response = Response::new(Body::from(r.body));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn not_signed_in() -> Response {
    refuse(401, "authentication_error", "not signed in (or the session ended): sign in again")
}

fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

fn set_cookie(config: &ConsoleConfig, name: &str, value: &str, same_site: &str, path: &str, max_age: u64) -> HeaderValue {
    let secure = if config.secure() { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite={same_site}; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are url-safe")
}

impl Console {
    /// The browser's session, if it has a live one.
    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, SESSION_COOKIE)?;
        self.0.sessions.get(&id, crate::time::now_ms())
    }

    /// The session of a state-changing request: also needs the CSRF token, and an `Origin`
    /// (browsers send it on such requests) that is the console's own.
    fn session_for_change(&self, headers: &HeaderMap) -> Result<Session, Response> {
        let session = self.session(headers).ok_or_else(not_signed_in)?;
        if let Some(origin) = headers.get(header::ORIGIN) {
            if origin.as_bytes() != self.0.config.public_url.as_bytes() {
                return Err(refuse(403, "permission_error", "cross-origin request refused"));
            }
        }
        let given = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
        if !sessions::same_secret(given, &session.csrf) {
            return Err(refuse(403, "permission_error", "missing or wrong CSRF token (reload the page)"));
        }
        Ok(session)
    }

    /// Calls one of the API's routes with the session's token.
    async fn call(&self, session: &Session, method: Method, path_and_query: &str, body: Body, content_type: Option<HeaderValue>) -> Response {
        let mut request = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::AUTHORIZATION, format!("Bearer {}", session.token));
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let request = match request.body(body) {
            Ok(r) => r,
            Err(_) => return refuse(400, "invalid_request_error", "bad path"),
        };
        match self.0.routes.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    /// GET an API route and read its JSON; a refusal is passed on as it is.
    async fn get_json(&self, session: &Session, path_and_query: &str) -> Result<Value, Response> {
        let response = self.call(session, Method::GET, path_and_query, Body::empty(), None).await;
        if response.status() != StatusCode::OK {
            return Err(response);
        }
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .map_err(|_| refuse(502, "api_error", "the API's answer could not be read"))?;
        serde_json::from_slice(&bytes).map_err(|_| refuse(502, "api_error", "the API's answer is not JSON"))
    }

    /// The caller behind the session, as the API sees their token now.
    async fn caller(&self, session: &Session) -> Result<Caller, Response> {
        let mut headers = HeaderMap::new();
        let bearer = HeaderValue::from_str(&format!("Bearer {}", session.token)).map_err(|_| not_signed_in())?;
        headers.insert(header::AUTHORIZATION, bearer);
        self.0.api.authenticate(&headers).await.map_err(|e| ApiError::Auth(e).into_response())
    }
}

/// Starts a sign-in: a fresh state and PKCE verifier, remembered for ten minutes and tied to
/// this browser by a cookie, then off to the identity provider.
async fn login(State(c): State<Console>) -> Response {
    let discovery = match c.0.oidc.discovery().await {
        Ok(d) => d,
        Err(e) => {
            log::warn!("console sign-in: {e}");
            return refuse(503, "api_error", "the identity provider cannot be reached; try again");
        }
    };
    let now = crate::time::now_ms();
    let pending = c.0.sessions.start_login(now);
    let url = oidc::authorization_url(&discovery, &c.0.config, &pending);
    let mut response = Redirect::to(&url).into_response();
    // Lax, not Strict: the identity provider's redirect back is a cross-site navigation.
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&c.0.config, LOGIN_COOKIE, &pending.binding, "Lax", "/console/callback", 600),
    );
    response
}

#[derive(Deserialize)]
struct CallbackParams {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// The identity provider's redirect back: the state must be one this browser started, the
/// code is exchanged with its verifier, and the token must pass the API's own check.
async fn callback(State(c): State<Console>, headers: HeaderMap, Query(p): Query<CallbackParams>) -> Response {
    if let Some(error) = p.error {
        return signed_in_page(&format!("The identity provider refused the sign-in: {}", html_escape(&error)), None);
    }
    let (Some(code), Some(state)) = (p.code, p.state) else {
        return refuse(400, "invalid_request_error", "code and state are required");
    };
    let binding = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    let now = crate::time::now_ms();
    let Some(pending) = c.0.sessions.finish_login(&state, &binding, now) else {
        return refuse(400, "invalid_request_error", "unknown or expired sign-in; start again");
    };
    let discovery = match c.0.oidc.discovery().await {
        Ok(d) => d,
        Err(e) => {
            log::warn!("console sign-in: {e}");
            return refuse(503, "api_error", "the identity provider cannot be reached; try again");
        }
    };
    let token = match c.0.oidc.exchange(&discovery, &c.0.config, &code, &pending.verifier).await {
        Ok(t) => t,
        Err(e) => {
            log::warn!("console sign-in: {e}");
            return refuse(401, "authentication_error", "the identity provider did not issue a token");
        }
    };
    let mut bearer = HeaderMap::new();
    let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return refuse(401, "authentication_error", "unusable token");
    };
    bearer.insert(header::AUTHORIZATION, value);
    let caller = match c.0.api.identify(&bearer).await {
        Ok(caller) => caller,
        Err(e) => return ApiError::Auth(e).into_response(),
    };
    let expires_ms = oidc::token_expiry_ms(&token)
        .unwrap_or(i64::MAX)
        .min(now + c.0.config.session_max_seconds as i64 * 1000);
    let approver = c.0.api.is_approver(&caller);
    let (id, _) = c.0.sessions.create(token, caller, approver, expires_ms, now);
    let max_age = ((expires_ms - now) / 1000).max(0) as u64;
    // A page that moves on by itself, rather than a redirect: this response ends a cross-site
    // navigation, and a SameSite=Strict cookie is only sent once the navigation starts here.
    let mut response = signed_in_page("Signed in.", Some("/console/"));
    let h = response.headers_mut();
    h.append(header::SET_COOKIE, set_cookie(&c.0.config, SESSION_COOKIE, &id, "Strict", "/console", max_age));
    h.append(header::SET_COOKIE, set_cookie(&c.0.config, LOGIN_COOKIE, "", "Lax", "/console/callback", 0));
    response
}

fn signed_in_page(message: &str, next: Option<&str>) -> Response {
    let refresh = next
        .map(|n| format!(r#"<meta http-equiv="refresh" content="0;url={n}">"#))
        .unwrap_or_default();
    let link = next.map(|n| format!(r#" <a href="{n}">Continue</a>"#)).unwrap_or_else(|| r#" <a href="/console/login">Try again</a>"#.into());
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">{refresh}<title>Scrim console</title>\
<link rel=\"stylesheet\" href=\"/console/app.css\"></head><body><main><p>{message}{link}</p></main></body></html>"
    );
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

async fn logout(State(c): State<Console>, headers: HeaderMap) -> Response {
    if let Err(refusal) = c.session_for_change(&headers) {
        return refusal;
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        c.0.sessions.remove(&id);
    }
    let mut response = Json(json!({"signed_out": true})).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, set_cookie(&c.0.config, SESSION_COOKIE, "", "Strict", "/console", 0));
    response
}

/// Who is signed in, what the console may offer them, and the CSRF token for their changes.
async fn me(State(c): State<Console>, headers: HeaderMap) -> Response {
    let Some(s) = c.session(&headers) else {
        return not_signed_in();
    };
    Json(json!({
        "subject": s.caller.subject,
        "email": s.caller.email,
        "groups": s.caller.groups,
        "auditor": s.caller.auditor,
        "approver": s.approver,
        "csrf": s.csrf,
        "expires_at_ms": s.expires_ms,
        "console_url": c.0.config.url(),
    }))
    .into_response()
}

/// `/console/api/v1/...` → the API's `/v1/...` with the session's token; changes need CSRF.
async fn forward(State(c): State<Console>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let safe = matches!(parts.method, Method::GET | Method::HEAD);
    let session = if safe {
        match c.session(&parts.headers) {
            Some(s) => s,
            None => return not_signed_in(),
        }
    } else {
        match c.session_for_change(&parts.headers) {
            Ok(s) => s,
            Err(refusal) => return refusal,
        }
    };
    let path = parts.uri.path().strip_prefix("/console/api").unwrap_or("/");
    let target = match parts.uri.query() {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let Ok(bytes) = axum::body::to_bytes(body, MAX_FORWARD_BYTES).await else {
        return refuse(413, "request_too_large", "request body too large");
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).cloned();
    c.call(&session, parts.method, &target, Body::from(bytes), content_type).await
}

/// A session's exchanges as the API returns them.
#[derive(Deserialize)]
struct SessionWire {
    session_id: String,
    exchanges: Vec<ExchangeWire>,
}

#[derive(Deserialize)]
struct ExchangeWire {
    seq: i64,
    hash: String,
    #[serde(default)]
    content_missing: bool,
    #[serde(flatten)]
    stored: StoredRecord,
}

/// Path segment escaping for ids put into an API path.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The session (what the API shows this caller of it) rebuilt as turns, with each exchange's
/// facts (decision, usage, timings, masked counts, reviews and grants) and review and grant
/// events (who decided, why) in place.
async fn replay(State(c): State<Console>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let Some(session) = c.session(&headers) else {
        return not_signed_in();
    };
    let value = match c.get_json(&session, &format!("/v1/sessions/{}", segment(&id))).await {
        Ok(v) => v,
        Err(refusal) => return refusal,
    };
    let Ok(wire) = serde_json::from_value::<SessionWire>(value) else {
        return refuse(502, "api_error", "the API's session could not be read");
    };
    let exchanges: Vec<Exchange> = wire
        .exchanges
        .into_iter()
        .map(|e| Exchange { seq: e.seq, hash: e.hash, content_missing: e.content_missing, stored: e.stored })
        .collect();
    let turns = crate::replay::turns(&exchanges);
    let facts: Vec<Value> = exchanges
        .iter()
        .map(|ex| {
            let r = &ex.stored.record;
            let e = &ex.stored.envoy;
            let event = r.reason.as_deref().filter(|k| k.starts_with("review.") || k.starts_with("grant."));
            json!({
                "seq": ex.seq,
                "exchange_id": r.exchange_id,
                "at_ms": e.start_time_ms,
                "method": r.method,
                "endpoint": r.endpoint,
                "model": r.model,
                "decision": r.decision.as_str(),
                "reason": r.reason,
                "status": e.response_code,
                "usage": r.usage,
                "timings": r.timings,
                "duration_ms": e.duration_ms,
                "masked": r.masked,
                "approvals": r.approvals,
                "grant": r.grant,
                "stream": r.stream,
                "truncated": r.truncated,
                "content_missing": ex.content_missing,
                "user": r.user.as_ref().map(|u| &u.subject),
                // A review or grant event: its kind, who acted (the record's user) and why.
                "event": event.map(|kind| json!({"kind": kind, "detail": r.request})),
            })
        })
        .collect();
    Json(json!({"session_id": wire.session_id, "exchanges": facts, "turns": turns})).into_response()
}

/// The chain's verify report with the first bad record named and the sessions that hold bad
/// records; auditors only, logged in the query log like the API's own queries.
async fn chain(State(c): State<Console>, headers: HeaderMap) -> Response {
    let Some(session) = c.session(&headers) else {
        return not_signed_in();
    };
    let caller = match c.caller(&session).await {
        Ok(caller) => caller,
        Err(refusal) => return refusal,
    };
    let entry = QueryLogEntry {
        at_ms: crate::time::now_ms(),
        subject: Some(caller.subject.clone()),
        auditor: caller.auditor,
        method: "GET".into(),
        path: "/console/api/chain".into(),
        query: String::new(),
        status: if caller.auditor { 200 } else { 403 },
    };
    let pool = c.0.api.pool().clone();
    if let Err(e) = pool.run(move |s| s.log_query(&entry)).await {
        return ApiError::Store(e).into_response();
    }
    if !caller.auditor {
        return ApiError::Forbidden("only members of the auditor group may verify the chain").into_response();
    }
    let report = pool
        .run(|s| {
            let report = s.verify()?;
            let mut problems = Vec::new();
            for p in &report.problems {
                let text = p.to_string();
                let (seq, exchange_id) = match p {
                    crate::chain::Problem::Altered { seq, exchange_id }
                    | crate::chain::Problem::Inserted { seq, exchange_id } => (Some(*seq), Some(exchange_id.clone())),
                    _ => (None, None),
                };
                let session_id = match &exchange_id {
                    Some(id) => s.exchange(id)?.first().map(|ex| ex.stored.record.session_id.clone()),
                    None => None,
                };
                problems.push(json!({"problem": text, "seq": seq, "exchange_id": exchange_id, "session_id": session_id}));
            }
            Ok((report, problems))
        })
        .await;
    match report {
        Ok((report, problems)) => {
            let mut bad_sessions: Vec<String> =
                problems.iter().filter_map(|p| p["session_id"].as_str().map(str::to_owned)).collect();
            bad_sessions.sort();
            bad_sessions.dedup();
            Json(json!({
                "intact": report.problems.is_empty(),
                "records": report.records,
                "content_pieces": report.content_pieces,
                "head": report.head.map(|(seq, hash)| json!({"seq": seq, "hash": hash})),
                "purged_before_ms": report.purged_before_ms,
                "first_problem": problems.first(),
                "problems": problems,
                "sessions_with_problems": bad_sessions,
            }))
            .into_response()
        }
        Err(e) => ApiError::Store(e).into_response(),
    }
}

/// A `change` event whenever a review or grant is opened or decided (the queue re-reads),
/// and a comment every 15 s to keep the connection open. Ends with the session.
async fn events(State(c): State<Console>, headers: HeaderMap) -> Response {
    let Some(session) = c.session(&headers) else {
        return not_signed_in();
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, std::convert::Infallible>>(8);
    let console = c.clone();
    tokio::spawn(async move {
        loop {
            let changed = console.0.api.decided().notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let until_end = (session.expires_ms - crate::time::now_ms()).max(0) as u64;
            tokio::select! {
                _ = &mut changed => {
                    if tx.send(Ok(Event::default().event("change").data("reviews"))).await.is_err() {
                        return;
                    }
                }
                _ = tx.closed() => return,
                _ = tokio::time::sleep(Duration::from_millis(until_end)) => return,
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UsageParams {
    /// Days back from today (UTC), one bar each.
    days: Option<u32>,
    group: Option<String>,
    model: Option<String>,
    user: Option<String>,
}

/// Tokens per user per day as an SVG bar chart, from the API's `/v1/usage` (one call per day,
/// so it shows what the caller's token may see).
async fn usage_svg(State(c): State<Console>, headers: HeaderMap, q: Result<Query<UsageParams>, axum::extract::rejection::QueryRejection>) -> Response {
    let Some(session) = c.session(&headers) else {
        return not_signed_in();
    };
    let Ok(Query(p)) = q else {
        return refuse(400, "invalid_request_error", "usage.svg takes days, group, model, user");
    };
    let days = p.days.unwrap_or(7).clamp(1, 31) as i64;
    const DAY: i64 = 86_400_000;
    let today = crate::time::now_ms().div_euclid(DAY) * DAY;
    let mut extra = String::new();
    for (k, v) in [("group", &p.group), ("model", &p.model), ("user", &p.user)] {
        if let Some(v) = v {
            extra.push_str(&format!("&{k}={}", segment(v)));
        }
    }
    let mut bars = Vec::new();
    for i in (0..days).rev() {
        let from = today - i * DAY;
        let value = match c.get_json(&session, &format!("/v1/usage?from={from}&to={}{extra}", from + DAY)).await {
            Ok(v) => v,
            Err(refusal) => return refusal,
        };
        let rows = value["data"].as_array().cloned().unwrap_or_default();
        let per_user: Vec<(String, u64)> = rows
            .iter()
            .map(|r| {
                let who = r["subject"].as_str().unwrap_or("(no identity)").to_owned();
                let tokens = r["input_tokens"].as_u64().unwrap_or(0) + r["output_tokens"].as_u64().unwrap_or(0);
                (who, tokens)
            })
            .filter(|(_, t)| *t > 0)
            .collect();
        bars.push(svg::Bar { label: crate::time::format_ms(from).chars().take(10).collect(), parts: per_user });
    }
    let body = svg::stacked_bars("Tokens (input + output) per user per day, UTC", &bars);
    ([(header::CONTENT_TYPE, "image/svg+xml")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_url_must_be_an_origin() {
        assert!(ConsoleConfig::new("https://audit.example.com/", "https://idp", "c").is_ok());
        assert!(ConsoleConfig::new("https://audit.example.com/x", "https://idp", "c").is_err());
        assert!(ConsoleConfig::new("ftp://audit", "https://idp", "c").is_err());
        assert!(ConsoleConfig::new("http://127.0.0.1:9905", "nope", "c").is_err());
    }

    #[test]
    fn cookies_are_read_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; scrim_console_login=x; scrim_console=abc"));
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, LOGIN_COOKIE).as_deref(), Some("x"));
        assert_eq!(cookie(&h, "b"), None);
    }

    #[test]
    fn session_cookie_is_http_only_strict_and_secure_over_tls() {
        let tls = ConsoleConfig::new("https://a.example", "https://idp", "c").unwrap();
        let v = set_cookie(&tls, SESSION_COOKIE, "v", "Strict", "/console", 60);
        let v = v.to_str().unwrap();
        assert!(v.contains("HttpOnly") && v.contains("SameSite=Strict") && v.ends_with("; Secure"), "{v}");
        let plain = ConsoleConfig::new("http://127.0.0.1:1", "https://idp", "c").unwrap();
        assert!(!set_cookie(&plain, SESSION_COOKIE, "v", "Strict", "/console", 60).to_str().unwrap().contains("Secure"));
    }

    #[test]
    fn ids_are_escaped_as_one_path_segment() {
        assert_eq!(segment("grants:frank"), "grants:frank");
        assert_eq!(segment("a/../b?c"), "a%2F..%2Fb%3Fc");
    }
}
