//! `make run` and `make token`: a local gateway with a dev identity provider and, when no real
//! key is given, a stand-in for the Claude API.
//!
//! Usage: `scrim-dev run` | `scrim-dev token --sub NAME --groups a,b [--ttl SECONDS]`.
//! Environment: see README.md ("Configuration of `make run`").

use scrim_devstack::envoy::{Envoy, EnvoyOptions, Upstream};
use scrim_devstack::idp::{DevIdentity, DevIdp};
use scrim_devstack::recorder::{Recorder, RecorderApi, RecorderOptions};
use scrim_recorder::ingest::IngestConfig;

/// The dev group whose members see every recorded exchange through the auditor API.
const AUDITOR_GROUP: &str = "auditors";
use scrim_devstack::stack::{dev_filter_config, dev_recorder_api, rand_u64, DEV_AUDIENCE, DEV_BUFFER_LIMIT};
use scrim_devstack::stand_in::ClaudeStandIn;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).ok().filter(|v| !v.is_empty()).unwrap_or_else(|| default.to_string())
}

fn port(name: &str, default: u16) -> Result<u16, String> {
    let raw = env_or(name, &default.to_string());
    raw.parse().map_err(|_| format!("{name}={raw} is not a port number"))
}

fn run_dir() -> PathBuf {
    PathBuf::from(env_or("SCRIM_RUN_DIR", ".scrim"))
}

fn issuer(idp_port: u16) -> String {
    format!("http://127.0.0.1:{idp_port}")
}

/// Binds a port we serve ourselves, or says which variable moves it.
async fn bind(name: &str, port: u16) -> Result<tokio::net::TcpListener, String> {
    tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(|e| format!("port {port} is taken ({e}); set {name} to another port"))
}

/// Checks that a port Envoy will open is free now, to fail with a clear message.
fn check_free(name: &str, port: u16) -> Result<(), String> {
    std::net::TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|e| format!("port {port} is taken ({e}); set {name} to another port"))
}

fn service_key() -> Result<Option<String>, String> {
    if let Ok(key) = std::env::var("ANTHROPIC_API_KEY") {
        if !key.trim().is_empty() {
            return Ok(Some(key.trim().to_string()));
        }
    }
    match std::env::var("SCRIM_API_KEY_FILE") {
        Ok(path) if !path.is_empty() => std::fs::read_to_string(&path)
            .map(|k| Some(k.trim().to_string()))
            .map_err(|e| format!("cannot read SCRIM_API_KEY_FILE {path}: {e}")),
        _ => Ok(None),
    }
}

fn filter_config(issuer: &str, jwks_uri: &str) -> Result<serde_json::Value, String> {
    let Ok(path) = std::env::var("SCRIM_FILTER_CONFIG") else {
        return Ok(dev_filter_config(issuer, jwks_uri));
    };
    let text = std::fs::read(&path).map_err(|e| format!("cannot read SCRIM_FILTER_CONFIG {path}: {e}"))?;
    // The filter would refuse it too, but only inside Envoy's log: say it here, by field.
    scrim_core::config::Config::from_json(&text).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_slice(&text).map_err(|e| format!("{path}: {e}"))
}

async fn run() -> Result<(), String> {
    let dir = run_dir();
    let gateway_port = port("SCRIM_PORT", 8080)?;
    let admin_port = port("SCRIM_ADMIN_PORT", 9901)?;
    let idp_port = port("SCRIM_IDP_PORT", 9902)?;
    let stand_in_port = port("SCRIM_STAND_IN_PORT", 9903)?;
    let recorder_port = port("SCRIM_RECORDER_PORT", 9904)?;
    let audit_api_port = port("SCRIM_AUDIT_API_PORT", 9905)?;
    check_free("SCRIM_PORT", gateway_port)?;
    check_free("SCRIM_ADMIN_PORT", admin_port)?;
    std::fs::create_dir_all(dir.join("logs")).map_err(|e| format!("{}: {e}", dir.display()))?;

    let issuer = issuer(idp_port);
    let identity = DevIdentity::load_or_create(&dir.join("idp"), &issuer).map_err(|e| e.to_string())?;
    let idp_listener = bind("SCRIM_IDP_PORT", idp_port).await?;
    let idp = DevIdp::start(idp_listener, issuer.clone(), identity.keys()).map_err(|e| e.to_string())?;

    // The recorder: Envoy's access log in, the auditors' and approvers' API out (members of
    // `auditors` see every exchange, `eng` members their own, `approvers` decide reviews).
    let recorder_listener = bind("SCRIM_RECORDER_PORT", recorder_port).await?;
    let db = dir.join("recorder.db");
    let recorder_token = recorder_token(&dir)?;
    let api = RecorderApi {
        listener: bind("SCRIM_AUDIT_API_PORT", audit_api_port).await?,
        config: dev_recorder_api(&issuer, idp.jwks_uri(), AUDITOR_GROUP, &recorder_token)?,
    };
    // Envoy presents the same token on the access-log stream; nothing else on this machine
    // can add records.
    let options = RecorderOptions {
        ingest: IngestConfig::default(),
        ingest_token: Some(recorder_token.clone()),
        chain_keys: Some(std::sync::Arc::new(chain_keys(&dir)?)),
    };
    let _recorder = Recorder::start(recorder_listener, &db, options, Some(api)).await?;

    let key = service_key()?;
    let upstream_url = std::env::var("SCRIM_UPSTREAM").ok().filter(|u| !u.is_empty());
    let (upstream, api_key, _stand_in, upstream_text) = match (upstream_url, key) {
        (Some(url), key) => {
            let key = key.ok_or("SCRIM_UPSTREAM is set: set ANTHROPIC_API_KEY (or SCRIM_API_KEY_FILE) too")?;
            (Upstream::parse(&url)?, key, None, url)
        }
        (None, Some(key)) => {
            let url = "https://api.anthropic.com".to_string();
            (Upstream::parse(&url)?, key, None, url)
        }
        (None, None) => {
            let listener = bind("SCRIM_STAND_IN_PORT", stand_in_port).await?;
            let addr = listener.local_addr().map_err(|e| e.to_string())?;
            let key = format!("sk-ant-dev-{:016x}", rand_u64());
            let stand_in = ClaudeStandIn::start(listener, Some(key.clone())).map_err(|e| e.to_string())?;
            (Upstream::local(addr), key, Some(stand_in), format!("the local Claude stand-in on http://{addr}"))
        }
    };
    let config = filter_config(&issuer, idp.jwks_uri())?;
    let mut envoy = Envoy::start(&EnvoyOptions {
        gateway_port,
        admin_port,
        baseline_port: None,
        upstream,
        upstream_ca: std::env::var_os("SCRIM_UPSTREAM_CA").map(PathBuf::from),
        idp: idp.addr(),
        recorder_port,
        recorder_api_port: audit_api_port,
        recorder_token,
        audit_flush_interval: std::time::Duration::from_secs(1),
        filter_config: config,
        api_key,
        run_dir: dir.clone(),
        concurrency: 2,
        buffer_limit_bytes: DEV_BUFFER_LIMIT,
    })
    .await?;
    print_welcome(&dir, gateway_port, admin_port, audit_api_port, &issuer, &upstream_text, &db);

    let mut watch = tokio::time::interval(std::time::Duration::from_secs(1));
    // SIGTERM (a process manager, `timeout`) stops everything as Ctrl-C does; without it
    // Envoy would outlive this process.
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {
                println!("\nstopping");
                break;
            }
            _ = terminate.recv() => {
                println!("stopping (SIGTERM)");
                break;
            }
            _ = watch.tick() => {
                if !envoy.is_running() {
                    return Err(format!("envoy stopped; see {}", envoy.log_path.display()));
                }
            }
        }
    }
    envoy.stop();
    Ok(())
}

/// The recorder's chain key: made at first start, kept in the run folder (`chain-keys`, the
/// file `--chain-key-file` takes) so restarts and `verify` agree.
fn chain_keys(dir: &Path) -> Result<scrim_recorder::chain_keys::ChainKeys, String> {
    let path = dir.join("chain-keys");
    if !path.exists() {
        let line = format!("dev-1 scrim-dev-chain-key-{:016x}{:016x}\n", rand_u64(), rand_u64());
        std::fs::write(&path, line).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    scrim_recorder::chain_keys::ChainKeys::load(&path).map_err(|e| e.to_string())
}

/// The token Envoy presents to the recorder's review and grant routes: made at first start,
/// kept in the run folder so restarts agree.
fn recorder_token(dir: &Path) -> Result<String, String> {
    let path = dir.join("recorder-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        if token.trim().len() >= 32 {
            return Ok(token.trim().to_string());
        }
    }
    let token = format!("scrim-recorder-token-{:016x}{:016x}", rand_u64(), rand_u64());
    std::fs::write(&path, &token).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(token)
}

fn print_welcome(dir: &Path, port: u16, admin: u16, audit_api_port: u16, issuer: &str, upstream: &str, db: &Path) {
    let base = format!("http://127.0.0.1:{port}");
    println!(
        "Scrim gateway is up on {base} (admin http://127.0.0.1:{admin}), forwarding to {upstream}.
Identity provider: {issuer} (keys in {idp}). Logs: {logs}.

Get a token (group `eng` is allowed):
  TOKEN=$(make -s token SUB=alice GROUPS=eng | tail -n1)

Try it:
  curl -sN {base}/v1/messages -H \"authorization: Bearer $TOKEN\" \\
    -H 'anthropic-version: 2023-06-01' -H 'content-type: application/json' \\
    -d '{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":64,\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"hi\"}}]}}'

Claude Code:
  ANTHROPIC_BASE_URL={base} ANTHROPIC_AUTH_TOKEN=$TOKEN claude

Every exchange is recorded in {db} (tamper-evident); for auditors:
  cargo run -q -p scrim-recorder -- --db {db} sessions list
  cargo run -q -p scrim-recorder -- --db {db} replay <session-id>
  cargo run -q -p scrim-recorder -- --db {db} --chain-key-file {keys} verify
  AUDITOR=$(make -s token SUB=carol GROUPS=auditors | tail -n1)
  curl -s http://127.0.0.1:{audit}/v1/sessions -H \"authorization: Bearer $AUDITOR\"

Requests held by approval rules (policy.approval) wait for an approver:
  APPROVER=$(make -s token SUB=dana GROUPS=approvers | tail -n1)
  cargo run -q -p scrim-recorder -- --api http://127.0.0.1:{audit} --token $APPROVER reviews list --status pending

Ctrl-C stops everything.",
        idp = dir.join("idp").display(),
        logs = dir.join("logs").display(),
        keys = dir.join("chain-keys").display(),
        db = db.display(),
        audit = audit_api_port,
    );
}

fn token(args: &[String]) -> Result<(), String> {
    let mut sub = "alice".to_string();
    let mut groups = "eng".to_string();
    let mut ttl: u64 = 3600;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--sub" => sub = value()?,
            "--groups" => groups = value()?,
            "--ttl" => ttl = value()?.parse().map_err(|_| "--ttl takes seconds".to_string())?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let issuer = issuer(port("SCRIM_IDP_PORT", 9902)?);
    let identity =
        DevIdentity::load_or_create(&run_dir().join("idp"), &issuer).map_err(|e| e.to_string())?;
    let groups: Vec<String> =
        groups.split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect();
    eprintln!("dev token for {sub} (groups {groups:?}, issuer {issuer}, valid {ttl} s):");
    println!("{}", identity.mint_token(&sub, &groups, DEV_AUDIENCE, ttl));
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => run().await,
        Some("token") => token(&args[1..]),
        _ => Err("usage: scrim-dev run | scrim-dev token --sub NAME --groups a,b [--ttl SECONDS]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("scrim-dev: {e}");
            ExitCode::FAILURE
        }
    }
}
