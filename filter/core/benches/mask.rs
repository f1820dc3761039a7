//! Native masking throughput of the built-in rules over a deterministic, generated corpus of
//! source-like text with a secret every few KiB. Prints MB/s; run with `cargo bench`.

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
        let t = Instant::now();
        let mut m = StreamMasker::new(rules.clone());
        let mut out = String::with_capacity(text.len());
        let mut max_held = 0;
        let mut at = 0;
        while at < text.len() {
            let mut end = (at + chunk).min(text.len());
            while !text.is_char_boundary(end) {
                end += 1;
            }
            out.push_str(&m.push(&text[at..end]));
            max_held = max_held.max(m.held());
            at = end;
        }
        out.push_str(&m.finish());
        let s = t.elapsed().as_secs_f64();
        assert_eq!(out, masked.text, "streaming output differs from one-shot");
        println!("stream {chunk:5}-byte chunks: {:7.1} MB/s (max held back {max_held} bytes)", mb / s);
    }
}
