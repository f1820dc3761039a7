//! The real Claude Code CLI (version pinned in tests/CLAUDE_CODE_VERSION) through the gateway.

use jsonwebtoken::Algorithm;
use scrim_devstack::keys::SigningKey;
use scrim_devstack::paths;
use scrim_devstack::stack::{scratch_dir, Stack, StackOptions, DEV_GROUP};
use scrim_devstack::stand_in::DEFAULT_REPLY;
use serde_json::Value;
use std::time::Duration;

/// Runs `claude -p` against the gateway with its own empty home, so no user setting leaks in.
async fn claude(stack: &Stack, env: &[(&str, &str)]) -> (bool, Value) {
    claude_in(&scratch_dir("claude-home"), stack, env).await
}

async fn claude_in(home: &std::path::Path, stack: &Stack, env: &[(&str, &str)]) -> (bool, Value) {
    let mut cmd = tokio::process::Command::new(paths::claude_code());
    cmd.args(["-p", "say hi", "--output-format", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("ANTHROPIC_BASE_URL", stack.url(""))
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .current_dir(home)
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output())
        .await
        .expect("claude finishes")
        .expect("claude runs (make test-tools installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .unwrap_or_else(|| panic!("no JSON result from claude: {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), result)
}

#[tokio::test]
async fn claude_code_gets_an_answer_through_the_gateway() {
    let stack = Stack::start(StackOptions { name: "claude-ok", ..Default::default() }).await.unwrap();
    let token = stack.token();
    let (ok, result) = claude(&stack, &[("ANTHROPIC_AUTH_TOKEN", &token)]).await;
    assert!(ok, "{result}");
    assert_eq!(result["result"], DEFAULT_REPLY, "{result}");
    let turns: Vec<_> = stack
        .stand_in
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/v1/messages"))
        .collect();
    assert!(!turns.is_empty());
    for r in &turns {
        assert_eq!(r.header("x-api-key"), Some(stack.api_key.as_str()));
        assert_eq!(r.header("authorization"), None);
        assert!(r.header("x-claude-code-session-id").is_some(), "session id passes through");
    }
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn claude_code_with_token_in_both_headers_gets_an_answer() {
    let stack = Stack::start(StackOptions { name: "claude-both", ..Default::default() }).await.unwrap();
    let token = stack.token();
    let (ok, result) =
        claude(&stack, &[("ANTHROPIC_AUTH_TOKEN", &token), ("ANTHROPIC_API_KEY", &token)]).await;
    assert!(ok, "{result}");
    assert_eq!(result["result"], DEFAULT_REPLY, "{result}");
}

/// A forged token cannot be fixed by retrying: `x-should-retry: false` makes Claude Code stop
/// after one attempt instead of backing off for minutes.
#[tokio::test]
async fn claude_code_gives_up_at_once_on_a_forged_token() {
    let stack = Stack::start(StackOptions { name: "claude-forged", ..Default::default() }).await.unwrap();
    let forger = SigningKey::generate(Algorithm::RS256, "key-1").unwrap();
    let forged = forger.mint(&stack.claims("alice", &[DEV_GROUP]));
    let (ok, result) = claude(&stack, &[("ANTHROPIC_AUTH_TOKEN", &forged)]).await;
    assert!(!ok, "{result}");
    assert_eq!(result["is_error"], true, "{result}");
    assert!(result.to_string().contains("signature"), "the developer reads why: {result}");
    assert_eq!(stack.envoy.counter("wasmcustom.scrim.jwt_failures.bad_signature").await, 1);
    assert!(stack.stand_in.requests().is_empty());
}

/// An expired token is answered without `x-should-retry: false`, so Claude Code runs its
/// `apiKeyHelper` again and retries with the fresh token.
#[tokio::test]
async fn claude_code_refreshes_an_expired_token_through_its_key_helper() {
    let stack = Stack::start(StackOptions { name: "claude-refresh", ..Default::default() }).await.unwrap();
    let home = scratch_dir("claude-helper-home");
    let mut expired = stack.claims("alice", &[DEV_GROUP]);
    expired["exp"] = serde_json::json!(scrim_devstack::stack::now() - 3600);
    std::fs::write(home.join("expired"), stack.key.mint(&expired)).unwrap();
    std::fs::write(home.join("fresh"), stack.token()).unwrap();
    // First call hands out the expired token, every later call the fresh one.
    let helper = home.join("token-helper.sh");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\nd={}\nif [ -e \"$d/used\" ]; then cat \"$d/fresh\"; else touch \"$d/used\"; cat \"$d/expired\"; fi\n",
            home.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod").arg("+x").arg(&helper).status().unwrap();
    std::fs::create_dir_all(home.join(".claude")).unwrap();
    std::fs::write(
        home.join(".claude/settings.json"),
        serde_json::json!({"apiKeyHelper": helper}).to_string(),
    )
    .unwrap();
    let (ok, result) = claude_in(&home, &stack, &[]).await;
    assert!(ok, "{result}");
    assert_eq!(result["result"], DEFAULT_REPLY, "{result}");
    assert!(stack.envoy.counter("wasmcustom.scrim.jwt_failures.expired").await >= 1);
}
