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
//! Every other event (`message_start`, `message_delta`, `error`, server tool results,
//! `citations_delta`, unknown ones) has each of its strings masked whole, except opaque data
//! (signatures, encrypted search results, redacted thinking); unchanged events pass byte for
//! byte.
//!
//! The OpenAI chat-completions stream shape goes through the same machinery
//! ([`StreamRewriter::openai_chat`]): per choice, `delta.content` and each tool call's
//! `function.arguments` (JSON fragments, like Anthropic tool input).
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
//! An event whose data is not JSON, invalid escapes in tool input and a stream that ends
//! inside an event are errors: the caller must fail closed, and the rewriter then refuses
//! further input.

use crate::anthropic::{decode_string_token, encode_into, encode_string, rewrite_strings, Tally, P};
use crate::rules::RuleSet;
use crate::sse::{EventRef, SseFramer};
use crate::stream_mask::StreamMasker;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::borrow::Cow;
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
    shape: Shape,
    /// Open content blocks by index (OpenAI: choices by index, content in `text`).
    blocks: BTreeMap<u64, Block>,
    /// OpenAI: tool-call arguments by (choice index, tool call index).
    tool_args: BTreeMap<(u64, u64), JsonLexer>,
    /// OpenAI: the last chunk's top-level fields (id, model, …) for chunks that release
    /// held text.
    template: serde_json::Map<String, Value>,
    /// Hits of blocks already closed and of whole `content_block_start` inputs.
    tally: Tally,
    /// Line ending of the last event, used for the deltas that release held text.
    eol: &'static str,
    failed: bool,
    /// Read events through [`Head`] where it can (always, but for a test comparing the paths).
    head_path: bool,
    /// Reused by every delta read in the API's layout: its text when it had escapes, and
    /// what the masker released for it (two allocations per event otherwise).
    decoded: String,
    released: String,
    /// With [`Self::recording`]: what the last push wrote, event by event (see [`Written`]).
    recording: bool,
    log: Vec<Logged>,
    log_text: String,
}

/// What a push wrote, for a transcript of what the client got (see
/// [`StreamRewriter::written`]): a delta's text as the masker released it (the event that
/// carries it was written in the API's layout), or whole events as bytes, to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written<'a> {
    Text { index: u64, text: &'a str },
    Events(&'a [u8]),
}

/// [`Written`] as kept between a push and [`StreamRewriter::written`]: ranges in the log's
/// text and in the push's output.
#[derive(Debug, Clone, Copy)]
enum Logged {
    Text { index: u64, from: usize, to: usize },
    Events { from: usize, to: usize },
}

/// Which API's stream this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Anthropic,
    OpenAiChat,
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
            shape: Shape::Anthropic,
            blocks: BTreeMap::new(),
            tool_args: BTreeMap::new(),
            template: serde_json::Map::new(),
            tally: Tally::default(),
            eol: "\n",
            failed: false,
            head_path: true,
            decoded: String::new(),
            released: String::new(),
            recording: false,
            log: Vec::new(),
            log_text: String::new(),
        }
    }

    /// A rewriter for the OpenAI chat-completions stream shape: `choices[].delta.content`
    /// and `choices[].delta.tool_calls[].function.arguments` (JSON fragments, as tool input)
    /// are masked per choice; held text is released before a choice's `finish_reason` (in
    /// the same chunk when it carries that field, else in a chunk of its own built from the
    /// last chunk's `id`, `model`, …) and before `data: [DONE]`.
    pub fn openai_chat(rules: Arc<RuleSet>) -> Self {
        StreamRewriter { shape: Shape::OpenAiChat, ..StreamRewriter::new(rules, ThinkingMode::Mask) }
    }

    /// Bytes of the upstream stream in, bytes to send to the client now out.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, StreamError> {
        if self.failed {
            return Err(StreamError::Failed);
        }
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 8);
        self.log.clear();
        self.log_text.clear();
        // The framer lends each event from its buffer while `self` handles it.
        let mut framer = std::mem::take(&mut self.framer);
        let done = framer.push_each(chunk, |ev| {
            let from = out.len();
            let delta = self.event(&ev, &mut out)?;
            if self.recording {
                self.log_written(delta, from, out.len());
            }
            Ok(())
        });
        self.framer = framer;
        done.inspect_err(|_| self.failed = true)?;
        Ok(out)
    }

    /// Keeps, for [`Self::written`], what the last pushes wrote; off by default.
    pub fn recording(mut self) -> Self {
        self.recording = true;
        self
    }

    /// What the last [`Self::push`] wrote into `out` (its result), in order: with
    /// [`Self::recording`], the text of each delta it wrote in the API's layout without
    /// reading it back, and every other event as bytes. Empty without recording.
    pub fn written<'a>(&'a self, out: &'a [u8]) -> impl Iterator<Item = Written<'a>> {
        self.log.iter().map(move |l| match *l {
            Logged::Text { index, from, to } => Written::Text { index, text: &self.log_text[from..to] },
            Logged::Events { from, to } => Written::Events(&out[from..to]),
        })
    }

    /// Logs what one event wrote in `out[from..to]`: the delta of block `delta` whose text is
    /// `self.released`, or events.
    fn log_written(&mut self, delta: Option<u64>, from: usize, to: usize) {
        match delta {
            Some(index) if from < to => {
                let start = self.log_text.len();
                self.log_text.push_str(&self.released);
                self.log.push(Logged::Text { index, from: start, to: self.log_text.len() });
            }
            Some(_) => {}
            None if from < to => match self.log.last_mut() {
                Some(Logged::Events { to: end, .. }) if *end == from => *end = to,
                _ => self.log.push(Logged::Events { from, to }),
            },
            None => {}
        }
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
        for j in self.tool_args.values() {
            tally.add(&j.masker.hits());
        }
        tally.in_order(&self.rules)
    }

    /// Handles one event, writing what the client gets into `out`. `Some(index)` when that
    /// is one delta of block `index` in the API's layout carrying `self.released` (or nothing,
    /// when all its text is held).
    fn event(&mut self, ev: &EventRef, out: &mut Vec<u8>) -> Result<Option<u64>, StreamError> {
        self.eol = line_ending(ev.raw);
        let Some(data) = ev.data.as_deref() else {
            out.extend_from_slice(ev.raw);
            return Ok(None);
        };
        if self.shape == Shape::OpenAiChat {
            return self.openai_event(ev, data, out).map(|()| None);
        }
        let mut decoded = std::mem::take(&mut self.decoded);
        if let Some(delta) = self.head_path.then(|| canonical_delta(data, &mut decoded)).flatten() {
            if delta.kind == Kind::Thinking && self.thinking == ThinkingMode::Pass {
                out.extend_from_slice(ev.raw);
                self.decoded = decoded;
                return Ok(None);
            }
            let piece = delta.piece.unwrap_or(&decoded);
            let mut new = std::mem::take(&mut self.released);
            new.clear();
            self.push_text_into(delta.index, delta.kind, piece, &mut new)?;
            if new == piece {
                out.extend_from_slice(ev.raw);
            } else if !new.is_empty() {
                write_delta(ev, data, delta.kind, &new, Some(delta.span), out)
                    .map_err(|reason| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason })?;
            }
            (self.decoded, self.released) = (decoded, new);
            return Ok(Some(delta.index));
        }
        self.decoded = decoded;
        self.value_event(ev, data, out).map(|()| None)
    }

    /// [`Self::event`] for events not in the API's delta layout.
    fn value_event(&mut self, ev: &EventRef, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if let Some(head) = self.head_path.then(|| serde_json::from_str::<Head>(data).ok()).flatten() {
            if let Some(done) = self.head_event(ev, data, &head, out) {
                return done;
            }
        }
        let invalid = |reason: String| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason };
        let v: Value = serde_json::from_str(data).map_err(|e| invalid(e.to_string()))?;
        let index = || v.get("index").and_then(Value::as_u64).ok_or_else(|| invalid("no index".into()));
        match v.get("type").and_then(Value::as_str) {
            Some("content_block_delta") => {
                let kind = match v.pointer("/delta/type").and_then(Value::as_str) {
                    Some("text_delta") => Kind::Text,
                    Some("thinking_delta") if self.thinking == ThinkingMode::Mask => Kind::Thinking,
                    Some("input_json_delta") => Kind::Json,
                    Some("thinking_delta" | "signature_delta") => {
                        out.extend_from_slice(ev.raw);
                        return Ok(());
                    }
                    _ => return self.mask_other(ev, data, out),
                };
                let index = index()?;
                let piece = v
                    .pointer(&format!("/delta/{}", kind.field()))
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid(format!("no {} string", kind.field())))?;
                let new = self.push_text(index, kind, piece)?;
                if new == piece {
                    out.extend_from_slice(ev.raw);
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
                            None => out.extend_from_slice(ev.raw),
                        }
                    }
                    // Thinking passed on as it is, signature and all.
                    Some("thinking") => out.extend_from_slice(ev.raw),
                    _ => self.mask_other(ev, data, out)?,
                }
            }
            Some("content_block_stop") => {
                let index = index()?;
                if let Some(block) = self.blocks.remove(&index) {
                    self.flush_block(index, block, out);
                }
                out.extend_from_slice(ev.raw);
            }
            Some("message_stop" | "error") => {
                self.flush_all(out);
                self.mask_other(ev, data, out)?;
            }
            _ => self.mask_other(ev, data, out)?,
        }
        Ok(())
    }

    /// An event that carries no streamed text (message start and delta, errors, server tool
    /// results, citations, unknown events): every string in it is masked whole, keys
    /// included, except opaque data that must come back byte for byte (signatures,
    /// encrypted search results, redacted thinking).
    fn mask_other(&mut self, ev: &EventRef, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        let rules = &self.rules;
        let tally = &mut self.tally;
        let redacted = data.contains("\"redacted_thinking\"");
        let new = rewrite_strings(data, |path, is_key, token| {
            if !is_key {
                if let Some(P::Key(k)) = path.last() {
                    if matches!(k.as_str(), "signature" | "encrypted_content" | "encrypted_index") || (redacted && k == "data") {
                        return Ok(None);
                    }
                }
            }
            let mut s = String::new();
            if !decode_string_token(token, &mut s) {
                s = serde_json::from_str(token).map_err(|e| e.to_string())?;
            }
            let m = rules.mask(&s);
            if m.hits.is_empty() {
                return Ok(None);
            }
            tally.add(&m.hits);
            Ok(Some(encode_string(&m.text)))
        })
        .map_err(|reason| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason })?;
        match new {
            Some(new) => write_event(ev, &new, out),
            None => out.extend_from_slice(ev.raw),
        }
        Ok(())
    }

    /// [`Self::event`] for the events [`Head`] holds all that is needed of: exactly what the
    /// `Value` path does with them, without building the value. `None` for a
    /// `content_block_start` (rare, and it needs the whole value): the caller goes on.
    fn head_event(&mut self, ev: &EventRef, data: &str, head: &Head, out: &mut Vec<u8>) -> Option<Result<(), StreamError>> {
        let invalid = |reason: String| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason };
        let index = || head.index.ok_or_else(|| invalid("no index".into()));
        match head.kind.as_deref() {
            Some("content_block_delta") => {
                let delta = head.delta.as_ref();
                let kind = match delta.and_then(|d| d.kind.as_deref()) {
                    Some("text_delta") => Kind::Text,
                    Some("thinking_delta") if self.thinking == ThinkingMode::Mask => Kind::Thinking,
                    Some("input_json_delta") => Kind::Json,
                    Some("thinking_delta" | "signature_delta") => {
                        out.extend_from_slice(ev.raw);
                        return Some(Ok(()));
                    }
                    _ => return Some(self.mask_other(ev, data, out)),
                };
                let index = match index() {
                    Ok(index) => index,
                    Err(e) => return Some(Err(e)),
                };
                let piece = delta.and_then(|d| match kind {
                    Kind::Text => d.text.as_deref(),
                    Kind::Thinking => d.thinking.as_deref(),
                    Kind::Json => d.partial_json.as_deref(),
                });
                let Some(piece) = piece else {
                    return Some(Err(invalid(format!("no {} string", kind.field()))));
                };
                let new = match self.push_text(index, kind, piece) {
                    Ok(new) => new,
                    Err(e) => return Some(Err(e)),
                };
                if new == piece {
                    out.extend_from_slice(ev.raw);
                } else if !new.is_empty() {
                    let span = delta_string_span(data, kind.field());
                    if let Err(reason) = write_delta(ev, data, kind, &new, span, out) {
                        return Some(Err(invalid(reason)));
                    }
                }
            }
            Some("content_block_start") => return None,
            Some("content_block_stop") => {
                let index = match index() {
                    Ok(index) => index,
                    Err(e) => return Some(Err(e)),
                };
                if let Some(block) = self.blocks.remove(&index) {
                    self.flush_block(index, block, out);
                }
                out.extend_from_slice(ev.raw);
            }
            Some("message_stop" | "error") => {
                self.flush_all(out);
                return Some(self.mask_other(ev, data, out));
            }
            _ => return Some(self.mask_other(ev, data, out)),
        }
        Some(Ok(()))
    }

    /// A `content_block_start` whose block may already carry text: that text is the start
    /// of the block's stream.
    fn start_text(
        &mut self,
        ev: &EventRef,
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
            out.extend_from_slice(ev.raw);
        } else {
            // Unlike a delta, the start event must stay even when its text is all held.
            let path = [P::Key("content_block".into()), P::Key(field.into())];
            replace_and_write(ev, data, &path, &new, out)
                .map_err(|reason| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason })?;
        }
        Ok(())
    }

    fn openai_event(&mut self, ev: &EventRef, data: &str, out: &mut Vec<u8>) -> Result<(), StreamError> {
        if data.trim() == "[DONE]" {
            self.flush_all(out);
            out.extend_from_slice(ev.raw);
            return Ok(());
        }
        let invalid = |reason: String| StreamError::InvalidEvent { event: ev.event.as_deref().map(str::to_owned), reason };
        let v: Value = serde_json::from_str(data).map_err(|e| invalid(e.to_string()))?;
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return self.mask_other(ev, data, out);
        };
        if let Value::Object(top) = &v {
            self.template = top.iter().filter(|(k, _)| *k != "choices" && *k != "usage").map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        // New text per string path in this event; released text that has no field in this
        // event goes into chunks written before it.
        let mut new: Vec<(Vec<P>, String)> = Vec::new();
        let mut before = Vec::new();
        for (ci, choice) in choices.iter().enumerate() {
            let index = choice.get("index").and_then(Value::as_u64).unwrap_or(ci as u64);
            let at = |rest: &[P]| [&[P::Key("choices".into()), P::Index(ci), P::Key("delta".into())], rest].concat();
            let finishing = choice.get("finish_reason").is_some_and(|f| !f.is_null());
            let mut present = Vec::new();
            if let Some(piece) = choice.pointer("/delta/content").and_then(Value::as_str) {
                let mut text = self.push_text(index, Kind::Text, piece)?;
                if finishing {
                    if let Some(m) = self.blocks.get_mut(&index).and_then(|b| b.text.as_mut()) {
                        text.push_str(&m.finish());
                    }
                }
                new.push((at(&[P::Key("content".into())]), text));
                present.push(None);
            }
            let calls = choice.pointer("/delta/tool_calls").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            for (ti, call) in calls.iter().enumerate() {
                let Some(piece) = call.pointer("/function/arguments").and_then(Value::as_str) else { continue };
                let k = call.get("index").and_then(Value::as_u64).unwrap_or(ti as u64);
                let lexer = self.tool_args.entry((index, k)).or_insert_with(|| JsonLexer::new(self.rules.clone()));
                let mut text = String::new();
                lexer
                    .push(piece, &mut text)
                    .map_err(|reason| StreamError::InvalidToolInput { index, reason: reason.into() })?;
                if finishing {
                    text.push_str(&lexer.finish());
                }
                let path = [P::Key("tool_calls".into()), P::Index(ti), P::Key("function".into()), P::Key("arguments".into())];
                new.push((at(&path), text));
                present.push(Some(k));
            }
            if finishing {
                self.openai_release(index, &present, &mut before);
            }
        }
        out.extend_from_slice(&before);
        let changed: Vec<&(Vec<P>, String)> =
            new.iter().filter(|(path, text)| v.pointer(&pointer(path)).and_then(Value::as_str) != Some(text)).collect();
        // Streamed fields get their masker's text; every other string of the chunk (ids,
        // refusals, reasoning, whatever comes next) is masked whole.
        let (rules, tally) = (&self.rules, &mut self.tally);
        let replaced = rewrite_strings(data, |p, is_key, token| {
            if !is_key {
                if let Some((_, text)) = changed.iter().find(|(path, _)| path == p) {
                    return Ok(Some(encode_string(text)));
                }
                if new.iter().any(|(path, _)| path == p) {
                    return Ok(None);
                }
            }
            let mut s = String::new();
            if !decode_string_token(token, &mut s) {
                s = serde_json::from_str(token).map_err(|e| e.to_string())?;
            }
            let m = rules.mask(&s);
            if m.hits.is_empty() {
                return Ok(None);
            }
            tally.add(&m.hits);
            Ok(Some(encode_string(&m.text)))
        })
        .map_err(invalid)?;
        match replaced {
            Some(r) => write_event(ev, &r, out),
            None => out.extend_from_slice(ev.raw),
        }
        Ok(())
    }

    /// Ends choice `index`'s streams and writes what they held as chunks of their own,
    /// except the streams in `present` (this event carries their field: `None` for content,
    /// `Some(k)` for tool call `k`), whose remainder the caller already appended.
    fn openai_release(&mut self, index: u64, present: &[Option<u64>], out: &mut Vec<u8>) {
        let mut deltas = Vec::new();
        if let Some(mut block) = self.blocks.remove(&index) {
            if let Some(m) = block.text.as_mut() {
                let rest = m.finish();
                if !rest.is_empty() && !present.contains(&None) {
                    deltas.push(serde_json::json!({"content": rest}));
                }
            }
            block.add_hits(&mut self.tally);
        }
        let keys: Vec<(u64, u64)> = self.tool_args.range((index, 0)..=(index, u64::MAX)).map(|(k, _)| *k).collect();
        for key in keys {
            let mut lexer = self.tool_args.remove(&key).expect("key just listed");
            let rest = lexer.finish();
            if !rest.is_empty() && !present.contains(&Some(key.1)) {
                deltas.push(serde_json::json!({"tool_calls": [{"index": key.1, "function": {"arguments": rest}}]}));
            }
            self.tally.add(&lexer.masker.hits());
        }
        for delta in deltas {
            let mut chunk = self.template.clone();
            chunk.insert("choices".into(), serde_json::json!([{"index": index, "delta": delta, "finish_reason": null}]));
            let eol = self.eol;
            out.extend_from_slice(format!("data: {}{eol}{eol}", Value::Object(chunk)).as_bytes());
        }
    }

    fn push_text(&mut self, index: u64, kind: Kind, piece: &str) -> Result<String, StreamError> {
        let mut out = String::new();
        self.push_text_into(index, kind, piece, &mut out)?;
        Ok(out)
    }

    /// Appends to `out` what block `index` releases once `piece` is added to its `kind` text.
    fn push_text_into(&mut self, index: u64, kind: Kind, piece: &str, out: &mut String) -> Result<(), StreamError> {
        let block = self.blocks.entry(index).or_default();
        let rules = &self.rules;
        let push = |m: &mut Option<StreamMasker>, out: &mut String| {
            m.get_or_insert_with(|| StreamMasker::new(rules.clone())).push_into(piece, out)
        };
        match kind {
            Kind::Text => push(&mut block.text, out),
            Kind::Thinking => push(&mut block.thinking, out),
            Kind::Json => {
                let lexer = block.json.get_or_insert_with(|| JsonLexer::new(rules.clone()));
                lexer
                    .push(piece, out)
                    .map_err(|reason| StreamError::InvalidToolInput { index, reason: reason.into() })?;
            }
        }
        Ok(())
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) {
        if self.shape == Shape::OpenAiChat {
            let choices: Vec<u64> = self.blocks.keys().chain(self.tool_args.keys().map(|k| &k.0)).copied().collect();
            for c in choices {
                self.openai_release(c, &[], out);
            }
            return;
        }
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

/// A JSON pointer for `path`.
fn pointer(path: &[P]) -> String {
    path.iter()
        .map(|p| match p {
            P::Key(k) => format!("/{}", k.replace('~', "~0").replace('/', "~1")),
            P::Index(i) => format!("/{i}"),
        })
        .collect()
}

fn line_ending(raw: &[u8]) -> &'static str {
    // The blank line that ended the event tells.
    if raw.ends_with(b"\r\n") {
        "\r\n"
    } else if raw.ends_with(b"\r") {
        "\r"
    } else {
        "\n"
    }
}

/// Writes `ev` with the string at `path` of its data replaced by `new`.
fn replace_and_write(ev: &EventRef, data: &str, path: &[P], new: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let token = encode_string(new);
    let replaced = rewrite_strings(data, |p, is_key, _| Ok((!is_key && p == path).then(|| token.clone())))?;
    write_event(ev, replaced.as_deref().unwrap_or(data), out);
    Ok(())
}

/// Serialises an event with new data, keeping its `event` and `id` fields and line ending.
fn write_event(ev: &EventRef, data: &str, out: &mut Vec<u8>) {
    write_event_parts(ev, &[Part::Raw(data)], out)
}

/// A piece of an event's data as it is written.
enum Part<'a> {
    /// JSON text, written as it is.
    Raw(&'a str),
    /// Text written as a JSON string token (quoted and escaped).
    Encoded(&'a str),
}

/// [`write_event`] with the data given as consecutive parts (no copy to join them first).
fn write_event_parts(ev: &EventRef, data: &[Part], out: &mut Vec<u8>) {
    let eol = line_ending(ev.raw).as_bytes();
    for (name, value) in [(&b"event: "[..], &ev.event), (b"id: ", &ev.id)] {
        if let Some(value) = value {
            out.extend_from_slice(name);
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(eol);
        }
    }
    // Data joined from several `data:` lines contains `\n` (JSON whitespace): one line each.
    // Data the framer lent as it is came from one line and has none.
    let one_line = matches!(ev.data, Some(Cow::Borrowed(_)));
    out.extend_from_slice(b"data: ");
    for part in data {
        let part = match part {
            Part::Raw(part) => part,
            Part::Encoded(text) => {
                // An encoded string has no line break of its own.
                out.push(b'"');
                encode_into(text, out);
                out.push(b'"');
                continue;
            }
        };
        let mut rest = part.as_bytes();
        while let Some(nl) = if one_line { None } else { memchr::memchr(b'\n', rest) } {
            out.extend_from_slice(&rest[..nl]);
            out.extend_from_slice(eol);
            out.extend_from_slice(b"data: ");
            rest = &rest[nl + 1..];
        }
        out.extend_from_slice(rest);
    }
    out.extend_from_slice(eol);
    out.extend_from_slice(eol);
}

/// What the rewriter reads of an Anthropic event's data: `type`, `index` and the `delta`'s
/// `type` and text fields, borrowed from the data where they have no escapes. Everything
/// else is checked to be JSON exactly as parsing a `serde_json::Value` would (the same
/// `deserialize_any` path, nesting limit included) but not kept: the allocations of a
/// `Value` per 48-byte delta were most of a stream's cost. Anything this shape cannot hold
/// exactly as the `Value` path would read it (a field of another type, a repeated field,
/// data that is not an object) fails to parse, and the caller takes the `Value` path.
#[derive(Debug, Default)]
struct Head<'a> {
    kind: Option<Cow<'a, str>>,
    index: Option<u64>,
    delta: Option<DeltaHead<'a>>,
}

#[derive(Debug, Default)]
struct DeltaHead<'a> {
    kind: Option<Cow<'a, str>>,
    text: Option<Cow<'a, str>>,
    thinking: Option<Cow<'a, str>>,
    partial_json: Option<Cow<'a, str>>,
}

/// Sets a field once: a repeated key fails the parse (a `Value` keeps the last one; the
/// fallback path then does exactly that).
fn set_once<T, E: de::Error>(slot: &mut Option<T>, seen: &mut bool, value: Option<T>) -> Result<(), E> {
    if std::mem::replace(seen, true) {
        return Err(E::custom("repeated field"));
    }
    *slot = value;
    Ok(())
}

impl<'de: 'a, 'a> Deserialize<'de> for Head<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Head<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Head<'a>, A::Error> {
                let mut head = Head::default();
                let mut seen = [false; 3];
                while let Some(key) = map.next_key::<Str>()? {
                    match &*key.0 {
                        "type" => set_once(&mut head.kind, &mut seen[0], map.next_value::<Option<Str>>()?.map(|s| s.0))?,
                        "index" => set_once(&mut head.index, &mut seen[1], map.next_value::<Option<u64>>()?)?,
                        "delta" => set_once(&mut head.delta, &mut seen[2], map.next_value::<Option<DeltaHead>>()?)?,
                        _ => map.next_value::<Skip>().map(drop)?,
                    }
                }
                Ok(head)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for DeltaHead<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = DeltaHead<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a delta object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DeltaHead<'a>, A::Error> {
                let mut delta = DeltaHead::default();
                let mut seen = [false; 4];
                while let Some(key) = map.next_key::<Str>()? {
                    let (slot, seen) = match &*key.0 {
                        "type" => (&mut delta.kind, &mut seen[0]),
                        "text" => (&mut delta.text, &mut seen[1]),
                        "thinking" => (&mut delta.thinking, &mut seen[2]),
                        "partial_json" => (&mut delta.partial_json, &mut seen[3]),
                        _ => {
                            map.next_value::<Skip>()?;
                            continue;
                        }
                    };
                    set_once(slot, seen, map.next_value::<Option<Str>>()?.map(|s| s.0))?;
                }
                Ok(delta)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A JSON string, borrowed when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Str<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'a>, E> {
                Ok(Str(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

/// Any JSON value, checked through `deserialize_any` (as a `Value` is) and dropped.
struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Skip;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_unit<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_none<E>(self) -> Result<Skip, E> {
                Ok(Skip)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Skip, D::Error> {
                Skip::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
                while seq.next_element::<Skip>()?.is_some() {}
                Ok(Skip)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
                while map.next_key::<Skip>()?.is_some() {
                    map.next_value::<Skip>()?;
                }
                Ok(Skip)
            }
        }
        d.deserialize_any(V)
    }
}

/// Writes a delta event whose text became `new` (not empty, not the event's own text): the
/// string at `span` (quotes included) spliced directly when known, else found by walking
/// the data.
fn write_delta(ev: &EventRef, data: &str, kind: Kind, new: &str, span: Option<(usize, usize)>, out: &mut Vec<u8>) -> Result<(), String> {
    match span {
        Some((a, b)) => {
            write_event_parts(ev, &[Part::Raw(&data[..a]), Part::Encoded(new), Part::Raw(&data[b..])], out);
            Ok(())
        }
        None => {
            let path = [P::Key("delta".into()), P::Key(kind.field().into())];
            replace_and_write(ev, data, &path, new, out)
        }
    }
}

/// A `content_block_delta` in the layout the Messages API writes (keys in its order, nothing
/// else; whitespace between tokens allowed): read by matching that layout, which is most
/// events of a stream; anything else goes through [`Head`].
#[derive(Debug)]
pub(crate) struct CanonicalDelta<'a> {
    pub(crate) index: u64,
    kind: Kind,
    /// The text's string token (quotes included) in the data.
    span: (usize, usize),
    /// The text, when it is the token's content as it is; else it was decoded into the
    /// buffer given to [`canonical_delta`].
    pub(crate) piece: Option<&'a str>,
}

/// `data` as a [`CanonicalDelta`], if it is exactly that layout and valid JSON.
pub(crate) fn canonical_delta<'a>(data: &'a str, decoded: &mut String) -> Option<CanonicalDelta<'a>> {
    let b = data.as_bytes();
    let head = [r#"{"type":"content_block_delta","index":"#, "{", r#""type""#, ":", r#""content_block_delta""#, ",", r#""index""#, ":"];
    let at = ws(b, layout(b, 0, &head)?);
    let digits = b[at..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || (digits > 1 && b[at] == b'0') {
        return None;
    }
    let index = data[at..at + digits].parse().ok()?;
    let at = at + digits;
    let (kind, at) = [Kind::Text, Kind::Thinking, Kind::Json].into_iter().find_map(|kind| {
        let middle = match kind {
            Kind::Text => [r#","delta":{"type":"text_delta","text":"#, ",", r#""delta""#, ":", "{", r#""type""#, ":", r#""text_delta""#, ",", r#""text""#, ":"],
            Kind::Thinking => [r#","delta":{"type":"thinking_delta","thinking":"#, ",", r#""delta""#, ":", "{", r#""type""#, ":", r#""thinking_delta""#, ",", r#""thinking""#, ":"],
            Kind::Json => [r#","delta":{"type":"input_json_delta","partial_json":"#, ",", r#""delta""#, ":", "{", r#""type""#, ":", r#""input_json_delta""#, ",", r#""partial_json""#, ":"],
        };
        Some((kind, layout(b, at, &middle)?))
    })?;
    let a = ws(b, at);
    // The string token, and whether its content is its text as it is (no escape, no control
    // character, which JSON does not allow raw: serde_json refuses it below).
    if b.get(a) != Some(&b'"') {
        return None;
    }
    let (mut end, mut plain) = (a + 1, true);
    loop {
        match *b.get(end)? {
            b'"' => break,
            b'\\' => (plain, end) = (false, end + 2),
            c => (plain, end) = (plain && c >= 0x20, end + 1),
        }
    }
    let end = end + 1;
    if ws(b, layout(b, end, &["}}", "}", "}"])?) != b.len() {
        return None;
    }
    let token = &data[a..end];
    let piece = if plain {
        Some(&token[1..token.len() - 1])
    } else {
        decoded.clear();
        if !decode_string_token(token, decoded) {
            *decoded = serde_json::from_str::<String>(token).ok()?;
        }
        None
    };
    Some(CanonicalDelta { index, kind, span: (a, end), piece })
}

/// Past a piece of the layout at `at`: `forms[0]` is its compact form (one comparison, the
/// usual case), `forms[1..]` its tokens, each preceded by optional JSON whitespace.
fn layout(b: &[u8], at: usize, forms: &[&str]) -> Option<usize> {
    match b[at..].starts_with(forms[0].as_bytes()) {
        true => Some(at + forms[0].len()),
        false => tokens(b, at, &forms[1..]),
    }
}

/// Past `expected` in `b` from `at`, each token preceded by optional JSON whitespace.
fn tokens(b: &[u8], mut at: usize, expected: &[&str]) -> Option<usize> {
    for t in expected {
        at = ws(b, at);
        if !b[at..].starts_with(t.as_bytes()) {
            return None;
        }
        at += t.len();
    }
    Some(at)
}

/// The byte range (quotes included) of the string at `delta.<field>` in `data`, valid JSON
/// already parsed as a [`Head`], if exactly one string sits at that path: the token
/// [`replace_and_write`] would replace, found without building paths.
fn delta_string_span(data: &str, field: &str) -> Option<(usize, usize)> {
    let b = data.as_bytes();
    let mut found = None;
    let mut count = 0;
    let mut at = ws(b, 0);
    if b.get(at) != Some(&b'{') {
        return None;
    }
    at = ws(b, at + 1);
    if b.get(at) == Some(&b'}') {
        return None;
    }
    loop {
        let (k0, k1) = string_token(b, at)?;
        at = ws(b, ws(b, k1) + 1); // past `:`
        if key_is(&data[k0..k1], "delta") && b.get(at) == Some(&b'{') {
            at = ws(b, at + 1);
            if b.get(at) != Some(&b'}') {
                loop {
                    let (f0, f1) = string_token(b, at)?;
                    at = ws(b, ws(b, f1) + 1);
                    if key_is(&data[f0..f1], field) && b.get(at) == Some(&b'"') {
                        let (v0, v1) = string_token(b, at)?;
                        found = Some((v0, v1));
                        count += 1;
                        at = v1;
                    } else {
                        at = skip_value(b, at)?;
                    }
                    at = ws(b, at);
                    match b.get(at)? {
                        b',' => at = ws(b, at + 1),
                        _ => break,
                    }
                }
            }
            at += 1; // `}`
        } else {
            at = skip_value(b, at)?;
        }
        at = ws(b, at);
        match b.get(at)? {
            b',' => at = ws(b, at + 1),
            _ => break,
        }
    }
    (count == 1).then_some(found).flatten()
}

fn ws(b: &[u8], mut at: usize) -> usize {
    while at < b.len() && matches!(b[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

/// The string token starting at `at` (a `"`): its range, quotes included.
fn string_token(b: &[u8], at: usize) -> Option<(usize, usize)> {
    if b.get(at) != Some(&b'"') {
        return None;
    }
    let mut i = at + 1;
    loop {
        i += memchr::memchr2(b'"', b'\\', b.get(i..)?)?;
        match b[i] {
            b'"' => return Some((at, i + 1)),
            _ => i += 2,
        }
    }
}

/// Whether the key token `token` (quotes included) decodes to `name`.
fn key_is(token: &str, name: &str) -> bool {
    if token.contains('\\') {
        serde_json::from_str::<String>(token).is_ok_and(|k| k == name)
    } else {
        &token[1..token.len() - 1] == name
    }
}

/// The end of the (valid) JSON value starting at `at`.
fn skip_value(b: &[u8], at: usize) -> Option<usize> {
    match b.get(at)? {
        b'"' => string_token(b, at).map(|(_, end)| end),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = at;
            while i < b.len() {
                match b[i] {
                    b'"' => i = string_token(b, i)?.1,
                    b'{' | b'[' => {
                        depth += 1;
                        i += 1;
                    }
                    b'}' | b']' => {
                        depth -= 1;
                        i += 1;
                        if depth == 0 {
                            return Some(i);
                        }
                    }
                    _ => i += 1,
                }
            }
            None
        }
        _ => {
            let mut i = at;
            while i < b.len() && !matches!(b[i], b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                i += 1;
            }
            Some(i)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    // Stream building, rewriting, the client-side reassembly and check, and the named cases
    // are shared with the wasm tests (tests/wasm.rs): crate::testkit.
    use crate::testkit::anthropic_stream::*;
    use crate::testkit::builtin;

    /// Larger streams, checked in 1-byte chunks and over random splits only.
    fn big_cases() -> Vec<(&'static str, Vec<TestBlock>)> {
        let mut cases = cases();
        for n in [1, 2] {
            cases.push(("anthropic_key_in_tool_input_in_tiny_fragments", vec![TestBlock { kind: "tool_use", pieces: pieces_of(&tool_input(&ant()), n) }]));
        }
        cases
    }

    #[test]
    fn every_split_point_reassembles_to_the_whole_text_masked() {
        for (name, blocks) in cases() {
            all_splits(name, &blocks, "\n", ThinkingMode::Mask);
        }
    }

    #[test]
    fn crlf_framed_streams_mask_the_same_and_stay_crlf() {
        // Every split point on two cases (the framer's own tests cover CRLF at every split);
        // the property test below runs every case with CRLF at random splits.
        for (name, blocks) in &cases()[..4] {
            if name.starts_with("tool") || name.starts_with("aws") {
                all_splits(name, blocks, "\r\n", ThinkingMode::Mask);
            }
        }
        for (name, blocks) in big_cases() {
            let (out, _) = rewrite(&[&stream(&blocks, "\r\n")], ThinkingMode::Mask);
            let lone_lf = out.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || out[i - 1] != b'\r'));
            assert!(!lone_lf, "case {name}: an LF without CR in {}", String::from_utf8_lossy(&out));
        }
    }

    #[test]
    fn thinking_passes_untouched_in_pass_mode() {
        let blocks = vec![TestBlock { kind: "thinking", pieces: pieces_of(&format!("pasted {}", ant()), 5) }];
        all_splits("thinking_pass", &blocks, "\n", ThinkingMode::Pass);
        let input = stream(&blocks, "\n");
        assert_eq!(rewrite(&[&input], ThinkingMode::Pass).0, input);
    }

    #[test]
    fn aws_key_split_in_five_deltas_never_reaches_the_client() {
        let (_, blocks) = cases().swap_remove(0);
        let input = stream(&blocks, "\n");
        let (out, hits) = rewrite(&input.chunks(7).collect::<Vec<_>>(), ThinkingMode::Mask);
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains(&aws()[4..10]), "{text}");
        assert_eq!(reassemble(&out)[0].1, "Your key is [REDACTED:aws-access-key-id] — rotate it.\n");
        assert_eq!(hits, vec![("aws-access-key-id".to_string(), 1)]);
    }

    #[test]
    fn anthropic_key_in_tool_input_split_mid_escape_is_masked_and_parses() {
        let (_, blocks) = big_cases().pop().unwrap();
        let input = stream(&blocks, "\n");
        let (out, hits) = rewrite(&input.chunks(1).collect::<Vec<_>>(), ThinkingMode::Mask);
        check(&blocks, &out, ThinkingMode::Mask).unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(!text.contains(&ant()[13..30]), "{text}");
        let input: Value = serde_json::from_str(&reassemble(&out)[0].1).unwrap();
        assert_eq!(input["command"], "export K=\"[REDACTED:anthropic-api-key]\"\n echo é🎉 é \\ /");
        assert_eq!(input["kA [REDACTED:aws-access-key-id]"], "v");
        assert_eq!(hits, vec![("anthropic-api-key".to_string(), 1), ("aws-access-key-id".to_string(), 1)]);
    }

    #[test]
    fn deltas_in_the_api_layout_are_read_without_a_parser() {
        let mut decoded = String::new();
        let d = canonical_delta(r#"{"type":"content_block_delta","index":7,"delta":{"type":"text_delta","text":"a\"b"}}"#, &mut decoded).unwrap();
        assert_eq!((d.index, d.kind, d.piece, decoded.as_str()), (7, Kind::Text, None, "a\"b"));
        let spaced = r#"{"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{}"}}"#;
        let d = canonical_delta(spaced, &mut decoded).unwrap();
        assert_eq!((d.index, d.kind, &spaced[d.span.0..d.span.1]), (1, Kind::Json, r#""{}""#));
        for other in [
            r#"{"index":0,"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"x"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x"}}x"#,
        ] {
            assert!(canonical_delta(other, &mut decoded).is_none(), "{other}");
        }
    }

    #[test]
    fn awkward_events_give_the_same_bytes_through_the_head_as_through_a_value() {
        let key = aws();
        let deep = format!("{}1{}", "[".repeat(130), "]".repeat(130));
        let datas = [
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"id {}"}}}}"#, &key[..9]),
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","t\u0065xt":"{}"}}}}"#, &key[9..]),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"x","text":"y token"}}"#.into(),
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"a"},"delta":{"type":"text_delta","text":"b key"},"index":0}"#.into(),
            r#"{ "index" : 0 , "delta" : { "text" : "sp\"aced\n", "type" : "text_delta" } , "type" : "content_block_delta" }"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":["text_delta","x"]}"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"n","extra":[1,{"a":null}],"n":1e400}}"#.into(),
            format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"d"}},"x":{deep}}}"#),
            r#"{"type":"content_block_delta","index":0.0,"delta":{"type":"text_delta","text":"f"}}"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":5}}"#.into(),
            r#"{"type":5,"index":0}"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"esc \"q\" \\ \n \u00e9 \ud83c\udf89 secret"}}"#.into(),
            r#"{"type":"content_block_delta","index":00,"delta":{"type":"text_delta","text":"z"}}"#.into(),
            r#"{"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "spaced token = "}}"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"unclosed"}"#.into(),
            r#"{"type":"content_block_delta","index":12,"delta":{"type":"text_delta","text":"other block"}}"#.into(),
            "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"raw\u{1}control\"}}".into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"bad \x escape"}}"#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"trailing"}} "#.into(),
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"extra"},"x":1}"#.into(),
            r#"{"type":"content_block_delta","index":3,"delta":{"type":"input_json_delta","partial_json":"{\"k\": \"tok"}}"#.into(),
            r#"{"type":"content_block_delta","index":4,"delta":{"type":"thinking_delta","thinking":"my secret is"}}"#.into(),
            r#"{"type":"content_block_stop","index":0}"#.into(),
            r#"{"type":"message_stop"}"#.into(),
            // Several `data:` lines (JSON whitespace between them).
            "{\"type\":\"content_block_delta\",\n\"index\":0,\n\"delta\":{\"type\":\"text_delta\",\"text\":\"multi secret\"}\n}".into(),
        ];
        for (i, data) in datas.iter().enumerate() {
            // Each awkward event after a delta that left text held, then a plain one.
            let prefix = format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"the api_token = {}"}}}}"#, &key[..6]);
            let input = [prefix.as_str(), data, r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" end"}}"#]
                .iter()
                .map(|d| format!("event: content_block_delta\r\ndata: {}\r\n\r\n", d.replace('\n', "\r\ndata: ")))
                .collect::<String>();
            let run = |head_path: bool, thinking: ThinkingMode| {
                let mut r = StreamRewriter::new(builtin(), thinking);
                r.head_path = head_path;
                let out = r.push(input.as_bytes()).and_then(|mut out| {
                    out.extend(r.finish()?);
                    Ok(out)
                });
                (out, r.hits())
            };
            for thinking in [ThinkingMode::Mask, ThinkingMode::Pass] {
                assert_eq!(run(true, thinking), run(false, thinking), "event {i} ({thinking:?}): {data}");
            }
        }
    }

    #[test]
    fn held_text_is_released_right_before_its_block_stops() {
        let blocks = vec![block("text", &["id ", &aws()[..8]]), block("text", &["next"])];
        let (out, _) = rewrite(&[&stream(&blocks, "\n")], ThinkingMode::Mask);
        let text = String::from_utf8(out).unwrap();
        let flushed = r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#;
        let at = text.find(flushed).expect("a flush delta");
        let stop = text.find("event: content_block_stop").unwrap();
        assert!(at < stop && !text[at..stop].contains("\n\nevent"), "{text}");
    }

    #[test]
    fn a_stream_without_secrets_on_word_boundaries_is_byte_identical() {
        // Deltas end on spaces and punctuation, which cannot start a keyword: nothing held.
        let blocks = vec![
            block("text", &["Here is how ", "the parser works: ", "it reads ", "then builds a tree.\n"]),
            TestBlock { kind: "tool_use", pieces: vec![r#"{"path": "#.into(), r#""src/main.rs", "#.into(), r#""lines": 20}"#.into()] },
        ];
        for eol in ["\n", "\r\n"] {
            let input = stream(&blocks, eol);
            for i in 0..=input.len() {
                let (out, hits) = rewrite(&[&input[..i], &input[i..]], ThinkingMode::Mask);
                assert_eq!(out, input, "split at {i}");
                assert!(hits.is_empty());
            }
        }
    }

    #[test]
    fn unknown_events_comments_and_signatures_pass_byte_for_byte() {
        let input = concat!(
            ": keep-alive\n\n",
            "event: future_thing\ndata: {\"type\":\"future_thing\",\"x\":  [1]}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"AKIA\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"citations_delta\",\"citation\":{}}}\n\n",
            "event: error\ndata: {\"type\": \"error\", \"error\": {\"type\": \"overloaded_error\", \"message\": \"Overloaded\"}}\n\n",
        );
        let (out, _) = rewrite(&[input.as_bytes()], ThinkingMode::Mask);
        assert_eq!(String::from_utf8(out).unwrap(), input);
    }

    #[test]
    fn a_changed_delta_keeps_its_other_fields_and_order() {
        let input = format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"k {} ok\\n\",\"extra\":1}},\"z\":2}}\n\n",
            aws()
        );
        let (out, _) = rewrite(&[input.as_bytes()], ThinkingMode::Mask);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"k [REDACTED:aws-access-key-id] ok\\n\",\"extra\":1},\"z\":2}\n\n"
        );
    }

    #[test]
    fn text_in_content_block_start_is_part_of_the_block() {
        let input = format!(
            "data: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"id {}\"}}}}\n\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n",
            &aws()[..9]
        );
        let (out, _) = rewrite(&[input.as_bytes()], ThinkingMode::Mask);
        let got = reassemble(&out);
        assert_eq!(got[0].1, builtin().mask(&format!("id {}", &aws()[..9])).text);
        assert!(String::from_utf8(out).unwrap().contains(r#""content_block":{"type":"text","text":"id "}"#));
    }

    #[test]
    fn malformed_streams_are_errors_and_stay_failed() {
        let mut r = StreamRewriter::new(builtin(), ThinkingMode::Mask);
        assert!(matches!(r.push(b"event: x\ndata: {not json\n\n"), Err(StreamError::InvalidEvent { .. })));
        assert_eq!(r.push(b"data: {}\n\n"), Err(StreamError::Failed));

        let mut r = StreamRewriter::new(builtin(), ThinkingMode::Mask);
        assert_eq!(r.push(b"data: {\"type\":\"ping\"}\n\ndata: {\"type\"").unwrap(), b"data: {\"type\":\"ping\"}\n\n");
        assert_eq!(r.finish(), Err(StreamError::Truncated));

        let bad_escape = r#"data: {"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"a\": \"\\x"}}"#;
        let mut r = StreamRewriter::new(builtin(), ThinkingMode::Mask);
        assert!(matches!(r.push(format!("{bad_escape}\n\n").as_bytes()), Err(StreamError::InvalidToolInput { index: 0, .. })));

        let no_index = r#"data: {"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#;
        let mut r = StreamRewriter::new(builtin(), ThinkingMode::Mask);
        assert!(matches!(r.push(format!("{no_index}\n\n").as_bytes()), Err(StreamError::InvalidEvent { .. })));
    }

    #[test]
    fn a_stream_cut_off_mid_block_releases_what_it_held_at_finish() {
        let mut r = StreamRewriter::new(builtin(), ThinkingMode::Mask);
        let delta = |t: &str| format!("data: {}\n\n", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}}));
        let mut out = r.push(delta("id ").as_bytes()).unwrap();
        out.extend(r.push(delta(&aws()).as_bytes()).unwrap());
        out.extend(r.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("[REDACTED:aws-access-key-id]") && !text.contains(&aws()), "{text}");
    }

    #[test]
    fn thinking_mode_is_snake_case_and_defaults_to_mask() {
        assert_eq!(serde_json::from_str::<ThinkingMode>("\"pass\"").unwrap(), ThinkingMode::Pass);
        assert_eq!(serde_json::to_string(&ThinkingMode::Mask).unwrap(), "\"mask\"");
        assert_eq!(ThinkingMode::default(), ThinkingMode::Mask);
    }

    /// An OpenAI chat-completions stream: choice 0 streams `content` pieces, then tool-call
    /// argument pieces; the last chunk sets `finish_reason` (carrying `last` as content when
    /// given), then `[DONE]`.
    fn openai_stream(content: &[String], args: &[String], last: Option<&str>, eol: &str) -> Vec<u8> {
        let mut s = String::new();
        let mut chunk = |delta: Value, finish: Value| {
            let v = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
            s.push_str(&format!("data: {v}{eol}{eol}"));
        };
        chunk(json!({"role": "assistant", "content": ""}), Value::Null);
        for p in content {
            chunk(json!({"content": p}), Value::Null);
        }
        if !args.is_empty() {
            chunk(json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "run", "arguments": ""}}]}), Value::Null);
        }
        for p in args {
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}), Value::Null);
        }
        chunk(last.map_or(json!({}), |l| json!({"content": l})), json!("stop"));
        s.push_str(&format!("data: [DONE]{eol}{eol}"));
        s.into_bytes()
    }

    /// Content and arguments as a client reassembles them; checks that nothing follows the
    /// choice's `finish_reason` or `[DONE]`.
    fn openai_reassemble(out: &[u8]) -> Result<(String, String), String> {
        let mut f = SseFramer::new();
        let events = f.push(out);
        if !f.finish().is_empty() {
            return Err("output ends inside an event".into());
        }
        let (mut content, mut args, mut finished, mut done) = (String::new(), String::new(), false, false);
        for ev in events {
            let Some(data) = ev.data else { continue };
            if done {
                return Err(format!("data after [DONE]: {data}"));
            }
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
            let c = &v["choices"][0];
            let piece = c["delta"]["content"].as_str().unwrap_or("").to_string()
                + c["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or("");
            if finished && !piece.is_empty() {
                return Err(format!("text after finish_reason: {data}"));
            }
            content.push_str(c["delta"]["content"].as_str().unwrap_or(""));
            args.push_str(c["delta"]["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or(""));
            finished |= !c["finish_reason"].is_null();
        }
        Ok((content, args))
    }

    /// Name, content pieces, tool-call argument pieces, content of the finishing chunk.
    type OpenAiCase = (&'static str, Vec<String>, Vec<String>, Option<String>);

    fn openai_cases() -> Vec<OpenAiCase> {
        let key = aws();
        let five: Vec<String> = ["Key ", &key[..3], &key[3..7], &key[7..12], &key[12..18], &key[18..], " here.\n"].map(String::from).to_vec();
        vec![
            ("content_in_five_pieces", five, vec![], None),
            ("held_content_then_finish_without_content", vec!["id ".into(), key.clone()], vec![], None),
            ("held_content_then_finish_with_content", vec!["id ".into(), key[..6].into()], vec![], Some(key[6..].to_string())),
            ("tool_arguments_split_mid_escape", vec!["Running.".into()], pieces_of(&tool_input(&key), 7), None),
        ]
    }

    fn openai_check(case: &OpenAiCase, out: &[u8]) -> Result<(), String> {
        let (_, content, args, last) = case;
        let (got_content, got_args) = openai_reassemble(out)?;
        let whole = content.concat() + last.as_deref().unwrap_or("");
        if got_content != builtin().mask(&whole).text {
            return Err(format!("content {got_content:?} from {whole:?}"));
        }
        if !args.is_empty() {
            let want = mask_strings(&serde_json::from_str(&args.concat()).unwrap());
            let got: Value = serde_json::from_str(&got_args).map_err(|e| format!("{e}: {got_args}"))?;
            if got != want {
                return Err(format!("arguments {got} != {want}"));
            }
        }
        Ok(())
    }

    fn openai_rewrite(chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = StreamRewriter::openai_chat(builtin());
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c).unwrap());
        }
        out.extend(r.finish().unwrap());
        out
    }

    #[test]
    fn openai_chat_stream_reassembles_to_the_whole_text_masked_at_every_split() {
        for case in openai_cases() {
            let input = openai_stream(&case.1, &case.2, case.3.as_deref(), "\n");
            for i in 0..=input.len() {
                let out = openai_rewrite(&[&input[..i], &input[i..]]);
                openai_check(&case, &out).unwrap_or_else(|e| panic!("case {}, split at {i}: {e}", case.0));
            }
            let out = openai_rewrite(&input.chunks(1).collect::<Vec<_>>());
            openai_check(&case, &out).unwrap_or_else(|e| panic!("case {}, 1-byte chunks: {e}", case.0));
        }
    }

    #[test]
    fn openai_chat_stream_without_secrets_is_byte_identical() {
        let content = ["Hello, ", "world. ", "Nothing to hide.\n"].map(String::from);
        let input = openai_stream(&content, &[], None, "\r\n");
        assert_eq!(openai_rewrite(&[&input]), input);
    }

    #[test]
    fn openai_chat_hits_count_content_and_arguments() {
        let case = &openai_cases()[3];
        let input = openai_stream(&case.1, &case.2, None, "\n");
        let mut r = StreamRewriter::openai_chat(builtin());
        r.push(&input).unwrap();
        r.finish().unwrap();
        assert_eq!(r.hits(), vec![("aws-access-key-id".to_string(), 2)]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        // Whatever the layout match reads, a JSON parser reads the same; and any text in the
        // API's layout (compact or spaced) is read back exactly.
        #[test]
        fn the_layout_match_reads_what_a_parser_reads(
            text in "(\\PC|[\"\\\\\n\t\u{1}/]){0,24}",
            index in 0u64..1000,
            spaced in any::<bool>(),
            kind in 0usize..3,
            damage in proptest::option::of((0usize..200, "[ {}\",:\\\\0-9a-z]{0,2}")),
        ) {
            let (delta_type, field) = [("text_delta", "text"), ("thinking_delta", "thinking"), ("input_json_delta", "partial_json")][kind];
            let token = serde_json::to_string(&text).unwrap();
            let mut data = format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"{delta_type}","{field}":{token}}}}}"#);
            if spaced {
                data = data.replace("\":", "\": ").replace(",\"", ", \"");
            }
            let mut decoded = String::new();
            if damage.is_none() && !spaced {
                let d = canonical_delta(&data, &mut decoded).expect("the API's layout is read");
                prop_assert_eq!((d.index, d.piece.unwrap_or(&decoded)), (index, text.as_str()));
            }
            if let Some((at, insert)) = damage {
                let mut at = at.min(data.len());
                while !data.is_char_boundary(at) {
                    at -= 1;
                }
                data.insert_str(at, &insert);
            }
            if let Some(d) = canonical_delta(&data, &mut decoded) {
                let v: Value = serde_json::from_str(&data).expect("what the layout match reads is JSON");
                prop_assert_eq!(v["type"].as_str(), Some("content_block_delta"));
                prop_assert_eq!(v["index"].as_u64(), Some(d.index));
                prop_assert_eq!(v["delta"]["type"].as_str(), Some(d.kind.delta_type()));
                prop_assert_eq!(v["delta"][d.kind.field()].as_str(), Some(d.piece.unwrap_or(&decoded)));
                prop_assert_eq!(v.as_object().map(|o| o.len()), Some(3));
                prop_assert_eq!(v["delta"].as_object().map(|o| o.len()), Some(2));
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_network_splits_reassemble_to_the_whole_text_masked(
            case in 0usize..9,
            cuts in proptest::collection::vec(0usize..100_000, 0..24),
            crlf in any::<bool>(),
        ) {
            let cases = big_cases();
            let (name, blocks) = &cases[case % cases.len()];
            let input = stream(blocks, if crlf { "\r\n" } else { "\n" });
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.extend([0, input.len()]);
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            let (out, _) = rewrite(&chunks, ThinkingMode::Mask);
            prop_assert!(check(blocks, &out, ThinkingMode::Mask).is_ok(), "case {}: {:?}", name, check(blocks, &out, ThinkingMode::Mask));
        }

        #[test]
        fn random_delta_fragmentation_of_text_and_tool_input_masks_like_whole(
            parts in proptest::collection::vec(0usize..10, 1..16),
            cuts in proptest::collection::vec(0usize..10_000, 0..20),
        ) {
            let fragments = [
                "token".to_string(), " = ".into(), "\"".into(), "\\".into(), "\n".into(), "é🎉".into(),
                aws(), ant(), "AKIA".into(), "sk-ant-".into(),
            ];
            let text: String = parts.iter().map(|&p| fragments[p].as_str()).collect();
            // The same text twice: as serde_json writes it, and with every character a
            // `\uXXXX` escape (UTF-16, so surrogate pairs too), as some encoders write it.
            let escaped: String = text.encode_utf16().map(|u| format!("\\u{u:04x}")).collect();
            let tool = format!(r#"{{"cmd": {}, "escaped": "{escaped}"}}"#, serde_json::to_string(&text).unwrap());
            let split = |s: &str| {
                let bounds: Vec<usize> = (0..=s.len()).filter(|&i| s.is_char_boundary(i)).collect();
                let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
                points.extend([0, s.len()]);
                points.sort_unstable();
                points.dedup();
                points.windows(2).map(|w| s[w[0]..w[1]].to_string()).collect::<Vec<_>>()
            };
            let blocks = vec![
                TestBlock { kind: "text", pieces: split(&text) },
                TestBlock { kind: "tool_use", pieces: split(&tool) },
            ];
            let input = stream(&blocks, "\n");
            let (out, _) = rewrite(&input.chunks(13).collect::<Vec<_>>(), ThinkingMode::Mask);
            prop_assert!(check(&blocks, &out, ThinkingMode::Mask).is_ok(), "{:?}", check(&blocks, &out, ThinkingMode::Mask));
        }

        #[test]
        fn random_splits_of_openai_chat_streams_reassemble_to_the_whole_text_masked(
            case in 0usize..4,
            cuts in proptest::collection::vec(0usize..100_000, 0..24),
            crlf in any::<bool>(),
        ) {
            let case = &openai_cases()[case];
            let input = openai_stream(&case.1, &case.2, case.3.as_deref(), if crlf { "\r\n" } else { "\n" });
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
            points.extend([0, input.len()]);
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&[u8]> = points.windows(2).map(|w| &input[w[0]..w[1]]).collect();
            let out = openai_rewrite(&chunks);
            prop_assert!(openai_check(case, &out).is_ok(), "case {}: {:?}", case.0, openai_check(case, &out));
        }
    }
}
