//! A minimal OIDC identity provider for tests and `make run`: serves the discovery document
//! and a JWKS, with switches for key rotation and outages. It issues no tokens over HTTP;
//! tests and developers mint them directly with [`SigningKey::mint`] or [`DevIdentity`].

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::Algorithm;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::keys::{jwks_json, KeyError, SigningKey, StoredKey};
use crate::server::{lock, Running};

struct IdpState {
    issuer: String,
    jwks_uri: String,
    keys: Mutex<Vec<SigningKey>>,
    down: AtomicBool,
    jwks_requests: AtomicUsize,
}

/// Handle to a running dev identity provider. Clones share the same server.
#[derive(Clone)]
pub struct DevIdp {
    state: Arc<IdpState>,
    server: Arc<Running>,
}

impl DevIdp {
    /// Serves `GET /.well-known/openid-configuration` and `GET /jwks` on `listener`.
    /// `issuer` is published as given; the JWKS URI is built from the listener's address.
    /// Must be called inside a tokio runtime.
    pub fn start(
        listener: TcpListener,
        issuer: String,
        keys: Vec<SigningKey>,
    ) -> io::Result<DevIdp> {
        let addr = listener.local_addr()?;
        let state = Arc::new(IdpState {
            issuer,
            jwks_uri: format!("http://{addr}/jwks"),
            keys: Mutex::new(keys),
            down: AtomicBool::new(false),
            jwks_requests: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let server = Arc::new(Running::spawn(listener, router)?);
        Ok(DevIdp { state, server })
    }

    /// Replaces the published keys; the next JWKS fetch sees only these.
    pub fn set_keys(&self, keys: Vec<SigningKey>) {
        *lock(&self.state.keys) = keys;
    }

    /// The keys currently published.
    pub fn keys(&self) -> Vec<SigningKey> {
        lock(&self.state.keys).clone()
    }

    /// While down, `/jwks` answers 503 (discovery keeps working, as with a JWKS backend outage).
    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    /// How many `/jwks` requests were answered, including the 503s sent while down.
    pub fn jwks_requests(&self) -> usize {
        self.state.jwks_requests.load(Ordering::SeqCst)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    pub fn jwks_uri(&self) -> &str {
        &self.state.jwks_uri
    }

    /// Closes the listener (new connections are refused) and idle connections, and waits for
    /// the server to finish. The port is free again afterwards for a new `DevIdp`.
    pub async fn stop(&self) {
        self.server.stop().await;
    }
}

async fn discovery(State(state): State<Arc<IdpState>>) -> Json<Value> {
    Json(json!({
        "issuer": state.issuer,
        "jwks_uri": state.jwks_uri,
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported":
            ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"],
    }))
}

async fn jwks(State(state): State<Arc<IdpState>>) -> Response {
    state.jwks_requests.fetch_add(1, Ordering::SeqCst);
    if state.down.load(Ordering::SeqCst) {
        let body =
            json!({"error": "temporarily_unavailable", "error_description": "dev IdP is set down"});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let body = jwks_json(&lock(&state.keys));
    Json(body).into_response()
}

/// Why the persistent dev identity could not be loaded or created.
#[derive(Debug)]
#[non_exhaustive]
pub enum IdentityError {
    Io {
        path: PathBuf,
        source: io::Error,
    },
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    Key {
        path: PathBuf,
        source: KeyError,
    },
    /// The file exists but lacks a key the dev identity needs; delete it to regenerate.
    MissingKey {
        path: PathBuf,
        alg: Algorithm,
    },
}

impl fmt::Display for IdentityError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityError::Io { path, source } => {
                write!(f, "dev identity file {}: {source}", path.display())
            }
            IdentityError::Parse { path, source } => {
                write!(
                    f,
                    "dev identity file {} is not valid: {source}",
                    path.display()
                )
            }
            IdentityError::Key { path, source } => {
                write!(f, "dev identity file {}: {source}", path.display())
            }
            IdentityError::MissingKey { path, alg } => write!(
                f,
                "dev identity file {} has no {alg:?} key; delete it to generate a new identity",
                path.display()
            ),
        }
    }
}

impl std::error::Error for IdentityError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            IdentityError::Io { source, .. } => Some(source),
            IdentityError::Parse { source, .. } => Some(source),
            IdentityError::Key { source, .. } => Some(source),
            IdentityError::MissingKey { .. } => None,
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    keys: Vec<StoredKey>,
}

/// The developer's own signing keys, kept on disk so that tokens minted for `make run`
/// stay valid across restarts. Holds one RS256 key (used to mint) and one ES256 key
/// (published too, so the filter sees a mixed JWKS as it would in production).
#[derive(Clone, Debug)]
pub struct DevIdentity {
    issuer: String,
    rs256: SigningKey,
    es256: SigningKey,
}

const KEYS_FILE: &str = "keys.json";

impl DevIdentity {
    /// Loads `dir/keys.json`, or creates it (mode 0600) with fresh keys on first use.
    pub fn load_or_create(dir: &Path, issuer: &str) -> Result<DevIdentity, IdentityError> {
        let path = dir.join(KEYS_FILE);
        let io_err = |source| IdentityError::Io {
            path: path.clone(),
            source,
        };
        let stored = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice::<KeysFile>(&bytes)
                    .map_err(|source| IdentityError::Parse {
                        path: path.clone(),
                        source,
                    })?
                    .keys
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let keys = [Algorithm::RS256, Algorithm::ES256]
                    .into_iter()
                    .map(|alg| SigningKey::generate(alg, &fresh_kid(alg)).map(|k| k.to_stored()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|source| IdentityError::Key {
                        path: path.clone(),
                        source,
                    })?;
                fs::create_dir_all(dir).map_err(io_err)?;
                write_private(&path, &KeysFile { keys: keys.clone() }).map_err(io_err)?;
                keys
            }
            Err(e) => return Err(io_err(e)),
        };

        let pick = |alg: Algorithm| -> Result<SigningKey, IdentityError> {
            let found = stored.iter().find(|k| k.alg == alg).cloned();
            let found = found.ok_or_else(|| IdentityError::MissingKey {
                path: path.clone(),
                alg,
            })?;
            SigningKey::from_stored(found).map_err(|source| IdentityError::Key {
                path: path.clone(),
                source,
            })
        };
        Ok(DevIdentity {
            issuer: issuer.to_string(),
            rs256: pick(Algorithm::RS256)?,
            es256: pick(Algorithm::ES256)?,
        })
    }

    /// Both keys, for [`DevIdp::start`].
    pub fn keys(&self) -> Vec<SigningKey> {
        vec![self.rs256.clone(), self.es256.clone()]
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Mints an RS256 token for `sub` valid for `ttl_secs` from now.
    pub fn mint_token(
        &self,
        sub: &str,
        groups: &[String],
        audience: &str,
        ttl_secs: u64,
    ) -> String {
        // A clock before 1970 is not a state a dev machine can usefully run in; 0 keeps the
        // token well-formed and it will simply be rejected as expired.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.rs256.mint(&json!({
            "iss": self.issuer,
            "aud": audience,
            "sub": sub,
            "email": format!("{sub}@dev.scrim.local"),
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + ttl_secs,
        }))
    }
}

/// A kid unique to this identity, so keys from two dev directories never collide.
fn fresh_kid(alg: Algorithm) -> String {
    let mut bytes = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("dev-{}-{hex}", format!("{alg:?}").to_lowercase())
}

/// Writes `value` as JSON readable by the owner only. The file is written under a temporary
/// name and renamed, so an interrupted write never leaves a half file that fails to parse.
fn write_private(path: &Path, value: &KeysFile) -> io::Result<()> {
    let json = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let tmp = path.with_extension(format!("json.tmp-{}", std::process::id()));
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{decode, jwk::JwkSet, DecodingKey, Validation};

    async fn listener() -> TcpListener {
        TcpListener::bind("127.0.0.1:0").await.expect("bind")
    }

    // No pooling: a test that stops a server must not reuse a connection to it.
    fn client() -> reqwest::Client {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client")
    }

    fn key(alg: Algorithm, kid: &str) -> SigningKey {
        SigningKey::generate(alg, kid).expect("generate")
    }

    async fn fetch_kids(idp: &DevIdp) -> Vec<String> {
        let jwks: Value = client()
            .get(idp.jwks_uri())
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k["kid"].as_str().expect("kid").to_string())
            .collect()
    }

    fn temp_dir(name: &str) -> PathBuf {
        let mut bytes = [0u8; 6];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let suffix: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        std::env::temp_dir().join(format!("scrim-devstack-{name}-{suffix}"))
    }

    #[tokio::test]
    async fn discovery_document_names_issuer_and_jwks_uri() {
        let idp =
            DevIdp::start(listener().await, "https://idp.test".into(), vec![]).expect("start");
        let url = format!("http://{}/.well-known/openid-configuration", idp.addr());
        let doc: Value = client()
            .get(url)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        assert_eq!(doc["issuer"], "https://idp.test");
        assert_eq!(doc["jwks_uri"], format!("http://{}/jwks", idp.addr()));
    }

    #[tokio::test]
    async fn jwks_endpoint_serves_rotated_keys() {
        let idp = DevIdp::start(
            listener().await,
            "iss".into(),
            vec![key(Algorithm::ES256, "old")],
        )
        .expect("start");
        assert_eq!(fetch_kids(&idp).await, ["old"]);
        idp.set_keys(vec![
            key(Algorithm::ES256, "new"),
            key(Algorithm::EdDSA, "newer"),
        ]);
        assert_eq!(fetch_kids(&idp).await, ["new", "newer"]);
        assert_eq!(idp.jwks_requests(), 2);
    }

    #[tokio::test]
    async fn jwks_endpoint_answers_503_while_down_and_recovers() {
        let idp = DevIdp::start(
            listener().await,
            "iss".into(),
            vec![key(Algorithm::ES256, "k")],
        )
        .expect("start");
        idp.set_down(true);
        let status = client()
            .get(idp.jwks_uri())
            .send()
            .await
            .expect("get")
            .status();
        assert_eq!(status, reqwest::StatusCode::SERVICE_UNAVAILABLE);
        idp.set_down(false);
        assert_eq!(fetch_kids(&idp).await, ["k"]);
        assert_eq!(idp.jwks_requests(), 2);
    }

    #[tokio::test]
    async fn stopped_idp_refuses_connections_and_frees_its_port() {
        let idp = DevIdp::start(
            listener().await,
            "iss".into(),
            vec![key(Algorithm::ES256, "first")],
        )
        .expect("start");
        let addr = idp.addr();
        assert_eq!(fetch_kids(&idp).await, ["first"]);
        idp.stop().await;
        let err = client()
            .get(idp.jwks_uri())
            .send()
            .await
            .expect_err("stopped server must refuse");
        assert!(err.is_connect(), "{err}");

        let again = TcpListener::bind(addr).await.expect("port is free again");
        let second = DevIdp::start(again, "iss".into(), vec![key(Algorithm::ES256, "second")])
            .expect("start");
        assert_eq!(fetch_kids(&second).await, ["second"]);
    }

    #[tokio::test]
    async fn dev_identity_tokens_verify_against_the_served_jwks() {
        let dir = temp_dir("identity");
        let identity = DevIdentity::load_or_create(&dir, "https://dev-idp.test").expect("create");
        let idp = DevIdp::start(listener().await, identity.issuer().into(), identity.keys())
            .expect("start");
        let token = identity.mint_token("alice", &["eng".to_string()], "scrim", 300);

        let jwks: JwkSet = client()
            .get(idp.jwks_uri())
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("jwks");
        let kid = jsonwebtoken::decode_header(&token)
            .expect("header")
            .kid
            .expect("kid");
        let jwk = jwks.find(&kid).expect("token's kid is published");
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&["scrim"]);
        validation.set_issuer(&["https://dev-idp.test"]);
        let claims = decode::<Value>(
            &token,
            &DecodingKey::from_jwk(jwk).expect("key"),
            &validation,
        )
        .expect("verifies")
        .claims;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["email"], "alice@dev.scrim.local");
        assert_eq!(claims["groups"], json!(["eng"]));
        assert_eq!(
            claims["exp"].as_u64().expect("exp") - claims["iat"].as_u64().expect("iat"),
            300
        );
        assert_eq!(claims["nbf"], claims["iat"]);
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn dev_identity_is_reused_from_an_owner_only_file() {
        let dir = temp_dir("persist");
        let first = DevIdentity::load_or_create(&dir, "iss").expect("create");
        let second = DevIdentity::load_or_create(&dir, "iss").expect("load");
        let kids = |id: &DevIdentity| {
            id.keys()
                .iter()
                .map(|k| k.kid().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(kids(&first), kids(&second));
        assert_eq!(first.keys()[0].public_jwk(), second.keys()[0].public_jwk());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEYS_FILE))
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = fs::remove_dir_all(dir);
    }

    #[test]
    fn dev_identity_file_without_an_es256_key_is_refused() {
        let dir = temp_dir("missing");
        fs::create_dir_all(&dir).expect("mkdir");
        let rs = key(Algorithm::RS256, "only").to_stored();
        fs::write(
            dir.join(KEYS_FILE),
            serde_json::to_vec(&KeysFile { keys: vec![rs] }).expect("json"),
        )
        .expect("write");
        let err = DevIdentity::load_or_create(&dir, "iss").expect_err("must refuse");
        assert!(
            matches!(
                err,
                IdentityError::MissingKey {
                    alg: Algorithm::ES256,
                    ..
                }
            ),
            "{err}"
        );
        let _ = fs::remove_dir_all(dir);
    }
}
