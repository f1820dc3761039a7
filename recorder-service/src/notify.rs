//! Notifications of new reviews and grant requests to webhooks: a Slack incoming-webhook
//! payload, or generic JSON signed with HMAC-SHA256. Delivery runs in the background with
//! retries and exponential backoff; it never blocks or fails the review or grant it reports.
//! Deliveries, retries and give-ups are counted ([`Notifier::stats`]) and logged.
//!
//! The excerpt and reason are masked again with the built-in rules before they leave (the
//! filter already masked the excerpt; a webhook is one more place a secret must not reach).
//!
//! Generic JSON carries `x-scrim-event`, `x-scrim-delivery` (the same on every attempt),
//! `x-scrim-timestamp` (Unix seconds) and `x-scrim-signature: sha256=<hex>`, the
//! HMAC-SHA256 under the webhook's secret of `<timestamp>.<body>`; a receiver recomputes it
//! and refuses old timestamps to stop replays.

use crate::reviews::{Grant, Review};
use hmac::{Hmac, Mac};
use scrim_core::rules::RuleSet;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::Sha256;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The `--notify-config` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// Where to send each notification (every hook gets every event).
    pub webhooks: Vec<WebhookConfig>,
    /// Attempts per delivery, the first included (1 to 10).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wait before the first retry; doubles on each next one, at most 60 s (10 ms to 60000).
    #[serde(default = "default_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// Timeout of one attempt (100 ms to 60000).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_attempts() -> u32 {
    5
}
fn default_backoff_ms() -> u64 {
    500
}
fn default_timeout_ms() -> u64 {
    5000
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http(s)://…` of the receiver (for Slack, the incoming webhook's URL).
    pub url: String,
    /// `slack` (incoming-webhook payload) or `json` (the generic signed document).
    pub format: WebhookFormat,
    /// File holding the HMAC key (required for `json`, at least 32 bytes after trimming).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    Slack,
    Json,
}

/// Why the notification configuration was refused (the recorder does not start).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NotifyError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("webhooks[{index}].{field}: {message}")]
    Field { index: usize, field: &'static str, message: String },
    #[error("{field}: {message}")]
    Limit { field: &'static str, message: String },
    #[error("built-in rules: {0}")]
    Rules(String),
}

/// Counters since start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NotifyStats {
    /// Deliveries a receiver accepted (2xx).
    pub delivered: u64,
    /// Attempts after a failed one.
    pub retries: u64,
    /// Deliveries given up (attempts exhausted, or a 4xx other than 408/429).
    pub failed: u64,
}

struct Hook {
    url: String,
    format: WebhookFormat,
    secret: Option<Vec<u8>>,
}

struct Inner {
    hooks: Vec<Hook>,
    max_attempts: u32,
    initial_backoff: Duration,
    http: reqwest::Client,
    rules: RuleSet,
    console_url: Option<String>,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
}

/// Sends notifications; cheap to clone.
#[derive(Clone)]
pub struct Notifier(Arc<Inner>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("hooks", &self.0.hooks.len()).finish()
    }
}

impl NotifyConfig {
    pub fn from_file(path: &Path) -> Result<NotifyConfig, NotifyError> {
        let bad = |message: String| NotifyError::File { path: path.display().to_string(), message };
        let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))
    }
}

impl Notifier {
    /// Checks the configuration and reads the secrets. `console_url` (the console's start
    /// page) makes each notification link to its review or grant there.
    pub fn new(config: NotifyConfig, console_url: Option<String>) -> Result<Notifier, NotifyError> {
        if !(1..=10).contains(&config.max_attempts) {
            return Err(NotifyError::Limit { field: "max_attempts", message: "must be 1 to 10".into() });
        }
        if !(10..=60_000).contains(&config.initial_backoff_ms) {
            return Err(NotifyError::Limit { field: "initial_backoff_ms", message: "must be 10 to 60000".into() });
        }
        if !(100..=60_000).contains(&config.timeout_ms) {
            return Err(NotifyError::Limit { field: "timeout_ms", message: "must be 100 to 60000".into() });
        }
        let mut hooks = Vec::new();
        for (index, w) in config.webhooks.into_iter().enumerate() {
            let field = |field, message: &str| NotifyError::Field { index, field, message: message.into() };
            if !(w.url.starts_with("https://") || w.url.starts_with("http://")) {
                return Err(field("url", "expected an http(s) URL"));
            }
            let secret = match &w.secret_file {
                Some(path) => {
                    let text = std::fs::read_to_string(path)
                        .map_err(|e| field("secret_file", &format!("{}: {e}", path.display())))?;
                    let text = text.trim();
                    if text.len() < 32 {
                        return Err(field("secret_file", "the secret must be at least 32 bytes"));
                    }
                    Some(text.as_bytes().to_vec())
                }
                None if w.format == WebhookFormat::Json => return Err(field("secret_file", "required for format `json`")),
                None => None,
            };
            hooks.push(Hook { url: w.url, format: w.format, secret });
        }
        let rules = RuleSet::builtin().map_err(|e| NotifyError::Rules(e.to_string()))?;
        Ok(Notifier(Arc::new(Inner {
            hooks,
            max_attempts: config.max_attempts,
            initial_backoff: Duration::from_millis(config.initial_backoff_ms),
            http: reqwest::Client::builder()
                .timeout(Duration::from_millis(config.timeout_ms))
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client builds"),
            rules,
            console_url,
            delivered: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })))
    }

    pub fn stats(&self) -> NotifyStats {
        NotifyStats {
            delivered: self.0.delivered.load(Ordering::Relaxed),
            retries: self.0.retries.load(Ordering::Relaxed),
            failed: self.0.failed.load(Ordering::Relaxed),
        }
    }

    fn mask(&self, text: &str) -> String {
        self.0.rules.mask(text).text.into_owned()
    }

    fn link(&self, fragment: &str) -> Option<String> {
        self.0.console_url.as_ref().map(|u| format!("{u}#{fragment}"))
    }

    /// A review was opened: tell every hook (in the background).
    pub fn review_requested(&self, review: &Review) {
        let doc = json!({
            "event": "review.requested",
            "id": review.id,
            "rule": review.rule,
            "rule_message": review.rule_message,
            "requester": {"subject": review.user.subject, "email": review.user.email, "issuer": review.user.issuer},
            "session_id": review.session_id,
            "exchange_id": review.exchange_id,
            "excerpt": self.mask(&review.excerpt),
            "approvals_required": review.approvals_required,
            "created_at_ms": review.created_at_ms,
            "link": self.link(&format!("/reviews/{}", review.id)),
        });
        self.send(doc);
    }

    /// A grant was asked for: tell every hook (in the background).
    pub fn grant_requested(&self, grant: &Grant) {
        let doc = json!({
            "event": "grant.requested",
            "id": grant.id,
            "requester": {"subject": grant.user.subject, "email": grant.user.email, "issuer": grant.user.issuer},
            "reason": self.mask(&grant.reason),
            "duration_seconds": grant.duration_seconds,
            "created_at_ms": grant.created_at_ms,
            "link": self.link(&format!("/grants/{}", grant.id)),
        });
        self.send(doc);
    }

    fn send(&self, doc: Value) {
        if self.0.hooks.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            log::warn!("notification {} not sent: no runtime", doc["id"]);
            return;
        };
        for index in 0..self.0.hooks.len() {
            let me = self.clone();
            let doc = doc.clone();
            runtime.spawn(async move { me.deliver(index, doc).await });
        }
    }

    async fn deliver(&self, index: usize, doc: Value) {
        let hook = &self.0.hooks[index];
        let event = doc["event"].as_str().unwrap_or("").to_owned();
        let body = match hook.format {
            WebhookFormat::Slack => slack_payload(&doc),
            WebhookFormat::Json => doc.clone(),
        };
        let body = serde_json::to_vec(&body).expect("payload serialises");
        let delivery = crate::console::sessions::random_token();
        let mut wait = self.0.initial_backoff;
        for attempt in 1..=self.0.max_attempts {
            if attempt > 1 {
                self.0.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(60));
            }
            let mut request = self
                .0
                .http
                .post(&hook.url)
                .header("content-type", "application/json")
                .header("x-scrim-event", &event)
                .header("x-scrim-delivery", &delivery);
            if let Some(secret) = &hook.secret {
                let timestamp = (crate::time::now_ms() / 1000).to_string();
                request = request
                    .header("x-scrim-timestamp", &timestamp)
                    .header("x-scrim-signature", format!("sha256={}", sign(secret, &timestamp, &body)));
            }
            let outcome = request.body(body.clone()).send().await;
            let retry = match outcome {
                Ok(r) if r.status().is_success() => {
                    self.0.delivered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Ok(r) => {
                    let s = r.status().as_u16();
                    log::warn!("webhook {index} ({event} {}): attempt {attempt}: status {s}", doc["id"]);
                    s >= 500 || s == 408 || s == 429
                }
                Err(e) => {
                    log::warn!("webhook {index} ({event} {}): attempt {attempt}: {e}", doc["id"]);
                    true
                }
            };
            if !retry {
                break;
            }
        }
        self.0.failed.fetch_add(1, Ordering::Relaxed);
        log::error!("webhook {index} ({event} {}): not delivered, gave up", doc["id"]);
    }
}

/// Lowercase hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// Slack's mrkdwn control characters, escaped as its docs ask.
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// The incoming-webhook payload: a `text` fallback and Block Kit sections.
pub fn slack_payload(doc: &Value) -> Value {
    let s = |v: &Value| slack_escape(v.as_str().unwrap_or(""));
    let requester = s(&doc["requester"]["subject"]);
    let link = doc["link"].as_str().map(|l| format!("<{}|Open in the Scrim console>", l)).unwrap_or_default();
    let (text, detail) = if doc["event"] == "review.requested" {
        (
            format!("Review {} needs approval: rule `{}` matched a request from {requester}", s(&doc["id"]), s(&doc["rule"])),
            format!("*Rule:* `{}` {}\n*Requester:* {requester}\n*Excerpt (masked):*\n```{}```", s(&doc["rule"]), s(&doc["rule_message"]), s(&doc["excerpt"])),
        )
    } else {
        (
            format!("Grant {} requested by {requester} for {} s", s(&doc["id"]), doc["duration_seconds"]),
            format!("*Requester:* {requester}\n*Duration:* {} s\n*Reason:* {}", doc["duration_seconds"], s(&doc["reason"])),
        )
    };
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": detail}}),
    ];
    if !link.is_empty() {
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": link}]}));
    }
    json!({"text": format!("{text} {link}").trim_end(), "blocks": blocks})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Expected value from Python's hmac module over the same bytes.
        assert_eq!(
            sign(b"Jefe", "1700000000", br#"{"event":"x"}"#),
            "98898de2ce4fa86e2650097b769b37cfbdbc8dc14045a576d2173f7132609cf3"
        );
    }

    #[test]
    fn json_webhooks_need_a_secret_and_limits_are_checked() {
        let config = |format, secret_file: Option<PathBuf>, attempts| NotifyConfig {
            webhooks: vec![WebhookConfig { url: "http://127.0.0.1:1/hook".into(), format, secret_file }],
            max_attempts: attempts,
            initial_backoff_ms: 500,
            timeout_ms: 5000,
        };
        let e = Notifier::new(config(WebhookFormat::Json, None, 5), None).unwrap_err();
        assert_eq!(e.to_string(), "webhooks[0].secret_file: required for format `json`");
        assert!(Notifier::new(config(WebhookFormat::Slack, None, 0), None).is_err());
        assert!(Notifier::new(config(WebhookFormat::Slack, None, 5), None).is_ok());
    }

    #[test]
    fn unknown_fields_in_the_file_are_refused() {
        let e = serde_json::from_str::<NotifyConfig>(r#"{"webhooks": [], "retries": 3}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field `retries`"), "{e}");
    }

    #[test]
    fn slack_payload_escapes_and_links() {
        let doc = json!({"event": "review.requested", "id": "rv-1", "rule": "prod-db", "rule_message": "m",
            "requester": {"subject": "alice<x>"}, "excerpt": "a & b", "link": "http://c/console/#/reviews/rv-1"});
        let p = slack_payload(&doc);
        let text = p["text"].as_str().unwrap();
        assert!(text.contains("alice&lt;x&gt;") && text.contains("<http://c/console/#/reviews/rv-1|"), "{text}");
        assert!(p["blocks"][1]["text"]["text"].as_str().unwrap().contains("a &amp; b"));
    }
}
