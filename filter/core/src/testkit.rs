//! Masking test cases and checks shared by the native unit tests and the wasm tests
//! (`tests/wasm.rs`, run as wasm32-unknown-unknown under Node): one implementation, so the
//! 32-bit build runs exactly the checks the native build runs. Not part of the API: compiled
//! for this crate's own tests and with the `testkit` feature only.
//!
//! Every check panics with the failing case's name (and split point) on the first mismatch.

use crate::rules::RuleSet;
use std::sync::{Arc, OnceLock};

/// The built-in rules, compiled once per process.
pub fn builtin() -> Arc<RuleSet> {
    static SET: OnceLock<Arc<RuleSet>> = OnceLock::new();
    SET.get_or_init(|| Arc::new(RuleSet::builtin().expect("built-in rules compile"))).clone()
}

/// Every built-in rule's examples (`filter/rules/builtin.toml`), expanded by
/// [`crate::rules::expand_example`].
pub mod examples {
    use crate::rules::{builtin_raw_rules, expand_example, RuleSet};
    use std::borrow::Cow;

    /// Every positive example is masked by its own rule.
    pub fn check_positive_masked(set: &RuleSet) {
        let mut failures = Vec::new();
        for raw in builtin_raw_rules().unwrap() {
            assert!(!raw.examples.positive.is_empty(), "rule {} has no positive example", raw.id);
            for ex in &raw.examples.positive {
                let text = expand_example(ex);
                let m = set.mask(&text);
                if !m.hits.iter().any(|(id, _)| *id == raw.id) {
                    failures.push(format!("{}: not masked by its rule: {text:?} -> {:?}", raw.id, m.text));
                }
            }
        }
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }

    /// Every negative example comes back untouched (borrowed, not even copied).
    pub fn check_negative_untouched(set: &RuleSet) {
        let mut failures = Vec::new();
        for raw in builtin_raw_rules().unwrap() {
            for ex in &raw.examples.negative {
                let text = expand_example(ex);
                let m = set.mask(&text);
                if !matches!(m.text, Cow::Borrowed(_)) {
                    failures.push(format!("{}: {text:?} -> {:?} {:?}", raw.id, m.text, m.hits));
                }
            }
        }
        assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    }
}

/// The streaming masker ([`crate::stream_mask`]) against one-shot masking.
pub mod stream_mask {
    use crate::rules::{expand_example, RuleSet};
    use crate::stream_mask::StreamMasker;
    use std::sync::Arc;

    /// Named cases: each is masked whole and through every buffering mode below.
    pub fn cases() -> Vec<(&'static str, String)> {
        let c = |name, t: &str| (name, expand_example(t));
        vec![
            c("empty", ""),
            c("prose", "Here is how the parser works: it reads tokens, then builds a tree. Ask me anything.\n"),
            c("non_ascii_prose", "Grüße — 日本語のテキスト, emoji 🎉 and the word token without a value.\n"),
            c("aws_key_id_in_code", "const id = \"AKIA{{fake:upperb32:16}}\";\nconst next = 1;\n"),
            c("aws_pair", "aws_access_key_id = AKIA{{fake:upperb32:16}}\naws_secret_access_key = {{fake:b64:40}}\n"),
            c("anthropic_key_no_newline", "export ANTHROPIC_API_KEY=sk-ant-api03-{{fake:b64url:93}}AA"),
            c("two_tokens_one_line", "a=ghp_{{fake:alnum:36}} b=glpat-{{fake:b64url:20}} done"),
            c("generic_env", "DB_PASSWORD={{fake:alnum:18}}\nAPI_TOKEN={{fake:alnum:32}}\nDEBUG=true\n"),
            c("json_body", "{\"password\": \"{{fake:alnum:16}}\", \"user\": \"admin\", \"api_key\": \"{{fake:b64url:40}}\"}"),
            c("placeholder_left_alone", "password: ${DB_PASSWORD}\napi_key = YOUR_API_KEY\n"),
            c("db_url", "DATABASE_URL=postgres://app:{{fake:alnum:20}}@db.internal:5432/app\n"),
            c("pem_block_then_prose", "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA{{fake:b64:48}}\n{{fake:b64:64}}\n{{fake:b64:64}}\n-----END RSA PRIVATE KEY-----\nand some prose after it.\n"),
            c("pem_block_unterminated", "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA{{fake:b64:46}}\n{{fake:b64:70}}\n"),
            c("jwt_in_header", "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJ{{fake:b64url:40}}.{{fake:b64url:43}}\n"),
            c("mailchimp_keyword_after_secret", "key {{fake:hex:32}}-us21 end"),
            c("keyword_at_end_without_value", "please rotate the token"),
            c("crlf_lines", "password = {{fake:alnum:14}}\r\nnext line\r\n"),
            c("adjacent_keywords", "tokentokentoken secret= password=: sk-ant-"),
            c("placeholders_are_stable", "token = [REDACTED:generic-token]\n"),
        ]
    }

    /// Pushes `chunks` through a fresh masker (checking the hold-back bound after each) and
    /// finishes it.
    pub fn stream(set: &Arc<RuleSet>, chunks: &[&str]) -> String {
        let mut m = StreamMasker::new(set.clone());
        let mut out = String::new();
        for c in chunks {
            out.push_str(&m.push(c));
            assert!(m.held() <= set.max_hold_back(), "held {} bytes", m.held());
        }
        out + &m.finish()
    }

    pub fn char_splits(text: &str) -> Vec<usize> {
        (0..=text.len()).filter(|&i| text.is_char_boundary(i)).collect()
    }

    pub fn check_whole_text_in_one_push(set: &Arc<RuleSet>, cases: &[(&str, String)]) {
        for (name, text) in cases {
            assert_eq!(stream(set, &[text.as_str()]), set.mask(text).text, "case {name}");
        }
    }

    pub fn check_every_two_way_split(set: &Arc<RuleSet>, cases: &[(&str, String)]) {
        for (name, text) in cases {
            let want = set.mask(text).text.into_owned();
            for i in char_splits(text) {
                assert_eq!(stream(set, &[&text[..i], &text[i..]]), want, "case {name}, split at {i}");
            }
        }
    }

    pub fn check_one_character_chunks(set: &Arc<RuleSet>, cases: &[(&str, String)]) {
        for (name, text) in cases {
            let want = set.mask(text).text.into_owned();
            let bounds = char_splits(text);
            let chunks: Vec<&str> = bounds.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            assert_eq!(stream(set, &chunks), want, "case {name}");
        }
    }
}

/// The SSE stream rewriter ([`crate::anthropic_stream`]): a client's reassembled blocks
/// against masking each block's whole text at once.
pub mod anthropic_stream {
    use super::builtin;
    use crate::anthropic_stream::{StreamRewriter, ThinkingMode};
    use crate::rules::expand_example;
    use crate::sse::SseFramer;
    use serde_json::{json, Value};

    /// One content block of a test stream: its type and the pieces its deltas carry (for
    /// `tool_use`, fragments of the input's JSON text).
    #[derive(Debug, Clone)]
    pub struct TestBlock {
        pub kind: &'static str,
        pub pieces: Vec<String>,
    }

    pub fn block(kind: &'static str, pieces: &[&str]) -> TestBlock {
        TestBlock { kind, pieces: pieces.iter().map(|p| p.to_string()).collect() }
    }

    /// Cuts `text` into pieces of at most `n` characters.
    pub fn pieces_of(text: &str, n: usize) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        chars.chunks(n).map(|c| c.iter().collect()).collect()
    }

    /// A stream shaped like the API's: message_start, a ping, each block (start, deltas,
    /// a signature for thinking, stop), message_delta, message_stop.
    pub fn stream(blocks: &[TestBlock], eol: &str) -> Vec<u8> {
        let mut s = String::new();
        let mut ev = |name: &str, data: Value| {
            s.push_str(&format!("event: {name}{eol}data: {data}{eol}{eol}"));
        };
        ev("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude", "stop_reason": null, "usage": {"input_tokens": 3, "output_tokens": 1}}}));
        ev("ping", json!({"type": "ping"}));
        for (i, b) in blocks.iter().enumerate() {
            let (start, delta, field) = match b.kind {
                "text" => (json!({"type": "text", "text": ""}), "text_delta", "text"),
                "thinking" => (json!({"type": "thinking", "thinking": "", "signature": ""}), "thinking_delta", "thinking"),
                _ => (json!({"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}), "input_json_delta", "partial_json"),
            };
            ev("content_block_start", json!({"type": "content_block_start", "index": i, "content_block": start}));
            for p in &b.pieces {
                ev("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": delta, field: p}}));
            }
            if b.kind == "thinking" {
                ev("content_block_delta", json!({"type": "content_block_delta", "index": i, "delta": {"type": "signature_delta", "signature": "c2lnbmF0dXJl"}}));
            }
            ev("content_block_stop", json!({"type": "content_block_stop", "index": i}));
        }
        ev("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 20}}));
        ev("message_stop", json!({"type": "message_stop"}));
        s.into_bytes()
    }

    pub fn rewrite(chunks: &[&[u8]], thinking: ThinkingMode) -> (Vec<u8>, Vec<(String, usize)>) {
        let mut r = StreamRewriter::new(builtin(), thinking);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c).unwrap());
        }
        out.extend(r.finish().unwrap());
        (out, r.hits())
    }

    /// What a client reassembles: per block, its type and text (start text plus deltas).
    /// Checks on the way that the output is valid SSE and JSON and has no empty delta.
    pub fn reassemble(out: &[u8]) -> Vec<(String, String)> {
        let mut f = SseFramer::new();
        let mut events = f.push(out);
        assert!(f.finish().is_empty(), "output ends inside an event");
        let mut blocks: Vec<(String, String)> = Vec::new();
        for ev in events.drain(..) {
            let Some(data) = ev.data else { continue };
            let v: Value = serde_json::from_str(&data).expect("output data is json");
            match v["type"].as_str().unwrap() {
                "content_block_start" => {
                    assert_eq!(v["index"].as_u64().unwrap() as usize, blocks.len());
                    let b = &v["content_block"];
                    let kind = b["type"].as_str().unwrap().to_string();
                    let text = b.get("text").or(b.get("thinking")).and_then(Value::as_str).unwrap_or("");
                    blocks.push((kind, text.to_string()));
                }
                "content_block_delta" => {
                    let d = &v["delta"];
                    let text = match d["type"].as_str().unwrap() {
                        "text_delta" => &d["text"],
                        "thinking_delta" => &d["thinking"],
                        "input_json_delta" => &d["partial_json"],
                        _ => continue,
                    };
                    let text = text.as_str().unwrap();
                    assert!(!text.is_empty(), "empty delta: {data}");
                    blocks[v["index"].as_u64().unwrap() as usize].1.push_str(text);
                }
                _ => {}
            }
        }
        blocks
    }

    /// Every string (keys included) of a JSON value, masked whole.
    pub fn mask_strings(v: &Value) -> Value {
        let m = |s: &str| builtin().mask(s).text.into_owned();
        match v {
            Value::String(s) => Value::String(m(s)),
            Value::Array(a) => Value::Array(a.iter().map(mask_strings).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (m(k), mask_strings(v))).collect()),
            v => v.clone(),
        }
    }

    /// Checks the reassembled output against masking each block's whole text at once.
    pub fn check(blocks: &[TestBlock], out: &[u8], thinking: ThinkingMode) -> Result<(), String> {
        let got = reassemble(out);
        if got.len() != blocks.len() {
            return Err(format!("{} blocks, expected {}", got.len(), blocks.len()));
        }
        for (i, (b, (kind, text))) in blocks.iter().zip(&got).enumerate() {
            let whole = b.pieces.concat();
            let ok = match b.kind {
                "tool_use" => {
                    let want = mask_strings(&serde_json::from_str(&whole).unwrap());
                    serde_json::from_str::<Value>(text).map_err(|e| format!("block {i}: {e}: {text}"))? == want
                }
                "thinking" if thinking == ThinkingMode::Pass => *text == whole,
                _ => *text == builtin().mask(&whole).text,
            };
            if !ok || kind != b.kind {
                return Err(format!("block {i} ({kind}): got {text:?} from {whole:?}"));
            }
        }
        Ok(())
    }

    pub fn aws() -> String {
        expand_example("AKIA{{fake:upperb32:16}}")
    }

    pub fn ant() -> String {
        expand_example("sk-ant-api03-{{fake:b64url:93}}AA")
    }

    /// Tool input whose strings hold escapes, non-ASCII (escaped and raw), a surrogate pair,
    /// a secret right after an escaped quote and a secret in a key.
    pub fn tool_input(secret: &str) -> String {
        format!(
            r#"{{"command": "export K=\"{secret}\"\n echo \u00e9\ud83c\udf89 é \\ \/", "n": [1, true, null], "k\u0041 {}": "v"}}"#,
            aws()
        )
    }

    /// Named streams; each is checked whole, at every split point, in 1-byte chunks. Kept
    /// small: every split point reruns the whole stream (quadratic in a debug build).
    pub fn cases() -> Vec<(&'static str, Vec<TestBlock>)> {
        let key = aws();
        let aws_in_5 = [&key[..3], &key[3..7], &key[7..12], &key[12..18], &key[18..]];
        vec![
            ("aws_key_in_five_deltas", vec![block("text", &["Your key is ", aws_in_5[0], aws_in_5[1], aws_in_5[2], aws_in_5[3], aws_in_5[4], " — rotate it.\n"])]),
            ("prose", vec![block("text", &["Here is how ", "the parser works: ", "it reads tokens, ", "then builds a tree.\n"])]),
            ("secret_at_block_end", vec![block("text", &["id ", &key[..10], &key[10..]])]),
            // 3-character fragments: escapes and `\uXXXX` are split at every offset somewhere.
            ("tool_input_split_mid_escape", vec![block("text", &["Running it."]), TestBlock { kind: "tool_use", pieces: pieces_of(&tool_input(&key), 3) }]),
            ("tool_input_whole", vec![TestBlock { kind: "tool_use", pieces: vec![tool_input(&ant())] }]),
            ("thinking_then_text", vec![
                TestBlock { kind: "thinking", pieces: pieces_of(&format!("The user pasted {} into the file.", ant()), 16) },
                block("text", &["Don't commit ", &key[..4], &key[4..], ".\n"]),
            ]),
            ("multi_line_pem_across_deltas", vec![TestBlock { kind: "text", pieces: pieces_of(&expand_example(
                "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA{{fake:b64:48}}\n{{fake:b64:64}}\n-----END RSA PRIVATE KEY-----\ndone\n"), 23) }]),
        ]
    }

    /// The stream of `blocks` rewritten whole, split in two at every byte, and in 1-byte
    /// chunks: each output reassembles to every block's whole text masked.
    pub fn all_splits(name: &str, blocks: &[TestBlock], eol: &str, thinking: ThinkingMode) {
        let input = stream(blocks, eol);
        let (whole, _) = rewrite(&[&input], thinking);
        check(blocks, &whole, thinking).unwrap_or_else(|e| panic!("case {name}, whole: {e}"));
        for i in 0..=input.len() {
            let (out, _) = rewrite(&[&input[..i], &input[i..]], thinking);
            check(blocks, &out, thinking).unwrap_or_else(|e| panic!("case {name}, split at {i}: {e}"));
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (out, _) = rewrite(&bytes, thinking);
        check(blocks, &out, thinking).unwrap_or_else(|e| panic!("case {name}, 1-byte chunks: {e}"));
    }
}
