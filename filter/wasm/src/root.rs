//! Per-VM root context: loads the configuration and service key once, keeps every issuer's
//! key set fresh from a timer, and hands each request the shared state.

use crate::http::ScrimHttp;
use crate::metrics::Metrics;
use log::{error, info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use scrim_core::config::{Config, KeySource};
use scrim_core::credential::ServiceKey;
use scrim_core::jwks::KeySet;
use scrim_core::lifecycle::{read_jwks, recorder_answered, recorder_check, scheduled_jwks_call, Answer, Call, Gateway, MAX_JWKS_BYTES};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Everything a request needs, owned by the root context and shared (one VM is one thread).
pub struct Shared {
    pub gateway: Gateway,
    pub metrics: Metrics,
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

fn dispatch(ctx: &dyn Context, call: &Call) -> Result<u32, proxy_wasm::types::Status> {
    let headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    ctx.dispatch_http_call(&call.cluster, headers, call.body.as_deref(), vec![], Duration::from_millis(call.timeout_ms))
}

/// Key sets are kept in Envoy's process-wide shared data as well, so that a VM that starts
/// later (a new worker, or one Envoy reloaded after a crash) serves at once instead of
/// refusing requests until its own first fetch completes.
fn shared_keys_name(issuer: &str) -> String {
    format!("scrim.jwks.{issuer}")
}

impl ScrimRoot {
    /// Asks the recorder whether it is there. Any HTTP answer means its listener is up; a
    /// connect failure or timeout comes back from Envoy as 503 or 504.
    fn probe_recorder(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let s = shared.borrow();
        let config = &s.gateway.config;
        let now_ms = millis(self.get_current_time());
        if !config.audit.required
            || self.probe.is_some()
            || now_ms.saturating_sub(self.last_probe_ms) < config.audit.health_interval_ms
        {
            return;
        }
        self.last_probe_ms = now_ms;
        match dispatch(self, &recorder_check(config)) {
            Ok(call) => self.probe = Some(call),
            Err(status) => {
                drop(s);
                error!("cannot probe the recorder: {status:?}");
                shared.borrow_mut().gateway.recorder_up = false;
            }
        }
    }

    /// Takes key sets another VM already fetched.
    fn adopt_shared_keys(&mut self, gw: &mut Gateway) {
        let now = seconds(self.get_current_time());
        for i in 0..gw.config.issuers.len() {
            if !matches!(gw.config.issuers[i].keys, KeySource::Remote(_)) {
                continue;
            }
            let name = shared_keys_name(&gw.config.issuers[i].issuer);
            // The host call, not the SDK's wrapper, which panics on an unexpected status.
            let Ok((Some(bytes), _)) = proxy_wasm::hostcalls::get_shared_data(&name) else { continue };
            if let Ok(set) = KeySet::parse(&bytes) {
                info!("jwks of `{}` taken from shared data: {} keys", gw.config.issuers[i].issuer, set.len());
                gw.keys.fetch_started(i, now);
                gw.keys.fetch_finished(i, true, Some(set), now);
            }
        }
    }

    fn start_due_fetches(&mut self) {
        let Some(shared) = self.shared.clone() else { return };
        let now = seconds(self.get_current_time());
        let mut s = shared.borrow_mut();
        let Shared { gateway: gw, metrics } = &mut *s;
        for i in gw.keys.due_fetches(&gw.config, now) {
            let Some(call) = scheduled_jwks_call(&gw.config, i) else { continue };
            match dispatch(self, &call) {
                Ok(token) => {
                    self.fetches.insert(token, i);
                    gw.keys.fetch_started(i, now);
                }
                Err(status) => {
                    // Usually an unknown cluster name: a deployment error worth shouting about.
                    error!("cannot fetch jwks of `{}` through cluster `{}`: {status:?}", gw.config.issuers[i].issuer, call.cluster);
                    gw.keys.fetch_started(i, now);
                    gw.keys.fetch_finished(i, true, None, now);
                    metrics.jwks_refresh(false);
                }
            }
        }
    }
}

impl Context for ScrimRoot {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        if self.probe == Some(token) {
            self.probe = None;
            let up = recorder_answered(Answer { status: &status, body: &[] });
            if let Some(shared) = &self.shared {
                let mut s = shared.borrow_mut();
                if s.gateway.recorder_up != up {
                    warn!("recorder is {}", if up { "back" } else { "unreachable: refusing new exchanges" });
                }
                s.gateway.recorder_up = up;
            }
            return;
        }
        let (Some(i), Some(shared)) = (self.fetches.remove(&token), self.shared.clone()) else {
            return;
        };
        let now = seconds(self.get_current_time());
        let body = if body_size <= MAX_JWKS_BYTES { self.get_http_call_response_body(0, body_size).unwrap_or_default() } else { Vec::new() };
        let answer = Answer { status: &status, body: &body };
        let mut s = shared.borrow_mut();
        let issuer = s.gateway.config.issuers[i].issuer.clone();
        let result = if body_size > MAX_JWKS_BYTES { Err(format!("document of {body_size} bytes is too large")) } else { read_jwks(answer) };
        s.metrics.jwks_refresh(result.is_ok());
        match &result {
            Ok(set) => {
                info!("jwks of `{issuer}` loaded: {} keys ({} skipped)", set.len(), set.skipped);
                if let Err(e) = proxy_wasm::hostcalls::set_shared_data(&shared_keys_name(&issuer), Some(&body), None) {
                    warn!("jwks of `{issuer}` not shared with other VMs: {e:?}");
                }
            }
            Err(why) => warn!("jwks fetch for `{issuer}` failed: {why}"),
        }
        s.gateway.keys.fetch_finished(i, true, result.ok(), now);
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
        let tick = Duration::from_millis(if config.audit.required { config.audit.health_interval_ms.min(1000) } else { 1000 });
        let mut gateway = Gateway::new(config, service_key, recorder_token);
        self.adopt_shared_keys(&mut gateway);
        self.shared = Some(Rc::new(RefCell::new(Shared { gateway, metrics: Metrics::define() })));
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
