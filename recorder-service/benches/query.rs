//! Query latency with a million records in SQLite: one user's sessions
//! ([`Store::find_sessions`] as `GET /v1/sessions` runs it for a non-auditor), one session's
//! exchanges, and one exchange by id, each timed over random users; p50 and p99 printed.
//!
//! `cargo bench -p scrim-recorder --bench query` (not part of `cargo test`). The records are
//! generated through the store API (1000 users, sessions of 20 exchanges, small content) in
//! batches of 10,000; `SCRIM_BENCH_DB=path` keeps the file and reuses it on the next run,
//! `SCRIM_BENCH_RECORDS=n` changes the count.
//!
//! Measured on the 2-core development machine, shared with other builds (bench profile with
//! `CARGO_PROFILE_BENCH_LTO=false CARGO_PROFILE_BENCH_CODEGEN_UNITS=16`), 1,000,000 records,
//! 1000 queries each, warm page cache: a user's 50 newest sessions p50 1.1 ms, p99 4.1 ms
//! (first run, right after generating: p50 1.9 ms, p99 10.5 ms); one session of 20 with
//! content p50 0.4 ms, p99 0.8 ms; one exchange by id p50 0.03 ms; usage per user over one
//! day (345,600 records, JSON fields read per row) 1.8 s. Generation ran at 8,700 records/s.

use scrim_core::audit::{
    AuditRecord, AuditResponse, AuditUser, Decision, Direction, MaskCount, ResponseBlock, Usage,
};
use scrim_recorder::record::{EnvoyFields, StoredRecord};
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::{ExchangeFilter, Store};
use serde_json::json;
use std::time::{Duration, Instant};

const USERS: u64 = 1000;
const SESSION_LEN: u64 = 20;
const BATCH: u64 = 10_000;
const QUERIES: usize = 1000;
const T0_MS: i64 = 1_735_689_600_000;

/// Record `i`: users take turns in blocks of a session's length, so each user's exchanges
/// are spread over the whole chain, as with many developers working at once.
fn record(i: u64) -> StoredRecord {
    let session = i / SESSION_LEN;
    let user = session % USERS;
    let mut r = AuditRecord::new(
        format!("x{i}"),
        format!("s{session}"),
        "POST",
        "/v1/messages",
        if i.is_multiple_of(50) {
            Decision::Denied
        } else {
            Decision::Allowed
        },
    );
    r.user = Some(AuditUser {
        subject: format!("user{user}"),
        email: None,
        issuer: "https://idp.bench".into(),
        groups: vec![format!("team{}", user % 10)],
    });
    r.model = Some(
        if i.is_multiple_of(3) {
            "claude-opus-4-1"
        } else {
            "claude-sonnet-4-5"
        }
        .into(),
    );
    if i.is_multiple_of(17) {
        r.masked = vec![MaskCount {
            rule: "aws-access-key".into(),
            direction: Direction::Request,
            count: 1,
        }];
    }
    r.request = Some(json!({"model": r.model, "messages": [
        {"role": "user", "content": format!("question {i} of session {session}")}]}));
    r.response = Some(AuditResponse {
        blocks: vec![ResponseBlock {
            kind: "text".into(),
            text: format!("answer {i}"),
            name: None,
            id: None,
        }],
        stop_reason: Some("end_turn".into()),
    });
    r.usage = Some(Usage {
        input_tokens: 1000 + i % 500,
        output_tokens: 200,
        cache_read_input_tokens: 800,
        cache_creation_input_tokens: 100,
    });
    StoredRecord {
        record: r,
        envoy: EnvoyFields {
            response_code: Some(200),
            start_time_ms: Some(T0_MS + i as i64 * 250),
            duration_ms: Some(900),
            ..EnvoyFields::default()
        },
    }
}

/// A small deterministic generator (no dependency) for picking users.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

fn percentiles(mut times: Vec<Duration>) -> (f64, f64, f64) {
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let at = |q: f64| ms(times[((times.len() as f64 * q) as usize).min(times.len() - 1)]);
    (at(0.50), at(0.99), ms(*times.last().unwrap()))
}

fn time(what: &str, mut f: impl FnMut(u64) -> usize, rng: &mut Lcg, n: u64) {
    let mut times = Vec::with_capacity(QUERIES);
    let mut rows = 0;
    for _ in 0..QUERIES {
        let pick = rng.below(n);
        let started = Instant::now();
        rows += f(pick);
        times.push(started.elapsed());
    }
    let (p50, p99, max) = percentiles(times);
    println!(
        "{what:<44} p50 {p50:7.2} ms  p99 {p99:7.2} ms  max {max:7.2} ms  ({:.1} rows/query)",
        rows as f64 / QUERIES as f64
    );
}

fn main() {
    let records: u64 = std::env::var("SCRIM_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = std::env::var("SCRIM_BENCH_DB")
        .map(Into::into)
        .unwrap_or_else(|_| dir.path().join("bench.db"));
    let mut store = SqliteStore::open(&path).unwrap();
    let have = store.usage().unwrap().records;
    if have < records {
        let started = Instant::now();
        let mut batch = Vec::with_capacity(BATCH as usize);
        let mut i = have;
        while i < records {
            batch.clear();
            batch.extend((i..(i + BATCH).min(records)).map(record));
            store.append(&batch).unwrap();
            i += batch.len() as u64;
            if i.is_multiple_of(100_000) {
                eprintln!("generated {i}/{records}");
            }
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "generated {} records in {secs:.1} s ({:.0} records/s, batches of {BATCH})",
            records - have,
            (records - have) as f64 / secs
        );
    }
    let usage = store.usage().unwrap();
    let file_bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    println!(
        "store: {} records, {} users, sessions of {SESSION_LEN}; file {:.0} MB",
        usage.records,
        USERS,
        file_bytes as f64 / 1e6
    );
    let sessions = records / SESSION_LEN;
    let mut rng = Lcg(42);
    let user_sessions = |user: u64, extra: fn(&mut ExchangeFilter)| {
        let mut filter = ExchangeFilter {
            subject: Some(format!("user{user}")),
            ..ExchangeFilter::default()
        };
        extra(&mut filter);
        store.find_sessions(&filter, 50, None).unwrap().len()
    };
    time(
        "a user's sessions (50 newest)",
        |u| user_sessions(u, |_| {}),
        &mut rng,
        USERS,
    );
    time(
        "a user's sessions, one model",
        |u| user_sessions(u, |f| f.model = Some("claude-opus-4-1".into())),
        &mut rng,
        USERS,
    );
    time(
        "a user's sessions, rule hit (JSON filter)",
        |u| user_sessions(u, |f| f.rule = Some("aws-access-key".into())),
        &mut rng,
        USERS,
    );
    time(
        "one session's exchanges (content restored)",
        |s| store.session(&format!("s{s}")).unwrap().len(),
        &mut rng,
        sessions,
    );
    time(
        "one exchange by id",
        |i| store.exchange(&format!("x{i}")).unwrap().len(),
        &mut rng,
        records,
    );
    let started = Instant::now();
    let usage = store
        .usage_by_user(&ExchangeFilter {
            from_ms: Some(T0_MS),
            to_ms: Some(T0_MS + 86_400_000),
            ..ExchangeFilter::default()
        })
        .unwrap();
    println!(
        "usage per user over one day ({} users): {:.0} ms (once)",
        usage.len(),
        started.elapsed().as_secs_f64() * 1000.0
    );
}
