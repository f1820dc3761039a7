//! Masking cost on inputs built to be expensive: long runs of one character, floods of every
//! rule's keywords, near-misses of every rule (its positive examples, broken), and deeply
//! nested JSON. Each is masked one-shot, streamed (16 KiB pushes) and, where it makes sense,
//! sent as a Messages request; the bench prints time per MB and peak heap per MB of input
//! (counting allocator; the input itself is not counted, the masked output is).
//!
//! First a screen at 256 KiB over every rule (floods and near-misses) and every printable
//! byte (runs) prints the slowest inputs; then the named families and the slowest screened
//! input are measured at 1, 10 and 30 MB, which shows whether cost grows linearly.
//! Run with `cargo bench -p scrim-core --bench adversarial` (`SCRIM_ADVERSARIAL_MB=1,4` to
//! choose the sizes).

use scrim_core::rules::{builtin_raw_rules, expand_example, RuleSet};
use scrim_core::stream_mask::StreamMasker;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

/// The system allocator, counting live bytes and their high-water mark.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Relaxed) + by;
    PEAK.fetch_max(now, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
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
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result, the seconds it took and the heap it added at its peak.
fn measure<T>(f: impl FnOnce() -> T) -> (T, f64, usize) {
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let t = Instant::now();
    let out = f();
    let secs = t.elapsed().as_secs_f64();
    (out, secs, PEAK.load(Relaxed).saturating_sub(base))
}

/// `unit` repeated to `len` bytes (cut at a character boundary).
fn fill(unit: &str, len: usize) -> String {
    let mut s = unit.repeat(len / unit.len().max(1) + 1);
    let mut end = len.min(s.len());
    while !s.is_char_boundary(end) {
        end += 1;
    }
    s.truncate(end);
    s
}

/// A positive example broken the ways a near-miss looks: last character dropped, one
/// character changed in the middle, a space inserted in the middle.
fn near_misses(example: &str) -> Vec<String> {
    let mid = (0..=example.len() / 2).rev().find(|&i| example.is_char_boundary(i)).unwrap_or(0);
    let last = example.char_indices().last().map_or(0, |(i, _)| i);
    let next = example[mid..].chars().next().map_or(mid, |c| mid + c.len_utf8());
    vec![
        example[..last].to_string(),
        format!("{}#{}", &example[..mid], &example[next..]),
        format!("{} {}", &example[..mid], &example[mid..]),
    ]
}

/// A Messages request whose one user message is `text`.
fn request(text: &str) -> Vec<u8> {
    let content = serde_json::to_string(text).expect("a string encodes");
    format!(r#"{{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[{{"role":"user","content":{content}}}]}}"#)
        .into_bytes()
}

/// A Messages request carrying a tool_use input nested `depth` arrays deep.
fn nested_request(len: usize) -> Vec<u8> {
    let depth = 100;
    let leaf = serde_json::to_string(&fill("password = hunter2hunter2 ", 64 << 10)).unwrap();
    let one = format!("{}{leaf}{}", "[".repeat(depth), "]".repeat(depth));
    let mut items = Vec::new();
    let mut size = 0;
    while size < len {
        size += one.len() + 1;
        items.push(one.clone());
    }
    format!(
        r#"{{"model":"m","max_tokens":1,"messages":[{{"role":"assistant","content":[{{"type":"tool_use","id":"t","name":"n","input":{{"deep":[{}]}}}}]}}]}}"#,
        items.join(",")
    )
    .into_bytes()
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-9)
}

fn per_mb(heap: usize, bytes: usize) -> f64 {
    heap as f64 / (1 << 20) as f64 / (bytes as f64 / (1 << 20) as f64)
}

/// One line: one-shot, streamed and (unless `text` is not UTF-8 prose) as a request.
fn report(rules: &Arc<RuleSet>, name: &str, text: &str) {
    let n = text.len();
    let (_, one_s, one_h) = measure(|| rules.mask(text).text.len());
    let (_, st_s, st_h) = measure(|| {
        let mut m = StreamMasker::new(rules.clone());
        let mut out = String::new();
        let mut at = 0;
        while at < n {
            let mut end = (at + (16 << 10)).min(n);
            while !text.is_char_boundary(end) {
                end += 1;
            }
            m.push_into(&text[at..end], &mut out);
            at = end;
            // What a filter does with released text: send it on.
            out.clear();
        }
        m.finish().len()
    });
    let body = request(text);
    let (ok, rq_s, rq_h) = measure(|| scrim_core::anthropic::mask_request(rules, &body).is_ok());
    assert!(ok, "{name}: the request is valid JSON");
    println!(
        "  {name:<34} {:>5.1} MB  one-shot {:>7.1} MB/s {:>5.2} MiB/MB | stream {:>7.1} MB/s {:>6.3} MiB/MB | request {:>7.1} MB/s {:>5.2} MiB/MB",
        n as f64 / 1e6,
        mb_per_s(n, one_s),
        per_mb(one_h, n),
        mb_per_s(n, st_s),
        per_mb(st_h, n),
        mb_per_s(body.len(), rq_s),
        per_mb(rq_h, body.len()),
    );
}

fn main() {
    let rules = Arc::new(RuleSet::builtin().expect("built-in rules compile"));
    let raw = builtin_raw_rules().expect("built-in rules parse");
    let sizes: Vec<usize> = std::env::var("SCRIM_ADVERSARIAL_MB")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 10, 30]);

    // Screen: every family member at 256 KiB, one-shot.
    let screen = 256 << 10;
    let mut rows: Vec<(String, String, f64)> = Vec::new();
    let mut rate = |name: String, unit: String| {
        let text = fill(&unit, screen);
        let (_, secs, _) = measure(|| rules.mask(&text).text.len());
        rows.push((name, unit, mb_per_s(text.len(), secs)));
    };
    for b in 0x20u8..0x7f {
        rate(format!("run {:?}", b as char), (b as char).to_string());
    }
    for unit in ["\n", "\t", "é", "\r\n", "\\n"] {
        rate(format!("run {unit:?}"), unit.to_string());
    }
    let mut all_keywords = String::new();
    let mut all_misses = String::new();
    for rule in &raw {
        for kw in &rule.keywords {
            all_keywords += kw;
            all_keywords += "=";
            for sep in ["", " ", "\n", "=", ": \"", "/"] {
                rate(format!("flood {} {:?}", rule.id, format!("{kw}{sep}")), format!("{kw}{sep}"));
            }
        }
        for ex in &rule.examples.positive {
            for miss in near_misses(&expand_example(ex)) {
                all_misses += &miss;
                all_misses += "\n";
                for sep in ["", " ", "\n"] {
                    rate(format!("near-miss {}", rule.id), format!("{miss}{sep}"));
                }
            }
        }
    }
    rows.sort_by(|a, b| a.2.total_cmp(&b.2));
    let median = rows[rows.len() / 2].2;
    println!("screen: {} inputs of 256 KiB, one-shot; median {median:.1} MB/s; slowest:", rows.len());
    for (name, unit, r) in rows.iter().take(8) {
        let shown: String = unit.chars().take(40).collect();
        println!("  {r:>7.1} MB/s  {name}  ({shown:?})");
    }

    let slowest = rows[0].1.clone();
    let families: Vec<(&str, String)> = vec![
        ("run of 'A'", "A".to_string()),
        ("run of 'a'", "a".to_string()),
        ("run of '0'", "0".to_string()),
        ("run of 'é'", "é".to_string()),
        ("keyword flood (all rules)", all_keywords),
        ("near-misses (all rules)", all_misses),
        ("slowest screened input", slowest),
    ];
    for mb in sizes {
        println!("at {mb} MB (time per MB of input; peak heap per MB of input):");
        for (name, unit) in &families {
            report(&rules, name, &fill(unit, mb << 20));
        }
        let body = nested_request(mb << 20);
        let (result, secs, heap) = measure(|| scrim_core::anthropic::mask_request(&rules, &body).map(|m| m.hits));
        println!(
            "  {:<34} {:>5.1} MB  request {:>7.1} MB/s {:>5.2} MiB/MB ({})",
            "JSON nested 100 deep",
            body.len() as f64 / 1e6,
            mb_per_s(body.len(), secs),
            per_mb(heap, body.len()),
            match result {
                Ok(hits) => format!("masked: {hits:?}"),
                Err(e) => format!("refused: {e}"),
            }
        );
    }
}
