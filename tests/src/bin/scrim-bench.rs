//! `make bench`: latency the filter adds, measured against a listener of the same Envoy
//! without it. Prints figures; asserts nothing (targets are in README.md, "Benchmarks").

use jsonwebtoken::Algorithm;
use scrim_devstack::keys::SigningKey;
use scrim_devstack::stack::{Stack, StackOptions, DEV_GROUP};
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
