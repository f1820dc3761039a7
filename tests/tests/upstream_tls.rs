//! An https upstream is reached with SNI and a validated certificate, never blindly.

use scrim_devstack::stack::{Stack, StackOptions};
use serde_json::Value;

async fn ask(stack: &Stack) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .header("authorization", format!("Bearer {}", stack.token()))
        .header("content-type", "application/json")
        .body(r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#)
        .send()
        .await
        .expect("gateway answers");
    (resp.status().as_u16(), resp.text().await.unwrap_or_default())
}

#[tokio::test]
async fn https_upstream_with_a_valid_certificate_is_used() {
    let stack = Stack::start(StackOptions {
        name: "tls-ok",
        tls_certificate_name: Some("localhost"),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, body) = ask(&stack).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "message");
    let seen = stack.stand_in.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].header("host"), Some("localhost"), "host rewritten to the upstream's name");
    assert_eq!(seen[0].header("x-api-key"), Some(stack.api_key.as_str()));
}

#[tokio::test]
async fn https_upstream_with_a_certificate_for_another_name_is_refused() {
    let stack = Stack::start(StackOptions {
        name: "tls-wrong-name",
        tls_certificate_name: Some("not-the-upstream.example"),
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, body) = ask(&stack).await;
    assert_eq!(status, 503, "{body}");
    assert!(stack.stand_in.requests().is_empty(), "no byte of the request reached the server");
}
