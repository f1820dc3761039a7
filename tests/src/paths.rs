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
