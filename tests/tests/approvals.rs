//! Approval rules and just-in-time grants through the real Envoy, filter and recorder: a
//! request that needs a yes waits for an approver (through the `scrim-recorder` command), the
//! approval covers that content in that session only, rejections and expiry hold, several
//! approvers can be required, wait mode returns as soon as the approver decides, grants let
//! an outsider in until revoked, and a silent recorder fails closed.

use scrim_devstack::stack::{Stack, StackOptions, APPROVER_GROUP, DEV_GROUP};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

const PROD_HOST: &str = "db1.prod.example.com";

fn approval_policy(wait_seconds: u64, grants: bool) -> impl FnOnce(Value) -> Value {
    move |mut c| {
        c["policy"] = json!({
            "approval": [
                {"id": "prod-hosts", "message": "production hostnames",
                 "regex": "\\b[a-z0-9-]+\\.prod\\.example\\.com\\b"},
                {"id": "customer-data", "message": "customer records",
                 "regex": "CUST-[0-9]{6}", "approvals_required": 2},
                {"id": "short-lived", "message": "one-second approvals",
                 "regex": "TEMP-[0-9]+", "ttl_seconds": 1}
            ],
            "reviews": {"wait_seconds": wait_seconds, "grant_cache_seconds": 1},
            "grants": {"enabled": grants}
        });
        c
    }
}

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }

    /// The review id a refusal names.
    fn review_id(&self) -> String {
        let m = self.message();
        let start = m.find("rv-").unwrap_or_else(|| panic!("no review id in `{m}`"));
        m[start..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
    }
}

async fn ask(stack: &Stack, token: &str, session: &str, messages: Value) -> Answer {
    let response = reqwest::Client::new()
        .post(stack.url("/v1/messages"))
        .bearer_auth(token)
        .header("x-claude-code-session-id", session)
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": messages}))
        .send()
        .await
        .expect("gateway answers");
    let status = response.status().as_u16();
    Answer { status, body: response.json().await.unwrap_or(Value::Null) }
}

fn say(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

fn token(stack: &Stack, sub: &str, groups: &[&str]) -> String {
    stack.key.mint(&stack.claims(sub, groups))
}

/// Runs `scrim-recorder` against the stack's recorder API with `token`.
fn recorder_cli(stack: &Stack, token: &str, args: &[&str]) -> std::process::Output {
    let binary = scrim_devstack::paths::recorder_binary().expect("scrim-recorder is built");
    std::process::Command::new(binary)
        .args(["--api", &stack.recorder.api_url(), "--token", token])
        .args(args)
        .output()
        .expect("scrim-recorder runs")
}

async fn api_post(stack: &Stack, token: &str, path: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}{path}", stack.recorder.api_url()))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn api_get(stack: &Stack, token: &str, path: &str) -> Value {
    let response = reqwest::Client::new()
        .get(format!("{}{path}", stack.recorder.api_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// Sends until `accept` is true of the answer, or fails after `limit`.
async fn until(stack: &Stack, token: &str, session: &str, text: &str, limit: Duration, accept: impl Fn(&Answer) -> bool) -> Answer {
    let deadline = Instant::now() + limit;
    loop {
        let answer = ask(stack, token, session, say(text)).await;
        if accept(&answer) {
            return answer;
        }
        assert!(Instant::now() < deadline, "still {} {} after {limit:?}", answer.status, answer.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn approval_covers_that_content_in_that_session_and_nothing_else() {
    let mut stack = Stack::start(StackOptions {
        name: "approvals",
        filter_config: Some(Box::new(approval_policy(0, false))),
        ..Default::default()
    })
    .await
    .unwrap();
    let alice = stack.token();
    let dana = token(&stack, "dana", &[APPROVER_GROUP]);
    let erin = token(&stack, "erin", &[APPROVER_GROUP]);
    let text = format!("run the migration on {PROD_HOST}");

    // Held: 403 naming the review and the approver's command; Claude sees nothing.
    let held = ask(&stack, &alice, "s-1", say(&text)).await;
    assert_eq!(held.status, 403, "{}", held.body);
    assert_eq!(held.body["error"]["type"], "permission_error");
    let review = held.review_id();
    assert!(held.message().contains(&format!("scrim-recorder reviews approve {review}")), "{}", held.message());
    assert!(stack.stand_in.requests().is_empty(), "nothing reached Claude before approval");
    let again = ask(&stack, &alice, "s-1", say(&text)).await;
    assert_eq!(again.review_id(), review, "asking again finds the same review");

    // The approver sees the masked excerpt; the requester cannot approve herself.
    let pending = api_get(&stack, &dana, "/v1/reviews?status=pending").await;
    assert_eq!(pending["data"][0]["id"], review.as_str());
    assert!(pending["data"][0]["excerpt"].as_str().unwrap().contains(PROD_HOST));
    let own = token(&stack, "alice", &[DEV_GROUP, APPROVER_GROUP]);
    let refused = recorder_cli(&stack, &own, &["reviews", "approve", &review, "--reason", "mine"]);
    assert!(!refused.status.success(), "self-approval must fail");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("403"), "{}", String::from_utf8_lossy(&refused.stderr));
    let approved = recorder_cli(&stack, &dana, &["reviews", "approve", &review, "--reason", "planned change"]);
    assert!(approved.status.success(), "{}", String::from_utf8_lossy(&approved.stderr));

    // Passes now, and so does a later turn of the same session resending that content.
    let passed = ask(&stack, &alice, "s-1", say(&text)).await;
    assert_eq!(passed.status, 200, "{}", passed.body);
    let later = json!([
        {"role": "user", "content": text},
        {"role": "assistant", "content": "Done."},
        {"role": "user", "content": "now check the logs"}
    ]);
    assert_eq!(ask(&stack, &alice, "s-1", later).await.status, 200);
    assert_eq!(stack.stand_in.requests().len(), 2);
    let all = api_get(&stack, &dana, "/v1/reviews").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1, "no new review for a later turn");

    // The same content in another session needs its own approval; a rejection names its reason.
    let other = ask(&stack, &alice, "s-2", say(&text)).await;
    assert_eq!(other.status, 403);
    let other_review = other.review_id();
    assert_ne!(other_review, review);
    let rejected = recorder_cli(&stack, &erin, &["reviews", "reject", &other_review, "--reason", "not from this session"]);
    assert!(rejected.status.success(), "{}", String::from_utf8_lossy(&rejected.stderr));
    let refused = ask(&stack, &alice, "s-2", say(&text)).await;
    assert_eq!(refused.status, 403);
    assert!(refused.message().contains("rejected") && refused.message().contains("not from this session"), "{}", refused.message());

    // Two approvers when the rule says so.
    let customer = ask(&stack, &alice, "s-3", say("look up CUST-123456")).await;
    let review2 = customer.review_id();
    assert!(recorder_cli(&stack, &dana, &["reviews", "approve", &review2, "--reason", "ok"]).status.success());
    let half = ask(&stack, &alice, "s-3", say("look up CUST-123456")).await;
    assert_eq!((half.status, half.review_id()), (403, review2.clone()), "one approval of two is not enough");
    assert!(recorder_cli(&stack, &erin, &["reviews", "approve", &review2, "--reason", "ok"]).status.success());
    assert_eq!(ask(&stack, &alice, "s-3", say("look up CUST-123456")).await.status, 200);

    // An approval expires: after its one second the same request needs a new review.
    let temp = ask(&stack, &alice, "s-4", say("use TEMP-7")).await;
    let review3 = temp.review_id();
    assert!(recorder_cli(&stack, &dana, &["reviews", "approve", &review3, "--reason", "brief"]).status.success());
    let expired = until(&stack, &alice, "s-4", "use TEMP-7", Duration::from_secs(10), |a| a.status == 403).await;
    assert_ne!(expired.review_id(), review3, "a new review after expiry");

    // The audit record names the review that let the request through.
    let records = stack.recorder.session("s-1");
    assert!(records.iter().any(|x| x.stored.record.approvals == vec![review.clone()]), "approval id recorded");

    // Recorder gone: what needs approval fails closed, the rest is served.
    stack.recorder.kill();
    let down = ask(&stack, &alice, "s-5", say(&format!("ssh {PROD_HOST}"))).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.body["error"]["type"], "api_error");
    assert_eq!(ask(&stack, &alice, "s-5", say("hello")).await.status, 200);
    stack.assert_no_filter_failures();
}

#[tokio::test]
async fn wait_mode_returns_at_the_decision_and_grants_open_and_close_access() {
    let stack = Stack::start(StackOptions {
        name: "approvals-wait",
        filter_config: Some(Box::new(approval_policy(30, true))),
        ..Default::default()
    })
    .await
    .unwrap();
    let alice = stack.token();
    let dana = token(&stack, "dana", &[APPROVER_GROUP]);

    // The request waits while the review is pending and is answered when the approver decides.
    let started = Instant::now();
    let waiting = {
        let (url, alice) = (stack.url("/v1/messages"), alice.clone());
        tokio::spawn(async move {
            let response = reqwest::Client::new()
                .post(url)
                .bearer_auth(alice)
                .header("x-claude-code-session-id", "s-wait")
                .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 16, "messages": say(&format!("ssh {PROD_HOST}"))}))
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), Instant::now())
        })
    };
    let review = loop {
        let pending = api_get(&stack, &dana, "/v1/reviews?status=pending").await;
        if let Some(id) = pending["data"][0]["id"].as_str() {
            break id.to_string();
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the review never opened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!waiting.is_finished(), "the request is still waiting for the decision");
    let (status, _) = api_post(&stack, &dana, &format!("/v1/reviews/{review}/approve"), json!({"reason": "go"})).await;
    let decided = Instant::now();
    assert_eq!(status, 200);
    let (status, answered) = waiting.await.unwrap();
    assert_eq!(status, 200, "forwarded once approved");
    let after = answered.saturating_duration_since(decided);
    println!("wait mode: answered {after:?} after the approval ({:?} after the request)", answered - started);
    assert!(after < Duration::from_secs(5), "answered at the decision, not at the 30 s limit");

    // frank is in no allowed group: refused until an approver grants him access.
    let frank = token(&stack, "frank", &["contractors"]);
    assert_eq!(ask(&stack, &frank, "s-f", say("hi")).await.status, 403);
    let (status, grant) = api_post(&stack, &frank, "/v1/grants", json!({"duration_seconds": 600, "reason": "incident 42"})).await;
    assert_eq!(status, 200, "{grant}");
    let id = grant["id"].as_str().unwrap().to_string();
    let granted = recorder_cli(&stack, &dana, &["grants", "approve", &id, "--reason", "on call"]);
    assert!(granted.status.success(), "{}", String::from_utf8_lossy(&granted.stderr));
    until(&stack, &frank, "s-f", "hi", Duration::from_secs(10), |a| a.status == 200).await;
    let records = stack.recorder.wait_for_count(1, Duration::from_secs(10)).await;
    assert!(!records.is_empty());

    // Revoked: shut out again within the grant cache time (1 s here).
    let revoked = recorder_cli(&stack, &dana, &["grants", "revoke", &id, "--reason", "incident closed"]);
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    let revoked_at = Instant::now();
    until(&stack, &frank, "s-f", "hi", Duration::from_secs(10), |a| a.status == 403).await;
    println!("grant revocation took effect after {:?}", revoked_at.elapsed());
    assert!(revoked_at.elapsed() < Duration::from_secs(5));
    stack.assert_no_filter_failures();
}
