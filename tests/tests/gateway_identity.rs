//! Identity and credential swap through the real Envoy: who gets in, what the upstream sees,
//! and what every refusal looks like to the client.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use scrim_devstack::keys::SigningKey;
use scrim_devstack::stack::{now, Stack, StackOptions, DEV_GROUP};
use serde_json::{json, Value};

const MESSAGE: &str = r#"{"model":"claude-sonnet-4-5","max_tokens":32,"messages":[{"role":"user","content":"hi"}]}"#;

async fn start(name: &'static str) -> Stack {
    Stack::start(StackOptions { name, ..Default::default() }).await.expect("stack starts")
}

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_messages(stack: &Stack, auth: &[(&str, &str)]) -> reqwest::Response {
    let mut req = client()
        .post(stack.url("/v1/messages?beta=true"))
        .header("content-type", "application/json")
        .header("anthropic-version", "2023-06-01")
        .body(MESSAGE);
    for (k, v) in auth {
        req = req.header(*k, *v);
    }
    req.send().await.expect("gateway answers")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn valid_token_reaches_upstream_with_the_service_key_and_no_caller_credential() {
    let stack = start("valid").await;
    let token = stack.token();
    let bearer = format!("Bearer {token}");
    let resp = post_messages(
        &stack,
        &[
            ("authorization", &bearer),
            ("x-api-key", &token),
            ("proxy-authorization", "Basic dXNlcjpwYXNz"),
            ("accept-encoding", "gzip, br"),
            ("anthropic-beta", "a-2025-01-01,b-2025-02-02"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["type"], "message");

    let seen = stack.stand_in.requests();
    assert_eq!(seen.len(), 1);
    let req = &seen[0];
    assert_eq!(req.path_and_query, "/v1/messages?beta=true");
    assert_eq!(header(&req.headers, "x-api-key"), Some(stack.api_key.as_str()));
    assert_eq!(header(&req.headers, "authorization"), None);
    assert_eq!(header(&req.headers, "proxy-authorization"), None);
    assert_eq!(header(&req.headers, "accept-encoding"), None);
    assert_eq!(header(&req.headers, "anthropic-version"), Some("2023-06-01"));
    assert_eq!(header(&req.headers, "anthropic-beta"), Some("a-2025-01-01,b-2025-02-02"));
    assert_eq!(req.body, MESSAGE.as_bytes());
    let all_headers = format!("{:?}", req.headers);
    assert!(!all_headers.contains(&token), "the caller's token must not reach the upstream");
    assert!(!stack.envoy.log().contains(&stack.api_key), "the service key must not be logged");
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn token_in_x_api_key_alone_is_accepted() {
    let stack = start("x-api-key").await;
    let token = stack.token();
    let resp = post_messages(&stack, &[("x-api-key", &token)]).await;
    assert_eq!(resp.status(), 200);
    let seen = stack.stand_in.requests();
    assert_eq!(header(&seen[0].headers, "x-api-key"), Some(stack.api_key.as_str()));
}

#[tokio::test]
async fn count_tokens_and_models_work_through_the_gateway() {
    let stack = start("endpoints").await;
    let bearer = format!("Bearer {}", stack.token());
    let resp = client()
        .post(stack.url("/v1/messages/count_tokens?beta=true"))
        .header("authorization", &bearer)
        .header("content-type", "application/json")
        .body(MESSAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["input_tokens"].as_u64().unwrap() > 0);

    let resp = client()
        .get(stack.url("/v1/models?limit=1000"))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["data"].as_array().is_some_and(|d| !d.is_empty()));
    let paths: Vec<String> = stack.stand_in.requests().into_iter().map(|r| r.path_and_query).collect();
    assert_eq!(paths, ["/v1/messages/count_tokens?beta=true", "/v1/models?limit=1000"]);
}

struct Case {
    name: &'static str,
    token: Option<String>,
    message_part: &'static str,
    /// Only an expired token invites the client to retry (its token helper refreshes).
    retry: bool,
}

/// Every way a token can be wrong gets a 401 in the Anthropic shape, with a message that says
/// what is wrong and never echoes the token; nothing reaches the upstream.
#[tokio::test]
async fn invalid_tokens_are_rejected_with_401_and_never_reach_upstream() {
    let stack = start("rejections").await;
    let key = &stack.key;
    let good = stack.claims("alice", &[DEV_GROUP]);
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let valid = key.mint(&good);
    let (head, _, sig) = {
        let p: Vec<&str> = valid.split('.').collect();
        (p[0].to_string(), p[1].to_string(), p[2].to_string())
    };
    let attacker = SigningKey::generate(Algorithm::RS256, "key-1").unwrap();
    let stranger = SigningKey::generate(Algorithm::ES256, "not-published").unwrap();
    let public_jwk = key.public_jwk().to_string();
    let hs256_with_public_key = jsonwebtoken::encode(
        &{
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("key-1".into());
            h
        },
        &good,
        &EncodingKey::from_secret(public_jwk.as_bytes()),
    )
    .unwrap();
    let now = now();
    let cases = vec![
        Case { name: "missing", token: None, message_part: "no credentials", retry: false },
        Case { name: "expired", token: Some(key.mint(&with("exp", json!(now - 3600)))), message_part: "expired", retry: true },
        Case { name: "not yet valid", token: Some(key.mint(&with("nbf", json!(now + 3600)))), message_part: "not valid yet", retry: false },
        Case { name: "wrong audience", token: Some(key.mint(&with("aud", json!("other-service")))), message_part: "audience", retry: false },
        Case { name: "unknown issuer", token: Some(key.mint(&with("iss", json!("https://evil.example")))), message_part: "issuer", retry: false },
        Case {
            name: "tampered payload",
            token: Some(format!("{head}.{}.{sig}", b64(&with("sub", json!("mallory"))))),
            message_part: "signature",
            retry: false,
        },
        Case {
            name: "alg none",
            token: Some(format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&good))),
            message_part: "`none`",
            retry: false,
        },
        Case { name: "HS256 signed with the public key", token: Some(hs256_with_public_key), message_part: "HS256", retry: false },
        Case { name: "kid confusion (attacker key, real kid)", token: Some(attacker.mint(&good)), message_part: "signature", retry: false },
        Case { name: "unknown kid", token: Some(stranger.mint(&good)), message_part: "unknown key", retry: false },
        Case { name: "garbage", token: Some("not-a-jwt".into()), message_part: "not a valid JWT", retry: false },
    ];
    for case in cases {
        let bearer = case.token.as_ref().map(|t| format!("Bearer {t}"));
        let auth: Vec<(&str, &str)> = bearer.iter().map(|b| ("authorization", b.as_str())).collect();
        let resp = post_messages(&stack, &auth).await;
        let name = case.name;
        assert_eq!(resp.status(), 401, "{name}");
        let h = resp.headers().clone();
        let challenge = h.get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("");
        assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        if case.token.is_some() {
            assert!(challenge.contains(r#"error="invalid_token""#), "{name}: {challenge}");
        }
        let should_retry = h.get("x-should-retry").and_then(|v| v.to_str().ok());
        assert_eq!(should_retry, if case.retry { None } else { Some("false") }, "{name}");
        let text = resp.text().await.unwrap();
        let body: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}: {text:?}"));
        assert_eq!(body["type"], "error", "{name}");
        assert_eq!(body["error"]["type"], "authentication_error", "{name}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(case.message_part), "{name}: {message}");
        if let Some(t) = &case.token {
            assert!(!message.contains(t.as_str()), "{name}: the token is echoed");
        }
    }
    let leaked: Vec<_> = stack.stand_in.requests().into_iter().map(|r| r.headers).collect();
    assert!(leaked.is_empty(), "a refused request reached the upstream: {leaked:?}");
    assert!(stack.envoy.counter("wasmcustom.scrim.jwt_failures.expired").await >= 1);
    assert!(stack.envoy.counter("wasmcustom.scrim.jwt_failures.bad_signature").await >= 2);
    assert!(stack.envoy.counter("wasmcustom.scrim.requests.unauthenticated").await >= 11);
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn valid_caller_without_a_permitted_group_gets_403() {
    let stack = start("forbidden").await;
    let token = stack.key.mint(&stack.claims("bob", &["sales", "marketing"]));
    let resp = post_messages(&stack, &[("authorization", &format!("Bearer {token}"))]).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers().get("x-should-retry").unwrap(), "false");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "permission_error");
    assert!(body["error"]["message"].as_str().unwrap().contains("bob"));
    assert!(stack.stand_in.requests().is_empty());
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.requests.forbidden").await, 1);
}

#[tokio::test]
async fn preconnect_without_credentials_is_answered_at_once() {
    let stack = start("preconnect").await;
    let resp = client()
        .head(stack.url("/api/hello"))
        .timeout(std::time::Duration::from_secs(5))
        .send()
        .await
        .expect("HEAD /api/hello must not hang");
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn repeat_requests_use_the_token_cache() {
    let stack = start("cache").await;
    let bearer = format!("Bearer {}", stack.token());
    for _ in 0..3 {
        assert_eq!(post_messages(&stack, &[("authorization", &bearer)]).await.status(), 200);
    }
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.token_cache.miss").await, 1);
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.token_cache.hit").await, 2);
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.requests.allowed").await, 3);
}
