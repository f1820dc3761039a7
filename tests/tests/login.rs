//! Developers sign in with `scrim` against the certified `oidc-provider` (tests/oidc), and
//! the real Claude Code CLI uses the tokens through the real Envoy and the Claude stand-in.

use scrim_devstack::oidc_provider::{start_stack, Browser, Developer, OidcOptions, OidcProvider, GATEWAY_AUDIENCE};
use scrim_devstack::stack::{scratch_dir, Stack};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Runs `scrim login --device`, approves the code on the provider's own pages as `login`
/// would in a browser, and returns how the command ended: (success, stdout, stderr).
async fn login_device(dev: &Developer, stack: &Stack, provider: &OidcProvider, login: &str) -> (bool, String, String) {
    let mut child = dev
        .command(&["login", "--device", "--gateway", &stack.url("")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("scrim runs");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut stderr = String::new();
    let mut approved = false;
    while let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await {
        stderr.push_str(&line);
        stderr.push('\n');
        if let Some(url) = line.strip_prefix("or open ") {
            let page = Browser::new(login).sign_in(url.trim(), &provider.issuer).await.expect("provider pages");
            assert!(page.body.contains("Sign-in Success"), "device approved: {page:?}");
            approved = true;
        }
    }
    assert!(approved, "scrim showed a verification address: {stderr}");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output()).await.expect("login ends").unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

/// A Messages API call through the gateway with `token`; returns the status and body.
async fn ask_gateway(stack: &Stack, token: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(token)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

fn claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

#[tokio::test]
async fn device_login_gives_a_token_the_gateway_accepts() {
    let (stack, provider) = start_stack("login-device", &OidcOptions::default()).await.unwrap();
    let dev = Developer::new(scratch_dir("login-device-home")).unwrap();
    let (ok, stdout, stderr) = login_device(&dev, &stack, &provider, "alice").await;
    assert!(ok, "{stdout}\n{stderr}\n{}", provider.log());
    assert!(stdout.contains("as alice"), "{stdout}");
    let (ok, token, stderr) = dev.run(&["token"]).await;
    assert!(ok, "{stderr}");
    let token = token.trim();
    let c = claims(token);
    assert_eq!(c["aud"], GATEWAY_AUDIENCE, "{c}");
    assert_eq!(c["iss"], provider.issuer, "{c}");
    assert_eq!(c["groups"], json!(["eng"]), "{c}");
    // The token appears on no output but `scrim token`'s.
    assert!(!stdout.contains(token) && !stderr.contains(token));
    let (status, body) = ask_gateway(&stack, token).await;
    assert_eq!(status, 200, "{body}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dev.session_path()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let (ok, status, _) = dev.run(&["status"]).await;
    assert!(ok && status.contains("alice") && status.contains(&provider.issuer), "{status}");
    assert!(!status.contains(token));
}

/// The client document's route skips the filter, so it must match nothing but its own GET.
#[tokio::test]
async fn client_document_route_serves_only_its_exact_get() {
    let stack = Stack::start(scrim_devstack::stack::StackOptions { name: "login-doc", ..Default::default() }).await.unwrap();
    let client = reqwest::Client::new();
    let doc: Value = client.get(stack.url("/.well-known/scrim-client")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["issuer"], stack.issuer, "{doc}");
    for (method, path) in [("POST", "/.well-known/scrim-client"), ("HEAD", "/.well-known/scrim-client"),
        ("GET", "/.well-known/scrim-client/v1/messages"), ("GET", "/.well-known/scrim-clientx"), ("GET", "/.WELL-KNOWN/scrim-client")] {
        let resp = client.request(method.parse().unwrap(), stack.url(path)).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 401, "{method} {path} goes through the filter");
    }
    assert!(stack.stand_in.requests().is_empty());
}
