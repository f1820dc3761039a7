//! Every exchange reaches the recorder through Envoy's gRPC access log: who, what went up
//! (masked), what came back (as the client saw it), usage, and Envoy's own view.

use scrim_core::audit::{Decision, Direction};
use scrim_devstack::stack::{rand_u64, Stack, StackOptions};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

fn fake_aws_key_id() -> String {
    scrim_devstack::fake::aws_access_key_id()
}

fn request_id() -> String {
    format!("{:016x}-{:016x}", rand_u64(), rand_u64())
}

async fn start(name: &'static str) -> Stack {
    Stack::start(StackOptions { name, ..Default::default() }).await.expect("stack starts")
}

fn post(stack: &Stack, id: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(stack.url("/v1/messages?beta=true"))
        .bearer_auth(stack.token())
        .header("x-request-id", id)
        .header("x-claude-code-session-id", "5f0c5d4e-9f43-4c1a-9d7e-2b1f6a0c1e11")
        .header("content-type", "application/json")
        .json(&body)
}

#[tokio::test]
async fn streamed_exchange_is_recorded_with_identity_usage_and_masked_content() {
    let stack = start("rec-stream").await;
    let upstream_secret = fake_aws_key_id();
    let sent_secret = fake_aws_key_id();
    stack.stand_in.set_reply_text(format!("Found {upstream_secret} in the repo."));
    let id = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": format!("my key is {sent_secret}")}]});
    let text = post(&stack, &id, body).send().await.unwrap().text().await.unwrap();
    assert!(text.contains("message_stop"));

    let x = stack.recorder.wait_for(&id, WAIT).await.expect("the exchange is recorded");
    let r = &x.stored.record;
    assert_eq!(r.decision, Decision::Allowed);
    assert_eq!(r.session_id, "5f0c5d4e-9f43-4c1a-9d7e-2b1f6a0c1e11");
    assert_eq!(r.user.as_ref().unwrap().subject, "alice");
    assert_eq!(r.user.as_ref().unwrap().groups, vec!["eng"]);
    assert_eq!(r.endpoint, "/v1/messages");
    assert_eq!(r.model.as_deref(), Some("claude-sonnet-4-5"));
    assert!(r.stream);
    assert!(!r.client_disconnected);
    let usage = r.usage.expect("usage recorded");
    assert!(usage.input_tokens > 0 && usage.output_tokens > 0);
    let response = r.response.as_ref().expect("response recorded");
    assert_eq!(response.blocks[0].text, "Found [REDACTED:aws-access-key-id] in the repo.");
    assert_eq!(response.stop_reason.as_deref(), Some("end_turn"));
    let request = r.request.as_ref().expect("masked request recorded");
    assert_eq!(request["messages"][0]["content"], "my key is [REDACTED:aws-access-key-id]");
    let counts: Vec<(Direction, u32)> = r.masked.iter().map(|m| (m.direction, m.count)).collect();
    assert!(counts.contains(&(Direction::Request, 1)) && counts.contains(&(Direction::Response, 1)), "{counts:?}");
    assert!(r.timings.total_ms.is_some() && r.timings.first_byte_ms.is_some());
    assert_eq!(x.stored.envoy.response_code, Some(200));
    assert!(x.stored.envoy.bytes_sent > 0);

    // Neither the service key nor any secret that passed through is anywhere in the store.
    let mut stored = Vec::new();
    for suffix in ["", "-wal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", stack.recorder.db.display())) {
            stored.extend(b);
        }
    }
    let stored = String::from_utf8_lossy(&stored);
    for needle in [&stack.api_key, &upstream_secret, &sent_secret] {
        assert!(!stored.contains(needle.as_str()), "the database holds {needle}");
    }
}

#[tokio::test]
async fn json_exchange_and_refusals_are_recorded_with_their_decision() {
    let stack = start("rec-json").await;
    let ok = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&stack, &ok, body.clone()).send().await.unwrap().status(), 200);
    let refused = request_id();
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth("not-a-jwt")
        .header("x-request-id", &refused)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let forbidden = request_id();
    let outsider = stack.key.mint(&stack.claims("mallory", &["sales"]));
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(outsider)
        .header("x-request-id", &forbidden)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);

    let x = stack.recorder.wait_for(&ok, WAIT).await.expect("recorded");
    assert!(!x.stored.record.stream);
    assert_eq!(x.stored.record.response.as_ref().unwrap().blocks[0].text, scrim_devstack::stand_in::DEFAULT_REPLY);
    let x = stack.recorder.wait_for(&refused, WAIT).await.expect("refusal recorded");
    assert_eq!(x.stored.record.decision, Decision::Unauthenticated);
    assert_eq!(x.stored.record.reason.as_deref(), Some("malformed"));
    assert!(x.stored.record.user.is_none());
    assert_eq!(x.stored.envoy.response_code, Some(401));
    let x = stack.recorder.wait_for(&forbidden, WAIT).await.expect("refusal recorded");
    assert_eq!(x.stored.record.decision, Decision::Forbidden);
    assert_eq!(x.stored.record.user.as_ref().unwrap().subject, "mallory");
}

#[tokio::test]
async fn client_that_disconnects_mid_stream_still_produces_a_record_marked_as_such() {
    use futures_util::StreamExt;
    let stack = start("rec-disconnect").await;
    stack.stand_in.set_reply_text("Hi, all of you: this stream will be cut.");
    let gate = stack.stand_in.hold_streams();
    let id = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let resp = post(&stack, &id, body).send().await.unwrap();
    let mut stream = resp.bytes_stream();
    let first = tokio::time::timeout(WAIT, stream.next()).await.unwrap();
    assert!(first.is_some());
    drop(stream);
    gate.wait_parked(1).await;
    drop(gate);
    let x = stack.recorder.wait_for(&id, WAIT).await.expect("a cut exchange is still recorded");
    assert!(x.stored.record.client_disconnected, "{:?}", x.stored.record);
}

#[tokio::test]
async fn a_record_over_the_recorders_cap_is_counted_and_rejected_and_ingestion_goes_on() {
    let stack = Stack::start(StackOptions {
        name: "rec-oversized",
        recorder: scrim_recorder::ingest::IngestConfig {
            max_record_bytes: 16 * 1024,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("stack starts");
    let big = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
        "messages": [{"role": "user", "content": "lorem ipsum ".repeat(4096)}]});
    assert_eq!(post(&stack, &big, body).send().await.unwrap().status(), 200);
    let small = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&stack, &small, body).send().await.unwrap().status(), 200);

    stack.recorder.wait_for(&small, WAIT).await.expect("the next exchange is still recorded");
    let stats = stack.recorder.stats();
    assert_eq!(stats.oversized, 1, "{stats:?}");
    assert!(stack.recorder.wait_for(&big, Duration::ZERO).await.is_none(), "the oversized record is not stored");
}

#[tokio::test]
async fn an_access_log_entry_without_an_audit_record_is_counted_and_ingestion_goes_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = start("rec-missing").await;
    // Envoy answers a request it cannot parse itself, before any HTTP filter runs: its access
    // log entry carries no audit record.
    let mut conn = tokio::net::TcpStream::connect(stack.envoy.gateway).await.unwrap();
    conn.write_all(b"POST /v1/messages HTTP/1.1\r\nhost: gateway\r\ncontent-length: 5\r\ncontent-length: 7\r\n\r\nhello").await.unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await.unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&answer));

    let id = request_id();
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(post(&stack, &id, body).send().await.unwrap().status(), 200);
    stack.recorder.wait_for(&id, WAIT).await.expect("the next exchange is still recorded");
    let stats = stack.recorder.stats();
    assert_eq!(stats.missing_record, 1, "{stats:?}");
}
