//! Approvals and just-in-time grants as the filter sees them: the fingerprint an approval
//! covers, what the filter sends the recorder, how it reads the answers, what it tells the
//! developer, and the per-VM grant cache. Pure; the wasm side makes the calls.

use crate::audit::AuditUser;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Longest excerpt an approver sees, in characters.
pub const EXCERPT_CHARS: usize = 240;

/// What one approval covers: this user, this session, this rule, this matched text. The same
/// content in a later turn of the session maps to the same review; anything else needs its own.
pub fn fingerprint(issuer: &str, subject: &str, session_id: &str, rule: &str, matched: &str) -> String {
    let mut h = Sha256::new();
    for part in [issuer, subject, session_id, rule, matched] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// `text` cut to [`EXCERPT_CHARS`] characters (an ellipsis marks the cut).
pub fn excerpt(text: &str) -> String {
    match text.char_indices().nth(EXCERPT_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", &text[..end]),
    }
}

/// `POST /internal/v1/reviews`: find or open the review for a fingerprint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReviewRequest {
    pub fingerprint: String,
    pub rule: String,
    pub rule_message: String,
    pub approvals_required: u32,
    pub ttl_seconds: u64,
    pub user: AuditUser,
    pub session_id: String,
    pub exchange_id: String,
    /// The text around the match, masked, at most [`EXCERPT_CHARS`].
    pub excerpt: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewState {
    Pending,
    Approved,
    Rejected,
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewDecision {
    pub approver: String,
    pub approver_issuer: String,
    /// `approve` or `reject`.
    pub decision: String,
    pub reason: String,
    pub at_ms: i64,
}

/// The parts of a review the filter acts on (the recorder sends more).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReviewAnswer {
    pub id: String,
    pub status: ReviewState,
    #[serde(default)]
    pub decisions: Vec<ReviewDecision>,
}

/// `GET /internal/v1/grants/active`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct GrantAnswer {
    pub active: bool,
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
}

/// Reads a recorder answer: anything but a 200 with the expected JSON is an error, and the
/// caller fails closed.
pub fn parse_answer<T: for<'de> Deserialize<'de>>(status: &str, body: &[u8]) -> Result<T, String> {
    if status != "200" {
        return Err(format!("the recorder answered {}", if status.is_empty() { "nothing" } else { status }));
    }
    serde_json::from_slice(body).map_err(|e| format!("unreadable recorder answer: {e}"))
}

/// Why the developer cannot go on yet, naming the review and what the approver runs.
pub fn pending_message(review_id: &str, rule: &str, rule_message: &str) -> String {
    format!(
        "this request needs approval under the gateway's rule `{rule}` ({rule_message}). Review {review_id} \
         is waiting; an approver runs `scrim-recorder reviews approve {review_id} --reason \"...\"`, then send \
         the request again"
    )
}

/// Why a rejected request stays refused.
pub fn rejected_message(answer: &ReviewAnswer, rule: &str) -> String {
    let why = answer
        .decisions
        .iter()
        .rev()
        .find(|d| d.decision == "reject")
        .map(|d| format!(" by {}: {}", d.approver, d.reason))
        .unwrap_or_default();
    format!("review {} under the gateway's rule `{rule}` was rejected{why}", answer.id)
}

/// Grant answers per caller, trusted for a configured time (yes and no alike), so a revoked
/// grant stops working within that time and a new one starts within it.
#[derive(Debug, Default)]
pub struct GrantCache {
    entries: HashMap<(String, String), (GrantAnswer, u64)>,
}

/// Most callers remembered; past it the cache starts over (answers are cheap to refetch).
const GRANT_CACHE_ENTRIES: usize = 4096;

impl GrantCache {
    pub fn get(&self, issuer: &str, subject: &str, now_ms: u64) -> Option<&GrantAnswer> {
        let (answer, until) = self.entries.get(&(issuer.to_string(), subject.to_string()))?;
        let expired = answer.expires_at_ms.is_some_and(|e| e <= now_ms as i64);
        (now_ms < *until && !expired).then_some(answer)
    }

    pub fn insert(&mut self, issuer: &str, subject: &str, answer: GrantAnswer, now_ms: u64, ttl_ms: u64) {
        if self.entries.len() >= GRANT_CACHE_ENTRIES {
            self.entries.clear();
        }
        self.entries.insert((issuer.to_string(), subject.to_string()), (answer, now_ms + ttl_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_every_part_and_parts_do_not_run_together() {
        let base = fingerprint("iss", "alice", "s1", "prod", "db.prod");
        assert_eq!(base.len(), 64);
        assert_eq!(base, fingerprint("iss", "alice", "s1", "prod", "db.prod"));
        for other in [
            fingerprint("iss2", "alice", "s1", "prod", "db.prod"),
            fingerprint("iss", "bob", "s1", "prod", "db.prod"),
            fingerprint("iss", "alice", "s2", "prod", "db.prod"),
            fingerprint("iss", "alice", "s1", "other", "db.prod"),
            fingerprint("iss", "alice", "s1", "prod", "db2.prod"),
            fingerprint("iss", "alic", "es1", "prod", "db.prod"),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn excerpt_is_cut_at_a_character_count_with_an_ellipsis() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(300);
        let cut = excerpt(&long);
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn answers_other_than_200_json_are_errors() {
        let ok: ReviewAnswer = parse_answer("200", br#"{"id":"rv-1","status":"approved","extra":1}"#).unwrap();
        assert_eq!(ok.status, ReviewState::Approved);
        assert!(parse_answer::<ReviewAnswer>("503", b"{}").is_err());
        assert!(parse_answer::<ReviewAnswer>("", b"").is_err());
        assert!(parse_answer::<ReviewAnswer>("200", b"not json").is_err());
        assert!(parse_answer::<ReviewAnswer>("200", br#"{"id":"rv-1","status":"maybe"}"#).is_err());
    }

    #[test]
    fn messages_name_the_review_the_command_and_the_rejection_reason() {
        let m = pending_message("rv-42", "prod-hosts", "production hosts");
        assert!(m.contains("rv-42") && m.contains("scrim-recorder reviews approve rv-42") && m.contains("prod-hosts"));
        let answer = ReviewAnswer {
            id: "rv-42".into(),
            status: ReviewState::Rejected,
            decisions: vec![ReviewDecision {
                approver: "carol".into(),
                approver_issuer: "iss".into(),
                decision: "reject".into(),
                reason: "not this host".into(),
                at_ms: 1,
            }],
        };
        let m = rejected_message(&answer, "prod-hosts");
        assert!(m.contains("rv-42") && m.contains("carol") && m.contains("not this host"));
    }

    #[test]
    fn grant_answers_are_trusted_for_their_time_and_never_past_the_grant() {
        let mut cache = GrantCache::default();
        let yes = GrantAnswer { active: true, id: Some("gr-1".into()), expires_at_ms: Some(50_000) };
        cache.insert("iss", "dave", yes.clone(), 1_000, 10_000);
        assert_eq!(cache.get("iss", "dave", 5_000), Some(&yes));
        assert_eq!(cache.get("iss", "dave", 11_000), None, "cache time over");
        assert_eq!(cache.get("other", "dave", 5_000), None);
        cache.insert("iss", "dave", yes, 45_000, 10_000);
        assert_eq!(cache.get("iss", "dave", 50_000), None, "grant expired inside the cache time");
        let no = GrantAnswer { active: false, id: None, expires_at_ms: None };
        cache.insert("iss", "erin", no.clone(), 0, 1_000);
        assert_eq!(cache.get("iss", "erin", 999), Some(&no));
    }
}
