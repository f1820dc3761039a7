//! Runs a real Envoy with the Scrim filter: renders `envoy/dev.yaml.tmpl`, starts the binary
//! installed by `make tools`, waits for the admin `/ready` endpoint, and stops it on drop.

use crate::paths;
use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the gateway forwards to: `http://host:port` or `https://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl Upstream {
    pub fn parse(url: &str) -> Result<Upstream, String> {
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(format!("upstream `{url}` must start with http:// or https://"));
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('@') || rest.is_empty() {
            return Err(format!("upstream `{url}` must be a scheme, host and optional port only"));
        }
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => {
                let port = p.parse().map_err(|_| format!("upstream `{url}` has a bad port"))?;
                (h.to_string(), port)
            }
            None => (rest.to_string(), if tls { 443 } else { 80 }),
        };
        Ok(Upstream { tls, host, port })
    }

    pub fn local(addr: SocketAddr) -> Upstream {
        Upstream { tls: false, host: addr.ip().to_string(), port: addr.port() }
    }

    fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// Everything that varies between one Envoy and another.
#[derive(Debug, Clone)]
pub struct EnvoyOptions {
    pub gateway_port: u16,
    pub admin_port: u16,
    /// A second listener with the same route but without the filter (tests and benchmarks).
    pub baseline_port: Option<u16>,
    pub upstream: Upstream,
    pub idp: SocketAddr,
    /// The recorder's gRPC access-log listener.
    pub recorder_port: u16,
    /// The recorder's HTTP API (reviews and grants).
    pub recorder_api_port: u16,
    /// The token the recorder's review and grant routes expect, given to Envoy's environment
    /// as `SCRIM_RECORDER_SERVICE_TOKEN`.
    pub recorder_token: String,
    /// How often Envoy ships buffered access-log entries (`1s` in production, shorter in tests).
    pub audit_flush_interval: std::time::Duration,
    /// The filter's plugin configuration (see filter/core/src/config.rs).
    pub filter_config: serde_json::Value,
    /// The service key, given to Envoy's environment as `ANTHROPIC_API_KEY`.
    pub api_key: String,
    /// Folder for the rendered configuration and the logs.
    pub run_dir: PathBuf,
    pub concurrency: usize,
    pub buffer_limit_bytes: u64,
    /// CA bundle that validates an https upstream; the system trust store when `None`.
    pub upstream_ca: Option<PathBuf>,
}

/// A running Envoy; killed when dropped.
pub struct Envoy {
    child: Option<Child>,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub baseline: Option<SocketAddr>,
    pub log_path: PathBuf,
}

const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn fill(template: &str, values: &[(&str, String)]) -> Result<String, String> {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("{{{{{name}}}}}"), value);
    }
    match out.find("{{") {
        Some(i) => Err(format!("template placeholder left unfilled near: {}", &out[i..(i + 40).min(out.len())])),
        None => Ok(out),
    }
}

fn yaml_string(s: &str) -> String {
    // A JSON string literal is a valid YAML double-quoted scalar.
    serde_json::to_string(s).unwrap_or_default()
}

/// Renders the Envoy configuration for these options.
pub fn render(opts: &EnvoyOptions) -> Result<String, String> {
    let dir = paths::envoy_dir();
    let read = |name: &str| {
        fs::read_to_string(dir.join(name)).map_err(|e| format!("cannot read envoy/{name}: {e}"))
    };
    let u = &opts.upstream;
    let common = vec![
        ("BUFFER_LIMIT_BYTES", opts.buffer_limit_bytes.to_string()),
        ("UPSTREAM_HOST", yaml_string(&u.host)),
    ];
    let baseline = match opts.baseline_port {
        Some(port) => {
            let mut v = common.clone();
            v.push(("BASELINE_PORT", port.to_string()));
            fill(&read("baseline-listener.yaml.tmpl")?, &v)?
        }
        None => String::new(),
    };
    let tls = if u.tls {
        let mut v = common.clone();
        let ca = opts.upstream_ca.as_deref().unwrap_or(Path::new(CA_BUNDLE));
        v.push(("CA_BUNDLE", yaml_string(&ca.to_string_lossy())));
        fill(&read("upstream-tls.yaml.tmpl")?, &v)?
    } else {
        String::new()
    };
    let config_json = serde_json::to_string(&opts.filter_config).map_err(|e| e.to_string())?;
    let mut v = common;
    v.extend([
        ("ADMIN_PORT", opts.admin_port.to_string()),
        ("GATEWAY_PORT", opts.gateway_port.to_string()),
        ("ACCESS_LOG", yaml_string(&opts.run_dir.join("logs/access.log").to_string_lossy())),
        ("FILTER_CONFIG_JSON", yaml_string(&config_json)),
        ("WASM_PATH", yaml_string(&paths::filter_wasm().to_string_lossy())),
        ("BASELINE_LISTENER", baseline),
        ("CLIENT_DOCUMENT", yaml_string(&crate::oidc_provider::gateway_client_document(&opts.filter_config).to_string())),
        ("UPSTREAM_DISCOVERY", if u.is_ip() { "STATIC" } else { "LOGICAL_DNS" }.to_string()),
        ("UPSTREAM_ADDRESS", yaml_string(&u.host)),
        ("UPSTREAM_PORT", u.port.to_string()),
        ("UPSTREAM_TLS", tls),
        ("IDP_ADDRESS", yaml_string(&opts.idp.ip().to_string())),
        ("IDP_PORT", opts.idp.port().to_string()),
        ("RECORDER_PORT", opts.recorder_port.to_string()),
        ("RECORDER_API_PORT", opts.recorder_api_port.to_string()),
        ("RECORDER_INGEST_AUTHORIZATION", yaml_string(&format!("Bearer {}", opts.recorder_token))),
        ("AUDIT_FLUSH_INTERVAL", format!("{}s", opts.audit_flush_interval.as_secs_f64())),
    ]);
    fill(&read("dev.yaml.tmpl")?, &v)
}

/// A port on loopback that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Tail of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Envoy {
    /// Starts Envoy and waits until its admin endpoint reports ready.
    pub async fn start(opts: &EnvoyOptions) -> Result<Envoy, String> {
        let wasm = paths::filter_wasm();
        if !wasm.exists() {
            return Err(format!("no filter at {}: run `make wasm`", wasm.display()));
        }
        let loopback = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let mut envoy = Envoy::start_config(
            &render(opts)?,
            &opts.run_dir,
            "envoy",
            opts.concurrency,
            &[("ANTHROPIC_API_KEY", &opts.api_key), ("SCRIM_RECORDER_SERVICE_TOKEN", &opts.recorder_token)],
            loopback(opts.admin_port),
        )
        .await?;
        envoy.gateway = loopback(opts.gateway_port);
        envoy.baseline = opts.baseline_port.map(loopback);
        Ok(envoy)
    }

    /// Starts Envoy with a ready-made configuration (`name.yaml` and `logs/name.log` in
    /// `run_dir`) and waits for its admin endpoint at `admin`.
    pub async fn start_config(
        config: &str,
        run_dir: &Path,
        name: &str,
        concurrency: usize,
        env: &[(&str, &str)],
        admin: SocketAddr,
    ) -> Result<Envoy, String> {
        let binary = paths::envoy_binary();
        if !binary.exists() {
            return Err(format!("no Envoy at {}: run `make tools`", binary.display()));
        }
        fs::create_dir_all(run_dir.join("logs")).map_err(|e| e.to_string())?;
        let config_path = run_dir.join(format!("{name}.yaml"));
        fs::write(&config_path, config).map_err(|e| e.to_string())?;
        let log_path = run_dir.join(format!("logs/{name}.log"));
        let log = fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config_path)
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--log-level", "info", "--disable-hot-restart"])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut envoy = Envoy { child: Some(child), gateway: admin, admin, baseline: None, log_path };
        envoy.wait_ready(Duration::from_secs(60)).await?;
        Ok(envoy)
    }

    /// The Envoy process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), String> {
        let client = reqwest::Client::new();
        let url = format!("http://{}/ready", self.admin);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "envoy exited during start-up ({status}); its log ends with:\n{}",
                        tail(&self.log_path, 30)
                    ));
                }
            }
            if let Ok(resp) = client.get(&url).timeout(Duration::from_secs(1)).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "envoy not ready after {limit:?}; its log ends with:\n{}",
                    tail(&self.log_path, 30)
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Counters whose name contains `filter`, from the admin `/stats` endpoint.
    pub async fn stats(&self, filter: &str) -> Result<Vec<(String, u64)>, String> {
        let url = format!("http://{}/stats?filter={filter}", self.admin);
        let text = reqwest::get(&url)
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        Ok(text
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// The value of one counter, 0 when absent.
    pub async fn counter(&self, name: &str) -> u64 {
        self.stats(name)
            .await
            .unwrap_or_default()
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        self.stop();
    }
}
