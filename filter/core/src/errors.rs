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
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

/// Builds an Anthropic-shaped error reply.
pub fn anthropic_error(status: u32, error_type: &str, message: &str, retryable: bool) -> Reply {
    let body = json!({"type": "error", "error": {"type": error_type, "message": message}});
    let mut headers = vec![("content-type", "application/json".to_string())];
    if !retryable {
        headers.push(("x-should-retry", "false".to_string()));
    }
    Reply { status, headers, body: body.to_string() }
}

impl From<&AuthError> for Reply {
    fn from(e: &AuthError) -> Reply {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn refusals_use_the_anthropic_error_shape() {
        let r = Reply::from(&AuthError::BadSignature);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "authentication_error");
        assert_eq!(body["error"]["message"], "the token's signature is invalid");
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "content-type"), Some("application/json"));
        assert_eq!(header(&r, "www-authenticate"), Some(r#"Bearer realm="scrim", error="invalid_token""#));
    }

    #[test]
    fn only_an_expired_token_and_missing_keys_invite_a_retry() {
        let cases = [
            (AuthError::Expired { at: 1 }, 401, None),
            (AuthError::KeysUnavailable { issuer: "i".into() }, 503, None),
            (AuthError::BadSignature, 401, Some("false")),
            (AuthError::WrongAudience, 401, Some("false")),
            (AuthError::MissingToken, 401, Some("false")),
            (AuthError::NoPermittedGroup { subject: "s".into() }, 403, Some("false")),
        ];
        for (e, status, retry) in cases {
            let r = Reply::from(&e);
            assert_eq!(r.status, status, "{e:?}");
            assert_eq!(header(&r, "x-should-retry"), retry, "{e:?}");
        }
    }

    #[test]
    fn forbidden_and_unavailable_use_their_error_types() {
        let t = |e: AuthError| {
            let v: serde_json::Value = serde_json::from_str(&Reply::from(&e).body).unwrap();
            v["error"]["type"].as_str().unwrap().to_string()
        };
        assert_eq!(t(AuthError::NoPermittedGroup { subject: "s".into() }), "permission_error");
        assert_eq!(t(AuthError::KeysUnavailable { issuer: "i".into() }), "api_error");
    }
}
