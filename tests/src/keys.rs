//! Test signing keys: generates one key per JWS algorithm, mints tokens with it and
//! publishes its public half as a JWK. It never verifies tokens; that is the filter's job.
//!
//! A [`SigningKey`] is always built from its PKCS#8 PEM, whether freshly generated or
//! loaded from disk, so both paths share one parser and a stored key behaves exactly like
//! the key that was generated.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::rngs::OsRng;
// One pkcs8 crate serves RSA, both curves and Ed25519, so its traits are imported once.
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Why a key could not be generated or loaded.
#[derive(Debug)]
#[non_exhaustive]
pub enum KeyError {
    /// Only the asymmetric algorithms are supported: HMAC keys cannot be published in a JWKS.
    UnsupportedAlgorithm(Algorithm),
    /// The random source or the key encoder failed.
    Generate { alg: Algorithm, reason: String },
    /// A stored PEM did not parse as a PKCS#8 private key of the stated algorithm.
    InvalidPem {
        kid: String,
        alg: Algorithm,
        reason: String,
    },
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::UnsupportedAlgorithm(alg) => {
                write!(f, "unsupported signing algorithm {alg:?}: only RSA, ECDSA and EdDSA keys can be published")
            }
            KeyError::Generate { alg, reason } => {
                write!(f, "generating a {alg:?} key failed: {reason}")
            }
            KeyError::InvalidPem { kid, alg, reason } => {
                write!(
                    f,
                    "key {kid:?} is not a valid PKCS#8 {alg:?} private key: {reason}"
                )
            }
        }
    }
}

impl std::error::Error for KeyError {}

/// The on-disk form of a [`SigningKey`]: enough to rebuild it exactly.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub kid: String,
    pub alg: Algorithm,
    /// The private key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pkcs8_pem: String,
}

/// A private signing key with its key id, algorithm and published JWK.
#[derive(Clone)]
pub struct SigningKey {
    kid: String,
    alg: Algorithm,
    pkcs8_pem: String,
    encoding: EncodingKey,
    public_jwk: Value,
}

// Keeps the private key out of test failure output.
impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// The curve (or key family) an algorithm needs. The RSA-PSS variants share RSA keys.
#[derive(Clone, Copy)]
enum Family {
    Rsa,
    P256,
    P384,
    Ed25519,
}

fn family(alg: Algorithm) -> Result<Family, KeyError> {
    use Algorithm::*;
    match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Ok(Family::Rsa),
        ES256 => Ok(Family::P256),
        ES384 => Ok(Family::P384),
        EdDSA => Ok(Family::Ed25519),
        other => Err(KeyError::UnsupportedAlgorithm(other)),
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The JWK `alg` value: jsonwebtoken serialises `Algorithm` to exactly the JOSE names.
fn alg_name(alg: Algorithm) -> Value {
    serde_json::to_value(alg).unwrap_or(Value::Null)
}

impl SigningKey {
    /// Generates a fresh key: RSA 2048 for RS*/PS*, P-256 for ES256, P-384 for ES384,
    /// Ed25519 for EdDSA.
    pub fn generate(alg: Algorithm, kid: &str) -> Result<SigningKey, KeyError> {
        let fail = |reason: String| KeyError::Generate { alg, reason };
        let lf = rsa::pkcs8::LineEnding::LF;
        let pem = match family(alg)? {
            Family::Rsa => {
                let key =
                    rsa::RsaPrivateKey::new(&mut OsRng, 2048).map_err(|e| fail(e.to_string()))?;
                key.to_pkcs8_pem(lf)
                    .map_err(|e| fail(e.to_string()))?
                    .to_string()
            }
            Family::P256 => p256::SecretKey::random(&mut OsRng)
                .to_pkcs8_pem(lf)
                .map_err(|e| fail(e.to_string()))?
                .to_string(),
            Family::P384 => p384::SecretKey::random(&mut OsRng)
                .to_pkcs8_pem(lf)
                .map_err(|e| fail(e.to_string()))?
                .to_string(),
            Family::Ed25519 => ed25519_dalek::SigningKey::generate(&mut OsRng)
                .to_pkcs8_pem(lf)
                .map_err(|e| fail(e.to_string()))?
                .to_string(),
        };
        SigningKey::from_stored(StoredKey {
            kid: kid.to_string(),
            alg,
            pkcs8_pem: pem,
        })
    }

    /// Rebuilds a key from its stored form, checking that the PEM fits the algorithm.
    pub fn from_stored(stored: StoredKey) -> Result<SigningKey, KeyError> {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::traits::PublicKeyParts as _;

        let StoredKey {
            kid,
            alg,
            pkcs8_pem,
        } = stored;
        let invalid = |reason: String| KeyError::InvalidPem {
            kid: kid.clone(),
            alg,
            reason,
        };
        let (encoding, key_fields) = match family(alg)? {
            Family::Rsa => {
                let key = rsa::RsaPrivateKey::from_pkcs8_pem(&pkcs8_pem)
                    .map_err(|e| invalid(e.to_string()))?;
                // jsonwebtoken's RustCrypto backend reads RSA keys as PKCS#1, not PKCS#8.
                let der = key.to_pkcs1_der().map_err(|e| invalid(e.to_string()))?;
                let fields = json!({
                    "kty": "RSA",
                    "n": b64(&key.n().to_bytes_be()),
                    "e": b64(&key.e().to_bytes_be()),
                });
                (EncodingKey::from_rsa_der(der.as_bytes()), fields)
            }
            Family::P256 => {
                let key = p256::SecretKey::from_pkcs8_pem(&pkcs8_pem)
                    .map_err(|e| invalid(e.to_string()))?;
                let der = key.to_pkcs8_der().map_err(|e| invalid(e.to_string()))?;
                let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &key.public_key(),
                    false,
                );
                let (x, y) = point
                    .x()
                    .zip(point.y())
                    .ok_or_else(|| invalid("public point is the identity".into()))?;
                let fields = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
                (EncodingKey::from_ec_der(der.as_bytes()), fields)
            }
            Family::P384 => {
                let key = p384::SecretKey::from_pkcs8_pem(&pkcs8_pem)
                    .map_err(|e| invalid(e.to_string()))?;
                let der = key.to_pkcs8_der().map_err(|e| invalid(e.to_string()))?;
                let point = p384::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
                    &key.public_key(),
                    false,
                );
                let (x, y) = point
                    .x()
                    .zip(point.y())
                    .ok_or_else(|| invalid("public point is the identity".into()))?;
                let fields = json!({"kty": "EC", "crv": "P-384", "x": b64(x), "y": b64(y)});
                (EncodingKey::from_ec_der(der.as_bytes()), fields)
            }
            Family::Ed25519 => {
                let key = ed25519_dalek::SigningKey::from_pkcs8_pem(&pkcs8_pem)
                    .map_err(|e| invalid(e.to_string()))?;
                let der = key.to_pkcs8_der().map_err(|e| invalid(e.to_string()))?;
                let fields = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(key.verifying_key().as_bytes())});
                (EncodingKey::from_ed_der(der.as_bytes()), fields)
            }
        };

        let mut public_jwk = key_fields;
        public_jwk["kid"] = json!(kid);
        public_jwk["alg"] = alg_name(alg);
        public_jwk["use"] = json!("sig");
        Ok(SigningKey {
            kid,
            alg,
            pkcs8_pem,
            encoding,
            public_jwk,
        })
    }

    /// The stored form, for keeping the key on disk.
    pub fn to_stored(&self) -> StoredKey {
        StoredKey {
            kid: self.kid.clone(),
            alg: self.alg,
            pkcs8_pem: self.pkcs8_pem.clone(),
        }
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public key as a JWK with `kid`, `alg` and `use: "sig"`.
    pub fn public_jwk(&self) -> Value {
        self.public_jwk.clone()
    }

    /// Signs `claims` as a compact JWS whose header carries this key's `kid` and `alg`.
    pub fn mint(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        // The key was parsed and matched to its algorithm at construction, and a JSON value
        // always serialises, so signing has no remaining way to fail.
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .unwrap_or_else(|e| panic!("signing with validated key {:?} failed: {e}", self.kid))
    }
}

/// A JWKS document (`{"keys": [...]}`) publishing the public halves of `keys`.
pub fn jwks_json(keys: &[SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(SigningKey::public_jwk).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, jwk::Jwk, DecodingKey, Validation};
    use std::time::Instant;

    const ALL: [Algorithm; 9] = [
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

    fn claims() -> Value {
        json!({"sub": "alice", "aud": "scrim", "iss": "https://idp.test", "exp": 4_000_000_000u64})
    }

    fn verify(token: &str, jwk: &Value, alg: Algorithm) -> jsonwebtoken::errors::Result<Value> {
        let jwk: Jwk = serde_json::from_value(jwk.clone()).expect("published JWK parses");
        let key = DecodingKey::from_jwk(&jwk)?;
        let mut validation = Validation::new(alg);
        validation.set_audience(&["scrim"]);
        validation.set_issuer(&["https://idp.test"]);
        decode::<Value>(token, &key, &validation).map(|data| data.claims)
    }

    #[test]
    fn minted_tokens_verify_against_the_published_jwk_for_every_algorithm() {
        for alg in ALL {
            let key = SigningKey::generate(alg, &format!("kid-{alg:?}")).expect("generate");
            let token = key.mint(&claims());
            let header = jsonwebtoken::decode_header(&token).expect("header");
            assert_eq!(header.kid.as_deref(), Some(key.kid()), "{alg:?}");
            assert_eq!(header.alg, alg);
            let verified =
                verify(&token, &key.public_jwk(), alg).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(verified["sub"], "alice", "{alg:?}");
        }
    }

    #[test]
    fn published_jwk_names_kid_alg_and_use() {
        for alg in ALL {
            let key = SigningKey::generate(alg, "k1").expect("generate");
            let jwk = key.public_jwk();
            assert_eq!(jwk["kid"], "k1");
            assert_eq!(jwk["alg"], alg_name(alg));
            assert_eq!(jwk["use"], "sig");
            assert!(
                jwk.get("d").is_none(),
                "{alg:?} JWK must not carry the private part"
            );
        }
    }

    #[test]
    fn token_from_another_key_does_not_verify() {
        let signer = SigningKey::generate(Algorithm::ES256, "a").expect("generate");
        let other = SigningKey::generate(Algorithm::ES256, "a").expect("generate");
        assert!(verify(
            &signer.mint(&claims()),
            &other.public_jwk(),
            Algorithm::ES256
        )
        .is_err());
    }

    #[test]
    fn stored_key_round_trips_to_the_same_public_key() {
        for alg in [
            Algorithm::RS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
        ] {
            let key = SigningKey::generate(alg, "stored").expect("generate");
            let json = serde_json::to_string(&key.to_stored()).expect("serialise");
            let back =
                SigningKey::from_stored(serde_json::from_str(&json).expect("parse")).expect("load");
            assert_eq!(back.public_jwk(), key.public_jwk());
            assert!(verify(&back.mint(&claims()), &key.public_jwk(), alg).is_ok());
        }
    }

    #[test]
    fn stored_key_with_the_wrong_algorithm_is_refused() {
        let ec = SigningKey::generate(Algorithm::ES256, "ec")
            .expect("generate")
            .to_stored();
        let err = SigningKey::from_stored(StoredKey {
            alg: Algorithm::RS256,
            ..ec
        })
        .unwrap_err();
        assert!(matches!(err, KeyError::InvalidPem { .. }), "{err}");
    }

    #[test]
    fn hmac_algorithms_are_refused() {
        let err = SigningKey::generate(Algorithm::HS256, "h").unwrap_err();
        assert!(matches!(
            err,
            KeyError::UnsupportedAlgorithm(Algorithm::HS256)
        ));
    }

    #[test]
    fn jwks_json_lists_every_public_key() {
        let keys = [
            SigningKey::generate(Algorithm::ES256, "one").expect("generate"),
            SigningKey::generate(Algorithm::EdDSA, "two").expect("generate"),
        ];
        let jwks = jwks_json(&keys);
        let kids: Vec<_> = jwks["keys"]
            .as_array()
            .expect("array")
            .iter()
            .map(|k| k["kid"].clone())
            .collect();
        assert_eq!(kids, [json!("one"), json!("two")]);
        let parsed: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).expect("a valid JWKS");
        assert_eq!(parsed.keys.len(), 2);
    }

    // Guards the dev-profile opt-level for the big-number crates: without it a debug
    // build spends seconds per RSA key and every end-to-end test pays for it.
    // Averaged over several keys because the prime search makes one key's time vary 5x.
    #[test]
    fn rsa_key_generation_takes_under_a_second_in_debug_builds() {
        const KEYS: u32 = 4;
        let started = Instant::now();
        for i in 0..KEYS {
            SigningKey::generate(Algorithm::RS256, &format!("timed-{i}")).expect("generate");
        }
        let mean = started.elapsed() / KEYS;
        eprintln!("RSA 2048 key generation: mean {mean:?} over {KEYS} keys");
        assert!(mean.as_secs_f64() < 1.0, "mean {mean:?}");
    }
}
