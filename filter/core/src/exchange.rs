//! One exchange as the filter lived it, gathered along the request and response callbacks,
//! and turned into the audit record at the end; plus the session a request belongs to when
//! the client names none.

use crate::audit::{AuditRecord, AuditUser, ContentMode, Decision, Direction, MaskCount, Timings, RECORD_VERSION};
use crate::auth::Identity;
use crate::transcript::Transcript;
use std::collections::HashMap;

/// Most bytes of response text kept for the record (the record itself is capped later).
const TRANSCRIPT_LIMIT: usize = 4 * 1024 * 1024;

#[derive(Debug)]
pub struct Exchange {
    pub exchange_id: String,
    /// `x-claude-code-session-id`, when the client sent one.
    pub session_header: Option<String>,
    pub method: String,
    pub endpoint: String,
    pub started_ms: u64,
    pub identity: Option<Identity>,
    pub decision: Decision,
    pub reason: Option<String>,
    masked: Vec<MaskCount>,
    /// The request body as it went upstream (after masking).
    pub request_body: Option<Vec<u8>>,
    pub transcript: Transcript,
    pub stream: bool,
    pub first_byte_ms: Option<u64>,
    /// The response reached its end (false: the client or upstream went away first).
    pub completed: bool,
    /// Reviews whose approval let the request through.
    pub approvals: Vec<String>,
    /// The grant that let the caller in.
    pub grant: Option<String>,
}

impl Exchange {
    pub fn new(exchange_id: String, session_header: Option<String>, method: String, path: &str, started_ms: u64) -> Self {
        let endpoint = path.split('?').next().unwrap_or_default().to_string();
        Exchange {
            exchange_id,
            session_header: session_header.filter(|s| !s.is_empty() && s.len() <= 128),
            method,
            endpoint,
            started_ms,
            identity: None,
            // Until the filter decides, nothing was let through.
            decision: Decision::Unauthenticated,
            reason: None,
            masked: Vec::new(),
            request_body: None,
            transcript: Transcript::new(TRANSCRIPT_LIMIT),
            stream: false,
            first_byte_ms: None,
            completed: false,
            approvals: Vec::new(),
            grant: None,
        }
    }

    pub fn add_masked(&mut self, rule: &str, direction: Direction, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        match self.masked.iter_mut().find(|m| m.rule == rule && m.direction == direction) {
            Some(m) => m.count = m.count.saturating_add(count),
            None => self.masked.push(MaskCount { rule: rule.to_string(), direction, count }),
        }
    }

    pub fn masked(&self) -> &[MaskCount] {
        &self.masked
    }

    /// The audit record, at the end of the exchange (`now_ms`).
    pub fn record(&self, session_id: String, mode: ContentMode, now_ms: u64) -> AuditRecord {
        let request: Option<serde_json::Value> =
            self.request_body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
        let model = request
            .as_ref()
            .and_then(|r| r.get("model"))
            .and_then(|m| m.as_str())
            .or(self.transcript.model())
            .map(str::to_string);
        let full = mode == ContentMode::Full;
        AuditRecord {
            version: RECORD_VERSION,
            exchange_id: self.exchange_id.clone(),
            session_id,
            user: self.identity.as_ref().map(|i| AuditUser {
                subject: i.subject.clone(),
                email: i.email.clone(),
                issuer: i.issuer.clone(),
                groups: i.groups.clone(),
            }),
            method: self.method.clone(),
            endpoint: self.endpoint.clone(),
            model,
            decision: self.decision,
            reason: self.reason.clone(),
            content_mode: mode,
            masked: self.masked.clone(),
            request: if full { request } else { None },
            response: if full { self.transcript.response() } else { None },
            usage: self.transcript.usage(),
            timings: Timings {
                first_byte_ms: self.first_byte_ms.map(|t| t.saturating_sub(self.started_ms)),
                total_ms: Some(now_ms.saturating_sub(self.started_ms)),
            },
            stream: self.stream,
            client_disconnected: self.decision == Decision::Allowed && !self.completed,
            truncated: full && self.transcript.cut,
            approvals: self.approvals.clone(),
            grant: self.grant.clone(),
        }
    }
}

/// Sessions for clients that send no session id: one per user, renewed after `idle_ms` of
/// silence. Per VM (one per Envoy worker), so a user's requests on two workers may get two
/// ids; clients that send `x-claude-code-session-id` are exact.
#[derive(Debug)]
pub struct SessionTracker {
    idle_ms: u64,
    capacity: usize,
    last: HashMap<String, (String, u64)>,
}

impl SessionTracker {
    pub fn new(idle_ms: u64, capacity: usize) -> Self {
        SessionTracker { idle_ms, capacity, last: HashMap::new() }
    }

    /// The session of a request by `user` (or by nobody, for refused callers) at `now_ms`.
    pub fn session_for(&mut self, header: Option<&str>, user: Option<&str>, now_ms: u64) -> String {
        if let Some(h) = header {
            return h.to_string();
        }
        let Some(user) = user else { return "anonymous".to_string() };
        if self.last.len() >= self.capacity && !self.last.contains_key(user) {
            let idle = self.idle_ms;
            self.last.retain(|_, (_, seen)| now_ms.saturating_sub(*seen) < idle);
        }
        let entry = self.last.entry(user.to_string()).or_insert_with(|| (String::new(), 0));
        if entry.0.is_empty() || now_ms.saturating_sub(entry.1) >= self.idle_ms {
            entry.0 = format!("{user}@{now_ms}");
        }
        entry.1 = now_ms;
        entry.0.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_session_wins() {
        let mut t = SessionTracker::new(1000, 10);
        assert_eq!(t.session_for(Some("abc"), Some("alice"), 5), "abc");
    }

    #[test]
    fn derived_session_lasts_while_the_user_is_active_and_renews_after_idle_time() {
        let mut t = SessionTracker::new(1000, 10);
        let first = t.session_for(None, Some("alice"), 10_000);
        assert_eq!(t.session_for(None, Some("alice"), 10_900), first);
        assert_eq!(t.session_for(None, Some("alice"), 11_800), first, "activity extends it");
        let next = t.session_for(None, Some("alice"), 12_800);
        assert_ne!(next, first);
        assert_ne!(t.session_for(None, Some("bob"), 12_800), next, "one per user");
    }

    #[test]
    fn masked_counts_merge_by_rule_and_direction() {
        let mut e = Exchange::new("x".into(), None, "POST".into(), "/v1/messages?beta=true", 0);
        e.add_masked("aws", Direction::Request, 1);
        e.add_masked("aws", Direction::Request, 2);
        e.add_masked("aws", Direction::Response, 1);
        assert_eq!(e.masked().len(), 2);
        assert_eq!(e.masked()[0].count, 3);
        assert_eq!(e.endpoint, "/v1/messages");
    }

    #[test]
    fn metadata_mode_records_no_content() {
        let mut e = Exchange::new("x".into(), None, "POST".into(), "/v1/messages", 100);
        e.request_body = Some(br#"{"model":"m","messages":[]}"#.to_vec());
        e.decision = Decision::Allowed;
        e.completed = true;
        let r = e.record("s".into(), ContentMode::Metadata, 250);
        assert!(r.request.is_none() && r.response.is_none());
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.timings.total_ms, Some(150));
        let r = e.record("s".into(), ContentMode::Full, 250);
        assert!(r.request.is_some());
    }
}
