//! `make bench`: latency the filter adds, and streamed-response masking throughput, each
//! measured against a listener of the same Envoy without the filter. Prints figures; asserts
//! nothing (targets are in README.md, "Benchmarks").

use jsonwebtoken::Algorithm;
use scrim_devstack::keys::SigningKey;
use scrim_devstack::paths;
use scrim_devstack::stack::{Stack, StackOptions, DEV_GROUP};
use scrim_devstack::stand_in::ScriptedReply;
use std::time::{Duration, Instant};

const REQUESTS: usize = 2000;
const WARMUP: usize = 200;
const BODY: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;

struct Figures {
    median: Duration,
    p99: Duration,
}

fn figures(mut samples: Vec<Duration>) -> Figures {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Figures { median: at(0.5), p99: at(0.99) }
}

/// Sequential requests on one keep-alive connection; `token(i)` gives the i-th credential.
async fn measure(
    client: &reqwest::Client,
    url: &str,
    n: usize,
    token: impl Fn(usize) -> Option<String>,
) -> Result<Figures, String> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let mut req = client.post(url).header("content-type", "application/json").body(BODY);
        if let Some(t) = token(i) {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let start = Instant::now();
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        resp.bytes().await.map_err(|e| e.to_string())?;
        samples.push(start.elapsed());
        if !status.is_success() && token(i).is_some() {
            return Err(format!("request {i} got {status}"));
        }
    }
    Ok(figures(samples))
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

async fn bench() -> Result<(), String> {
    let stack = Stack::start(StackOptions {
        name: "bench",
        baseline: true,
        concurrency: 1,
        filter_config: Some(Box::new(|mut c| {
            c["token_cache_entries"] = serde_json::json!(100_000);
            c
        })),
        ..Default::default()
    })
    .await?;
    let es = SigningKey::generate(Algorithm::ES256, "bench-es256").map_err(|e| e.to_string())?;
    if let Some(idp) = &stack.idp {
        idp.set_keys(vec![stack.key.clone(), es.clone()]);
    }
    let client = reqwest::Client::new();
    let gateway = stack.url("/v1/messages");
    let baseline_addr = stack.envoy.baseline.ok_or("no baseline listener")?;
    let baseline = format!("http://{baseline_addr}/v1/messages");
    // The baseline route has no filter to inject the key: send it as the client would.
    let api_key = stack.api_key.clone();
    let baseline_client = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("x-api-key", api_key.parse().map_err(|_| "bad key")?);
            h
        })
        .build()
        .map_err(|e| e.to_string())?;

    let warm_token = stack.token();
    measure(&client, &gateway, WARMUP, |_| Some(warm_token.clone())).await?;
    measure(&baseline_client, &baseline, WARMUP, |_| None).await?;

    println!("scrim bench: {REQUESTS} sequential requests per row, one keep-alive connection, Envoy --concurrency 1");
    let base = measure(&baseline_client, &baseline, REQUESTS, |_| None).await?;
    println!("  {:<28} median {:>10}  p99 {:>10}", "no filter (baseline)", ms(base.median), ms(base.p99));
    let warm = measure(&client, &gateway, REQUESTS, |_| Some(warm_token.clone())).await?;
    report("filter, warm token cache", &warm, &base);

    for (name, key) in [("filter, cold cache, RS256", &stack.key), ("filter, cold cache, ES256", &es)] {
        let tokens: Vec<String> = (0..REQUESTS)
            .map(|i| key.mint(&stack.claims(&format!("user-{i}"), &[DEV_GROUP])))
            .collect();
        let cold = measure(&client, &gateway, REQUESTS, |i| Some(tokens[i].clone())).await?;
        report(name, &cold, &base);
    }
    stream_throughput(&stack, &gateway, &baseline_client, &baseline).await?;
    drop(stack);
    audit_required_cost(&base).await?;
    vm_cost().await
}

/// What `audit.required` adds: each exchange first asks the recorder whether it is up.
async fn audit_required_cost(base: &Figures) -> Result<(), String> {
    let stack = Stack::start(StackOptions {
        name: "bench-audit-required",
        concurrency: 1,
        filter_config: Some(Box::new(|mut c| {
            c["audit"] = serde_json::json!({"required": true});
            c
        })),
        ..Default::default()
    })
    .await?;
    let client = reqwest::Client::new();
    let token = stack.token();
    let url = stack.url("/v1/messages");
    // Ready when an exchange goes through: until the recorder has answered a first check,
    // the filter refuses (503), as it must.
    let deadline = Instant::now() + Duration::from_secs(20);
    while measure(&client, &url, 1, |_| Some(token.clone())).await.is_err() {
        if Instant::now() > deadline {
            return Err("the gateway with audit.required never served an exchange".into());
        }
    }
    measure(&client, &url, WARMUP, |_| Some(token.clone())).await?;
    let f = measure(&client, &url, REQUESTS, |_| Some(token.clone())).await?;
    report("filter + audit.required", &f, base);
    Ok(())
}

/// Envoy's resident memory (kB) from /proc.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Each Envoy worker runs its own VM, which compiles the rule set: memory per VM from the
/// difference between 1 and 5 workers, and the compile time each VM logs.
async fn vm_cost() -> Result<(), String> {
    let mut rows = Vec::new();
    for workers in [1usize, 5] {
        let stack = Stack::start(StackOptions {
            name: "bench-vm",
            concurrency: workers,
            ..Default::default()
        })
        .await?;
        // One exchange, so every figure includes a VM that has served.
        let status = reqwest::Client::new()
            .post(stack.url("/v1/messages"))
            .bearer_auth(stack.token())
            .header("content-type", "application/json")
            .body(BODY)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .status();
        if !status.is_success() {
            return Err(format!("vm bench request got {status}"));
        }
        let rss = stack.envoy.pid().and_then(rss_kb).ok_or("cannot read Envoy's memory")?;
        let compile_ms: Vec<u64> = stack
            .envoy
            .log()
            .lines()
            .filter_map(|l| l.split("configuration compiled in ").nth(1))
            .filter_map(|rest| rest.split(' ').next()?.parse().ok())
            .collect();
        rows.push((workers, rss, compile_ms));
    }
    let (w1, rss1, c1) = &rows[0];
    let (w5, rss5, c5) = &rows[1];
    let span = |c: &[u64]| format!("{} VMs, {} to {} ms", c.len(), c.iter().min().unwrap_or(&0), c.iter().max().unwrap_or(&0));
    println!("rule set compile per VM (V8): {w1} worker: {}; {w5} workers compiling at once on this machine: {}", span(c1), span(c5));
    println!(
        "  Envoy RSS: {} MiB with {w1} worker, {} MiB with {w5} workers: {:.1} MiB per added worker VM",
        rss1 / 1024,
        rss5 / 1024,
        (*rss5 as f64 - *rss1 as f64) / 1024.0 / (*w5 - *w1) as f64
    );
    Ok(())
}

/// Deterministic source-code text: this project's own Rust files, repeated to `len` bytes.
fn code_corpus(len: usize) -> String {
    let mut files = Vec::new();
    for dir in ["filter/core/src", "filter/wasm/src", "recorder-service/src", "tests/src"] {
        if let Ok(entries) = std::fs::read_dir(paths::workspace_root().join(dir)) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "rs") {
                    files.push(e.path());
                }
            }
        }
    }
    files.sort();
    let mut text = String::new();
    let all: String = files.iter().filter_map(|f| std::fs::read_to_string(f).ok()).collect();
    while text.len() < len && !all.is_empty() {
        text.push_str(&all);
    }
    let mut cut = len.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// An Anthropic stream carrying `text` in deltas of about `piece` bytes.
fn sse_stream(text: &str, piece: usize) -> Vec<u8> {
    let mut out = String::new();
    let ev = |name: &str, data: serde_json::Value| format!("event: {name}\ndata: {data}\n\n");
    out += &ev("message_start", serde_json::json!({"type": "message_start", "message": {"id": "msg_bench", "type": "message", "role": "assistant", "model": "bench", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}}));
    out += &ev("content_block_start", serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + piece).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        // The layout the API writes (key order included), not `json!`'s sorted keys.
        let text = serde_json::to_string(&text[start..end]).expect("a string encodes");
        out += &format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{text}}}}}\n\n");
        start = end;
    }
    out += &ev("content_block_stop", serde_json::json!({"type": "content_block_stop", "index": 0}));
    out += &ev("message_delta", serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 1}}));
    out += &ev("message_stop", serde_json::json!({"type": "message_stop"}));
    out.into_bytes()
}

async fn time_download(client: &reqwest::Client, url: &str) -> Result<(Duration, usize), String> {
    let start = Instant::now();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(BODY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    Ok((start.elapsed(), bytes.len()))
}

/// Streams a multi-MB code-like response through the filter and through the baseline.
async fn stream_throughput(
    stack: &Stack,
    gateway: &str,
    baseline_client: &reqwest::Client,
    baseline: &str,
) -> Result<(), String> {
    const TEXT_BYTES: usize = 2 * 1024 * 1024;
    let text = code_corpus(TEXT_BYTES);
    let stream = sse_stream(&text, 48);
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: stream.chunks(16 * 1024).map(<[u8]>::to_vec).collect(),
        pace: Duration::ZERO,
    });
    let token = stack.token();
    let filtered = reqwest::Client::builder()
        .default_headers({
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("authorization", format!("Bearer {token}").parse().map_err(|_| "bad token")?);
            h
        })
        .build()
        .map_err(|e| e.to_string())?;
    let mut through = Vec::new();
    let mut base = Vec::new();
    for _ in 0..3 {
        through.push(time_download(&filtered, gateway).await?);
        base.push(time_download(baseline_client, baseline).await?);
    }
    let median = |mut v: Vec<(Duration, usize)>| {
        v.sort();
        v[v.len() / 2]
    };
    let (t, out_bytes) = median(through);
    let (b, _) = median(base);
    let mb = stream.len() as f64 / 1e6;
    println!(
        "streamed response: {:.1} MB of SSE ({:.1} MB of code text in 48-byte deltas, 16 KiB writes), median of 3",
        mb,
        text.len() as f64 / 1e6
    );
    println!("  {:<28} {:>8.1} MB/s  ({} ms)", "no filter (baseline)", mb / b.as_secs_f64(), b.as_millis());
    println!(
        "  {:<28} {:>8.1} MB/s  ({} ms; {} bytes out)",
        "through the masking filter",
        mb / t.as_secs_f64(),
        t.as_millis(),
        out_bytes
    );
    Ok(())
}

fn report(name: &str, f: &Figures, base: &Figures) {
    println!(
        "  {:<28} median {:>10}  p99 {:>10}  added median {:>10}  added p99 {:>10}",
        name,
        ms(f.median),
        ms(f.p99),
        ms(f.median.saturating_sub(base.median)),
        ms(f.p99.saturating_sub(base.p99)),
    );
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match bench().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scrim-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
