//! Secrets the recorder reads from files (the ingest token, the chain keys): loading with
//! the length rule, and comparing tokens without the time taken telling anything.

use sha2::{Digest, Sha256};
use std::path::Path;

/// Shortest secret accepted, in characters.
pub const MIN_SECRET_CHARS: usize = 32;

/// Why a secret file was refused. Messages name the file, never its content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the secret must be at least {MIN_SECRET_CHARS} characters")]
    TooShort { path: String },
    #[error("{path} line {line}: {message}")]
    Syntax {
        path: String,
        line: usize,
        message: String,
    },
}

/// Reads a one-secret file (surrounding whitespace ignored) of at least
/// [`MIN_SECRET_CHARS`] characters.
pub fn read_secret(path: &Path) -> Result<String, SecretError> {
    let text = read(path)?;
    let secret = text.trim().to_owned();
    if secret.chars().count() < MIN_SECRET_CHARS {
        return Err(SecretError::TooShort {
            path: path.display().to_string(),
        });
    }
    Ok(secret)
}

pub(crate) fn read(path: &Path) -> Result<String, SecretError> {
    std::fs::read_to_string(path).map_err(|source| SecretError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Whether `given` equals `expected`, comparing digests so the time taken depends on neither.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(expected));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_secret_is_refused_and_a_long_one_trimmed() {
        let dir = std::env::temp_dir().join(format!("scrim-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let short = dir.join("short");
        std::fs::write(&short, "too-short\n").unwrap();
        assert!(matches!(read_secret(&short), Err(SecretError::TooShort { .. })));
        let long = dir.join("long");
        std::fs::write(&long, format!("  {}\n", "k".repeat(32))).unwrap();
        assert_eq!(read_secret(&long).unwrap(), "k".repeat(32));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn secrets_compare_equal_only_when_equal() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"", b"abc"));
    }
}
