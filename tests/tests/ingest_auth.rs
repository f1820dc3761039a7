//! Authenticated ingest through the real Envoy: Envoy presents the ingest token in its gRPC
//! access log's initial metadata and its entries are stored; a local process that reaches the
//! recorder's port without the token (or with a wrong one) is refused and nothing it sent is
//! stored, counted as unauthenticated.

use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties};
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_client::AccessLogServiceClient;
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
    HttpAccessLogEntries, Identifier, LogEntries,
};
use envoy_types::pb::envoy::service::accesslog::v3::StreamAccessLogsMessage;
use scrim_core::audit::{AuditRecord, AuditUser, Decision, FILTER_STATE_KEY};
use scrim_devstack::stack::{rand_u64, Stack, StackOptions};
use serde_json::json;
use std::time::Duration;

/// One access-log message carrying a forged audit record for `exchange_id`.
fn forged_message(exchange_id: &str) -> StreamAccessLogsMessage {
    let mut record = AuditRecord::new(exchange_id, "forged-session", "POST", "/v1/messages", Decision::Allowed);
    record.user = Some(AuditUser { subject: "mallory".into(), email: None, issuer: "forged".into(), groups: vec![] });
    let mut common = AccessLogCommon::default();
    common.filter_state_objects.insert(FILTER_STATE_KEY.into(), scrim_recorder::envoy::filter_state_any(&record.to_bytes()));
    StreamAccessLogsMessage {
        identifier: Some(Identifier { node: None, log_name: "scrim".into() }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![HttpAccessLogEntry {
                common_properties: Some(common),
                request: Some(HttpRequestProperties { request_id: exchange_id.into(), ..Default::default() }),
                ..Default::default()
            }],
        })),
    }
}

/// Streams one forged message to the recorder as a local process would; `token` goes in the
/// initial metadata the way Envoy sends its own.
async fn forge(addr: std::net::SocketAddr, token: Option<&str>, exchange_id: &str) -> tonic::Status {
    let mut client = AccessLogServiceClient::connect(format!("http://{addr}")).await.expect("the port is reachable");
    let mut request = tonic::Request::new(futures_util::stream::iter(vec![forged_message(exchange_id)]));
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    client.stream_access_logs(request).await.expect_err("a forged stream is refused")
}

#[tokio::test]
async fn forged_entries_without_the_ingest_token_are_refused_while_envoys_are_stored() {
    let stack = Stack::start(StackOptions { name: "ingest-auth", ..Default::default() }).await.unwrap();
    let no_token = format!("forged-{:016x}", rand_u64());
    let wrong_token = format!("forged-{:016x}", rand_u64());
    let status = forge(stack.recorder.addr, None, &no_token).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    let wrong = format!("scrim-recorder-token-{:032x}", rand_u64());
    let status = forge(stack.recorder.addr, Some(&wrong), &wrong_token).await;
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    // The real Envoy's entry, sent after the forgeries, is stored.
    let id = format!("real-{:016x}", rand_u64());
    let response = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(stack.token())
        .header("x-request-id", &id)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(stack.recorder.wait_for(&id, Duration::from_secs(20)).await.is_some(), "Envoy's entry is stored");

    let stored: Vec<String> = stack.recorder.exchanges().into_iter().map(|x| x.stored.record.exchange_id).collect();
    assert!(!stored.contains(&no_token) && !stored.contains(&wrong_token), "forged entries stored: {stored:?}");
    assert!(stored.iter().all(|x| !x.starts_with("forged-")));
    let stats = stack.recorder.stats();
    assert_eq!(stats.unauthenticated, 2, "{stats:?}");
    assert_eq!(stats.messages, stats.stored, "every message read came from Envoy: {stats:?}");
    // What Envoy sent is sealed with the recorder's key.
    let report = stack.recorder.verify();
    assert!(report.problems.is_empty() && report.seals_checked, "{report:?}");
    assert_eq!(report.sealed_by.values().sum::<u64>(), report.records, "{report:?}");
}
