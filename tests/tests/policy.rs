//! Per-group limits and deny rules through the real Envoy: a refused request never reaches
//! the upstream, and the developer reads which rule refused it.

use scrim_core::audit::Decision;
use scrim_devstack::stack::{rand_u64, Stack, StackOptions};
use serde_json::{json, Value};
use std::time::Duration;

async fn start() -> Stack {
    Stack::start(StackOptions {
        name: "policy",
        filter_config: Some(Box::new(|mut c| {
            c["policy"] = json!({
                "groups": {"eng": {"models": ["claude-sonnet-*"], "max_tokens": 4096,
                                   "endpoints": ["/v1/messages", "/v1/messages/count_tokens"]}},
                "deny": [{"id": "prod-hosts", "message": "production hostnames must not leave the company",
                          "regex": "\\b[a-z0-9-]+\\.prod\\.example\\.com\\b"}]
            });
            c
        })),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn send(stack: &Stack, path: &str, body: Option<Value>, id: &str) -> (u16, Value, Option<String>) {
    let client = reqwest::Client::new();
    let req = match body {
        Some(b) => client.post(stack.url(path)).json(&b),
        None => client.get(stack.url(path)),
    };
    let resp = req.bearer_auth(stack.token()).header("x-request-id", id).send().await.unwrap();
    let status = resp.status().as_u16();
    let retry = resp.headers().get("x-should-retry").map(|v| v.to_str().unwrap().to_string());
    (status, resp.json().await.unwrap_or(Value::Null), retry)
}

fn message(model: &str, max_tokens: u64, text: &str) -> Value {
    json!({"model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn requests_outside_the_groups_limits_or_matching_a_deny_rule_never_reach_the_upstream() {
    let stack = start().await;
    let cases = [
        ("model", "/v1/messages", Some(message("claude-opus-4-1", 100, "hi")), "`model`"),
        ("max_tokens", "/v1/messages", Some(message("claude-sonnet-4-5", 4097, "hi")), "`max_tokens`"),
        ("endpoint", "/v1/models?limit=1000", None, "`endpoint`"),
        ("deny rule in a tool result", "/v1/messages", Some(json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
            "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                "content": "ssh admin@db-7.prod.example.com"}]}]})), "`prod-hosts`"),
    ];
    let mut ids = Vec::new();
    for (name, path, body, rule) in cases {
        let id = format!("policy-{:016x}", rand_u64());
        let (status, v, retry) = send(&stack, path, body, &id).await;
        assert_eq!(status, 403, "{name}: {v}");
        assert_eq!(v["error"]["type"], "permission_error", "{name}");
        assert!(v["error"]["message"].as_str().unwrap().contains(rule), "{name}: {v}");
        assert_eq!(retry.as_deref(), Some("false"), "{name}");
        ids.push(id);
    }
    assert!(stack.stand_in.requests().is_empty(), "a refused request reached the upstream");
    let (status, _, _) = send(&stack, "/v1/messages", Some(message("claude-sonnet-4-5", 4096, "db-7.staging.example.com")), "ok").await;
    assert_eq!(status, 200, "within every limit");
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.requests.denied").await, 4);
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.requests.allowed").await, 1);
    let x = stack.recorder.wait_for(ids.last().unwrap(), Duration::from_secs(20)).await.unwrap();
    assert_eq!(x.stored.record.decision, Decision::Denied);
    assert_eq!(x.stored.record.reason.as_deref(), Some("prod-hosts"));
}
