//! Closed-world reading of whole bodies: which handling a path selects, what a request asks
//! for (models, `max_tokens`, every text it would send), and masking of every string of a
//! request or a buffered response, whatever its shape.
//!
//! Nothing is inspected by field name allow-lists: every string and object key of a JSON
//! body is a text, on every path. The few exceptions are opaque data a regex cannot read
//! and whose change would break the exchange (see [`Opaque`]); they are listed in README.
//! Known shapes only add facts: the model and `max_tokens` of a Messages request, of each
//! request of a batch, and of an OpenAI chat completion.

use crate::anthropic::{encode_string, Tally};
use crate::anthropic_stream::ThinkingMode;
use crate::json_doc::{Doc, JsonError, Leaf, LeafKind, Step};
use crate::rules::RuleSet;
use std::borrow::Cow;
use std::fmt;

/// The handling a request path selects. Matching is on the canonical, lower-cased path
/// without its query, so no spelling of a path selects a less inspected handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Messages,
    CountTokens,
    /// `POST /v1/messages/batches`: `requests[].params` are Messages requests.
    CreateBatch,
    /// OpenAI chat completions (paths from `masking.openai_chat_paths`).
    OpenAiChat,
    Models,
    /// Anything else: every string masked and searched all the same.
    Other,
}

/// A path the gateway will not route: it could be read differently upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathError(pub &'static str);

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the request path {}", self.0)
    }
}

/// The path without its query, checked to be in canonical form: no empty, `.` or `..`
/// segments, no trailing slash, no percent-encoding, backslash or fragment, printable
/// ASCII only. Anything else is refused rather than normalised, because the upstream's
/// normalisation may differ from ours.
pub fn canonical_path(path: &str) -> Result<&str, PathError> {
    let bare = path.split_once('?').map_or(path, |(p, _)| p);
    if !bare.starts_with('/') {
        return Err(PathError("must start with /"));
    }
    if bare.bytes().any(|b| !(0x21..0x7f).contains(&b) || matches!(b, b'%' | b'\\' | b'#')) {
        return Err(PathError("must be plain ASCII without percent-encoding, backslashes or fragments"));
    }
    if bare.len() > 1 && bare.ends_with('/') {
        return Err(PathError("must not end with /"));
    }
    if bare.len() > 1 && bare[1..].split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(PathError("must not have empty, `.` or `..` segments"));
    }
    Ok(bare)
}

/// The handling for a canonical path (see [`canonical_path`]).
pub fn endpoint(canonical: &str, openai_chat_paths: &[String]) -> Endpoint {
    let p = canonical.to_ascii_lowercase();
    if openai_chat_paths.iter().any(|o| o.eq_ignore_ascii_case(&p)) {
        return Endpoint::OpenAiChat;
    }
    match p.as_str() {
        "/v1/messages" => Endpoint::Messages,
        "/v1/messages/count_tokens" => Endpoint::CountTokens,
        "/v1/messages/batches" => Endpoint::CreateBatch,
        _ if p == "/v1/models" || p.starts_with("/v1/models/") => Endpoint::Models,
        _ => Endpoint::Other,
    }
}

/// One model request inside a body: the top level of a Messages or chat request, or one
/// `requests[].params` of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ask {
    pub model: Option<String>,
    pub max_tokens: Option<u64>,
}

/// Why a request body is refused (400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRefusal {
    Json(JsonError),
    /// A field the policy reads has a type the API does not accept.
    Field { path: String, what: &'static str },
}

impl fmt::Display for BodyRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyRefusal::Json(e) => write!(f, "{e}"),
            BodyRefusal::Field { path, what } => write!(f, "`{path}` {what}"),
        }
    }
}

/// Strings that are opaque data, left as they are: a regex cannot read base64 images or
/// PDFs, and thinking signatures, redacted thinking and encrypted search results must come
/// back byte for byte or the API refuses the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opaque {
    Request,
    Response(ThinkingMode),
}

impl Opaque {
    fn covers(self, doc: &Doc, leaf: &Leaf) -> bool {
        if leaf.kind != LeafKind::Str {
            return false;
        }
        let Some(key) = doc.key_of(leaf.slot) else { return false };
        let kind = doc.type_of(leaf.parent);
        let kind = kind.as_deref();
        match (key.as_ref(), kind) {
            ("signature", Some("thinking")) => true,
            ("data", Some("redacted_thinking" | "base64")) => true,
            ("encrypted_content" | "encrypted_index", _) => matches!(self, Opaque::Response(_)),
            ("thinking", Some("thinking")) => self == Opaque::Response(ThinkingMode::Pass),
            _ => false,
        }
    }
}

/// A request body read once: its facts, and every text it would send (decoded).
#[derive(Debug)]
pub struct RequestBody<'a> {
    doc: Doc<'a>,
    /// The model requests it makes (empty for shapes without one).
    pub asks: Vec<Ask>,
    /// (leaf index, decoded text) of every string and key that is not opaque.
    texts: Vec<(usize, Cow<'a, str>)>,
}

/// A masked body and what was masked in it.
pub use crate::anthropic::MaskedBody;

impl<'a> RequestBody<'a> {
    pub fn read(bytes: &'a [u8], endpoint: Endpoint) -> Result<RequestBody<'a>, BodyRefusal> {
        let doc = Doc::parse(bytes).map_err(BodyRefusal::Json)?;
        let mut asks = Vec::new();
        let facts_at: &[&str] = match endpoint {
            Endpoint::Messages | Endpoint::CountTokens => &["model", "max_tokens"],
            Endpoint::OpenAiChat => &["model", "max_tokens", "max_completion_tokens"],
            Endpoint::CreateBatch => &["requests.*.params.model", "requests.*.params.max_tokens"],
            Endpoint::Models | Endpoint::Other => &[],
        };
        if !facts_at.is_empty() {
            read_asks(&doc, facts_at, &mut asks)?;
        }
        let texts = doc
            .leaves
            .iter()
            .enumerate()
            .filter(|(_, l)| matches!(l.kind, LeafKind::Str | LeafKind::Key) && !Opaque::Request.covers(&doc, l))
            .map(|(i, l)| (i, doc.string(l)))
            .collect();
        Ok(RequestBody { doc, asks, texts })
    }

    /// Every text the request would send, for deny and approval rules.
    pub fn texts(&self) -> impl Iterator<Item = &str> {
        self.texts.iter().map(|(_, t)| t.as_ref())
    }

    /// What the policy reads of it.
    pub fn facts(&self) -> crate::policy::RequestFacts<'_> {
        crate::policy::RequestFacts { asks: self.asks.clone(), texts: self.texts().collect() }
    }

    /// The body with every secret masked.
    pub fn mask(&self, rules: &RuleSet) -> MaskedBody {
        mask_texts(&self.doc, &self.texts, rules)
    }
}

fn mask_texts(doc: &Doc, texts: &[(usize, Cow<str>)], rules: &RuleSet) -> MaskedBody {
    let mut tally = Tally::default();
    let mut at = 0;
    let out = doc.rewrite(|i, _| {
        while at < texts.len() && texts[at].0 < i {
            at += 1;
        }
        let (j, text) = texts.get(at)?;
        if *j != i {
            return None;
        }
        let m = rules.mask(text);
        if m.hits.is_empty() {
            return None;
        }
        tally.add(&m.hits);
        Some(encode_string(&m.text))
    });
    MaskedBody { bytes: out.map(String::into_bytes), hits: tally.in_order(rules) }
}

/// Collects the asks: `fields` are dotted paths with `*` for any array index; values at the
/// same container are one ask.
fn read_asks(doc: &Doc, fields: &[&str], asks: &mut Vec<Ask>) -> Result<(), BodyRefusal> {
    let mut by_container: Vec<(Option<u32>, Ask)> = Vec::new();
    let top_level = !fields[0].contains('.');
    if top_level {
        by_container.push((Some(0), Ask::default()));
    }
    for leaf in &doc.leaves {
        if matches!(leaf.kind, LeafKind::Key) {
            continue;
        }
        let Some(key) = doc.key_of(leaf.slot) else { continue };
        if !fields.iter().any(|f| f.rsplit('.').next() == Some(key.as_ref())) {
            continue;
        }
        let path = doc.path(leaf.parent, leaf.slot);
        let Some(field) = fields.iter().find(|f| path_is(&path, f)) else { continue };
        let name = field.rsplit('.').next().unwrap_or(field);
        let shown = || field.replace('*', "n");
        let slot = match by_container.iter().position(|(c, _)| *c == leaf.parent) {
            Some(i) => i,
            None => {
                by_container.push((leaf.parent, Ask::default()));
                by_container.len() - 1
            }
        };
        let ask = &mut by_container[slot].1;
        match (name, leaf.kind) {
            ("model", LeafKind::Str) => ask.model = Some(doc.string(leaf).into_owned()),
            ("model", _) => return Err(BodyRefusal::Field { path: shown(), what: "must be a string" }),
            (_, LeafKind::Number) => ask.max_tokens = Some(whole_number(doc.raw(leaf)).ok_or(BodyRefusal::Field {
                path: shown(),
                what: "must be a non-negative whole number",
            })?),
            _ => return Err(BodyRefusal::Field { path: shown(), what: "must be a number" }),
        }
    }
    // An object or array where a fact belongs: the API refuses it, and it must not slip past
    // the limits meanwhile.
    for c in &doc.containers {
        let path = match doc.key_of(c.slot) {
            Some(key) if fields.iter().any(|f| f.rsplit('.').next() == Some(key.as_ref())) => doc.path(c.parent, c.slot),
            _ => continue,
        };
        if let Some(field) = fields.iter().find(|f| path_is(&path, f)) {
            return Err(BodyRefusal::Field { path: field.replace('*', "n"), what: "must be a string or number" });
        }
    }
    asks.extend(by_container.into_iter().map(|(_, a)| a).filter(|a| top_level || *a != Ask::default()));
    Ok(())
}

/// A JSON number as a whole non-negative count: `1e3` and `1000.0` are 1000 (the API reads
/// them so); fractions and negatives are refused.
fn whole_number(raw: &str) -> Option<u64> {
    if let Ok(n) = raw.parse::<u64>() {
        return Some(n);
    }
    let f: f64 = raw.parse().ok()?;
    if !f.is_finite() || f < 0.0 || f.fract() != 0.0 {
        return None;
    }
    Some(if f >= u64::MAX as f64 { u64::MAX } else { f as u64 })
}

fn path_is(path: &[Step], dotted: &str) -> bool {
    let parts: Vec<&str> = dotted.split('.').collect();
    parts.len() == path.len()
        && parts.iter().zip(path).all(|(want, step)| match step {
            Step::Key(k) => *want == k.as_ref(),
            Step::Index(_) => *want == "*",
        })
}

/// Why a buffered response cannot be passed on (the client gets a 502 instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseRefusal(pub String);

/// Masks a complete, uncompressed response body of any shape: JSON has every string masked
/// (opaque data aside); JSON Lines (batch results) line by line; other UTF-8 text (error
/// pages) as text. Bytes that are not UTF-8 cannot be read and are refused.
pub fn mask_response(rules: &RuleSet, body: &[u8], thinking: ThinkingMode) -> Result<MaskedBody, ResponseRefusal> {
    match Doc::parse(body) {
        Ok(doc) => return Ok(mask_response_doc(&doc, rules, thinking)),
        Err(JsonError::NotUtf8) => return Err(ResponseRefusal("the upstream response is not UTF-8".into())),
        Err(_) => {}
    }
    let text = std::str::from_utf8(body).map_err(|_| ResponseRefusal("the upstream response is not UTF-8".into()))?;
    let mut tally = Tally::default();
    let mut out = String::with_capacity(text.len());
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        let (content, end) = match line.strip_suffix('\n') {
            Some(c) => (c.strip_suffix('\r').unwrap_or(c), &line[c.strip_suffix('\r').unwrap_or(c).len()..]),
            None => (line, ""),
        };
        let masked = match Doc::parse(content.as_bytes()) {
            Ok(doc) if doc.containers.first().is_some() => {
                let m = mask_response_doc(&doc, rules, thinking);
                tally.add(&m.hits);
                m.bytes.map(|b| String::from_utf8(b).unwrap_or_default())
            }
            _ => {
                let m = rules.mask(content);
                tally.add(&m.hits);
                match m.text {
                    Cow::Owned(t) => Some(t),
                    Cow::Borrowed(_) => None,
                }
            }
        };
        match masked {
            Some(m) => {
                changed = true;
                out.push_str(&m);
            }
            None => out.push_str(content),
        }
        out.push_str(end);
    }
    Ok(MaskedBody { bytes: changed.then(|| out.into_bytes()), hits: tally.in_order(rules) })
}

fn mask_response_doc(doc: &Doc, rules: &RuleSet, thinking: ThinkingMode) -> MaskedBody {
    let opaque = Opaque::Response(thinking);
    let texts: Vec<(usize, Cow<str>)> = doc
        .leaves
        .iter()
        .enumerate()
        .filter(|(_, l)| matches!(l.kind, LeafKind::Str | LeafKind::Key) && !opaque.covers(doc, l))
        .map(|(i, l)| (i, doc.string(l)))
        .collect();
    mask_texts(doc, &texts, rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::expand_example;
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    fn rules() -> &'static RuleSet {
        static SET: OnceLock<RuleSet> = OnceLock::new();
        SET.get_or_init(|| RuleSet::builtin().expect("built-in rules compile"))
    }

    fn aws() -> String {
        expand_example("AKIA{{fake:upperb32:16}}")
    }

    fn masked_request(body: &Value, endpoint: Endpoint) -> String {
        let bytes = serde_json::to_vec(body).unwrap();
        let r = RequestBody::read(&bytes, endpoint).unwrap();
        String::from_utf8(r.mask(rules()).bytes.unwrap_or(bytes)).unwrap()
    }

    #[test]
    fn non_canonical_paths_are_refused_and_case_does_not_change_the_handling() {
        for bad in ["//v1/messages", "/v1//messages", "/v1/./messages", "/v1/x/../messages", "/v1/messages/", "/v1/%6dessages", "/v1\\messages", "v1/messages", "/v1/messages/."] {
            assert!(canonical_path(bad).is_err(), "{bad}");
        }
        assert_eq!(canonical_path("/v1/messages?beta=true"), Ok("/v1/messages"));
        assert_eq!(canonical_path("/"), Ok("/"));
        let chat = vec!["/v1/chat/completions".to_string()];
        assert_eq!(endpoint("/V1/Messages", &chat), Endpoint::Messages);
        assert_eq!(endpoint("/v1/messages/batches", &chat), Endpoint::CreateBatch);
        assert_eq!(endpoint("/v1/Chat/Completions", &chat), Endpoint::OpenAiChat);
        assert_eq!(endpoint("/v1/models/claude-x", &chat), Endpoint::Models);
        assert_eq!(endpoint("/v1/files", &chat), Endpoint::Other);
    }

    #[test]
    fn every_field_of_a_request_is_masked_not_only_messages() {
        let key = aws();
        let body = json!({
            "model": "m", "max_tokens": 5,
            "tools": [{"name": "t", "description": format!("uses {key}"), "input_schema": {"type": "object", "properties": {"k": {"default": key}}}}],
            "metadata": {"user_id": key},
            "stop_sequences": [key],
            "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": format!("id {key}")}},
                {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": key}]}},
                {"type": "search_result", "source": "s", "title": key, "content": [{"type": "text", "text": key}]},
                {"type": "future_block", "anything": {"deep": [key]}}
            ]}]
        });
        let out = masked_request(&body, Endpoint::Messages);
        assert!(!out.contains(&key), "{out}");
        assert_eq!(out.matches("[REDACTED:").count(), 9, "{out}");
    }

    #[test]
    fn batch_requests_are_masked_and_each_one_is_an_ask() {
        let key = aws();
        let body = json!({"requests": [
            {"custom_id": "a", "params": {"model": "claude-opus-4", "max_tokens": 100, "messages": [{"role": "user", "content": key}]}},
            {"custom_id": "b", "params": {"model": "claude-haiku-4", "max_tokens": 1e3, "messages": []}}
        ]});
        let bytes = serde_json::to_vec(&body).unwrap();
        let r = RequestBody::read(&bytes, Endpoint::CreateBatch).unwrap();
        assert_eq!(
            r.asks,
            [
                Ask { model: Some("claude-opus-4".into()), max_tokens: Some(100) },
                Ask { model: Some("claude-haiku-4".into()), max_tokens: Some(1000) }
            ]
        );
        assert!(!String::from_utf8(r.mask(rules()).bytes.unwrap()).unwrap().contains(&key));
    }

    #[test]
    fn policy_fields_of_the_wrong_type_are_refused() {
        let read = |v: Value| RequestBody::read(&serde_json::to_vec(&v).unwrap(), Endpoint::Messages).map(|r| r.asks);
        assert!(matches!(read(json!({"model": ["claude-opus"], "max_tokens": 1})), Err(BodyRefusal::Field { .. })));
        assert!(matches!(read(json!({"model": "m", "max_tokens": 1.5})), Err(BodyRefusal::Field { .. })));
        assert!(matches!(read(json!({"model": "m", "max_tokens": -1})), Err(BodyRefusal::Field { .. })));
        assert_eq!(read(json!({"model": "m", "max_tokens": 2e6})).unwrap()[0].max_tokens, Some(2_000_000));
        assert_eq!(read(json!({"messages": []})).unwrap(), [Ask::default()]);
    }

    #[test]
    fn opaque_data_is_left_alone_and_everything_beside_it_is_masked() {
        let key = aws();
        let body = json!({"model": "m", "messages": [{"role": "assistant", "content": [
            {"type": "thinking", "thinking": format!("the key is {key}"), "signature": format!("sig{key}")},
            {"type": "redacted_thinking", "data": format!("x{key}")},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": format!("iVBOR{key}")}}
        ]}]});
        let out = masked_request(&body, Endpoint::Messages);
        assert!(out.contains("the key is [REDACTED:"), "thinking text sent back is masked: {out}");
        assert!(out.contains(&format!("sig{key}")) && out.contains(&format!("x{key}")) && out.contains(&format!("iVBOR{key}")));
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let e = RequestBody::read(br#"{"model":"a","messages":[],"model":"b"}"#, Endpoint::Messages).unwrap_err();
        assert!(matches!(e, BodyRefusal::Json(JsonError::DuplicateKey { .. })));
    }

    #[test]
    fn responses_of_any_shape_have_every_string_masked() {
        let key = aws();
        let cases = [
            json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": key}}]}),
            json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("bad value {key}")}}),
            json!({"content": [
                {"type": "web_search_tool_result", "tool_use_id": "x", "content": [{"type": "web_search_result", "title": key, "url": "https://e.x", "encrypted_content": "opaque"}]},
                {"type": "text", "text": "see", "citations": [{"type": "web_search_result_location", "cited_text": key, "title": "t", "encrypted_index": "opaque"}]}
            ]}),
        ];
        for body in cases {
            let bytes = serde_json::to_vec(&body).unwrap();
            let m = mask_response(rules(), &bytes, ThinkingMode::Mask).unwrap();
            let out = String::from_utf8(m.bytes.expect("masked")).unwrap();
            assert!(!out.contains(&key), "{out}");
            assert!(!out.contains("opaque") || out.matches("opaque").count() == body.to_string().matches("opaque").count());
        }
    }

    #[test]
    fn json_lines_and_text_responses_are_masked_line_by_line() {
        let key = aws();
        let body = format!(
            "{}\n{}\nnot json {key}\n",
            json!({"custom_id": "a", "result": {"message": {"content": [{"type": "text", "text": key}]}}}),
            json!({"custom_id": "b"})
        );
        let m = mask_response(rules(), body.as_bytes(), ThinkingMode::Mask).unwrap();
        let out = String::from_utf8(m.bytes.unwrap()).unwrap();
        assert!(!out.contains(&key));
        let first: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
        assert!(first["result"]["message"]["content"][0]["text"].as_str().unwrap().starts_with("[REDACTED:"));
        assert!(mask_response(rules(), &[0xff, 0xfe], ThinkingMode::Mask).is_err());
    }

    #[test]
    fn thinking_in_a_response_follows_the_mode() {
        let key = aws();
        let body = serde_json::to_vec(&json!({"content": [{"type": "thinking", "thinking": key, "signature": "s"}]})).unwrap();
        assert!(mask_response(rules(), &body, ThinkingMode::Pass).unwrap().bytes.is_none());
        assert!(mask_response(rules(), &body, ThinkingMode::Mask).unwrap().bytes.is_some());
    }
}
