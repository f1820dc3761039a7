//! Masking of a streamed Messages API response (SSE): bytes of the upstream stream in, cut
//! anywhere, masked bytes for the client out. One job: mask the text of each content block;
//! events are never reordered, merged or invented except to release held text.
//!
//! How: [`SseFramer`] yields events; per content block index, `text_delta` text,
//! `thinking_delta` thinking (under [`ThinkingMode::Mask`]) and the strings inside
//! `input_json_delta` tool input each go through a [`StreamMasker`]. Tool input arrives as
//! fragments of JSON text; a small incremental lexer decodes the strings in it (escapes and
//! surrogate pairs may be split across fragments), masks their content string by string
//! (object keys included) and re-encodes it, while everything outside strings passes as is.
//! A delta whose text comes out unchanged is forwarded byte for byte; a changed one is
//! re-serialised with only its text replaced; one whose text is all held back is dropped (no
//! empty deltas). Held text leaves as one extra delta of the same type and index right
//! before `content_block_stop`, or before `message_stop` / `error` / the end of the stream.
//! All other events (`message_start`, `message_delta`, `ping`, `signature_delta`, `error`,
//! unknown ones) pass byte for byte.
//!
//! Guarantee (tested at every split point, in 1-byte chunks and over random splits): for
//! every way the bytes are cut, each block's reassembled text equals [`RuleSet::mask`] of the
//! whole text, and for tool input every string of the parsed JSON is the masked string.
//!
//! Limits: the output differs from the input whenever the masker holds text, which includes
//! a delta ending in what could be the start of a keyword (held until the next delta).
//! A masked thinking block no longer matches its `signature`: a client that sends it back
//! in a later turn gets a 400 from the API; use [`ThinkingMode::Pass`] where thinking is
//! shown and must be replayed, or have clients omit thinking (`display: "omitted"`).
//! Citations and server tool results (web search, code execution) are not inspected.
//! An event whose data is not JSON, invalid escapes in tool input and a stream that ends
//! inside an event are errors: the caller must fail closed, and the rewriter then refuses
//! further input.

use crate::anthropic::{encode_into, encode_string, rewrite_strings, Tally, P};
use crate::rules::RuleSet;
use crate::sse::{Event, SseFramer};
use crate::stream_mask::StreamMasker;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// What to do with Claude's thinking text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingMode {
    /// Mask it like any other text (the block's signature then no longer matches it).
    #[default]
    Mask,
    /// Forward it unchanged.
    Pass,
}

/// Why a stream cannot be masked; the filter then ends the response instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StreamError {
    /// An event's data is not JSON, or a delta lacks its index or text.
    InvalidEvent { event: Option<String>, reason: String },
    /// Tool input JSON text has an escape that cannot be decoded (`\x`, a lone surrogate).
    InvalidToolInput { index: u64, reason: String },
    /// The stream ended inside an event.
    Truncated,
    /// An earlier call already failed; nothing more is accepted.
    Failed,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::InvalidEvent { event, reason } => {
                write!(f, "invalid sse event {:?}: {reason}", event.as_deref().unwrap_or(""))
            }
            StreamError::InvalidToolInput { index, reason } => {
                write!(f, "invalid tool input json in content block {index}: {reason}")
            }
            StreamError::Truncated => write!(f, "stream ended inside an sse event"),
            StreamError::Failed => write!(f, "stream already failed"),
        }
    }
}

impl std::error::Error for StreamError {}

/// Rewrites one streamed Messages API response.
#[derive(Debug)]
pub struct StreamRewriter {
    rules: Arc<RuleSet>,
    thinking: ThinkingMode,
    framer: SseFramer,
    /// Open content blocks by index.
    blocks: BTreeMap<u64, Block>,
    /// Hits of blocks already closed and of whole `content_block_start` inputs.
    tally: Tally,
    /// Line ending of the last event, used for the deltas that release held text.
    eol: &'static str,
    failed: bool,
}

/// The delta types whose text is masked, and the field that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Thinking,
    Json,
}

impl Kind {
    fn delta_type(self) -> &'static str {
        match self {
            Kind::Text => "text_delta",
            Kind::Thinking => "thinking_delta",
            Kind::Json => "input_json_delta",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Thinking => "thinking",
            Kind::Json => "partial_json",
        }
    }
}

#[derive(Debug, Default)]
struct Block {
    text: Option<StreamMasker>,
    thinking: Option<StreamMasker>,
    json: Option<JsonLexer>,
}

impl StreamRewriter {
    pub fn new(rules: Arc<RuleSet>, thinking: ThinkingMode) -> Self {
        StreamRewriter {
            rules,
            thinking,
            framer: SseFramer::new(),
            blocks: BTreeMap::new(),
            tally: Tally::default(),
            eol: "\n",
            failed: false,
        }
    }

    /// Bytes of the upstream stream in, bytes to send to the client now out.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError> {
        if self.failed {
            return Err(StreamError::Failed);
        }
        let mut out = Vec::new();
        for ev in self.framer.push(chunk) {
            self.event(&ev, &mut out).inspect_err(|_| self.failed = true)?;
        }
        Ok(out)
    }

    /// End of the upstream stream: everything still held, masked.
    pub fn finish(&mut self) -> Result<Vec<u8>, StreamError> {
        if self.failed {
            return Err(StreamError::Failed);
        }
        // The framer returns only an event the stream ended inside of.
        if !self.framer.finish().is_empty() {
            self.failed = true;
            return Err(StreamError::Truncated);
        }
        let mut out = Vec::new();
        self.flush_all(&mut out);
        Ok(out)
    }

    /// Masked items by rule id, in rule order.
    pub fn hits(&self) -> Vec<(String, usize)> {
        let mut tally = self.tally.clone();
        for b in self.blocks.values() {
            b.add_hits(&mut tally);
        }
        tally.in_order(&self.rules)
    }

    fn event(&mut self, ev: &Event, out: &mut Vec<u8>) -> Result<(), StreamError> {
        self.eol = line_ending(&ev.raw);
        let Some(data) = ev.data.as_deref() else {
            out.extend_from_slice(&ev.raw);
            return Ok(());
        };
        let invalid = |reason: String| StreamError::InvalidEvent { event: ev.event.clone(), reason };
        let v: Value = serde_json::from_str(data).map_err(|e| invalid(e.to_string()))?;
        let index = || v.get("index").and_then(Value::as_u64).ok_or_else(|| invalid("no index".into()));
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                let kind = match v.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => Kind::Text,
                    Some("thinking_delta") if self.thinking == ThinkingMode::Mask => Kind::Thinking,
                    Some("input_json_delta") => Kind::Json,
                    _ => {
                        out.extend_from_slice(&ev.raw);
                        return Ok(());
                    }
                };
                let index = index()?;
                let piece = v
                    .pointer(&format!("/delta/{}", kind.field()))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("no {} string", kind.field())))?;
                let new = self.push_text(index, kind, piece)?;
                if new == piece {
                    out.extend_from_slice(&ev.raw);
                } else if !new.is_empty() {
                    let path = [P::Key("delta".into()), P::Key(kind.field().into())];
                    replace_and_write(ev, data, &path, &new, out).map_err(invalid)?;
                }
            }
            Some("content_block_start") => {
                let index = index()?;
                match v.pointer("/content_block/type").and_then(Value::as_str) {
                    Some("text") => self.start_text(ev, data, &v, index, Kind::Text, out)?,
                    Some("thinking") if self.thinking == ThinkingMode::Mask => {
                        self.start_text(ev, data, &v, index, Kind::Thinking, out)?
                    }
                    Some("tool_use" | "server_tool_use") => {
                        // Input is usually `{}` here and streams as deltas; whatever is
                        // already present is complete, so it is masked in one go.
                        let rules = &self.rules;
                        let tally = &mut self.tally;
                        let new = rewrite_strings(data, |path, _, token| {
                            if path.len() < 2 || path[..2] != [P::Key("content_block".into()), P::Key("input".into())] {
                                return Ok(None);
                            }
                            let s: String = serde_json::from_str(token).map_err(|e| e.to_string())?;
                            let m = rules.mask(&s);
                            tally.add(&m.hits);
                            Ok((!m.hits.is_empty()).then(|| encode_string(&m.text)))
                        })
                        .map_err(invalid)?;
                        match new {
                            Some(new) => write_event(ev, &new, out),
                            None => out.extend_from_slice(&ev.raw),
                        }
                    }
                    _ => out.extend_from_slice(&ev.raw),
                }
            }
            Some("content_block_stop") => {
                let index = index()?;
                if let Some(block) = self.blocks.remove(&index) {
                    self.flush_block(index, block, out);
                }
                out.extend_from_slice(&ev.raw);
            }
            Some("message_stop" | "error") => {
                self.flush_all(out);
                out.extend_from_slice(&ev.raw);
            }
            _ => out.extend_from_slice(&ev.raw),
        }
        Ok(())
    }

    /// A `content_block_start` whose block may already carry text: that text is the start
    /// of the block's stream.
    fn start_text(
        &mut self,
        ev: &Event,
        data: &str,
        v: &Value,
        index: u64,
        kind: Kind,
        out: &mut Vec<u8>,
    ) -> Result<(), StreamError> {
        let field = kind.field();
        let piece = v.pointer(&format!("/content_block/{field}")).and_then(Value::as_str).unwrap_or("");
        let new = if piece.is_empty() { String::new() } else { self.push_text(index, kind, piece)? };
        if new == piece {
            out.extend_from_slice(&ev.raw);
        } else {
            // Unlike a delta, the start event must stay even when its text is all held.
            let path = [P::Key("content_block".into()), P::Key(field.into())];
            replace_and_write(ev, data, &path, &new, out)
                .map_err(|reason| StreamError::InvalidEvent { event: ev.event.clone(), reason })?;
        }
        Ok(())
    }

    fn push_text(&mut self, index: u64, kind: Kind, piece: &str) -> Result<String, StreamError> {
        let block = self.blocks.entry(index).or_default();
        let rules = &self.rules;
        let masker = |m: &mut Option<StreamMasker>| m.get_or_insert_with(|| StreamMasker::new(rules.clone())).push(piece);
        match kind {
            Kind::Text => Ok(masker(&mut block.text)),
            Kind::Thinking => Ok(masker(&mut block.thinking)),
            Kind::Json => {
                let lexer = block.json.get_or_insert_with(|| JsonLexer::new(rules.clone()));
                let mut out = String::new();
                lexer
                    .push(piece, &mut out)
                    .map_err(|reason| StreamError::InvalidToolInput { index, reason: reason.into() })?;
                Ok(out)
            }
        }
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) {
        for (index, block) in std::mem::take(&mut self.blocks) {
            self.flush_block(index, block, out);
        }
    }

    /// Releases what `block` still holds as deltas of its own types, and keeps its hits.
    fn flush_block(&mut self, index: u64, mut block: Block, out: &mut Vec<u8>) {
        let rest = [
            (Kind::Text, block.text.as_mut().map(StreamMasker::finish)),
            (Kind::Thinking, block.thinking.as_mut().map(StreamMasker::finish)),
            (Kind::Json, block.json.as_mut().map(JsonLexer::finish)),
        ];
        for (kind, text) in rest {
            let Some(text) = text.filter(|t| !t.is_empty()) else { continue };
            let data = format!(
                r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"{}","{}":{}}}}}"#,
                kind.delta_type(),
                kind.field(),
                encode_string(&text)
            );
            let eol = self.eol;
            out.extend_from_slice(format!("event: content_block_delta{eol}data: {data}{eol}{eol}").as_bytes());
        }
        block.add_hits(&mut self.tally);
    }
}

impl Block {
    fn add_hits(&self, tally: &mut Tally) {
        for m in [&self.text, &self.thinking].into_iter().flatten() {
            tally.add(&m.hits());
        }
        if let Some(j) = &self.json {
            tally.add(&j.masker.hits());
        }
    }
}

fn line_ending(raw: &[u8]) -> &'static str {
    match raw.iter().position(|&b| b == b'\r') {
        Some(i) if raw.get(i + 1) == Some(&b'\n') => "\r\n",
        Some(_) => "\r",
        None => "\n",
    }
}

/// Writes `ev` with the string at `path` of its data replaced by `new`.
fn replace_and_write(ev: &Event, data: &str, path: &[P], new: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let token = encode_string(new);
    let replaced = rewrite_strings(data, |p, is_key, _| Ok((!is_key && p == path).then(|| token.clone())))?;
    write_event(ev, replaced.as_deref().unwrap_or(data), out);
    Ok(())
}

/// Serialises an event with new data, keeping its `event` and `id` fields and line ending.
fn write_event(ev: &Event, data: &str, out: &mut Vec<u8>) {
    let eol = line_ending(&ev.raw);
    let mut s = String::with_capacity(data.len() + 64);
    for (name, value) in [("event", &ev.event), ("id", &ev.id)] {
        if let Some(value) = value {
            s.push_str(&format!("{name}: {value}{eol}"));
        }
    }
    // Data joined from several `data:` lines contains `\n` (JSON whitespace): one line each.
    for line in data.split('\n') {
        s.push_str(&format!("data: {line}{eol}"));
    }
    s.push_str(eol);
    out.extend_from_slice(s.as_bytes());
}

/// Where the lexer is inside a JSON string's escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Esc {
    None,
    /// After `\`.
    Backslash,
    /// Inside `\uXXXX`: digits so far and their value; `high` is a preceding high surrogate.
    Unicode { high: Option<u16>, value: u16, digits: u8 },
    /// After a high surrogate's `\uXXXX`: its low half must follow (`\`, then `u`).
    Low { high: u16, seen_backslash: bool },
}

/// Incremental lexer over fragments of a JSON text: passes structure through, masks the
/// content of every string (one [`StreamMasker`] stream per string) and re-encodes it.
#[derive(Debug)]
struct JsonLexer {
    in_string: bool,
    esc: Esc,
    masker: StreamMasker,
}

impl JsonLexer {
    fn new(rules: Arc<RuleSet>) -> Self {
        JsonLexer { in_string: false, esc: Esc::None, masker: StreamMasker::new(rules) }
    }

    fn push(&mut self, fragment: &str, out: &mut String) -> Result<(), &'static str> {
        // Decoded content of the current string in this fragment, masked in one push.
        let mut decoded = String::new();
        for c in fragment.chars() {
            if !self.in_string {
                out.push(c);
                self.in_string = c == '"';
                continue;
            }
            match self.esc {
                Esc::None => match c {
                    '"' => {
                        encode_into(&self.masker.push(&std::mem::take(&mut decoded)), out);
                        encode_into(&self.masker.finish(), out);
                        out.push('"');
                        self.in_string = false;
                    }
                    '\\' => self.esc = Esc::Backslash,
                    c => decoded.push(c),
                },
                Esc::Backslash => {
                    self.esc = Esc::None;
                    decoded.push(match c {
                        '"' | '\\' | '/' => c,
                        'b' => '\u{8}',
                        'f' => '\u{c}',
                        'n' => '\n',
                        'r' => '\r',
                        't' => '\t',
                        'u' => {
                            self.esc = Esc::Unicode { high: None, value: 0, digits: 0 };
                            continue;
                        }
                        _ => return Err("invalid escape"),
                    });
                }
                Esc::Unicode { high, value, digits } => {
                    let d = c.to_digit(16).ok_or("invalid \\u escape")? as u16;
                    let value = value << 4 | d;
                    if digits < 3 {
                        self.esc = Esc::Unicode { high, value, digits: digits + 1 };
                        continue;
                    }
                    self.esc = Esc::None;
                    match (high, value) {
                        (None, 0xD800..=0xDBFF) => self.esc = Esc::Low { high: value, seen_backslash: false },
                        (None, 0xDC00..=0xDFFF) => return Err("lone low surrogate"),
                        (None, v) => decoded.push(char::from_u32(v as u32).ok_or("invalid \\u escape")?),
                        (Some(h), l @ 0xDC00..=0xDFFF) => {
                            let cp = 0x10000 + ((h as u32 - 0xD800) << 10) + (l as u32 - 0xDC00);
                            decoded.push(char::from_u32(cp).ok_or("invalid surrogate pair")?);
                        }
                        (Some(_), _) => return Err("high surrogate without low surrogate"),
                    }
                }
                Esc::Low { high, seen_backslash: false } if c == '\\' => {
                    self.esc = Esc::Low { high, seen_backslash: true }
                }
                Esc::Low { high, seen_backslash: true } if c == 'u' => {
                    self.esc = Esc::Unicode { high: Some(high), value: 0, digits: 0 }
                }
                Esc::Low { .. } => return Err("high surrogate without low surrogate"),
            }
        }
        if self.in_string && !decoded.is_empty() {
            encode_into(&self.masker.push(&decoded), out);
        }
        Ok(())
    }

    /// End of the block: what a string left open still holds (the JSON was truncated).
    fn finish(&mut self) -> String {
        let mut out = String::new();
        if self.in_string {
            encode_into(&self.masker.finish(), &mut out);
        }
        out
    }
}
