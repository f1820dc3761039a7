//! Request policy: what each group may ask for (models, `max_tokens`, endpoints) and deny
//! rules over what the request would send. Pure: the filter hands in the caller's groups, the
//! endpoint and the parsed body, and gets back the first rule that refuses it.

use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use serde_json::Value;
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

/// The compiled policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    groups: BTreeMap<String, Limits>,
    default: Option<Limits>,
    deny: Vec<DenyRule>,
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

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
        Value::Object(o) => o.values().for_each(|x| strings(x, out)),
        _ => {}
    }
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
        Ok(Policy { groups, default: Some(default), deny })
    }

    /// The first rule the request breaks, if any. `body` is the parsed JSON request, when
    /// the request has one.
    pub fn check(&self, groups: &[String], endpoint: &str, body: Option<&Value>) -> Result<(), Violation> {
        let own: Vec<&Limits> = groups.iter().filter_map(|g| self.groups.get(g)).collect();
        let applicable: Vec<&Limits> = if own.is_empty() { self.default.iter().collect() } else { own };
        let model = body.and_then(|b| b.get("model")).and_then(Value::as_str);
        let max_tokens = body.and_then(|b| b.get("max_tokens")).and_then(Value::as_u64);

        let endpoint_ok = |l: &&Limits| l.endpoints.as_ref().is_none_or(|e| e.iter().any(|p| p == endpoint));
        if !applicable.iter().any(endpoint_ok) {
            return Err(Violation {
                rule: "endpoint".into(),
                message: format!("your groups may not call {endpoint}"),
            });
        }
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
        if let (Some(body), false) = (body, self.deny.is_empty()) {
            let mut texts = Vec::new();
            for key in ["system", "messages"] {
                if let Some(v) = body.get(key) {
                    strings(v, &mut texts);
                }
            }
            for rule in &self.deny {
                if texts.iter().any(|t| rule.regex.is_match(t.as_bytes())) {
                    return Err(Violation { rule: rule.id.clone(), message: rule.message.clone() });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    fn g(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn allowed_model_within_the_cap_passes() {
        assert_eq!(policy().check(&g(&["eng"]), "/v1/messages", Some(&body("claude-sonnet-4-5", 8192, "hi"))), Ok(()));
    }

    #[test]
    fn model_outside_the_groups_patterns_is_refused() {
        let v = policy().check(&g(&["eng"]), "/v1/messages", Some(&body("claude-opus-4-1", 100, "hi"))).unwrap_err();
        assert_eq!(v.rule, "model");
    }

    #[test]
    fn max_tokens_above_the_cap_is_refused_and_any_group_may_allow() {
        let p = policy();
        let v = p.check(&g(&["eng"]), "/v1/messages", Some(&body("claude-sonnet-4-5", 8193, "hi"))).unwrap_err();
        assert_eq!(v.rule, "max_tokens");
        assert_eq!(p.check(&g(&["eng", "research"]), "/v1/messages", Some(&body("claude-opus-4-1", 30000, "hi"))), Ok(()));
    }

    #[test]
    fn endpoint_outside_the_list_is_refused() {
        let v = policy().check(&g(&["research"]), "/v1/messages/count_tokens", Some(&body("claude-opus-4-1", 1, "hi"))).unwrap_err();
        assert_eq!(v.rule, "endpoint");
    }

    #[test]
    fn unlisted_groups_get_the_default() {
        let p = policy();
        assert_eq!(p.check(&g(&["sales"]), "/v1/messages", Some(&body("claude-haiku-4-5", 1024, "hi"))), Ok(()));
        assert_eq!(p.check(&g(&[]), "/v1/messages", Some(&body("claude-sonnet-4-5", 10, "hi"))).unwrap_err().rule, "model");
    }

    #[test]
    fn deny_rule_matching_a_tool_result_blocks_the_request() {
        let v = policy()
            .check(&g(&["eng"]), "/v1/messages", Some(&body("claude-sonnet-4-5", 10, "ssh db1.prod.example.com")))
            .unwrap_err();
        assert_eq!(v, Violation { rule: "prod-hosts".into(), message: "production hostnames must not leave the company".into() });
    }

    #[test]
    fn empty_policy_allows_everything() {
        let p = Policy::compile(RawPolicy::default()).unwrap();
        assert_eq!(p.check(&g(&[]), "/anything", Some(&body("any", u64::MAX, "x.prod.example.com"))), Ok(()));
    }

    #[test]
    fn bad_rules_name_their_field() {
        let raw: RawPolicy = serde_json::from_value(json!({"deny": [{"id": "x", "message": "m", "regex": "("}]})).unwrap();
        assert_eq!(Policy::compile(raw).unwrap_err().field, "deny[0].regex");
        let raw: RawPolicy = serde_json::from_value(json!({"groups": {"eng": {"endpoints": ["v1/messages"]}}})).unwrap();
        assert_eq!(Policy::compile(raw).unwrap_err().field, "groups.eng.endpoints");
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
