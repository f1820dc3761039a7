//! Where to sign in: the gateway's client document (`/.well-known/scrim-client`) and the
//! identity provider's OIDC discovery document, fetched and checked, nothing else.

use crate::error::{Error, Result};
use crate::http::Http;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The path under the gateway's base URL where it publishes [`ClientSettings`].
pub const CLIENT_DOCUMENT_PATH: &str = "/.well-known/scrim-client";

/// What a client needs to sign in for this gateway, as the gateway publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientSettings {
    /// The OIDC issuer whose tokens the gateway accepts (exactly as in the tokens' `iss`).
    pub issuer: String,
    /// The public (no secret) OAuth client registered for developers.
    pub client_id: String,
    /// Scopes to request; `offline_access` is what gets a refresh token from most providers.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The audience the gateway requires in access tokens (informational for the client).
    #[serde(default)]
    pub audience: Option<String>,
    /// Extra parameters sent with the authorization, device-authorization and token requests,
    /// e.g. `{"resource": "https://gateway.example.com"}` (RFC 8707) or `{"audience": "…"}`.
    #[serde(default)]
    pub request_params: BTreeMap<String, String>,
}

/// The provider endpoints scrim uses, from OIDC discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub device_authorization_endpoint: Option<String>,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
}

/// `https://gw/` and `https://gw` name the same gateway.
pub fn normalize_gateway(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(Error::Usage(format!("gateway `{url}` must be an http:// or https:// URL")));
    }
    Ok(url.to_string())
}

/// Fetches the gateway's client document.
pub fn fetch_client_settings(http: &Http, gateway: &str) -> Result<ClientSettings> {
    let url = format!("{gateway}{CLIENT_DOCUMENT_PATH}");
    let settings: ClientSettings = http.get_json(&url)?;
    if settings.issuer.is_empty() || settings.client_id.is_empty() {
        return Err(Error::Settings(format!("{url} names no issuer or no client_id")));
    }
    Ok(settings)
}

/// Fetches the provider's discovery document and checks that it speaks for `issuer`
/// (OpenID Connect Discovery 1.0 §4.3: the `issuer` inside must be identical).
pub fn discover(http: &Http, issuer: &str) -> Result<Provider> {
    let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
    let provider: Provider = http.get_json(&url)?;
    if provider.issuer != issuer {
        return Err(Error::Settings(format!(
            "{url} says its issuer is `{}`, but the gateway trusts `{issuer}`: refusing to sign in \
             with a provider the gateway would not accept",
            provider.issuer
        )));
    }
    Ok(provider)
}
