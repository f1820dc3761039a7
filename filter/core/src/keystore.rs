//! Per-VM key sets of every issuer and the decisions of when to (re)fetch them.
//!
//! The filter runs one VM per Envoy worker, each with its own `KeyStore`. Fetches are
//! scheduled (`due_fetches`, called from the timer) or on demand when a token names an unknown
//! `kid` (`may_fetch_on_demand`, rate-limited so forged `kid`s cannot hammer the IdP).

use crate::config::{Config, KeySource};
use crate::jwks::KeySet;

#[derive(Debug, Clone, Default)]
struct FetchState {
    in_flight: bool,
    last_attempt: Option<u64>,
    last_success: Option<u64>,
    last_on_demand: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct KeyStore {
    /// `sets[i]` are the keys of `config.issuers[i]`; `None` until a first fetch succeeded.
    sets: Vec<Option<KeySet>>,
    remote: Vec<bool>,
    state: Vec<FetchState>,
}

impl KeyStore {
    pub fn new(config: &Config) -> Self {
        let sets = config
            .issuers
            .iter()
            .map(|i| match &i.keys {
                KeySource::Inline(set) => Some(set.clone()),
                KeySource::Remote(_) => None,
            })
            .collect();
        let remote = config.issuers.iter().map(|i| matches!(i.keys, KeySource::Remote(_))).collect();
        KeyStore { sets, remote, state: vec![FetchState::default(); config.issuers.len()] }
    }

    pub fn sets(&self) -> &[Option<KeySet>] {
        &self.sets
    }

    /// Issuers whose keys should be fetched now: never fetched and the retry period passed,
    /// or the refresh period passed since the last success. None already in flight.
    pub fn due_fetches(&self, config: &Config, now: u64) -> Vec<usize> {
        (0..self.sets.len())
            .filter(|&i| self.remote[i] && !self.state[i].in_flight)
            .filter(|&i| {
                let s = &self.state[i];
                let since = |t: Option<u64>| t.map_or(u64::MAX, |t| now.saturating_sub(t));
                if self.sets[i].is_none() {
                    since(s.last_attempt) >= config.jwks.retry_seconds
                } else {
                    since(s.last_success) >= config.jwks.refresh_seconds
                        && since(s.last_attempt) >= config.jwks.retry_seconds
                }
            })
            .collect()
    }

    /// Whether a request may trigger a fetch of issuer `i`'s keys now. With no keys at all
    /// the retry period applies; for an unknown `kid` the (longer) unknown-kid period.
    pub fn may_fetch_on_demand(&self, config: &Config, i: usize, now: u64) -> bool {
        if !self.remote.get(i).copied().unwrap_or(false) {
            return false;
        }
        let s = &self.state[i];
        let since = |t: Option<u64>| t.map_or(u64::MAX, |t| now.saturating_sub(t));
        if self.sets[i].is_none() {
            since(s.last_attempt) >= config.jwks.retry_seconds
        } else {
            since(s.last_on_demand) >= config.jwks.unknown_kid_refetch_seconds
        }
    }

    /// Records a scheduled fetch start.
    pub fn fetch_started(&mut self, i: usize, now: u64) {
        let s = &mut self.state[i];
        s.in_flight = true;
        s.last_attempt = Some(now);
    }

    /// Records an on-demand fetch start (counts against the unknown-kid rate limit).
    pub fn on_demand_fetch_started(&mut self, i: usize, now: u64) {
        let s = &mut self.state[i];
        s.last_attempt = Some(now);
        s.last_on_demand = Some(now);
    }

    /// Stores freshly fetched keys. A failed fetch keeps the previous keys: an IdP outage
    /// does not lock out callers whose keys are already known.
    pub fn fetch_finished(&mut self, i: usize, scheduled: bool, result: Option<KeySet>, now: u64) {
        let s = &mut self.state[i];
        if scheduled {
            s.in_flight = false;
        }
        if let Some(set) = result {
            s.last_success = Some(now);
            self.sets[i] = Some(set);
        }
    }
}
