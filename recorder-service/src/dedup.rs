//! Content addressing for conversation payloads: agent clients resend the whole conversation
//! every turn, so every JSON subtree of at least [`MIN_SHARED_BYTES`] is stored once under the
//! SHA-256 of its bytes and replaced by a reference. Pure; the caller stores the pieces.
//!
//! The reduction is bottom-up (a Merkle tree): a long string becomes a reference first, then
//! the message holding it, then the list of messages. Lists longer than [`CHUNK_LEN`] are cut
//! into chunks at fixed positions, so a turn adds its new messages, its newest chunk and a
//! list of chunk references, not another copy of the conversation nor of every reference.
//!
//! A reference is the one-key object `{"$scrim_ref": "<hex sha-256>"}`, a chunked list the
//! one-key object `{"$scrim_chunks": [...]}`. A one-key object in the data whose key is one of
//! these or `$scrim_lit` is wrapped as `{"$scrim_lit": {...}}` so it cannot be mistaken.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Subtrees smaller than this stay inline: a reference costs about 80 bytes.
pub const MIN_SHARED_BYTES: usize = 128;
const REF_KEY: &str = "$scrim_ref";
const LIT_KEY: &str = "$scrim_lit";
/// `{"$scrim_chunks": [...]}` stands for an array longer than [`CHUNK_LEN`], cut into chunks.
const CHUNKS_KEY: &str = "$scrim_chunks";
/// Arrays longer than this are cut into chunks of this many elements.
pub const CHUNK_LEN: usize = 16;
/// Placed where a referenced piece is absent (purged or lost) so the rest still reads.
pub const MISSING_KEY: &str = "$scrim_missing";

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Replaces the shareable subtrees below `value` (not `value` itself) by references and hands
/// each piece to `sink(hash, bytes)`. The same piece may be handed over more than once.
pub fn reduce_children(value: Value, sink: &mut dyn FnMut(&str, &[u8])) -> Value {
    match value {
        Value::Array(items) if items.len() > CHUNK_LEN => {
            // Fixed index boundaries: an append-only list (the conversation) keeps its earlier
            // chunks byte-identical turn after turn, so only the newest chunk is new.
            let mut chunks = Vec::with_capacity(items.len().div_ceil(CHUNK_LEN));
            let mut items = items.into_iter().peekable();
            while items.peek().is_some() {
                let chunk = items
                    .by_ref()
                    .take(CHUNK_LEN)
                    .map(|v| reduce(v, sink))
                    .collect();
                chunks.push(share(Value::Array(chunk), sink));
            }
            let mut m = Map::new();
            m.insert(CHUNKS_KEY.to_owned(), Value::Array(chunks));
            Value::Object(m)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(|v| reduce(v, sink)).collect()),
        Value::Object(map) => escape(map.into_iter().map(|(k, v)| (k, reduce(v, sink))).collect()),
        other => other,
    }
}

/// [`reduce_children`], then `value` itself as a piece whatever its size (unless null): the
/// record body keeps only a reference, so retention can remove the whole payload while the
/// body, which the hash chain covers, stays as it was.
pub fn reduce_payload(value: Value, sink: &mut dyn FnMut(&str, &[u8])) -> Value {
    let value = reduce_children(value, sink);
    if value.is_null() {
        return value;
    }
    let bytes = serde_json::to_vec(&value).expect("JSON value serialises");
    let hash = sha256_hex(&bytes);
    sink(&hash, &bytes);
    reference(hash)
}

fn reduce(value: Value, sink: &mut dyn FnMut(&str, &[u8])) -> Value {
    let value = reduce_children(value, sink);
    share(value, sink)
}

/// `value` itself as a piece and a reference, if it is big enough.
fn share(value: Value, sink: &mut dyn FnMut(&str, &[u8])) -> Value {
    if matches!(value, Value::Null | Value::Bool(_) | Value::Number(_)) {
        return value;
    }
    let bytes = serde_json::to_vec(&value).expect("JSON value serialises");
    if bytes.len() < MIN_SHARED_BYTES {
        return value;
    }
    let hash = sha256_hex(&bytes);
    sink(&hash, &bytes);
    reference(hash)
}

fn reference(hash: String) -> Value {
    let mut m = Map::new();
    m.insert(REF_KEY.to_owned(), Value::String(hash));
    Value::Object(m)
}

fn escape(map: Map<String, Value>) -> Value {
    let ambiguous = map.len() == 1
        && map
            .keys()
            .all(|k| k == REF_KEY || k == LIT_KEY || k == CHUNKS_KEY);
    if ambiguous {
        let mut outer = Map::new();
        outer.insert(LIT_KEY.to_owned(), Value::Object(map));
        Value::Object(outer)
    } else {
        Value::Object(map)
    }
}

/// The hash named by a reference object, if `value` is one.
pub fn reference_hash(value: &Value) -> Option<&str> {
    match value {
        Value::Object(m) if m.len() == 1 => m.get(REF_KEY)?.as_str(),
        _ => None,
    }
}

/// Every reference directly inside `value` (not inside the pieces it references).
pub fn references(value: &Value, out: &mut Vec<String>) {
    if let Some(h) = reference_hash(value) {
        out.push(h.to_owned());
        return;
    }
    match value {
        Value::Array(items) => items.iter().for_each(|v| references(v, out)),
        Value::Object(m) => m.values().for_each(|v| references(v, out)),
        _ => {}
    }
}

/// Undoes [`reduce_children`]: `load(hash)` returns a piece's bytes, or `None` when it is
/// gone, in which case `{"$scrim_missing": hash}` stands in for it.
pub fn expand(value: Value, load: &mut dyn FnMut(&str) -> Option<Vec<u8>>) -> Value {
    if let Some(hash) = reference_hash(&value) {
        let hash = hash.to_owned();
        return match load(&hash).and_then(|b| serde_json::from_slice::<Value>(&b).ok()) {
            Some(piece) => expand(piece, load),
            None => {
                let mut m = Map::new();
                m.insert(MISSING_KEY.to_owned(), Value::String(hash));
                Value::Object(m)
            }
        };
    }
    match value {
        Value::Array(items) => Value::Array(items.into_iter().map(|v| expand(v, load)).collect()),
        Value::Object(mut map)
            if map.len() == 1 && matches!(map.get(CHUNKS_KEY), Some(Value::Array(_))) =>
        {
            let Some(Value::Array(chunks)) = map.remove(CHUNKS_KEY) else {
                unreachable!("checked above")
            };
            let mut items = Vec::new();
            for chunk in chunks {
                match expand(chunk, load) {
                    Value::Array(part) => items.extend(part),
                    missing => items.push(missing),
                }
            }
            Value::Array(items)
        }
        Value::Object(map) => {
            let map: Map<String, Value> = match unwrap_literal(map) {
                Ok(inner) => inner,
                Err(map) => map,
            };
            Value::Object(map.into_iter().map(|(k, v)| (k, expand(v, load))).collect())
        }
        other => other,
    }
}

fn unwrap_literal(mut map: Map<String, Value>) -> Result<Map<String, Value>, Map<String, Value>> {
    if map.len() == 1 && matches!(map.get(LIT_KEY), Some(Value::Object(_))) {
        match map.remove(LIT_KEY) {
            Some(Value::Object(inner)) => Ok(inner),
            _ => unreachable!("checked above"),
        }
    } else {
        Err(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::HashMap;

    fn round_trip(v: Value) -> (Value, HashMap<String, Vec<u8>>) {
        let mut pieces = HashMap::new();
        let reduced = reduce_children(v, &mut |h, b| {
            pieces.insert(h.to_owned(), b.to_vec());
        });
        let expanded = expand(reduced, &mut |h| pieces.get(h).cloned());
        (expanded, pieces)
    }

    #[test]
    fn reduced_value_expands_to_the_original() {
        let v = json!({
            "model": "m",
            "system": "s".repeat(300),
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a".repeat(500)}]},
                {"role": "assistant", "content": "short"},
            ],
            "n": 3, "b": true, "z": null,
        });
        let (expanded, pieces) = round_trip(v.clone());
        assert_eq!(expanded, v);
        assert!(pieces.len() >= 3);
    }

    #[test]
    fn long_lists_round_trip_through_chunks() {
        for n in [0, 1, 15, 16, 17, 32, 33, 100] {
            let v = json!({"list": (0..n).map(|i| json!({"i": i, "text": format!("{i}").repeat(50)})).collect::<Vec<_>>()});
            assert_eq!(round_trip(v.clone()).0, v, "n = {n}");
        }
    }

    #[test]
    fn appending_to_a_long_list_adds_one_chunk_not_a_copy_of_every_reference() {
        let item = |i: usize| json!({"role": "user", "content": format!("{i:04}").repeat(100)});
        let mut known = std::collections::HashSet::new();
        let mut new_bytes_last_turn = 0;
        for turn in 1..=100 {
            new_bytes_last_turn = 0;
            let v = json!({"messages": (0..turn).map(item).collect::<Vec<_>>()});
            reduce_children(v, &mut |h, b| {
                if known.insert(h.to_owned()) {
                    new_bytes_last_turn += b.len();
                }
            });
        }
        // The new message (~420 B), the newest chunk (16 references) and the chunk list.
        assert!(
            new_bytes_last_turn < 420 + 17 * 80 + 8 * 80,
            "{new_bytes_last_turn}"
        );
    }

    #[test]
    fn data_that_looks_like_a_reference_survives() {
        let v = json!({"a": {"$scrim_ref": "x"}, "b": {"$scrim_lit": {"$scrim_ref": "y"}}, "d": {"$scrim_chunks": []}, "c": "q".repeat(200)});
        assert_eq!(round_trip(v.clone()).0, v);
    }

    #[test]
    fn repeated_content_is_stored_once() {
        let msg = json!({"role": "user", "content": "m".repeat(1000)});
        let mut pieces = std::collections::BTreeMap::new();
        for turn in 1..=3 {
            let v = json!({"messages": vec![msg.clone(); turn]});
            reduce_children(v, &mut |h, b| {
                pieces.insert(h.to_owned(), b.len());
            });
        }
        let big: Vec<_> = pieces.values().filter(|&&len| len >= 1000).collect();
        assert_eq!(big.len(), 1, "{pieces:?}");
        // One copy of the content plus the growing lists of references, not three copies.
        assert!(pieces.values().sum::<usize>() < 2000, "{pieces:?}");
    }

    #[test]
    fn missing_piece_is_marked_not_fatal() {
        let v = json!({"text": "t".repeat(200)});
        let reduced = reduce_children(v, &mut |_, _| {});
        let expanded = expand(reduced, &mut |_| None);
        assert!(expanded["text"].get(MISSING_KEY).is_some());
    }
}
