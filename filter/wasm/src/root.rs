//! Per-VM root context: loads the configuration and service key once, keeps every issuer's
//! key set fresh from a timer, and hands each request the shared state.

use crate::http::ScrimHttp;
use crate::metrics::Metrics;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use scrim_core::auth::TokenCache;
use scrim_core::config::{Config, JwksEndpoint, KeySource, RawAudit};
use scrim_core::credential::ServiceKey;
use scrim_core::exchange::SessionTracker;
use scrim_core::jwks::KeySet;
use scrim_core::keystore::KeyStore;
use scrim_core::review::GrantCache;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A JWKS larger than this is refused: no real provider publishes megabytes of keys.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Everything a request needs, owned by the root context and shared (one VM is one thread).
pub struct Shared {
    pub config: Config,
    pub service_key: ServiceKey,
    pub keys: KeyStore,
    pub cache: TokenCache,
    pub sessions: SessionTracker,
    pub metrics: Metrics,
    /// Whether the recorder answered its last probe (only probed with `audit.required`).
    pub recorder_up: bool,
    /// What the recorder's review and grant routes expect from the gateway (only with
    /// approval rules or grants).
    pub recorder_token: Option<String>,
    /// Grant answers per caller.
    pub grants: GrantCache,
}

pub type SharedRef = Rc<RefCell<Shared>>;

#[derive(Default)]
pub struct ScrimRoot {
    shared: Option<SharedRef>,
    /// Scheduled JWKS fetches in flight: call token → issuer index.
    fetches: HashMap<u32, usize>,
    /// The recorder probe in flight, if any.
    probe: Option<u32>,
    last_probe_ms: u64,
}

pub fn seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Starts a JWKS fetch through the issuer's cluster; the response arrives in the caller's
/// `on_http_call_response`.
pub fn dispatch_jwks_fetch(
    ctx: &dyn Context,
    endpoint: &JwksEndpoint,
    timeout_ms: u64,
) -> Result<u32, proxy_wasm::types::Status> {
    ctx.dispatch_http_call(
        &endpoint.cluster,
        vec![
            (":method", "GET"),
            (":path", &endpoint.path),
            (":authority", &endpoint.authority),
            (":scheme", &endpoint.scheme),
            ("accept", "application/json"),
        ],
        None,
        vec![],
        Duration::from_millis(timeout_ms),
    )
}

/// Asks the recorder's listener whether it is there: any HTTP answer means it is up; a connect
/// failure or timeout comes back from Envoy as 503 or 504 (see [`recorder_answered`]).
pub fn dispatch_recorder_check(ctx: &dyn Context, audit: &RawAudit) -> Result<u32, proxy_wasm::types::Status> {
    ctx.dispatch_http_call(
        &audit.recorder_cluster,
        vec![(":method", "GET"), (":path", "/healthz"), (":authority", "scrim-recorder")],
        None,
        vec![],
        Duration::from_millis(audit.health_interval_ms.max(200)),
    )
}

/// Whether a finished [`dispatch_recorder_check`] reached the recorder.
pub fn recorder_answered(ctx: &dyn Context) -> bool {
    let status = ctx.get_http_call_response_header(":status").unwrap_or_default();
    !status.is_empty() && !status.starts_with('5')
}

/// Reads a finished JWKS call; `None` (with a log line saying why) when it is unusable.
pub fn read_jwks_response(ctx: &dyn Context, issuer: &str, body_size: usize) -> Option<KeySet> {
    let status = ctx.get_http_call_response_header(":status").unwrap_or_default();
    if status != "200" {
        warn!("jwks fetch for `{issuer}` failed: status {status}");
        return None;
    }
    if body_size > MAX_JWKS_BYTES {
        warn!("jwks fetch for `{issuer}` failed: document of {body_size} bytes is too large");
        return None;
    }
    let body = ctx.get_http_call_response_body(0, body_size).unwrap_or_default();
    match KeySet::parse(&body) {
        Ok(set) => Some(set),
        Err(e) => {
            warn!("jwks fetch for `{issuer}` failed: {e}");
            None
        }
    }
}

impl ScrimRoot {
    /// Asks the recorder whether it is there. Any HTTP answer means its listener is up; a
    /// connect failure or timeout comes back from Envoy as 503 or 504.
    fn probe_recorder(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let s = shared.borrow();
        let now_ms = millis(self.get_current_time());
        if !s.config.audit.required
            || self.probe.is_some()
            || now_ms.saturating_sub(self.last_probe_ms) < s.config.audit.health_interval_ms
        {
            return;
        }
        self.last_probe_ms = now_ms;
        match dispatch_recorder_check(self, &s.config.audit) {
            Ok(call) => self.probe = Some(call),
            Err(status) => {
                drop(s);
                error!("cannot probe the recorder: {status:?}");
                shared.borrow_mut().recorder_up = false;
            }
        }
    }

    fn start_due_fetches(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let now = seconds(self.get_current_time());
        let mut s = shared.borrow_mut();
        for i in s.keys.due_fetches(&s.config, now) {
            let KeySource::Remote(endpoint) = &s.config.issuers[i].keys else { continue };
            match dispatch_jwks_fetch(self, endpoint, s.config.jwks.fetch_timeout_ms) {
                Ok(token) => {
                    self.fetches.insert(token, i);
                    s.keys.fetch_started(i, now);
                }
                Err(status) => {
                    // Usually an unknown cluster name: a deployment error worth shouting about.
                    error!(
                        "cannot fetch jwks of `{}` through cluster `{}`: {status:?}",
                        s.config.issuers[i].issuer, endpoint.cluster
                    );
                    s.keys.fetch_started(i, now);
                    s.keys.fetch_finished(i, true, None, now);
                    s.metrics.jwks_refresh(false);
                }
            }
        }
    }
}

impl Context for ScrimRoot {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        if self.probe == Some(token) {
            self.probe = None;
            let up = recorder_answered(self);
            if let Some(shared) = &self.shared {
                let mut s = shared.borrow_mut();
                if s.recorder_up != up {
                    warn!("recorder is {}", if up { "back" } else { "unreachable: refusing new exchanges" });
                }
                s.recorder_up = up;
            }
            return;
        }
        let (Some(i), Some(shared)) = (self.fetches.remove(&token), self.shared.clone()) else {
            return;
        };
        let now = seconds(self.get_current_time());
        let mut s = shared.borrow_mut();
        let issuer = s.config.issuers[i].issuer.clone();
        let result = read_jwks_response(self, &issuer, body_size);
        s.metrics.jwks_refresh(result.is_some());
        if let Some(set) = &result {
            info!("jwks of `{issuer}` loaded: {} keys ({} skipped)", set.len(), set.skipped);
        }
        s.keys.fetch_finished(i, true, result, now);
    }
}

impl RootContext for ScrimRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let started = self.get_current_time();
        let raw = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::from_json(&raw) {
            Ok(c) => c,
            Err(e) => {
                error!("scrim: {e}");
                return false;
            }
        };
        let env = &config.upstream_credential.env;
        let Some(service_key) = std::env::var(env).ok().as_deref().and_then(ServiceKey::new) else {
            error!(
                "scrim: the service key environment variable `{env}` is unset or empty; list it \
                 in vm_config.environment_variables.host_env_keys and set it for Envoy"
            );
            return false;
        };
        let recorder_token = if config.policy.uses_recorder() {
            let env = &config.policy.reviews.token_env;
            match std::env::var(env) {
                Ok(token) if token.trim().len() >= 32 => Some(token.trim().to_string()),
                _ => {
                    error!(
                        "scrim: approval rules and grants need the recorder's service token (at least 32 \
                         characters) in the environment variable `{env}`; list it in \
                         vm_config.environment_variables.host_env_keys and set it for Envoy"
                    );
                    return false;
                }
            }
        } else {
            None
        };
        // Compiling the masking rules is most of a VM's start-up: say what it cost.
        info!(
            "scrim: configuration compiled in {} ms ({} masking rules)",
            self.get_current_time().duration_since(started).map(|d| d.as_millis()).unwrap_or(0),
            config.masking.rules.len()
        );
        let keys = KeyStore::new(&config);
        let cache = TokenCache::new(config.token_cache_entries);
        let metrics = Metrics::define();
        let sessions = SessionTracker::new(config.audit.session_idle_seconds * 1000, 10_000);
        let tick = Duration::from_millis(if config.audit.required { config.audit.health_interval_ms.min(1000) } else { 1000 });
        self.shared = Some(Rc::new(RefCell::new(Shared {
            config,
            service_key,
            keys,
            cache,
            sessions,
            metrics,
            recorder_up: false,
            recorder_token,
            grants: GrantCache::default(),
        })));
        // The first tick fires one period after start: fetch and probe now as well.
        self.start_due_fetches();
        self.probe_recorder();
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        self.start_due_fetches();
        self.probe_recorder();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let shared = self.shared.clone()?;
        Some(Box::new(ScrimHttp::new(shared)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
