//! The store contract, run against SQLite and a real PostgreSQL (started by
//! [`postgres_server`]): append, list, show, export, verify, content dedup, tamper detection by
//! editing rows with SQL directly, retention, several writers on one chain, and ingest rate.
//!
//! Each case is a function over a [`Backend`]; `contract!` turns it into one test per store
//! (`sqlite::<case>` and `postgres::<case>`).

mod common;
mod postgres_server;

use common::*;
use scrim_core::audit::AuditRecord;
use scrim_recorder::chain::Problem;
use scrim_recorder::envoy::envoy_fields;
use scrim_recorder::record::StoredRecord;
use scrim_core::audit::{Decision, Direction, MaskCount, Usage};
use scrim_recorder::store::{self, Document, ExchangeFilter, QueryLogEntry, SessionQuery, Store};
use scrim_recorder::chain_keys::ChainKeys;
use scrim_recorder::store::PurgeRequest;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// A store under test: fresh and empty, reachable by a new handle and by raw SQL.
trait Backend {
    const NAME: &'static str;
    fn new() -> Self;
    /// A new handle on the same store (another recorder, or the same one restarted).
    fn open(&self) -> Box<dyn Store>;
    /// As `open`, sealing appends with `keys` and checking seals in `verify`.
    fn open_keyed(&self, keys: &ChainKeys) -> Box<dyn Store>;
    /// Runs SQL directly against the database, bypassing the store.
    fn tamper(&self, sql: &str);
    /// Rows `(seq, body, prev_hash, hash)` in chain order, read with SQL.
    fn raw_rows(&self) -> Vec<(i64, String, Vec<u8>, Vec<u8>)>;
    /// Overwrites one row's body and hashes with SQL.
    fn rewrite(&self, seq: i64, body: &str, prev_hash: &[u8], hash: &[u8]);
}

struct Sqlite {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Backend for Sqlite {
    const NAME: &'static str = "SQLite";
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        Sqlite { _dir: dir, path }
    }
    fn open(&self) -> Box<dyn Store> {
        store::open(self.path.to_str().unwrap()).unwrap()
    }
    fn open_keyed(&self, keys: &ChainKeys) -> Box<dyn Store> {
        store::open_keyed(self.path.to_str().unwrap(), Some(Arc::new(keys.clone()))).unwrap()
    }
    fn raw_rows(&self) -> Vec<(i64, String, Vec<u8>, Vec<u8>)> {
        let conn = rusqlite::Connection::open(&self.path).unwrap();
        let mut stmt = conn.prepare("SELECT seq, body, prev_hash, hash FROM records ORDER BY seq").unwrap();
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    }
    fn rewrite(&self, seq: i64, body: &str, prev_hash: &[u8], hash: &[u8]) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute(
                "UPDATE records SET body = ?1, prev_hash = ?2, hash = ?3 WHERE seq = ?4",
                rusqlite::params![body, prev_hash, hash, seq],
            )
            .unwrap();
    }
    fn tamper(&self, sql: &str) {
        rusqlite::Connection::open(&self.path)
            .unwrap()
            .execute_batch(sql)
            .unwrap();
    }
}

struct Postgres {
    url: String,
}

impl Backend for Postgres {
    const NAME: &'static str = "PostgreSQL";
    fn new() -> Self {
        Postgres {
            url: postgres_server::server().fresh_database(),
        }
    }
    fn open(&self) -> Box<dyn Store> {
        store::open(&self.url).unwrap()
    }
    fn open_keyed(&self, keys: &ChainKeys) -> Box<dyn Store> {
        store::open_keyed(&self.url, Some(Arc::new(keys.clone()))).unwrap()
    }
    fn raw_rows(&self) -> Vec<(i64, String, Vec<u8>, Vec<u8>)> {
        let mut c = ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap();
        c.query("SELECT seq, body, prev_hash, hash FROM records ORDER BY seq", &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    }
    fn rewrite(&self, seq: i64, body: &str, prev_hash: &[u8], hash: &[u8]) {
        let mut c = ::postgres::Client::connect(&self.url, ::postgres::NoTls).unwrap();
        c.execute(
            "UPDATE records SET body = $1, prev_hash = $2, hash = $3 WHERE seq = $4",
            &[&body, &prev_hash, &hash, &seq],
        )
        .unwrap();
    }
    fn tamper(&self, sql: &str) {
        ::postgres::Client::connect(&self.url, ::postgres::NoTls)
            .unwrap()
            .batch_execute(sql)
            .unwrap();
    }
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $( #[test] fn $case() { super::$case(&<super::Sqlite as super::Backend>::new()) } )*
        }
        mod postgres {
            $( #[test] fn $case() { super::$case(&<super::Postgres as super::Backend>::new()) } )*
        }
    };
}

contract!(
    sessions_are_listed_newest_first_and_filtered_by_user,
    session_shows_its_exchanges_in_order_with_content_restored,
    export_walks_every_exchange_in_chain_order,
    untouched_store_verifies_and_a_reopened_store_extends_the_chain,
    edited_and_deleted_rows_are_named_by_verify,
    edited_index_column_is_named_by_verify,
    row_inserted_into_the_middle_is_named_by_verify,
    edited_content_piece_is_named_by_verify,
    deleted_content_piece_is_named_by_verify_and_the_rest_still_reads,
    repeated_conversation_content_is_stored_once,
    concurrent_writers_keep_one_linear_chain,
    purge_removes_old_payload_and_the_chain_still_verifies,
    purge_keeps_pieces_that_newer_records_share,
    content_deleted_inside_the_retention_period_is_still_reported,
    purge_horizon_never_moves_back,
    rewritten_row_with_recomputed_plain_hashes_is_caught_by_its_seal,
    rotated_keys_verify_old_records_under_the_old_id_and_new_under_the_new,
    unsealed_or_foreign_key_records_are_named_when_seals_are_checked,
    purge_is_a_sealed_chain_event_naming_horizon_and_command,
    horizon_raised_outside_the_chain_is_caught,
    ingest_rate_is_reported,
    find_sessions_applies_every_filter_to_the_exchanges_it_counts,
    find_sessions_pages_through_every_session_once_in_order,
    exchange_is_found_by_its_id,
    usage_by_user_totals_each_subject_with_anonymous_first,
    query_log_takes_entries,
    documents_are_replaced_by_id_and_found_by_key_or_subject_newest_first,
);

const DAY_S: i64 = 86_400;
const T0: i64 = 1_700_000_000;
/// When the purges of these tests run: after every record's start.
const NOW_MS: i64 = (T0 + 30 * DAY_S) * 1000;

/// Purges content before `before_ms`, as `purge` run at [`NOW_MS`] would.
fn purge(store: &mut Box<dyn Store>, before_ms: i64) -> store::PurgeReport {
    store
        .purge(&PurgeRequest {
            before_ms,
            now_ms: NOW_MS,
            command: "purge --older-than 24".into(),
        })
        .unwrap()
}

const OLD_KEY: &str = "k-2025 synthetic-chain-key-old-0123456789abcdef";
const NEW_KEY: &str = "k-2026 synthetic-chain-key-new-0123456789abcdef";

fn keys(text: &str) -> ChainKeys {
    ChainKeys::parse(text, "test").unwrap()
}

fn stored(record: AuditRecord, start_s: i64) -> StoredRecord {
    let envoy = envoy_fields(&record_entry(&record, start_s));
    StoredRecord { record, envoy }
}

/// Exchange `x{i}` in session s-a (odd, alice) or s-b (even, bob), starting `i` days after T0.
fn nth_record(i: u64) -> StoredRecord {
    let (session, user) = if i % 2 == 1 {
        ("s-a", "alice")
    } else {
        ("s-b", "bob")
    };
    let mut r = simple_record(&format!("x{i}"), session, user);
    r.request = Some(serde_json::json!({"messages": [{"role": "user", "content": words(i, 400)}]}));
    stored(r, T0 + i as i64 * DAY_S)
}

/// Ten exchanges x1..x10, one append each.
fn ten_records(b: &impl Backend) -> Box<dyn Store> {
    let mut store = b.open();
    for i in 1..=10 {
        store.append(&[nth_record(i)]).unwrap();
    }
    store
}

fn sessions_are_listed_newest_first_and_filtered_by_user(b: &impl Backend) {
    let store = ten_records(b);
    let all = store.sessions(&SessionQuery::default()).unwrap();
    let ids: Vec<_> = all.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(ids, ["s-b", "s-a"]);
    assert_eq!(all[0].exchanges, 5);
    assert_eq!(all[0].refused, 0);
    assert_eq!(all[0].subjects, ["bob"]);
    assert_eq!(all[0].input_tokens, 50);
    assert_eq!(all[0].output_tokens, 100);
    assert_eq!(all[0].models, ["claude-sonnet-4-5"]);
    assert_eq!(all[0].first_ms, Some((T0 + 2 * DAY_S) * 1000));
    assert_eq!(all[0].last_ms, Some((T0 + 10 * DAY_S) * 1000));
    let alice = store
        .sessions(&SessionQuery {
            subject: Some("alice".into()),
            limit: None,
        })
        .unwrap();
    assert_eq!(alice.len(), 1);
    assert_eq!(alice[0].session_id, "s-a");
    let one = store
        .sessions(&SessionQuery {
            subject: None,
            limit: Some(1),
        })
        .unwrap();
    assert_eq!(one.len(), 1);
}

fn session_shows_its_exchanges_in_order_with_content_restored(b: &impl Backend) {
    let store = ten_records(b);
    let ex = store.session("s-a").unwrap();
    let ids: Vec<_> = ex
        .iter()
        .map(|e| e.stored.record.exchange_id.as_str())
        .collect();
    assert_eq!(ids, ["x1", "x3", "x5", "x7", "x9"]);
    assert_eq!(ex[0].stored, nth_record(1));
    assert!(!ex[0].content_missing);
    assert!(store.session("nope").unwrap().is_empty());
}

fn export_walks_every_exchange_in_chain_order(b: &impl Backend) {
    // More than one page of the PostgreSQL cursor, in one batch.
    let batch: Vec<_> = (1..=600).map(nth_record).collect();
    let mut store = b.open();
    store.append(&batch).unwrap();
    let mut seen = Vec::new();
    store
        .for_each(&mut |ex| {
            seen.push((ex.seq, ex.stored));
            Ok(())
        })
        .unwrap();
    assert_eq!(seen.len(), 600);
    assert!(seen.iter().enumerate().all(|(i, (seq, _))| *seq == i as i64 + 1));
    assert_eq!(seen[599].1, batch[599]);
}

fn untouched_store_verifies_and_a_reopened_store_extends_the_chain(b: &impl Backend) {
    let report = ten_records(b).verify().unwrap();
    assert_eq!(report.records, 10);
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(10));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let mut again = b.open();
    again.append(&[nth_record(11)]).unwrap();
    let report = again.verify().unwrap();
    assert_eq!(report.head.as_ref().map(|h| h.0), Some(11));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn edited_and_deleted_rows_are_named_by_verify(b: &impl Backend) {
    let store = ten_records(b);
    b.tamper(
        "UPDATE records SET body = replace(body, '\"output_tokens\":20', '\"output_tokens\":2') WHERE seq = 3;
         DELETE FROM records WHERE seq = 7;",
    );
    assert_eq!(
        store.verify().unwrap().problems,
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

fn edited_index_column_is_named_by_verify(b: &impl Backend) {
    let store = ten_records(b);
    b.tamper("UPDATE records SET subject = 'mallory' WHERE seq = 4;");
    assert_eq!(
        store.verify().unwrap().problems,
        vec![Problem::Altered {
            seq: 4,
            exchange_id: "x4".into()
        }]
    );
}

fn row_inserted_into_the_middle_is_named_by_verify(b: &impl Backend) {
    let store = ten_records(b);
    // Make room at 5 and copy record 2 there, as someone replaying an old exchange would.
    b.tamper(
        "UPDATE records SET seq = -seq WHERE seq >= 5;
         UPDATE records SET seq = 1 - seq WHERE seq < 0;
         INSERT INTO records (seq, exchange_id, session_id, subject, start_ms, model, decision,
                              input_tokens, output_tokens, body, prev_hash, hash)
           SELECT 5, exchange_id, session_id, subject, start_ms, model, decision,
                  input_tokens, output_tokens, body, prev_hash, hash FROM records WHERE seq = 2;",
    );
    assert_eq!(
        store.verify().unwrap().problems,
        vec![Problem::Inserted {
            seq: 5,
            exchange_id: "x2".into()
        }]
    );
}

fn edited_content_piece_is_named_by_verify(b: &impl Backend) {
    let store = ten_records(b);
    b.tamper(
        "UPDATE contents SET bytes = (SELECT bytes FROM contents ORDER BY hash DESC LIMIT 1)
         WHERE hash = (SELECT min(hash) FROM contents);",
    );
    let problems = store.verify().unwrap().problems;
    assert!(
        matches!(problems.as_slice(), [Problem::ContentAltered { .. }]),
        "{problems:?}"
    );
}

fn deleted_content_piece_is_named_by_verify_and_the_rest_still_reads(b: &impl Backend) {
    let store = ten_records(b);
    b.tamper("DELETE FROM contents WHERE hash = (SELECT min(hash) FROM contents);");
    let problems = store.verify().unwrap().problems;
    assert!(
        matches!(problems.as_slice(), [Problem::ContentMissing { .. }]),
        "{problems:?}"
    );
    let mut exchanges = store.session("s-a").unwrap();
    exchanges.extend(store.session("s-b").unwrap());
    assert_eq!(exchanges.len(), 10);
    assert_eq!(exchanges.iter().filter(|e| e.content_missing).count(), 1);
}

fn repeated_conversation_content_is_stored_once(b: &impl Backend) {
    let mut store = b.open();
    let records = agent_session("agent-1", 20);
    let sent: usize = records.iter().map(|r| r.to_bytes().len()).sum();
    for (i, r) in records.iter().enumerate() {
        store.append(&[stored(r.clone(), T0 + i as i64)]).unwrap();
    }
    let usage = store.usage().unwrap();
    let kept = (usage.record_bytes + usage.content_bytes) as usize;
    assert!(kept * 3 < sent, "kept {kept} B of {sent} B sent");
    let back = store.session("agent-1").unwrap();
    assert_eq!(back[19].stored.record, records[19]);
    assert!(store.verify().unwrap().problems.is_empty());
}

fn concurrent_writers_keep_one_linear_chain(b: &impl Backend) {
    const WRITERS: u64 = 4;
    const BATCHES: u64 = 10;
    const PER_BATCH: u64 = 5;
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            // Each writer is its own handle, as separate recorders on one database are.
            let mut store = b.open();
            s.spawn(move || {
                for k in 0..BATCHES {
                    let batch: Vec<_> = (0..PER_BATCH)
                        .map(|j| nth_record(1000 * w + PER_BATCH * k + j))
                        .collect();
                    store.append(&batch).unwrap();
                }
            });
        }
    });
    let report = b.open().verify().unwrap();
    assert_eq!(report.records, WRITERS * BATCHES * PER_BATCH);
    assert_eq!(
        report.head.map(|h| h.0),
        Some((WRITERS * BATCHES * PER_BATCH) as i64)
    );
    assert!(report.problems.is_empty(), "{:?}", report.problems);
}

fn purge_removes_old_payload_and_the_chain_still_verifies(b: &impl Backend) {
    let mut store = ten_records(b);
    let before = store.usage().unwrap();
    // x1..x5 started before day 6.
    let cutoff_ms = (T0 + 6 * DAY_S) * 1000;
    let report = purge(&mut store, cutoff_ms);
    assert_eq!(report.purged_before_ms, cutoff_ms);
    assert_eq!(report.records_before, 5);
    assert!(report.pieces_removed >= 10, "{report:?}");
    let after = store.usage().unwrap();
    assert_eq!(after.records, 11);
    // Usage counts each piece's 64-character key too; the report counts payload bytes. The
    // purge event added one piece (its detail).
    let event_piece = {
        let mut event_only = Vec::new();
        store
            .for_each(&mut |ex| {
                if ex.seq == 11 {
                    event_only.push(ex);
                }
                Ok(())
            })
            .unwrap();
        let detail = event_only[0].stored.record.request.clone().unwrap();
        serde_json::to_vec(&detail).unwrap().len() as u64 + 64
    };
    assert!(after.record_bytes > before.record_bytes);
    assert_eq!(
        after.content_bytes + report.bytes_removed + 64 * report.pieces_removed,
        before.content_bytes + event_piece,
        "{report:?}"
    );

    let verify = store.verify().unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    assert_eq!(verify.purged_before_ms, Some(cutoff_ms));
    // The ten exchanges and the purge's own event.
    assert_eq!(verify.records, 11);

    let mut all = Vec::new();
    store
        .for_each(&mut |ex| {
            all.push(ex);
            Ok(())
        })
        .unwrap();
    for ex in &all[..5] {
        assert!(ex.content_missing, "{}", ex.seq);
        assert!(ex.stored.record.response.is_none());
        // Metadata stays: who, what model, what it cost, what Envoy saw.
        assert_eq!(ex.stored.record.usage.unwrap().output_tokens, 20);
        assert!(ex.stored.record.user.is_some());
        assert!(ex.stored.envoy.start_time_ms.is_some());
    }
    for ex in &all[5..10] {
        assert!(!ex.content_missing);
        assert_eq!(ex.stored, nth_record(ex.seq as u64));
    }
    // Session listings are built from metadata only: unchanged.
    let sessions = store.sessions(&SessionQuery::default()).unwrap();
    let s_b = sessions.iter().find(|s| s.session_id == "s-b").unwrap();
    assert_eq!(s_b.input_tokens, 50);
}

fn purge_keeps_pieces_that_newer_records_share(b: &impl Backend) {
    let mut store = b.open();
    let records = agent_session("agent-1", 6);
    for (i, r) in records.iter().enumerate() {
        store.append(&[stored(r.clone(), T0 + i as i64 * DAY_S)]).unwrap();
    }
    purge(&mut store, (T0 + 5 * DAY_S) * 1000);
    assert!(store.verify().unwrap().problems.is_empty());
    let back = store.session("agent-1").unwrap();
    // The newest turn resends the whole conversation, old turns included: all still there.
    assert_eq!(back[5].stored.record, records[5]);
    assert!(back[..5].iter().all(|e| e.content_missing));
}

fn content_deleted_inside_the_retention_period_is_still_reported(b: &impl Backend) {
    let mut store = ten_records(b);
    purge(&mut store, (T0 + 6 * DAY_S) * 1000);
    // The message text of x10, inside the period: stored as its own piece.
    let text = serde_json::to_vec(&serde_json::Value::String(words(10, 400))).unwrap();
    let hash = scrim_recorder::dedup::sha256_hex(&text);
    b.tamper(&format!("DELETE FROM contents WHERE hash = '{hash}';"));
    assert_eq!(
        store.verify().unwrap().problems,
        vec![Problem::ContentMissing { hash }]
    );
}

fn purge_horizon_never_moves_back(b: &impl Backend) {
    let mut store = ten_records(b);
    let late = (T0 + 6 * DAY_S) * 1000;
    purge(&mut store, late);
    let report = purge(&mut store, late - 3 * DAY_S * 1000);
    assert_eq!(report.purged_before_ms, late);
    assert_eq!(report.pieces_removed, 0);
    assert!(store.verify().unwrap().problems.is_empty());
}

fn rewritten_row_with_recomputed_plain_hashes_is_caught_by_its_seal(b: &impl Backend) {
    let k = keys(OLD_KEY);
    let mut store = b.open_keyed(&k);
    for i in 1..=6 {
        store.append(&[nth_record(i)]).unwrap();
    }
    assert!(store.verify().unwrap().problems.is_empty());
    // Someone with write access to the database changes record 3 and rebuilds every plain
    // hash from there on, as the unkeyed chain allowed.
    let rows = b.raw_rows();
    let mut prev = rows[1].3.clone();
    for (seq, body, _, _) in &rows[2..] {
        // Who asked: the body field no index column copies.
        let body = if *seq == 3 {
            body.replace("alice@example.com", "mallory@example.com")
        } else {
            body.clone()
        };
        assert!(*seq != 3 || body != rows[2].1, "the edit changed the body");
        let hash = scrim_recorder::chain::link_hash(&prev, body.as_bytes()).to_vec();
        b.rewrite(*seq, &body, &prev, &hash);
        prev = hash;
    }
    // Without the key the chain looks intact; with it, the rewrite is caught at record 3.
    assert!(b.open().verify().unwrap().problems.is_empty());
    let report = store.verify().unwrap();
    assert_eq!(report.first_bad_seq, Some(3));
    assert_eq!(
        report.problems[0],
        Problem::BadSeal {
            seq: 3,
            exchange_id: "x3".into()
        }
    );
    assert_eq!(report.problems.len(), 4, "records 3..=6 carry the rebuilt hashes: {:?}", report.problems);
}

fn rotated_keys_verify_old_records_under_the_old_id_and_new_under_the_new(b: &impl Backend) {
    let mut store = b.open_keyed(&keys(OLD_KEY));
    for i in 1..=3 {
        store.append(&[nth_record(i)]).unwrap();
    }
    // Rotation: the new key goes last (it seals from now on), the old one stays to verify.
    let rotated = keys(&format!("{OLD_KEY}\n{NEW_KEY}\n"));
    let mut store = b.open_keyed(&rotated);
    for i in 4..=5 {
        store.append(&[nth_record(i)]).unwrap();
    }
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.seals_checked);
    let by: Vec<(&str, u64)> = report.sealed_by.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    assert_eq!(by, [("k-2025", 3), ("k-2026", 2)]);
    // Retiring the old key from the file leaves its records unverifiable, by name.
    let report = b.open_keyed(&keys(NEW_KEY)).verify().unwrap();
    assert_eq!(
        report.problems,
        (1..=3)
            .map(|seq| Problem::UnknownKey { seq, key_id: "k-2025".into() })
            .collect::<Vec<_>>()
    );
}

fn unsealed_or_foreign_key_records_are_named_when_seals_are_checked(b: &impl Backend) {
    let k = keys(OLD_KEY);
    let mut store = b.open_keyed(&k);
    store.append(&[nth_record(1), nth_record(2)]).unwrap();
    // A row appended by a store without the key (or whose seal was wiped) is unsealed.
    b.open().append(&[nth_record(3)]).unwrap();
    b.tamper("UPDATE records SET seal = NULL, key_id = NULL WHERE seq = 1;");
    let report = store.verify().unwrap();
    assert_eq!(
        report.problems,
        vec![
            Problem::Unsealed { seq: 1, exchange_id: "x1".into() },
            Problem::Unsealed { seq: 3, exchange_id: "x3".into() },
        ]
    );
    assert_eq!(report.first_bad_seq, Some(1));
}

fn purge_is_a_sealed_chain_event_naming_horizon_and_command(b: &impl Backend) {
    let k = keys(OLD_KEY);
    let mut store = b.open_keyed(&k);
    for i in 1..=4 {
        store.append(&[nth_record(i)]).unwrap();
    }
    let cutoff = (T0 + 3 * DAY_S) * 1000;
    let report = purge(&mut store, cutoff);
    let mut last = None;
    store
        .for_each(&mut |ex| {
            last = Some(ex);
            Ok(())
        })
        .unwrap();
    let event = last.unwrap();
    assert_eq!(event.seq, 5);
    let r = &event.stored.record;
    assert_eq!(r.reason.as_deref(), Some("retention.purged"));
    assert_eq!(r.method, "PURGE");
    let detail = r.request.as_ref().unwrap();
    assert_eq!(detail["purged_before_ms"], cutoff);
    assert_eq!(detail["command"], "purge --older-than 24");
    assert_eq!(detail["pieces_removed"], report.pieces_removed);
    let verify = store.verify().unwrap();
    assert!(verify.problems.is_empty(), "{:?}", verify.problems);
    assert_eq!(verify.purged_before_ms, Some(cutoff));
    assert_eq!(verify.sealed_by.values().sum::<u64>(), 5);
}

fn horizon_raised_outside_the_chain_is_caught(b: &impl Backend) {
    let k = keys(OLD_KEY);
    let mut store = b.open_keyed(&k);
    for i in 1..=6 {
        store.append(&[nth_record(i)]).unwrap();
    }
    purge(&mut store, (T0 + 2 * DAY_S) * 1000);
    // Raising the horizon in `meta` and deleting x4's message text, hoping verify takes it for
    // retention: the chain records purges only up to day 2.
    let text = serde_json::to_vec(&serde_json::Value::String(words(4, 400))).unwrap();
    let hash = scrim_recorder::dedup::sha256_hex(&text);
    let raised = (T0 + 5 * DAY_S) * 1000;
    b.tamper(&format!(
        "UPDATE meta SET value = '{raised}' WHERE key = 'purged_before_ms';
         DELETE FROM contents WHERE hash = '{hash}';"
    ));
    let problems = store.verify().unwrap().problems;
    assert_eq!(
        problems,
        vec![
            Problem::PurgeOutsideChain {
                meta_ms: raised,
                chain_ms: Some((T0 + 2 * DAY_S) * 1000)
            },
            Problem::ContentMissing { hash },
        ]
    );
}

/// Prints records/s for group commits (as ingest does with a backlog) and for one commit per
/// record; asserts only that ingestion works at all.
fn ingest_rate_is_reported<B: Backend>(b: &B) {
    let mut store = b.open();
    let records: Vec<_> = (1..=2000).map(nth_record).collect();
    let start = Instant::now();
    for chunk in records[..1800].chunks(100) {
        store.append(chunk).unwrap();
    }
    let grouped = 1800.0 / start.elapsed().as_secs_f64();
    let start = Instant::now();
    for r in &records[1800..] {
        store.append(std::slice::from_ref(r)).unwrap();
    }
    let single = 200.0 / start.elapsed().as_secs_f64();
    let build = if cfg!(debug_assertions) { "debug" } else { "release" };
    println!(
        "ingest rate ({build} build), {}: {grouped:.0} records/s in batches of 100, \
         {single:.0} records/s one commit per record",
        B::NAME
    );
    assert_eq!(store.verify().unwrap().records, 2000);
}

/// The two stores write the same bytes: the same records give the same chain head.
#[test]
fn same_records_give_the_same_chain_head_in_both_stores() {
    let heads: Vec<_> = [
        ten_records(&Sqlite::new()).verify().unwrap().head,
        ten_records(&Postgres::new()).verify().unwrap().head,
    ]
    .into();
    assert!(heads[0].is_some());
    assert_eq!(heads[0], heads[1]);
}

/// PostgreSQL only: the chain-head row remembers the newest record, so deleting it shows up
/// as soon as the next record is appended.
#[test]
fn postgres_deleted_newest_record_is_named_after_the_next_append() {
    let b = Postgres::new();
    let mut store = ten_records(&b);
    b.tamper("DELETE FROM records WHERE seq = 10;");
    store.append(&[nth_record(11)]).unwrap();
    assert_eq!(
        store.verify().unwrap().problems,
        vec![Problem::Deleted {
            before_seq: 11,
            missing_seqs: Some((10, 10))
        }]
    );
}

/// Ten records plus x11: carol (group ops) in s-a, opus, denied, two `aws-key` masks, cache
/// tokens; and x12 with no user (refused before identity was known).
fn twelve_records(b: &impl Backend) -> Box<dyn Store> {
    let mut store = ten_records(b);
    let mut r = simple_record("x11", "s-a", "carol");
    r.user.as_mut().unwrap().groups = vec!["ops".into()];
    r.model = Some("claude-opus-4-1".into());
    r.decision = Decision::Denied;
    r.masked = vec![
        MaskCount {
            rule: "aws-key".into(),
            direction: Direction::Request,
            count: 2,
        },
        MaskCount {
            rule: "github-token".into(),
            direction: Direction::Response,
            count: 0,
        },
    ];
    r.usage = Some(Usage {
        input_tokens: 7,
        output_tokens: 0,
        cache_read_input_tokens: 100,
        cache_creation_input_tokens: 30,
    });
    let mut anonymous = simple_record("x12", "s-c", "nobody");
    anonymous.user = None;
    anonymous.decision = Decision::Unauthenticated;
    store
        .append(&[stored(r, T0 + 11 * DAY_S), stored(anonymous, T0 + 12 * DAY_S)])
        .unwrap();
    store
}

fn find_sessions_applies_every_filter_to_the_exchanges_it_counts(b: &impl Backend) {
    let store = twelve_records(b);
    let find = |filter: ExchangeFilter| -> Vec<(String, u64)> {
        store
            .find_sessions(&filter, 10, None)
            .unwrap()
            .into_iter()
            .map(|s| (s.session_id, s.exchanges))
            .collect()
    };
    let s = |id: &str, n: u64| (id.to_owned(), n);
    assert_eq!(
        find(ExchangeFilter::default()),
        [s("s-c", 1), s("s-a", 6), s("s-b", 5)]
    );
    // Carol shares s-a with alice but sees only her own exchange counted.
    let carol = ExchangeFilter {
        subject: Some("carol".into()),
        ..Default::default()
    };
    assert_eq!(find(carol), [s("s-a", 1)]);
    let by = |f: fn(&mut ExchangeFilter)| {
        let mut filter = ExchangeFilter::default();
        f(&mut filter);
        find(filter)
    };
    assert_eq!(by(|f| f.group = Some("ops".into())), [s("s-a", 1)]);
    assert_eq!(by(|f| f.group = Some("dev".into())), [s("s-b", 5), s("s-a", 5)]);
    assert_eq!(by(|f| f.model = Some("claude-opus-4-1".into())), [s("s-a", 1)]);
    assert_eq!(by(|f| f.decision = Some("denied".into())), [s("s-a", 1)]);
    assert_eq!(by(|f| f.rule = Some("aws-key".into())), [s("s-a", 1)]);
    // A rule that matched nothing (count 0) is not a hit.
    assert_eq!(by(|f| f.rule = Some("github-token".into())), []);
    assert_eq!(
        by(|f| {
            f.from_ms = Some((T0 + 3 * DAY_S) * 1000);
            f.to_ms = Some((T0 + 5 * DAY_S) * 1000);
        }),
        [s("s-b", 1), s("s-a", 1)]
    );
    assert_eq!(store.find_sessions(&ExchangeFilter::default(), 1, None).unwrap().len(), 1);
}

fn find_sessions_pages_through_every_session_once_in_order(b: &impl Backend) {
    let store = twelve_records(b);
    let all: Vec<String> = store
        .find_sessions(&ExchangeFilter::default(), 100, None)
        .unwrap()
        .into_iter()
        .map(|s| s.session_id)
        .collect();
    assert_eq!(all, ["s-c", "s-a", "s-b"]);
    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = store.find_sessions(&ExchangeFilter::default(), 2, before).unwrap();
        paged.extend(page.iter().map(|s| s.session_id.clone()));
        match page.last() {
            Some(last) if page.len() == 2 => before = Some(last.last_seq),
            _ => break,
        }
    }
    assert_eq!(paged, all);
    // The cursor is the newest *matching* exchange: a filtered listing pages the same way.
    let alice = ExchangeFilter {
        subject: Some("alice".into()),
        ..Default::default()
    };
    let first = store.find_sessions(&alice, 1, None).unwrap();
    let rest = store.find_sessions(&alice, 10, Some(first[0].last_seq)).unwrap();
    let alice_all = store.find_sessions(&alice, 10, None).unwrap();
    assert_eq!(first.len() + rest.len(), alice_all.len());
    assert!(rest.iter().all(|s| s.session_id != first[0].session_id));
}

fn exchange_is_found_by_its_id(b: &impl Backend) {
    let store = twelve_records(b);
    let found = store.exchange("x4").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].stored, nth_record(4));
    assert!(store.exchange("nope").unwrap().is_empty());
}

fn usage_by_user_totals_each_subject_with_anonymous_first(b: &impl Backend) {
    let store = twelve_records(b);
    let usage = store.usage_by_user(&ExchangeFilter::default()).unwrap();
    let subjects: Vec<_> = usage.iter().map(|u| u.subject.as_deref()).collect();
    assert_eq!(subjects, [None, Some("alice"), Some("bob"), Some("carol")]);
    assert_eq!((usage[0].requests, usage[0].refused), (1, 1));
    assert_eq!((usage[1].requests, usage[1].input_tokens, usage[1].output_tokens), (5, 50, 100));
    let carol = &usage[3];
    assert_eq!(
        (carol.requests, carol.masked, carol.refused, carol.cache_read_input_tokens, carol.cache_creation_input_tokens),
        (1, 2, 1, 100, 30)
    );
}

fn query_log_takes_entries(b: &impl Backend) {
    let mut store = b.open();
    for status in [200, 403] {
        store
            .log_query(&QueryLogEntry {
                at_ms: T0 * 1000,
                subject: Some("alice".into()),
                auditor: false,
                method: "GET".into(),
                path: "/v1/sessions".into(),
                query: "user=bob".into(),
                status,
            })
            .unwrap();
    }
    // The log is beside the chain, not in it.
    assert_eq!(store.verify().unwrap().records, 0);
}

fn documents_are_replaced_by_id_and_found_by_key_or_subject_newest_first(b: &impl Backend) {
    let mut store = b.open();
    let doc = |id: &str, key: &str, subject: &str, created_ms: i64, body: &str| Document {
        kind: "review".into(),
        id: id.into(),
        key: key.into(),
        subject: subject.into(),
        issuer: "https://idp".into(),
        created_ms,
        body: body.into(),
    };
    store.put_document(&doc("rv-1", "fp-a", "alice", 1, r#"{"v":1}"#)).unwrap();
    store.put_document(&doc("rv-2", "fp-a", "alice", 2, r#"{"v":1}"#)).unwrap();
    store.put_document(&doc("rv-3", "fp-b", "bob", 3, r#"{"v":1}"#)).unwrap();
    store.put_document(&doc("rv-1", "fp-a", "alice", 1, r#"{"v":2}"#)).unwrap();
    assert_eq!(store.document("review", "rv-1").unwrap().unwrap().body, r#"{"v":2}"#);
    assert_eq!(store.document("grant", "rv-1").unwrap(), None, "kinds are separate");
    assert_eq!(store.document("review", "rv-9").unwrap(), None);
    let ids = |docs: Vec<Document>| docs.into_iter().map(|d| d.id).collect::<Vec<_>>();
    assert_eq!(ids(store.documents("review", Some("fp-a"), None).unwrap()), ["rv-2", "rv-1"]);
    assert_eq!(ids(store.documents("review", None, Some("bob")).unwrap()), ["rv-3"]);
    assert_eq!(ids(store.documents("review", None, None).unwrap()), ["rv-3", "rv-2", "rv-1"]);
    assert!(store.documents("grant", None, None).unwrap().is_empty());
    assert_eq!(store.verify().unwrap().records, 0, "documents are beside the chain");
}
