//! The credential swap: which headers leave the request and which header carries the service
//! key towards the upstream.

use crate::config::UpstreamCredential;

/// Every header through which a caller may have sent a credential; all are removed before
/// routing, whichever one the token was read from.
pub const CALLER_CREDENTIAL_HEADERS: &[&str] = &["authorization", "x-api-key", "proxy-authorization"];

/// Headers removed because they would make the upstream compress its response, which the
/// filter could then not inspect.
pub const UPSTREAM_UNWANTED_HEADERS: &[&str] = &["accept-encoding"];

/// The service key. `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct ServiceKey(String);

impl ServiceKey {
    /// Accepts a key read from the environment; surrounding whitespace (a trailing newline
    /// from a file) is dropped, and an empty or non-header-safe value is refused.
    pub fn new(raw: &str) -> Option<ServiceKey> {
        let key = raw.trim();
        let header_safe = key.bytes().all(|b| (0x21..0x7f).contains(&b));
        (!key.is_empty() && header_safe).then(|| ServiceKey(key.to_string()))
    }
}

impl std::fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServiceKey(..)")
    }
}

/// Header changes for a request that passed identity checks. `Debug` hides the values set,
/// since one of them is the service key.
#[derive(PartialEq, Eq)]
pub struct HeaderPlan {
    pub remove: Vec<&'static str>,
    pub set: Vec<(String, String)>,
}

impl std::fmt::Debug for HeaderPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set: Vec<&str> = self.set.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HeaderPlan").field("remove", &self.remove).field("set", &set).finish()
    }
}

/// Drops every caller credential and sets the service key.
pub fn header_plan(cred: &UpstreamCredential, key: &ServiceKey) -> HeaderPlan {
    let mut remove: Vec<&'static str> = CALLER_CREDENTIAL_HEADERS.to_vec();
    remove.extend_from_slice(UPSTREAM_UNWANTED_HEADERS);
    HeaderPlan { remove, set: vec![(cred.header.clone(), format!("{}{}", cred.prefix, key.0))] }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cred(prefix: &str) -> UpstreamCredential {
        UpstreamCredential { env: "E".into(), header: "x-api-key".into(), prefix: prefix.into() }
    }

    #[test]
    fn plan_removes_every_caller_credential_and_sets_the_key() {
        let key = ServiceKey::new("sk-test-123\n").unwrap();
        let plan = header_plan(&cred("Bearer "), &key);
        for h in ["authorization", "x-api-key", "proxy-authorization", "accept-encoding"] {
            assert!(plan.remove.contains(&h), "{h}");
        }
        assert_eq!(plan.set, vec![("x-api-key".to_string(), "Bearer sk-test-123".to_string())]);
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let key = ServiceKey::new("sk-test-secret-value").unwrap();
        let plan = header_plan(&cred(""), &key);
        assert!(!format!("{key:?} {plan:?}").contains("secret-value"));
    }

    #[test]
    fn empty_or_unsafe_keys_are_refused() {
        assert!(ServiceKey::new("  \n").is_none());
        assert!(ServiceKey::new("sk with space").is_none());
        assert!(ServiceKey::new("sk\u{7f}").is_none());
    }
}
