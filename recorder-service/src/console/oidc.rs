//! The console's side of OpenID Connect: reads the issuer's discovery document (once; a
//! failure is retried at the next sign-in), builds the authorization request (code flow,
//! PKCE S256, a one-time `state`) and exchanges the code for a token at the token endpoint.
//! The console acts as a public client: no client secret, the verifier proves the request.
//!
//! The token kept is the `access_token`, which must be a JWT the recorder's `--auth-config`
//! accepts (issuer, audience, groups claim); it is checked by the API's own verifier before
//! a session is made.

use super::sessions::PendingLogin;
use super::ConsoleConfig;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use std::time::Duration;

/// The endpoints the console needs from the discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
}

pub struct Client {
    issuer: String,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Option<Discovery>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
}

impl Client {
    pub fn new(issuer: &str) -> Client {
        Client {
            issuer: issuer.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client builds"),
            discovered: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn discovery(&self) -> Result<Discovery, String> {
        let mut cached = self.discovered.lock().await;
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let response = self.http.get(&url).send().await.map_err(|e| format!("discovery {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("discovery {url}: status {}", response.status()));
        }
        let d: Discovery = response.json().await.map_err(|e| format!("discovery {url}: {e}"))?;
        // The document must speak for the issuer it was fetched from (OIDC Discovery §4.3).
        if d.issuer.trim_end_matches('/') != self.issuer {
            return Err(format!("discovery {url}: names issuer `{}`", d.issuer));
        }
        *cached = Some(d.clone());
        Ok(d)
    }

    /// Trades the code (and the verifier that proves this client asked for it) for a token.
    pub async fn exchange(&self, d: &Discovery, config: &ConsoleConfig, code: &str, verifier: &str) -> Result<String, String> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &config.redirect_uri()),
            ("client_id", &config.client_id),
            ("code_verifier", verifier),
        ];
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let response = self
            .http
            .post(&d.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("token endpoint: status {status}: {}", text.chars().take(300).collect::<String>()));
        }
        let token: TokenResponse = response.json().await.map_err(|e| format!("token endpoint: {e}"))?;
        Ok(token.access_token)
    }
}

/// `application/x-www-form-urlencoded` / query escaping of one value.
pub fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Where the browser goes to sign in.
pub fn authorization_url(d: &Discovery, config: &ConsoleConfig, login: &PendingLogin) -> String {
    let params = [
        ("response_type", "code".to_owned()),
        ("client_id", config.client_id.clone()),
        ("redirect_uri", config.redirect_uri()),
        ("scope", config.scopes.clone()),
        ("state", login.state.clone()),
        ("code_challenge", login.challenge()),
        ("code_challenge_method", "S256".to_owned()),
    ];
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    let sep = if d.authorization_endpoint.contains('?') { '&' } else { '?' };
    format!("{}{sep}{query}", d.authorization_endpoint)
}

/// `exp` of a JWT (already verified by the caller), in epoch milliseconds.
pub fn token_expiry_ms(jwt: &str) -> Option<i64> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("exp")?.as_i64().map(|s| s.saturating_mul(1000))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::sessions::Sessions;

    #[test]
    fn the_authorization_request_carries_pkce_s256_and_state() {
        let d = Discovery {
            issuer: "http://idp".into(),
            authorization_endpoint: "http://idp/authorize".into(),
            token_endpoint: "http://idp/token".into(),
        };
        let config = ConsoleConfig::new("http://127.0.0.1:9905", "http://idp", "scrim-console").unwrap();
        let login = Sessions::default().start_login(0);
        let url = authorization_url(&d, &config, &login);
        assert!(url.starts_with("http://idp/authorize?response_type=code&client_id=scrim-console&"), "{url}");
        assert!(url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A9905%2Fconsole%2Fcallback"), "{url}");
        assert!(url.contains(&format!("state={}", login.state)));
        assert!(url.contains(&format!("code_challenge={}&code_challenge_method=S256", login.challenge())));
        assert!(!url.contains(&login.verifier), "the verifier never leaves the recorder");
    }

    #[test]
    fn token_expiry_is_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"exp":1700000000}"#);
        assert_eq!(token_expiry_ms(&format!("h.{payload}.s")), Some(1_700_000_000_000));
        assert_eq!(token_expiry_ms("garbage"), None);
    }
}
