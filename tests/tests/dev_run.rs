//! `make run` and `make token` (the `scrim-dev` binary) as a newcomer uses them.

use scrim_devstack::envoy::free_port;
use scrim_devstack::stack::scratch_dir;
use scrim_devstack::stand_in::DEFAULT_REPLY;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};

const SCRIM_DEV: &str = env!("CARGO_BIN_EXE_scrim-dev");

struct Ports {
    gateway: u16,
    admin: u16,
    idp: u16,
    stand_in: u16,
    recorder: u16,
    audit_api: u16,
}

fn dev_command(run_dir: &Path, ports: &Ports) -> Command {
    let mut cmd = Command::new(SCRIM_DEV);
    cmd.env("SCRIM_RUN_DIR", run_dir)
        .env("SCRIM_PORT", ports.gateway.to_string())
        .env("SCRIM_ADMIN_PORT", ports.admin.to_string())
        .env("SCRIM_IDP_PORT", ports.idp.to_string())
        .env("SCRIM_STAND_IN_PORT", ports.stand_in.to_string())
        .env("SCRIM_RECORDER_PORT", ports.recorder.to_string())
        .env("SCRIM_AUDIT_API_PORT", ports.audit_api.to_string())
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("SCRIM_UPSTREAM")
        .env_remove("SCRIM_FILTER_CONFIG")
        .env_remove("SCRIM_API_KEY_FILE");
    cmd
}

fn ports() -> Ports {
    Ports {
        gateway: free_port(),
        admin: free_port(),
        idp: free_port(),
        stand_in: free_port(),
        recorder: free_port(),
        audit_api: free_port(),
    }
}

fn token(run_dir: &Path, ports: &Ports, sub: &str, groups: &str) -> String {
    let out = dev_command(run_dir, ports)
        .args(["token", "--sub", sub, "--groups", groups])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8(out.stdout).unwrap();
    stdout.lines().last().unwrap().to_string()
}

#[tokio::test]
async fn dev_gateway_serves_a_dev_token_and_stops_on_interrupt() {
    let run_dir = scratch_dir("dev-run");
    let ports = ports();
    let mut child = tokio::process::Command::from(dev_command(&run_dir, &ports))
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(ready, "scrim-dev run did not come up");

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/messages", ports.gateway);
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let allowed = token(&run_dir, &ports, "alice", "eng");
    let resp = client.post(&url).bearer_auth(&allowed).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["content"][0]["text"], DEFAULT_REPLY);

    // The exchange reaches the recorder, and an auditor sees it through the auditor API.
    let auditor = token(&run_dir, &ports, "carol", "auditors");
    let sessions_url = format!("http://127.0.0.1:{}/v1/sessions?user=alice", ports.audit_api);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let v: serde_json::Value = client.get(&sessions_url).bearer_auth(&auditor).send().await.unwrap().json().await.unwrap();
        if v["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "exchange never reached the auditor API: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let other_group = token(&run_dir, &ports, "bob", "sales");
    let resp = client.post(&url).bearer_auth(&other_group).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 403, "the dev configuration allows `eng` only");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let admin = format!("http://127.0.0.1:{}/ready", ports.admin);
    assert!(client.get(&admin).send().await.is_err(), "envoy is gone after Ctrl-C");
    assert!(run_dir.join("logs/envoy.log").exists());
    assert!(run_dir.join("idp/keys.json").exists());
}

#[test]
fn taken_port_stops_start_up_naming_its_variable() {
    let run_dir = scratch_dir("dev-taken");
    let ports = ports();
    let _holder = std::net::TcpListener::bind(("127.0.0.1", ports.gateway)).unwrap();
    let out = dev_command(&run_dir, &ports).arg("run").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("port {} is taken", ports.gateway)) && err.contains("SCRIM_PORT"), "{err}");
}

#[test]
fn invalid_filter_config_file_stops_start_up_naming_the_field() {
    let run_dir = scratch_dir("dev-bad-config");
    let path = run_dir.join("filter.json");
    std::fs::write(&path, r#"{"issuers": [], "allowed_groups": ["eng"]}"#).unwrap();
    let out = dev_command(&run_dir, &ports()).env("SCRIM_FILTER_CONFIG", &path).arg("run").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("field `issuers`"), "{err}");
}

/// Started with an approval rule, `make run` wires Envoy to the recorder's review routes (the
/// service token reaches both), and SIGTERM stops everything as Ctrl-C does.
#[tokio::test]
async fn dev_gateway_holds_requests_for_review_and_stops_on_sigterm() {
    let run_dir = scratch_dir("dev-review");
    let ports = ports();
    let issuer = format!("http://127.0.0.1:{}", ports.idp);
    let mut config = scrim_devstack::stack::dev_filter_config(&issuer, &format!("{issuer}/jwks"));
    config["policy"] = serde_json::json!({"approval": [{"id": "prod-hosts", "message": "production hosts", "regex": "\\.prod\\.example\\.com"}]});
    let config_path = run_dir.join("filter.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let mut child = tokio::process::Command::from(dev_command(&run_dir, &ports))
        .env("SCRIM_FILTER_CONFIG", &config_path)
        .arg("run")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("Ctrl-C stops everything") {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(ready, "scrim-dev run did not come up");

    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{}/v1/messages", ports.gateway);
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"ssh db1.prod.example.com"}]}"#;
    let alice = token(&run_dir, &ports, "alice", "eng");
    let resp = client.post(&url).bearer_auth(&alice).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 403);
    let v: serde_json::Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("scrim-recorder reviews approve rv-"), "{message}");

    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    let admin = format!("http://127.0.0.1:{}/ready", ports.admin);
    assert!(client.get(&admin).send().await.is_err(), "envoy is gone after SIGTERM");
}
