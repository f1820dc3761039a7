//! The per-request side of approvals and just-in-time grants: asks the recorder's review and
//! grant routes (through Envoy, with the gateway's service token), pauses the request while
//! it waits, and forwards or refuses with what the recorder said. Decisions are in
//! `scrim_core::review`; this file moves bytes. Whenever the recorder cannot answer, the
//! request is refused (503): nothing that needs a yes goes through without one.

use super::ScrimHttp;
use crate::metrics::Decision;
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
use scrim_core::audit::{AuditUser, Decision as AuditDecision};
use scrim_core::auth::{AuthError, Identity};
use scrim_core::errors::anthropic_error;
use scrim_core::review::{self, GrantAnswer, ReviewAnswer, ReviewRequest, ReviewState};
use std::time::Duration;

/// Longest single long poll (the recorder caps it too).
const MAX_POLL_MS: u64 = 60_000;

/// What a call to the recorder is for.
pub(super) enum RecorderCall {
    /// Whether a caller outside the allowed groups holds a grant; the refusal if not.
    Grant { identity: Identity, refusal: AuthError },
    /// The review of the first pending approval; `size` is the buffered body's.
    Review { size: usize },
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

impl ScrimHttp {
    fn call_recorder(&self, method: &str, path: &str, body: Option<&[u8]>, wait_ms: u64) -> Result<u32, String> {
        let s = self.shared.borrow();
        let reviews = &s.config.policy.reviews;
        let token = s.recorder_token.as_deref().ok_or("no service token")?;
        let authorization = format!("Bearer {token}");
        self.dispatch_http_call(
            &reviews.recorder_cluster,
            vec![
                (":method", method),
                (":path", path),
                (":authority", &reviews.authority),
                ("authorization", &authorization),
                ("content-type", "application/json"),
            ],
            body,
            vec![],
            Duration::from_millis(reviews.timeout_ms + wait_ms),
        )
        .map_err(|status| format!("{status:?}"))
    }

    /// 503: the recorder did not answer, so nothing that needs its yes goes through.
    fn approvals_unavailable(&mut self, why: &str) {
        warn!("review and grant service unavailable: {why}");
        {
            let s = self.shared.borrow();
            s.metrics.review("unavailable");
            s.metrics.decision(Decision::Unavailable);
        }
        self.note(AuditDecision::Unavailable, Some("approvals_unavailable".into()));
        self.reply(&anthropic_error(
            503,
            "api_error",
            "the gateway cannot reach its approval service; try again shortly",
            true,
        ));
    }

    /// A caller outside the allowed groups: in if the recorder reports an active grant.
    pub(super) fn check_grant(&mut self, identity: Identity, refusal: AuthError) -> Action {
        let now = self.now_ms();
        let cached = self.shared.borrow().grants.get(&identity.issuer, &identity.subject, now).cloned();
        if let Some(answer) = cached {
            return self.apply_grant(identity, refusal, answer);
        }
        let path = format!(
            "/internal/v1/grants/active?issuer={}&sub={}",
            query_value(&identity.issuer),
            query_value(&identity.subject)
        );
        match self.call_recorder("GET", &path, None, 0) {
            Ok(call) => {
                self.recorder_call = Some((call, RecorderCall::Grant { identity, refusal }));
            }
            Err(e) => self.approvals_unavailable(&e),
        }
        Action::Pause
    }

    fn apply_grant(&mut self, identity: Identity, refusal: AuthError, answer: GrantAnswer) -> Action {
        self.shared.borrow().metrics.grant(answer.active);
        if !answer.active {
            if let Some(x) = self.exchange.as_mut() {
                x.identity = Some(identity);
            }
            self.refuse(&refusal);
            return Action::Pause;
        }
        if let Some(x) = self.exchange.as_mut() {
            x.grant = answer.id;
        }
        self.admit_and_go_on(identity)
    }

    /// After the deny rules: opens the reviews this request needs. True when it must wait.
    pub(super) fn start_approvals(&mut self, parsed: &serde_json::Value, size: usize) -> bool {
        let (needed, wait_s) = {
            let s = self.shared.borrow();
            (s.config.policy.approvals_needed(parsed), s.config.policy.reviews.wait_seconds)
        };
        if needed.is_empty() {
            return false;
        }
        self.approvals = needed.into();
        self.wait_until_ms = self.now_ms() + wait_s * 1000;
        self.request_review(size);
        true
    }

    /// Asks for the review of the first approval still needed.
    fn request_review(&mut self, size: usize) {
        let Some(m) = self.approvals.front().cloned() else { return };
        let now = self.now_ms();
        let Some(x) = self.exchange.as_ref() else { return };
        let Some(identity) = x.identity.clone() else { return };
        let (header, exchange_id) = (x.session_header.clone(), x.exchange_id.clone());
        let request = {
            let mut s = self.shared.borrow_mut();
            let session_id = s.sessions.session_for(header.as_deref(), Some(&identity.subject), now);
            // Approvers see the context with secrets masked: nothing unmasked leaves the gateway.
            let excerpt = review::excerpt(&s.config.masking.rules.mask(&m.context).text);
            ReviewRequest {
                fingerprint: review::fingerprint(&identity.issuer, &identity.subject, &session_id, &m.rule, &m.matched),
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
                exchange_id,
                excerpt,
            }
        };
        let body = serde_json::to_vec(&request).expect("review request serialises");
        match self.call_recorder("POST", "/internal/v1/reviews", Some(&body), 0) {
            Ok(call) => self.recorder_call = Some((call, RecorderCall::Review { size })),
            Err(e) => self.approvals_unavailable(&e),
        }
    }

    pub(super) fn on_recorder_answer(&mut self, what: RecorderCall, body_size: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        match what {
            RecorderCall::Grant { identity, refusal } => match review::parse_answer::<GrantAnswer>(&status, &body) {
                Ok(answer) => {
                    let now = self.now_ms();
                    {
                        let mut s = self.shared.borrow_mut();
                        let ttl_ms = s.config.policy.reviews.grant_cache_seconds * 1000;
                        s.grants.insert(&identity.issuer, &identity.subject, answer.clone(), now, ttl_ms);
                    }
                    if self.apply_grant(identity, refusal, answer) == Action::Continue {
                        self.resume_http_request();
                    }
                }
                Err(e) => self.approvals_unavailable(&e),
            },
            RecorderCall::Review { size } => match review::parse_answer::<ReviewAnswer>(&status, &body) {
                Ok(answer) => self.on_review(answer, size),
                Err(e) => self.approvals_unavailable(&e),
            },
        }
    }

    fn on_review(&mut self, answer: ReviewAnswer, size: usize) {
        let Some(m) = self.approvals.front().cloned() else { return };
        match answer.status {
            ReviewState::Approved => {
                self.shared.borrow().metrics.review("approved");
                self.approvals.pop_front();
                if let Some(x) = self.exchange.as_mut() {
                    x.approvals.push(answer.id);
                }
                if !self.approvals.is_empty() {
                    self.request_review(size);
                } else if self.mask_and_forward(size) == Action::Continue {
                    self.resume_http_request();
                }
            }
            ReviewState::Rejected => {
                {
                    let s = self.shared.borrow();
                    s.metrics.review("rejected");
                    s.metrics.decision(Decision::Denied);
                }
                self.note(AuditDecision::Denied, Some(format!("review_rejected:{}", answer.id)));
                self.reply(&anthropic_error(403, "permission_error", &review::rejected_message(&answer, &m.rule), false));
            }
            // Still waiting (or its time ran out while waiting): wait on if allowed, else
            // tell the developer which review to get approved.
            ReviewState::Pending | ReviewState::Expired => {
                let now = self.now_ms();
                if answer.status == ReviewState::Pending && now + 50 < self.wait_until_ms {
                    let wait = (self.wait_until_ms - now).min(MAX_POLL_MS);
                    let path = format!("/internal/v1/reviews/{}?wait_ms={wait}", query_value(&answer.id));
                    match self.call_recorder("GET", &path, None, wait) {
                        Ok(call) => self.recorder_call = Some((call, RecorderCall::Review { size })),
                        Err(e) => self.approvals_unavailable(&e),
                    }
                    return;
                }
                {
                    let s = self.shared.borrow();
                    s.metrics.review("pending");
                    s.metrics.decision(Decision::Denied);
                }
                self.note(AuditDecision::PendingApproval, Some(format!("review_pending:{}", answer.id)));
                self.reply(&anthropic_error(
                    403,
                    "permission_error",
                    &review::pending_message(&answer.id, &m.rule, &m.message),
                    false,
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn query_values_are_percent_encoded() {
        assert_eq!(query_value("https://idp.example/realms/a b"), "https%3A%2F%2Fidp.example%2Frealms%2Fa%20b");
        assert_eq!(query_value("alice-1_2.3~"), "alice-1_2.3~");
    }
}
