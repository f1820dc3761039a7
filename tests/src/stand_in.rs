//! A local stand-in for the Anthropic Messages API: answers the endpoints Claude Code calls in
//! the real wire shapes, records every request, and can hold a stream open after its first
//! delta. It generates no real completions; every reply is the configured text.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::server::{lock, Running};

/// The reply text until a test sets another with [`ClaudeStandIn::set_reply_text`].
pub const DEFAULT_REPLY: &str = "Hello from the Scrim stand-in.";

/// Largest request body accepted. The real API takes 32 MB; long Claude Code sessions send
/// megabytes, so the stand-in must not be the thing that refuses them first.
const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

/// Characters per `text_delta`: small, so that every reply spans several deltas.
const DELTA_CHARS: usize = 5;

/// One request as the stand-in received it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedRequest {
    pub method: String,
    /// Path with its query string, e.g. `/v1/messages?beta=true`.
    pub path_and_query: String,
    /// Header names are lowercase; a repeated header appears once per value, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (give it in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body parsed as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// A reply given byte for byte: each chunk is its own body frame (so a test decides where the
/// network splits an event), with the headers it names.
#[derive(Clone, Debug, Default)]
pub struct ScriptedReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<Vec<u8>>,
    /// Pause between chunks, so each one leaves in its own network write and the gateway
    /// reads it separately (a pacing of the upstream, not a test synchronisation).
    pub pace: std::time::Duration,
}

struct StandInState {
    expected_api_key: Option<String>,
    script: Mutex<Option<ScriptedReply>>,
    reply_text: Mutex<String>,
    requests: Mutex<Vec<RecordedRequest>>,
    /// `true` while streams must wait after their first delta.
    held: watch::Sender<bool>,
    /// How many streams are waiting at the gate right now.
    parked: watch::Sender<usize>,
    next_message: AtomicU64,
}

/// Handle to a running stand-in. Clones share the same server.
#[derive(Clone)]
pub struct ClaudeStandIn {
    state: Arc<StandInState>,
    server: Arc<Running>,
}

impl ClaudeStandIn {
    /// Serves the API on `listener`. With `expected_api_key`, every request whose `x-api-key`
    /// differs is answered 401 (after being recorded). Must be called inside a tokio runtime.
    pub fn start(
        listener: TcpListener,
        expected_api_key: Option<String>,
    ) -> io::Result<ClaudeStandIn> {
        let state = Arc::new(StandInState {
            expected_api_key,
            script: Mutex::new(None),
            reply_text: Mutex::new(DEFAULT_REPLY.to_string()),
            requests: Mutex::new(Vec::new()),
            held: watch::Sender::new(false),
            parked: watch::Sender::new(0),
            next_message: AtomicU64::new(1),
        });
        let router = Router::new()
            .route("/v1/messages", post(messages))
            // Only scripted replies are meaningful here (tests of the OpenAI stream shape).
            .route("/v1/chat/completions", post(messages))
            .route("/v1/messages/count_tokens", post(count_tokens))
            .route("/v1/models", get(models))
            .route("/api/hello", get(hello).head(hello))
            .fallback(not_found)
            .layer(middleware::from_fn_with_state(
                state.clone(),
                record_and_authenticate,
            ))
            .with_state(state.clone());
        let server = Arc::new(Running::spawn(listener, router)?);
        Ok(ClaudeStandIn { state, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://<addr>`, the value for `ANTHROPIC_BASE_URL` or an Envoy upstream.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Every request received so far, oldest first, including refused ones.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.state.requests).clone()
    }

    pub fn clear_requests(&self) {
        lock(&self.state.requests).clear();
    }

    /// The text every later reply (streamed or not) carries.
    pub fn set_reply_text(&self, text: impl Into<String>) {
        *lock(&self.state.reply_text) = text.into();
    }

    /// Every later `/v1/messages` answer is exactly this reply, whatever the request asked.
    pub fn set_scripted_reply(&self, reply: ScriptedReply) {
        *lock(&self.state.script) = Some(reply);
    }

    pub fn reply_text(&self) -> String {
        lock(&self.state.reply_text).clone()
    }

    /// From now on, streaming replies send everything up to and including their first
    /// `content_block_delta`, then wait until released. Releases when the guard drops, so
    /// a failing test cannot leave streams hanging.
    pub fn hold_streams(&self) -> StreamHold {
        self.state.held.send_replace(true);
        StreamHold {
            state: self.state.clone(),
        }
    }

    /// Lets held streams (and later ones) run to the end.
    pub fn release_streams(&self) {
        self.state.held.send_replace(false);
    }

    /// Releases held streams, then stops like [`DevIdp::stop`](crate::idp::DevIdp::stop).
    pub async fn stop(&self) {
        self.release_streams();
        self.server.stop().await;
    }
}

/// Keeps streams held while alive; see [`ClaudeStandIn::hold_streams`].
#[must_use = "streams are released as soon as the hold is dropped"]
pub struct StreamHold {
    state: Arc<StandInState>,
}

impl StreamHold {
    /// Resolves once at least `count` streams are waiting at the gate, i.e. have handed
    /// their first delta to the connection.
    pub async fn wait_parked(&self, count: usize) {
        let mut parked = self.state.parked.subscribe();
        // The sender lives in the state this hold keeps alive, so the wait cannot fail.
        let _ = parked.wait_for(|n| *n >= count).await;
    }

    /// How many streams are waiting at the gate now.
    pub fn parked(&self) -> usize {
        *self.state.parked.borrow()
    }

    pub fn release(self) {
        // Drop does the work.
    }
}

impl Drop for StreamHold {
    fn drop(&mut self) {
        self.state.held.send_replace(false);
    }
}

impl StandInState {
    /// Waits while streams are held, counted as parked meanwhile.
    async fn pass_gate(&self) {
        let mut held = self.held.subscribe();
        if !*held.borrow_and_update() {
            return;
        }
        // Decrements even if the client goes away and the stream is dropped mid-wait.
        struct Parked<'a>(&'a watch::Sender<usize>);
        impl Drop for Parked<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n = n.saturating_sub(1));
            }
        }
        self.parked.send_modify(|n| *n += 1);
        let _parked = Parked(&self.parked);
        let _ = held.wait_for(|held| !*held).await;
    }
}

/// The one place that shapes errors the way the real API does.
fn api_error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, Json(body)).into_response()
}

/// Records the request, then refuses it if the API key is wrong. Recording first lets tests
/// assert on what a refused caller sent.
async fn record_and_authenticate(
    State(state): State<Arc<StandInState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return api_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "request body too large or unreadable",
        );
    };
    let headers = parts
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path_and_query = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_string();
    lock(&state.requests).push(RecordedRequest {
        method: parts.method.to_string(),
        path_and_query,
        headers,
        body: body.to_vec(),
    });

    if let Some(expected) = &state.expected_api_key {
        let given = parts.headers.get("x-api-key").map(HeaderValue::as_bytes);
        if given != Some(expected.as_bytes()) {
            return api_error(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                "invalid x-api-key",
            );
        }
    }
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// A rough token count; only its growth with the input matters to tests.
fn tokens_for(bytes: usize) -> usize {
    (bytes / 4).max(1)
}

fn scripted(reply: ScriptedReply) -> Response {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let pace = reply.pace;
    let frames = futures_util::stream::unfold(reply.chunks.into_iter(), move |mut chunks| async move {
        let chunk = chunks.next()?;
        if !pace.is_zero() {
            tokio::time::sleep(pace).await;
        }
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), chunks))
    });
    builder
        .body(Body::from_stream(frames))
        .unwrap_or_else(|e| api_error(StatusCode::INTERNAL_SERVER_ERROR, "api_error", &e.to_string()))
}

async fn messages(State(state): State<Arc<StandInState>>, body: Bytes) -> Response {
    if let Some(reply) = lock(&state.script).clone() {
        return scripted(reply);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "request body is not valid JSON",
        );
    };
    let model = request["model"]
        .as_str()
        .unwrap_or("claude-stand-in")
        .to_string();
    let id = format!(
        "msg_standin{:014}",
        state.next_message.fetch_add(1, Ordering::Relaxed)
    );
    let text = lock(&state.reply_text).clone();
    let input_tokens = tokens_for(body.len());
    let output_tokens = tokens_for(text.len());

    if request["stream"].as_bool() != Some(true) {
        return Json(json!({
            "id": id,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn",
            "stop_sequence": null,
            "usage": usage(input_tokens, output_tokens),
        }))
        .into_response();
    }

    let events = stream_events(&id, &model, &text, input_tokens, output_tokens);
    // The gate sits right after the first text delta, or after `ping` if the text is empty.
    let gate_before = events
        .iter()
        .position(|(name, _)| *name == "content_block_delta")
        .unwrap_or(2)
        + 1;
    let frames: Vec<Bytes> = events
        .iter()
        .map(|(name, data)| Bytes::from(format!("event: {name}\ndata: {}\n\n", api_layout(data))))
        .collect();
    // One body frame per event, produced on demand: hyper flushes whatever it has whenever
    // the next frame is not ready, so a held stream has really delivered its first delta.
    let body = futures_util::stream::unfold(
        (frames.into_iter().enumerate(), state),
        move |(mut frames, state)| async move {
            let (index, frame) = frames.next()?;
            if index == gate_before {
                state.pass_gate().await;
            }
            Some((Ok::<_, Infallible>(frame), (frames, state)))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream; charset=utf-8")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_else(|e| {
            api_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                &e.to_string(),
            )
        })
}

fn usage(input_tokens: usize, output_tokens: usize) -> Value {
    json!({
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    })
}

/// The events of one streamed text reply, in the order the real API sends them.
fn stream_events(
    id: &str,
    model: &str,
    text: &str,
    input_tokens: usize,
    output_tokens: usize,
) -> Vec<(&'static str, Value)> {
    let mut events = vec![
        (
            "message_start",
            json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": null, "stop_sequence": null, "usage": usage(input_tokens, 1),
            }}),
        ),
        (
            "content_block_start",
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        ("ping", json!({"type": "ping"})),
    ];
    let chars: Vec<char> = text.chars().collect();
    for piece in chars.chunks(DELTA_CHARS) {
        let piece: String = piece.iter().collect();
        events.push((
            "content_block_delta",
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}),
        ));
    }
    events.push((
        "content_block_stop",
        json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push((
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": output_tokens}}),
    ));
    events.push(("message_stop", json!({"type": "message_stop"})));
    events
}

/// An event's data as the API writes it: a text delta with its keys in the API's order
/// (`json!` sorts them), everything else as serde_json writes it.
fn api_layout(data: &Value) -> String {
    match (data["type"].as_str(), data["index"].as_u64(), data["delta"]["text"].as_str()) {
        (Some("content_block_delta"), Some(index), Some(text)) if data["delta"]["type"] == "text_delta" => {
            let text = Value::from(text);
            format!(r#"{{"type":"content_block_delta","index":{index},"delta":{{"type":"text_delta","text":{text}}}}}"#)
        }
        _ => data.to_string(),
    }
}

async fn count_tokens(body: Bytes) -> Json<Value> {
    Json(json!({"input_tokens": tokens_for(body.len())}))
}

async fn models() -> Json<Value> {
    let data = json!([
        {"type": "model", "id": "claude-haiku-4-5-20251001", "display_name": "Claude Haiku 4.5", "created_at": "2025-10-01T00:00:00Z"},
        {"type": "model", "id": "claude-sonnet-4-5-20250929", "display_name": "Claude Sonnet 4.5", "created_at": "2025-09-29T00:00:00Z"},
        {"type": "model", "id": "claude-opus-4-1-20250805", "display_name": "Claude Opus 4.1", "created_at": "2025-08-05T00:00:00Z"},
    ]);
    let first = data[0]["id"].clone();
    let last = data[2]["id"].clone();
    Json(json!({"data": data, "has_more": false, "first_id": first, "last_id": last}))
}

async fn hello() -> StatusCode {
    StatusCode::OK
}

async fn not_found() -> Response {
    api_error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        "no such endpoint on the stand-in",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const KEY: &str = "sk-ant-test-standin";

    async fn start(key: Option<&str>) -> ClaudeStandIn {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        ClaudeStandIn::start(listener, key.map(str::to_string)).expect("start")
    }

    fn post(stand_in: &ClaudeStandIn, path: &str, body: Value) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .post(format!("{}{path}", stand_in.base_url()))
            .header("x-api-key", KEY)
            .json(&body)
    }

    /// Parses an SSE body strictly: every event is exactly `event:` then `data:` then a blank
    /// line, and the data's `type` names the event.
    fn parse_sse(text: &str) -> Vec<(String, Value)> {
        assert!(
            text.ends_with("\n\n"),
            "stream must end with a complete event"
        );
        text.trim_end_matches("\n\n")
            .split("\n\n")
            .map(|block| {
                let lines: Vec<&str> = block.split('\n').collect();
                assert_eq!(lines.len(), 2, "event block {block:?}");
                let name = lines[0].strip_prefix("event: ").expect("event line");
                let data: Value =
                    serde_json::from_str(lines[1].strip_prefix("data: ").expect("data line"))
                        .expect("json");
                assert_eq!(data["type"], name, "data type matches event name");
                (name.to_string(), data)
            })
            .collect()
    }

    fn delta_text(events: &[(String, Value)]) -> String {
        events
            .iter()
            .filter(|(name, _)| name == "content_block_delta")
            .map(|(_, data)| data["delta"]["text"].as_str().expect("text_delta"))
            .collect()
    }

    #[tokio::test]
    async fn non_streaming_reply_is_a_message_that_echoes_the_model() {
        let stand_in = start(Some(KEY)).await;
        let response = post(
            &stand_in,
            "/v1/messages?beta=true",
            json!({"model": "claude-x", "stream": false}),
        )
        .send()
        .await
        .expect("send");
        assert_eq!(response.status(), 200);
        let message: Value = response.json().await.expect("json");
        assert!(message["id"].as_str().expect("id").starts_with("msg_"));
        assert_eq!(message["type"], "message");
        assert_eq!(message["role"], "assistant");
        assert_eq!(message["model"], "claude-x");
        assert_eq!(
            message["content"],
            json!([{"type": "text", "text": DEFAULT_REPLY}])
        );
        assert_eq!(message["stop_reason"], "end_turn");
        for field in [
            "input_tokens",
            "output_tokens",
            "cache_creation_input_tokens",
            "cache_read_input_tokens",
        ] {
            assert!(message["usage"][field].is_u64(), "usage.{field}");
        }
    }

    #[tokio::test]
    async fn streamed_reply_is_valid_sse_whose_deltas_spell_the_reply() {
        let stand_in = start(Some(KEY)).await;
        stand_in.set_reply_text("Ünïcode-safe chunking of a longer reply.");
        let response = post(
            &stand_in,
            "/v1/messages?beta=true",
            json!({"model": "claude-x", "stream": true}),
        )
        .send()
        .await
        .expect("send");
        assert_eq!(response.status(), 200);
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .expect("ascii")
            .to_string();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        let events = parse_sse(&response.text().await.expect("body"));

        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        let deltas = names
            .iter()
            .filter(|n| **n == "content_block_delta")
            .count();
        assert!(deltas >= 3, "several deltas expected, got {deltas}");
        let mut expected = vec!["message_start", "content_block_start", "ping"];
        expected.extend(std::iter::repeat_n("content_block_delta", deltas));
        expected.extend(["content_block_stop", "message_delta", "message_stop"]);
        assert_eq!(names, expected);

        assert_eq!(delta_text(&events), stand_in.reply_text());
        assert_eq!(events[0].1["message"]["model"], "claude-x");
        assert_eq!(
            events[events.len() - 2].1["delta"]["stop_reason"],
            "end_turn"
        );
    }

    #[tokio::test]
    async fn wrong_or_missing_api_key_gets_an_authentication_error() {
        let stand_in = start(Some(KEY)).await;
        let url = format!("{}/v1/messages", stand_in.base_url());
        let client = reqwest::Client::new();
        for request in [
            client.post(&url).header("x-api-key", "sk-wrong"),
            client.post(&url),
        ] {
            let response = request
                .json(&json!({"stream": false}))
                .send()
                .await
                .expect("send");
            assert_eq!(response.status(), 401);
            let body: Value = response.json().await.expect("json");
            assert_eq!(
                body,
                json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}})
            );
        }
        assert_eq!(
            stand_in.requests().len(),
            2,
            "refused requests are recorded too"
        );
    }

    #[tokio::test]
    async fn requests_are_recorded_with_query_lowercase_headers_and_body() {
        let stand_in = start(None).await;
        let body = json!({"model": "m", "stream": false});
        reqwest::Client::new()
            .post(format!("{}/v1/messages?beta=true", stand_in.base_url()))
            .header("X-Claude-Code-Session-Id", "session-1")
            .json(&body)
            .send()
            .await
            .expect("send");
        let recorded = stand_in.requests();
        assert_eq!(recorded.len(), 1);
        assert_eq!(recorded[0].method, "POST");
        assert_eq!(recorded[0].path_and_query, "/v1/messages?beta=true");
        assert_eq!(
            recorded[0].header("x-claude-code-session-id"),
            Some("session-1")
        );
        assert_eq!(recorded[0].json(), Some(body));
    }

    #[tokio::test]
    async fn side_endpoints_answer_in_the_real_shapes() {
        let stand_in = start(Some(KEY)).await;
        let client = reqwest::Client::new();
        let base = stand_in.base_url();

        let small: Value = post(
            &stand_in,
            "/v1/messages/count_tokens?beta=true",
            json!({"m": "x"}),
        )
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
        let large: Value = post(
            &stand_in,
            "/v1/messages/count_tokens?beta=true",
            json!({"m": "x".repeat(4000)}),
        )
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
        assert!(large["input_tokens"].as_u64() > small["input_tokens"].as_u64());

        let models: Value = client
            .get(format!("{base}/v1/models?limit=1000"))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        let data = models["data"].as_array().expect("data");
        assert!(!data.is_empty());
        assert_eq!(models["has_more"], false);
        assert_eq!(models["first_id"], data[0]["id"]);
        assert_eq!(models["last_id"], data[data.len() - 1]["id"]);

        let hello = client
            .head(format!("{base}/api/hello"))
            .header("x-api-key", KEY)
            .send()
            .await
            .expect("send");
        assert_eq!(hello.status(), 200);
    }

    #[tokio::test]
    async fn held_stream_delivers_its_first_delta_before_release() {
        let stand_in = start(Some(KEY)).await;
        let hold = stand_in.hold_streams();
        let response = post(
            &stand_in,
            "/v1/messages",
            json!({"model": "m", "stream": true}),
        )
        .send()
        .await
        .expect("send");
        let mut body = response.bytes_stream();

        let mut received = String::new();
        while !received.contains("event: content_block_delta") {
            let chunk = body
                .next()
                .await
                .expect("stream ended before the first delta")
                .expect("chunk");
            received.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
        }
        hold.wait_parked(1).await;
        assert!(
            !received.contains("content_block_stop"),
            "nothing past the first delta yet: {received}"
        );
        // Not synchronisation, a bound: the stream is parked, so nothing may arrive meanwhile.
        let early = tokio::time::timeout(std::time::Duration::from_millis(100), body.next()).await;
        assert!(early.is_err(), "held stream sent more: {early:?}");

        hold.release();
        while let Some(chunk) = body.next().await {
            received.push_str(std::str::from_utf8(&chunk.expect("chunk")).expect("utf-8"));
        }
        let events = parse_sse(&received);
        assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("message_stop"));
        assert_eq!(delta_text(&events), DEFAULT_REPLY);
    }

    #[tokio::test]
    async fn stopping_releases_held_streams() {
        let stand_in = start(None).await;
        let hold = stand_in.hold_streams();
        let response = post(&stand_in, "/v1/messages", json!({"stream": true}))
            .send()
            .await
            .expect("send");
        hold.wait_parked(1).await;
        stand_in.stop().await;
        let events = parse_sse(&response.text().await.expect("body"));
        assert_eq!(events.last().map(|(n, _)| n.as_str()), Some("message_stop"));
        drop(hold);
    }
}
