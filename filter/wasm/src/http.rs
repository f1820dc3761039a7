//! Per-request context: identity and credential swap on the request headers, masking of the
//! request body before it leaves, and masking of the response (whole JSON bodies, or SSE
//! streams event by event) before the client sees it.
//!
//! Decisions come from `scrim_core`; this file reads and writes headers and bodies, sends
//! local replies, and, when a token needs keys this VM does not have yet, fetches them and
//! resumes the request.

mod approvals;

use crate::metrics::Decision;
use crate::root::{
    dispatch_jwks_fetch, dispatch_recorder_check, millis, read_jwks_response, recorder_answered, seconds, SharedRef,
};
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use scrim_core::anthropic::{self, MaskedBody};
use scrim_core::anthropic_stream::StreamRewriter;
use scrim_core::audit::{self as audit_record, Decision as AuditDecision, Direction};
use scrim_core::auth::{self, AuthError, Identity, Verdict};
use scrim_core::exchange::Exchange;
use scrim_core::config::KeySource;
use scrim_core::credential::header_plan;
use scrim_core::errors::{anthropic_error, Refusal};

pub struct ScrimHttp {
    shared: SharedRef,
    /// Whether the request may move on. Until then every body callback holds the body back:
    /// with `allow_on_headers_stop_iteration`, a body callback that returned Continue would
    /// forward the request with the caller's credential still on it.
    admitted: bool,
    /// A local reply was sent; nothing more of this request or its response is processed.
    replied: bool,
    /// The request has a body to inspect (headers did not end the stream).
    has_body: bool,
    /// The whole request body has arrived (its size), waiting for admission.
    body_complete: Option<usize>,
    /// The token of a request paused while its issuer's keys are fetched.
    pending: Option<PendingFetch>,
    /// With `audit.required`: the call asking whether the recorder is up, and the token to
    /// verify once it answers.
    recorder_check: Option<(u32, String)>,
    /// A call to the recorder's review or grant routes in flight.
    recorder_call: Option<(u32, approvals::RecorderCall)>,
    /// Approval rules the request matched whose reviews are not approved yet, in order.
    approvals: std::collections::VecDeque<scrim_core::policy::ApprovalMatch>,
    /// Until when (epoch ms) this request may wait for a review's decision.
    wait_until_ms: u64,
    response: ResponseMode,
    /// What the audit record will say; created with the request headers.
    exchange: Option<Exchange>,
}

struct PendingFetch {
    call: u32,
    issuer_index: usize,
    token: String,
    /// The error to answer with if the fetch does not produce a usable key.
    error: AuthError,
}

enum ResponseMode {
    /// Not decided yet, or nothing to inspect.
    Pass,
    /// SSE: rewritten chunk by chunk, never buffered whole.
    Stream(Box<StreamRewriter>),
    /// Any other body: held until complete, masked, then sent.
    Buffer,
    /// The body cannot be passed on: every later byte is dropped and `last` (if any) is sent
    /// in their place at the end.
    Discard { last: Option<Vec<u8>> },
}

/// An SSE `error` event, for a stream that can no longer be passed on safely. Claude Code
/// answers an `api_error` event by retrying without streaming.
fn sse_error(message: &str) -> Vec<u8> {
    let data = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
    format!("event: error\ndata: {data}\n\n").into_bytes()
}

impl ScrimHttp {
    pub fn new(shared: SharedRef) -> Self {
        ScrimHttp {
            shared,
            admitted: false,
            replied: false,
            has_body: false,
            body_complete: None,
            pending: None,
            recorder_check: None,
            recorder_call: None,
            approvals: Default::default(),
            wait_until_ms: 0,
            response: ResponseMode::Pass,
            exchange: None,
        }
    }

    fn now(&self) -> u64 {
        seconds(self.get_current_time())
    }

    fn now_ms(&self) -> u64 {
        millis(self.get_current_time())
    }

    fn note(&mut self, decision: AuditDecision, reason: Option<String>) {
        if let Some(x) = self.exchange.as_mut() {
            x.decision = decision;
            x.reason = reason;
        }
    }

    fn reply(&mut self, r: &Refusal) {
        self.replied = true;
        if let Some(x) = self.exchange.as_mut() {
            if x.decision == AuditDecision::Allowed {
                // Refused after admission (body checks): the record says why.
                x.decision = AuditDecision::Denied;
            }
            if x.reason.is_none() {
                x.reason = Some(format!("status {}", r.status));
            }
        }
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(r.status, headers, Some(r.body.as_bytes()));
    }

    /// Answers 503: with `audit.required`, nothing is served while the recorder is down.
    fn refuse_unrecorded(&mut self) {
        self.shared.borrow().metrics.decision(Decision::Unavailable);
        self.note(AuditDecision::Unavailable, Some("recorder_unavailable".into()));
        self.reply(&anthropic_error(
            503,
            "api_error",
            "the audit recorder is unavailable; the gateway serves nothing unrecorded, try again shortly",
            true,
        ));
    }

    fn refuse(&mut self, e: &AuthError) {
        let (decision, recorded) = match e {
            AuthError::KeysUnavailable { .. } => (Decision::Unavailable, AuditDecision::Unavailable),
            AuthError::NoPermittedGroup { .. } => (Decision::Forbidden, AuditDecision::Forbidden),
            _ => (Decision::Unauthenticated, AuditDecision::Unauthenticated),
        };
        {
            let s = self.shared.borrow();
            s.metrics.jwt_failure(e);
            s.metrics.decision(decision);
        }
        self.note(recorded, Some(e.reason().to_string()));
        self.reply(&Refusal::from(e));
    }

    /// Applies the credential swap for an identified, permitted caller.
    fn admit(&mut self, identity: Identity) {
        let s = self.shared.borrow();
        let plan = header_plan(&s.config.upstream_credential, &s.service_key);
        for name in &plan.remove {
            self.set_http_request_header(name, None);
        }
        for (name, value) in &plan.set {
            self.set_http_request_header(name, Some(value));
        }
        drop(s);
        self.admitted = true;
        if let Some(x) = self.exchange.as_mut() {
            x.identity = Some(identity);
            x.decision = AuditDecision::Allowed;
        }
    }

    fn record_hits(&mut self, hits: Vec<(String, usize)>, direction: Direction) {
        let s = self.shared.borrow();
        for (rule, count) in hits {
            s.metrics.masked(direction == Direction::Request, count);
            if let Some(x) = self.exchange.as_mut() {
                x.add_masked(&rule, direction, count);
            }
        }
    }

    /// Finishes a decision: admit, refuse, or (with `may_fetch`) fetch keys and pause.
    /// `Continue` means the request may go on now.
    fn decide(&mut self, token: String, verdict: Verdict, may_fetch: bool) -> Action {
        let identity = match verdict {
            Verdict::Verified(identity) => {
                let now = self.now();
                let mut s = self.shared.borrow_mut();
                let leeway = s.config.leeway_seconds;
                s.cache.insert(&token, identity.clone(), leeway, now);
                identity
            }
            Verdict::Rejected(e) => {
                self.refuse(&e);
                return Action::Pause;
            }
            Verdict::NeedKeys { issuer_index, error } => {
                if !(may_fetch && self.start_fetch(issuer_index, &token, &error)) {
                    self.refuse(&error);
                }
                return Action::Pause;
            }
        };
        let permitted = auth::authorize(&self.shared.borrow().config, &identity);
        if let Err(e) = permitted {
            let grants = self.shared.borrow().config.policy.grants.enabled;
            if grants && matches!(e, AuthError::NoPermittedGroup { .. }) {
                return self.check_grant(identity, e);
            }
            if let Some(x) = self.exchange.as_mut() {
                x.identity = Some(identity);
            }
            self.refuse(&e);
            return Action::Pause;
        }
        self.admit_and_go_on(identity)
    }

    /// Swaps the credential, then forwards, or waits for the body, or finishes it.
    fn admit_and_go_on(&mut self, identity: Identity) -> Action {
        self.admit(identity);
        if !self.has_body {
            return self.forward_if_allowed(None);
        }
        // Never pause for a body that already arrived: no body callback would come again.
        match self.body_complete {
            Some(size) => self.finish_request_body(size),
            None => Action::Pause,
        }
    }

    /// Verifies the token (from the cache when it was verified before) and decides.
    fn verify(&mut self, token: String) -> Action {
        let now = self.now();
        let verdict = {
            let mut s = self.shared.borrow_mut();
            let leeway = s.config.leeway_seconds;
            match s.cache.get(&token, leeway, now) {
                Some(identity) => {
                    s.metrics.token_cache(true);
                    Verdict::Verified(identity)
                }
                None => {
                    s.metrics.token_cache(false);
                    auth::verify(&s.config, s.keys.sets(), &token, now)
                }
            }
        };
        self.decide(token, verdict, true)
    }

    fn start_fetch(&mut self, issuer_index: usize, token: &str, error: &AuthError) -> bool {
        let now = self.now();
        let mut s = self.shared.borrow_mut();
        if !s.keys.may_fetch_on_demand(&s.config, issuer_index, now) {
            return false;
        }
        let KeySource::Remote(endpoint) = &s.config.issuers[issuer_index].keys else {
            return false;
        };
        match dispatch_jwks_fetch(self, endpoint, s.config.jwks.fetch_timeout_ms) {
            Ok(call) => {
                s.keys.on_demand_fetch_started(issuer_index, now);
                self.pending = Some(PendingFetch {
                    call,
                    issuer_index,
                    token: token.to_string(),
                    error: error.clone(),
                });
                true
            }
            Err(status) => {
                warn!("cannot start jwks fetch: {status:?}");
                false
            }
        }
    }

    /// The last step before a request without a body leaves: policy, then count it.
    fn forward_if_allowed(&mut self, body: Option<&serde_json::Value>) -> Action {
        if !self.allowed_by_policy(body) {
            return Action::Pause;
        }
        self.shared.borrow().metrics.decision(Decision::Allowed);
        Action::Continue
    }

    /// Applies the caller's policy; on a violation answers 403 and returns false.
    fn allowed_by_policy(&mut self, body: Option<&serde_json::Value>) -> bool {
        let Some(x) = self.exchange.as_ref() else { return true };
        let groups = x.identity.as_ref().map(|i| i.groups.clone()).unwrap_or_default();
        let verdict = self.shared.borrow().config.policy.check(&groups, &x.endpoint, body);
        let Err(v) = verdict else { return true };
        self.shared.borrow().metrics.decision(Decision::Denied);
        self.note(AuditDecision::Denied, Some(v.rule.clone()));
        self.reply(&anthropic_error(
            403,
            "permission_error",
            &format!("blocked by the gateway's policy rule `{}`: {}", v.rule, v.message),
            false,
        ));
        false
    }

    /// Policy, approvals, then masking of the complete request body. `Continue` when it may
    /// be forwarded.
    fn finish_request_body(&mut self, size: usize) -> Action {
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        // Unparseable bodies are refused by the masking step below with a 400.
        if let Ok(parsed) = serde_json::from_slice::<serde_json::Value>(&body) {
            if !self.allowed_by_policy(Some(&parsed)) {
                return Action::Pause;
            }
            if self.start_approvals(&parsed, size) {
                return Action::Pause;
            }
        }
        self.mask_and_forward(size)
    }

    /// Masks the complete request body in place. `Continue` when it may be forwarded.
    fn mask_and_forward(&mut self, size: usize) -> Action {
        let body = self.get_http_request_body(0, size).unwrap_or_default();
        let rules = self.shared.borrow().config.masking.rules.clone();
        match anthropic::mask_request(&rules, &body) {
            Ok(MaskedBody { bytes, hits }) => {
                if let Some(bytes) = &bytes {
                    self.set_http_request_body(0, size, bytes);
                    self.set_http_request_header("content-length", Some(&bytes.len().to_string()));
                }
                self.record_hits(hits, Direction::Request);
                if let Some(x) = self.exchange.as_mut() {
                    x.request_body = Some(bytes.unwrap_or(body));
                }
                self.shared.borrow().metrics.decision(Decision::Allowed);
                Action::Continue
            }
            Err(e) => {
                self.reply(&anthropic_error(
                    400,
                    "invalid_request_error",
                    &format!("the gateway cannot inspect this request body: {e}"),
                    false,
                ));
                Action::Pause
            }
        }
    }

    /// Masks a complete buffered response body in place: a Message as JSON; anything else
    /// (an error page from Envoy or the upstream) as text. Bytes that are neither are refused.
    fn finish_response_body(&mut self, size: usize) {
        let body = self.get_http_response_body(0, size).unwrap_or_default();
        let (rules, thinking) = {
            let s = self.shared.borrow();
            (s.config.masking.rules.clone(), s.config.masking.thinking)
        };
        let masked = anthropic::mask_response(&rules, &body, thinking).or_else(|e| match std::str::from_utf8(&body) {
            Ok(text) => {
                let m = rules.mask(text);
                let bytes = match m.text {
                    std::borrow::Cow::Borrowed(_) => None,
                    std::borrow::Cow::Owned(t) => Some(t.into_bytes()),
                };
                Ok(MaskedBody { bytes, hits: m.hits })
            }
            Err(_) => Err(e),
        });
        match masked {
            Ok(MaskedBody { bytes, hits }) => {
                if let Some(bytes) = &bytes {
                    self.set_http_response_body(0, size, bytes);
                }
                self.record_hits(hits, Direction::Response);
                if let Some(x) = self.exchange.as_mut() {
                    x.transcript.read_message(bytes.as_deref().unwrap_or(&body));
                }
            }
            Err(e) => {
                let error = self.fail_response(&format!("the gateway cannot inspect the upstream response: {e}"));
                self.set_http_response_body(0, size, &error);
            }
        }
    }

    /// Turns a response whose headers are still held into a 502 in the Anthropic shape and
    /// returns the error body to send in place of the upstream's.
    fn fail_response(&mut self, message: &str) -> Vec<u8> {
        warn!("{message}");
        self.set_http_response_header(":status", Some("502"));
        self.set_http_response_header("content-type", Some("application/json"));
        self.set_http_response_header("content-encoding", None);
        self.set_http_response_header("content-length", None);
        anthropic_error(502, "api_error", message, true).body.into_bytes()
    }
}

impl Context for ScrimHttp {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _: usize) {
        if let Some((_, what)) = self.recorder_call.take_if(|(c, _)| *c == call) {
            self.on_recorder_answer(what, body_size);
            return;
        }
        if let Some((_, token)) = self.recorder_check.take_if(|(c, _)| *c == call) {
            if !recorder_answered(self) {
                let mut s = self.shared.borrow_mut();
                if s.recorder_up {
                    warn!("recorder is unreachable: refusing new exchanges");
                }
                s.recorder_up = false;
                drop(s);
                self.refuse_unrecorded();
            } else if self.verify(token) == Action::Continue {
                self.resume_http_request();
            }
            return;
        }
        let Some(pending) = self.pending.take_if(|p| p.call == call) else { return };
        let now = self.now();
        let verdict = {
            let mut s = self.shared.borrow_mut();
            let issuer = s.config.issuers[pending.issuer_index].issuer.clone();
            let result = read_jwks_response(self, &issuer, body_size);
            s.metrics.jwks_refresh(result.is_some());
            let fetched = result.is_some();
            s.keys.fetch_finished(pending.issuer_index, false, result, now);
            match auth::verify(&s.config, s.keys.sets(), &pending.token, now) {
                // Keys still missing after a failed fetch: answer with the original reason.
                Verdict::NeedKeys { error, .. } if fetched => Verdict::Rejected(error),
                Verdict::NeedKeys { .. } => Verdict::Rejected(pending.error.clone()),
                v => v,
            }
        };
        if self.decide(pending.token, verdict, false) == Action::Continue {
            self.resume_http_request();
        }
    }
}

impl HttpContext for ScrimHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        self.has_body = !end_of_stream;
        // Request headers are gone once this callback continues: copy what the record needs.
        self.exchange = Some(Exchange::new(
            self.get_http_request_header("x-request-id").unwrap_or_default(),
            self.get_http_request_header("x-claude-code-session-id"),
            self.get_http_request_header(":method").unwrap_or_default(),
            &self.get_http_request_header(":path").unwrap_or_default(),
            self.now_ms(),
        ));
        let authorization = self.get_http_request_header("authorization");
        let x_api_key = self.get_http_request_header("x-api-key");
        let token = {
            let s = self.shared.borrow();
            auth::extract_token(&s.config.token_sources, authorization.as_deref(), x_api_key.as_deref())
                .map(str::to_string)
        };
        let Some(token) = token else {
            self.refuse(&AuthError::MissingToken);
            return Action::Pause;
        };
        let (required, up) = {
            let s = self.shared.borrow();
            (s.config.audit.required, s.recorder_up)
        };
        if required && !up {
            self.refuse_unrecorded();
            return Action::Pause;
        }
        let encoding = self.get_http_request_header("content-encoding");
        if self.has_body && encoding.as_deref().is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            self.reply(&anthropic_error(
                415,
                "invalid_request_error",
                "compressed request bodies are not accepted: the gateway must read what it forwards",
                false,
            ));
            return Action::Pause;
        }
        if required {
            // The probe only says the recorder was up a moment ago: an exchange that started
            // after it died would go unrecorded, so each one asks for itself.
            let call = dispatch_recorder_check(self, &self.shared.borrow().config.audit);
            match call {
                Ok(call) => {
                    self.recorder_check = Some((call, token));
                    return Action::Pause;
                }
                Err(status) => {
                    warn!("cannot check the recorder: {status:?}");
                    self.refuse_unrecorded();
                    return Action::Pause;
                }
            }
        }
        self.verify(token)
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if self.replied {
            return Action::Pause;
        }
        let limit = self.shared.borrow().config.masking.max_request_bytes;
        if body_size > limit {
            self.reply(&anthropic_error(
                413,
                "request_too_large",
                &format!("the request body exceeds the gateway's limit of {limit} bytes"),
                false,
            ));
            return Action::Pause;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        if !self.admitted {
            // Admission is waiting for signing keys; it finishes the body when they arrive.
            self.body_complete = Some(body_size);
            return Action::Pause;
        }
        self.finish_request_body(body_size)
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        let now_ms = self.now_ms();
        if let Some(x) = self.exchange.as_mut() {
            x.first_byte_ms = Some(now_ms);
            x.completed |= end_of_stream;
        }
        if self.replied || !self.admitted || end_of_stream {
            return Action::Continue;
        }
        let encoding = self.get_http_response_header("content-encoding");
        if encoding.as_deref().is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
            // The body would be unreadable: refuse it instead of passing it unmasked.
            let error = self.fail_response("the upstream response is compressed; the gateway does not pass it on");
            self.response = ResponseMode::Discard { last: Some(error) };
            return Action::Continue;
        }
        // Masking changes lengths: let Envoy frame the body itself.
        self.set_http_response_header("content-length", None);
        let content_type = self.get_http_response_header("content-type").unwrap_or_default();
        if content_type.to_ascii_lowercase().starts_with("text/event-stream") {
            let s = self.shared.borrow();
            let endpoint = self.exchange.as_ref().map(|x| x.endpoint.as_str()).unwrap_or("");
            let masking = &s.config.masking;
            let rewriter = if masking.openai_chat_paths.iter().any(|p| p == endpoint) {
                StreamRewriter::openai_chat(masking.rules.clone())
            } else {
                StreamRewriter::new(masking.rules.clone(), masking.thinking)
            };
            drop(s);
            // The audit transcript takes the text of each delta as the rewriter wrote it,
            // rather than reading every event back out of the bytes sent.
            self.response = ResponseMode::Stream(Box::new(rewriter.recording()));
            if let Some(x) = self.exchange.as_mut() {
                x.stream = true;
            }
            Action::Continue
        } else {
            self.response = ResponseMode::Buffer;
            // Held until the body is complete, so a failure can still change the status.
            Action::Pause
        }
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            if let Some(x) = self.exchange.as_mut() {
                x.completed = true;
            }
        }
        match std::mem::replace(&mut self.response, ResponseMode::Pass) {
            ResponseMode::Pass => {}
            ResponseMode::Discard { last } => {
                let bytes = if end_of_stream { last.clone().unwrap_or_default() } else { Vec::new() };
                self.set_http_response_body(0, body_size, &bytes);
                self.response = ResponseMode::Discard { last };
            }
            ResponseMode::Stream(mut rewriter) => {
                let chunk = self.get_http_response_body(0, body_size).unwrap_or_default();
                let out = rewriter.push(&chunk).and_then(|pushed| {
                    let rest = if end_of_stream { rewriter.finish()? } else { Vec::new() };
                    Ok((pushed, rest))
                });
                match out {
                    Ok((pushed, rest)) => {
                        if let Some(x) = self.exchange.as_mut() {
                            rewriter.written(&pushed).for_each(|w| x.transcript.push_written(w));
                            x.transcript.push_stream(&rest);
                        }
                        let bytes = if rest.is_empty() { pushed } else { [pushed, rest].concat() };
                        self.set_http_response_body(0, body_size, &bytes);
                        if end_of_stream {
                            self.record_hits(rewriter.hits(), Direction::Response);
                        } else {
                            self.response = ResponseMode::Stream(rewriter);
                        }
                    }
                    Err(e) => {
                        // Headers are gone: end the stream with an error event, drop the rest.
                        warn!("stream could not be inspected: {e}");
                        self.record_hits(rewriter.hits(), Direction::Response);
                        self.note(AuditDecision::Allowed, Some("stream could not be inspected".into()));
                        let error = sse_error("the gateway cannot inspect the rest of this stream");
                        self.set_http_response_body(0, body_size, &error);
                        self.response = ResponseMode::Discard { last: None };
                    }
                }
            }
            ResponseMode::Buffer => {
                let limit = self.shared.borrow().config.masking.max_response_bytes;
                if body_size > limit {
                    let error = self.fail_response("the upstream response is too large for the gateway to inspect");
                    if end_of_stream {
                        self.set_http_response_body(0, body_size, &error);
                    } else {
                        self.set_http_response_body(0, body_size, &[]);
                        self.response = ResponseMode::Discard { last: Some(error) };
                    }
                    return Action::Continue;
                }
                if !end_of_stream {
                    self.response = ResponseMode::Buffer;
                    return Action::Pause;
                }
                self.finish_response_body(body_size);
            }
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let Some(exchange) = self.exchange.take() else { return };
        let now_ms = self.now_ms();
        let bytes = {
            let mut s = self.shared.borrow_mut();
            let user = exchange.identity.as_ref().map(|i| i.subject.as_str());
            let session = s.sessions.session_for(exchange.session_header.as_deref(), user, now_ms);
            let record = exchange.record(session, s.config.audit.content, now_ms);
            record.to_bytes_capped(s.config.audit.max_record_bytes)
        };
        // The access logger reads this as filter state `wasm.scrim_audit`.
        if let Err(status) = proxy_wasm::hostcalls::set_property(vec![audit_record::PROPERTY_NAME], Some(&bytes)) {
            warn!("audit record not handed to the access log: {status:?}");
        }
    }
}
