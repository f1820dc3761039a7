//! The one place where a refusal becomes what the client sees: an HTTP status, headers and a
//! body in the Anthropic error shape `{"type":"error","error":{"type":…,"message":…}}`.
//!
//! `x-should-retry: false` goes on every refusal a retry cannot fix, so agent clients stop at
//! once instead of backing off for minutes; it is left off an expired token (the client's
//! token helper refreshes on 401) and off transient failures.

use crate::auth::AuthError;
use serde_json::json;

/// A local reply the filter sends instead of forwarding the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Builds an Anthropic-shaped error reply.
pub fn anthropic_error(status: u32, error_type: &str, message: &str, retryable: bool) -> Refusal {
    let body = json!({"type": "error", "error": {"type": error_type, "message": message}});
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !retryable {
        headers.push(("x-should-retry", "false".to_string()));
    }
    Refusal { status, headers, body: body.to_string() }
}

impl From<&AuthError> for Refusal {
    fn from(e: &AuthError) -> Refusal {
        let message = e.to_string();
        match e {
            AuthError::KeysUnavailable { .. } => anthropic_error(503, "api_error", &message, true),
            AuthError::NoPermittedGroup { .. } => {
                anthropic_error(403, "permission_error", &message, false)
            }
            _ => {
                let retryable = matches!(e, AuthError::Expired { .. });
                let mut r = anthropic_error(401, "authentication_error", &message, retryable);
                let challenge = if matches!(e, AuthError::MissingToken) {
                    r#"Bearer realm="scrim""#.to_string()
                } else {
                    r#"Bearer realm="scrim", error="invalid_token""#.to_string()
                };
                r.headers.push(("www-authenticate", challenge));
                r
            }
        }
    }
}
