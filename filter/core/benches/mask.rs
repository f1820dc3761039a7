//! Native masking throughput of the built-in rules over a deterministic, generated corpus of
//! source-like text with a secret every few KiB, and how much the streaming masker holds back
//! on that code and on prose full of generic keywords (`secret`, `token`, `password`, `key`).
//! Also: this crate's own Rust source streamed as 48-byte `text_delta` events (the shape of
//! a Claude response) through the SSE rewriter in 16 KiB network chunks, and through the
//! streaming masker alone in pushes of several sizes.
//! Prints MB/s and held bytes; run with `cargo bench`.

use scrim_core::anthropic_stream::{StreamRewriter, ThinkingMode};
use scrim_core::rules::{expand_example, RuleSet};
use scrim_core::sse::SseFramer;
use scrim_core::stream_mask::StreamMasker;
use scrim_core::transcript::Transcript;
use std::sync::Arc;
use std::time::Instant;

fn corpus(bytes: usize) -> String {
    const LINES: [&str; 12] = [
        "fn handle(req: &Request, token_cache: &mut Cache) -> Result<Response, Error> {\n",
        "    let password_hash = hash(&req.body);\n",
        "    // Look up the user's API key in the key store before checking the secret.\n",
        "    if let Some(user) = store.get(&req.user_id) { return Ok(user.into()); }\n",
        "const DEFAULT_TIMEOUT_MS: u64 = 30_000; // https://example.com/docs/timeouts\n",
        "import { createClient } from \"@supabase/supabase-js\";\n",
        "    max_tokens: 4096, temperature: 0.2, model: \"claude-sonnet\",\n",
        "The quick brown fox jumps over the lazy dog while the tokenizer counts words.\n",
        "    assert_eq!(parse(\"a=b\"), Ok((\"a\", \"b\")));\n",
        "SELECT id, name FROM users WHERE created_at > now() - interval '1 day';\n",
        "export PATH=\"$HOME/.cargo/bin:$PATH\"\n",
        "}\n",
    ];
    let secrets = [
        expand_example("API_TOKEN={{fake:alnum:32}}\n"),
        expand_example("const key = \"ghp_{{fake:alnum:36}}\";\n"),
        expand_example("DATABASE_URL=postgres://app:{{fake:alnum:20}}@db/app\n"),
        expand_example("aws_access_key_id = AKIA{{fake:upperb32:16}}\n"),
    ];
    let mut out = String::with_capacity(bytes + 256);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(LINES[(i * 7 + i / 13) % LINES.len()]);
        if i % 64 == 63 {
            out.push_str(&secrets[(i / 64) % secrets.len()]);
        }
        i += 1;
    }
    out
}

/// Claude-style prose: long paragraphs (one line each, as in a `text_delta` stream) that talk
/// about secrets, tokens, passwords and keys without containing any.
fn prose(bytes: usize) -> String {
    const SENTENCES: [&str; 10] = [
        "There are no secrets here, only plain prose about how the parser handles its input. ",
        "The tokenizer splits the text into tokens, and each token carries its byte offset. ",
        "Never store a password in the repository; keep it in the secret manager instead. ",
        "Rotate the API key every ninety days and revoke the old token once clients moved. ",
        "A private key should stay on the machine that created it, protected by a passphrase. ",
        "Secrets: the service reads them from the environment at start, not from a file. ",
        "If the token expired, the client asks for a new one with its refresh token. ",
        "The key point is that the password check runs in constant time to avoid leaks. ",
        "Your access key and secret key are shown once; copy them somewhere safe now. ",
        "Keys, tokens and credentials all follow the same rule: least privilege, short life. ",
    ];
    let mut out = String::with_capacity(bytes + 256);
    let mut i = 0usize;
    while out.len() < bytes {
        out.push_str(SENTENCES[(i * 7 + i / 11) % SENTENCES.len()]);
        if i % 8 == 7 {
            out.push_str("\n\n");
        }
        i += 1;
    }
    out
}

/// Streams `text` in `chunk`-byte pieces; returns MB/s, the largest and the mean number of
/// bytes held back after a push, and checks the output equals `want`.
fn stream(rules: &Arc<RuleSet>, text: &str, chunk: usize, want: &str) -> (f64, usize, f64) {
    let t = Instant::now();
    let mut m = StreamMasker::new(rules.clone());
    let mut out = String::with_capacity(text.len());
    let (mut max_held, mut sum_held, mut pushes) = (0, 0usize, 0usize);
    let mut at = 0;
    while at < text.len() {
        let mut end = (at + chunk).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        out.push_str(&m.push(&text[at..end]));
        max_held = max_held.max(m.held());
        sum_held += m.held();
        pushes += 1;
        at = end;
    }
    out.push_str(&m.finish());
    let s = t.elapsed().as_secs_f64();
    assert_eq!(out, want, "streaming output differs from one-shot");
    (text.len() as f64 / 1e6 / s, max_held, sum_held as f64 / pushes.max(1) as f64)
}

/// Code with a 4096-bit RSA private key block (about 3.2 KB) every 32 KiB: a multi-line
/// window stays open across the whole block.
fn key_blocks(bytes: usize) -> String {
    let mut block = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for _ in 0..50 {
        block.push_str(&expand_example("{{fake:b64:64}}\n"));
    }
    block.push_str("-----END RSA PRIVATE KEY-----\n");
    let filler = corpus(32 << 10);
    let mut out = String::with_capacity(bytes + filler.len());
    while out.len() < bytes {
        out.push_str(&filler);
        out.push_str(&block);
    }
    out
}

/// This crate's own source files, concatenated and repeated to `len` bytes: real Rust code,
/// with the keywords (`token`, `secret`, `key`, …) such code is full of.
fn source_corpus(len: usize) -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("crate sources")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "rs"))
        .collect();
    files.sort();
    let all: String = files.iter().map(|f| std::fs::read_to_string(f).expect("readable source")).collect();
    let mut text = String::with_capacity(len + all.len());
    while text.len() < len {
        text.push_str(&all);
    }
    let mut cut = len;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// An Anthropic stream carrying `text` as one text block in deltas of about `piece` bytes.
fn sse_stream(text: &str, piece: usize) -> Vec<u8> {
    use serde_json::json;
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    let mut out = ev(
        "message_start",
        json!({"type": "message_start", "message": {"id": "msg_bench", "type": "message", "role": "assistant", "model": "bench", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}}),
    );
    out += &ev(
        "content_block_start",
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    );
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + piece).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        // The layout the API writes (key order included), not `json!`'s sorted keys.
        let piece = serde_json::to_string(&text[start..end]).expect("a string encodes");
        out += &format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{piece}}}}}\n\n"
        );
        start = end;
    }
    out += &ev("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
    out += &ev(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}),
    );
    out += &ev("message_stop", json!({"type": "message_stop"}));
    out.into_bytes()
}

/// The text of block 0 as a client reassembles it from `out`.
fn reassembled_text(out: &[u8]) -> String {
    let mut f = SseFramer::new();
    let mut text = String::new();
    for ev in f.push(out).into_iter().chain(f.finish()) {
        let Some(data) = ev.data else { continue };
        let v: serde_json::Value = serde_json::from_str(&data).expect("output data is json");
        if v["type"] == "content_block_delta" && v["delta"]["type"] == "text_delta" {
            text.push_str(v["delta"]["text"].as_str().expect("text"));
        }
    }
    text
}

/// Rewrites `sse` in `chunk`-byte network chunks (best of `runs`); returns MB/s of SSE and
/// checks the client's reassembled text equals `want`.
fn rewrite(rules: &Arc<RuleSet>, sse: &[u8], chunk: usize, want: &str, runs: usize) -> f64 {
    let mut best = f64::MAX;
    for _ in 0..runs {
        let t = Instant::now();
        let mut r = StreamRewriter::new(rules.clone(), ThinkingMode::Mask);
        let mut out = Vec::with_capacity(sse.len());
        for c in sse.chunks(chunk) {
            out.extend_from_slice(&r.push(c).expect("valid stream"));
        }
        out.extend_from_slice(&r.finish().expect("complete stream"));
        best = best.min(t.elapsed().as_secs_f64());
        assert_eq!(reassembled_text(&out), want, "rewritten stream differs from one-shot");
    }
    sse.len() as f64 / 1e6 / best
}

fn main() {
    let t = Instant::now();
    let rules = Arc::new(RuleSet::builtin().expect("built-in rules compile"));
    println!("compile: {} rules in {:.1} ms", rules.len(), t.elapsed().as_secs_f64() * 1e3);
    // `cargo bench --bench mask -- src` runs only the sections whose name contains an
    // argument (for profiling one of them); no argument runs them all.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let run = |section: &str| filters.is_empty() || filters.iter().any(|f| section.contains(f.as_str()));

    if run("code") {
        let text = corpus(8 << 20);
        let mb = text.len() as f64 / 1e6;

        // The first run also fills the regexes' lazy DFAs (what a fresh VM pays once); the
        // best of the next three is the steady state.
        let t = Instant::now();
        let masked = rules.mask(&text);
        let cold = t.elapsed().as_secs_f64();
        let mut best = f64::MAX;
        for _ in 0..3 {
            let t = Instant::now();
            assert_eq!(rules.mask(&text), masked);
            best = best.min(t.elapsed().as_secs_f64());
        }
        let hits: usize = masked.hits.iter().map(|(_, n)| n).sum();
        println!(
            "one-shot:            {:7.1} MB/s first run, {:.1} MB/s steady ({hits} secrets masked in {mb:.1} MB)",
            mb / cold,
            mb / best
        );

        for chunk in [16usize, 48, 256, 4096] {
            let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
            println!(
            "code  stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
        }
    }

    if run("src-one-shot") || run("src-sse") || run("src-stream") {
        let text = source_corpus(2 << 20);
        let mb = text.len() as f64 / 1e6;
        let masked = rules.mask(&text);
        if run("src-one-shot") {
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                assert_eq!(rules.mask(&text), masked);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("src   one-shot:           {:7.1} MB/s", mb / best);
        }
        if run("src-sse") {
            let sse = sse_stream(&text, 48);
            let rate = rewrite(&rules, &sse, 16 << 10, &masked.text, 3);
            println!(
                "src   sse rewrite, 48-byte text_delta events, 16 KiB chunks: {rate:7.1} MB/s of SSE ({:.1} MB)",
                sse.len() as f64 / 1e6
            );
            // The filter also rebuilds what the client saw from the rewritten bytes, for the
            // audit record: the same stream through the transcript.
            let mut best = f64::MAX;
            for _ in 0..3 {
                let t = Instant::now();
                let mut transcript = Transcript::new(8 << 20);
                for c in sse.chunks(16 << 10) {
                    transcript.push_stream(c);
                }
                best = best.min(t.elapsed().as_secs_f64());
                assert_eq!(transcript.response().expect("a response").blocks[0].text, text, "transcript text");
            }
            println!("src   audit transcript of the same stream:  {:7.1} MB/s", sse.len() as f64 / 1e6 / best);
            let t = Instant::now();
            let mut framer = SseFramer::new();
            let mut events = 0usize;
            for c in sse.chunks(16 << 10) {
                let counted: Result<(), ()> = framer.push_each(c, |_| {
                    events += 1;
                    Ok(())
                });
                counted.expect("counting never fails");
            }
            println!(
                "src   sse framing alone ({events} events):  {:7.1} MB/s",
                sse.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
            );
        }
        if run("src-stream") {
            for chunk in [16usize, 48, 256, 4096] {
                let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
                println!(
                    "src   stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
                );
            }
        }
    }

    if run("prose") {
        let text = prose(1 << 20);
        let masked = rules.mask(&text);
        assert!(masked.hits.is_empty(), "prose corpus must hold no secret: {:?}", masked.hits);
        for chunk in [1usize, 4, 16, 256] {
            let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
            println!(
            "prose stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
        }
    }

    if run("keys") {
        let text = key_blocks(1 << 20);
        let masked = rules.mask(&text);
        for chunk in [4usize, 16, 256] {
            let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
            println!(
            "keys  stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
        }
    }
}
