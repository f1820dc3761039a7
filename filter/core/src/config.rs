//! Plugin configuration: the JSON an operator writes (`RawConfig`) and the checked, compiled
//! form the filter runs with (`Config`).
//!
//! `compile` is the only way to get a `Config`; it checks every field and every reference and
//! names the offending field on error, so the filter refuses to start on a bad file instead of
//! failing on a request. The field docs below are the user documentation of the schema.

use crate::anthropic_stream::ThinkingMode;
use crate::audit::ContentMode;
use crate::jwks::KeySet;
use crate::policy::{Policy, RawPolicy};
use crate::rules::{builtin_raw_rules, compile_rules, RawRule, RuleError, RuleSet, DEFAULT_PLACEHOLDER};
use serde::Deserialize;
use std::sync::Arc;

/// The plugin configuration as written (the `configuration` string of the Envoy wasm filter).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Identity providers whose tokens are accepted. At least one.
    pub issuers: Vec<RawIssuer>,
    /// Groups whose members may use the gateway; a caller needs at least one of them.
    /// `"*"` admits every caller with a valid token. At least one entry.
    pub allowed_groups: Vec<String>,
    /// Claim holding the caller's groups: a top-level claim name (`groups`, `cognito:groups`,
    /// `https://example.com/groups`) or a dotted path into nested objects
    /// (`realm_access.roles`). A string or an array of strings. Default `groups`.
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds. Default 60, at most 600.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Where the caller's token is read from, in order: `authorization` (a `Bearer` token, what
    /// `ANTHROPIC_AUTH_TOKEN` sends) and/or `x-api-key` (what `ANTHROPIC_API_KEY` sends).
    /// Default both. Whatever is configured, every caller credential header is removed.
    #[serde(default = "default_token_sources")]
    pub token_sources: Vec<TokenSource>,
    /// How the service key is injected towards the upstream.
    #[serde(default)]
    pub upstream_credential: RawUpstreamCredential,
    /// Verified tokens kept so repeat requests skip the signature check, per VM. When full,
    /// expired entries are dropped first, then the ones expiring soonest. 0 disables the
    /// cache. Default 1024, at most 1,000,000.
    #[serde(default = "default_cache_entries")]
    pub token_cache_entries: usize,
    /// Timing of key-set fetches.
    #[serde(default)]
    pub jwks: RawJwksTiming,
    /// Secret masking in both directions.
    #[serde(default)]
    pub masking: RawMasking,
    /// The audit record handed to Envoy's access log for every exchange.
    #[serde(default)]
    pub audit: RawAudit,
    /// Per-group limits and deny rules (see `policy.rs`). Default: no limits.
    #[serde(default)]
    pub policy: RawPolicy,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `full` (default): metadata plus the masked request and the response as the client saw
    /// it. `metadata`: identity, decision, counts, usage and timings only.
    #[serde(default)]
    pub content: ContentMode,
    /// Largest record in bytes; bigger ones lose the request body first, then the response
    /// text, and are marked `truncated`. Default 8 MiB, between 4 KiB and 64 MiB (the
    /// recorder's own cap must be at least as large).
    #[serde(default = "default_record_bytes")]
    pub max_record_bytes: usize,
    /// Without `x-claude-code-session-id`, a user's requests are one session until this many
    /// seconds pass without one. Default 1800.
    #[serde(default = "default_session_idle")]
    pub session_idle_seconds: u64,
    /// Serve nothing unrecorded (Envoy drops access-log entries it cannot deliver): every
    /// exchange first checks that the recorder answers, and is refused (503) when it does not;
    /// a periodic probe also refuses at once while the recorder is known to be down.
    /// Default false.
    #[serde(default)]
    pub required: bool,
    /// Cluster of the recorder's gRPC listener, probed when `required`. Default
    /// `scrim_recorder`.
    #[serde(default = "default_recorder_cluster")]
    pub recorder_cluster: String,
    /// How often each VM probes the recorder when `required`, in milliseconds; also the
    /// timeout (at least 200 ms) of each exchange's own check. Default 250, between 50 and
    /// 10000.
    #[serde(default = "default_health_interval")]
    pub health_interval_ms: u64,
}

impl Default for RawAudit {
    fn default() -> Self {
        RawAudit {
            content: ContentMode::default(),
            max_record_bytes: default_record_bytes(),
            session_idle_seconds: default_session_idle(),
            required: false,
            recorder_cluster: default_recorder_cluster(),
            health_interval_ms: default_health_interval(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMasking {
    /// Use the built-in rules (filter/rules/builtin.toml). Default true.
    #[serde(default = "default_true")]
    pub builtin_rules: bool,
    /// Ids of built-in rules to leave out. An id no built-in rule has is an error.
    #[serde(default)]
    pub disabled_rules: Vec<String>,
    /// Extra rules, in the built-in rules' schema (id, description, regex, keywords, …).
    #[serde(default)]
    pub custom_rules: Vec<RawRule>,
    /// Replacement text; `{id}` becomes the rule id. Must not itself look like a secret.
    /// Default `[REDACTED:{id}]`.
    #[serde(default = "default_placeholder")]
    pub placeholder: String,
    /// Largest request body inspected, in bytes; a larger one is refused with 413 (never
    /// forwarded unread). Default 32 MiB (the Messages API's own limit). Envoy's
    /// `per_connection_buffer_limit_bytes` must be larger.
    #[serde(default = "default_max_body")]
    pub max_request_bytes: usize,
    /// Largest non-streamed response body inspected; a larger one is replaced by a 502
    /// error. Streamed (SSE) responses are never buffered whole. Default 32 MiB.
    #[serde(default = "default_max_body")]
    pub max_response_bytes: usize,
    /// Claude's thinking text: `mask` (default) masks it like any other text; `pass` forwards
    /// it unchanged. A masked thinking block no longer matches its signature: if the client
    /// sends that block back in a later turn, the API may reject it. With the default
    /// `display: "omitted"` of Claude Code, thinking blocks carry only a signature and nothing
    /// is masked.
    #[serde(default)]
    pub thinking: ThinkingMode,
    /// Paths (no query) whose streamed responses are in the OpenAI chat-completions shape
    /// (`choices[].delta.content`, `data: [DONE]`) rather than Anthropic's. Default
    /// `["/v1/chat/completions"]`.
    #[serde(default = "default_openai_chat_paths")]
    pub openai_chat_paths: Vec<String>,
}

fn default_openai_chat_paths() -> Vec<String> {
    vec!["/v1/chat/completions".into()]
}

impl Default for RawMasking {
    fn default() -> Self {
        RawMasking {
            builtin_rules: true,
            disabled_rules: Vec::new(),
            custom_rules: Vec::new(),
            placeholder: default_placeholder(),
            max_request_bytes: default_max_body(),
            max_response_bytes: default_max_body(),
            thinking: ThinkingMode::default(),
            openai_chat_paths: default_openai_chat_paths(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuer {
    /// The exact `iss` value of this provider's tokens.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them. At least one entry.
    pub audiences: Vec<String>,
    /// Where this provider publishes its JWKS (`http://` or `https://`). Fetched through
    /// `jwks_cluster`. Exactly one of `jwks_uri` and `jwks` is given.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The Envoy cluster that reaches `jwks_uri`'s host. Required with `jwks_uri`.
    #[serde(default)]
    pub jwks_cluster: Option<String>,
    /// Keys given inline as a JWKS object (`{"keys": [...]}`), never refreshed.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TokenSource {
    Authorization,
    XApiKey,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamCredential {
    /// Name of the Envoy process environment variable holding the service key; it must be
    /// listed in the VM's `environment_variables.host_env_keys`. Default `ANTHROPIC_API_KEY`.
    /// The filter refuses to start when it is unset or empty.
    #[serde(default = "default_key_env")]
    pub env: String,
    /// Header that carries the key upstream. Default `x-api-key`.
    #[serde(default = "default_key_header")]
    pub header: String,
    /// Text put before the key in that header, e.g. `"Bearer "`. Default empty.
    #[serde(default)]
    pub prefix: String,
}

impl Default for RawUpstreamCredential {
    fn default() -> Self {
        RawUpstreamCredential {
            env: default_key_env(),
            header: default_key_header(),
            prefix: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwksTiming {
    /// Seconds between scheduled refreshes of every fetched key set. Default 300, at least 5.
    #[serde(default = "default_refresh")]
    pub refresh_seconds: u64,
    /// Seconds between retries while an issuer has no keys yet (IdP down at start): requests
    /// for it get 503 until a fetch succeeds. Default 2, at least 1.
    #[serde(default = "default_retry")]
    pub retry_seconds: u64,
    /// Least seconds between two fetches triggered by a token with an unknown `kid` (so a
    /// flood of forged `kid`s cannot hammer the IdP). Default 10.
    #[serde(default = "default_unknown_kid")]
    pub unknown_kid_refetch_seconds: u64,
    /// Timeout of one fetch in milliseconds. Default 5000, between 100 and 60000.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_ms: u64,
}

impl Default for RawJwksTiming {
    fn default() -> Self {
        RawJwksTiming {
            refresh_seconds: default_refresh(),
            retry_seconds: default_retry(),
            unknown_kid_refetch_seconds: default_unknown_kid(),
            fetch_timeout_ms: default_fetch_timeout(),
        }
    }
}

fn default_recorder_cluster() -> String {
    "scrim_recorder".into()
}
fn default_health_interval() -> u64 {
    250
}
fn default_record_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_session_idle() -> u64 {
    1800
}
fn default_true() -> bool {
    true
}
fn default_placeholder() -> String {
    DEFAULT_PLACEHOLDER.into()
}
fn default_max_body() -> usize {
    32 * 1024 * 1024
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    60
}
fn default_token_sources() -> Vec<TokenSource> {
    vec![TokenSource::Authorization, TokenSource::XApiKey]
}
fn default_cache_entries() -> usize {
    1024
}
fn default_key_env() -> String {
    "ANTHROPIC_API_KEY".into()
}
fn default_key_header() -> String {
    "x-api-key".into()
}
fn default_refresh() -> u64 {
    300
}
fn default_retry() -> u64 {
    2
}
fn default_unknown_kid() -> u64 {
    10
}
fn default_fetch_timeout() -> u64 {
    5000
}

/// A configuration error; `field` is the path of the offending field, e.g.
/// `issuers[0].jwks_uri`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "invalid configuration: {}", self.message)
        } else {
            write!(f, "invalid configuration: field `{}`: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(field: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError { field: field.into(), message: message.into() }
}

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    Remote(JwksEndpoint),
    Inline(KeySet),
}

/// A JWKS URL split into what `dispatch_http_call` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksEndpoint {
    pub cluster: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct Issuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub keys: KeySource,
}

#[derive(Debug, Clone)]
pub struct UpstreamCredential {
    pub env: String,
    pub header: String,
    pub prefix: String,
}

#[derive(Debug, Clone)]
pub struct JwksTiming {
    pub refresh_seconds: u64,
    pub retry_seconds: u64,
    pub unknown_kid_refetch_seconds: u64,
    pub fetch_timeout_ms: u64,
}

/// The checked configuration the filter runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub issuers: Vec<Issuer>,
    pub allowed_groups: Vec<String>,
    pub any_group: bool,
    pub groups_claim: String,
    pub leeway_seconds: u64,
    pub token_sources: Vec<TokenSource>,
    pub upstream_credential: UpstreamCredential,
    pub token_cache_entries: usize,
    pub jwks: JwksTiming,
    pub masking: Masking,
    pub audit: RawAudit,
    pub policy: Policy,
}

/// Compiled masking settings.
#[derive(Debug, Clone)]
pub struct Masking {
    pub rules: Arc<RuleSet>,
    pub max_request_bytes: usize,
    pub max_response_bytes: usize,
    pub thinking: ThinkingMode,
    pub openai_chat_paths: Vec<String>,
}

impl Config {
    /// Parses and compiles the plugin configuration string.
    pub fn from_json(json: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            err(field, e.into_inner().to_string())
        })?;
        compile(raw)
    }
}

fn parse_jwks_uri(uri: &str, cluster: String) -> Result<JwksEndpoint, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| "must be an absolute http:// or https:// URL".to_string())?;
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme `{scheme}` is not http or https"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("needs a host and no user info".into());
    }
    Ok(JwksEndpoint {
        cluster,
        scheme: scheme.into(),
        authority: authority.into(),
        path: path.into(),
    })
}

fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Builds the rule set; a bad rule is reported under the field that holds it.
fn compile_masking(raw: RawMasking) -> Result<Masking, ConfigError> {
    let builtin = if raw.builtin_rules {
        builtin_raw_rules().map_err(|e| err("masking.builtin_rules", e.to_string()))?
    } else {
        if !raw.disabled_rules.is_empty() {
            return Err(err("masking.disabled_rules", "built-in rules are off: nothing to disable"));
        }
        Vec::new()
    };
    let custom_field = |rule: &str, field: &str| match raw.custom_rules.iter().position(|r| r.id == rule) {
        Some(i) if field.is_empty() => format!("masking.custom_rules[{i}]"),
        Some(i) => format!("masking.custom_rules[{i}].{field}"),
        None => "masking.builtin_rules".to_string(),
    };
    let rules = compile_rules(&builtin, &raw.custom_rules, &raw.disabled_rules).map_err(|e| match &e {
        RuleError::InvalidField { rule, field, .. } => err(custom_field(rule, field), e.to_string()),
        RuleError::DuplicateId { rule } => err(custom_field(rule, "id"), e.to_string()),
        RuleError::UnknownDisabled { .. } => err("masking.disabled_rules", e.to_string()),
        _ => err("masking.custom_rules", e.to_string()),
    })?;
    let rules = rules
        .with_placeholder(&raw.placeholder)
        .map_err(|e| err("masking.placeholder", e.to_string()))?;
    if raw.max_request_bytes < 1024 {
        return Err(err("masking.max_request_bytes", "at least 1024"));
    }
    if raw.max_response_bytes < 1024 {
        return Err(err("masking.max_response_bytes", "at least 1024"));
    }
    if let Some(p) = raw.openai_chat_paths.iter().find(|p| !p.starts_with('/') || p.contains('?')) {
        return Err(err("masking.openai_chat_paths", format!("`{p}` must be a path starting with / and without a query")));
    }
    Ok(Masking {
        rules: Arc::new(rules),
        max_request_bytes: raw.max_request_bytes,
        max_response_bytes: raw.max_response_bytes,
        thinking: raw.thinking,
        openai_chat_paths: raw.openai_chat_paths.clone(),
    })
}

/// Checks every field of a raw configuration and builds the configuration the filter runs with.
pub fn compile(raw: RawConfig) -> Result<Config, ConfigError> {
    if raw.issuers.is_empty() {
        return Err(err("issuers", "at least one issuer is required"));
    }
    let mut issuers = Vec::with_capacity(raw.issuers.len());
    for (i, iss) in raw.issuers.into_iter().enumerate() {
        let at = |f: &str| format!("issuers[{i}].{f}");
        if iss.issuer.is_empty() {
            return Err(err(at("issuer"), "must not be empty"));
        }
        if issuers.iter().any(|known: &Issuer| known.issuer == iss.issuer) {
            return Err(err(at("issuer"), format!("`{}` is listed twice", iss.issuer)));
        }
        if iss.audiences.is_empty() || iss.audiences.iter().any(String::is_empty) {
            return Err(err(at("audiences"), "needs at least one non-empty audience"));
        }
        let keys = match (iss.jwks_uri, iss.jwks_cluster, iss.jwks) {
            (Some(uri), Some(cluster), None) => {
                if cluster.is_empty() {
                    return Err(err(at("jwks_cluster"), "must not be empty"));
                }
                KeySource::Remote(parse_jwks_uri(&uri, cluster).map_err(|m| err(at("jwks_uri"), m))?)
            }
            (Some(_), None, None) => {
                return Err(err(at("jwks_cluster"), "is required with `jwks_uri`"));
            }
            (None, None, Some(doc)) => {
                let bytes = serde_json::to_vec(&doc).map_err(|e| err(at("jwks"), e.to_string()))?;
                KeySource::Inline(KeySet::parse(&bytes).map_err(|e| err(at("jwks"), e.to_string()))?)
            }
            (None, Some(_), None) => {
                return Err(err(at("jwks_uri"), "is required with `jwks_cluster`"));
            }
            (None, None, None) => {
                return Err(err(at("jwks_uri"), "either `jwks_uri` or inline `jwks` is required"));
            }
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(err(at("jwks"), "give either `jwks_uri` or inline `jwks`, not both"));
            }
        };
        issuers.push(Issuer { issuer: iss.issuer, audiences: iss.audiences, keys });
    }

    if raw.allowed_groups.is_empty() || raw.allowed_groups.iter().any(String::is_empty) {
        return Err(err("allowed_groups", "needs at least one non-empty group (or \"*\")"));
    }
    let any_group = raw.allowed_groups.iter().any(|g| g == "*");
    if raw.groups_claim.is_empty() {
        return Err(err("groups_claim", "must not be empty"));
    }
    if raw.leeway_seconds > 600 {
        return Err(err("leeway_seconds", "at most 600"));
    }
    if raw.token_sources.is_empty() {
        return Err(err("token_sources", "at least one of \"authorization\", \"x-api-key\""));
    }
    let cred = raw.upstream_credential;
    if cred.env.is_empty() {
        return Err(err("upstream_credential.env", "must name an environment variable"));
    }
    if !is_header_name(&cred.header) {
        return Err(err("upstream_credential.header", "must be a lowercase header name"));
    }
    if cred.prefix.bytes().any(|b| b.is_ascii_control()) {
        return Err(err("upstream_credential.prefix", "must not hold control characters"));
    }
    if raw.token_cache_entries > 1_000_000 {
        return Err(err("token_cache_entries", "at most 1000000"));
    }
    let t = raw.jwks;
    if t.refresh_seconds < 5 {
        return Err(err("jwks.refresh_seconds", "at least 5"));
    }
    if t.retry_seconds < 1 {
        return Err(err("jwks.retry_seconds", "at least 1"));
    }
    if !(100..=60_000).contains(&t.fetch_timeout_ms) {
        return Err(err("jwks.fetch_timeout_ms", "between 100 and 60000"));
    }
    let masking = compile_masking(raw.masking)?;
    if !(4096..=64 * 1024 * 1024).contains(&raw.audit.max_record_bytes) {
        return Err(err("audit.max_record_bytes", "between 4096 and 67108864"));
    }
    if raw.audit.session_idle_seconds == 0 {
        return Err(err("audit.session_idle_seconds", "at least 1"));
    }
    if !(50..=10_000).contains(&raw.audit.health_interval_ms) {
        return Err(err("audit.health_interval_ms", "between 50 and 10000"));
    }
    if raw.audit.recorder_cluster.is_empty() {
        return Err(err("audit.recorder_cluster", "must not be empty"));
    }
    let policy = Policy::compile(raw.policy).map_err(|e| err(format!("policy.{}", e.field), e.message))?;
    Ok(Config {
        policy,
        audit: raw.audit,
        masking,
        issuers,
        allowed_groups: raw.allowed_groups,
        any_group,
        groups_claim: raw.groups_claim,
        leeway_seconds: raw.leeway_seconds,
        token_sources: raw.token_sources,
        upstream_credential: UpstreamCredential {
            env: cred.env,
            header: cred.header,
            prefix: cred.prefix,
        },
        token_cache_entries: raw.token_cache_entries,
        jwks: JwksTiming {
            refresh_seconds: t.refresh_seconds,
            retry_seconds: t.retry_seconds,
            unknown_kid_refetch_seconds: t.unknown_kid_refetch_seconds,
            fetch_timeout_ms: t.fetch_timeout_ms,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> serde_json::Value {
        json!({
            "issuers": [{
                "issuer": "https://idp.example",
                "audiences": ["scrim"],
                "jwks_uri": "https://idp.example/.well-known/jwks.json",
                "jwks_cluster": "idp_jwks"
            }],
            "allowed_groups": ["eng"]
        })
    }

    fn compile_json(v: &serde_json::Value) -> Result<Config, ConfigError> {
        Config::from_json(v.to_string().as_bytes())
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = compile_json(&base()).unwrap();
        assert_eq!(c.leeway_seconds, 60);
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.token_sources, vec![TokenSource::Authorization, TokenSource::XApiKey]);
        assert_eq!(c.upstream_credential.env, "ANTHROPIC_API_KEY");
        assert_eq!(c.upstream_credential.header, "x-api-key");
        assert_eq!(c.token_cache_entries, 1024);
        assert_eq!(c.jwks.refresh_seconds, 300);
        let KeySource::Remote(ep) = &c.issuers[0].keys else { panic!("expected remote keys") };
        assert_eq!(
            ep,
            &JwksEndpoint {
                cluster: "idp_jwks".into(),
                scheme: "https".into(),
                authority: "idp.example".into(),
                path: "/.well-known/jwks.json".into(),
            }
        );
    }

    type Breakage = Box<dyn Fn(&mut serde_json::Value)>;

    /// Each case breaks one field; the error must name that field.
    #[test]
    fn invalid_fields_are_named_in_the_error() {
        let cases: Vec<(&str, Breakage, &str)> = vec![
            ("unknown top-level field", Box::new(|v| v["lewway"] = json!(5)), "lewway"),
            ("unknown issuer field", Box::new(|v| v["issuers"][0]["audience"] = json!("x")), "issuers[0].audience"),
            ("wrong type", Box::new(|v| v["issuers"][0]["audiences"] = json!("scrim")), "issuers[0].audiences"),
            ("no issuers", Box::new(|v| v["issuers"] = json!([])), "issuers"),
            ("empty audiences", Box::new(|v| v["issuers"][0]["audiences"] = json!([])), "issuers[0].audiences"),
            ("bad jwks scheme", Box::new(|v| v["issuers"][0]["jwks_uri"] = json!("ftp://x/jwks")), "issuers[0].jwks_uri"),
            ("uri without cluster", Box::new(|v| { v["issuers"][0].as_object_mut().unwrap().remove("jwks_cluster"); }), "issuers[0].jwks_cluster"),
            ("uri and inline", Box::new(|v| v["issuers"][0]["jwks"] = json!({"keys": []})), "issuers[0].jwks"),
            ("inline without usable key", Box::new(|v| {
                let o = v["issuers"][0].as_object_mut().unwrap();
                o.remove("jwks_uri"); o.remove("jwks_cluster");
                o.insert("jwks".into(), json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}));
            }), "issuers[0].jwks"),
            ("duplicate issuer", Box::new(|v| { let i = v["issuers"][0].clone(); v["issuers"].as_array_mut().unwrap().push(i); }), "issuers[1].issuer"),
            ("no groups", Box::new(|v| v["allowed_groups"] = json!([])), "allowed_groups"),
            ("leeway too large", Box::new(|v| v["leeway_seconds"] = json!(601)), "leeway_seconds"),
            ("unknown token source", Box::new(|v| v["token_sources"] = json!(["cookie"])), "token_sources[0]"),
            ("bad key header", Box::new(|v| v["upstream_credential"] = json!({"header": "X Api Key"})), "upstream_credential.header"),
            ("refresh too short", Box::new(|v| v["jwks"] = json!({"refresh_seconds": 1})), "jwks.refresh_seconds"),
            ("timeout out of range", Box::new(|v| v["jwks"] = json!({"fetch_timeout_ms": 5})), "jwks.fetch_timeout_ms"),
        ];
        for (name, breakage, field) in cases {
            let mut v = base();
            breakage(&mut v);
            let e = compile_json(&v).expect_err(name);
            assert_eq!(e.field, field, "{name}: {e}");
            if name == "unknown top-level field" {
                assert!(e.message.contains("lewway"), "{name}: {e}");
            }
        }
    }

    #[test]
    fn bad_custom_rule_is_named_by_its_position_and_field() {
        let mut v = base();
        v["masking"] = json!({"custom_rules": [
            {"id": "acme-token", "description": "ok", "regex": "(acme_[a-z0-9]{20})", "keywords": ["acme_"]},
            {"id": "broken", "description": "bad regex", "regex": "(unclosed", "keywords": ["x"]}
        ]});
        let e = compile_json(&v).unwrap_err();
        assert_eq!(e.field, "masking.custom_rules[1].regex", "{e}");
        v["masking"] = json!({"disabled_rules": ["no-such-rule"]});
        assert_eq!(compile_json(&v).unwrap_err().field, "masking.disabled_rules");
        v["masking"] = json!({"placeholder": "<hidden>"});
        assert_eq!(compile_json(&v).unwrap_err().field, "masking.placeholder");
    }

    #[test]
    fn custom_rules_mask_alongside_the_builtin_ones() {
        let mut v = base();
        v["masking"] = json!({"custom_rules": [
            {"id": "acme-token", "description": "Acme internal token", "regex": "(acme_[a-z0-9]{20})", "keywords": ["acme_"]}
        ]});
        let c = compile_json(&v).unwrap();
        let out = c.masking.rules.mask("use acme_abcdefghij0123456789 here");
        assert_eq!(out.text, "use [REDACTED:acme-token] here");
    }

    #[test]
    fn star_admits_any_group() {
        let mut v = base();
        v["allowed_groups"] = json!(["*"]);
        assert!(compile_json(&v).unwrap().any_group);
        assert!(!compile_json(&base()).unwrap().any_group);
    }

    #[test]
    fn jwks_uri_without_path_uses_root() {
        let ep = parse_jwks_uri("http://127.0.0.1:9000", "c".into()).unwrap();
        assert_eq!((ep.authority.as_str(), ep.path.as_str()), ("127.0.0.1:9000", "/"));
        assert!(parse_jwks_uri("http://user@host/jwks", "c".into()).is_err());
    }
}
