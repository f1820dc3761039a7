//! Signing keys over time, and start-up: rotation at the IdP, an IdP that is down when the
//! gateway starts, and a filter that refuses to start without what it needs.

use jsonwebtoken::Algorithm;
use scrim_devstack::envoy::{free_port, Envoy, EnvoyOptions, Upstream};
use scrim_devstack::idp::DevIdp;
use scrim_devstack::keys::SigningKey;
use scrim_devstack::stack::{dev_filter_config, scratch_dir, Stack, StackOptions, DEV_BUFFER_LIMIT, DEV_GROUP};
use serde_json::Value;
use std::time::{Duration, Instant};

async fn status_with(stack: &Stack, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .expect("gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn rotated_key_at_the_idp_is_accepted_without_restarting_envoy() {
    let stack = Stack::start(StackOptions { name: "rotation", ..Default::default() }).await.unwrap();
    assert_eq!(status_with(&stack, &stack.token()).await.0, 200);

    let next = SigningKey::generate(Algorithm::ES256, "key-2").unwrap();
    let idp = stack.idp.as_ref().unwrap();
    let before = idp.jwks_requests();
    idp.set_keys(vec![next.clone()]);
    let token = next.mint(&stack.claims("alice", &[DEV_GROUP]));
    let (status, body) = status_with(&stack, &token).await;
    assert_eq!(status, 200, "{body}");
    assert!(idp.jwks_requests() > before, "the unknown kid made the filter refetch the JWKS");
    assert!(stack.envoy.counter("wasmcustom.scrim.jwks.refresh_ok").await >= 2);
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn idp_down_at_start_gives_503_and_recovers_when_it_comes_back() {
    let stack = Stack::start(StackOptions { name: "idp-down", idp_up: false, ..Default::default() })
        .await
        .unwrap();
    let token = stack.token();
    let (status, body) = status_with(&stack, &token).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["type"], "api_error");
    assert!(stack.stand_in.requests().is_empty());

    let listener = tokio::net::TcpListener::bind(stack.idp_addr).await.unwrap();
    let _idp = DevIdp::start(listener, stack.issuer.clone(), vec![stack.key.clone()]).unwrap();
    // The filter retries every second (retry_seconds: 1): poll until it has the keys.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = status_with(&stack, &token).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(Instant::now() < deadline, "gateway did not recover after the IdP came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stack.envoy.counter("wasmcustom.scrim.jwks.refresh_failed").await >= 1);
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn sse_events_reach_the_client_before_the_upstream_finishes() {
    use futures_util::StreamExt;
    let stack = Stack::start(StackOptions { name: "streaming", ..Default::default() }).await.unwrap();
    // The first delta ends between words, so the masker has nothing to hold back.
    stack.stand_in.set_reply_text("Hi, all of you: this arrives in pieces.");
    let gate = stack.stand_in.hold_streams();
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages?beta=true"))
        .header("authorization", format!("Bearer {}", stack.token()))
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("content_block_delta") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("first events arrive while the upstream holds the rest")
            .expect("stream open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("event: message_start"));
    assert!(!seen.contains("message_stop"), "the upstream has not finished yet");
    drop(gate);
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(seen.contains("event: message_stop"));
    stack.assert_no_filter_failures();
}

fn options(name: &str, api_key: &str, config: Value) -> EnvoyOptions {
    EnvoyOptions {
        gateway_port: free_port(),
        admin_port: free_port(),
        baseline_port: None,
        upstream: Upstream::parse("http://127.0.0.1:9").unwrap(),
        upstream_ca: None,
        idp: "127.0.0.1:9".parse().unwrap(),
        recorder_port: 9,
        recorder_api_port: 9,
        recorder_token: String::new(),
        audit_flush_interval: std::time::Duration::from_secs(1),
        filter_config: config,
        api_key: api_key.to_string(),
        run_dir: scratch_dir(name),
        concurrency: 1,
        buffer_limit_bytes: DEV_BUFFER_LIMIT,
    }
}

#[tokio::test]
async fn filter_refuses_to_start_without_a_service_key() {
    let config = dev_filter_config("http://127.0.0.1:9", "http://127.0.0.1:9/jwks");
    let err = Envoy::start(&options("no-key", "", config)).await.err().expect("envoy must not start");
    assert!(err.contains("ANTHROPIC_API_KEY"), "{err}");
}

#[tokio::test]
async fn invalid_filter_configuration_stops_start_up_naming_the_field() {
    let mut config = dev_filter_config("http://127.0.0.1:9", "http://127.0.0.1:9/jwks");
    config["issuers"][0]["audiences"] = Value::from("scrim");
    let err = Envoy::start(&options("bad-config", "sk-test", config)).await.err().expect("envoy must not start");
    assert!(err.contains("issuers[0].audiences"), "{err}");
}

#[tokio::test]
async fn filter_refuses_to_start_with_approval_rules_but_no_recorder_token() {
    let mut config = dev_filter_config("http://127.0.0.1:9", "http://127.0.0.1:9/jwks");
    config["policy"] = serde_json::json!({"approval": [{"id": "a", "message": "m", "regex": "x"}]});
    let err = Envoy::start(&options("no-recorder-token", "sk-test", config)).await.err().expect("envoy must not start");
    assert!(err.contains("SCRIM_RECORDER_SERVICE_TOKEN"), "{err}");
}
