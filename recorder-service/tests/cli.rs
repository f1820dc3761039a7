//! The `scrim-recorder` binary as an auditor runs it.

mod common;

use common::*;
use scrim_recorder::envoy::envoy_fields;
use scrim_recorder::record::StoredRecord;
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::Store;
use std::process::Command;

fn recorder(db: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

fn filled(db: &std::path::Path) {
    let mut store = SqliteStore::open(db).unwrap();
    for i in 1..=3 {
        let record = simple_record(&format!("x{i}"), "sess-1", "alice");
        let envoy = envoy_fields(&record_entry(&record, 1_700_000_000 + i));
        store.append(&[StoredRecord { record, envoy }]).unwrap();
    }
}

#[test]
fn help_shows_examples() {
    let out = Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(
        text.contains("Examples:") && text.contains("sessions list --user alice"),
        "{text}"
    );
}

#[test]
fn sessions_list_and_show_print_json_with_flag() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    filled(&db);
    let list: serde_json::Value =
        serde_json::from_slice(&recorder(&db, &["sessions", "list", "--json"]).stdout).unwrap();
    assert_eq!(list[0]["session_id"], "sess-1");
    assert_eq!(list[0]["exchanges"], 3);
    let show: serde_json::Value =
        serde_json::from_slice(&recorder(&db, &["sessions", "show", "sess-1", "--json"]).stdout)
            .unwrap();
    assert_eq!(show[2]["record"]["exchange_id"], "x3");
    assert_eq!(show[2]["envoy"]["response_code"], 200);
    let text = String::from_utf8(recorder(&db, &["sessions", "show", "sess-1"]).stdout).unwrap();
    assert!(
        text.contains("#1 2023-11-14T22:13:21.000Z x1 POST /v1/messages -> 200 allowed"),
        "{text}"
    );
}

#[test]
fn unknown_session_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    filled(&db);
    let out = recorder(&db, &["sessions", "show", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("session nope not found"));
}

#[test]
fn verify_exits_one_and_names_the_deleted_record() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    filled(&db);
    assert!(recorder(&db, &["verify"]).status.success());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM records WHERE seq = 2", [])
        .unwrap();
    let out = recorder(&db, &["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("record 2 was deleted (before record 3)"),
        "{text}"
    );
}

#[test]
fn export_writes_one_json_line_per_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    filled(&db);
    let out = recorder(&db, &["export"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["hash"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn serve_stores_what_envoy_sends_with_the_token_and_refuses_streams_without_it() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let token = "synthetic-ingest-token-0123456789abcdef";
    let token_file = dir.path().join("ingest-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let key_file = dir.path().join("chain-keys");
    std::fs::write(&key_file, "k1 synthetic-chain-key-0123456789abcdef\n").unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--db")
        .arg(&db)
        .arg("--chain-key-file")
        .arg(&key_file)
        .args(["serve", "--grpc-listen", "127.0.0.1:0", "--ingest-token-file"])
        .arg(&token_file)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: the listener is bound before this line is printed.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));

    let record = simple_record("bin-1", "sess-bin", "dave");
    // A forged entry without the token, then with a wrong one: both streams refused.
    let forged = simple_record("forged-1", "sess-bin", "mallory");
    for wrong in [None, Some("synthetic-wrong-token-0123456789abcdefgh")] {
        let refused = send_with_token(
            addr,
            wrong,
            vec![message(vec![record_entry(&forged, 1_700_000_000)])],
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }
    send_with_token(
        addr,
        Some(token),
        vec![message(vec![record_entry(&record, 1_700_000_000)])],
    )
    .await
    .unwrap();
    // SIGKILL, not a graceful stop: whatever a finished stream carried is already committed.
    child.kill().unwrap();
    child.wait().unwrap();

    let stored = SqliteStore::open(&db).unwrap().session("sess-bin").unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].stored.record, record);
    // Sealed with the key: verify with the key file checks it.
    let verify = Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--db")
        .arg(&db)
        .arg("--chain-key-file")
        .arg(&key_file)
        .args(["verify", "--json"])
        .output()
        .unwrap();
    assert!(verify.status.success());
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(report["sealed_by"]["k1"], 1, "{report}");
}

#[test]
fn serve_refuses_to_start_without_an_ingest_token_or_chain_keys_or_with_short_ones() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("a.db");
    let short = dir.path().join("short");
    std::fs::write(&short, "short-token\n").unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "synthetic-ingest-token-0123456789abcdef").unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "k1 synthetic-chain-key-0123456789abcdef\n").unwrap();
    let run = |args: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
            .arg("--db")
            .arg(&db)
            .args(args)
            .output()
            .unwrap()
    };
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec![os("serve")], "--ingest-token-file"),
        (vec![os("serve"), os("--ingest-token-file"), token.as_os_str()], "needs --chain-key-file"),
        (
            vec![os("--chain-key-file"), keys.as_os_str(), os("serve"), os("--ingest-token-file"), short.as_os_str()],
            "at least 32 characters",
        ),
        (
            vec![os("--chain-key-file"), short.as_os_str(), os("serve"), os("--ingest-token-file"), token.as_os_str()],
            "--chain-key-file",
        ),
    ];
    for (args, needle) in cases {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
