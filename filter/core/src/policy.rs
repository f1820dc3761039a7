//! Request policy: what each group may ask for (models, `max_tokens`, endpoints) and deny
//! rules over what the request would send. Pure: the filter hands in the caller's groups, the
//! endpoint and the parsed body, and gets back the first rule that refuses it.

use crate::inspect::Ask;
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The policy as written in the `policy` section of the filter configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    /// Limits per group. A request must be allowed by at least one of the caller's groups that
    /// has an entry here; a caller none of whose groups has one is held to `default`.
    #[serde(default)]
    pub groups: BTreeMap<String, RawLimits>,
    /// Limits for callers none of whose groups is listed in `groups`. Default: no limits.
    #[serde(default)]
    pub default: RawLimits,
    /// Rules that block a request outright when they match anything it would send (system
    /// prompt, messages, tool results, tool inputs).
    #[serde(default)]
    pub deny: Vec<RawDenyRule>,
    /// Rules that hold a request until approvers say yes (after the deny rules pass). An
    /// approval covers the matched text for that user and session until it expires.
    #[serde(default)]
    pub approval: Vec<RawApprovalRule>,
    /// How the filter asks the recorder about reviews and grants.
    #[serde(default)]
    pub reviews: RawReviews,
    /// Just-in-time grants for callers outside the allowed groups.
    #[serde(default)]
    pub grants: RawGrants,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApprovalRule {
    /// Stable id, named in the review and the refusal.
    pub id: String,
    /// What approvers and the developer read about the rule.
    pub message: String,
    /// A regex (ASCII classes, as in RE2) searched in every string the request would send.
    pub regex: String,
    /// Distinct approvers needed. Default 1.
    #[serde(default = "one")]
    pub approvals_required: u32,
    /// How long a decision stands, in seconds. Default 28800 (8 hours).
    #[serde(default = "eight_hours")]
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReviews {
    /// Cluster of the recorder's HTTP API. Default `scrim_recorder_api`.
    #[serde(default = "default_reviews_cluster")]
    pub recorder_cluster: String,
    /// `:authority` of calls to it. Default `scrim-recorder`.
    #[serde(default = "default_reviews_authority")]
    pub authority: String,
    /// Timeout of one call (a long poll adds its wait). Default 2000.
    #[serde(default = "default_reviews_timeout")]
    pub timeout_ms: u64,
    /// How long a request needing approval waits for the decision before it is refused
    /// with the review id; 0 refuses at once. Default 0, at most 600 (agents give up after
    /// about 10 minutes).
    #[serde(default)]
    pub wait_seconds: u64,
    /// How long a VM trusts a grant answer (yes or no). Default 10, 1 to 300.
    #[serde(default = "default_grant_cache")]
    pub grant_cache_seconds: u64,
    /// Envoy environment variable holding the token the recorder expects from the gateway.
    /// Default `SCRIM_RECORDER_SERVICE_TOKEN`.
    #[serde(default = "default_token_env")]
    pub token_env: String,
}

impl Default for RawReviews {
    fn default() -> Self {
        RawReviews {
            recorder_cluster: default_reviews_cluster(),
            authority: default_reviews_authority(),
            timeout_ms: default_reviews_timeout(),
            wait_seconds: 0,
            grant_cache_seconds: default_grant_cache(),
            token_env: default_token_env(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrants {
    /// Let an authenticated caller outside the allowed groups in while the recorder reports
    /// an active grant for them (held to `default` limits). Default false.
    #[serde(default)]
    pub enabled: bool,
}

fn one() -> u32 {
    1
}
fn eight_hours() -> u64 {
    8 * 3600
}
fn default_reviews_cluster() -> String {
    "scrim_recorder_api".into()
}
fn default_reviews_authority() -> String {
    "scrim-recorder".into()
}
fn default_reviews_timeout() -> u64 {
    2000
}
fn default_grant_cache() -> u64 {
    10
}
fn default_token_env() -> String {
    "SCRIM_RECORDER_SERVICE_TOKEN".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Model name patterns (`*` matches any run of characters); absent means any model.
    #[serde(default)]
    pub models: Option<Vec<String>>,
    /// Highest `max_tokens` a request may ask for; absent means no cap.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Paths (without query string) that may be called; absent means any.
    #[serde(default)]
    pub endpoints: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDenyRule {
    /// Stable id, named in the refusal and the audit record.
    pub id: String,
    /// What the developer reads when the rule blocks a request.
    pub message: String,
    /// A regex (ASCII classes, as in RE2) searched in every string the request would send.
    pub regex: String,
}

/// Why a policy could not be built; `field` is relative to the `policy` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub field: String,
    pub message: String,
}

#[derive(Debug, Clone)]
struct Limits {
    models: Option<Vec<String>>,
    max_tokens: Option<u64>,
    endpoints: Option<Vec<String>>,
}

#[derive(Debug, Clone)]
struct DenyRule {
    id: String,
    message: String,
    regex: Regex,
}

#[derive(Debug, Clone)]
struct ApprovalRule {
    id: String,
    message: String,
    regex: Regex,
    approvals_required: u32,
    ttl_seconds: u64,
}

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    groups: BTreeMap<String, Limits>,
    default: Option<Limits>,
    deny: Vec<DenyRule>,
    approval: Vec<ApprovalRule>,
    pub reviews: RawReviews,
    pub grants: RawGrants,
}

/// An approval rule that matched a request: what the review is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalMatch {
    pub rule: String,
    pub message: String,
    /// Every distinct text the rule matched, sorted: the approval covers exactly this set.
    pub matched: Vec<String>,
    /// Up to 120 bytes either side of the match, for approvers (mask it before it leaves).
    pub context: String,
    pub approvals_required: u32,
    pub ttl_seconds: u64,
}

/// Why a request was refused: the rule that did it and what to tell the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: String,
    pub message: String,
}

fn limits(raw: RawLimits, at: &str) -> Result<Limits, PolicyError> {
    if let Some(models) = &raw.models {
        if models.iter().any(String::is_empty) {
            return Err(PolicyError { field: format!("{at}.models"), message: "empty pattern".into() });
        }
    }
    if let Some(endpoints) = &raw.endpoints {
        if let Some(e) = endpoints.iter().find(|e| !e.starts_with('/') || e.contains('?')) {
            return Err(PolicyError {
                field: format!("{at}.endpoints"),
                message: format!("`{e}` must be a path starting with / and without a query"),
            });
        }
    }
    Ok(Limits { models: raw.models, max_tokens: raw.max_tokens, endpoints: raw.endpoints })
}

/// `*` matches any run of characters; everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// What the policy reads of a request body (see [`crate::inspect::RequestBody`]).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts<'a> {
    /// Each model request the body makes (one, or one per batch item).
    pub asks: Vec<Ask>,
    /// Every text the request would send.
    pub texts: Vec<&'a str>,
}

/// The nearest char boundary at or below `i`.
fn floor_char(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl Policy {
    pub fn compile(raw: RawPolicy) -> Result<Policy, PolicyError> {
        let mut groups = BTreeMap::new();
        for (name, l) in raw.groups {
            let at = format!("groups.{name}");
            groups.insert(name, limits(l, &at)?);
        }
        let default = limits(raw.default, "default")?;
        let mut deny = Vec::new();
        for (i, r) in raw.deny.into_iter().enumerate() {
            if r.id.is_empty() {
                return Err(PolicyError { field: format!("deny[{i}].id"), message: "must not be empty".into() });
            }
            let regex = RegexBuilder::new(&r.regex)
                .unicode(false)
                .build()
                .map_err(|e| PolicyError { field: format!("deny[{i}].regex"), message: e.to_string() })?;
            deny.push(DenyRule { id: r.id, message: r.message, regex });
        }
        let mut approval = Vec::new();
        for (i, r) in raw.approval.into_iter().enumerate() {
            let field = |f: &str| format!("approval[{i}].{f}");
            if r.id.is_empty() {
                return Err(PolicyError { field: field("id"), message: "must not be empty".into() });
            }
            if r.approvals_required == 0 || r.approvals_required > 10 {
                return Err(PolicyError { field: field("approvals_required"), message: "between 1 and 10".into() });
            }
            if r.ttl_seconds == 0 || r.ttl_seconds > 30 * 86_400 {
                return Err(PolicyError { field: field("ttl_seconds"), message: "between 1 and 2592000".into() });
            }
            let regex = RegexBuilder::new(&r.regex)
                .unicode(false)
                .build()
                .map_err(|e| PolicyError { field: field("regex"), message: e.to_string() })?;
            approval.push(ApprovalRule {
                id: r.id,
                message: r.message,
                regex,
                approvals_required: r.approvals_required,
                ttl_seconds: r.ttl_seconds,
            });
        }
        if raw.reviews.wait_seconds > 600 {
            return Err(PolicyError { field: "reviews.wait_seconds".into(), message: "at most 600".into() });
        }
        if !(1..=300).contains(&raw.reviews.grant_cache_seconds) {
            return Err(PolicyError { field: "reviews.grant_cache_seconds".into(), message: "between 1 and 300".into() });
        }
        if !(100..=60_000).contains(&raw.reviews.timeout_ms) {
            return Err(PolicyError { field: "reviews.timeout_ms".into(), message: "between 100 and 60000".into() });
        }
        Ok(Policy { groups, default: Some(default), deny, approval, reviews: raw.reviews, grants: raw.grants })
    }

    /// Whether the filter talks to the recorder's review and grant API at all.
    pub fn uses_recorder(&self) -> bool {
        !self.approval.is_empty() || self.grants.enabled
    }

    /// Every approval rule the request matches, in rule order (each needs its own review),
    /// with every distinct text it matched: the review covers exactly that set.
    pub fn approvals_needed(&self, texts: &[&str]) -> Vec<ApprovalMatch> {
        let mut out = Vec::new();
        for rule in &self.approval {
            let mut matched = std::collections::BTreeSet::new();
            let mut context = None;
            for text in texts {
                for m in rule.regex.find_iter(text.as_bytes()) {
                    if context.is_none() {
                        let from = floor_char(text, m.start().saturating_sub(120));
                        let to = floor_char(text, (m.end() + 120).min(text.len()));
                        context = Some(text[from..to].to_string());
                    }
                    matched.insert(String::from_utf8_lossy(m.as_bytes()).into_owned());
                }
            }
            if let Some(context) = context {
                out.push(ApprovalMatch {
                    rule: rule.id.clone(),
                    message: rule.message.clone(),
                    matched: matched.into_iter().collect(),
                    context,
                    approvals_required: rule.approvals_required,
                    ttl_seconds: rule.ttl_seconds,
                });
            }
        }
        out
    }

    /// The first rule the request breaks, if any. `body` is what the request body says,
    /// when the request has one.
    pub fn check(&self, groups: &[String], endpoint: &str, body: Option<&RequestFacts>) -> Result<(), Violation> {
        let own: Vec<&Limits> = groups.iter().filter_map(|g| self.groups.get(g)).collect();
        let applicable: Vec<&Limits> = if own.is_empty() { self.default.iter().collect() } else { own };

        let endpoint_ok = |l: &&Limits| l.endpoints.as_ref().is_none_or(|e| e.iter().any(|p| p == endpoint));
        if !applicable.iter().any(endpoint_ok) {
            return Err(Violation {
                rule: "endpoint".into(),
                message: format!("your groups may not call {endpoint}"),
            });
        }
        for ask in body.map(|b| b.asks.as_slice()).unwrap_or_default() {
            self.check_ask(&applicable, endpoint, ask)?;
        }
        if let (Some(body), false) = (body, self.deny.is_empty()) {
            for rule in &self.deny {
                if body.texts.iter().any(|t| rule.regex.is_match(t.as_bytes())) {
                    return Err(Violation { rule: rule.id.clone(), message: rule.message.clone() });
                }
            }
        }
        Ok(())
    }

    /// One model request against the limits: any applicable group may allow it.
    fn check_ask(&self, applicable: &[&Limits], endpoint: &str, ask: &Ask) -> Result<(), Violation> {
        let endpoint_ok = |l: &&Limits| l.endpoints.as_ref().is_none_or(|e| e.iter().any(|p| p == endpoint));
        let (model, max_tokens) = (ask.model.as_deref(), ask.max_tokens);
        if let Some(model) = model {
            let model_ok = |l: &&Limits| l.models.as_ref().is_none_or(|m| m.iter().any(|p| glob_match(p, model)));
            if !applicable.iter().filter(|l| endpoint_ok(l)).any(model_ok) {
                return Err(Violation {
                    rule: "model".into(),
                    message: format!("your groups may not use the model `{model}`"),
                });
            }
        }
        if let Some(asked) = max_tokens {
            let cap = applicable
                .iter()
                .filter(|l| endpoint_ok(l))
                .filter(|l| model.is_none_or(|m| l.models.as_ref().is_none_or(|p| p.iter().any(|p| glob_match(p, m)))))
                .map(|l| l.max_tokens.unwrap_or(u64::MAX))
                .max()
                .unwrap_or(u64::MAX);
            if asked > cap {
                return Err(Violation {
                    rule: "max_tokens".into(),
                    message: format!("max_tokens {asked} is above your limit of {cap}"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inspect::{Endpoint, RequestBody};
    use serde_json::{json, Value};

    fn policy() -> Policy {
        let raw: RawPolicy = serde_json::from_value(json!({
            "groups": {
                "eng": {"models": ["claude-sonnet-*", "claude-haiku-*"], "max_tokens": 8192},
                "research": {"models": ["claude-opus-*"], "max_tokens": 32000,
                              "endpoints": ["/v1/messages"]}
            },
            "default": {"models": ["claude-haiku-*"], "max_tokens": 1024},
            "deny": [{"id": "prod-hosts", "message": "production hostnames must not leave the company",
                      "regex": "\\b[a-z0-9-]+\\.prod\\.example\\.com\\b"}]
        }))
        .unwrap();
        Policy::compile(raw).unwrap()
    }

    fn body(model: &str, max_tokens: u64, text: &str) -> Value {
        json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": text}]}]})
    }

    /// `Policy::check` on a Messages request body, read the way the filter reads it.
    fn check(p: &Policy, groups: &[String], endpoint: &str, body: Value) -> Result<(), Violation> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let read = RequestBody::read(&bytes, Endpoint::Messages).unwrap();
        p.check(groups, endpoint, Some(&read.facts()))
    }

    fn approvals(p: &Policy, body: Value) -> Vec<ApprovalMatch> {
        let bytes = serde_json::to_vec(&body).unwrap();
        let read = RequestBody::read(&bytes, Endpoint::Messages).unwrap();
        p.approvals_needed(&read.facts().texts)
    }

    fn g(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowed_model_within_the_cap_passes() {
        assert_eq!(check(&policy(), &g(&["eng"]), "/v1/messages", body("claude-sonnet-4-5", 8192, "hi")), Ok(()));
    }

    #[test]
    fn model_outside_the_groups_patterns_is_refused() {
        let v = check(&policy(), &g(&["eng"]), "/v1/messages", body("claude-opus-4-1", 100, "hi")).unwrap_err();
        assert_eq!(v.rule, "model");
    }

    #[test]
    fn max_tokens_above_the_cap_is_refused_and_any_group_may_allow() {
        let p = policy();
        let v = check(&p, &g(&["eng"]), "/v1/messages", body("claude-sonnet-4-5", 8193, "hi")).unwrap_err();
        assert_eq!(v.rule, "max_tokens");
        assert_eq!(check(&p, &g(&["eng", "research"]), "/v1/messages", body("claude-opus-4-1", 30000, "hi")), Ok(()));
    }

    #[test]
    fn endpoint_outside_the_list_is_refused() {
        let v = check(&policy(), &g(&["research"]), "/v1/messages/count_tokens", body("claude-opus-4-1", 1, "hi")).unwrap_err();
        assert_eq!(v.rule, "endpoint");
    }

    #[test]
    fn unlisted_groups_get_the_default() {
        let p = policy();
        assert_eq!(check(&p, &g(&["sales"]), "/v1/messages", body("claude-haiku-4-5", 1024, "hi")), Ok(()));
        assert_eq!(check(&p, &g(&[]), "/v1/messages", body("claude-sonnet-4-5", 10, "hi")).unwrap_err().rule, "model");
    }

    #[test]
    fn deny_rule_matching_a_tool_result_blocks_the_request() {
        let v = check(&policy(), &g(&["eng"]), "/v1/messages", body("claude-sonnet-4-5", 10, "ssh db1.prod.example.com"))
            .unwrap_err();
        assert_eq!(v, Violation { rule: "prod-hosts".into(), message: "production hostnames must not leave the company".into() });
    }

    #[test]
    fn empty_policy_allows_everything() {
        let p = Policy::compile(RawPolicy::default()).unwrap();
        assert_eq!(check(&p, &g(&[]), "/anything", body("any", u64::MAX, "x.prod.example.com")), Ok(()));
    }

    #[test]
    fn bad_rules_name_their_field() {
        let raw: RawPolicy = serde_json::from_value(json!({"deny": [{"id": "x", "message": "m", "regex": "("}]})).unwrap();
        assert_eq!(Policy::compile(raw).unwrap_err().field, "deny[0].regex");
        let raw: RawPolicy = serde_json::from_value(json!({"groups": {"eng": {"endpoints": ["v1/messages"]}}})).unwrap();
        assert_eq!(Policy::compile(raw).unwrap_err().field, "groups.eng.endpoints");
    }

    #[test]
    fn approval_rules_match_after_deny_and_carry_the_matched_text_and_its_context() {
        let raw: RawPolicy = serde_json::from_value(json!({
            "approval": [
                {"id": "customer-data", "message": "customer records", "regex": "CUST-[0-9]{6}", "approvals_required": 2},
                {"id": "migrations", "message": "schema changes", "regex": "(?i)drop table"}
            ]
        }))
        .unwrap();
        let p = Policy::compile(raw).unwrap();
        assert!(p.uses_recorder());
        let needed = approvals(&p, body("m", 1, "please look at CUST-123456 and DROP TABLE users"));
        assert_eq!(needed.len(), 2);
        assert_eq!(needed[0].rule, "customer-data");
        assert_eq!(needed[0].matched, ["CUST-123456"]);
        assert_eq!(needed[0].approvals_required, 2);
        assert_eq!(needed[0].ttl_seconds, 8 * 3600);
        assert!(needed[0].context.contains("please look at CUST-123456"));
        assert_eq!(needed[1].matched, ["DROP TABLE"]);
        assert!(approvals(&p, body("m", 1, "nothing to see")).is_empty());
        // Context is cut on character boundaries, never inside a multi-byte character.
        let wide = format!("{}CUST-000001{}", "é".repeat(200), "ü".repeat(200));
        let m = &approvals(&p, body("m", 1, &wide))[0];
        assert!(m.context.len() <= 120 * 2 + 11 && m.context.contains("CUST-000001"));
    }

    // Regression: an approval bound only the first match, so once one host was approved any
    // other host matching the same rule passed in that session.
    #[test]
    fn an_approval_covers_every_distinct_match_of_its_rule() {
        let raw: RawPolicy =
            serde_json::from_value(json!({"approval": [{"id": "prod", "message": "m", "regex": "[a-z0-9]+\\.prod\\.example"}]})).unwrap();
        let p = Policy::compile(raw).unwrap();
        let one = approvals(&p, body("m", 1, "ssh db1.prod.example"));
        let two = approvals(&p, body("m", 1, "ssh db1.prod.example then db2.prod.example and db1.prod.example"));
        assert_eq!(one[0].matched, ["db1.prod.example"]);
        assert_eq!(two[0].matched, ["db1.prod.example", "db2.prod.example"]);
    }

    #[test]
    fn deny_and_limits_read_every_field_and_every_batch_request() {
        let p = policy();
        let tools = json!({"model": "claude-sonnet-4-5", "max_tokens": 1, "messages": [],
            "tools": [{"name": "t", "description": "deploys to db1.prod.example.com", "input_schema": {}}]});
        assert_eq!(check(&p, &g(&["eng"]), "/v1/messages", tools).unwrap_err().rule, "prod-hosts");
        let batch = json!({"requests": [
            {"custom_id": "a", "params": {"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": []}},
            {"custom_id": "b", "params": {"model": "claude-opus-4-1", "max_tokens": 10, "messages": []}}
        ]});
        let bytes = serde_json::to_vec(&batch).unwrap();
        let read = RequestBody::read(&bytes, Endpoint::CreateBatch).unwrap();
        assert_eq!(p.check(&g(&["eng"]), "/v1/messages/batches", Some(&read.facts())).unwrap_err().rule, "model");
    }

    #[test]
    fn approval_and_review_settings_are_checked_naming_the_field() {
        let bad = |v: Value| Policy::compile(serde_json::from_value(v).unwrap()).unwrap_err().field;
        assert_eq!(bad(json!({"approval": [{"id": "a", "message": "m", "regex": "x", "approvals_required": 0}]})), "approval[0].approvals_required");
        assert_eq!(bad(json!({"approval": [{"id": "a", "message": "m", "regex": "["}]})), "approval[0].regex");
        assert_eq!(bad(json!({"approval": [{"id": "", "message": "m", "regex": "x"}]})), "approval[0].id");
        assert_eq!(bad(json!({"reviews": {"wait_seconds": 601}})), "reviews.wait_seconds");
        assert_eq!(bad(json!({"reviews": {"grant_cache_seconds": 0}})), "reviews.grant_cache_seconds");
        assert!(!Policy::compile(RawPolicy::default()).unwrap().uses_recorder());
    }

    #[test]
    fn glob_matches_stars_anywhere() {
        assert!(glob_match("claude-*", "claude-sonnet-4-5"));
        assert!(glob_match("*-4-5", "claude-sonnet-4-5"));
        assert!(glob_match("claude-*-4-*", "claude-sonnet-4-5"));
        assert!(!glob_match("claude-*-4-*", "claude-sonnet-3-5"));
        assert!(glob_match("exact", "exact") && !glob_match("exact", "exactly"));
    }
}
