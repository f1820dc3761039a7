//! A whole gateway on loopback for tests and `make run`: the dev identity provider, the Claude
//! stand-in and a real Envoy with the filter, started in that order on free ports.

use crate::envoy::{free_port, Envoy, EnvoyOptions, Upstream};
use crate::idp::DevIdp;
use crate::keys::SigningKey;
use crate::recorder::{Recorder, RecorderApi, RecorderOptions};
use scrim_recorder::api::ApiConfig;
use scrim_recorder::ingest::IngestConfig;
use crate::stand_in::ClaudeStandIn;
use crate::tls_front::TlsFront;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The audience dev tokens carry and the dev configuration accepts.
pub const DEV_AUDIENCE: &str = "scrim";
/// The only group the dev configuration allows.
pub const DEV_GROUP: &str = "eng";
/// Envoy buffer limit of the dev configuration: above the filter's 32 MiB body limit, so
/// the filter, not Envoy, answers an oversized body (in the Anthropic error shape).
pub const DEV_BUFFER_LIMIT: u64 = 40 * 1024 * 1024;
/// How often Envoy ships buffered access-log entries to the recorder in test stacks: short, so
/// tests waiting for records wait little.
pub const AUDIT_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// The filter configuration `make run` uses unless `SCRIM_FILTER_CONFIG` names another.
pub fn dev_filter_config(issuer: &str, jwks_uri: &str) -> Value {
    json!({
        "issuers": [{
            "issuer": issuer,
            "audiences": [DEV_AUDIENCE],
            "jwks_uri": jwks_uri,
            "jwks_cluster": "idp_jwks"
        }],
        "allowed_groups": [DEV_GROUP],
        "groups_claim": "groups",
        "jwks": {"refresh_seconds": 300, "retry_seconds": 1, "unknown_kid_refetch_seconds": 5}
    })
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A fresh folder under the system temp dir for one test's logs and rendered configuration.
pub fn scratch_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "scrim-e2e-{}-{}-{}",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// How a test stack differs from the default.
pub struct StackOptions {
    pub name: &'static str,
    /// Start the identity provider before Envoy (false: the IdP is down at start).
    pub idp_up: bool,
    /// Rewrites the dev filter configuration before Envoy starts.
    pub filter_config: Option<Box<dyn FnOnce(Value) -> Value>>,
    pub baseline: bool,
    pub concurrency: usize,
    /// Put the stand-in behind TLS with a certificate for this name (signed by a test CA the
    /// gateway trusts) and reach it as `https://localhost:<port>`.
    pub tls_certificate_name: Option<&'static str>,
    /// The recorder's ingest limits (its record size cap, say).
    pub recorder: IngestConfig,
    /// The recorder's store: a SQLite path or a `postgres://` URL (default: `recorder.db` in
    /// the run folder).
    pub recorder_db: Option<String>,
}

impl Default for StackOptions {
    fn default() -> Self {
        StackOptions {
            name: "stack",
            idp_up: true,
            filter_config: None,
            baseline: false,
            concurrency: 1,
            tls_certificate_name: None,
            recorder: IngestConfig::default(),
            recorder_db: None,
        }
    }
}

pub struct Stack {
    pub idp: Option<DevIdp>,
    pub idp_addr: std::net::SocketAddr,
    pub issuer: String,
    pub key: SigningKey,
    pub stand_in: ClaudeStandIn,
    pub envoy: Envoy,
    pub recorder: Recorder,
    pub tls_front: Option<TlsFront>,
    pub api_key: String,
    /// What the recorder's review and grant routes expect from Envoy.
    pub recorder_token: String,
    pub run_dir: PathBuf,
}

/// Members decide reviews and grants in test stacks and `make run`.
pub const APPROVER_GROUP: &str = "approvers";

/// The recorder's API configuration for a dev identity provider: dev and approver tokens may
/// query, approvers decide, the filter presents `service_token`.
pub fn dev_recorder_api(issuer: &str, jwks_uri: &str, auditor_group: &str, service_token: &str) -> Result<ApiConfig, String> {
    let mut auth = dev_filter_config(issuer, jwks_uri);
    auth["allowed_groups"] = json!([DEV_GROUP, auditor_group]);
    let auth = scrim_core::config::Config::from_json(auth.to_string().as_bytes()).map_err(|e| e.to_string())?;
    Ok(ApiConfig {
        approver_group: APPROVER_GROUP.into(),
        service_token: Some(service_token.into()),
        ..ApiConfig::auditing(auth, auditor_group)
    })
}

impl Stack {
    pub async fn start(opts: StackOptions) -> Result<Stack, String> {
        let run_dir = scratch_dir(opts.name);
        let key = SigningKey::generate(Algorithm::RS256, "key-1").map_err(|e| e.to_string())?;
        let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let idp_addr = idp_listener.local_addr().map_err(|e| e.to_string())?;
        let issuer = format!("http://{idp_addr}");
        let idp = if opts.idp_up {
            Some(DevIdp::start(idp_listener, issuer.clone(), vec![key.clone()]).map_err(|e| e.to_string())?)
        } else {
            drop(idp_listener);
            None
        };
        // A synthetic service key, different every run, so a test can look for it anywhere.
        let api_key = format!("sk-ant-api03-scrimtest-{:016x}", rand_u64());
        let stand_in_listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let stand_in_addr = stand_in_listener.local_addr().map_err(|e| e.to_string())?;
        let stand_in = ClaudeStandIn::start(stand_in_listener, Some(api_key.clone())).map_err(|e| e.to_string())?;
        let (upstream, upstream_ca, tls_front) = match opts.tls_certificate_name {
            None => (Upstream::local(stand_in_addr), None, None),
            Some(name) => {
                let dir = run_dir.join("tls");
                std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                let front = TlsFront::start(&dir, name, stand_in_addr).await?;
                let upstream = Upstream { tls: true, host: "localhost".into(), port: front.port };
                (upstream, Some(front.ca.clone()), Some(front))
            }
        };
        let recorder_listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        let recorder_port = recorder_listener.local_addr().map_err(|e| e.to_string())?.port();
        let recorder_token = format!("scrim-recorder-token-{:016x}{:016x}", rand_u64(), rand_u64());
        let api = RecorderApi {
            listener: tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?,
            config: dev_recorder_api(&issuer, &format!("{issuer}/jwks"), "auditors", &recorder_token)?,
        };
        // Envoy presents the same token on the access-log stream (initial metadata) as on the
        // review and grant routes; a deployment may hold two (see README, Auditing).
        let options = RecorderOptions {
            ingest: opts.recorder,
            ingest_token: Some(recorder_token.clone()),
            chain_keys: Some(std::sync::Arc::new(synthetic_chain_keys())),
        };
        let db = opts.recorder_db.unwrap_or_else(|| run_dir.join("recorder.db").to_string_lossy().into_owned());
        let recorder = Recorder::start_url(recorder_listener, &db, options, Some(api)).await?;
        let recorder_api_port = recorder.api_addr.map(|a| a.port()).unwrap_or(0);
        let mut config = dev_filter_config(&issuer, &format!("{issuer}/jwks"));
        if let Some(edit) = opts.filter_config {
            config = edit(config);
        }
        let envoy = Envoy::start(&EnvoyOptions {
            gateway_port: free_port(),
            admin_port: free_port(),
            baseline_port: opts.baseline.then(free_port),
            upstream,
            upstream_ca,
            idp: idp_addr,
            recorder_port,
            recorder_api_port,
            recorder_token: recorder_token.clone(),
            audit_flush_interval: AUDIT_FLUSH_INTERVAL,
            filter_config: config,
            api_key: api_key.clone(),
            run_dir: run_dir.clone(),
            concurrency: opts.concurrency,
            buffer_limit_bytes: DEV_BUFFER_LIMIT,
        })
        .await?;
        Ok(Stack { idp, idp_addr, issuer, key, stand_in, envoy, recorder, tls_front, api_key, recorder_token, run_dir })
    }

    /// Claims of a valid dev token for `sub` in `groups`; tests change fields to break it.
    pub fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = now();
        json!({
            "iss": self.issuer, "aud": DEV_AUDIENCE, "sub": sub,
            "email": format!("{sub}@dev.scrim.local"), "groups": groups,
            "iat": now, "nbf": now, "exp": now + 600
        })
    }

    /// A valid token for an allowed caller.
    pub fn token(&self) -> String {
        self.key.mint(&self.claims("alice", &[DEV_GROUP]))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.envoy.gateway, path)
    }

    /// Fails the test if any VM panicked or the filter failed to load.
    pub fn assert_no_filter_failures(&self) {
        let log = self.envoy.log();
        for needle in ["panicked", "Wasm VM failed", "Function: proxy_on_", "Failed to load Wasm"] {
            assert!(!log.contains(needle), "envoy log contains `{needle}`:\n{log}");
        }
    }
}

/// Chain keys made fresh for one run (one key, id `test-1`).
pub fn synthetic_chain_keys() -> scrim_recorder::chain_keys::ChainKeys {
    let line = format!("test-1 synthetic-chain-key-{:016x}{:016x}", rand_u64(), rand_u64());
    scrim_recorder::chain_keys::ChainKeys::parse(&line, "synthetic").expect("synthetic key parses")
}

/// A random number from the OS, for unique synthetic values.
pub fn rand_u64() -> u64 {
    use rand::RngCore;
    rand::rngs::OsRng.next_u64()
}
