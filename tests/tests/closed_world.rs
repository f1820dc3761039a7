//! Closed world through the real Envoy: every way around inspection that was found by trying
//! as an attacker would — HTTP/2 trailers, batches, fields beyond messages, reply shapes
//! beyond text, duplicate keys, path spellings — is inspected or refused, over HTTP/1.1 and
//! HTTP/2.

use bytes::Bytes;
use scrim_devstack::fake;
use scrim_devstack::stack::{Stack, StackOptions};
use scrim_devstack::stand_in::ScriptedReply;
use serde_json::{json, Value};
use std::time::Duration;

const DENY_HOST: &str = "db7.prod.example.com";

async fn start(name: &'static str) -> Stack {
    Stack::start(StackOptions {
        name,
        filter_config: Some(Box::new(|mut c: Value| {
            c["policy"] = json!({"deny": [{"id": "prod-hosts", "message": "production hostnames stay inside",
                                           "regex": "[a-z0-9]+\\.prod\\.example\\.com"}]});
            c
        })),
        ..Default::default()
    })
    .await
    .expect("stack starts")
}

/// A POST over HTTP/2 with prior knowledge, its body in two DATA frames, ended by trailers
/// (`trailers`) or by the last frame.
async fn h2_post(stack: &Stack, path: &str, body: &[u8], trailers: bool) -> (u16, String) {
    let addr = stack.envoy.gateway;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{addr}{path}"))
        .header("authorization", format!("Bearer {}", stack.token()))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    let half = body.len() / 2;
    send.send_data(Bytes::copy_from_slice(&body[..half]), false).unwrap();
    if trailers {
        send.send_data(Bytes::copy_from_slice(&body[half..]), false).unwrap();
        let mut t = http::HeaderMap::new();
        t.insert("x-checksum", "anything".parse().unwrap());
        send.send_trailers(t).unwrap();
    } else {
        send.send_data(Bytes::copy_from_slice(&body[half..]), true).unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut recv = response.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        let _ = recv.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    (status, String::from_utf8_lossy(&text).into_owned())
}

fn http1_post(stack: &Stack, path: &str, body: Vec<u8>) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(stack.url(path))
        .bearer_auth(stack.token())
        .header("content-type", "application/json")
        .body(body)
}

/// A POST written to the socket as is; returns the status code.
async fn raw_http1_post(stack: &Stack, path: &str, body: &[u8]) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(stack.envoy.gateway).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        stack.token(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    // Envoy itself may reset a connection whose path it will not route: that is a refusal too.
    if tcp.read_to_end(&mut answer).await.is_err() || answer.is_empty() {
        return 0;
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

fn messages(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16,
                               "messages": [{"role": "user", "content": text}]}))
    .unwrap()
}

fn upstream_bodies(stack: &Stack) -> Vec<String> {
    stack.stand_in.requests().iter().map(|r| String::from_utf8_lossy(&r.body).into_owned()).collect()
}

// Regression: with trailers the body never ended in the body callback, and the request went
// upstream uninspected with the service key already on it.
#[tokio::test]
async fn http2_request_with_trailers_is_masked_and_its_deny_rules_apply() {
    let stack = start("cw-trailers").await;
    let key = fake::aws_access_key_id();
    let (status, _) = h2_post(&stack, "/v1/messages", &messages(&format!("key {key}")), true).await;
    assert_eq!(status, 200);
    let sent = upstream_bodies(&stack);
    assert_eq!(sent.len(), 1);
    assert!(!sent[0].contains(&key) && sent[0].contains("[REDACTED:aws-access-key-id]"), "{}", sent[0]);

    stack.stand_in.clear_requests();
    let (status, body) = h2_post(&stack, "/v1/messages", &messages(&format!("ssh {DENY_HOST}")), true).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("prod-hosts"));
    assert!(stack.stand_in.requests().is_empty(), "a denied request reached the upstream");

    // Without trailers over HTTP/2, the same.
    let (status, _) = h2_post(&stack, "/v1/messages", &messages(&format!("ssh {DENY_HOST}")), false).await;
    assert_eq!(status, 403);
    assert!(stack.stand_in.requests().is_empty());
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn batches_and_fields_beyond_messages_are_masked_and_searched() {
    let stack = start("cw-fields").await;
    let key = fake::aws_access_key_id();
    let bodies = [
        ("/v1/messages/batches", json!({"requests": [{"custom_id": "a", "params": {"model": "claude-sonnet-4-5", "max_tokens": 8,
            "messages": [{"role": "user", "content": format!("use {key}")}]}}]})),
        ("/v1/messages", json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": [
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": format!("k={key}")}},
            {"type": "search_result", "source": "s", "title": "t", "content": [{"type": "text", "text": key}]}]}],
            "tools": [{"name": "deploy", "description": format!("signs with {key}"), "input_schema": {"type": "object"}}],
            "metadata": {"user_id": key}, "stop_sequences": [key]})),
    ];
    for (path, body) in bodies {
        stack.stand_in.clear_requests();
        let resp = http1_post(&stack, path, serde_json::to_vec(&body).unwrap()).send().await.unwrap();
        assert_ne!(resp.status(), 400, "{path}");
        let sent = upstream_bodies(&stack);
        assert_eq!(sent.len(), 1, "{path}");
        assert!(!sent[0].contains(&key), "{path}: {}", sent[0]);
    }
    // Deny rules read a batch's requests too.
    stack.stand_in.clear_requests();
    let batch = json!({"requests": [{"custom_id": "a", "params": {"model": "m", "max_tokens": 8,
        "messages": [{"role": "user", "content": DENY_HOST}]}}]});
    let resp = http1_post(&stack, "/v1/messages/batches", serde_json::to_vec(&batch).unwrap()).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(stack.stand_in.requests().is_empty());
}

#[tokio::test]
async fn duplicate_keys_and_path_spellings_are_refused_before_the_upstream() {
    let stack = start("cw-refuse").await;
    let dup = br#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[],"messages":[{"role":"user","content":"x"}]}"#;
    let resp = http1_post(&stack, "/v1/messages", dup.to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    // Sent byte for byte (an HTTP client library would normalise some of these itself).
    for path in ["/v1//messages", "/v1/./messages", "/v1/x/../messages", "/v1/messages/", "/v1/%6Dessages"] {
        let status = raw_http1_post(&stack, path, &messages("hi")).await;
        assert!(status == 400 || status == 0, "{path}: {status}");
    }
    // Another case of the same path is the same handling (the deny rule applies).
    let resp = http1_post(&stack, "/V1/MESSAGES", messages(DENY_HOST)).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    assert!(stack.stand_in.requests().is_empty(), "{:?}", upstream_bodies(&stack));
}

#[tokio::test]
async fn replies_of_every_shape_are_masked() {
    let stack = start("cw-replies").await;
    let key = fake::aws_access_key_id();
    let sse = |events: &[Value]| -> Vec<u8> {
        events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect::<String>().into_bytes()
    };
    let replies = [
        ("openai chat json", 200, "application/json",
         json!({"id": "c", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": format!("key {key}")}}]}).to_string().into_bytes()),
        ("error echoing the request", 400, "application/json",
         json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("messages.0: bad value {key}")}}).to_string().into_bytes()),
        ("server tool results and citations", 200, "text/event-stream", sse(&[
            json!({"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "x"}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "web_search_tool_result", "tool_use_id": "s",
                   "content": [{"type": "web_search_result", "title": format!("leak {key}"), "url": "https://e.x", "encrypted_content": "opaque"}]}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {"type": "web_search_result_location",
                   "cited_text": key, "url": "https://e.x", "title": "t", "encrypted_index": "opaque"}}}),
            json!({"type": "content_block_stop", "index": 1}),
            json!({"type": "message_stop"}),
        ])),
    ];
    for (name, status, content_type, body) in replies {
        stack.stand_in.set_scripted_reply(ScriptedReply {
            status,
            headers: vec![("content-type".into(), content_type.into())],
            chunks: body.chunks(11).map(<[u8]>::to_vec).collect(),
            pace: Duration::ZERO,
        });
        let path = if name.starts_with("openai") { "/v1/chat/completions" } else { "/v1/messages" };
        let resp = http1_post(&stack, path, messages("hi")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{name}");
        let text = resp.text().await.unwrap();
        assert!(!text.contains(&key), "{name}: {text}");
        assert!(text.contains("[REDACTED:aws-access-key-id]"), "{name}: {text}");
        // Over HTTP/2 the same reply is masked the same way.
        let (_, text2) = h2_post(&stack, path, &messages("hi"), false).await;
        assert!(!text2.contains(&key), "{name} over h2: {text2}");
    }
    stack.assert_no_filter_failures();
}
