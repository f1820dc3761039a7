//! The SQLite store: sessions, tamper evidence against direct edits of the file, and how much
//! a long agent session costs to keep.

mod common;

use common::*;
use rusqlite::Connection;
use scrim_recorder::chain::Problem;
use scrim_recorder::envoy::envoy_fields;
use scrim_recorder::record::StoredRecord;
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::{SessionQuery, Store};
use std::path::Path;

fn stored(record: scrim_core::audit::AuditRecord, start_s: i64) -> StoredRecord {
    let envoy = envoy_fields(&record_entry(&record, start_s));
    StoredRecord { record, envoy }
}

/// Ten exchanges x1..x10 over sessions s-a (odd) and s-b (even), one append each.
fn ten_records(db: &Path) -> SqliteStore {
    let mut store = SqliteStore::open(db).unwrap();
    for i in 1..=10 {
        let (session, user) = if i % 2 == 1 {
            ("s-a", "alice")
        } else {
            ("s-b", "bob")
        };
        let mut r = simple_record(&format!("x{i}"), session, user);
        r.request =
            Some(serde_json::json!({"messages": [{"role": "user", "content": words(i, 400)}]}));
        store
            .append(&[stored(r, 1_700_000_000 + i as i64)])
            .unwrap();
    }
    store
}

fn tamper(db: &Path, sql: &str) {
    Connection::open(db).unwrap().execute_batch(sql).unwrap();
}

#[test]
fn sessions_are_listed_newest_first_and_filtered_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let store = ten_records(&dir.path().join("a.db"));
    let all = store.sessions(&SessionQuery::default()).unwrap();
    assert_eq!(
        all.iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        ["s-b", "s-a"]
    );
    assert_eq!(all[0].exchanges, 5);
    assert_eq!(all[0].subjects, ["bob"]);
    assert_eq!(all[0].input_tokens, 50);
    assert_eq!(all[0].models, ["claude-sonnet-4-5"]);
    assert_eq!(all[0].last_ms, Some(1_700_000_010_000));
    let alice = store
        .sessions(&SessionQuery {
            subject: Some("alice".into()),
            limit: None,
        })
        .unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].session_id, "s-a");
}

#[test]
fn session_shows_its_exchanges_in_order_with_content_restored() {
    let dir = tempfile::tempdir().unwrap();
    let store = ten_records(&dir.path().join("a.db"));
    let ex = store.session("s-a").unwrap();
    let ids: Vec<_> = ex
        .iter()
        .map(|e| e.stored.record.exchange_id.as_str())
        .collect();
    assert_eq!(ids, ["x1", "x3", "x5", "x7", "x9"]);
    assert_eq!(
        ex[0].stored.record.request.as_ref().unwrap()["messages"][0]["content"],
        words(1, 400)
    );
    assert!(store.session("nope").unwrap().is_empty());
}

#[test]
fn untouched_store_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let report = ten_records(&dir.path().join("a.db")).verify().unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(10));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

#[test]
fn edited_and_deleted_rows_are_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    drop(ten_records(&db));
    tamper(
        &db,
        "UPDATE records SET body = replace(body, '\"output_tokens\":20', '\"output_tokens\":2') WHERE seq = 3;
         DELETE FROM records WHERE seq = 7;",
    );
    let problems = SqliteStore::open(&db).unwrap().verify().unwrap().problems;
    assert_eq!(
        problems,
        vec![
            Problem::Altered {
                seq: 3,
                exchange_id: "x3".into()
            },
            Problem::Deleted {
                before_seq: 8,
                missing_seqs: Some((7, 7))
            },
        ]
    );
}

#[test]
fn edited_index_column_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    drop(ten_records(&db));
    tamper(&db, "UPDATE records SET subject = 'mallory' WHERE seq = 4;");
    let problems = SqliteStore::open(&db).unwrap().verify().unwrap().problems;
    assert_eq!(
        problems,
        vec![Problem::Altered {
            seq: 4,
            exchange_id: "x4".into()
        }]
    );
}

#[test]
fn row_inserted_into_the_middle_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    drop(ten_records(&db));
    // Make room at 5 and copy record 2 there, as someone replaying an old exchange would.
    tamper(
        &db,
        "UPDATE records SET seq = -seq WHERE seq >= 5;
         UPDATE records SET seq = 1 - seq WHERE seq < 0;
         INSERT INTO records (seq, exchange_id, session_id, subject, start_ms, model, decision,
                              input_tokens, output_tokens, body, prev_hash, hash)
           SELECT 5, exchange_id, session_id, subject, start_ms, model, decision,
                  input_tokens, output_tokens, body, prev_hash, hash FROM records WHERE seq = 2;",
    );
    let problems = SqliteStore::open(&db).unwrap().verify().unwrap().problems;
    assert_eq!(
        problems,
        vec![Problem::Inserted {
            seq: 5,
            exchange_id: "x2".into()
        }]
    );
}

#[test]
fn edited_content_piece_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    drop(ten_records(&db));
    tamper(&db, "UPDATE contents SET bytes = CAST(replace(CAST(bytes AS TEXT), 'the', 'THE') AS BLOB) WHERE hash = (SELECT min(hash) FROM contents WHERE CAST(bytes AS TEXT) LIKE '%the%');");
    let problems = SqliteStore::open(&db).unwrap().verify().unwrap().problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        matches!(problems[0], Problem::ContentAltered { .. }),
        "{problems:?}"
    );
}

#[test]
fn deleted_content_piece_is_named_by_verify() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let store = ten_records(&db);
    tamper(
        &db,
        "DELETE FROM contents WHERE hash = (SELECT min(hash) FROM contents);",
    );
    let problems = store.verify().unwrap().problems;
    assert!(
        matches!(problems.as_slice(), [Problem::ContentMissing { .. }]),
        "{problems:?}"
    );
    // The rest of the record still reads; the missing piece is marked.
    let export = store.session("s-a").unwrap();
    assert_eq!(export.len(), 5);
}

#[test]
fn fifty_turn_session_storage_grows_with_the_conversation_not_with_turns() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let mut store = SqliteStore::open(&db).unwrap();
    let records = agent_session("agent-1", 50);
    let request_bytes: usize = records
        .iter()
        .map(|r| {
            serde_json::to_vec(r.request.as_ref().unwrap())
                .unwrap()
                .len()
        })
        .sum();
    let record_bytes: usize = records.iter().map(|r| r.to_bytes().len()).sum();
    for (i, r) in records.iter().enumerate() {
        store
            .append(&[stored(r.clone(), 1_700_000_000 + i as i64)])
            .unwrap();
    }
    let usage = store.usage().unwrap();
    let stored_bytes = usage.record_bytes + usage.content_bytes;
    let last_request = serde_json::to_vec(records.last().unwrap().request.as_ref().unwrap())
        .unwrap()
        .len();
    drop(store);
    let file_bytes = std::fs::metadata(&db).unwrap().len()
        + std::fs::metadata(db.with_extension("db-wal"))
            .map(|m| m.len())
            .unwrap_or(0);
    println!(
        "dedup: 50 turns, raw requests sent {request_bytes} B (records {record_bytes} B), last request {last_request} B; \
         stored {stored_bytes} B ({} record rows {} B + {} pieces {} B): {:.1}x less than requests sent; SQLite file incl. WAL {file_bytes} B",
        usage.records,
        usage.record_bytes,
        usage.content_pieces,
        usage.content_bytes,
        request_bytes as f64 / stored_bytes as f64,
    );
    // Grows with the conversation: a small multiple of the final conversation, far below
    // 50 copies of it.
    assert!(
        stored_bytes < 3 * last_request as u64,
        "stored {stored_bytes} vs last request {last_request}"
    );
    let back = SqliteStore::open(&db).unwrap().session("agent-1").unwrap();
    assert_eq!(back.len(), 50);
    assert_eq!(back[49].stored.record, records[49]);
}
