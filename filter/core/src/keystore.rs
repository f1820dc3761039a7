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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::from_json(
            json!({
                "issuers": [
                    {"issuer": "remote", "audiences": ["a"], "jwks_uri": "http://idp/jwks", "jwks_cluster": "idp"},
                    {"issuer": "inline", "audiences": ["a"], "jwks": {"keys": [
                        {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}}
                ],
                "allowed_groups": ["g"],
                "jwks": {"refresh_seconds": 300, "retry_seconds": 2, "unknown_kid_refetch_seconds": 10}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    }

    fn some_keys() -> KeySet {
        match &config().issuers[1].keys {
            KeySource::Inline(set) => set.clone(),
            KeySource::Remote(_) => unreachable!(),
        }
    }

    #[test]
    fn inline_keys_are_ready_and_never_fetched() {
        let c = config();
        let store = KeyStore::new(&c);
        assert!(store.sets()[1].is_some());
        assert_eq!(store.due_fetches(&c, 0), vec![0]);
        assert!(!store.may_fetch_on_demand(&c, 1, 0));
    }

    #[test]
    fn missing_keys_are_retried_every_retry_period_until_a_fetch_succeeds() {
        let c = config();
        let mut store = KeyStore::new(&c);
        store.fetch_started(0, 100);
        assert!(store.due_fetches(&c, 101).is_empty(), "in flight");
        store.fetch_finished(0, true, None, 101);
        assert!(store.due_fetches(&c, 101).is_empty(), "retry period not over");
        assert_eq!(store.due_fetches(&c, 102), vec![0]);
        store.fetch_started(0, 102);
        store.fetch_finished(0, true, Some(some_keys()), 102);
        assert!(store.sets()[0].is_some());
        assert!(store.due_fetches(&c, 401).is_empty());
        assert_eq!(store.due_fetches(&c, 402), vec![0], "refresh after 300 s");
    }

    #[test]
    fn failed_refresh_keeps_the_previous_keys() {
        let c = config();
        let mut store = KeyStore::new(&c);
        store.fetch_started(0, 0);
        store.fetch_finished(0, true, Some(some_keys()), 0);
        store.fetch_started(0, 300);
        store.fetch_finished(0, true, None, 300);
        assert!(store.sets()[0].is_some());
    }

    #[test]
    fn unknown_kid_refetches_are_rate_limited() {
        let c = config();
        let mut store = KeyStore::new(&c);
        store.fetch_started(0, 0);
        store.fetch_finished(0, true, Some(some_keys()), 0);
        assert!(store.may_fetch_on_demand(&c, 0, 1));
        store.on_demand_fetch_started(0, 1);
        store.fetch_finished(0, false, Some(some_keys()), 1);
        assert!(!store.may_fetch_on_demand(&c, 0, 10));
        assert!(store.may_fetch_on_demand(&c, 0, 11));
    }
}
