//! How a record becomes a stored row and back, shared by every backend so they store the same
//! bytes and check them the same way: indexed columns copied from the body, payload moved into
//! content pieces, reading a row back, and the checks behind `verify` and `purge`.
//!
//! The request and response are always stored as pieces (however small), so the record body,
//! which the hash chain covers, holds metadata and references only. Retention removes pieces;
//! the body and its hash stay, and `verify` only requires the pieces that records inside the
//! retention period reach.

use super::{Exchange, StoreError, VerifyReport};
use crate::chain::{self, ChainRow, Problem};
use crate::chain_keys::{ChainKeys, SealCheck};
use crate::record::EnvoyFields;
use scrim_core::audit::{AuditRecord, Decision};
use crate::dedup;
use crate::record::StoredRecord;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};

/// Body fields copied into indexed columns.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Columns {
    pub exchange_id: String,
    pub session_id: String,
    pub subject: Option<String>,
    pub start_ms: Option<i64>,
    pub model: Option<String>,
    pub decision: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
}

impl Columns {
    pub fn of(body: &Value) -> Columns {
        let s = |p: &str| body.pointer(p).and_then(Value::as_str).map(str::to_owned);
        let n = |p: &str| body.pointer(p).and_then(Value::as_i64);
        Columns {
            exchange_id: s("/record/exchange_id").unwrap_or_default(),
            session_id: s("/record/session_id").unwrap_or_default(),
            subject: s("/record/user/subject"),
            start_ms: n("/envoy/start_time_ms"),
            model: s("/record/model"),
            decision: s("/record/decision").unwrap_or_default(),
            input_tokens: n("/record/usage/input_tokens").unwrap_or(0),
            output_tokens: n("/record/usage/output_tokens").unwrap_or(0),
        }
    }
}

/// One record ready to insert: its columns, its body (JSON text the chain hashes) and the
/// pieces it references.
pub(crate) struct NewRow {
    pub columns: Columns,
    pub body: String,
}

/// Moves the payload (`request`, `response`) of `stored` into `pieces` and returns the row.
pub(crate) fn encode(stored: &StoredRecord, pieces: &mut Vec<(String, Vec<u8>)>) -> NewRow {
    let mut value = serde_json::to_value(stored).expect("stored record serialises");
    for field in ["request", "response"] {
        if let Some(slot) = value.pointer_mut(&format!("/record/{field}")) {
            let taken = slot.take();
            *slot =
                dedup::reduce_payload(taken, &mut |h, b| pieces.push((h.to_owned(), b.to_vec())));
        }
    }
    NewRow {
        columns: Columns::of(&value),
        body: serde_json::to_string(&value).expect("JSON value serialises"),
    }
}

/// Reads a stored row back. `load` returns a piece's bytes, `None` when it is gone; payload
/// with a missing piece is marked (`content_missing`) instead of failing the read, and a
/// response that no longer parses is left out.
pub(crate) fn decode(
    seq: i64,
    hash: &[u8],
    body: &str,
    load: &mut dyn FnMut(&str) -> Option<Vec<u8>>,
) -> Result<Exchange, StoreError> {
    let value: Value =
        serde_json::from_str(body).map_err(|source| StoreError::Unreadable { seq, source })?;
    let mut value = dedup::expand(value, load);
    let mut content_missing = false;
    for field in ["request", "response"] {
        if let Some(slot) = value.pointer_mut(&format!("/record/{field}")) {
            if contains_missing(slot) {
                content_missing = true;
                // The request is free-form JSON and keeps its readable parts; a response with
                // a hole is not an `AuditResponse` any more.
                if field == "response" {
                    *slot = Value::Null;
                }
            }
        }
    }
    let stored: StoredRecord =
        serde_json::from_value(value).map_err(|source| StoreError::Unreadable { seq, source })?;
    Ok(Exchange {
        seq,
        hash: dedup::hex(hash),
        content_missing,
        stored,
    })
}

fn contains_missing(value: &Value) -> bool {
    match value {
        Value::Object(m) => m.contains_key(dedup::MISSING_KEY) || m.values().any(contains_missing),
        Value::Array(items) => items.iter().any(contains_missing),
        _ => false,
    }
}

/// The pieces reachable from `roots` through the piece graph. `load_many(hashes)` returns the
/// stored `(hash, bytes)` among `hashes` (absent ones left out). Returns every piece loaded.
pub(crate) fn reachable(
    roots: Vec<String>,
    load_many: &mut dyn FnMut(&[String]) -> Result<Vec<(String, Vec<u8>)>, StoreError>,
) -> Result<HashMap<String, Vec<u8>>, StoreError> {
    let mut found: HashMap<String, Vec<u8>> = HashMap::new();
    let mut asked: HashSet<String> = HashSet::new();
    let mut frontier = roots;
    // One query per level of the piece tree (a handful), not one per piece.
    while !frontier.is_empty() {
        frontier.retain(|h| asked.insert(h.clone()));
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for (hash, bytes) in load_many(&frontier)? {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                dedup::references(&v, &mut next);
            }
            found.insert(hash, bytes);
        }
        frontier = next;
    }
    Ok(found)
}

/// Whether a record lies inside the retention period: records without a start time are kept.
pub(crate) fn retained(start_ms: Option<i64>, purged_before_ms: Option<i64>) -> bool {
    match (start_ms, purged_before_ms) {
        (Some(t), Some(horizon)) => t >= horizon,
        _ => true,
    }
}

/// The seal columns of a record with chain hash `hash`: `(key id, seal)`, both `None` when
/// the store has no keys.
pub(crate) fn seal(keys: Option<&ChainKeys>, hash: &[u8]) -> (Option<String>, Option<Vec<u8>>) {
    match keys {
        Some(keys) => {
            let (id, seal) = keys.seal(hash);
            (Some(id), Some(seal))
        }
        None => (None, None),
    }
}

/// The `reason` of the chain event a purge appends; with [`PURGE_ENDPOINT`] and the method
/// `PURGE` (which no filter record carries) it marks the record as the recorder's own.
pub(crate) const PURGE_EVENT: &str = "retention.purged";
const PURGE_ENDPOINT: &str = "/recorder/purge";

/// The chain event recording a purge: up to when, what went, by which command.
pub(crate) fn purge_event(
    horizon_ms: i64,
    pieces_removed: u64,
    bytes_removed: u64,
    command: &str,
    now_ms: i64,
) -> StoredRecord {
    // The horizon is in the id, inside the body the chain covers: the event's request detail
    // is a content piece, which a later purge may remove.
    let id = format!("{PURGE_ID_PREFIX}{horizon_ms}-at-{now_ms}-{}", std::process::id());
    StoredRecord {
        record: AuditRecord {
            reason: Some(PURGE_EVENT.into()),
            request: Some(serde_json::json!({
                "purged_before_ms": horizon_ms,
                "pieces_removed": pieces_removed,
                "bytes_removed": bytes_removed,
                "command": command,
            })),
            ..AuditRecord::new(id.clone(), "recorder:retention", "PURGE", PURGE_ENDPOINT, Decision::Allowed)
        },
        envoy: EnvoyFields {
            start_time_ms: Some(now_ms),
            request_id: Some(id),
            ..Default::default()
        },
    }
}

const PURGE_ID_PREFIX: &str = "evt-purge-before-";

/// The horizon a record body declares when it is a purge event (read from its id).
fn purge_horizon(body: &Value) -> Option<i64> {
    let r = body.get("record")?;
    let is_event = r.get("reason")?.as_str()? == PURGE_EVENT
        && r.get("endpoint")?.as_str()? == PURGE_ENDPOINT
        && r.get("method")?.as_str()? == "PURGE";
    if !is_event {
        return None;
    }
    r.get("exchange_id")?
        .as_str()?
        .strip_prefix(PURGE_ID_PREFIX)?
        .split_once("-at-")?
        .0
        .parse()
        .ok()
}

/// Collects rows and pieces in chain order and builds the [`VerifyReport`].
#[derive(Default)]
pub(crate) struct Verifier {
    rows: Vec<ChainRow>,
    /// Each record's start time and references: those of records inside the retention period
    /// (known once the chain's purge events are all read) must exist.
    references: Vec<(Option<i64>, Vec<String>)>,
    /// Present pieces and the references inside them.
    pieces: HashMap<String, Vec<String>>,
    problems: Vec<Problem>,
    /// The horizon kept outside the chain (`meta`), checked against the chain's events.
    meta_purged_before_ms: Option<i64>,
    /// The latest horizon of the chain's purge events.
    chain_purged_before_ms: Option<i64>,
    keys: Option<ChainKeys>,
    /// Records with a valid seal, per key id.
    sealed_by: BTreeMap<String, u64>,
}

impl Verifier {
    pub fn new(meta_purged_before_ms: Option<i64>, keys: Option<&ChainKeys>) -> Self {
        Verifier {
            meta_purged_before_ms,
            keys: keys.cloned(),
            ..Verifier::default()
        }
    }

    /// One record row, in sequence order, with the columns as stored.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &mut self,
        seq: i64,
        stored_columns: Columns,
        body: &str,
        prev_hash: Vec<u8>,
        hash: Vec<u8>,
        key_id: Option<String>,
        seal: Option<Vec<u8>>,
    ) {
        let hash_ok = chain::link_hash(&prev_hash, body.as_bytes()).as_slice() == hash.as_slice();
        let columns_ok = match serde_json::from_str::<Value>(body) {
            Ok(v) => {
                let mut refs = Vec::new();
                dedup::references(&v, &mut refs);
                self.references.push((stored_columns.start_ms, refs));
                if let Some(h) = purge_horizon(&v) {
                    self.chain_purged_before_ms = Some(self.chain_purged_before_ms.map_or(h, |c| c.max(h)));
                }
                Columns::of(&v) == stored_columns
            }
            Err(_) => false,
        };
        let seal = match &self.keys {
            None => SealCheck::NotChecked,
            Some(keys) => keys.check(key_id.as_deref(), seal.as_deref(), &hash),
        };
        if let SealCheck::Valid { key_id } = &seal {
            *self.sealed_by.entry(key_id.clone()).or_default() += 1;
        }
        self.rows.push(ChainRow {
            seq,
            exchange_id: stored_columns.exchange_id,
            prev_hash,
            hash,
            body_intact: hash_ok && columns_ok,
            seal,
        });
    }

    /// One stored content piece, in any order.
    pub fn piece(&mut self, hash: String, bytes: &[u8]) {
        let mut refs = Vec::new();
        if dedup::sha256_hex(bytes) != hash {
            self.problems
                .push(Problem::ContentAltered { hash: hash.clone() });
        } else if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
            dedup::references(&v, &mut refs);
        }
        self.pieces.insert(hash, refs);
    }

    pub fn finish(self) -> VerifyReport {
        let mut problems = chain::walk(&self.rows);
        // Only purges the chain records count: a horizon raised outside it is tampering.
        let horizon = self.chain_purged_before_ms;
        if let Some(meta) = self.meta_purged_before_ms {
            if horizon.is_none_or(|h| meta > h) {
                problems.push(Problem::PurgeOutsideChain { meta_ms: meta, chain_ms: horizon });
            }
        }
        problems.extend(self.problems);
        // Walk from the retained records through present pieces; a piece they reach that is
        // absent was deleted, not purged (purge only removes what no retained record reaches).
        let mut seen = HashSet::new();
        let mut stack: Vec<String> = self
            .references
            .into_iter()
            .filter(|(start, _)| retained(*start, horizon))
            .flat_map(|(_, refs)| refs)
            .collect();
        let mut missing = Vec::new();
        while let Some(hash) = stack.pop() {
            if !seen.insert(hash.clone()) {
                continue;
            }
            match self.pieces.get(&hash) {
                Some(refs) => stack.extend(refs.iter().cloned()),
                None => missing.push(hash),
            }
        }
        missing.sort();
        problems.extend(
            missing
                .into_iter()
                .map(|hash| Problem::ContentMissing { hash }),
        );
        VerifyReport {
            records: self.rows.len() as u64,
            content_pieces: self.pieces.len() as u64,
            head: self.rows.last().map(|r| (r.seq, dedup::hex(&r.hash))),
            purged_before_ms: horizon,
            first_bad_seq: problems.iter().filter_map(Problem::seq).min(),
            seals_checked: self.keys.is_some(),
            sealed_by: self.sealed_by,
            problems,
        }
    }
}
