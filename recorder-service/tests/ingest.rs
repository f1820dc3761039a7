//! The gRPC ingest path, end to end on loopback: hand-built Envoy access-log messages in,
//! rows in the SQLite file out.

mod common;

use common::*;
use scrim_recorder::envoy::filter_state_any;
use scrim_recorder::ingest::{IngestConfig, StatsSnapshot};
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::Store;
use std::time::Instant;

#[tokio::test]
async fn records_are_stored_with_merged_envoy_fields() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&dir.path().join("a.db"), IngestConfig::default()).await;
    let records = [
        simple_record("x1", "s1", "alice"),
        simple_record("x2", "s1", "alice"),
    ];
    rec.send(vec![
        message(vec![record_entry(&records[0], 1_700_000_000)]),
        message(vec![record_entry(&records[1], 1_700_000_005)]),
    ])
    .await
    .unwrap();

    let store = SqliteStore::open(&rec.db).unwrap();
    let exchanges = store.session("s1").unwrap();
    assert_eq!(exchanges.len(), 2);
    assert_eq!(exchanges[0].stored.record, records[0]);
    assert_eq!(exchanges[1].stored.record, records[1]);
    let e = &exchanges[1].stored.envoy;
    assert_eq!(e.response_code, Some(200));
    assert_eq!(e.bytes_received, 1600);
    assert_eq!(e.bytes_sent, 2300);
    assert_eq!(e.upstream_host.as_deref(), Some("160.79.104.10:443"));
    assert_eq!(e.upstream_cluster.as_deref(), Some("anthropic"));
    assert_eq!(e.downstream_address.as_deref(), Some("127.0.0.1:40123"));
    assert_eq!(e.start_time_ms, Some(1_700_000_005_000));
    assert_eq!(e.duration_ms, Some(750));
    assert_eq!(e.upstream_first_byte_ms, Some(120));
    assert_eq!(e.request_id.as_deref(), Some("x2"));
    assert_eq!(rec.stats.snapshot().stored, 2);
    rec.stop().await;
}

#[tokio::test]
async fn rejected_entries_are_counted_and_ingestion_continues() {
    let dir = tempfile::tempdir().unwrap();
    let config = IngestConfig {
        max_record_bytes: 4096,
        ..IngestConfig::default()
    };
    let rec = Recorder::start(&dir.path().join("a.db"), config).await;
    let mut big = simple_record("big", "s1", "alice");
    big.request =
        Some(serde_json::json!({"messages": [{"role": "user", "content": "x".repeat(5000)}]}));
    let mut wrong_type = filter_state_any(&simple_record("wt", "s1", "alice").to_bytes());
    wrong_type.type_url = "type.googleapis.com/google.protobuf.Struct".into();

    let first = message(vec![
        record_entry(&simple_record("ok1", "s1", "alice"), 1),
        entry(Some(filter_state_any(b"{\"version\":1,")), "bad-json", 2),
        entry(None, "no-record", 3),
        record_entry(&big, 4),
        entry(Some(wrong_type), "wrong-type", 5),
        record_entry(&simple_record("ok2", "s1", "alice"), 6),
    ]);
    let second = message(vec![record_entry(&simple_record("ok3", "s1", "alice"), 7)]);
    rec.send(vec![first, second]).await.unwrap();

    assert_eq!(
        rec.stats.snapshot(),
        StatsSnapshot {
            messages: 2,
            stored: 3,
            missing_record: 1,
            malformed: 2,
            oversized: 1,
            ..Default::default()
        }
    );
    let ids: Vec<String> = SqliteStore::open(&rec.db)
        .unwrap()
        .session("s1")
        .unwrap()
        .into_iter()
        .map(|e| e.stored.record.exchange_id)
        .collect();
    assert_eq!(ids, ["ok1", "ok2", "ok3"]);
    rec.stop().await;
}

// Guards against tonic's 4 MiB default decoding limit silently dropping big agent turns.
#[tokio::test]
async fn record_above_four_mebibytes_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&dir.path().join("a.db"), IngestConfig::default()).await;
    let mut r = simple_record("huge", "s1", "alice");
    r.request =
        Some(serde_json::json!({"messages": [{"role": "user", "content": words(3, 5 << 20)}]}));
    rec.send(vec![message(vec![record_entry(&r, 1)])])
        .await
        .unwrap();
    let stored = SqliteStore::open(&rec.db).unwrap().session("s1").unwrap();
    assert_eq!(stored[0].stored.record, r);
    rec.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_from_several_workers_interleave_into_one_intact_chain() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&dir.path().join("a.db"), IngestConfig::default()).await;
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let msgs: Vec<_> = (0..10)
            .map(|i| {
                message(vec![record_entry(
                    &simple_record(&format!("w{w}-{i}"), &format!("s{w}"), "bob"),
                    i,
                )])
            })
            .collect();
        workers.spawn(send_to(rec.addr, msgs));
    }
    while let Some(sent) = workers.join_next().await {
        sent.unwrap().unwrap();
    }
    let report = SqliteStore::open(&rec.db).unwrap().verify().unwrap();
    assert_eq!(report.records, 40);
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    rec.stop().await;
}

/// Measures records/s through gRPC into SQLite with `synchronous=FULL`, in batches the size
/// Envoy flushes (16 KiB buffers hold about ten small records).
#[tokio::test]
async fn ingest_rate_is_printed() {
    let dir = tempfile::tempdir().unwrap();
    let rec = Recorder::start(&dir.path().join("a.db"), IngestConfig::default()).await;
    let n = 2000;
    let per_message = 10;
    let msgs: Vec<_> = (0..n / per_message)
        .map(|m| {
            message(
                (0..per_message)
                    .map(|i| {
                        record_entry(
                            &simple_record(&format!("r{m}-{i}"), &format!("s{}", m % 50), "carol"),
                            1,
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    let start = Instant::now();
    rec.send(msgs).await.unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(rec.stats.snapshot().stored, n as u64);
    println!("ingest: {n} records in {secs:.2} s = {:.0} records/s ({per_message} per message, debug build)", n as f64 / secs);
    rec.stop().await;
}
