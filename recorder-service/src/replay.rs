//! Replay: rebuilds a session as the developer saw it (what they sent, what came back, what
//! the gateway refused) from its stored exchanges, and finds the masked spans in it. Pure: it
//! formats nothing and reads no store.
//!
//! Agent clients resend the whole conversation every turn, so each exchange contributes only
//! the user messages after the last assistant message of its request (what was typed or
//! returned by tools since the previous reply), then its response blocks. A retried request
//! therefore shows its user turn twice: it was sent twice. Masked spans
//! are found by the default placeholder (`[REDACTED:<rule>]`); a deployment with a custom
//! placeholder gets its text unmarked.

use crate::store::Exchange;
use scrim_core::audit::Decision;
use scrim_core::rules::DEFAULT_PLACEHOLDER;
use serde::Serialize;
use serde_json::Value;

/// Who produced a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    User,
    Assistant,
    /// The gateway refused the exchange (nothing reached the model).
    Gateway,
}

/// A masked span in a turn's text: byte offsets of the whole placeholder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub rule: String,
}

/// One thing the developer saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Turn {
    pub seq: i64,
    pub exchange_id: String,
    pub at_ms: Option<i64>,
    pub speaker: Speaker,
    /// Block type: `text`, `tool_use`, `tool_result`, `thinking`, ... or `refused`.
    pub kind: String,
    /// Tool name (tool use blocks).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub text: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masked: Vec<Span>,
}

/// The session's turns in order.
pub fn turns(exchanges: &[Exchange]) -> Vec<Turn> {
    let mut out = Vec::new();
    for ex in exchanges {
        let r = &ex.stored.record;
        let turn = |speaker, kind: &str, name: Option<String>, text: String| Turn {
            seq: ex.seq,
            exchange_id: r.exchange_id.clone(),
            at_ms: ex.stored.envoy.start_time_ms,
            speaker,
            kind: kind.to_owned(),
            name,
            masked: spans(&text),
            text,
        };
        let messages = r
            .request
            .as_ref()
            .and_then(|q| q.get("messages"))
            .and_then(Value::as_array);
        if let Some(messages) = messages {
            let start = messages
                .iter()
                .rposition(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
                .map_or(0, |i| i + 1);
            for m in &messages[start..] {
                if m.get("role").and_then(Value::as_str) != Some("user") {
                    continue;
                }
                for (kind, text) in message_blocks(m.get("content").unwrap_or(&Value::Null)) {
                    out.push(turn(Speaker::User, &kind, None, text));
                }
            }
        }
        if r.decision != Decision::Allowed {
            let reason = r
                .reason
                .as_deref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default();
            let text = format!("{}{reason}", r.decision.as_str());
            out.push(turn(Speaker::Gateway, "refused", None, text));
        }
        if let Some(response) = &r.response {
            for b in &response.blocks {
                out.push(turn(
                    Speaker::Assistant,
                    &b.kind,
                    b.name.clone(),
                    b.text.clone(),
                ));
            }
        }
    }
    out
}

/// The readable parts of one message's `content` (a string or a list of blocks).
fn message_blocks(content: &Value) -> Vec<(String, String)> {
    match content {
        Value::String(s) => vec![("text".into(), s.clone())],
        Value::Array(blocks) => blocks
            .iter()
            .map(|b| {
                let kind = b.get("type").and_then(Value::as_str).unwrap_or("unknown");
                let text = match kind {
                    "text" => b
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    "tool_result" => match b.get("content") {
                        Some(inner @ Value::Array(_)) => message_blocks(inner)
                            .into_iter()
                            .map(|(_, t)| t)
                            .collect::<Vec<_>>()
                            .join("\n"),
                        Some(Value::String(s)) => s.clone(),
                        _ => String::new(),
                    },
                    other => format!("[{other}]"),
                };
                (kind.to_owned(), text)
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Masked spans in `text`: every `[REDACTED:<rule>]` whose rule id is a plain identifier.
pub fn spans(text: &str) -> Vec<Span> {
    let (prefix, suffix) = DEFAULT_PLACEHOLDER
        .split_once("{id}")
        .expect("the default placeholder names the rule");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i;
        let id_start = start + prefix.len();
        let id_len = text[id_start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || "-_.".contains(c)))
            .unwrap_or(text.len() - id_start);
        let id_end = id_start + id_len;
        if id_len > 0 && text[id_end..].starts_with(suffix) {
            let end = id_end + suffix.len();
            out.push(Span {
                start,
                end,
                rule: text[id_start..id_end].to_owned(),
            });
            from = end;
        } else {
            from = id_start;
        }
    }
    out
}

/// `text` with each span wrapped in `open` … `close` (ANSI codes or visible brackets).
pub fn mark(text: &str, spans: &[Span], open: &str, close: &str) -> String {
    let mut out = String::with_capacity(text.len() + spans.len() * (open.len() + close.len()));
    let mut at = 0;
    for s in spans {
        out.push_str(&text[at..s.start]);
        out.push_str(open);
        out.push_str(&text[s.start..s.end]);
        out.push_str(close);
        at = s.end;
    }
    out.push_str(&text[at..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_found_with_their_rule() {
        let text = "key [REDACTED:aws-access-key] and [REDACTED:github_pat]. [REDACTED:] [x]";
        let found = spans(text);
        assert_eq!(
            found.iter().map(|s| s.rule.as_str()).collect::<Vec<_>>(),
            ["aws-access-key", "github_pat"]
        );
        assert_eq!(
            &text[found[0].start..found[0].end],
            "[REDACTED:aws-access-key]"
        );
        assert_eq!(
            mark(text, &found, "«", "»"),
            "key «[REDACTED:aws-access-key]» and «[REDACTED:github_pat]». [REDACTED:] [x]"
        );
    }

    #[test]
    fn unterminated_placeholder_is_not_a_span() {
        assert!(spans("[REDACTED:abc").is_empty());
        assert!(spans("[REDACTED:a b]").is_empty());
    }
}
