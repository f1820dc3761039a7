//! Token endpoint answers turned into stored [`Tokens`], and the refresh that `scrim token`
//! performs when the access token is near expiry (one POST, under the session lock).

use crate::error::{Error, Result};
use crate::http::{FormReply, Http};
use crate::store::{Session, Store, Tokens};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

/// A token endpoint's success answer (RFC 6749 §5.1).
#[derive(Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
}

/// Refresh this long before expiry at most (less for tokens that live shorter than twice this).
const REFRESH_MARGIN_SECONDS: u64 = 60;

/// The claims of a JWT, unverified: scrim only reads them for display and sanity checks (the
/// gateway verifies signatures). `None` for opaque tokens.
pub fn peek_claims(jwt: &str) -> Option<serde_json::Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

fn who(claims: &serde_json::Map<String, Value>) -> Option<String> {
    ["email", "preferred_username", "upn", "sub"]
        .iter()
        .find_map(|k| claims.get(*k).and_then(Value::as_str).map(str::to_string))
}

/// Checks a token endpoint answer and makes the [`Tokens`] to store. An ID token, when
/// present, must come from the expected issuer for this client (it arrived over TLS straight
/// from the token endpoint, which OpenID Connect Core §3.1.3.7 accepts instead of a signature
/// check); a JWT access token must carry the expected issuer too.
pub fn accept(resp: TokenResponse, session: &Session, previous_refresh: Option<String>, now: u64) -> Result<Tokens> {
    let issuer = &session.provider.issuer;
    if let Some(kind) = resp.token_type.as_deref() {
        if !kind.eq_ignore_ascii_case("bearer") {
            return Err(Error::Settings(format!("the provider issued a `{kind}` token; the gateway takes Bearer tokens")));
        }
    }
    let mut subject = None;
    if let Some(id_token) = &resp.id_token {
        let claims = peek_claims(id_token).ok_or_else(|| Error::Settings("the provider's ID token is not a JWT".into()))?;
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(Error::Settings(format!("the ID token was not issued by `{issuer}`")));
        }
        let client_id = session.settings.client_id.as_str();
        let for_us = match claims.get("aud") {
            Some(Value::String(a)) => a == client_id,
            Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(client_id)),
            _ => false,
        };
        if !for_us {
            return Err(Error::Settings(format!("the ID token is not for client `{client_id}`")));
        }
        subject = who(&claims);
    }
    let access_claims = peek_claims(&resp.access_token);
    if let Some(claims) = &access_claims {
        if let Some(iss) = claims.get("iss").and_then(Value::as_str) {
            if iss != issuer {
                return Err(Error::Settings(format!("the access token was issued by `{iss}`, not `{issuer}`")));
            }
        }
        subject = subject.or_else(|| who(claims));
    }
    let jwt_exp = access_claims.as_ref().and_then(|c| c.get("exp")).and_then(Value::as_u64);
    // Without expires_in, a JWT's exp; failing both, a short guess so scrim refreshes early.
    let expires_at = resp.expires_in.map(|s| now + s).or(jwt_exp).unwrap_or(now + 300);
    Ok(Tokens {
        access_token: resp.access_token,
        obtained_at: now,
        expires_at,
        // Providers that do not rotate refresh tokens send none on refresh: keep the old one.
        refresh_token: resp.refresh_token.or(previous_refresh),
        subject,
    })
}

/// Whether the access token should be replaced before use.
pub fn needs_refresh(tokens: &Tokens, now: u64) -> bool {
    let lifetime = tokens.expires_at.saturating_sub(tokens.obtained_at);
    let margin = REFRESH_MARGIN_SECONDS.min(lifetime / 2);
    now + margin >= tokens.expires_at
}

/// A valid access token: the stored one, or a refreshed one. Holds the session lock
/// throughout, so a second caller waits and then finds the first one's refreshed token.
pub fn current_access_token(store: &Store, http: &Http, now: impl Fn() -> u64) -> Result<String> {
    let _lock = store.lock()?;
    let mut session = store.load()?.ok_or_else(|| Error::LoginRequired("not signed in".into()))?;
    let tokens = session.tokens.clone().ok_or_else(|| Error::LoginRequired("signed out".into()))?;
    if !needs_refresh(&tokens, now()) {
        return Ok(tokens.access_token);
    }
    let Some(refresh_token) = tokens.refresh_token.clone() else {
        return Err(Error::LoginRequired("the access token expired and there is no refresh token".into()));
    };
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token.as_str()),
        ("client_id", session.settings.client_id.as_str()),
    ];
    for (k, v) in &session.settings.request_params {
        form.push((k.as_str(), v.as_str()));
    }
    let reply = http.post_form::<TokenResponse>(&session.provider.token_endpoint, &form);
    match reply {
        Ok(FormReply::Ok(resp)) => {
            let fresh = accept(resp, &session, Some(refresh_token), now())?;
            let token = fresh.access_token.clone();
            session.tokens = Some(fresh);
            store.save(&session)?;
            Ok(token)
        }
        Ok(FormReply::Refused(err)) => {
            // The refresh token is dead (revoked, expired, reused): forget it so later calls
            // fail at once without asking the provider again.
            session.tokens = None;
            store.save(&session)?;
            let why = err.error_description.unwrap_or(err.error);
            Err(Error::LoginRequired(format!("the identity provider no longer accepts the refresh token ({why})")))
        }
        // Provider unreachable: a token that has not yet expired is still good to use.
        Err(e) if now() < tokens.expires_at => {
            let _ = e;
            Ok(tokens.access_token)
        }
        Err(e) => Err(e),
    }
}
