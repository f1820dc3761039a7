//! Secret masking through the real Envoy, in both directions: streamed responses whose
//! secrets arrive split across SSE deltas and network writes, whole JSON bodies, requests,
//! and the refusals that keep unreadable bodies from passing unmasked.

use scrim_devstack::fake;
use scrim_devstack::stack::{Stack, StackOptions};
use scrim_devstack::stand_in::ScriptedReply;
use serde_json::{json, Value};
use std::time::Duration;

fn fake_aws_key_id() -> String {
    fake::aws_access_key_id()
}

fn fake_anthropic_key() -> String {
    fake::anthropic_api_key()
}

async fn start(name: &'static str) -> Stack {
    Stack::start(StackOptions { name, ..Default::default() }).await.expect("stack starts")
}

fn request(stack: &Stack, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(stack.url("/v1/messages?beta=true"))
        .bearer_auth(stack.token())
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .json(&body)
}

fn hello(stream: bool) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
           "messages": [{"role": "user", "content": "hi"}]})
}

/// Parses an SSE body into (event name, data JSON) pairs.
fn events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).unwrap_or("").to_string();
            let data: String = e.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
            (name, serde_json::from_str(&data).unwrap_or_else(|err| panic!("bad data {data:?}: {err}")))
        })
        .collect()
}

/// The client's view of block `index`: text deltas joined, or tool input JSON joined.
fn block_text(events: &[(String, Value)], index: u64) -> String {
    events
        .iter()
        .filter(|(n, v)| n == "content_block_delta" && v["index"] == index)
        .map(|(_, v)| {
            let d = &v["delta"];
            d["text"].as_str().or(d["partial_json"].as_str()).unwrap_or("").to_string()
        })
        .collect()
}

fn sse(name: &str, data: Value) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}

#[tokio::test]
async fn secret_split_across_sse_deltas_is_masked() {
    let stack = start("mask-deltas").await;
    let key = fake_aws_key_id();
    stack.stand_in.set_reply_text(format!("Your key is {key} and nothing else."));
    let body = request(&stack, hello(true)).send().await.unwrap().text().await.unwrap();
    assert!(!body.contains(&key), "the secret reached the client");
    let evs = events(&body);
    assert_eq!(block_text(&evs, 0), "Your key is [REDACTED:aws-access-key-id] and nothing else.");
    assert_eq!(evs.last().unwrap().0, "message_stop");
    assert!(stack.envoy.counter("wasmcustom.scrim.masked.response").await >= 1);
    stack.assert_no_filter_failures();
}

/// The upstream writes the stream in 7-byte pieces, so events, JSON escapes and the secrets
/// themselves are cut at arbitrary bytes on the way in.
#[tokio::test]
async fn secrets_split_across_network_writes_in_text_and_tool_input_are_masked() {
    let stack = start("mask-network").await;
    let aws = fake_aws_key_id();
    let ant = fake_anthropic_key();
    let text = format!("Set AWS_ACCESS_KEY_ID={aws} first.");
    let tool_input = json!({"command": format!("export ANTHROPIC_API_KEY=\"{ant}\"\necho ok")}).to_string();
    let mut stream = sse("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "content": [], "stop_reason": null, "usage": {"input_tokens": 10, "output_tokens": 1}}}));
    stream += &sse("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
    for piece in text.as_bytes().chunks(3) {
        let piece = std::str::from_utf8(piece).unwrap();
        stream += &sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}));
    }
    stream += &sse("content_block_stop", json!({"type": "content_block_stop", "index": 0}));
    stream += &sse("content_block_start", json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}}));
    for piece in tool_input.as_bytes().chunks(5) {
        let piece = std::str::from_utf8(piece).unwrap();
        stream += &sse("content_block_delta", json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": piece}}));
    }
    stream += &sse("content_block_stop", json!({"type": "content_block_stop", "index": 1}));
    stream += &sse("message_delta", json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 30}}));
    stream += &sse("message_stop", json!({"type": "message_stop"}));
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: stream.as_bytes().chunks(7).map(<[u8]>::to_vec).collect(),
        pace: Duration::from_millis(1),
    });
    let body = request(&stack, hello(true)).send().await.unwrap().text().await.unwrap();
    assert!(!body.contains(&aws) && !body.contains(&ant[..30]), "a secret reached the client: {body}");
    let evs = events(&body);
    assert_eq!(block_text(&evs, 0), "Set AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id] first.");
    let input: Value = serde_json::from_str(&block_text(&evs, 1)).expect("tool input is valid JSON");
    assert_eq!(input["command"], "export ANTHROPIC_API_KEY=\"[REDACTED:anthropic-api-key]\"\necho ok");
    stack.assert_no_filter_failures();
}

/// Prose without secrets reaches the client as the same text, and event by event: the
/// first words arrive while the upstream still holds the rest of the stream.
#[tokio::test]
async fn prose_without_secrets_arrives_unchanged_and_incrementally() {
    use futures_util::StreamExt;
    let stack = start("mask-clean").await;
    let prose = "Hi all, the build passed with 42 tests and the docs are up to date.";
    stack.stand_in.set_reply_text(prose);
    let gate = stack.stand_in.hold_streams();
    let resp = request(&stack, hello(true)).send().await.unwrap();
    let mut body = resp.bytes_stream();
    let mut seen = String::new();
    while !seen.contains("\"text_delta\"") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), body.next())
            .await
            .expect("the first words arrive before the upstream finishes")
            .expect("stream open")
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(!seen.contains("message_stop"));
    drop(gate);
    while let Some(chunk) = body.next().await {
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert_eq!(block_text(&events(&seen), 0), prose);
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.masked.response").await, 0);
}

#[tokio::test]
async fn json_response_with_a_secret_is_masked_and_stays_valid_json() {
    let stack = start("mask-json").await;
    let key = fake_anthropic_key();
    stack.stand_in.set_reply_text(format!("use {key} for this"));
    let resp = request(&stack, hello(false)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(!text.contains(&key));
    let v: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["content"][0]["text"], "use [REDACTED:anthropic-api-key] for this");
}

#[tokio::test]
async fn secret_in_a_tool_result_reaches_the_upstream_masked() {
    let stack = start("mask-request").await;
    let key = fake_aws_key_id();
    let body = json!({
        "model": "claude-sonnet-4-5", "max_tokens": 64, "stream": false,
        "system": [{"type": "text", "text": "You are helpful."}],
        "messages": [
            {"role": "user", "content": "read .env"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "Read", "input": {"file_path": ".env"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                "content": format!("AWS_ACCESS_KEY_ID={key}\nREGION=eu-west-1\n")}]}
        ],
        "safeguards": {"future_field": [1, 2, 3]}
    });
    let resp = request(&stack, body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let seen = stack.stand_in.requests();
    let sent = String::from_utf8(seen[0].body.clone()).unwrap();
    assert!(!sent.contains(&key), "the secret left the company: {sent}");
    let v: Value = serde_json::from_str(&sent).unwrap();
    assert_eq!(
        v["messages"][2]["content"][0]["content"],
        "AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id]\nREGION=eu-west-1\n"
    );
    assert_eq!(v["safeguards"], json!({"future_field": [1, 2, 3]}), "unknown keys pass untouched");
    assert_eq!(seen[0].header("content-length"), Some(sent.len().to_string().as_str()));
    assert!(stack.envoy.counter("wasmcustom.scrim.masked.request").await >= 1);
}

#[tokio::test]
async fn compressed_response_is_refused_not_passed_unread() {
    let stack = start("mask-gzip").await;
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into()), ("content-encoding".into(), "gzip".into())],
        chunks: vec![b"\x1f\x8b\x08\x00opaque-compressed-bytes".to_vec()],
        pace: Duration::ZERO,
    });
    let resp = request(&stack, hello(false)).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(!text.contains("opaque-compressed-bytes"));
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["type"], "api_error");
}

#[tokio::test]
async fn compressed_or_unparseable_request_is_refused_before_the_upstream() {
    let stack = start("mask-bad-request").await;
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(stack.token())
        .header("content-encoding", "gzip")
        .body(b"\x1f\x8b\x08\x00".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(stack.token())
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(stack.stand_in.requests().is_empty());
}

#[tokio::test]
async fn request_body_just_under_the_limit_passes_and_just_over_gets_413() {
    const LIMIT: usize = 64 * 1024;
    let stack = Stack::start(StackOptions {
        name: "mask-limit",
        filter_config: Some(Box::new(|mut c| {
            c["masking"] = json!({"max_request_bytes": LIMIT});
            c
        })),
        ..Default::default()
    })
    .await
    .unwrap();
    let body_of = |len: usize| {
        let skeleton = json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": ""}]}).to_string();
        let filler = "x".repeat(len - skeleton.len());
        json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": filler}]}).to_string()
    };
    let send = |body: String| {
        reqwest::Client::new()
            .post(stack.url("/v1/messages"))
            .bearer_auth(stack.token())
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let at_limit = body_of(LIMIT);
    assert_eq!(at_limit.len(), LIMIT);
    assert_eq!(send(at_limit).await.unwrap().status(), 200);
    let over = send(body_of(LIMIT + 1)).await.unwrap();
    assert_eq!(over.status(), 413);
    let v: Value = over.json().await.unwrap();
    assert_eq!(v["error"]["type"], "request_too_large");
    assert_eq!(stack.stand_in.requests().len(), 1, "only the body within the limit went upstream");
}

/// A non-JSON body (an upstream or Envoy error page) is masked as text and keeps its status.
#[tokio::test]
async fn plain_text_error_body_is_masked_as_text_and_keeps_its_status() {
    let stack = start("mask-text").await;
    let key = fake_aws_key_id();
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 500,
        headers: vec![("content-type".into(), "text/plain".into())],
        chunks: vec![format!("internal error near AWS_ACCESS_KEY_ID={key}\n").into_bytes()],
        pace: Duration::ZERO,
    });
    let resp = request(&stack, hello(false)).send().await.unwrap();
    assert_eq!(resp.status(), 500);
    assert_eq!(resp.text().await.unwrap(), "internal error near AWS_ACCESS_KEY_ID=[REDACTED:aws-access-key-id]\n");
}

/// A stream that stops making sense midway cannot be inspected any further: the client gets
/// an SSE `error` event (Claude Code then retries without streaming) and nothing after it.
#[tokio::test]
async fn unreadable_stream_ends_with_an_error_event_and_nothing_after_it() {
    let stack = start("mask-bad-stream").await;
    let key = fake_aws_key_id();
    let mut stream = sse("message_start", json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": [], "usage": {"input_tokens": 1, "output_tokens": 1}}}));
    stream += &sse("content_block_start", json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}));
    stream += "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"trunc\n\n";
    stream += &sse("content_block_delta", json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": format!("key {key}")}}));
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: vec![stream.into_bytes()],
        pace: Duration::ZERO,
    });
    let body = request(&stack, hello(true)).send().await.unwrap().text().await.unwrap();
    assert!(!body.contains(&key));
    let last = events(&body).pop().unwrap();
    assert_eq!(last.0, "error", "{body}");
    assert_eq!(last.1["error"]["type"], "api_error");
}

/// The OpenAI chat-completions stream shape, selected by path: a secret split across
/// `choices[].delta.content` chunks and network writes is masked, and `data: [DONE]` ends it.
#[tokio::test]
async fn openai_chat_stream_is_masked_per_choice_and_ends_with_done() {
    let stack = start("mask-openai").await;
    let secret = fake_aws_key_id();
    let text = format!("Use {secret} for the deploy.");
    let chunk = |delta: Value, finish: Value| {
        let data = json!({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-test",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {data}\n\n")
    };
    let mut stream = chunk(json!({"role": "assistant", "content": ""}), Value::Null);
    for piece in text.as_bytes().chunks(3) {
        stream += &chunk(json!({"content": std::str::from_utf8(piece).unwrap()}), Value::Null);
    }
    stream += &chunk(json!({}), json!("stop"));
    stream += "data: [DONE]\n\n";
    stack.stand_in.set_scripted_reply(ScriptedReply {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks: stream.as_bytes().chunks(5).map(<[u8]>::to_vec).collect(),
        pace: Duration::from_millis(1),
    });
    let body = reqwest::Client::new()
        .post(stack.url("/v1/chat/completions"))
        .bearer_auth(stack.token())
        .json(&json!({"model": "gpt-test", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!body.contains(&secret), "the secret reached the client: {body}");
    let datas: Vec<&str> = body.split("\n\n").filter_map(|e| e.strip_prefix("data: ")).collect();
    assert_eq!(datas.last(), Some(&"[DONE]"), "{body}");
    let content: String = datas
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str::<Value>(d).expect("each chunk is JSON"))
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(content, "Use [REDACTED:aws-access-key-id] for the deploy.");
    stack.assert_no_filter_failures();
}
