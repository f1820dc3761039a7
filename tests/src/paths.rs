//! Where the project's tools and build outputs live. Each can be overridden by an environment
//! variable, so a deployment or CI can point at its own copies.

use std::path::PathBuf;

/// The workspace root (this crate sits in `tests/`).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn envoy_dir() -> PathBuf {
    workspace_root().join("envoy")
}

/// The Envoy binary: `SCRIM_ENVOY`, else the one `make tools` installs.
pub fn envoy_binary() -> PathBuf {
    std::env::var_os("SCRIM_ENVOY")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/venv/bin/envoy"))
}

/// The filter module: `SCRIM_WASM`, else the release build `make wasm` produces.
pub fn filter_wasm() -> PathBuf {
    std::env::var_os("SCRIM_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/wasm32-wasip1/release/scrim_filter.wasm"))
}

/// The Claude Code CLI: `SCRIM_CLAUDE_CODE`, else the one `make test-tools` installs.
pub fn claude_code() -> PathBuf {
    std::env::var_os("SCRIM_CLAUDE_CODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/tools/node/node_modules/.bin/claude"))
}

/// The `scrim-recorder` command: `SCRIM_RECORDER`, else the one built beside this test binary
/// (`cargo test --workspace` builds it), built now if it is not there yet.
pub fn recorder_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SCRIM_RECORDER") {
        return Ok(PathBuf::from(path));
    }
    // The test binary runs from `<target>/debug/deps/`; commands sit in `<target>/debug/`.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).ok_or("no target directory")?;
    let binary = profile_dir.join("scrim-recorder");
    if !binary.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--locked", "-p", "scrim-recorder", "--bin", "scrim-recorder"])
            .current_dir(workspace_root())
            .status()
            .map_err(|e| format!("cannot build scrim-recorder: {e}"))?;
        if !status.success() {
            return Err("building scrim-recorder failed".into());
        }
    }
    Ok(binary)
}
