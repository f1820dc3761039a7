//! JSON string encoding and decoding shared by the body and stream maskers, the walker that
//! rewrites strings of an event in place, and the whole-body entry points (which read bodies
//! through [`crate::inspect`]: every string of them is masked).
//!
//! Output is the input with only the masked strings re-encoded: every other byte (key order,
//! whitespace, escapes, unknown keys and block types) stays as it was. So the result is
//! deterministic, prompt caching sees a stable history, and masking the output again changes
//! nothing (no placeholder matches a rule).
//!
//! Output is the input with only the masked strings re-encoded: every other byte (key order,
//! whitespace, escapes) stays as it was, so the result is deterministic and masking it again
//! changes nothing (no placeholder matches a rule).

use crate::anthropic_stream::ThinkingMode;
use crate::rules::RuleSet;
use std::collections::BTreeMap;
use std::fmt;

/// A masked body and what was masked in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedBody {
    /// The new body; `None` when nothing was masked (forward the original bytes).
    pub bytes: Option<Vec<u8>>,
    /// Masked items by rule id, in rule order.
    pub hits: Vec<(String, usize)>,
}

/// Why a body could not be masked; the filter refuses it rather than forward it unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BodyError {
    /// The body is not UTF-8 JSON (compressed or truncated bodies end up here too).
    InvalidJson { reason: String },
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::InvalidJson { reason } => write!(f, "body is not valid json: {reason}"),
        }
    }
}

impl std::error::Error for BodyError {}

/// Masks a Messages API (or count_tokens) request body: every string, as
/// [`crate::inspect::RequestBody`] reads it (duplicate keys and malformed JSON are errors).
pub fn mask_request(rules: &RuleSet, body: &[u8]) -> Result<MaskedBody, BodyError> {
    let read = crate::inspect::RequestBody::read(body, crate::inspect::Endpoint::Messages)
        .map_err(|e| BodyError::InvalidJson { reason: e.to_string() })?;
    Ok(read.mask(rules))
}

/// Masks a complete response body of any shape (see [`crate::inspect::mask_response`]).
pub fn mask_response(rules: &RuleSet, body: &[u8], thinking: ThinkingMode) -> Result<MaskedBody, BodyError> {
    crate::inspect::mask_response(rules, body, thinking).map_err(|e| BodyError::InvalidJson { reason: e.0 })
}

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum P {
    Key(String),
    Index(usize),
}

/// Counts of masked items by rule id, merged from several maskers.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tally(BTreeMap<String, usize>);

impl Tally {
    pub(crate) fn add(&mut self, hits: &[(String, usize)]) {
        for (id, n) in hits {
            *self.0.entry(id.clone()).or_default() += n;
        }
    }

    /// The counts in rule order (the order every other hit list uses).
    pub(crate) fn in_order(&self, rules: &RuleSet) -> Vec<(String, usize)> {
        rules.ids().filter_map(|id| self.0.get(id).map(|&n| (id.to_string(), n))).collect()
    }
}

/// A JSON string token (with quotes) for `s`, escaped the way serde_json escapes.
pub(crate) fn encode_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    encode_into(s, &mut out);
    out.push('"');
    out
}

/// Appends `s` escaped as JSON string content (no quotes): `"`, `\` and control characters
/// only, as serde_json does, so pieces encoded separately concatenate to the whole encoded.
pub(crate) fn encode_into(s: &str, out: &mut impl TextSink) {
    // Every byte to escape is ASCII, so runs between them are whole characters: copied as
    // they are, one slice at a time.
    let bytes = s.as_bytes();
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !ESCAPED[b as usize] {
            continue;
        }
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0..=0x1f => "",
            _ => continue,
        };
        out.put(&s[run..i]);
        if escaped.is_empty() {
            out.put(&format!("\\u{:04x}", b));
        } else {
            out.put(escaped);
        }
        run = i + 1;
    }
    out.put(&s[run..]);
}

/// The bytes [`encode_into`] escapes: `"`, `\\` and the control characters.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// Where [`encode_into`] writes: a `String`, or the bytes of an event being written.
pub(crate) trait TextSink {
    fn put(&mut self, s: &str);
}

impl TextSink for String {
    fn put(&mut self, s: &str) {
        self.push_str(s);
    }
}

impl TextSink for Vec<u8> {
    fn put(&mut self, s: &str) {
        self.extend_from_slice(s.as_bytes());
    }
}

/// Appends the content of a JSON string token (quotes included), decoded as serde_json would,
/// to `out`, for the common cases: false for anything it does not decode itself (a `\\u`
/// escape of a surrogate, a control character, a bad escape), which the caller then hands to
/// serde_json; `out` then holds a partial result.
pub(crate) fn decode_string_token(token: &str, out: &mut String) -> bool {
    decode_into(token, out).is_some()
}

fn decode_into(token: &str, out: &mut String) -> Option<()> {
    let inner = token.strip_prefix('"')?.strip_suffix('"')?;
    let bytes = inner.as_bytes();
    let mut run = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => {
                out.push_str(&inner[run..i]);
                let c = match *bytes.get(i + 1)? {
                    b'"' => '"',
                    b'\\' => '\\',
                    b'/' => '/',
                    b'b' => '\u{8}',
                    b'f' => '\u{c}',
                    b'n' => '\n',
                    b'r' => '\r',
                    b't' => '\t',
                    b'u' => {
                        let hex = inner.get(i + 2..i + 6)?;
                        if !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                            return None;
                        }
                        i += 4;
                        char::from_u32(u32::from_str_radix(hex, 16).ok()?)?
                    }
                    _ => return None,
                };
                out.push(c);
                i += 2;
                run = i;
            }
            b'"' | 0..=0x1f => return None,
            _ => i += 1,
        }
    }
    out.push_str(&inner[run..]);
    Some(())
}

/// Replaces strings of the JSON text `json`, keeping every other byte. `f` gets the path of
/// each string (for an object key: the path of its value), whether it is a key, and its raw
/// token (quotes included), and returns the replacement token, if any. `None` when nothing
/// was replaced.
///
/// `json` must already have been checked to be valid JSON (by serde_json, whose nesting limit
/// also bounds the recursion here); malformed input gives an error, never a panic.
pub(crate) fn rewrite_strings(
    json: &str,
    f: impl FnMut(&[P], bool, &str) -> Result<Option<String>, String>,
) -> Result<Option<String>, String> {
    let mut w = Walker { s: json, pos: 0, copied: 0, out: None, path: Vec::new(), f };
    w.value()?;
    Ok(w.out.map(|mut out| {
        out.push_str(&json[w.copied..]);
        out
    }))
}

struct Walker<'a, F> {
    s: &'a str,
    pos: usize,
    /// `s[..copied]` is already in `out`.
    copied: usize,
    out: Option<String>,
    path: Vec<P>,
    f: F,
}

impl<F: FnMut(&[P], bool, &str) -> Result<Option<String>, String>> Walker<'_, F> {
    fn peek(&mut self) -> Result<u8, String> {
        let b = self.s.as_bytes();
        while self.pos < b.len() && matches!(b[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
        b.get(self.pos).copied().ok_or_else(|| "unexpected end of json".to_string())
    }

    fn expect(&mut self, c: u8) -> Result<(), String> {
        if self.peek()? != c {
            return Err(format!("expected {:?} at byte {}", c as char, self.pos));
        }
        self.pos += 1;
        Ok(())
    }

    fn value(&mut self) -> Result<(), String> {
        match self.peek()? {
            b'{' => {
                self.pos += 1;
                if self.peek()? == b'}' {
                    self.pos += 1;
                    return Ok(());
                }
                loop {
                    let (a, b) = self.string()?;
                    let key = &self.s[a..b];
                    let key = if key.contains('\\') {
                        serde_json::from_str(key).map_err(|e| e.to_string())?
                    } else {
                        key[1..key.len() - 1].to_string()
                    };
                    self.expect(b':')?;
                    self.path.push(P::Key(key));
                    self.replace(a, b, true)?;
                    self.value()?;
                    self.path.pop();
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b'}' => break,
                        c => return Err(format!("unexpected {:?} at byte {}", c as char, self.pos)),
                    }
                }
                self.pos += 1;
            }
            b'[' => {
                self.pos += 1;
                if self.peek()? == b']' {
                    self.pos += 1;
                    return Ok(());
                }
                let mut i = 0;
                loop {
                    self.path.push(P::Index(i));
                    self.value()?;
                    self.path.pop();
                    i += 1;
                    match self.peek()? {
                        b',' => self.pos += 1,
                        b']' => break,
                        c => return Err(format!("unexpected {:?} at byte {}", c as char, self.pos)),
                    }
                }
                self.pos += 1;
            }
            b'"' => {
                let (a, b) = self.string()?;
                self.replace(a, b, false)?;
            }
            _ => {
                // A number, `true`, `false` or `null`: runs to the next delimiter.
                let b = self.s.as_bytes();
                while self.pos < b.len() && !matches!(b[self.pos], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                    self.pos += 1;
                }
            }
        }
        Ok(())
    }

    /// Offers the string token `s[a..b]` to `f` and splices in its replacement.
    fn replace(&mut self, a: usize, b: usize, is_key: bool) -> Result<(), String> {
        if let Some(new) = (self.f)(&self.path, is_key, &self.s[a..b])? {
            let out = self.out.get_or_insert_with(|| String::with_capacity(self.s.len()));
            out.push_str(&self.s[self.copied..a]);
            out.push_str(&new);
            self.copied = b;
        }
        Ok(())
    }

    /// Skips a string token; returns its byte range, quotes included.
    fn string(&mut self) -> Result<(usize, usize), String> {
        self.expect(b'"')?;
        let start = self.pos - 1;
        let b = self.s.as_bytes();
        while self.pos < b.len() {
            match b[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok((start, self.pos));
                }
                b'\\' => self.pos += 2,
                _ => self.pos += 1,
            }
        }
        Err("unterminated string".to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::expand_example;
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    fn builtin() -> &'static RuleSet {
        static SET: OnceLock<RuleSet> = OnceLock::new();
        SET.get_or_init(|| RuleSet::builtin().expect("built-in rules compile"))
    }

    fn aws() -> String {
        expand_example("AKIA{{fake:upperb32:16}}")
    }

    fn ant() -> String {
        expand_example("sk-ant-api03-{{fake:b64url:93}}AA")
    }

    fn masked(body: &[u8]) -> Value {
        let out = mask_request(builtin(), body).unwrap();
        serde_json::from_slice(&out.bytes.expect("something masked")).unwrap()
    }

    #[test]
    fn secret_in_a_tool_result_is_masked() {
        let body = json!({
            "model": "m",
            "messages": [
                {"role": "user", "content": "read .env"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Read", "input": {"file_path": ".env"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": format!("AWS_ACCESS_KEY_ID={}\n", aws())},
                    {"type": "tool_result", "tool_use_id": "t2", "content": [{"type": "text", "text": format!("key {}", ant())}]},
                ]},
            ],
        });
        let out = mask_request(builtin(), body.to_string().as_bytes()).unwrap();
        let text = String::from_utf8(out.bytes.clone().unwrap()).unwrap();
        assert!(!text.contains(&aws()) && !text.contains(&ant()), "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["messages"][2]["content"][0]["content"], "AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id]\n");
        assert_eq!(v["messages"][2]["content"][1]["content"][0]["text"], "key [REDACTED:anthropic-api-key]");
        assert_eq!(out.hits, vec![("anthropic-api-key".to_string(), 1), ("aws-access-key-id".to_string(), 1)]);
    }

    #[test]
    fn system_text_blocks_string_content_and_mid_conversation_system_messages_are_masked() {
        let body = json!({
            "system": [{"type": "text", "text": "billing"}, {"type": "text", "text": format!("id {}", aws()), "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": format!("mine: {}", aws())},
                {"role": "system", "content": format!("note {}", ant())},
                {"role": "user", "content": [{"type": "text", "text": aws()}]},
            ],
        });
        let v = masked(body.to_string().as_bytes());
        assert_eq!(v["system"][1]["text"], "id [REDACTED:aws-access-key-id]");
        assert_eq!(v["system"][1]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!(v["messages"][0]["content"], "mine: [REDACTED:aws-access-key-id]");
        assert_eq!(v["messages"][1]["content"], "note [REDACTED:anthropic-api-key]");
        assert_eq!(v["messages"][2]["content"][0]["text"], "[REDACTED:aws-access-key-id]");
        let v = masked(json!({"system": format!("s {}", aws()), "messages": []}).to_string().as_bytes());
        assert_eq!(v["system"], "s [REDACTED:aws-access-key-id]");
    }

    #[test]
    fn every_string_of_tool_use_input_is_masked_at_any_depth() {
        let body = json!({"messages": [{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "Bash", "input": {
            "command": format!("export K={}", ant()),
            "env": [{"name": "A", "value": aws()}], "timeout": 5, "flag": true,
        }}]}]});
        let v = masked(body.to_string().as_bytes());
        let input = &v["messages"][0]["content"][0]["input"];
        assert_eq!(input["command"], "export K=[REDACTED:anthropic-api-key]");
        assert_eq!(input["env"][0], json!({"name": "A", "value": "[REDACTED:aws-access-key-id]"}));
        assert_eq!((input["timeout"].clone(), input["flag"].clone()), (json!(5), json!(true)));
    }

    #[test]
    fn a_secret_used_as_a_key_in_tool_input_is_masked() {
        let body = json!({"messages": [{"role": "assistant", "content": [
            {"type": "tool_use", "id": "t", "name": "Write", "input": {"map": {aws(): "v"}}},
            {"type": "text", "text": "ok", "meta": {aws(): 1}},
        ]}]});
        let out = String::from_utf8(mask_request(builtin(), body.to_string().as_bytes()).unwrap().bytes.unwrap()).unwrap();
        assert!(out.contains(r#"{"map":{"[REDACTED:aws-access-key-id]":"v"}}"#), "{out}");
        // Keys anywhere are text too: a secret cannot ride in a field name.
        assert!(out.contains(r#"{"[REDACTED:aws-access-key-id]":1}"#), "{out}");
    }

    #[test]
    fn unknown_keys_and_block_types_are_masked_too_and_every_other_byte_survives() {
        let secret = aws();
        let body = format!(
            concat!(
                "{{ \"zeta\" : \"{s}\",\n  \"model\":\"m\", \"messages\": [ {{\"role\":\"user\",\"content\":[",
                "{{\"type\":\"future_block\",\"text\":\"{s}\"}}, {{\"text\":\"\\u0041 {s}\", \"type\":\"text\", \"x\": [1, 2.5e3, null]}},",
                "{{\"type\":\"thinking\",\"thinking\":\"{s}\",\"signature\":\"sig\"}}]}}],",
                "\"metadata\": {{\"user_id\": \"{s}\\/\"}} }}"
            ),
            s = secret
        );
        let out = String::from_utf8(mask_request(builtin(), body.as_bytes()).unwrap().bytes.unwrap()).unwrap();
        let placeholder = "[REDACTED:aws-access-key-id]";
        let expected = body
            .replace(&format!("\"\\u0041 {secret}\""), &format!("\"A {placeholder}\""))
            .replace(&format!("\"{secret}\\/\""), &format!("\"{placeholder}/\""))
            .replace(&format!("\"{secret}\""), &format!("\"{placeholder}\""));
        assert_eq!(out, expected);
    }

    #[test]
    fn nothing_to_mask_gives_none() {
        let body = json!({"model": "m", "system": "be brief", "messages": [{"role": "user", "content": "hello token"}]});
        let out = mask_request(builtin(), body.to_string().as_bytes()).unwrap();
        assert_eq!(out, MaskedBody { bytes: None, hits: vec![] });
        assert_eq!(mask_request(builtin(), b"[1,2]").unwrap().bytes, None);
    }

    #[test]
    fn masking_is_idempotent_and_deterministic() {
        let messages = json!([{"role": "user", "content": [
            {"type": "text", "text": format!("{} and {}", aws(), ant())},
            {"type": "tool_result", "content": [{"type": "text", "text": format!("x\n{}\n", aws())}]},
        ]}]);
        let body = format!("{{\"b\":1,\"a\":2,\"messages\":{messages}}}");
        let once = mask_request(builtin(), body.as_bytes()).unwrap().bytes.unwrap();
        assert_eq!(mask_request(builtin(), body.as_bytes()).unwrap().bytes.unwrap(), once);
        assert!(String::from_utf8_lossy(&once).starts_with("{\"b\":1,\"a\":2,"), "key order kept");
        assert_eq!(mask_request(builtin(), &once).unwrap(), MaskedBody { bytes: None, hits: vec![] });
    }

    #[test]
    fn invalid_json_is_an_error() {
        for body in [&b"{\"messages\": ["[..], b"", b"\x1f\x8b\x08\x00", b"{\"a\":1} x"] {
            assert!(matches!(mask_request(builtin(), body), Err(BodyError::InvalidJson { .. })), "{body:?}");
        }
        // A response that is not JSON is masked as text; one that is not even UTF-8 is refused.
        assert!(mask_response(builtin(), b"\x1f\x8b\x08\x00", ThinkingMode::Mask).is_err());
    }

    #[test]
    fn response_text_tool_input_and_thinking_are_masked_per_mode() {
        let body = json!({"id": "msg", "type": "message", "role": "assistant", "content": [
            {"type": "thinking", "thinking": format!("the key is {}", aws()), "signature": "sig"},
            {"type": "text", "text": format!("use {}", ant())},
            {"type": "tool_use", "id": "t", "name": "Bash", "input": {"command": format!("echo {}", aws())}},
        ], "stop_reason": "tool_use"})
        .to_string();
        let out = mask_response(builtin(), body.as_bytes(), ThinkingMode::Mask).unwrap();
        let v: Value = serde_json::from_slice(&out.bytes.unwrap()).unwrap();
        assert_eq!(v["content"][0]["thinking"], "the key is [REDACTED:aws-access-key-id]");
        assert_eq!(v["content"][1]["text"], "use [REDACTED:anthropic-api-key]");
        assert_eq!(v["content"][2]["input"]["command"], "echo [REDACTED:aws-access-key-id]");
        assert_eq!(out.hits, vec![("anthropic-api-key".to_string(), 1), ("aws-access-key-id".to_string(), 2)]);

        let out = mask_response(builtin(), body.as_bytes(), ThinkingMode::Pass).unwrap();
        let v: Value = serde_json::from_slice(&out.bytes.unwrap()).unwrap();
        assert_eq!(v["content"][0]["thinking"], format!("the key is {}", aws()));
        assert_eq!(v["content"][0]["signature"], "sig");
    }

    #[test]
    fn string_tokens_decode_as_serde_json_decodes_them_or_not_at_all() {
        let all_escapes = serde_json::to_string(&(0u8..0x80).map(char::from).collect::<String>()).unwrap();
        for token in [
            r#""plain é 🎉""#,
            r#""q\" b\\ s\/ \b\f\n\r\t \u00e9 \u20AC end""#,
            &all_escapes,
            r#""""#,
        ] {
            let mut out = String::new();
            assert!(decode_string_token(token, &mut out), "{token}");
            assert_eq!(out, serde_json::from_str::<String>(token).unwrap(), "{token}");
        }
        // Surrogates, bad escapes, raw control characters, stray quotes: left to serde_json.
        for token in [r#""\ud83c\udf89""#, r#""\x""#, "\"a\u{1}\"", r#""a"b""#, r#""\u12""#, r#""\""#, r#""\u12G4""#] {
            assert!(!decode_string_token(token, &mut String::new()), "{token}");
        }
    }

    #[test]
    fn string_encoding_round_trips_through_serde() {
        let controls: String = (0u8..0x20).chain([0x7f]).map(char::from).collect();
        for s in ["q\" b\\ n\n t\t c\u{1} é 🎉 /", &controls, "plain", ""] {
            assert_eq!(serde_json::from_str::<String>(&encode_string(s)).unwrap(), s);
            assert_eq!(encode_string(s), serde_json::to_string(s).unwrap());
        }
    }
}
