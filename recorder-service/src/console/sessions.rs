//! Signed-in browsers and logins under way, in memory (a recorder restart signs everyone
//! out). Session ids, CSRF tokens, login states and PKCE verifiers are 256-bit values from
//! the OS random source; sessions are looked up by the SHA-256 of their id, so the table
//! holds no usable cookie.

use crate::api::Caller;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;

/// How long a login may take between leaving for the identity provider and coming back.
pub const LOGIN_TTL_MS: i64 = 10 * 60 * 1000;
/// Most logins under way at once; beyond it the oldest are dropped (a flood of `/login`
/// visits cannot grow memory without bound).
pub const MAX_PENDING_LOGINS: usize = 10_000;
/// Most live sessions; beyond it the soonest-expiring are dropped.
pub const MAX_SESSIONS: usize = 100_000;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The bearer token every API call of this session carries.
    pub token: String,
    pub caller: Caller,
    /// Member of the approver group (the console offers decisions).
    pub approver: bool,
    /// Synchronizer token: state-changing requests must carry it in `x-csrf-token`.
    pub csrf: String,
    pub expires_ms: i64,
}

/// A login under way.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    /// The `state` parameter.
    pub state: String,
    /// The PKCE code verifier (its S256 challenge goes to the identity provider).
    pub verifier: String,
    /// Value of the login cookie of the browser that started it.
    pub binding: String,
    created_ms: i64,
}

impl PendingLogin {
    /// `BASE64URL(SHA256(verifier))` (RFC 7636 S256).
    pub fn challenge(&self) -> String {
        pkce_challenge(&self.verifier)
    }
}

pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// 32 random bytes, base64url (43 characters, cookie- and URL-safe).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Compares secrets through their digests, so the time taken says nothing about them.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    !expected.is_empty() && a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<[u8; 32], Session>>,
    pending: Mutex<HashMap<String, PendingLogin>>,
}

impl Sessions {
    pub fn start_login(&self, now_ms: i64) -> PendingLogin {
        let login = PendingLogin {
            state: random_token(),
            verifier: random_token(),
            binding: random_token(),
            created_ms: now_ms,
        };
        let mut pending = self.pending.lock().expect("lock");
        pending.retain(|_, p| now_ms - p.created_ms < LOGIN_TTL_MS);
        while pending.len() >= MAX_PENDING_LOGINS {
            let oldest = pending.iter().min_by_key(|(_, p)| p.created_ms).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => pending.remove(&k),
                None => break,
            };
        }
        pending.insert(login.state.clone(), login.clone());
        login
    }

    /// Takes the login for `state` if the same browser started it and it is recent; a state
    /// is usable once.
    pub fn finish_login(&self, state: &str, binding: &str, now_ms: i64) -> Option<PendingLogin> {
        let mut pending = self.pending.lock().expect("lock");
        let login = pending.get(state)?;
        if !same_secret(binding, &login.binding) || now_ms - login.created_ms >= LOGIN_TTL_MS {
            return None;
        }
        pending.remove(state)
    }

    /// A new session; returns its id (the cookie value) and CSRF token.
    pub fn create(&self, token: String, caller: Caller, approver: bool, expires_ms: i64, now_ms: i64) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut live = self.live.lock().expect("lock");
        live.retain(|_, s| s.expires_ms > now_ms);
        while live.len() >= MAX_SESSIONS {
            let soonest = live.iter().min_by_key(|(_, s)| s.expires_ms).map(|(k, _)| *k);
            match soonest {
                Some(k) => live.remove(&k),
                None => break,
            };
        }
        live.insert(key(&id), Session { token, caller, approver, csrf: csrf.clone(), expires_ms });
        (id, csrf)
    }

    pub fn get(&self, id: &str, now_ms: i64) -> Option<Session> {
        let mut live = self.live.lock().expect("lock");
        let k = key(id);
        match live.get(&k) {
            Some(s) if s.expires_ms > now_ms => Some(s.clone()),
            Some(_) => {
                live.remove(&k);
                None
            }
            None => None,
        }
    }

    pub fn remove(&self, id: &str) {
        self.live.lock().expect("lock").remove(&key(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller() -> Caller {
        Caller { subject: "carol".into(), auditor: true, issuer: "i".into(), email: None, groups: vec![] }
    }

    #[test]
    fn pkce_challenge_matches_rfc_7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn a_login_finishes_once_and_only_in_the_browser_that_started_it() {
        let s = Sessions::default();
        let login = s.start_login(0);
        assert!(s.finish_login(&login.state, "other-browser", 1).is_none());
        assert!(s.finish_login(&login.state, &login.binding, LOGIN_TTL_MS).is_none(), "expired");
        let again = s.start_login(0);
        assert!(s.finish_login(&again.state, &again.binding, 1).is_some());
        assert!(s.finish_login(&again.state, &again.binding, 2).is_none(), "used twice");
    }

    #[test]
    fn a_session_ends_at_its_expiry_and_on_removal() {
        let s = Sessions::default();
        let (id, csrf) = s.create("t".into(), caller(), false, 1_000, 0);
        assert_eq!(s.get(&id, 999).expect("live").csrf, csrf);
        assert!(s.get(&id, 1_000).is_none());
        let (id, _) = s.create("t".into(), caller(), false, 1_000, 0);
        s.remove(&id);
        assert!(s.get(&id, 1).is_none());
    }

    #[test]
    fn secrets_compare_equal_only_when_equal_and_never_empty() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("", ""));
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
    }
}
