//! Native masking throughput of the built-in rules over a deterministic, generated corpus of
//! source-like text with a secret every few KiB, and how much the streaming masker holds back
//! on that code and on prose full of generic keywords (`secret`, `token`, `password`, `key`).
//! Prints MB/s and held bytes; run with `cargo bench`.

use scrim_core::rules::{expand_example, RuleSet};
use scrim_core::stream_mask::StreamMasker;
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

fn main() {
    let t = Instant::now();
    let rules = Arc::new(RuleSet::builtin().expect("built-in rules compile"));
    println!("compile: {} rules in {:.1} ms", rules.len(), t.elapsed().as_secs_f64() * 1e3);
    let text = corpus(8 << 20);
    let mb = text.len() as f64 / 1e6;

    let t = Instant::now();
    let masked = rules.mask(&text);
    let s = t.elapsed().as_secs_f64();
    let hits: usize = masked.hits.iter().map(|(_, n)| n).sum();
    println!("one-shot:            {:7.1} MB/s ({hits} secrets masked in {mb:.1} MB)", mb / s);

    for chunk in [16usize, 256, 4096] {
        let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
        println!(
            "code  stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
    }

    let text = prose(1 << 20);
    let masked = rules.mask(&text);
    assert!(masked.hits.is_empty(), "prose corpus must hold no secret: {:?}", masked.hits);
    for chunk in [1usize, 4, 16, 256] {
        let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
        println!(
            "prose stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
    }

    let text = key_blocks(1 << 20);
    let masked = rules.mask(&text);
    for chunk in [4usize, 16, 256] {
        let (rate, max_held, mean_held) = stream(&rules, &text, chunk, &masked.text);
        println!(
            "keys  stream {chunk:5}-byte chunks: {rate:7.1} MB/s (held back: max {max_held} bytes, mean {mean_held:.1})"
        );
    }
}
