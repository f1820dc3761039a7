//! Per-request context: identity check and credential swap on the request headers.
//!
//! Decisions come from `scrim_core`; this file only reads headers, sends local replies and,
//! when a token needs keys this VM does not have yet, fetches them and resumes the request.

use crate::metrics::Decision;
use crate::root::{dispatch_jwks_fetch, read_jwks_response, seconds, SharedRef};
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use scrim_core::auth::{self, AuthError, Identity, Verdict};
use scrim_core::config::KeySource;
use scrim_core::credential::header_plan;
use scrim_core::errors::Refusal;

pub struct ScrimHttp {
    shared: SharedRef,
    /// Whether the request may move on. Until it is admitted, every body callback holds the
    /// body back: with `allow_on_headers_stop_iteration`, a body callback that returned
    /// Continue would forward the request with the caller's credential still on it.
    admitted: bool,
    /// The token of a request paused while its issuer's keys are fetched.
    pending: Option<PendingFetch>,
    pub identity: Option<Identity>,
}

struct PendingFetch {
    call: u32,
    issuer_index: usize,
    token: String,
    /// The error to answer with if the fetch does not produce a usable key.
    error: AuthError,
}

impl ScrimHttp {
    pub fn new(shared: SharedRef) -> Self {
        ScrimHttp { shared, admitted: false, pending: None, identity: None }
    }

    fn now(&self) -> u64 {
        seconds(self.get_current_time())
    }

    fn refuse(&self, e: &AuthError) {
        let s = self.shared.borrow();
        s.metrics.jwt_failure(e);
        s.metrics.decision(match e {
            AuthError::KeysUnavailable { .. } => Decision::Unavailable,
            AuthError::NoPermittedGroup { .. } => Decision::Forbidden,
            _ => Decision::Unauthenticated,
        });
        let r = Refusal::from(e);
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.send_http_response(r.status, headers, Some(r.body.as_bytes()));
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
        s.metrics.decision(Decision::Allowed);
        drop(s);
        self.admitted = true;
        self.identity = Some(identity);
    }

    /// Finishes a decision: admit, refuse, or (with `may_fetch`) fetch keys and pause.
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
                if may_fetch && self.start_fetch(issuer_index, &token, &error) {
                    return Action::Pause;
                }
                self.refuse(&error);
                return Action::Pause;
            }
        };
        let permitted = auth::authorize(&self.shared.borrow().config, &identity);
        match permitted {
            Ok(()) => {
                self.admit(identity);
                Action::Continue
            }
            Err(e) => {
                self.refuse(&e);
                Action::Pause
            }
        }
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
}

impl Context for ScrimHttp {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _: usize) {
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
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let now = self.now();
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

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.admitted {
            Action::Continue
        } else {
            Action::Pause
        }
    }
}
