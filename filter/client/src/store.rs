//! The session file: where it lives (XDG state directory), written atomically with mode 0600
//! so only the user can read it, and a lock file that makes concurrent `scrim token` calls
//! take turns on a refresh.

use crate::error::{Error, Result};
use crate::settings::{ClientSettings, Provider};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// Everything scrim remembers between commands. Tokens are only ever read back by scrim.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub gateway: String,
    pub settings: ClientSettings,
    pub provider: Provider,
    #[serde(default)]
    pub tokens: Option<Tokens>,
}

/// The tokens of a signed-in session.
#[derive(Clone, Serialize, Deserialize)]
pub struct Tokens {
    pub access_token: String,
    /// Seconds since the epoch.
    pub obtained_at: u64,
    pub expires_at: u64,
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Who signed in, for `scrim status` (from the ID token or the access token).
    #[serde(default)]
    pub subject: Option<String>,
}

// Tokens never appear in debug output (error messages, panics).
impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("expires_at", &self.expires_at)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "…"))
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

/// `$XDG_STATE_HOME/scrim`, else `~/.local/state/scrim`.
pub fn state_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("scrim"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| Error::Settings("neither XDG_STATE_HOME nor HOME is set".into()))?;
    Ok(PathBuf::from(home).join(".local/state/scrim"))
}

pub struct Store {
    dir: PathBuf,
}

/// Held while a command reads and maybe refreshes the session; released on drop.
pub struct Lock {
    _file: File,
}

impl Store {
    pub fn open() -> Result<Store> {
        let dir = state_dir()?;
        fs::create_dir_all(&dir).map_err(|e| Error::file(&dir, e))?;
        // The folder too: a token file is only as private as the folder it sits in.
        let _ = fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        Ok(Store { dir })
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("session.json")
    }

    /// Waits for, then holds, the exclusive lock on the session.
    pub fn lock(&self) -> Result<Lock> {
        let path = self.dir.join("session.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| Error::file(&path, e))?;
        // SAFETY: flock on a file descriptor we own; it stays open as long as the Lock.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::file(&path, std::io::Error::last_os_error()));
        }
        Ok(Lock { _file: file })
    }

    /// The stored session, `None` if there is none.
    pub fn load(&self) -> Result<Option<Session>> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::file(&path, e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| Error::BadFile { path, reason: format!("not a scrim session ({e}); run `scrim logout`") })
    }

    /// Replaces the session file in one rename, so a reader never sees half a file.
    pub fn save(&self, session: &Session) -> Result<()> {
        let path = self.path();
        let tmp = self.dir.join(format!(".session.json.{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(session).map_err(|e| Error::BadFile { path: path.clone(), reason: e.to_string() })?;
        write_private(&tmp, &bytes)?;
        fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))
    }

    pub fn remove(&self) -> Result<()> {
        let path = self.path();
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::file(&path, e)),
            _ => Ok(()),
        }
    }
}

/// Creates `path` with mode 0600 from the start (no moment where others could read it).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let _ = fs::remove_file(path);
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::file(path, e))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(|e| Error::file(path, e))
}
