//! The keys that seal the hash chain: each record's chain hash is sealed with HMAC-SHA256
//! under a key only the recorder holds, and the key's id is stored beside the seal, so keys
//! rotate (new records under the new key, old ones still checked under theirs). Whoever can
//! rewrite the database but not read the key file can no longer recompute a valid chain.
//!
//! Key file (`--chain-key-file`): one key per line, `<key-id> <secret>`; `#` starts a comment.
//! The *last* line seals new records; the lines before it only verify. Ids are 1–64 of
//! `A-Z a-z 0-9 . _ -`; secrets at least [`MIN_SECRET_CHARS`] characters.
//!
//! Limit: a seal proves a record was written by a holder of the key; it cannot show that the
//! newest records were deleted. Keep the head `verify` prints somewhere else too.

use crate::secret_file::{self, SecretError, MIN_SECRET_CHARS};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Domain separation: a seal is never a valid HMAC of anything else the recorder computes.
const SEAL_CONTEXT: &[u8] = b"scrim-chain-seal-v1\0";

/// The keys of one recorder, the sealing key last.
#[derive(Clone)]
pub struct ChainKeys {
    keys: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ChainKeys {
    // Key material never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("ChainKeys").field("ids", &ids).finish()
    }
}

/// What checking one record's seal found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SealCheck {
    /// No keys were given to the check.
    NotChecked,
    Valid { key_id: String },
    /// The record carries no seal (written without keys, or the seal was removed).
    Missing,
    /// The seal names a key this recorder does not hold.
    UnknownKey { key_id: String },
    /// The seal does not match the record's chain hash.
    Invalid,
}

impl ChainKeys {
    /// Reads a key file (format in the module documentation).
    pub fn load(path: &Path) -> Result<ChainKeys, SecretError> {
        let text = secret_file::read(path)?;
        ChainKeys::parse(&text, &path.display().to_string())
    }

    /// Parses key-file text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<ChainKeys, SecretError> {
        let syntax = |line: usize, message: &str| SecretError::Syntax {
            path: origin.to_owned(),
            line,
            message: message.to_owned(),
        };
        let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, secret) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| syntax(n + 1, "expected `<key-id> <secret>`"))?;
            let secret = secret.trim();
            let id_ok = (1..=64).contains(&id.len())
                && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !id_ok {
                return Err(syntax(n + 1, "key id must be 1-64 of A-Z a-z 0-9 . _ -"));
            }
            if secret.chars().count() < MIN_SECRET_CHARS {
                return Err(syntax(n + 1, &format!("secret shorter than {MIN_SECRET_CHARS} characters")));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(syntax(n + 1, &format!("key id `{id}` appears twice")));
            }
            keys.push((id.to_owned(), secret.as_bytes().to_vec()));
        }
        if keys.is_empty() {
            return Err(syntax(0, "no key"));
        }
        Ok(ChainKeys { keys })
    }

    /// The id of the key that seals new records.
    pub fn current_id(&self) -> &str {
        &self.keys.last().expect("at least one key").0
    }

    /// Every key id, oldest first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// Seals a record's chain hash with the current key: `(key id, seal)`.
    pub fn seal(&self, chain_hash: &[u8]) -> (String, Vec<u8>) {
        let (id, key) = self.keys.last().expect("at least one key");
        (id.clone(), seal_with(key, id, chain_hash).to_vec())
    }

    /// Checks a stored seal against the record's chain hash.
    pub fn check(&self, key_id: Option<&str>, seal: Option<&[u8]>, chain_hash: &[u8]) -> SealCheck {
        let (Some(key_id), Some(seal)) = (key_id, seal) else {
            return SealCheck::Missing;
        };
        let Some((_, key)) = self.keys.iter().find(|(id, _)| id == key_id) else {
            return SealCheck::UnknownKey { key_id: key_id.to_owned() };
        };
        if secret_file::same_secret(&seal_with(key, key_id, chain_hash), seal) {
            SealCheck::Valid { key_id: key_id.to_owned() }
        } else {
            SealCheck::Invalid
        }
    }
}

fn seal_with(key: &[u8], key_id: &str, chain_hash: &[u8]) -> [u8; 32] {
    let mut message = Vec::with_capacity(SEAL_CONTEXT.len() + key_id.len() + 1 + chain_hash.len());
    message.extend_from_slice(SEAL_CONTEXT);
    message.extend_from_slice(key_id.as_bytes());
    message.push(0);
    message.extend_from_slice(chain_hash);
    hmac_sha256(key, &message)
}

/// HMAC-SHA256 (RFC 2104), on the SHA-256 the chain already uses.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|b| b ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231_vectors() {
        // Test case 2 (short key) and test case 6 (key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    const OLD: &str = "old-2025 synthetic-chain-key-aaaaaaaaaaaaaaaaaaaaaaaa";
    const NEW: &str = "new-2026 synthetic-chain-key-bbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn the_last_key_seals_and_every_listed_key_checks() {
        let old = ChainKeys::parse(OLD, "t").unwrap();
        let both = ChainKeys::parse(&format!("# rotated\n{OLD}\n{NEW}\n"), "t").unwrap();
        let hash = [7u8; 32];
        let (id, seal) = old.seal(&hash);
        assert_eq!(id, "old-2025");
        assert_eq!(both.current_id(), "new-2026");
        assert_eq!(both.check(Some(&id), Some(&seal), &hash), SealCheck::Valid { key_id: id.clone() });
        let new_only = ChainKeys::parse(NEW, "t").unwrap();
        assert_eq!(new_only.check(Some(&id), Some(&seal), &hash), SealCheck::UnknownKey { key_id: id.clone() });
        assert_eq!(both.check(Some(&id), Some(&seal), &[8u8; 32]), SealCheck::Invalid);
        assert_eq!(both.check(None, None, &hash), SealCheck::Missing);
    }

    #[test]
    fn bad_key_files_are_refused_by_line() {
        for (text, line) in [
            ("k1 short", 1),
            ("\nbad/id synthetic-chain-key-aaaaaaaaaaaaaaaaaaaaaaaa", 2),
            (&format!("{OLD}\n{OLD}") as &str, 2),
            ("nosecret", 1),
        ] {
            match ChainKeys::parse(text, "t") {
                Err(SecretError::Syntax { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(ChainKeys::parse("# nothing\n", "t").is_err());
    }

    #[test]
    fn debug_output_shows_ids_not_secrets() {
        let keys = ChainKeys::parse(OLD, "t").unwrap();
        assert!(!format!("{keys:?}").contains("synthetic"));
    }
}
