//! The hash chain over stored records and the walk that checks it. Pure: the store feeds rows
//! in sequence order and gets problems back.
//!
//! Each record's hash is SHA-256(previous hash || record body), the first record's previous
//! hash being 32 zero bytes. The body is the stored JSON with shared pieces as references
//! ([`crate::dedup`]); each piece is covered by its own content hash, so the chain stays valid
//! when payload pieces are purged. Each hash is also sealed with a key only the recorder holds
//! ([`crate::chain_keys`]), so whoever rewrites the database and rebuilds the plain hashes
//! still breaks the seals. Limit: deleting the newest records leaves no trace inside the
//! chain; compare the head that `verify` prints with one kept elsewhere.

use crate::chain_keys::SealCheck;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub const GENESIS: [u8; 32] = [0; 32];

/// The chain hash of a record body following `prev`.
pub fn link_hash(prev: &[u8], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(body);
    h.finalize().into()
}

/// One stored row as the walk sees it.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: i64,
    pub exchange_id: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
    /// Whether the stored hash matches the body (and the indexed columns match the body);
    /// computed by the store, which owns the body.
    pub body_intact: bool,
    /// The seal of `hash`, as checked by the store with the recorder's keys.
    pub seal: SealCheck,
}

/// A break in the chain or its content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Problem {
    /// The record's content (or an indexed column) no longer matches its hash.
    Altered { seq: i64, exchange_id: String },
    /// The record does not belong to the chain: no record links to it.
    Inserted { seq: i64, exchange_id: String },
    /// One or more records before `before_seq` are gone; `missing_seqs` when the numbering
    /// shows which.
    Deleted {
        before_seq: i64,
        missing_seqs: Option<(i64, i64)>,
    },
    /// The record's seal does not match its chain hash: it was rewritten (or its hash
    /// recomputed) by someone without the recorder's key.
    BadSeal { seq: i64, exchange_id: String },
    /// The record carries no seal although the chain is sealed.
    Unsealed { seq: i64, exchange_id: String },
    /// The record was sealed with a key id the given key file does not hold.
    UnknownKey { seq: i64, key_id: String },
    /// The retention horizon outside the chain (`meta.purged_before_ms`) is later than any
    /// purge recorded in the chain: content was removed without a purge event.
    PurgeOutsideChain {
        meta_ms: i64,
        chain_ms: Option<i64>,
    },
    /// A stored content piece no longer matches its hash.
    ContentAltered { hash: String },
    /// A record or piece references content that is not stored.
    ContentMissing { hash: String },
}

impl Problem {
    /// The record the problem is about, when it is about one.
    pub fn seq(&self) -> Option<i64> {
        match self {
            Problem::Altered { seq, .. }
            | Problem::Inserted { seq, .. }
            | Problem::BadSeal { seq, .. }
            | Problem::Unsealed { seq, .. }
            | Problem::UnknownKey { seq, .. } => Some(*seq),
            Problem::Deleted { before_seq, .. } => Some(*before_seq),
            _ => None,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Altered { seq, exchange_id } => {
                write!(f, "record {seq} ({exchange_id}) was altered")
            }
            Problem::Inserted { seq, exchange_id } => {
                write!(f, "record {seq} ({exchange_id}) was inserted")
            }
            Problem::Deleted {
                before_seq,
                missing_seqs: Some((a, b)),
            } if a == b => {
                write!(f, "record {a} was deleted (before record {before_seq})")
            }
            Problem::Deleted {
                before_seq,
                missing_seqs: Some((a, b)),
            } => {
                write!(
                    f,
                    "records {a}..={b} were deleted (before record {before_seq})"
                )
            }
            Problem::Deleted {
                before_seq,
                missing_seqs: None,
            } => {
                write!(f, "records were deleted before record {before_seq}")
            }
            Problem::BadSeal { seq, exchange_id } => {
                write!(f, "record {seq} ({exchange_id}) has a bad seal (rewritten without the key)")
            }
            Problem::Unsealed { seq, exchange_id } => {
                write!(f, "record {seq} ({exchange_id}) carries no seal")
            }
            Problem::UnknownKey { seq, key_id } => {
                write!(f, "record {seq} is sealed with key `{key_id}`, not in the key file")
            }
            Problem::PurgeOutsideChain { meta_ms, chain_ms } => write!(
                f,
                "content is marked purged before {meta_ms} but the chain records purges only up to {}",
                chain_ms.map_or("nothing".to_string(), |c| c.to_string())
            ),
            Problem::ContentAltered { hash } => write!(f, "content piece {hash} was altered"),
            Problem::ContentMissing { hash } => write!(f, "content piece {hash} is missing"),
        }
    }
}

/// Walks rows in sequence order and returns the problems found, first break first.
pub fn walk(rows: &[ChainRow]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut expected_prev: &[u8] = &GENESIS;
    let mut expected_seq = rows.first().map(|r| r.seq.min(1)).unwrap_or(1);
    let mut i = 0;
    while i < rows.len() {
        let row = &rows[i];
        if !row.body_intact {
            problems.push(Problem::Altered {
                seq: row.seq,
                exchange_id: row.exchange_id.clone(),
            });
        }
        match &row.seal {
            SealCheck::NotChecked | SealCheck::Valid { .. } => {}
            SealCheck::Invalid => problems.push(Problem::BadSeal {
                seq: row.seq,
                exchange_id: row.exchange_id.clone(),
            }),
            SealCheck::Missing => problems.push(Problem::Unsealed {
                seq: row.seq,
                exchange_id: row.exchange_id.clone(),
            }),
            SealCheck::UnknownKey { key_id } => problems.push(Problem::UnknownKey {
                seq: row.seq,
                key_id: key_id.clone(),
            }),
        }
        if row.prev_hash.as_slice() != expected_prev {
            if rows
                .get(i + 1)
                .is_some_and(|next| next.prev_hash.as_slice() == expected_prev)
            {
                // The next row links to our predecessor: this one was slipped in.
                problems.push(Problem::Inserted {
                    seq: row.seq,
                    exchange_id: row.exchange_id.clone(),
                });
                i += 1;
                continue;
            } else if let Some(&p) = seen.get(row.prev_hash.as_slice()) {
                // The row links back past its predecessors: those were slipped in.
                for foreign in &rows[p + 1..i] {
                    problems.push(Problem::Inserted {
                        seq: foreign.seq,
                        exchange_id: foreign.exchange_id.clone(),
                    });
                }
            } else {
                let missing = (row.seq > expected_seq).then_some((expected_seq, row.seq - 1));
                problems.push(Problem::Deleted {
                    before_seq: row.seq,
                    missing_seqs: missing,
                });
            }
        }
        seen.insert(&row.hash, i);
        expected_prev = &row.hash;
        expected_seq = row.seq + 1;
        i += 1;
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<ChainRow> {
        let mut prev = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let hash = link_hash(&prev, format!("body {seq}").as_bytes()).to_vec();
                let row = ChainRow {
                    seq,
                    exchange_id: format!("x{seq}"),
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                    body_intact: true,
                    seal: SealCheck::NotChecked,
                };
                prev = hash;
                row
            })
            .collect()
    }

    #[test]
    fn intact_chain_has_no_problems() {
        assert!(walk(&chain(5)).is_empty());
    }

    #[test]
    fn deleted_middle_record_is_named_by_its_number() {
        let mut rows = chain(5);
        rows.remove(2);
        assert_eq!(
            walk(&rows),
            vec![Problem::Deleted {
                before_seq: 4,
                missing_seqs: Some((3, 3))
            }]
        );
    }

    #[test]
    fn deleted_and_renumbered_record_is_still_found() {
        let mut rows = chain(5);
        rows.remove(2);
        for (i, r) in rows.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(
            walk(&rows),
            vec![Problem::Deleted {
                before_seq: 3,
                missing_seqs: None
            }]
        );
    }

    #[test]
    fn record_inserted_with_a_forged_link_is_named() {
        let mut rows = chain(4);
        let forged_hash = link_hash(&rows[1].hash, b"forged").to_vec();
        let forged = ChainRow {
            seq: 3,
            exchange_id: "evil".into(),
            prev_hash: rows[1].hash.clone(),
            hash: forged_hash,
            body_intact: true,
            seal: SealCheck::NotChecked,
        };
        rows.insert(2, forged);
        for (i, r) in rows.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(
            walk(&rows),
            vec![Problem::Inserted {
                seq: 3,
                exchange_id: "evil".into()
            }]
        );
    }

    #[test]
    fn foreign_record_between_two_linked_ones_is_named() {
        let mut rows = chain(4);
        let foreign = ChainRow {
            seq: 3,
            exchange_id: "copy".into(),
            prev_hash: vec![9; 32],
            hash: vec![8; 32],
            body_intact: true,
            seal: SealCheck::NotChecked,
        };
        rows.insert(2, foreign);
        for (i, r) in rows.iter_mut().enumerate() {
            r.seq = i as i64 + 1;
        }
        assert_eq!(
            walk(&rows),
            vec![Problem::Inserted {
                seq: 3,
                exchange_id: "copy".into()
            }]
        );
    }

    #[test]
    fn altered_record_is_named_and_the_walk_goes_on() {
        let mut rows = chain(6);
        rows[1].body_intact = false;
        rows.remove(4);
        assert_eq!(
            walk(&rows),
            vec![
                Problem::Altered {
                    seq: 2,
                    exchange_id: "x2".into()
                },
                Problem::Deleted {
                    before_seq: 6,
                    missing_seqs: Some((5, 5))
                },
            ]
        );
    }
}
