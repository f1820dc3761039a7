//! A minimal OIDC identity provider for tests and `make run`: serves the discovery document
//! and a JWKS, with switches for key rotation and outages. Tests and developers mint tokens
//! directly with [`SigningKey::mint`] or [`DevIdentity`]; browsers (the recorder's console)
//! sign in with the authorization code flow and PKCE: `/authorize` shows a form where you
//! type the user and groups (it is a dev IdP: no password), `/token` checks the code, the
//! client, the redirect URI and the S256 verifier, and answers with tokens signed by the
//! first published key.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
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
    /// `aud` of the access tokens `/token` issues.
    audience: Mutex<String>,
    /// Codes handed out by `/authorize` and not yet redeemed.
    codes: Mutex<HashMap<String, CodeGrant>>,
}

/// How long an authorization code may wait to be redeemed.
const CODE_TTL_SECS: u64 = 60;
/// Lifetime of the tokens `/token` issues.
const LOGIN_TOKEN_TTL_SECS: u64 = 3600;

/// What a code was issued for.
#[derive(Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    subject: String,
    groups: Vec<String>,
    issued_at: u64,
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
            audience: Mutex::new(crate::stack::DEV_AUDIENCE.to_string()),
            codes: Mutex::new(HashMap::new()),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize_form).post(authorize_submit))
            .route("/token", post(token))
            .with_state(state.clone());
        let server = Arc::new(Running::spawn(listener, router)?);
        Ok(DevIdp { state, server })
    }

    /// Replaces the published keys; the next JWKS fetch sees only these.
    pub fn set_keys(&self, keys: Vec<SigningKey>) {
        *lock(&self.state.keys) = keys;
    }

    /// The `aud` of access tokens issued to browsers (default [`crate::stack::DEV_AUDIENCE`]).
    pub fn set_audience(&self, audience: &str) {
        *lock(&self.state.audience) = audience.to_string();
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
    let base = state.jwks_uri.trim_end_matches("/jwks");
    Json(json!({
        "issuer": state.issuer,
        "jwks_uri": state.jwks_uri,
        "authorization_endpoint": format!("{base}/authorize"),
        "token_endpoint": format!("{base}/token"),
        "grant_types_supported": ["authorization_code"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "scopes_supported": ["openid", "email", "profile"],
        "response_types_supported": ["code", "id_token"],
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

/// The authorization request's parameters (query of `GET /authorize`, hidden fields of the
/// form it shows).
#[derive(Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    scope: Option<String>,
    /// Only in the submitted form.
    user: Option<String>,
    groups: Option<String>,
}

/// The checked request: client, where to send the code, the PKCE challenge, the state.
struct CheckedAuthorize {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    state: String,
}

fn check_authorize(p: &AuthorizeParams) -> Result<CheckedAuthorize, String> {
    if p.response_type.as_deref() != Some("code") {
        return Err("response_type must be `code`".into());
    }
    let client_id = p.client_id.clone().filter(|c| !c.is_empty()).ok_or("client_id is required")?;
    let redirect_uri = p.redirect_uri.clone().unwrap_or_default();
    if !(redirect_uri.starts_with("http://") || redirect_uri.starts_with("https://")) {
        return Err("redirect_uri must be an http(s) URL".into());
    }
    if p.code_challenge_method.as_deref() != Some("S256") {
        return Err("PKCE is required: code_challenge_method must be S256".into());
    }
    let challenge = p.code_challenge.clone().unwrap_or_default();
    if challenge.len() != 43 {
        return Err("code_challenge must be a base64url SHA-256 (43 characters)".into());
    }
    Ok(CheckedAuthorize { client_id, redirect_uri, challenge, state: p.state.clone().unwrap_or_default() })
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn bad_request(message: &str) -> Response {
    let body = format!("<!doctype html><title>Dev IdP</title><p>{}</p>", html_escape(message));
    (StatusCode::BAD_REQUEST, [("content-type", "text/html; charset=utf-8")], body).into_response()
}

/// The sign-in form: no password, you say who you are and which groups you are in.
async fn authorize_form(Query(p): Query<AuthorizeParams>) -> Response {
    if let Err(e) = check_authorize(&p) {
        return bad_request(&e);
    }
    let hidden: String = [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("state", &p.state),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
        ("scope", &p.scope),
    ]
    .iter()
    .map(|(k, v)| format!(r#"<input type="hidden" name="{k}" value="{}">"#, html_escape(v.as_deref().unwrap_or(""))))
    .collect();
    let body = format!(
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Scrim dev identity provider: sign in</title></head>
<body><main><h1>Dev identity provider</h1>
<p>Signing in to <code>{client}</code>. This provider checks no password: type who you are.</p>
<form method="post" action="/authorize">{hidden}
<p><label for="user">User (sub)</label> <input id="user" name="user" required autocomplete="username"></p>
<p><label for="groups">Groups (comma-separated)</label> <input id="groups" name="groups" placeholder="auditors,approvers"></p>
<p><button type="submit">Sign in</button></p>
</form></main></body></html>"#,
        client = html_escape(p.client_id.as_deref().unwrap_or(""))
    );
    (
        [("content-type", "text/html; charset=utf-8"), ("content-security-policy", "default-src 'none'; form-action *")],
        body,
    )
        .into_response()
}

/// The submitted form: a one-time code for that user, sent back to the client.
async fn authorize_submit(State(state): State<Arc<IdpState>>, Form(p): Form<AuthorizeParams>) -> Response {
    let checked = match check_authorize(&p) {
        Ok(c) => c,
        Err(e) => return bad_request(&e),
    };
    let subject = p.user.clone().map(|u| u.trim().to_string()).unwrap_or_default();
    if subject.is_empty() {
        return bad_request("a user is required");
    }
    let groups: Vec<String> = p
        .groups
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|g| !g.is_empty())
        .map(str::to_string)
        .collect();
    let mut bytes = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let code: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let now = unix_now();
    {
        let mut codes = lock(&state.codes);
        codes.retain(|_, g| now.saturating_sub(g.issued_at) < CODE_TTL_SECS);
        codes.insert(
            code.clone(),
            CodeGrant {
                client_id: checked.client_id,
                redirect_uri: checked.redirect_uri.clone(),
                challenge: checked.challenge,
                subject,
                groups,
                issued_at: now,
            },
        );
    }
    let sep = if checked.redirect_uri.contains('?') { '&' } else { '?' };
    let location = format!(
        "{}{sep}code={code}&state={}",
        checked.redirect_uri,
        scrim_recorder::console::oidc::form_encode(&checked.state)
    );
    (StatusCode::SEE_OTHER, [("location", location)]).into_response()
}

#[derive(Deserialize)]
struct TokenParams {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
}

fn token_error(error: &str, description: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// Redeems a code once: same client and redirect URI as asked, and a verifier whose S256
/// digest is the challenge.
async fn token(State(state): State<Arc<IdpState>>, Form(p): Form<TokenParams>) -> Response {
    if p.grant_type.as_deref() != Some("authorization_code") {
        return token_error("unsupported_grant_type", "only authorization_code");
    }
    // Taken out whatever happens next: a code is usable once.
    let Some(grant) = p.code.as_deref().and_then(|c| lock(&state.codes).remove(c)) else {
        return token_error("invalid_grant", "unknown or used code");
    };
    if unix_now().saturating_sub(grant.issued_at) >= CODE_TTL_SECS {
        return token_error("invalid_grant", "code expired");
    }
    if p.client_id.as_deref() != Some(&grant.client_id) || p.redirect_uri.as_deref() != Some(&grant.redirect_uri) {
        return token_error("invalid_grant", "client_id or redirect_uri differ from the authorization request");
    }
    let verifier = p.code_verifier.unwrap_or_default();
    let verifier_ok = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !verifier_ok || scrim_recorder::console::sessions::pkce_challenge(&verifier) != grant.challenge {
        return token_error("invalid_grant", "code_verifier does not match the code_challenge");
    }
    let Some(key) = lock(&state.keys).first().cloned() else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "temporarily_unavailable"}))).into_response();
    };
    let now = unix_now();
    let audience = lock(&state.audience).clone();
    let claims = |aud: &str| {
        json!({
            "iss": state.issuer, "aud": aud, "sub": grant.subject,
            "email": format!("{}@dev.scrim.local", grant.subject), "groups": grant.groups,
            "iat": now, "nbf": now, "exp": now + LOGIN_TOKEN_TTL_SECS,
        })
    };
    Json(json!({
        "access_token": key.mint(&claims(&audience)),
        "id_token": key.mint(&claims(&grant.client_id)),
        "token_type": "Bearer",
        "expires_in": LOGIN_TOKEN_TTL_SECS,
    }))
    .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
    async fn code_flow_with_pkce_issues_tokens_once_and_only_for_the_right_verifier() {
        let idp = DevIdp::start(listener().await, "http://idp.test".into(), vec![key(Algorithm::RS256, "k")])
            .expect("start");
        let base = format!("http://{}", idp.addr());
        // The code comes back in a redirect this test reads instead of following.
        let client = || reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let query = format!(
            "response_type=code&client_id=scrim-console&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&state=s%201&code_challenge={challenge}&code_challenge_method=S256"
        );
        let form = client().get(format!("{base}/authorize?{query}")).send().await.expect("get");
        assert_eq!(form.status(), 200);
        let html = form.text().await.expect("html");
        assert!(html.contains(r#"<label for="user">"#) && html.contains(r#"<label for="groups">"#), "{html}");
        let no_pkce = client().get(format!("{base}/authorize?response_type=code&client_id=c&redirect_uri=http://x/")).send().await.expect("get");
        assert_eq!(no_pkce.status(), 400, "PKCE is required");

        let submit = client()
            .post(format!("{base}/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("{query}&user=carol&groups=auditors%2Capprovers"))
            .send()
            .await
            .expect("post");
        assert_eq!(submit.status(), 303);
        let location = submit.headers()["location"].to_str().expect("location").to_string();
        assert!(location.starts_with("http://127.0.0.1:1/cb?code=") && location.ends_with("&state=s%201"), "{location}");
        let code = location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string();
        let redeem = |verifier: &str| {
            client()
                .post(format!("{base}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=authorization_code&code={code}&client_id=scrim-console&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&code_verifier={verifier}"
                ))
                .send()
        };
        let wrong = redeem("x".repeat(43).as_str()).await.expect("post");
        assert_eq!(wrong.status(), 400, "a wrong verifier is refused (and uses up the code)");
        // A fresh code, redeemed with the right verifier.
        let submit = client()
            .post(format!("{base}/authorize"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("{query}&user=carol&groups=auditors%2Capprovers"))
            .send()
            .await
            .expect("post");
        let location = submit.headers()["location"].to_str().unwrap().to_string();
        let code2 = location.split("code=").nth(1).unwrap().split('&').next().unwrap().to_string();
        assert_ne!(code, code2);
        let code = code2;
        let redeem = |verifier: &str| {
            client()
                .post(format!("{base}/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!(
                    "grant_type=authorization_code&code={code}&client_id=scrim-console&redirect_uri=http%3A%2F%2F127.0.0.1%3A1%2Fcb&code_verifier={verifier}"
                ))
                .send()
        };
        let ok: Value = redeem(verifier).await.expect("post").json().await.expect("json");
        let token = ok["access_token"].as_str().expect("access token");
        let jwk = jsonwebtoken::jwk::Jwk::from(serde_json::from_value::<jsonwebtoken::jwk::Jwk>(jwks_json(&idp.keys())["keys"][0].clone()).unwrap());
        let mut validation = Validation::new(Algorithm::RS256);
        validation.set_audience(&[crate::stack::DEV_AUDIENCE]);
        let claims = decode::<Value>(token, &DecodingKey::from_jwk(&jwk).unwrap(), &validation).expect("verifies").claims;
        assert_eq!(claims["sub"], "carol");
        assert_eq!(claims["groups"], json!(["auditors", "approvers"]));
        let again = redeem(verifier).await.expect("post");
        assert_eq!(again.status(), 400, "a code is usable once");
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
