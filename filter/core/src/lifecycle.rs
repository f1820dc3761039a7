//! The lifecycle of one exchange as a sans-IO state machine: the Envoy shim turns host
//! callbacks into [`Event`]s, [`Lifecycle::handle`] decides, and the shim performs the
//! [`Action`]s it returns and the [`Flow`] (continue or hold) for the callback. No host
//! calls and no clock in here: time comes with each event, bodies are read through
//! [`Buffers`], and the per-VM state is a [`Gateway`] handed in.
//!
//! The guarantee it keeps (tested as tables of event sequences and as a property over random
//! ones): the request leaves only by [`Flow::Release`], which is only returned together with
//! the credential swap, after identity, policy, approvals and masking have accepted a body
//! that was read completely — end of stream and trailers alike end a body. Every refusal is
//! a [`Refusal`], mapped once to what the client sees, the counter and the audit decision.
//!
//! Order on the request side: path → token → recorder check (`audit.required`) → keys
//! (fetched when a token needs them) → authorization (or a grant) → body → policy →
//! approvals (one review after another) → masking → release. Response side: headers choose
//! the handling (SSE rewritten as it passes, anything else buffered and masked whole,
//! compressed refused), chunks go through it, and the log event writes the audit record.

use crate::anthropic_stream::StreamRewriter;
use crate::audit::{AuditUser, Decision as AuditDecision, Direction, PROPERTY_NAME};
use crate::auth::{self, AuthError, Identity, TokenCache, Verdict};
use crate::config::{Config, JwksEndpoint, KeySource};
use crate::credential::{header_plan, ServiceKey};
use crate::errors::{anthropic_error, Reply};
use crate::exchange::{Exchange, SessionTracker};
use crate::inspect::{self, BodyRefusal, Endpoint, PathError, RequestBody};
use crate::jwks::KeySet;
use crate::keystore::KeyStore;
use crate::policy::{ApprovalMatch, Violation};
use crate::review::{self, GrantAnswer, GrantCache, ReviewAnswer, ReviewRequest, ReviewState};
use std::collections::VecDeque;

/// A JWKS larger than this is refused: no real provider publishes megabytes of keys.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// Longest single long poll for a review decision (the recorder caps it too).
const MAX_POLL_MS: u64 = 60_000;

/// Everything requests share on one VM, owned by the root context.
pub struct Gateway {
    pub config: Config,
    pub service_key: ServiceKey,
    pub keys: KeyStore,
    pub cache: TokenCache,
    pub sessions: SessionTracker,
    /// Whether the recorder answered its last probe (only probed with `audit.required`).
    pub recorder_up: bool,
    /// What the recorder's review and grant routes expect (only with approvals or grants).
    pub recorder_token: Option<String>,
    pub grants: GrantCache,
}

impl Gateway {
    pub fn new(config: Config, service_key: ServiceKey, recorder_token: Option<String>) -> Gateway {
        Gateway {
            keys: KeyStore::new(&config),
            cache: TokenCache::new(config.token_cache_entries),
            sessions: SessionTracker::new(config.audit.session_idle_seconds * 1000, 10_000),
            config,
            service_key,
            recorder_up: false,
            recorder_token,
            grants: GrantCache::default(),
        }
    }
}

/// The request headers the machine reads (the shim copies them: they are gone once the
/// headers callback continues).
#[derive(Debug, Clone, Default)]
pub struct RequestHead {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub x_api_key: Option<String>,
    pub content_encoding: Option<String>,
    pub request_id: String,
    pub session_id: Option<String>,
    /// Headers ended the stream: there is no body.
    pub end_of_stream: bool,
}

#[derive(Debug, Clone, Default)]
pub struct ResponseHead {
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub end_of_stream: bool,
}

/// Reads Envoy's buffered bodies when the machine needs them (never more than once per
/// complete body: a paused body callback sees the whole buffer so far).
pub trait Buffers {
    /// Up to `max` bytes of the buffered request body.
    fn request_body(&self, max: usize) -> Vec<u8>;
    /// Up to `max` bytes of the response body the current callback sees.
    fn response_body(&self, max: usize) -> Vec<u8>;
}

/// An HTTP call's answer; `status` is empty when the call could not be made.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub status: &'a str,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    RequestHeaders(&'a RequestHead),
    /// `size`: bytes buffered so far.
    RequestBody { size: usize, end_of_stream: bool },
    /// Trailers end the request body.
    RequestTrailers,
    /// The answer to the call the last [`Action::Call`] started.
    Answer(Answer<'a>),
    ResponseHeaders(&'a ResponseHead),
    ResponseBody { size: usize, end_of_stream: bool },
    /// Trailers end the response; its body can no longer be written.
    ResponseTrailers,
    /// The exchange is over: write its audit record.
    Log,
}

/// An HTTP call through one of Envoy's clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub cluster: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    pub timeout_ms: u64,
}

/// Counters the shim keeps (`wasmcustom.scrim.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Decision(Outcome),
    JwtFailure(&'static str),
    TokenCache { hit: bool },
    JwksRefresh { ok: bool },
    Masked { request: bool, count: usize },
    Review(&'static str),
    Grant { active: bool },
}

/// What happened to a request, for `scrim.requests.<outcome>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Unauthenticated,
    Forbidden,
    Unavailable,
    Denied,
}

impl Outcome {
    pub const ALL: [Outcome; 5] =
        [Outcome::Allowed, Outcome::Unauthenticated, Outcome::Forbidden, Outcome::Unavailable, Outcome::Denied];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::Unavailable => "unavailable",
            Outcome::Denied => "denied",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    SetRequestHeader(String, Option<String>),
    ReplaceRequestBody(Vec<u8>),
    /// Drop every request trailer: nothing the gateway did not read goes upstream.
    ClearRequestTrailers,
    /// Answer locally; nothing of the request goes upstream.
    Reply(Reply),
    Call(Call),
    Count(Counter),
    SetResponseHeader(String, Option<String>),
    /// Replace what the current response body callback sees.
    ReplaceResponseBody(Vec<u8>),
    /// Hand the audit record (filter state [`PROPERTY_NAME`]) to the access log.
    WriteAudit(Vec<u8>),
    Log(String),
}

/// What the callback returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Hold the request or response where it is.
    Hold,
    /// Let the request go upstream (from a call's answer: resume it).
    Release,
    /// Let the response (or an already released request) flow on.
    Continue,
}

/// Why an exchange was refused: the one type every refusal goes through.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    Auth(AuthError),
    Path(PathError),
    CompressedRequest,
    TooLarge { limit: usize },
    Body(BodyRefusal),
    Policy(Violation),
    RecorderDown,
    ApprovalsUnavailable,
    ReviewPending { id: String, rule: String, message: String },
    ReviewRejected { answer: ReviewAnswer, rule: String },
}

impl Refusal {
    /// What the client sees.
    pub fn reply(&self) -> Reply {
        match self {
            Refusal::Auth(e) => Reply::from(e),
            Refusal::Path(e) => anthropic_error(400, "invalid_request_error", &e.to_string(), false),
            Refusal::CompressedRequest => anthropic_error(
                415,
                "invalid_request_error",
                "compressed request bodies are not accepted: the gateway must read what it forwards",
                false,
            ),
            Refusal::TooLarge { limit } => anthropic_error(
                413,
                "request_too_large",
                &format!("the request body exceeds the gateway's limit of {limit} bytes"),
                false,
            ),
            Refusal::Body(e) => anthropic_error(
                400,
                "invalid_request_error",
                &format!("the gateway cannot inspect this request body: {e}"),
                false,
            ),
            Refusal::Policy(v) => anthropic_error(
                403,
                "permission_error",
                &format!("blocked by the gateway's policy rule `{}`: {}", v.rule, v.message),
                false,
            ),
            Refusal::RecorderDown => anthropic_error(
                503,
                "api_error",
                "the audit recorder is unavailable; the gateway serves nothing unrecorded, try again shortly",
                true,
            ),
            Refusal::ApprovalsUnavailable => {
                anthropic_error(503, "api_error", "the gateway cannot reach its approval service; try again shortly", true)
            }
            Refusal::ReviewPending { id, rule, message } => {
                anthropic_error(403, "permission_error", &review::pending_message(id, rule, message), false)
            }
            Refusal::ReviewRejected { answer, rule } => {
                anthropic_error(403, "permission_error", &review::rejected_message(answer, rule), false)
            }
        }
    }

    /// The counter it bumps and what the audit record says.
    pub fn outcome(&self) -> (Outcome, AuditDecision, String) {
        match self {
            Refusal::Auth(e @ AuthError::KeysUnavailable { .. }) => (Outcome::Unavailable, AuditDecision::Unavailable, e.reason().into()),
            Refusal::Auth(e @ AuthError::NoPermittedGroup { .. }) => (Outcome::Forbidden, AuditDecision::Forbidden, e.reason().into()),
            Refusal::Auth(e) => (Outcome::Unauthenticated, AuditDecision::Unauthenticated, e.reason().into()),
            Refusal::Path(_) => (Outcome::Denied, AuditDecision::Denied, "non_canonical_path".into()),
            Refusal::CompressedRequest => (Outcome::Denied, AuditDecision::Denied, "compressed_request".into()),
            Refusal::TooLarge { .. } => (Outcome::Denied, AuditDecision::Denied, "request_too_large".into()),
            Refusal::Body(_) => (Outcome::Denied, AuditDecision::Denied, "unreadable_request".into()),
            Refusal::Policy(v) => (Outcome::Denied, AuditDecision::Denied, v.rule.clone()),
            Refusal::RecorderDown => (Outcome::Unavailable, AuditDecision::Unavailable, "recorder_unavailable".into()),
            Refusal::ApprovalsUnavailable => (Outcome::Unavailable, AuditDecision::Unavailable, "approvals_unavailable".into()),
            Refusal::ReviewPending { id, .. } => (Outcome::Denied, AuditDecision::PendingApproval, format!("review_pending:{id}")),
            Refusal::ReviewRejected { answer, .. } => {
                (Outcome::Denied, AuditDecision::Denied, format!("review_rejected:{}", answer.id))
            }
        }
    }
}

/// The call the request waits for.
#[derive(Debug)]
enum Waiting {
    /// `audit.required`: is the recorder there? Then verify `token`.
    Recorder { token: String },
    Jwks { issuer_index: usize, token: String, error: AuthError },
    Grant { identity: Identity, refusal: AuthError },
    Review,
}

#[derive(Debug)]
enum Req {
    /// Headers not seen yet.
    New,
    Waiting(Waiting),
    /// Identity accepted; the body (if any) is still arriving.
    Admitted,
    Released,
    /// A local reply was sent: nothing more of the exchange is processed.
    Replied,
}

#[derive(Debug)]
enum Body {
    /// The headers ended the stream.
    None,
    Arriving,
    Complete(Vec<u8>),
    /// Accepted and forwarded (or refused): nothing kept.
    Done,
}

enum Response {
    /// Not inspected (a local reply, or nothing to inspect).
    Pass,
    Stream(Box<StreamRewriter>),
    Buffer,
    /// Every later byte is dropped; `last` is sent in their place at the end.
    Discard { last: Option<Vec<u8>> },
}

/// One exchange.
pub struct Lifecycle {
    req: Req,
    body: Body,
    endpoint: Endpoint,
    canonical_path: String,
    exchange: Option<Exchange>,
    approvals: VecDeque<ApprovalMatch>,
    wait_until_ms: u64,
    response: Response,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            req: Req::New,
            body: Body::None,
            endpoint: Endpoint::Other,
            canonical_path: String::new(),
            exchange: None,
            approvals: VecDeque::new(),
            wait_until_ms: 0,
            response: Response::Pass,
        }
    }
}

/// What one event produced.
#[derive(Debug, Default)]
pub struct Step {
    pub actions: Vec<Action>,
    pub flow: Option<Flow>,
}

impl Step {
    /// The flow for the callback: hold unless the machine said otherwise.
    pub fn flow(&self) -> Flow {
        self.flow.unwrap_or(Flow::Hold)
    }
}

/// An SSE `error` event, for a stream that can no longer be passed on safely. Claude Code
/// answers an `api_error` event by retrying without streaming.
fn sse_error(message: &str) -> Vec<u8> {
    let data = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
    format!("event: error\ndata: {data}\n\n").into_bytes()
}

/// `s` for a URL query value.
fn query_value(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn jwks_call(endpoint: &JwksEndpoint, timeout_ms: u64) -> Call {
    Call {
        cluster: endpoint.cluster.clone(),
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), endpoint.path.clone()),
            (":authority".into(), endpoint.authority.clone()),
            (":scheme".into(), endpoint.scheme.clone()),
            ("accept".into(), "application/json".into()),
        ],
        body: None,
        timeout_ms,
    }
}

/// The recorder's liveness probe: any HTTP answer below 500 means it is up.
pub fn recorder_check(config: &Config) -> Call {
    Call {
        cluster: config.audit.recorder_cluster.clone(),
        headers: vec![
            (":method".into(), "GET".into()),
            (":path".into(), "/healthz".into()),
            (":authority".into(), "scrim-recorder".into()),
        ],
        body: None,
        timeout_ms: config.audit.health_interval_ms.max(200),
    }
}

pub fn recorder_answered(a: Answer) -> bool {
    !a.status.is_empty() && !a.status.starts_with('5')
}

/// A scheduled or on-demand JWKS call's answer as a key set; `Err` says why not.
pub fn read_jwks(a: Answer) -> Result<KeySet, String> {
    if a.status != "200" {
        return Err(format!("status {}", if a.status.is_empty() { "none" } else { a.status }));
    }
    if a.body.len() > MAX_JWKS_BYTES {
        return Err(format!("document of {} bytes is too large", a.body.len()));
    }
    KeySet::parse(a.body).map_err(|e| e.to_string())
}

/// A JWKS fetch for the root context's schedule.
pub fn scheduled_jwks_call(config: &Config, issuer_index: usize) -> Option<Call> {
    match &config.issuers.get(issuer_index)?.keys {
        KeySource::Remote(endpoint) => Some(jwks_call(endpoint, config.jwks.fetch_timeout_ms)),
        _ => None,
    }
}

impl Lifecycle {
    pub fn new() -> Lifecycle {
        Lifecycle::default()
    }

    /// Whether the request has been let through (for tests and assertions).
    pub fn released(&self) -> bool {
        matches!(self.req, Req::Released)
    }

    pub fn handle(&mut self, gw: &mut Gateway, now_ms: u64, event: Event, buffers: &dyn Buffers) -> Step {
        let mut step = Step::default();
        match event {
            Event::RequestHeaders(head) => self.on_request_headers(gw, now_ms, head, &mut step),
            Event::RequestBody { size, end_of_stream } => self.on_request_body(gw, now_ms, size, end_of_stream, buffers, &mut step),
            Event::RequestTrailers => {
                if matches!(self.req, Req::Released | Req::Replied) {
                    step.flow = Some(if matches!(self.req, Req::Released) { Flow::Continue } else { Flow::Hold });
                } else {
                    step.actions.push(Action::ClearRequestTrailers);
                    let body = buffers.request_body(gw.config.masking.max_request_bytes + 1);
                    let size = body.len();
                    self.body_complete(gw, now_ms, size, Some(body), buffers, &mut step);
                }
            }
            Event::Answer(answer) => self.on_answer(gw, now_ms, answer, &mut step),
            Event::ResponseHeaders(head) => self.on_response_headers(gw, now_ms, head, &mut step),
            Event::ResponseBody { size, end_of_stream } => self.on_response_body(gw, size, end_of_stream, buffers, &mut step),
            Event::ResponseTrailers => {
                if let Some(x) = self.exchange.as_mut() {
                    x.completed = true;
                }
                step.flow = Some(Flow::Continue);
                match std::mem::replace(&mut self.response, Response::Pass) {
                    // A held body ends here: masked as at the end of the stream.
                    Response::Buffer => {
                        let body = buffers.response_body(gw.config.masking.max_response_bytes + 1);
                        self.finish_buffered(gw, body, &mut step);
                    }
                    // What a stream still held back is dropped, never forwarded unmasked.
                    other => self.response = other,
                }
            }
            Event::Log => self.on_log(gw, now_ms, &mut step),
        }
        step
    }

    // ---- request side ----

    fn refuse(&mut self, r: Refusal, step: &mut Step) {
        let (outcome, decision, reason) = r.outcome();
        if let Refusal::Auth(e) = &r {
            step.actions.push(Action::Count(Counter::JwtFailure(e.reason())));
        }
        step.actions.push(Action::Count(Counter::Decision(outcome)));
        if let Some(x) = self.exchange.as_mut() {
            x.decision = decision;
            x.reason = Some(reason);
        }
        step.actions.push(Action::Reply(r.reply()));
        self.req = Req::Replied;
        self.body = Body::Done;
        step.flow = Some(Flow::Hold);
    }

    fn on_request_headers(&mut self, gw: &mut Gateway, now_ms: u64, head: &RequestHead, step: &mut Step) {
        self.body = if head.end_of_stream { Body::None } else { Body::Arriving };
        self.exchange = Some(Exchange::new(
            head.request_id.clone(),
            head.session_id.clone(),
            head.method.clone(),
            &head.path,
            now_ms,
        ));
        let token = auth::extract_token(&gw.config.token_sources, head.authorization.as_deref(), head.x_api_key.as_deref())
            .map(str::to_string);
        let Some(token) = token else {
            return self.refuse(Refusal::Auth(AuthError::MissingToken), step);
        };
        match inspect::canonical_path(&head.path) {
            Ok(p) => {
                self.canonical_path = p.to_string();
                self.endpoint = inspect::endpoint(p, &gw.config.masking.openai_chat_paths);
            }
            Err(e) => return self.refuse(Refusal::Path(e), step),
        }
        if gw.config.audit.required && !gw.recorder_up {
            return self.refuse(Refusal::RecorderDown, step);
        }
        if !head.end_of_stream && head.content_encoding.as_deref().is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            return self.refuse(Refusal::CompressedRequest, step);
        }
        if gw.config.audit.required {
            // The probe only says the recorder was up a moment ago: an exchange that started
            // after it died would go unrecorded, so each one asks for itself.
            step.actions.push(Action::Call(recorder_check(&gw.config)));
            self.req = Req::Waiting(Waiting::Recorder { token });
            return;
        }
        self.verify(gw, now_ms, token, true, step);
    }

    fn verify(&mut self, gw: &mut Gateway, now_ms: u64, token: String, may_fetch: bool, step: &mut Step) {
        let now = now_ms / 1000;
        let leeway = gw.config.leeway_seconds;
        let verdict = match gw.cache.get(&token, leeway, now) {
            Some(identity) => {
                step.actions.push(Action::Count(Counter::TokenCache { hit: true }));
                Verdict::Verified(identity)
            }
            None => {
                step.actions.push(Action::Count(Counter::TokenCache { hit: false }));
                auth::verify(&gw.config, gw.keys.sets(), &token, now)
            }
        };
        self.decide(gw, now_ms, token, verdict, may_fetch, step);
    }

    fn decide(&mut self, gw: &mut Gateway, now_ms: u64, token: String, verdict: Verdict, may_fetch: bool, step: &mut Step) {
        let now = now_ms / 1000;
        let identity = match verdict {
            Verdict::Verified(identity) => {
                gw.cache.insert(&token, identity.clone(), gw.config.leeway_seconds, now);
                identity
            }
            Verdict::Rejected(e) => return self.refuse(Refusal::Auth(e), step),
            Verdict::NeedKeys { issuer_index, error } => {
                let endpoint = match &gw.config.issuers[issuer_index].keys {
                    KeySource::Remote(endpoint) if may_fetch && gw.keys.may_fetch_on_demand(&gw.config, issuer_index, now) => {
                        endpoint.clone()
                    }
                    _ => return self.refuse(Refusal::Auth(error), step),
                };
                gw.keys.on_demand_fetch_started(issuer_index, now);
                step.actions.push(Action::Call(jwks_call(&endpoint, gw.config.jwks.fetch_timeout_ms)));
                self.req = Req::Waiting(Waiting::Jwks { issuer_index, token, error });
                return;
            }
        };
        if let Err(e) = auth::authorize(&gw.config, &identity) {
            if gw.config.policy.grants.enabled && matches!(e, AuthError::NoPermittedGroup { .. }) {
                return self.check_grant(gw, now_ms, identity, e, step);
            }
            if let Some(x) = self.exchange.as_mut() {
                x.identity = Some(identity);
            }
            return self.refuse(Refusal::Auth(e), step);
        }
        self.admit(gw, now_ms, identity, step);
    }

    fn check_grant(&mut self, gw: &mut Gateway, now_ms: u64, identity: Identity, refusal: AuthError, step: &mut Step) {
        if let Some(answer) = gw.grants.get(&identity.issuer, &identity.subject, now_ms).cloned() {
            return self.apply_grant(gw, now_ms, identity, refusal, answer, step);
        }
        let path = format!(
            "/internal/v1/grants/active?issuer={}&sub={}",
            query_value(&identity.issuer),
            query_value(&identity.subject)
        );
        match recorder_call(gw, "GET", &path, None, 0) {
            Some(call) => {
                step.actions.push(Action::Call(call));
                self.req = Req::Waiting(Waiting::Grant { identity, refusal });
            }
            None => self.approvals_unavailable("no service token", step),
        }
    }

    fn apply_grant(&mut self, gw: &mut Gateway, now_ms: u64, identity: Identity, refusal: AuthError, answer: GrantAnswer, step: &mut Step) {
        step.actions.push(Action::Count(Counter::Grant { active: answer.active }));
        if !answer.active {
            if let Some(x) = self.exchange.as_mut() {
                x.identity = Some(identity);
            }
            return self.refuse(Refusal::Auth(refusal), step);
        }
        if let Some(x) = self.exchange.as_mut() {
            x.grant = answer.id;
        }
        self.admit(gw, now_ms, identity, step);
    }

    fn approvals_unavailable(&mut self, why: &str, step: &mut Step) {
        step.actions.push(Action::Log(format!("review and grant service unavailable: {why}")));
        step.actions.push(Action::Count(Counter::Review("unavailable")));
        self.refuse(Refusal::ApprovalsUnavailable, step);
    }

    /// Identity accepted: go on with the body, or release a request without one.
    fn admit(&mut self, gw: &mut Gateway, now_ms: u64, identity: Identity, step: &mut Step) {
        if let Some(x) = self.exchange.as_mut() {
            x.identity = Some(identity);
            x.decision = AuditDecision::Allowed;
        }
        self.req = Req::Admitted;
        match std::mem::replace(&mut self.body, Body::Done) {
            Body::None => {
                self.body = Body::None;
                let groups = self.groups();
                if let Err(v) = gw.config.policy.check(&groups, &self.canonical_path, None) {
                    return self.refuse(Refusal::Policy(v), step);
                }
                self.release(gw, step);
            }
            Body::Complete(bytes) => self.inspect_body(gw, now_ms, bytes, step),
            other => self.body = other,
        }
    }

    fn groups(&self) -> Vec<String> {
        self.exchange.as_ref().and_then(|x| x.identity.as_ref()).map(|i| i.groups.clone()).unwrap_or_default()
    }

    fn on_request_body(&mut self, gw: &mut Gateway, now_ms: u64, size: usize, end: bool, buffers: &dyn Buffers, step: &mut Step) {
        match self.req {
            Req::Released => {
                step.flow = Some(Flow::Continue);
                return;
            }
            Req::Replied => return,
            _ => {}
        }
        let limit = gw.config.masking.max_request_bytes;
        if size > limit {
            return self.refuse(Refusal::TooLarge { limit }, step);
        }
        if end {
            self.body_complete(gw, now_ms, size, None, buffers, step);
        }
    }

    /// The request body ended (end of stream or trailers): inspect it now, or keep it until
    /// the identity is settled.
    fn body_complete(&mut self, gw: &mut Gateway, now_ms: u64, size: usize, read: Option<Vec<u8>>, buffers: &dyn Buffers, step: &mut Step) {
        let limit = gw.config.masking.max_request_bytes;
        if size > limit {
            return self.refuse(Refusal::TooLarge { limit }, step);
        }
        let bytes = read.unwrap_or_else(|| buffers.request_body(size));
        if bytes.len() > limit {
            return self.refuse(Refusal::TooLarge { limit }, step);
        }
        match self.req {
            Req::Admitted => self.inspect_body(gw, now_ms, bytes, step),
            Req::New | Req::Waiting(_) => self.body = Body::Complete(bytes),
            Req::Released | Req::Replied => {}
        }
    }

    fn inspect_body(&mut self, gw: &mut Gateway, now_ms: u64, bytes: Vec<u8>, step: &mut Step) {
        let groups = self.groups();
        let needed = {
            let read = match RequestBody::read(&bytes, self.endpoint) {
                Ok(read) => read,
                Err(e) => return self.refuse(Refusal::Body(e), step),
            };
            let facts = read.facts();
            if let Err(v) = gw.config.policy.check(&groups, &self.canonical_path, Some(&facts)) {
                return self.refuse(Refusal::Policy(v), step);
            }
            gw.config.policy.approvals_needed(&facts.texts)
        };
        self.body = Body::Complete(bytes);
        if needed.is_empty() {
            return self.mask_and_release(gw, step);
        }
        self.approvals = needed.into();
        self.wait_until_ms = now_ms + gw.config.policy.reviews.wait_seconds * 1000;
        self.request_review(gw, now_ms, step);
    }

    fn request_review(&mut self, gw: &mut Gateway, now_ms: u64, step: &mut Step) {
        let (Some(m), Some(x)) = (self.approvals.front(), self.exchange.as_ref()) else { return };
        let Some(identity) = x.identity.as_ref() else { return };
        let session_id = gw.sessions.session_for(x.session_header.as_deref(), Some(&identity.subject), now_ms);
        // Approvers see the context with secrets masked: nothing unmasked leaves the gateway.
        let excerpt = review::excerpt(&gw.config.masking.rules.mask(&m.context).text);
        let request = ReviewRequest {
            fingerprint: review::fingerprint(&identity.issuer, &identity.subject, &session_id, &m.rule, &m.matched.join("\u{0}")),
            rule: m.rule.clone(),
            rule_message: m.message.clone(),
            approvals_required: m.approvals_required,
            ttl_seconds: m.ttl_seconds,
            user: AuditUser {
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                issuer: identity.issuer.clone(),
                groups: identity.groups.clone(),
            },
            session_id,
            exchange_id: x.exchange_id.clone(),
            excerpt,
        };
        let body = serde_json::to_vec(&request).unwrap_or_default();
        match recorder_call(gw, "POST", "/internal/v1/reviews", Some(body), 0) {
            Some(call) => {
                step.actions.push(Action::Call(call));
                self.req = Req::Waiting(Waiting::Review);
            }
            None => self.approvals_unavailable("no service token", step),
        }
    }

    fn on_review(&mut self, gw: &mut Gateway, now_ms: u64, answer: ReviewAnswer, step: &mut Step) {
        let Some(m) = self.approvals.front().cloned() else { return };
        match answer.status {
            ReviewState::Approved => {
                step.actions.push(Action::Count(Counter::Review("approved")));
                self.approvals.pop_front();
                if let Some(x) = self.exchange.as_mut() {
                    x.approvals.push(answer.id);
                }
                if self.approvals.is_empty() {
                    self.mask_and_release(gw, step);
                } else {
                    self.request_review(gw, now_ms, step);
                }
            }
            ReviewState::Rejected => {
                step.actions.push(Action::Count(Counter::Review("rejected")));
                self.refuse(Refusal::ReviewRejected { answer, rule: m.rule }, step);
            }
            // Still waiting (or its time ran out while waiting): wait on if allowed, else tell
            // the developer which review to get approved.
            ReviewState::Pending | ReviewState::Expired => {
                if answer.status == ReviewState::Pending && now_ms + 50 < self.wait_until_ms {
                    let wait = (self.wait_until_ms - now_ms).min(MAX_POLL_MS);
                    let path = format!("/internal/v1/reviews/{}?wait_ms={wait}", query_value(&answer.id));
                    match recorder_call(gw, "GET", &path, None, wait) {
                        Some(call) => {
                            step.actions.push(Action::Call(call));
                            self.req = Req::Waiting(Waiting::Review);
                        }
                        None => self.approvals_unavailable("no service token", step),
                    }
                    return;
                }
                step.actions.push(Action::Count(Counter::Review("pending")));
                self.refuse(Refusal::ReviewPending { id: answer.id, rule: m.rule, message: m.message }, step);
            }
        }
    }

    fn mask_and_release(&mut self, gw: &mut Gateway, step: &mut Step) {
        let Body::Complete(bytes) = std::mem::replace(&mut self.body, Body::Done) else {
            return self.release(gw, step);
        };
        // Read again from the kept bytes: cheaper than keeping the borrowed reading alive
        // across the calls to the recorder, and the same strict reader.
        let masked = match RequestBody::read(&bytes, self.endpoint) {
            Ok(read) => read.mask(&gw.config.masking.rules),
            Err(e) => return self.refuse(Refusal::Body(e), step),
        };
        for (rule, count) in &masked.hits {
            step.actions.push(Action::Count(Counter::Masked { request: true, count: *count }));
            if let Some(x) = self.exchange.as_mut() {
                x.add_masked(rule, Direction::Request, *count);
            }
        }
        let sent = match masked.bytes {
            Some(new) => {
                step.actions.push(Action::ReplaceRequestBody(new.clone()));
                step.actions.push(Action::SetRequestHeader("content-length".into(), Some(new.len().to_string())));
                new
            }
            None => bytes,
        };
        if let Some(x) = self.exchange.as_mut() {
            x.request_body = Some(sent);
        }
        self.release(gw, step);
    }

    /// The only way out for a request: credential swapped, counted, let go.
    fn release(&mut self, gw: &Gateway, step: &mut Step) {
        let plan = header_plan(&gw.config.upstream_credential, &gw.service_key);
        for name in &plan.remove {
            step.actions.push(Action::SetRequestHeader(name.to_string(), None));
        }
        for (name, value) in &plan.set {
            step.actions.push(Action::SetRequestHeader(name.to_string(), Some(value.to_string())));
        }
        step.actions.push(Action::Count(Counter::Decision(Outcome::Allowed)));
        self.req = Req::Released;
        step.flow = Some(Flow::Release);
    }

    fn on_answer(&mut self, gw: &mut Gateway, now_ms: u64, answer: Answer, step: &mut Step) {
        if !matches!(self.req, Req::Waiting(_)) {
            // An answer nobody waits for (the request was refused meanwhile).
            return;
        }
        let Req::Waiting(waiting) = std::mem::replace(&mut self.req, Req::New) else { return };
        match waiting {
            Waiting::Recorder { token } => {
                if !recorder_answered(answer) {
                    if gw.recorder_up {
                        step.actions.push(Action::Log("recorder is unreachable: refusing new exchanges".into()));
                    }
                    gw.recorder_up = false;
                    return self.refuse(Refusal::RecorderDown, step);
                }
                self.verify(gw, now_ms, token, true, step);
            }
            Waiting::Jwks { issuer_index, token, error } => {
                let now = now_ms / 1000;
                let result = read_jwks(answer);
                if let Err(why) = &result {
                    step.actions.push(Action::Log(format!("jwks fetch for `{}` failed: {why}", gw.config.issuers[issuer_index].issuer)));
                }
                step.actions.push(Action::Count(Counter::JwksRefresh { ok: result.is_ok() }));
                let fetched = result.is_ok();
                gw.keys.fetch_finished(issuer_index, false, result.ok(), now);
                let verdict = match auth::verify(&gw.config, gw.keys.sets(), &token, now) {
                    // Keys still missing after a fetch: answer with the original reason.
                    Verdict::NeedKeys { error: e, .. } if fetched => Verdict::Rejected(e),
                    Verdict::NeedKeys { .. } => Verdict::Rejected(error),
                    v => v,
                };
                self.decide(gw, now_ms, token, verdict, false, step);
            }
            Waiting::Grant { identity, refusal } => match review::parse_answer::<GrantAnswer>(answer.status, answer.body) {
                Ok(grant) => {
                    let ttl_ms = gw.config.policy.reviews.grant_cache_seconds * 1000;
                    gw.grants.insert(&identity.issuer, &identity.subject, grant.clone(), now_ms, ttl_ms);
                    self.apply_grant(gw, now_ms, identity, refusal, grant, step);
                }
                Err(e) => self.approvals_unavailable(&e, step),
            },
            Waiting::Review => match review::parse_answer::<ReviewAnswer>(answer.status, answer.body) {
                Ok(review) => self.on_review(gw, now_ms, review, step),
                Err(e) => self.approvals_unavailable(&e, step),
            },
        }
    }

    // ---- response side ----

    fn on_response_headers(&mut self, gw: &mut Gateway, now_ms: u64, head: &ResponseHead, step: &mut Step) {
        step.flow = Some(Flow::Continue);
        if let Some(x) = self.exchange.as_mut() {
            x.first_byte_ms = Some(now_ms);
            x.completed |= head.end_of_stream;
        }
        if !self.released() || head.end_of_stream {
            return;
        }
        if head.content_encoding.as_deref().is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            // The body would be unreadable: refuse it instead of passing it unmasked.
            let error = self.fail_response("the upstream response is compressed; the gateway does not pass it on", step);
            self.response = Response::Discard { last: Some(error) };
            return;
        }
        // Masking changes lengths: let Envoy frame the body itself.
        step.actions.push(Action::SetResponseHeader("content-length".into(), None));
        let content_type = head.content_type.as_deref().unwrap_or_default().to_ascii_lowercase();
        if content_type.starts_with("text/event-stream") {
            let masking = &gw.config.masking;
            let rewriter = if self.endpoint == Endpoint::OpenAiChat {
                StreamRewriter::openai_chat(masking.rules.clone())
            } else {
                StreamRewriter::new(masking.rules.clone(), masking.thinking)
            };
            // The audit transcript takes the text of each delta as the rewriter wrote it.
            self.response = Response::Stream(Box::new(rewriter.recording()));
            if let Some(x) = self.exchange.as_mut() {
                x.stream = true;
            }
        } else {
            self.response = Response::Buffer;
            // Held until the body is complete, so a failure can still change the status.
            step.flow = Some(Flow::Hold);
        }
    }

    /// Turns a response whose headers are still held into a 502 and returns the error body
    /// to send in place of the upstream's.
    fn fail_response(&mut self, message: &str, step: &mut Step) -> Vec<u8> {
        step.actions.push(Action::Log(message.to_string()));
        for (name, value) in [(":status", Some("502")), ("content-type", Some("application/json")), ("content-encoding", None), ("content-length", None)] {
            step.actions.push(Action::SetResponseHeader(name.into(), value.map(str::to_string)));
        }
        anthropic_error(502, "api_error", message, true).body.into_bytes()
    }

    fn record_response_hits(&mut self, hits: Vec<(String, usize)>, step: &mut Step) {
        for (rule, count) in hits {
            step.actions.push(Action::Count(Counter::Masked { request: false, count }));
            if let Some(x) = self.exchange.as_mut() {
                x.add_masked(&rule, Direction::Response, count);
            }
        }
    }

    fn on_response_body(&mut self, gw: &mut Gateway, size: usize, end: bool, buffers: &dyn Buffers, step: &mut Step) {
        step.flow = Some(Flow::Continue);
        if end {
            if let Some(x) = self.exchange.as_mut() {
                x.completed = true;
            }
        }
        match std::mem::replace(&mut self.response, Response::Pass) {
            Response::Pass => {}
            Response::Discard { last } => {
                let bytes = if end { last.clone().unwrap_or_default() } else { Vec::new() };
                step.actions.push(Action::ReplaceResponseBody(bytes));
                self.response = Response::Discard { last };
            }
            Response::Stream(mut rewriter) => {
                let chunk = buffers.response_body(size);
                let out = rewriter.push(&chunk).and_then(|pushed| {
                    let rest = if end { rewriter.finish()? } else { Vec::new() };
                    Ok((pushed, rest))
                });
                match out {
                    Ok((pushed, rest)) => {
                        if let Some(x) = self.exchange.as_mut() {
                            rewriter.written(&pushed).for_each(|w| x.transcript.push_written(w));
                            x.transcript.push_stream(&rest);
                        }
                        let bytes = if rest.is_empty() { pushed } else { [pushed, rest].concat() };
                        if bytes != chunk {
                            step.actions.push(Action::ReplaceResponseBody(bytes));
                        }
                        if end {
                            self.record_response_hits(rewriter.hits(), step);
                        } else {
                            self.response = Response::Stream(rewriter);
                        }
                    }
                    Err(e) => {
                        // Headers are gone: end the stream with an error event, drop the rest.
                        step.actions.push(Action::Log(format!("stream could not be inspected: {e}")));
                        self.record_response_hits(rewriter.hits(), step);
                        if let Some(x) = self.exchange.as_mut() {
                            x.reason = Some("stream could not be inspected".into());
                        }
                        step.actions.push(Action::ReplaceResponseBody(sse_error("the gateway cannot inspect the rest of this stream")));
                        self.response = Response::Discard { last: None };
                    }
                }
            }
            Response::Buffer => {
                if end {
                    let body = buffers.response_body(size);
                    return self.finish_buffered(gw, body, step);
                }
                let limit = gw.config.masking.max_response_bytes;
                if size > limit {
                    let error = self.fail_response("the upstream response is too large for the gateway to inspect", step);
                    if end {
                        step.actions.push(Action::ReplaceResponseBody(error));
                    } else {
                        step.actions.push(Action::ReplaceResponseBody(Vec::new()));
                        self.response = Response::Discard { last: Some(error) };
                    }
                    return;
                }
                self.response = Response::Buffer;
                step.flow = Some(Flow::Hold);
            }
        }
    }

    /// A complete buffered response: masked whole, or a 502 in its place.
    fn finish_buffered(&mut self, gw: &mut Gateway, body: Vec<u8>, step: &mut Step) {
        if body.len() > gw.config.masking.max_response_bytes {
            let error = self.fail_response("the upstream response is too large for the gateway to inspect", step);
            step.actions.push(Action::ReplaceResponseBody(error));
            return;
        }
        match inspect::mask_response(&gw.config.masking.rules, &body, gw.config.masking.thinking) {
            Ok(masked) => {
                self.record_response_hits(masked.hits, step);
                if let Some(x) = self.exchange.as_mut() {
                    x.transcript.read_message(masked.bytes.as_deref().unwrap_or(&body));
                }
                if let Some(bytes) = masked.bytes {
                    step.actions.push(Action::ReplaceResponseBody(bytes));
                }
            }
            Err(e) => {
                let error = self.fail_response(&format!("the gateway cannot inspect the upstream response: {}", e.0), step);
                step.actions.push(Action::ReplaceResponseBody(error));
            }
        }
    }

    fn on_log(&mut self, gw: &mut Gateway, now_ms: u64, step: &mut Step) {
        let Some(exchange) = self.exchange.take() else { return };
        let user = exchange.identity.as_ref().map(|i| i.subject.as_str());
        let session = gw.sessions.session_for(exchange.session_header.as_deref(), user, now_ms);
        let record = exchange.record(session, gw.config.audit.content, now_ms);
        step.actions.push(Action::WriteAudit(record.to_bytes_capped(gw.config.audit.max_record_bytes)));
    }
}

/// A call to the recorder's review and grant routes, with the gateway's service token.
fn recorder_call(gw: &Gateway, method: &str, path: &str, body: Option<Vec<u8>>, wait_ms: u64) -> Option<Call> {
    let reviews = &gw.config.policy.reviews;
    let token = gw.recorder_token.as_deref()?;
    Some(Call {
        cluster: reviews.recorder_cluster.clone(),
        headers: vec![
            (":method".into(), method.into()),
            (":path".into(), path.into()),
            (":authority".into(), reviews.authority.clone()),
            ("authorization".into(), format!("Bearer {token}")),
            ("content-type".into(), "application/json".into()),
        ],
        body,
        timeout_ms: reviews.timeout_ms + wait_ms,
    })
}

/// The filter-state name the audit record is written under.
pub const AUDIT_PROPERTY: &str = PROPERTY_NAME;

#[cfg(test)]
mod tests;
