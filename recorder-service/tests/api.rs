//! The auditors' HTTP API on a random loopback port over a temporary SQLite store, with tokens
//! signed by an ES256 key generated at test time; and the `replay` and `usage` commands.

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use scrim_core::audit::{AuditRecord, Decision, Direction, MaskCount, ResponseBlock, Usage};
use scrim_recorder::api::{self, Api, ApiConfig, OpenStore};
use scrim_recorder::envoy::envoy_fields;
use scrim_recorder::record::StoredRecord;
use scrim_recorder::store::sqlite::SqliteStore;
use scrim_recorder::store::{self, Store};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const ISSUER: &str = "https://idp.test";
/// What the gateway's filter presents on the internal routes in these tests.
const SERVICE_TOKEN: &str = "test-service-token-0123456789abcdef0123456789";
const T0: i64 = 1_700_000_000;

/// An ES256 signing key and its public JWK.
struct Idp {
    key: EncodingKey,
    jwk: Value,
}

impl Idp {
    fn generate() -> Idp {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let der = secret.to_pkcs8_der().unwrap();
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(
            &secret.public_key(),
            false,
        );
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        Idp {
            key: EncodingKey::from_ec_der(der.as_bytes()),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256",
                        "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())}),
        }
    }

    fn token(&self, sub: &str, groups: &[&str]) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("k1".into());
        let claims = json!({"iss": ISSUER, "aud": "scrim-audit", "sub": sub, "groups": groups,
                            "iat": now, "exp": now + 600});
        jsonwebtoken::encode(&header, &claims, &self.key).unwrap()
    }
}

/// The gateway's configuration format: only dev and ops may query at all (and auditors).
fn auth_config(keys: Value) -> Value {
    let mut issuer = json!({"issuer": ISSUER, "audiences": ["scrim-audit"]});
    issuer
        .as_object_mut()
        .unwrap()
        .extend(keys.as_object().unwrap().clone());
    json!({"issuers": [issuer], "allowed_groups": ["dev", "ops"]})
}

fn stored(record: AuditRecord, start_s: i64) -> StoredRecord {
    let envoy = envoy_fields(&record_entry(&record, start_s));
    StoredRecord { record, envoy }
}

/// alice: a1 (masked key both ways, cache tokens) and a2 in `s-a`, a3 in bob's session id
/// `s-b`; bob: b1 in `s-b`, denied, with another model and group.
fn fill(db: &Path) {
    let mut a1 = simple_record("a1", "s-a", "alice");
    a1.masked = vec![
        MaskCount {
            rule: "aws-access-key".into(),
            direction: Direction::Request,
            count: 2,
        },
        MaskCount {
            rule: "aws-access-key".into(),
            direction: Direction::Response,
            count: 1,
        },
    ];
    a1.request = Some(json!({"model": "claude-sonnet-4-5", "messages": [
        {"role": "user", "content": "deploy with key [REDACTED:aws-access-key] please"}]}));
    a1.response.as_mut().unwrap().blocks = vec![ResponseBlock {
        kind: "text".into(),
        text: "Using [REDACTED:aws-access-key] now.".into(),
        name: None,
        id: None,
    }];
    a1.usage = Some(Usage {
        input_tokens: 10,
        output_tokens: 20,
        cache_read_input_tokens: 5,
        cache_creation_input_tokens: 1,
    });
    let mut a2 = simple_record("a2", "s-a", "alice");
    a2.request = Some(json!({"model": "claude-sonnet-4-5", "messages": [
        {"role": "user", "content": "deploy with key [REDACTED:aws-access-key] please"},
        {"role": "assistant", "content": "Using [REDACTED:aws-access-key] now."},
        {"role": "user", "content": [{"type": "text", "text": "thanks"}]}]}));
    let mut b1 = simple_record("b1", "s-b", "bob");
    b1.user.as_mut().unwrap().groups = vec!["ops".into()];
    b1.model = Some("claude-opus-4-1".into());
    b1.decision = Decision::Denied;
    b1.reason = Some("blocked_secret".into());
    b1.usage = None;
    b1.response = None;
    b1.masked = vec![MaskCount {
        rule: "github-pat".into(),
        direction: Direction::Request,
        count: 1,
    }];
    let a3 = simple_record("a3", "s-b", "alice");
    let mut store = SqliteStore::open(db).unwrap();
    store
        .append(&[
            stored(a1, T0 + 10),
            stored(a2, T0 + 20),
            stored(b1, T0 + 30),
            stored(a3, T0 + 40),
        ])
        .unwrap();
}

/// The API on 127.0.0.1:0 over a filled store; stops when dropped (the runtime ends).
struct Server {
    addr: SocketAddr,
    db: PathBuf,
    idp: Idp,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start() -> Server {
        let idp = Idp::generate();
        let config = auth_config(json!({"jwks": {"keys": [idp.jwk.clone()]}}));
        Self::start_with(idp, config).await
    }

    async fn start_with(idp: Idp, config: Value) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        fill(&db);
        let auth = scrim_core::config::Config::from_json(config.to_string().as_bytes()).unwrap();
        let path = db.to_str().unwrap().to_owned();
        let open: OpenStore = Arc::new(move || store::open(&path));
        let api = Api::start(
            ApiConfig {
                service_token: Some(SERVICE_TOKEN.into()),
                max_grant_seconds: 3600,
                ..ApiConfig::auditing(auth, "auditors")
            },
            open,
        )
        .await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(api::serve(
            listener,
            api::router(api),
            std::future::pending(),
        ));
        Server {
            addr,
            db,
            idp,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// GET `path` with a token of `sub` in `groups` (no token when `sub` is empty).
    async fn get(&self, sub: &str, groups: &[&str], path: &str) -> (u16, String) {
        let mut request = self.http.get(format!("http://{}{path}", self.addr));
        if !sub.is_empty() {
            request = request.bearer_auth(self.idp.token(sub, groups));
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    /// POST `body` with a token of `sub` in `groups`.
    async fn post(&self, sub: &str, groups: &[&str], path: &str, body: Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("http://{}{path}", self.addr))
            .bearer_auth(self.idp.token(sub, groups))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A call of the gateway's filter with `token` as its service token.
    async fn internal(&self, token: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("http://{}{path}", self.addr);
        let request = match body {
            Some(b) => self.http.post(url).json(&b),
            None => self.http.get(url),
        };
        let response = request.bearer_auth(token).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn json(&self, sub: &str, groups: &[&str], path: &str) -> Value {
        let (status, body) = self.get(sub, groups, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Session ids listed for the caller at `path`.
    async fn session_ids(&self, sub: &str, groups: &[&str], path: &str) -> Vec<String> {
        self.json(sub, groups, path).await["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["session_id"].as_str().unwrap().to_owned())
            .collect()
    }
}

const AUDITOR: (&str, &[&str]) = ("carol", &["auditors"]);
const ALICE: (&str, &[&str]) = ("alice", &["dev"]);

#[tokio::test]
async fn auditor_sees_every_session_and_exchange() {
    let s = Server::start().await;
    let (sub, g) = AUDITOR;
    assert_eq!(s.session_ids(sub, g, "/v1/sessions").await, ["s-b", "s-a"]);
    let shared = s.json(sub, g, "/v1/sessions/s-b").await;
    let ids: Vec<_> = shared["exchanges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["record"]["exchange_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["b1", "a3"]);
    let b1 = s.json(sub, g, "/v1/exchanges/b1").await;
    assert_eq!(b1["record"]["decision"], "denied");
    assert_eq!(b1["envoy"]["start_time_ms"], (T0 + 30) * 1000);
}

#[tokio::test]
async fn session_listing_pages_with_next_before_until_the_last_page() {
    let s = Server::start().await;
    let (sub, g) = AUDITOR;
    let first = s.json(sub, g, "/v1/sessions?limit=1").await;
    assert_eq!(first["data"][0]["session_id"], "s-b");
    let next = first["next_before"].as_i64().expect("a full page names the next one");
    let second = s.json(sub, g, &format!("/v1/sessions?limit=1&before={next}")).await;
    assert_eq!(second["data"][0]["session_id"], "s-a");
    let next = second["next_before"].as_i64().expect("still a full page");
    let last = s.json(sub, g, &format!("/v1/sessions?limit=1&before={next}")).await;
    assert_eq!(last["data"], json!([]));
    assert!(last.get("next_before").is_none(), "{last}");
    let (status, body) = s.get(sub, g, "/v1/sessions?before=soon").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn non_auditor_sees_only_own_exchanges_even_in_a_shared_session_id() {
    let s = Server::start().await;
    let (sub, g) = ALICE;
    let list = s.json(sub, g, "/v1/sessions").await;
    let list = list["data"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    // Only alice's a3 is counted in `s-b`; bob's denied b1 stays invisible.
    assert_eq!(list[0]["session_id"], "s-b");
    assert_eq!(list[0]["subjects"], json!(["alice"]));
    assert_eq!(list[0]["exchanges"], 1);
    assert_eq!(list[0]["refused"], 0);
    let shared = s.json(sub, g, "/v1/sessions/s-b").await;
    assert_eq!(shared["exchanges"].as_array().unwrap().len(), 1);
    assert_eq!(shared["exchanges"][0]["record"]["exchange_id"], "a3");
    assert_eq!(s.get(sub, g, "/v1/exchanges/b1").await.0, 404);
    assert_eq!(s.get("bob", &["ops"], "/v1/sessions/s-a").await.0, 404);
    let (status, body) = s.get(sub, g, "/v1/sessions?user=bob").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("permission_error"), "{body}");
    assert_eq!(
        s.session_ids(sub, g, "/v1/sessions?user=alice").await,
        ["s-b", "s-a"]
    );
}

#[tokio::test]
async fn missing_or_invalid_token_is_401_in_the_anthropic_shape() {
    let s = Server::start().await;
    let (status, body) = s.get("", &[], "/v1/sessions").await;
    assert_eq!(status, 401);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let forged = Idp::generate().token("carol", &["auditors"]);
    let response = s
        .http
        .get(format!("http://{}/v1/sessions", s.addr))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
}

#[tokio::test]
async fn caller_outside_the_allowed_groups_is_403() {
    let s = Server::start().await;
    let (status, body) = s.get("mallory", &["marketing"], "/v1/sessions").await;
    assert_eq!(status, 403, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "permission_error");
}

#[tokio::test]
async fn session_filters_narrow_the_listing() {
    let s = Server::start().await;
    let (sub, g) = AUDITOR;
    let cases: &[(&str, &[&str])] = &[
        ("user=bob", &["s-b"]),
        ("group=ops", &["s-b"]),
        ("group=dev", &["s-b", "s-a"]),
        ("model=claude-opus-4-1", &["s-b"]),
        ("decision=denied", &["s-b"]),
        ("decision=allowed", &["s-b", "s-a"]),
        ("rule=aws-access-key", &["s-a"]),
        ("rule=github-pat", &["s-b"]),
        ("rule=no-such-rule", &[]),
        ("from=1700000015000", &["s-b", "s-a"]),
        ("from=1700000025000", &["s-b"]),
        ("to=1700000015000", &["s-a"]),
        ("from=1700000015000&to=1700000025000", &["s-a"]),
        ("limit=1", &["s-b"]),
    ];
    for (query, want) in cases {
        let got = s
            .session_ids(sub, g, &format!("/v1/sessions?{query}"))
            .await;
        assert_eq!(&got, want, "{query}");
    }
    // A filtered summary counts only matching exchanges.
    let denied = s.json(sub, g, "/v1/sessions?decision=denied").await;
    assert_eq!(denied["data"][0]["exchanges"], 1);
    for bad in [
        "decision=maybe",
        "limit=0",
        "limit=5000",
        "colour=red",
        "from=2&to=1",
    ] {
        let (status, body) = s.get(sub, g, &format!("/v1/sessions?{bad}")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("invalid_request_error"), "{bad}: {body}");
    }
}

#[tokio::test]
async fn usage_sums_tokens_masks_and_refusals_per_user() {
    let s = Server::start().await;
    let (sub, g) = AUDITOR;
    let all = s.json(sub, g, "/v1/usage").await;
    assert_eq!(
        all["data"],
        json!([
            {"subject": "alice", "requests": 3, "input_tokens": 30, "output_tokens": 60,
             "cache_read_input_tokens": 5, "cache_creation_input_tokens": 1,
             "masked": 3, "refused": 0},
            {"subject": "bob", "requests": 1, "input_tokens": 0, "output_tokens": 0,
             "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0,
             "masked": 1, "refused": 1},
        ])
    );
    let period = s
        .json(sub, g, "/v1/usage?from=1700000015000&to=1700000035000")
        .await;
    assert_eq!(period["from"], 1_700_000_015_000i64);
    let rows = period["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["requests"], 1);
    assert_eq!(rows[0]["masked"], 0);
    let own = s.json("bob", &["ops"], "/v1/usage").await;
    assert_eq!(own["data"].as_array().unwrap().len(), 1);
    assert_eq!(own["data"][0]["subject"], "bob");
}

#[tokio::test]
async fn export_streams_one_json_line_per_visible_exchange() {
    let s = Server::start().await;
    let lines = |body: String| -> Vec<String> {
        body.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                v["record"]["exchange_id"].as_str().unwrap().to_owned()
            })
            .collect()
    };
    let (sub, g) = AUDITOR;
    let (status, body) = s.get(sub, g, "/v1/export").await;
    assert_eq!(status, 200);
    assert_eq!(lines(body), ["a1", "a2", "b1", "a3"]);
    let (_, body) = s.get(sub, g, "/v1/export?decision=denied").await;
    assert_eq!(lines(body), ["b1"]);
    let (_, body) = s.get("alice", &["dev"], "/v1/export").await;
    let exported = lines(body.clone());
    assert_eq!(exported, ["a1", "a2", "a3"]);
    // Content comes back whole: the masked request as sent upstream.
    assert!(body.contains("deploy with key [REDACTED:aws-access-key] please"));
}

#[tokio::test]
async fn every_query_is_logged_with_caller_params_and_status() {
    let s = Server::start().await;
    s.get("carol", &["auditors"], "/v1/sessions?model=claude-opus-4-1")
        .await;
    s.get("alice", &["dev"], "/v1/exchanges/b1").await;
    s.get("", &[], "/v1/usage?from=1").await;
    s.get("mallory", &["marketing"], "/v1/export").await;
    s.get("", &[], "/healthz").await;
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    let mut stmt = conn
        .prepare("SELECT subject, auditor, method, path, query, status, at_ms FROM query_log ORDER BY id")
        .unwrap();
    type Row = (Option<String>, bool, String, String, String, u16, i64);
    let rows: Vec<Row> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r.0.as_deref(), r.1, r.3.as_str(), r.4.as_str(), r.5))
        .collect();
    assert_eq!(
        summary,
        [
            (
                Some("carol"),
                true,
                "/v1/sessions",
                "model=claude-opus-4-1",
                200
            ),
            (Some("alice"), false, "/v1/exchanges/b1", "", 404),
            (None, false, "/v1/usage", "from=1", 401),
            (Some("mallory"), false, "/v1/export", "", 403),
        ]
    );
    assert!(rows.iter().all(|r| r.2 == "GET" && r.6 > T0 * 1000));
}

#[tokio::test]
async fn healthz_answers_without_a_token_while_the_store_answers() {
    let s = Server::start().await;
    assert_eq!(s.get("", &[], "/healthz").await, (200, "ok\n".to_string()));
}

#[tokio::test]
async fn keys_fetched_from_an_http_jwks_uri_verify_tokens() {
    let idp = Idp::generate();
    let jwks = json!({"keys": [idp.jwk.clone()]});
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let jwks_addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = auth_config(json!({
        "jwks_uri": format!("http://{jwks_addr}/jwks.json"),
        // Required by the gateway's schema (an Envoy cluster); the recorder fetches directly.
        "jwks_cluster": "idp",
    }));
    let s = Server::start_with(idp, config).await;
    assert_eq!(
        s.session_ids("carol", &["auditors"], "/v1/sessions").await,
        ["s-b", "s-a"]
    );
}

fn recorder(db: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--db")
        .arg(db)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn replay_prints_the_conversation_in_order_with_masked_spans_marked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    fill(&db);
    let out = recorder(&db, &["replay", "s-a", "--color", "never"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = [
        "── 2023-11-14T22:13:30.000Z  exchange a1  claude-sonnet-4-5",
        "   masked: aws-access-key x2 in request, aws-access-key x1 in response",
        "user: deploy with key »[REDACTED:aws-access-key]« please",
        "assistant: Using »[REDACTED:aws-access-key]« now.",
        "── 2023-11-14T22:13:40.000Z  exchange a2  claude-sonnet-4-5",
        "user: thanks",
        "assistant: answer a2",
    ];
    assert_eq!(text.lines().collect::<Vec<_>>(), expected, "{text}");
    let colored = recorder(&db, &["replay", "s-a", "--color", "always"]);
    assert!(String::from_utf8(colored.stdout)
        .unwrap()
        .contains("\x1b[7m[REDACTED:aws-access-key]\x1b[0m"));
    let json: Value =
        serde_json::from_slice(&recorder(&db, &["replay", "s-b", "--json"]).stdout).unwrap();
    assert_eq!(json[1]["speaker"], "gateway");
    assert_eq!(json[1]["text"], "denied (blocked_secret)");
    assert_eq!(json[0]["masked"], Value::Null);
    let a1: Value =
        serde_json::from_slice(&recorder(&db, &["replay", "s-a", "--json"]).stdout).unwrap();
    assert_eq!(a1[0]["masked"][0]["rule"], "aws-access-key");
}

#[test]
fn usage_command_prints_per_user_totals_for_a_period() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    fill(&db);
    let out = recorder(&db, &["usage", "--from", "2023-11-14T22:13:55Z", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["subject"], "alice");
    assert_eq!(v[0]["requests"], 1);
    let text = String::from_utf8(recorder(&db, &["usage"]).stdout).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("alice") && l.contains(" 3 ")),
        "{text}"
    );
    let bad = recorder(&db, &["usage", "--from", "last week"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[tokio::test]
async fn serve_answers_auditors_on_its_http_listener() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("audit.db");
    fill(&db);
    let idp = Idp::generate();
    let config = dir.path().join("recorder-auth.json");
    std::fs::write(
        &config,
        auth_config(json!({"jwks": {"keys": [idp.jwk.clone()]}})).to_string(),
    )
    .unwrap();
    let secrets = tempfile::tempdir().unwrap();
    let (token_file, key_file) = (secrets.path().join("ingest"), secrets.path().join("keys"));
    std::fs::write(&token_file, "synthetic-ingest-token-0123456789abcdef").unwrap();
    std::fs::write(&key_file, "k1 synthetic-chain-key-0123456789abcdef\n").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_scrim-recorder"))
        .arg("--db")
        .arg(&db)
        .arg("--chain-key-file")
        .arg(&key_file)
        .args([
            "serve",
            "--grpc-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--ingest-token-file")
        .arg(&token_file)
        .arg("--auth-config")
        .arg(&config)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Readiness: each listener is bound before its line is printed; the API's comes second.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut api_line = String::new();
    for _ in 0..2 {
        api_line.clear();
        stderr.read_line(&mut api_line).unwrap();
    }
    let base = api_line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|a| a.starts_with("http://"))
        .unwrap_or_else(|| panic!("no API address in {api_line:?}"))
        .to_owned();
    let http = reqwest::Client::new();
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    let list: Value = http
        .get(format!("{base}/v1/sessions"))
        .bearer_auth(idp.token("carol", &["auditors"]))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
}

fn review_request(sub: &str, session: &str, matched: &str, approvals_required: u32) -> Value {
    json!({
        "fingerprint": scrim_core::review::fingerprint(ISSUER, sub, session, "prod-hosts", matched),
        "rule": "prod-hosts", "rule_message": "production hostnames",
        "approvals_required": approvals_required, "ttl_seconds": 3600,
        "user": {"subject": sub, "issuer": ISSUER, "groups": ["dev"]},
        "session_id": session, "exchange_id": "x-1", "excerpt": format!("ssh {matched}")
    })
}

const APPROVER: (&str, &[&str]) = ("dana", &["approvers"]);
const APPROVER2: (&str, &[&str]) = ("erin", &["approvers"]);

#[tokio::test]
async fn internal_routes_need_the_service_token() {
    let s = Server::start().await;
    let (status, _) = s.internal("wrong", "/internal/v1/reviews", Some(review_request("alice", "s1", "db.prod", 1))).await;
    assert_eq!(status, 401);
    let (status, _) = s.internal(&s.idp.token("alice", &["dev"]), "/internal/v1/grants/active?issuer=x&sub=y", None).await;
    assert_eq!(status, 401, "a user's own token is not the gateway's");
    let (status, body) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(review_request("alice", "s1", "db.prod", 1))).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn review_is_opened_once_per_fingerprint_and_approved_by_someone_else() {
    let s = Server::start().await;
    let req = review_request("alice", "s1", "db.prod", 1);
    let (_, first) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(req.clone())).await;
    assert_eq!(first["status"], "pending");
    let id = first["id"].as_str().unwrap().to_string();
    let (_, again) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(req.clone())).await;
    assert_eq!(again["id"], first["id"], "the same content in the same session maps to the same review");
    let (_, other) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(review_request("alice", "s2", "db.prod", 1))).await;
    assert_ne!(other["id"], first["id"], "another session needs its own review");

    // The requester cannot decide, even as an approver; a non-approver cannot either.
    let (status, _) = s.post("alice", &["dev", "approvers"], &format!("/v1/reviews/{id}/approve"), json!({"reason": "mine"})).await;
    assert_eq!(status, 403);
    let (status, _) = s.post("bob", &["dev"], &format!("/v1/reviews/{id}/approve"), json!({"reason": "sure"})).await;
    assert_eq!(status, 403);
    let (status, _) = s.post(APPROVER.0, APPROVER.1, &format!("/v1/reviews/{id}/approve"), json!({"reason": ""})).await;
    assert_eq!(status, 400, "a reason is required");
    let (status, approved) = s.post(APPROVER.0, APPROVER.1, &format!("/v1/reviews/{id}/approve"), json!({"reason": "known host"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert!(approved["expires_at_ms"].as_i64().unwrap() > 0);
    let (status, _) = s.post(APPROVER2.0, APPROVER2.1, &format!("/v1/reviews/{id}/reject"), json!({"reason": "late"})).await;
    assert_eq!(status, 409, "a decided review stays decided");

    // Alice sees her own reviews only; the approver sees all; the chain holds the events.
    let own = s.json("alice", &["dev"], "/v1/reviews").await;
    assert_eq!(own["data"].as_array().unwrap().len(), 2);
    let (_, bobs) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(review_request("bob", "s9", "db.prod", 1))).await;
    let all = s.json(APPROVER.0, APPROVER.1, "/v1/reviews?status=pending").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
    let (status, _) = s.get("alice", &["dev"], &format!("/v1/reviews/{}", bobs["id"].as_str().unwrap())).await;
    assert_eq!(status, 404, "others' reviews are invisible");
    let reasons: Vec<String> = SqliteStore::open(&s.db)
        .unwrap()
        .session("s1")
        .unwrap()
        .into_iter()
        .filter_map(|x| x.stored.record.reason)
        .collect();
    assert_eq!(reasons, ["review.requested", "review.approved"]);
    assert!(SqliteStore::open(&s.db).unwrap().verify().unwrap().problems.is_empty());
}

#[tokio::test]
async fn two_approvers_are_needed_when_the_rule_says_so() {
    let s = Server::start().await;
    let (_, review) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(review_request("alice", "s1", "db.prod", 2))).await;
    let id = review["id"].as_str().unwrap();
    let path = format!("/v1/reviews/{id}/approve");
    let reason = json!({"reason": "ok"});
    assert_eq!(s.post(APPROVER.0, APPROVER.1, &path, reason.clone()).await.1["status"], "pending");
    assert_eq!(s.post(APPROVER.0, APPROVER.1, &path, reason.clone()).await.1["status"], "pending", "the same approver counts once");
    assert_eq!(s.post(APPROVER2.0, APPROVER2.1, &path, reason).await.1["status"], "approved");
}

#[tokio::test]
async fn long_poll_returns_as_soon_as_the_decision_lands() {
    let s = Arc::new(Server::start().await);
    let (_, review) = s.internal(SERVICE_TOKEN, "/internal/v1/reviews", Some(review_request("alice", "s1", "db.prod", 1))).await;
    let id = review["id"].as_str().unwrap().to_string();
    let poller = {
        let (s, id) = (s.clone(), id.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let (_, answer) = s.internal(SERVICE_TOKEN, &format!("/internal/v1/reviews/{id}?wait_ms=30000"), None).await;
            (answer, started.elapsed())
        })
    };
    // The decision comes half a second into the poll: the answer must come with it, not
    // before (the poll really waited) and not at the 30 s limit.
    let delay = std::time::Duration::from_millis(500);
    tokio::time::sleep(delay).await;
    let (status, _) = s.post(APPROVER.0, APPROVER.1, &format!("/v1/reviews/{id}/reject"), json!({"reason": "no"})).await;
    assert_eq!(status, 200);
    let (answer, waited) = poller.await.unwrap();
    assert_eq!(answer["status"], "rejected");
    assert!(waited >= delay, "answered before the decision ({waited:?})");
    assert!(waited < std::time::Duration::from_secs(10), "returned at the decision, not at the 30 s limit ({waited:?})");
    let (_, quick) = s.internal(SERVICE_TOKEN, &format!("/internal/v1/reviews/{id}?wait_ms=30000"), None).await;
    assert_eq!(quick["status"], "rejected", "a decided review answers at once");
}

#[tokio::test]
async fn grants_are_asked_for_by_anyone_decided_by_approvers_and_revocable() {
    let s = Server::start().await;
    async fn active(s: &Server) -> bool {
        let path = format!("/internal/v1/grants/active?issuer={ISSUER}&sub=frank");
        s.internal(SERVICE_TOKEN, &path, None).await.1["active"].as_bool().unwrap()
    }
    // frank is in no allowed group, yet may ask.
    let (status, _) = s.post("frank", &["contractors"], "/v1/grants", json!({"duration_seconds": 7200, "reason": "x"})).await;
    assert_eq!(status, 400, "longer than the configured maximum");
    let (status, grant) = s.post("frank", &["contractors"], "/v1/grants", json!({"duration_seconds": 600, "reason": "incident 42"})).await;
    assert_eq!(status, 200, "{grant}");
    let id = grant["id"].as_str().unwrap();
    assert!(!active(&s).await, "pending is not active");
    let (status, _) = s.post("frank", &["contractors", "approvers"], &format!("/v1/grants/{id}/approve"), json!({"reason": "me"})).await;
    assert_eq!(status, 403, "no self-approval");
    let (status, approved) = s.post(APPROVER.0, APPROVER.1, &format!("/v1/grants/{id}/approve"), json!({"reason": "on call"})).await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["status"], "active");
    assert!(active(&s).await);
    let own = s.json("frank", &["contractors"], "/v1/grants").await;
    assert_eq!(own["data"][0]["status"], "active");
    let (status, revoked) = s.post(APPROVER2.0, APPROVER2.1, &format!("/v1/grants/{id}/revoke"), json!({"reason": "done"})).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["status"], "revoked");
    assert!(!active(&s).await);
    let events: Vec<String> = SqliteStore::open(&s.db)
        .unwrap()
        .session("grants:frank")
        .unwrap()
        .into_iter()
        .filter_map(|x| x.stored.record.reason)
        .collect();
    assert_eq!(events, ["grant.requested", "grant.approved", "grant.revoked"]);
}
