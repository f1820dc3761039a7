//! The core's verifier against real keys of every accepted algorithm, natively and with a fixed
//! clock: each algorithm verifies with its own key, and no key verifies a token of another
//! family or of an algorithm its JWK does not allow.

use jsonwebtoken::Algorithm;
use scrim_core::auth::{verify, AuthError, Verdict};
use scrim_core::config::Config;
use scrim_core::jwks::KeySet;
use scrim_devstack::keys::{jwks_json, SigningKey};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://idp.test";

const ALGORITHMS: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn config() -> Config {
    Config::from_json(
        json!({
            "issuers": [{"issuer": ISSUER, "audiences": ["scrim"], "jwks_uri": "https://idp.test/jwks", "jwks_cluster": "idp"}],
            "allowed_groups": ["eng"]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn claims() -> Value {
    json!({"iss": ISSUER, "aud": "scrim", "sub": "alice", "groups": ["eng"], "iat": NOW, "exp": NOW + 300})
}

fn keyset(keys: &[SigningKey]) -> Vec<Option<KeySet>> {
    vec![Some(KeySet::parse(jwks_json(keys).to_string().as_bytes()).unwrap())]
}

#[test]
fn every_accepted_algorithm_verifies_with_its_own_key() {
    let cfg = config();
    for alg in ALGORITHMS {
        let key = SigningKey::generate(alg, &format!("{alg:?}")).unwrap();
        let verdict = verify(&cfg, &keyset(std::slice::from_ref(&key)), &key.mint(&claims()), NOW);
        assert!(matches!(verdict, Verdict::Verified(ref id) if id.subject == "alice"), "{alg:?}: {verdict:?}");
    }
}

/// A JWKS that holds a key under the token's `kid` but of another type, or whose `alg` differs
/// from the token's, must not verify it (algorithm confusion).
#[test]
fn key_of_another_type_or_alg_under_the_same_kid_does_not_verify() {
    let cfg = config();
    let rs = SigningKey::generate(Algorithm::RS256, "shared").unwrap();
    let es = SigningKey::generate(Algorithm::ES256, "shared").unwrap();
    // ES256 token, but the JWKS only has an RSA key with that kid.
    let verdict = verify(&cfg, &keyset(std::slice::from_ref(&rs)), &es.mint(&claims()), NOW);
    assert_eq!(verdict, Verdict::Rejected(AuthError::BadSignature));

    // PS256 signed by the RSA key whose JWK says alg RS256: refused although the math works.
    let ps_claims = claims();
    let stored = rs.to_stored();
    let ps = SigningKey::from_stored(scrim_devstack::keys::StoredKey { alg: Algorithm::PS256, ..stored }).unwrap();
    let verdict = verify(&cfg, &keyset(std::slice::from_ref(&rs)), &ps.mint(&ps_claims), NOW);
    assert_eq!(verdict, Verdict::Rejected(AuthError::BadSignature));
}

/// The signature covers the header: dropping the `kid` to make the verifier try every key
/// breaks it, so a token cannot be re-pointed at another key by editing its header.
#[test]
fn editing_the_header_to_drop_the_kid_breaks_the_signature() {
    let cfg = config();
    let a = SigningKey::generate(Algorithm::ES256, "a").unwrap();
    let b = SigningKey::generate(Algorithm::ES256, "b").unwrap();
    let token = b.mint(&claims());
    let (_, rest) = token.split_once('.').unwrap();
    use base64::Engine;
    let no_kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"JWT"}"#);
    let stripped = format!("{no_kid}.{rest}");
    let verdict = verify(&cfg, &keyset(&[a.clone(), b.clone()]), &stripped, NOW);
    assert_eq!(verdict, Verdict::Rejected(AuthError::BadSignature));
}

#[test]
fn unknown_kid_asks_for_fresh_keys_and_missing_keys_ask_too() {
    let cfg = config();
    let known = SigningKey::generate(Algorithm::ES256, "known").unwrap();
    let other = SigningKey::generate(Algorithm::ES256, "rotated-in").unwrap();
    let verdict = verify(&cfg, &keyset(&[known]), &other.mint(&claims()), NOW);
    assert!(matches!(verdict, Verdict::NeedKeys { issuer_index: 0, error: AuthError::UnknownKey(_) }), "{verdict:?}");
    let verdict = verify(&cfg, &[None], &other.mint(&claims()), NOW);
    assert!(matches!(verdict, Verdict::NeedKeys { error: AuthError::KeysUnavailable { .. }, .. }), "{verdict:?}");
}
