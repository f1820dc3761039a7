//! Memory per stream: the heap a `StreamRewriter` holds between network chunks of a
//! Claude-shaped stream (48-byte `text_delta` events, 16 KiB chunks), on prose, on code with
//! a keyword on nearly every line, and on code carrying private-key blocks (a window held
//! open across the whole block). Counted by a global allocator that tracks live bytes, so it
//! is a separate bench from the throughput one. Run with `cargo bench --bench stream_memory`.

use scrim_core::anthropic_stream::{StreamRewriter, ThinkingMode};
use scrim_core::rules::{expand_example, RuleSet};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to `System` unchanged; only a counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_add(new_size, Relaxed);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An Anthropic stream carrying `text` as one text block in 48-byte deltas, in the API's layout.
fn sse_stream(text: &str) -> Vec<u8> {
    let mut out = String::from("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_mem\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"bench\",\"content\":[],\"usage\":{\"input_tokens\":1,\"output_tokens\":1}}}\n\n");
    out += "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 48).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        let piece = serde_json::to_string(&text[start..end]).expect("a string encodes");
        out += &format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{piece}}}}}\n\n");
        start = end;
    }
    out += "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n";
    out += "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    out.into_bytes()
}

fn repeat_to(unit: &str, len: usize) -> String {
    unit.repeat(len / unit.len() + 1)
}

/// Heap held by one rewriter after each 16 KiB chunk: (largest, mean) in bytes.
fn held_heap(rules: &Arc<RuleSet>, sse: &[u8]) -> (usize, usize) {
    let before = LIVE.load(Relaxed);
    let mut rewriter = StreamRewriter::new(rules.clone(), ThinkingMode::Mask);
    let (mut max, mut sum, mut n) = (0, 0, 0);
    for chunk in sse.chunks(16 << 10) {
        drop(rewriter.push(chunk).expect("valid stream"));
        let held = LIVE.load(Relaxed) - before;
        max = max.max(held);
        sum += held;
        n += 1;
    }
    drop(rewriter.finish().expect("complete stream"));
    (max, sum / n.max(1))
}

fn main() {
    let before = LIVE.load(Relaxed);
    let rules = Arc::new(RuleSet::builtin().expect("built-in rules compile"));
    println!("rule set: {:.1} MiB of heap once compiled", (LIVE.load(Relaxed) - before) as f64 / (1 << 20) as f64);
    let prose = repeat_to(
        "Rotate the API key every ninety days and revoke the old token once clients moved. \
         Never store a password in the repository; keep it in the secret manager instead.\n\n",
        1 << 20,
    );
    let code = repeat_to(
        "fn handle(req: &Request, token_cache: &mut Cache) -> Result<Response, Error> {\n    \
         let password_hash = hash(&req.body); // the secret key lives in the vault\n}\n",
        1 << 20,
    );
    let mut key = String::from("-----BEGIN RSA PRIVATE KEY-----\n");
    for _ in 0..50 {
        key += &expand_example("{{fake:b64:64}}\n");
    }
    key += "-----END RSA PRIVATE KEY-----\n";
    let keys = repeat_to(&format!("{}{key}", &code[..30_000]), 1 << 20);
    println!("memory per stream (heap held by one rewriter between 16 KiB chunks, 48-byte deltas):");
    for (name, text) in [("prose", &prose), ("code", &code), ("code with key blocks", &keys)] {
        // The first stream also fills the rules' shared lazy-DFA caches (per VM, not per
        // stream): measure the second.
        held_heap(&rules, &sse_stream(text));
        let (max, mean) = held_heap(&rules, &sse_stream(text));
        println!("  {name:<22} max {:6.1} KiB, mean {:6.1} KiB", max as f64 / 1024.0, mean as f64 / 1024.0);
    }
}
