//! JWKS documents: parses an identity provider's key set into keys usable for verification.
//!
//! Only asymmetric signing keys are kept. A symmetric (`oct`) key in a JWKS is skipped: HMAC
//! tokens are never accepted, whatever the document holds, so a public key can never be
//! abused as an HMAC secret.

use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

/// The kind of a public key, which decides the token algorithms it may verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify a token signed with `alg`.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// One public key from a JWKS.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The key's own `alg`, when the JWKS names one: a token must then use exactly it.
    pub alg: Option<Algorithm>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .finish()
    }
}

/// The usable keys of one issuer.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<VerifyKey>,
    /// Keys present in the document but not usable (symmetric, unknown type or curve, not for
    /// signing, malformed); kept as a count for diagnostics.
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksError {
    /// The document is not JSON of the form `{"keys": [...]}`.
    NotAJwks(String),
    /// The document parsed but holds no asymmetric signing key this filter can use.
    NoUsableKeys { skipped: usize },
}

impl std::fmt::Display for JwksError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksError::NotAJwks(e) => write!(f, "not a JWKS document: {e}"),
            JwksError::NoUsableKeys { skipped } => {
                write!(f, "JWKS holds no usable signing key ({skipped} skipped)")
            }
        }
    }
}

impl std::error::Error for JwksError {}

#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Maps an `alg` name to an algorithm this filter accepts; HMAC and `none` are not among them.
pub fn accepted_algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

fn parse_key(value: serde_json::Value) -> Option<VerifyKey> {
    let raw: RawJwk = serde_json::from_value(value).ok()?;
    if raw.use_.as_deref().is_some_and(|u| u != "sig") {
        return None;
    }
    let (kind, key) = match (raw.kty.as_str(), raw.crv.as_deref()) {
        ("RSA", _) => (
            KeyKind::Rsa,
            DecodingKey::from_rsa_components(raw.n.as_deref()?, raw.e.as_deref()?).ok()?,
        ),
        ("EC", Some(crv @ ("P-256" | "P-384"))) => {
            let kind = if crv == "P-256" { KeyKind::P256 } else { KeyKind::P384 };
            let key = DecodingKey::from_ec_components(raw.x.as_deref()?, raw.y.as_deref()?).ok()?;
            (kind, key)
        }
        ("OKP", Some("Ed25519")) => (
            KeyKind::Ed25519,
            DecodingKey::from_ed_components(raw.x.as_deref()?).ok()?,
        ),
        _ => return None,
    };
    let alg = match raw.alg.as_deref() {
        None => None,
        Some(name) => {
            let alg = accepted_algorithm(name)?;
            if !kind.fits(alg) {
                return None;
            }
            Some(alg)
        }
    };
    Some(VerifyKey { kid: raw.kid, kind, alg, key })
}

impl KeySet {
    /// Parses a JWKS document, keeping every usable asymmetric signing key.
    pub fn parse(document: &[u8]) -> Result<KeySet, JwksError> {
        let raw: RawJwks =
            serde_json::from_slice(document).map_err(|e| JwksError::NotAJwks(e.to_string()))?;
        Self::from_values(raw.keys)
    }

    /// Builds a key set from already-parsed JWK objects (inline keys in the configuration).
    pub fn from_values(values: Vec<serde_json::Value>) -> Result<KeySet, JwksError> {
        let total = values.len();
        let keys: Vec<VerifyKey> = values.into_iter().filter_map(parse_key).collect();
        let skipped = total - keys.len();
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys { skipped });
        }
        Ok(KeySet { keys, skipped })
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Keys that may verify a token with this `kid` (if it names one) and `alg`.
    ///
    /// A token that names a `kid` is only tried against the key with that id, so a token cannot
    /// pick a key by claiming a different id; one without a `kid` is tried against every key
    /// that fits its algorithm.
    pub fn candidates<'a>(
        &'a self,
        kid: Option<&'a str>,
        alg: Algorithm,
    ) -> impl Iterator<Item = &'a VerifyKey> + 'a {
        self.keys.iter().filter(move |k| {
            let kid_ok = match kid {
                Some(kid) => k.kid.as_deref() == Some(kid),
                None => true,
            };
            kid_ok && k.kind.fits(alg) && k.alg.is_none_or(|a| a == alg)
        })
    }
}
