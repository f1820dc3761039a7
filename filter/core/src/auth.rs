//! Caller identity: verifies an OIDC JWT against the configured issuers' keys, checks its
//! claims against an injected clock, reads the caller's groups, and caches verified tokens.
//!
//! Signature checking is delegated to `jsonwebtoken::crypto::verify`; everything around it
//! (which algorithms, which key, which claims) is decided here so each rule has a named error
//! and a unit test with a fixed clock.

use crate::config::{Config, TokenSource};
use crate::jwks::{accepted_algorithm, KeySet};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// Tokens longer than this are refused before any parsing (real OIDC tokens are a few KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Who the caller is, as far as the audit record and policy need to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub issuer: String,
    pub groups: Vec<String>,
    /// `exp` of the token, seconds since the epoch.
    pub expires_at: u64,
}

/// Why a caller was refused. Messages never include the token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthError {
    MissingToken,
    Malformed(&'static str),
    /// `alg` is `none`, HMAC, or anything else not accepted.
    AlgorithmNotAccepted(String),
    UnknownIssuer,
    /// No key with the token's `kid` (after a refetch, when one was allowed).
    UnknownKey(String),
    /// The token names no `kid` and no key of its algorithm verified it.
    NoMatchingKey,
    BadSignature,
    Expired { at: u64 },
    NotYetValid { from: u64 },
    IssuedInFuture,
    WrongAudience,
    MissingClaim(&'static str),
    /// The issuer's keys could not be obtained: the filter cannot decide, so it refuses.
    KeysUnavailable { issuer: String },
    /// A valid caller without any allowed group.
    NoPermittedGroup { subject: String },
}

impl AuthError {
    /// Short stable name used in metrics (`scrim.jwt_failures.<reason>`).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgorithmNotAccepted(_) => "algorithm",
            AuthError::UnknownIssuer => "unknown_issuer",
            AuthError::UnknownKey(_) => "unknown_kid",
            AuthError::NoMatchingKey => "no_matching_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::IssuedInFuture => "issued_in_future",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::KeysUnavailable { .. } => "keys_unavailable",
            AuthError::NoPermittedGroup { .. } => "no_permitted_group",
        }
    }

    /// Every reason name, so metrics can be defined up front.
    pub const REASONS: &'static [&'static str] = &[
        "missing",
        "malformed",
        "algorithm",
        "unknown_issuer",
        "unknown_kid",
        "no_matching_key",
        "bad_signature",
        "expired",
        "not_yet_valid",
        "issued_in_future",
        "wrong_audience",
        "missing_claim",
        "keys_unavailable",
        "no_permitted_group",
    ];
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::MissingToken => write!(
                f,
                "no credentials: send your OIDC token as `Authorization: Bearer <token>` \
                 (ANTHROPIC_AUTH_TOKEN) or as `x-api-key` (ANTHROPIC_API_KEY)"
            ),
            AuthError::Malformed(what) => write!(f, "the token is not a valid JWT: {what}"),
            AuthError::AlgorithmNotAccepted(alg) => {
                write!(f, "the token's algorithm `{alg}` is not accepted")
            }
            AuthError::UnknownIssuer => write!(f, "the token's issuer is not trusted by this gateway"),
            AuthError::UnknownKey(kid) => {
                write!(f, "the token was signed with an unknown key (kid `{kid}`)")
            }
            AuthError::NoMatchingKey => write!(f, "no key of the issuer verifies the token"),
            AuthError::BadSignature => write!(f, "the token's signature is invalid"),
            AuthError::Expired { at } => write!(
                f,
                "the token expired (exp {at}); get a fresh token from your identity provider"
            ),
            AuthError::NotYetValid { from } => write!(f, "the token is not valid yet (nbf {from})"),
            AuthError::IssuedInFuture => write!(f, "the token was issued in the future (iat)"),
            AuthError::WrongAudience => {
                write!(f, "the token's audience (aud) is not accepted by this gateway")
            }
            AuthError::MissingClaim(c) => write!(f, "the token has no `{c}` claim"),
            AuthError::KeysUnavailable { issuer } => write!(
                f,
                "the gateway cannot obtain the signing keys of `{issuer}` right now; try again"
            ),
            AuthError::NoPermittedGroup { subject } => write!(
                f,
                "`{subject}` is not in a group allowed to use this gateway; ask your \
                 administrator for access"
            ),
        }
    }
}

impl std::error::Error for AuthError {}

/// Picks the caller's token from the request headers, in the configured order.
pub fn extract_token<'a>(
    sources: &[TokenSource],
    authorization: Option<&'a str>,
    x_api_key: Option<&'a str>,
) -> Option<&'a str> {
    sources.iter().find_map(|source| match source {
        TokenSource::Authorization => authorization.and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
        }),
        TokenSource::XApiKey => x_api_key.map(str::trim).filter(|t| !t.is_empty()),
    })
}

#[derive(Deserialize)]
struct JoseHeader {
    alg: String,
    kid: Option<String>,
    crit: Option<serde_json::Value>,
}

/// The parts of a token read before its signature is checked.
pub struct ParsedToken<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub claims: serde_json::Map<String, serde_json::Value>,
    signing_input: &'a str,
    signature: &'a str,
}

fn b64(part: &str) -> Result<Vec<u8>, AuthError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed("a part is not base64url"))
}

/// Splits and decodes a compact JWS without trusting anything in it yet.
pub fn parse_token(token: &str) -> Result<ParsedToken<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("the token is too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("expected three dot-separated parts"));
    };
    let header: JoseHeader = serde_json::from_slice(&b64(h)?)
        .map_err(|_| AuthError::Malformed("the header is not a JOSE header"))?;
    if header.crit.is_some() {
        return Err(AuthError::Malformed("critical header extensions are not supported"));
    }
    let alg = accepted_algorithm(&header.alg)
        .ok_or_else(|| AuthError::AlgorithmNotAccepted(truncate(&header.alg, 16)))?;
    if s.is_empty() {
        return Err(AuthError::Malformed("the signature is empty"));
    }
    let claims: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&b64(p)?)
        .map_err(|_| AuthError::Malformed("the payload is not a JSON object"))?;
    Ok(ParsedToken {
        alg,
        kid: header.kid,
        claims,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature: s,
    })
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

impl ParsedToken<'_> {
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(|v| v.as_str())
    }

    /// Checks the signature against the issuer's keys.
    pub fn verify_signature(&self, keys: &KeySet) -> Result<(), AuthError> {
        let mut tried = 0;
        for key in keys.candidates(self.kid.as_deref(), self.alg) {
            tried += 1;
            // An error here means the signature bytes are unusable for this key type.
            if jsonwebtoken::crypto::verify(
                self.signature,
                self.signing_input.as_bytes(),
                &key.key,
                self.alg,
            )
            .unwrap_or(false)
            {
                return Ok(());
            }
        }
        match (&self.kid, tried) {
            (Some(kid), 0) if !keys.has_kid(kid) => Err(AuthError::UnknownKey(truncate(kid, 64))),
            // The kid exists but its key does not fit the algorithm: a confusion attempt.
            (Some(_), 0) => Err(AuthError::BadSignature),
            (None, 0) => Err(AuthError::NoMatchingKey),
            _ => Err(AuthError::BadSignature),
        }
    }

    /// Checks time and audience claims and builds the identity. `now` is seconds since epoch.
    pub fn check_claims(
        &self,
        audiences: &[String],
        groups_claim: &str,
        leeway: u64,
        now: u64,
    ) -> Result<Identity, AuthError> {
        let num = |name: &'static str| -> Result<Option<u64>, AuthError> {
            match self.claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .map(Some)
                    .ok_or(AuthError::Malformed("a time claim is not a number")),
            }
        };
        let exp = num("exp")?.ok_or(AuthError::MissingClaim("exp"))?;
        if now >= exp.saturating_add(leeway) {
            return Err(AuthError::Expired { at: exp });
        }
        if let Some(nbf) = num("nbf")? {
            if now.saturating_add(leeway) < nbf {
                return Err(AuthError::NotYetValid { from: nbf });
            }
        }
        if let Some(iat) = num("iat")? {
            if now.saturating_add(leeway) < iat {
                return Err(AuthError::IssuedInFuture);
            }
        }
        let aud_ok = match self.claims.get("aud") {
            Some(serde_json::Value::String(a)) => audiences.iter().any(|x| x == a),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str())
                .any(|a| audiences.iter().any(|x| x == a)),
            None => return Err(AuthError::MissingClaim("aud")),
            _ => false,
        };
        if !aud_ok {
            return Err(AuthError::WrongAudience);
        }
        let subject = match self.claims.get("sub").and_then(|v| v.as_str()) {
            Some(s) if !s.is_empty() => s.to_string(),
            _ => return Err(AuthError::MissingClaim("sub")),
        };
        Ok(Identity {
            subject,
            email: self.claims.get("email").and_then(|v| v.as_str()).map(str::to_string),
            issuer: self.issuer().unwrap_or_default().to_string(),
            groups: read_groups(&self.claims, groups_claim),
            expires_at: exp,
        })
    }
}

/// Reads groups from a claim name or dotted path; a string is one group, an array of strings
/// is many, anything else none. A claim whose full name contains dots wins over the path.
pub fn read_groups(claims: &serde_json::Map<String, serde_json::Value>, path: &str) -> Vec<String> {
    let value = claims.get(path).or_else(|| {
        let mut parts = path.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, p| v.get(p))
    });
    match value {
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        Some(serde_json::Value::Array(list)) => {
            list.iter().filter_map(|v| v.as_str()).map(str::to_string).collect()
        }
        _ => Vec::new(),
    }
}

/// What the filter must do after trying to verify a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Verified(Identity),
    /// The issuer's keys are missing or lack the token's `kid`: fetch issuer `index`'s JWKS
    /// (if allowed) and verify again.
    NeedKeys { issuer_index: usize, error: AuthError },
    Rejected(AuthError),
}

/// Verifies a token against the configuration and the currently known key sets
/// (`keys[i]` belongs to `config.issuers[i]`; `None` when not fetched yet).
pub fn verify(config: &Config, keys: &[Option<KeySet>], token: &str, now: u64) -> Verdict {
    let parsed = match parse_token(token) {
        Ok(p) => p,
        Err(e) => return Verdict::Rejected(e),
    };
    let Some(iss) = parsed.issuer() else {
        return Verdict::Rejected(AuthError::MissingClaim("iss"));
    };
    let Some(issuer_index) = config.issuers.iter().position(|i| i.issuer == iss) else {
        return Verdict::Rejected(AuthError::UnknownIssuer);
    };
    let issuer = &config.issuers[issuer_index];
    let Some(set) = keys.get(issuer_index).and_then(Option::as_ref) else {
        return Verdict::NeedKeys {
            issuer_index,
            error: AuthError::KeysUnavailable { issuer: issuer.issuer.clone() },
        };
    };
    match parsed.verify_signature(set) {
        Ok(()) => {}
        Err(e @ AuthError::UnknownKey(_)) => return Verdict::NeedKeys { issuer_index, error: e },
        Err(e) => return Verdict::Rejected(e),
    }
    match parsed.check_claims(&issuer.audiences, &config.groups_claim, config.leeway_seconds, now) {
        Ok(identity) => Verdict::Verified(identity),
        Err(e) => Verdict::Rejected(e),
    }
}

/// Whether a verified caller may use the gateway at all.
pub fn authorize(config: &Config, identity: &Identity) -> Result<(), AuthError> {
    if config.any_group || identity.groups.iter().any(|g| config.allowed_groups.contains(g)) {
        Ok(())
    } else {
        Err(AuthError::NoPermittedGroup { subject: identity.subject.clone() })
    }
}

/// Verified tokens by SHA-256 of the token, so the cache never holds a usable credential.
#[derive(Debug)]
pub struct TokenCache {
    capacity: usize,
    entries: HashMap<[u8; 32], Identity>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache { capacity, entries: HashMap::new() }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    /// A cached identity for this token, if it is still within its lifetime.
    pub fn get(&mut self, token: &str, leeway: u64, now: u64) -> Option<Identity> {
        let key = Self::key(token);
        let identity = self.entries.get(&key)?;
        if now >= identity.expires_at.saturating_add(leeway) {
            self.entries.remove(&key);
            return None;
        }
        Some(identity.clone())
    }

    pub fn insert(&mut self, token: &str, identity: Identity, leeway: u64, now: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.entries.len() >= self.capacity {
            self.entries.retain(|_, id| now < id.expires_at.saturating_add(leeway));
        }
        if self.entries.len() >= self.capacity {
            if let Some(soonest) =
                self.entries.iter().min_by_key(|(_, id)| id.expires_at).map(|(k, _)| *k)
            {
                self.entries.remove(&soonest);
            }
        }
        self.entries.insert(Self::key(token), identity);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;

    /// A token whose signature is never checked here: claim rules are tested on their own.
    fn unsigned(header: serde_json::Value, claims: serde_json::Value) -> String {
        let e = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        format!("{}.{}.c2ln", e(&header), e(&claims))
    }

    fn claims() -> serde_json::Value {
        json!({"iss": "https://idp", "aud": "scrim", "sub": "alice", "email": "alice@example.com",
               "groups": ["eng", "ops"], "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 600})
    }

    fn check(claims: serde_json::Value, now: u64) -> Result<Identity, AuthError> {
        let token = unsigned(json!({"alg": "RS256", "kid": "k1"}), claims);
        let parsed = parse_token(&token)?;
        parsed.check_claims(&["scrim".to_string()], "groups", 60, now)
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut c = claims();
        c[key] = value;
        c
    }

    fn without(key: &str) -> serde_json::Value {
        let mut c = claims();
        c.as_object_mut().unwrap().remove(key);
        c
    }

    #[test]
    fn valid_claims_give_the_identity() {
        let id = check(claims(), NOW).unwrap();
        assert_eq!(id.subject, "alice");
        assert_eq!(id.email.as_deref(), Some("alice@example.com"));
        assert_eq!(id.issuer, "https://idp");
        assert_eq!(id.groups, vec!["eng", "ops"]);
        assert_eq!(id.expires_at, NOW + 600);
    }

    #[test]
    fn expired_token_is_rejected_after_the_leeway() {
        assert!(check(with("exp", json!(NOW - 59)), NOW).is_ok(), "inside the 60 s leeway");
        assert_eq!(check(with("exp", json!(NOW - 60)), NOW), Err(AuthError::Expired { at: NOW - 60 }));
    }

    #[test]
    fn not_yet_valid_token_is_rejected_beyond_the_leeway() {
        assert!(check(with("nbf", json!(NOW + 60)), NOW).is_ok(), "inside the leeway");
        assert_eq!(
            check(with("nbf", json!(NOW + 61)), NOW),
            Err(AuthError::NotYetValid { from: NOW + 61 })
        );
    }

    #[test]
    fn token_issued_in_the_future_is_rejected() {
        assert!(check(with("iat", json!(NOW + 60)), NOW).is_ok());
        assert_eq!(check(with("iat", json!(NOW + 61)), NOW), Err(AuthError::IssuedInFuture));
    }

    #[test]
    fn token_without_exp_aud_or_sub_is_rejected() {
        assert_eq!(check(without("exp"), NOW), Err(AuthError::MissingClaim("exp")));
        assert_eq!(check(without("aud"), NOW), Err(AuthError::MissingClaim("aud")));
        assert_eq!(check(without("sub"), NOW), Err(AuthError::MissingClaim("sub")));
        assert_eq!(check(with("sub", json!("")), NOW), Err(AuthError::MissingClaim("sub")));
    }

    #[test]
    fn audience_must_match_one_configured_value() {
        assert!(check(with("aud", json!(["other", "scrim"])), NOW).is_ok());
        assert_eq!(check(with("aud", json!("other")), NOW), Err(AuthError::WrongAudience));
        assert_eq!(check(with("aud", json!(["a", "b"])), NOW), Err(AuthError::WrongAudience));
        assert_eq!(check(with("aud", json!(7)), NOW), Err(AuthError::WrongAudience));
    }

    #[test]
    fn time_claims_must_be_numbers() {
        assert!(matches!(check(with("exp", json!("soon")), NOW), Err(AuthError::Malformed(_))));
        assert!(check(with("exp", json!((NOW + 5) as f64 + 0.5)), NOW).is_ok(), "fractional seconds");
    }

    #[test]
    fn none_and_hmac_algorithms_are_not_accepted() {
        for alg in ["none", "HS256", "HS384", "HS512", "RS1", ""] {
            let token = unsigned(json!({"alg": alg}), claims());
            assert_eq!(
                parse_token(&token).err(),
                Some(AuthError::AlgorithmNotAccepted(alg.to_string())),
                "{alg}"
            );
        }
    }

    #[test]
    fn malformed_tokens_are_rejected_before_any_key_is_used() {
        let good = unsigned(json!({"alg": "ES256"}), claims());
        let cases = [
            ("two parts", "a.b".to_string()),
            ("four parts", format!("{good}.x")),
            ("not base64", "!!.!!.!!".to_string()),
            ("empty signature", good.rsplit_once('.').unwrap().0.to_string() + "."),
            ("critical extension", unsigned(json!({"alg": "ES256", "crit": ["b64"]}), claims())),
            ("payload not an object", unsigned(json!({"alg": "ES256"}), json!([1]))),
            ("too long", "a".repeat(MAX_TOKEN_BYTES + 1)),
        ];
        for (name, token) in cases {
            assert!(matches!(parse_token(&token), Err(AuthError::Malformed(_))), "{name}");
        }
    }

    #[test]
    fn groups_are_read_from_names_paths_strings_and_arrays() {
        let c = json!({
            "groups": "solo",
            "realm_access": {"roles": ["admin", 3, "eng"]},
            "cognito:groups": ["pool"],
            "https://example.com/groups": ["namespaced"],
            "a.b": ["dotted-name"], "a": {"b": ["dotted-path"]}
        });
        let m = c.as_object().unwrap();
        assert_eq!(read_groups(m, "groups"), vec!["solo"]);
        assert_eq!(read_groups(m, "realm_access.roles"), vec!["admin", "eng"]);
        assert_eq!(read_groups(m, "cognito:groups"), vec!["pool"]);
        assert_eq!(read_groups(m, "https://example.com/groups"), vec!["namespaced"]);
        assert_eq!(read_groups(m, "a.b"), vec!["dotted-name"], "a full claim name wins over a path");
        assert!(read_groups(m, "missing.path").is_empty());
    }

    #[test]
    fn token_is_read_from_the_configured_sources_in_order() {
        use TokenSource::*;
        let both = [Authorization, XApiKey];
        assert_eq!(extract_token(&both, Some("Bearer abc"), Some("xyz")), Some("abc"));
        assert_eq!(extract_token(&both, Some("bearer  abc "), None), Some("abc"));
        assert_eq!(extract_token(&both, Some("Basic abc"), Some("xyz")), Some("xyz"));
        assert_eq!(extract_token(&both, None, Some(" xyz ")), Some("xyz"));
        assert_eq!(extract_token(&[Authorization], None, Some("xyz")), None);
        assert_eq!(extract_token(&[XApiKey], Some("Bearer abc"), None), None);
        assert_eq!(extract_token(&both, Some("Bearer "), Some("")), None);
    }

    fn identity(exp: u64) -> Identity {
        Identity {
            subject: "s".into(),
            email: None,
            issuer: "i".into(),
            groups: vec![],
            expires_at: exp,
        }
    }

    #[test]
    fn cached_token_expires_with_the_token() {
        let mut cache = TokenCache::new(8);
        cache.insert("t", identity(NOW + 10), 60, NOW);
        assert!(cache.get("t", 60, NOW + 69).is_some());
        assert!(cache.get("t", 60, NOW + 70).is_none());
        assert!(cache.is_empty(), "an expired entry is dropped on lookup");
    }

    #[test]
    fn full_cache_evicts_expired_then_soonest_expiring() {
        let mut cache = TokenCache::new(2);
        cache.insert("old", identity(NOW - 100), 0, NOW - 200);
        cache.insert("late", identity(NOW + 900), 0, NOW);
        cache.insert("new", identity(NOW + 100), 0, NOW);
        assert_eq!(cache.len(), 2);
        assert!(cache.get("old", 0, NOW).is_none());
        cache.insert("newest", identity(NOW + 500), 0, NOW);
        assert!(cache.get("new", 0, NOW).is_none(), "soonest expiring evicted");
        assert!(cache.get("late", 0, NOW).is_some());
        assert!(cache.get("newest", 0, NOW).is_some());
    }

    #[test]
    fn zero_capacity_cache_keeps_nothing() {
        let mut cache = TokenCache::new(0);
        cache.insert("t", identity(NOW + 10), 0, NOW);
        assert!(cache.get("t", 0, NOW).is_none());
    }
}
