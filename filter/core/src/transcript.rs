//! What the client saw: rebuilds the response (blocks, stop reason, usage, model) from the
//! bytes the filter sent on, streamed or whole, for the audit record. Reads only; it never
//! changes a byte, and it reads the masked output (for a streamed delta, the text the stream
//! rewriter wrote into it, taken as it was written rather than read back), so it can only
//! hold what the client got.

use crate::audit::{AuditResponse, ResponseBlock, Usage};
use crate::anthropic_stream::{canonical_delta, Written};
#[cfg(doc)]
use crate::anthropic_stream::StreamRewriter;
use crate::sse::SseFramer;
use serde_json::Value;
use std::convert::Infallible;

/// Accumulates one response.
#[derive(Debug, Default)]
pub struct Transcript {
    framer: SseFramer,
    blocks: Vec<(usize, ResponseBlock)>,
    stop_reason: Option<String>,
    usage: Option<Usage>,
    model: Option<String>,
    /// Bytes of text kept; text past this is dropped and `cut` is set.
    limit: usize,
    kept: usize,
    pub cut: bool,
    /// Reused for deltas whose text has escapes.
    decoded: String,
}

fn usage_from(v: &Value, into: &mut Usage) {
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    if let Some(x) = n("input_tokens") {
        into.input_tokens = x;
    }
    if let Some(x) = n("output_tokens") {
        into.output_tokens = x;
    }
    if let Some(x) = n("cache_read_input_tokens") {
        into.cache_read_input_tokens = x;
    }
    if let Some(x) = n("cache_creation_input_tokens") {
        into.cache_creation_input_tokens = x;
    }
}

fn block_from(v: &Value) -> ResponseBlock {
    let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let kind = s("type").unwrap_or_default();
    let text = match kind.as_str() {
        "text" => s("text").unwrap_or_default(),
        "thinking" => s("thinking").unwrap_or_default(),
        "tool_use" | "server_tool_use" => match v.get("input") {
            // A streamed tool block starts with `{}` and receives its input as deltas.
            Some(Value::Object(m)) if m.is_empty() => String::new(),
            Some(input) => input.to_string(),
            None => String::new(),
        },
        _ => String::new(),
    };
    ResponseBlock { kind, text, name: s("name"), id: s("id") }
}

impl Transcript {
    /// `limit`: most bytes of block text kept (the audit record has a size cap anyway).
    pub fn new(limit: usize) -> Self {
        Transcript { limit, ..Default::default() }
    }

    fn append(&mut self, index: usize, piece: &str) {
        let room = self.limit.saturating_sub(self.kept);
        if piece.len() > room {
            self.cut = true;
        }
        let mut take = piece.len().min(room);
        while !piece.is_char_boundary(take) {
            take -= 1;
        }
        self.kept += take;
        if let Some((_, b)) = self.blocks.iter_mut().find(|(i, _)| *i == index) {
            b.text.push_str(&piece[..take]);
        }
    }

    /// Feeds streamed (SSE) bytes as sent to the client.
    pub fn push_stream(&mut self, bytes: &[u8]) {
        let mut framer = std::mem::take(&mut self.framer);
        let read: Result<(), Infallible> = framer.push_each(bytes, |event| {
            if let Some(data) = event.data.as_deref() {
                self.event(data);
            }
            Ok(())
        });
        let Ok(()) = read;
        self.framer = framer;
    }

    /// Feeds what a stream rewriter wrote (see [`StreamRewriter::written`]): the text of a
    /// delta it wrote, or events to read as [`Self::push_stream`] does.
    pub fn push_written(&mut self, written: Written<'_>) {
        match written {
            Written::Text { index, text } => self.append(index as usize, text),
            Written::Events(bytes) => self.push_stream(bytes),
        }
    }

    fn event(&mut self, data: &str) {
        // Most events are deltas in the API's layout: read without building a value.
        let mut decoded = std::mem::take(&mut self.decoded);
        if let Some(delta) = canonical_delta(data, &mut decoded) {
            self.append(delta.index as usize, delta.piece.unwrap_or(&decoded));
            self.decoded = decoded;
            return;
        }
        self.decoded = decoded;
        let Ok(v) = serde_json::from_str::<Value>(data) else { return };
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = &v["message"];
                self.model = m.get("model").and_then(Value::as_str).map(str::to_string);
                let mut u = Usage::default();
                usage_from(&m["usage"], &mut u);
                self.usage = Some(u);
            }
            Some("content_block_start") => {
                self.blocks.push((index, block_from(&v["content_block"])));
            }
            Some("content_block_delta") => {
                let d = &v["delta"];
                let piece = ["text", "thinking", "partial_json"]
                    .iter()
                    .find_map(|k| d.get(*k).and_then(Value::as_str));
                if let Some(piece) = piece {
                    self.append(index, piece);
                }
            }
            Some("message_delta") => {
                if let Some(r) = v["delta"].get("stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(r.to_string());
                }
                let mut u = self.usage.unwrap_or_default();
                usage_from(&v["usage"], &mut u);
                self.usage = Some(u);
            }
            _ => {}
        }
    }

    /// Reads a whole (non-streamed) Message body as sent to the client.
    pub fn read_message(&mut self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(body) else { return };
        self.model = v.get("model").and_then(Value::as_str).map(str::to_string);
        self.stop_reason = v.get("stop_reason").and_then(Value::as_str).map(str::to_string);
        if v.get("usage").is_some() {
            let mut u = Usage::default();
            usage_from(&v["usage"], &mut u);
            self.usage = Some(u);
        }
        if let Some(blocks) = v.get("content").and_then(Value::as_array) {
            for (i, b) in blocks.iter().enumerate() {
                let mut block = block_from(b);
                let text = std::mem::take(&mut block.text);
                self.blocks.push((i, block));
                self.append(i, &text);
            }
        }
    }

    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// The response, or `None` when no message was seen (an error reply, say).
    pub fn response(&self) -> Option<AuditResponse> {
        if self.blocks.is_empty() && self.stop_reason.is_none() {
            return None;
        }
        Some(AuditResponse {
            blocks: self.blocks.iter().map(|(_, b)| b.clone()).collect(),
            stop_reason: self.stop_reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-x\",\"usage\":{\"input_tokens\":12,\"output_tokens\":1,\"cache_read_input_tokens\":3}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"lo\"}}\n\n",
        // Another key order: read through a parsed value.
        "event: content_block_delta\ndata: {\"delta\":{\"text\":\" \\\"w\\\"\",\"type\":\"text_delta\"},\"index\":0,\"type\":\"content_block_delta\"}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"Bash\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"cmd\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"ls\\\"}\"}}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn streamed_response_is_rebuilt_at_any_chunking() {
        for size in [1, 7, STREAM.len()] {
            let mut t = Transcript::new(1 << 20);
            for chunk in STREAM.as_bytes().chunks(size) {
                t.push_stream(chunk);
            }
            let r = t.response().unwrap();
            assert_eq!(r.blocks[0].text, "Hello \"w\"");
            assert_eq!(r.blocks[1].text, r#"{"cmd":"ls"}"#);
            assert_eq!(r.blocks[1].name.as_deref(), Some("Bash"));
            assert_eq!(r.stop_reason.as_deref(), Some("tool_use"));
            let u = t.usage().unwrap();
            assert_eq!((u.input_tokens, u.output_tokens, u.cache_read_input_tokens), (12, 9, 3));
            assert_eq!(t.model(), Some("claude-x"));
        }
    }

    #[test]
    fn what_a_rewriter_reports_it_wrote_rebuilds_what_reading_its_output_does() {
        use crate::anthropic_stream::{StreamRewriter, ThinkingMode};
        use crate::rules::{expand_example, RuleSet};
        use std::sync::Arc;
        let rules = Arc::new(RuleSet::builtin().unwrap());
        let key = expand_example("AKIA{{fake:upperb32:16}}");
        let mut stream = String::from(STREAM.split("event: message_stop").next().unwrap());
        for (i, piece) in ["the key is ", &key[..5], &key[5..], " and\nthe token ", "= \"x\" ok"].iter().enumerate() {
            let text = serde_json::to_string(piece).unwrap();
            let delta = format!("{{\"type\":\"content_block_delta\",\"index\":{},\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}", if i == 3 { 2 } else { 0 });
            stream += &format!("event: content_block_delta\ndata: {delta}\n\n");
        }
        stream += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        for size in [1, 5, 64, stream.len()] {
            let mut rewriter = StreamRewriter::new(rules.clone(), ThinkingMode::Mask).recording();
            let (mut reported, mut read) = (Transcript::new(1 << 20), Transcript::new(1 << 20));
            for chunk in stream.as_bytes().chunks(size) {
                let out = rewriter.push(chunk).unwrap();
                rewriter.written(&out).for_each(|w| reported.push_written(w));
                read.push_stream(&out);
            }
            let rest = rewriter.finish().unwrap();
            reported.push_stream(&rest);
            read.push_stream(&rest);
            assert_eq!(reported.response(), read.response(), "chunks of {size}");
            assert_eq!((reported.usage(), reported.model()), (read.usage(), read.model()));
            let text = &read.response().unwrap().blocks[0].text;
            assert!(text.contains("[REDACTED:") && !text.contains(&key), "{text}");
        }
    }

    #[test]
    fn whole_message_is_read() {
        let body = br#"{"model":"m","stop_reason":"end_turn","content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"t","name":"Read","input":{"path":"/x"}}],"usage":{"input_tokens":5,"output_tokens":2}}"#;
        let mut t = Transcript::new(1 << 20);
        t.read_message(body);
        let r = t.response().unwrap();
        assert_eq!(r.blocks[0].text, "hi");
        assert_eq!(r.blocks[1].text, r#"{"path":"/x"}"#);
        assert_eq!(t.usage().unwrap().output_tokens, 2);
    }

    #[test]
    fn text_beyond_the_limit_is_cut_and_marked() {
        let mut t = Transcript::new(4);
        t.push_stream(STREAM.as_bytes());
        assert!(t.cut);
        assert_eq!(t.response().unwrap().blocks[0].text, "Hell");
    }

    #[test]
    fn error_reply_has_no_response() {
        let mut t = Transcript::new(100);
        t.read_message(br#"{"type":"error","error":{"type":"api_error","message":"x"}}"#);
        assert!(t.response().is_none());
    }
}
