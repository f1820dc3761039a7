//! The Scrim filter as an Envoy proxy-wasm module.
//!
//! The only crate that imports proxy-wasm: it translates host callbacks into `scrim-core`
//! calls and core results into host actions. [`root::ScrimRoot`] owns the per-VM state
//! (configuration, key sets, token cache, service key, metrics); each request gets a
//! [`http::ScrimHttp`] that shares it.

mod http;
mod metrics;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(root::ScrimRoot::default()));
}}
