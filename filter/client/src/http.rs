//! The HTTP calls scrim makes: JSON GETs and OAuth form POSTs whose errors become
//! [`Error::Refused`] with the provider's own `error` code.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::time::Duration;

/// A blocking client with a bounded wait: a provider that hangs must not hang Claude Code.
pub struct Http {
    client: reqwest::blocking::Client,
}

/// An OAuth error body (RFC 6749 §5.2).
#[derive(Debug, Deserialize)]
pub struct OAuthError {
    pub error: String,
    #[serde(default)]
    pub error_description: Option<String>,
}

/// What a form POST to an OAuth endpoint gave.
pub enum FormReply<T> {
    Ok(T),
    /// The endpoint answered with an OAuth error.
    Refused(OAuthError),
}

impl Http {
    pub fn new() -> Result<Http> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(20))
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("scrim/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::Settings(format!("cannot build an HTTP client: {e}")))?;
        Ok(Http { client })
    }

    pub fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T> {
        let unreachable = |reason: String| Error::Unreachable { url: url.to_string(), reason };
        let resp = self.client.get(url).header("accept", "application/json").send().map_err(|e| unreachable(describe(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(unreachable(format!("HTTP {status}")));
        }
        let body = resp.bytes().map_err(|e| unreachable(describe(&e)))?;
        serde_json::from_slice(&body).map_err(|e| unreachable(format!("not the expected JSON document ({e})")))
    }

    /// POSTs `form` (application/x-www-form-urlencoded) and reads a JSON answer.
    pub fn post_form<T: DeserializeOwned>(&self, url: &str, form: &[(&str, &str)]) -> Result<FormReply<T>> {
        let unreachable = |reason: String| Error::Unreachable { url: url.to_string(), reason };
        let resp = self
            .client
            .post(url)
            .header("accept", "application/json")
            .form(form)
            .send()
            .map_err(|e| unreachable(describe(&e)))?;
        let status = resp.status();
        let body = resp.bytes().map_err(|e| unreachable(describe(&e)))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(FormReply::Ok)
                .map_err(|e| unreachable(format!("not the expected JSON answer ({e})")));
        }
        match serde_json::from_slice::<OAuthError>(&body) {
            Ok(err) => Ok(FormReply::Refused(err)),
            Err(_) => Err(unreachable(format!("HTTP {status}"))),
        }
    }

    /// POSTs a form and only cares whether it was accepted (token revocation).
    pub fn post_form_ok(&self, url: &str, form: &[(&str, &str)]) -> Result<()> {
        let resp = self
            .client
            .post(url)
            .form(form)
            .send()
            .map_err(|e| Error::Unreachable { url: url.to_string(), reason: describe(&e) })?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(Error::Unreachable { url: url.to_string(), reason: format!("HTTP {}", resp.status()) })
        }
    }
}

/// reqwest's own message plus its causes (the cause says "connection refused").
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
