//! Test helpers: a recorder on a random loopback port, hand-built Envoy access-log messages,
//! and a synthetic agent conversation.
#![allow(dead_code)]

use envoy_types::pb::envoy::data::accesslog::v3::{
    AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, HttpResponseProperties,
};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use envoy_types::pb::google::protobuf::{Any, Duration, Timestamp, UInt32Value};
use scrim_core::audit::{
    AuditRecord, AuditResponse, AuditUser, Decision, ResponseBlock, Usage, FILTER_STATE_KEY,
};
use scrim_recorder::envoy::filter_state_any;
use scrim_recorder::ingest::{self, Ingest, IngestConfig, IngestStats};
use scrim_recorder::store::sqlite::SqliteStore;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// A running recorder; stops when dropped.
pub struct Recorder {
    pub addr: SocketAddr,
    pub stats: Arc<IngestStats>,
    pub db: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Recorder {
    /// Binds 127.0.0.1:0 before returning, so clients can connect at once.
    pub async fn start(db: &Path, config: IngestConfig) -> Recorder {
        let store = SqliteStore::open(db).expect("open store");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ingest = Ingest::new(Arc::new(Mutex::new(store)), config);
        let stats = ingest.stats();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            ingest::serve(listener, ingest, async {
                stopped.await.ok();
            })
            .await
            .expect("serve");
        });
        Recorder {
            addr,
            stats,
            db: db.to_owned(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> AccessLogServiceClient<tonic::transport::Channel> {
        AccessLogServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// Sends the messages on one stream, as Envoy does, and waits for the server to finish
    /// it: when this returns, the server has committed (or rejected) every entry.
    pub async fn send(&self, messages: Vec<StreamAccessLogsMessage>) -> Result<(), tonic::Status> {
        send_to(self.addr, messages).await
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            stop.send(()).ok();
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// [`Recorder::send`] without borrowing the recorder (for spawned senders).
pub async fn send_to(
    addr: SocketAddr,
    messages: Vec<StreamAccessLogsMessage>,
) -> Result<(), tonic::Status> {
    let mut client = AccessLogServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    client
        .stream_access_logs(tokio_stream::iter(messages))
        .await
        .map(|_| ())
}

/// As [`send_to`], presenting `token` as Envoy does (`authorization: Bearer` in the stream's
/// initial metadata); `None` sends no token.
pub async fn send_with_token(
    addr: SocketAddr,
    token: Option<&str>,
    messages: Vec<StreamAccessLogsMessage>,
) -> Result<(), tonic::Status> {
    let mut client = AccessLogServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let mut request = tonic::Request::new(tokio_stream::iter(messages));
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client.stream_access_logs(request).await.map(|_| ())
}

/// One message of HTTP entries, with the identifier Envoy sends on a stream's first message.
pub fn message(entries: Vec<HttpAccessLogEntry>) -> StreamAccessLogsMessage {
    StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: None,
            log_name: "scrim".into(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: entries,
        })),
    }
}

/// An entry as Envoy logs it, carrying `filter_state` (if any) under `wasm.scrim_audit`.
pub fn entry(filter_state: Option<Any>, request_id: &str, start_s: i64) -> HttpAccessLogEntry {
    let mut common = AccessLogCommon {
        start_time: Some(Timestamp {
            seconds: start_s,
            nanos: 0,
        }),
        time_to_last_downstream_tx_byte: Some(Duration {
            seconds: 0,
            nanos: 750_000_000,
        }),
        time_to_first_upstream_rx_byte: Some(Duration {
            seconds: 0,
            nanos: 120_000_000,
        }),
        upstream_cluster: "anthropic".into(),
        upstream_remote_address: Some(socket("160.79.104.10", 443)),
        downstream_remote_address: Some(socket("127.0.0.1", 40123)),
        ..Default::default()
    };
    if let Some(any) = filter_state {
        common
            .filter_state_objects
            .insert(FILTER_STATE_KEY.into(), any);
    }
    HttpAccessLogEntry {
        common_properties: Some(common),
        request: Some(HttpRequestProperties {
            request_id: request_id.into(),
            path: "/v1/messages".into(),
            request_headers_bytes: 400,
            request_body_bytes: 1200,
            ..Default::default()
        }),
        response: Some(HttpResponseProperties {
            response_code: Some(UInt32Value { value: 200 }),
            response_headers_bytes: 300,
            response_body_bytes: 2000,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn socket(ip: &str, port: u32) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::{
        address, socket_address, Address, SocketAddress,
    };
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// An entry carrying `record`.
pub fn record_entry(record: &AuditRecord, start_s: i64) -> HttpAccessLogEntry {
    entry(
        Some(filter_state_any(&record.to_bytes())),
        &record.exchange_id,
        start_s,
    )
}

/// A small allowed exchange of `subject` in `session`.
pub fn simple_record(exchange: &str, session: &str, subject: &str) -> AuditRecord {
    let mut r = AuditRecord::new(exchange, session, "POST", "/v1/messages", Decision::Allowed);
    r.user = Some(AuditUser {
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        issuer: "https://idp.test".into(),
        groups: vec!["dev".into()],
    });
    r.model = Some("claude-sonnet-4-5".into());
    r.request = Some(
        json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": format!("question {exchange}")}]}),
    );
    r.response = Some(AuditResponse {
        blocks: vec![ResponseBlock {
            kind: "text".into(),
            text: format!("answer {exchange}"),
            name: None,
            id: None,
        }],
        stop_reason: Some("end_turn".into()),
    });
    r.usage = Some(Usage {
        input_tokens: 10,
        output_tokens: 20,
        ..Default::default()
    });
    r
}

/// Deterministic filler text (a tiny linear congruential generator over a word list).
pub fn words(seed: u64, bytes: usize) -> String {
    const WORDS: &[&str] = &[
        "fn", "let", "the", "config", "request", "stream", "buffer", "value", "error", "match",
        "return", "token", "client", "server", "session", "record", "masking", "rule", "async",
        "self", "impl", "struct", "where", "chunk", "header", "body", "upstream", "filter",
    ];
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut s = String::with_capacity(bytes + 16);
    while s.len() < bytes {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        s.push_str(WORDS[(state >> 33) as usize % WORDS.len()]);
        s.push(if (state >> 20).is_multiple_of(11) {
            '\n'
        } else {
            ' '
        });
    }
    s
}

/// A Claude Code-like session: every turn resends system prompt, tools and the whole
/// conversation, moves the cache marker to the newest message, and gets back text plus a tool
/// call whose result the next turn sends. Returns one audit record per turn.
pub fn agent_session(session: &str, turns: usize) -> Vec<AuditRecord> {
    let system =
        json!([{"type": "text", "text": words(1, 12_000), "cache_control": {"type": "ephemeral"}}]);
    let tools: Vec<Value> = (0..15)
        .map(|i| {
            json!({
                "name": format!("Tool{i}"),
                "description": words(100 + i, 800),
                "input_schema": {"type": "object", "properties": {"path": {"type": "string"}, "limit": {"type": "integer"}}, "required": ["path"]},
            })
        })
        .collect();
    let mut history: Vec<Value> = Vec::new();
    let mut records = Vec::new();
    let mut previous: Option<(String, String, String)> = None; // text, tool id, tool input
    for turn in 0..turns {
        if let Some((text, tool_id, input)) = previous.take() {
            history.push(json!({"role": "assistant", "content": [
                {"type": "text", "text": text},
                {"type": "tool_use", "id": tool_id, "name": "Tool1", "input": serde_json::from_str::<Value>(&input).unwrap()},
            ]}));
            history.push(json!({"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": tool_id, "content": words(5000 + turn as u64, 3000)},
                {"type": "text", "text": words(7000 + turn as u64, 400)},
            ]}));
        } else {
            history.push(
                json!({"role": "user", "content": [{"type": "text", "text": words(9000, 600)}]}),
            );
        }
        let mut messages = history.clone();
        // Claude Code marks the newest message for prompt caching; the mark moves each turn.
        if let Some(Value::Array(blocks)) = messages.last_mut().and_then(|m| m.get_mut("content")) {
            if let Some(Value::Object(last)) = blocks.last_mut() {
                last.insert("cache_control".into(), json!({"type": "ephemeral"}));
            }
        }
        let request = json!({
            "model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": true,
            "system": system, "tools": tools, "messages": messages,
            "metadata": {"user_id": format!("user_{session}")},
        });
        let text = words(20_000 + turn as u64, 700);
        let tool_id = format!("toolu_{turn:04}");
        let input = format!(r#"{{"path":"src/file{turn}.rs","limit":200}}"#);
        let mut r = simple_record(&format!("{session}-turn-{turn}"), session, "alice");
        r.stream = true;
        r.request = Some(request);
        r.response = Some(AuditResponse {
            blocks: vec![
                ResponseBlock {
                    kind: "text".into(),
                    text: text.clone(),
                    name: None,
                    id: None,
                },
                ResponseBlock {
                    kind: "tool_use".into(),
                    text: input.clone(),
                    name: Some("Tool1".into()),
                    id: Some(tool_id.clone()),
                },
            ],
            stop_reason: Some("tool_use".into()),
        });
        r.usage = Some(Usage {
            input_tokens: 20_000 + 1500 * turn as u64,
            output_tokens: 300,
            cache_read_input_tokens: 18_000,
            cache_creation_input_tokens: 1500,
        });
        previous = Some((text, tool_id, input));
        records.push(r);
    }
    records
}
