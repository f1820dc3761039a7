//! The one error type of the `scrim` command; each message tells the developer what happened
//! and, where there is one, what to do. Messages never contain a token.

use std::path::PathBuf;

/// Why a `scrim` command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Wrong or missing command-line arguments.
    #[error("{0}\nusage: scrim login [--gateway URL] [--device] | token | status | logout | setup claude-code [--gateway URL]")]
    Usage(String),
    /// No usable session: never signed in, signed out, or the refresh token is gone or revoked.
    #[error("{0}: run `scrim login` to sign in again")]
    LoginRequired(String),
    /// A server could not be reached or answered something that is not what the protocol says.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The gateway's or the identity provider's published settings are unusable.
    #[error("{0}")]
    Settings(String),
    /// The identity provider refused a request (OAuth `error` and `error_description`).
    #[error("the identity provider refused the {step}: {code}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused { step: &'static str, code: String, description: Option<String> },
    /// The sign-in was not completed: state mismatch, denied, expired, timed out.
    #[error("sign-in failed: {0}")]
    SignIn(String),
    /// A local file could not be read or written.
    #[error("{}: {source}", path.display())]
    File { path: PathBuf, #[source] source: std::io::Error },
    /// A local file exists but is not what scrim expects (say, settings.json that is not JSON).
    #[error("{}: {reason}", path.display())]
    BadFile { path: PathBuf, reason: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn file(path: &std::path::Path, source: std::io::Error) -> Error {
        Error::File { path: path.to_path_buf(), source }
    }
}
