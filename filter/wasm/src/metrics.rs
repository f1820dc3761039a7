//! The filter's counters, shown in Envoy's `/stats` as `wasmcustom.scrim.*`.
//!
//! Envoy keeps one stat per name for the whole process, so the per-VM ids below all count
//! into the same figures.

use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;
use scrim_core::auth::AuthError;
use scrim_core::lifecycle::Outcome;
use std::collections::HashMap;

const REVIEW_OUTCOMES: [&str; 4] = ["approved", "pending", "rejected", "unavailable"];

#[derive(Debug, Default)]
pub struct Metrics {
    ids: HashMap<String, u32>,
}

impl Metrics {
    /// Defines every counter up front so all of them show in `/stats` from the start, at 0.
    pub fn define() -> Metrics {
        let mut names: Vec<String> = Outcome::ALL.iter().map(|d| format!("scrim.requests.{}", d.name())).collect();
        names.extend(AuthError::REASONS.iter().map(|r| format!("scrim.jwt_failures.{r}")));
        names.extend(["scrim.jwks.refresh_ok", "scrim.jwks.refresh_failed"].map(String::from));
        names.extend(["scrim.token_cache.hit", "scrim.token_cache.miss"].map(String::from));
        names.extend(["scrim.masked.request", "scrim.masked.response"].map(String::from));
        names.extend(REVIEW_OUTCOMES.iter().map(|o| format!("scrim.reviews.{o}")));
        names.extend(["scrim.grants.active", "scrim.grants.none"].map(String::from));
        let mut ids = HashMap::new();
        for name in names {
            // A host that refuses a metric only loses that figure; requests still work.
            if let Ok(id) = hostcalls::define_metric(MetricType::Counter, &name) {
                ids.insert(name, id);
            }
        }
        Metrics { ids }
    }

    fn bump(&self, name: &str) {
        self.add(name, 1);
    }

    fn add(&self, name: &str, n: i64) {
        if let Some(id) = self.ids.get(name) {
            let _ = hostcalls::increment_metric(*id, n);
        }
    }

    /// Secrets masked, by direction.
    pub fn masked(&self, request: bool, count: usize) {
        let n = i64::try_from(count).unwrap_or(i64::MAX);
        self.add(if request { "scrim.masked.request" } else { "scrim.masked.response" }, n);
    }

    pub fn decision(&self, d: Outcome) {
        self.bump(&format!("scrim.requests.{}", d.name()));
    }

    pub fn jwt_failure(&self, reason: &str) {
        self.bump(&format!("scrim.jwt_failures.{reason}"));
    }

    pub fn jwks_refresh(&self, ok: bool) {
        self.bump(if ok { "scrim.jwks.refresh_ok" } else { "scrim.jwks.refresh_failed" });
    }

    /// A review answer (or the lack of one): approved, pending, rejected, unavailable.
    pub fn review(&self, outcome: &'static str) {
        debug_assert!(REVIEW_OUTCOMES.contains(&outcome));
        self.bump(&format!("scrim.reviews.{outcome}"));
    }

    /// Whether a caller outside the allowed groups held a grant (answers from the cache too).
    pub fn grant(&self, active: bool) {
        self.bump(if active { "scrim.grants.active" } else { "scrim.grants.none" });
    }

    pub fn token_cache(&self, hit: bool) {
        self.bump(if hit { "scrim.token_cache.hit" } else { "scrim.token_cache.miss" });
    }
}
