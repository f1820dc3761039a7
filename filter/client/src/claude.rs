//! `scrim setup claude-code`: merges the gateway settings into Claude Code's user settings
//! file (`$CLAUDE_CONFIG_DIR/settings.json`, else `~/.claude/settings.json`), changing only
//! the keys scrim owns and keeping every other key as it was.

use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// How long Claude Code reuses the helper's answer before asking again (it also asks again
/// after any 401). `scrim token` is cheap while the token is fresh, so a few minutes is fine.
pub const HELPER_TTL_MS: u64 = 5 * 60 * 1000;

pub fn settings_path() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("CLAUDE_CONFIG_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("settings.json"));
    }
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty()).ok_or_else(|| Error::Settings("HOME is not set".into()))?;
    Ok(PathBuf::from(home).join(".claude/settings.json"))
}

/// The command line Claude Code runs as its `apiKeyHelper` (through a shell): this binary's
/// absolute path, so the helper works whatever Claude Code's PATH is.
pub fn helper_command(exe: &Path) -> String {
    let path = exe.to_string_lossy();
    let quoted = if path.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c)) {
        path.into_owned()
    } else {
        format!("'{}'", path.replace('\'', r"'\''"))
    };
    format!("{quoted} token")
}

/// `existing` with scrim's keys set; every other key untouched.
pub fn merge(existing: Option<Value>, helper: &str, gateway: &str) -> std::result::Result<Value, String> {
    let mut root = match existing {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err("is not a JSON object".into()),
    };
    root.insert("apiKeyHelper".into(), json!(helper));
    let env = root.entry("env").or_insert_with(|| json!({}));
    let Value::Object(env) = env else {
        return Err("has an `env` that is not an object".into());
    };
    env.insert("ANTHROPIC_BASE_URL".into(), json!(gateway));
    env.insert("CLAUDE_CODE_API_KEY_HELPER_TTL_MS".into(), json!(HELPER_TTL_MS.to_string()));
    Ok(Value::Object(root))
}

/// Reads, merges and writes the settings file (atomically; a file that is not JSON is left
/// alone and reported). Returns the path written.
pub fn setup(gateway: &str, exe: &Path) -> Result<PathBuf> {
    let path = settings_path()?;
    let existing = match std::fs::read(&path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => None,
        Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
            path: path.clone(),
            reason: format!("is not valid JSON ({e}); fix or move it, nothing was changed"),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::file(&path, e)),
    };
    let merged = merge(existing, &helper_command(exe), gateway)
        .map_err(|reason| Error::BadFile { path: path.clone(), reason: format!("{reason}; nothing was changed") })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let tmp = dir.join(format!(".settings.json.scrim.{}", std::process::id()));
    let mut text = serde_json::to_string_pretty(&merged).unwrap_or_default();
    text.push('\n');
    std::fs::write(&tmp, text).map_err(|e| Error::file(&tmp, e))?;
    // Keep the file's own permissions if it had some.
    if let Ok(meta) = std::fs::metadata(&path) {
        let _ = std::fs::set_permissions(&tmp, meta.permissions());
    }
    std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_other_keys_and_sets_scrims() {
        let existing = json!({"model": "opus", "env": {"FOO": "1", "ANTHROPIC_BASE_URL": "old"}, "permissions": {"allow": ["Bash"]}});
        let merged = merge(Some(existing), "/usr/bin/scrim token", "https://gw").unwrap();
        assert_eq!(merged["model"], "opus");
        assert_eq!(merged["permissions"]["allow"][0], "Bash");
        assert_eq!(merged["env"]["FOO"], "1");
        assert_eq!(merged["env"]["ANTHROPIC_BASE_URL"], "https://gw");
        assert_eq!(merged["env"]["CLAUDE_CODE_API_KEY_HELPER_TTL_MS"], "300000");
        assert_eq!(merged["apiKeyHelper"], "/usr/bin/scrim token");
    }

    #[test]
    fn merge_refuses_settings_that_are_not_an_object() {
        assert!(merge(Some(json!([1])), "x", "y").is_err());
        assert!(merge(Some(json!({"env": "x"})), "x", "y").is_err());
    }

    #[test]
    fn helper_path_with_spaces_is_quoted_for_the_shell() {
        assert_eq!(helper_command(Path::new("/opt/bin/scrim")), "/opt/bin/scrim token");
        assert_eq!(helper_command(Path::new("/Users/a b/scrim")), "'/Users/a b/scrim' token");
    }
}
