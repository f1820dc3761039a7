//! Login tests against something we did not write: runs the certified `oidc-provider` (npm,
//! pinned in tests/oidc/package.json, installed by `make test-tools`) on loopback, signs in
//! on its own HTML pages with a scripted browser, starts a gateway stack that trusts it, and
//! runs the `scrim` command with a home of its own.

use crate::envoy::tail;
use crate::paths;
use crate::stack::{Stack, StackOptions};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// The public client the gateway's client document names and the test provider registers.
pub const CLIENT_ID: &str = "scrim-cli";
/// The resource indicator (RFC 8707) of the gateway in login tests: the `aud` of its tokens.
pub const GATEWAY_AUDIENCE: &str = "https://gateway.scrim.test";

/// The document the gateway serves at `/.well-known/scrim-client`, made from its filter
/// configuration: the first issuer and its first audience, the dev client id, and (when the
/// audience is a URL) that audience sent as a resource indicator.
pub fn gateway_client_document(filter_config: &Value) -> Value {
    let issuer = &filter_config["issuers"][0];
    let audience = issuer["audiences"][0].as_str().unwrap_or_default();
    let mut params = serde_json::Map::new();
    if audience.starts_with("https://") || audience.starts_with("http://") {
        params.insert("resource".into(), json!(audience));
    }
    json!({
        "issuer": issuer["issuer"],
        "client_id": CLIENT_ID,
        "scopes": ["openid", "offline_access", "email"],
        "audience": audience,
        "request_params": params,
    })
}

/// How the test provider behaves.
#[derive(Debug, Clone)]
pub struct OidcOptions {
    /// Access-token lifetime in seconds (short ones make Claude Code refresh).
    pub access_token_ttl: u64,
    /// How long a device code may wait for approval, in seconds.
    pub device_code_ttl: u64,
    /// The `groups` claim of every access token.
    pub groups: Vec<String>,
}

impl Default for OidcOptions {
    fn default() -> Self {
        OidcOptions { access_token_ttl: 600, device_code_ttl: 600, groups: vec![crate::stack::DEV_GROUP.into()] }
    }
}

/// A running `oidc-provider`; killed when dropped.
pub struct OidcProvider {
    child: Option<tokio::process::Child>,
    pub issuer: String,
    pub addr: SocketAddr,
    pub log_path: PathBuf,
}

/// The installed package's entry module (`make test-tools` puts it there).
pub fn provider_entry() -> PathBuf {
    std::env::var_os("SCRIM_OIDC_PROVIDER")
        .map(PathBuf::from)
        .unwrap_or_else(|| paths::workspace_root().join("target/tools/oidc/node_modules/oidc-provider/lib/index.js"))
}

impl OidcProvider {
    /// Starts the provider on `addr` with issuer `http://addr` and waits until its discovery
    /// document answers.
    pub async fn start(addr: SocketAddr, run_dir: &Path, opts: &OidcOptions) -> Result<OidcProvider, String> {
        let entry = provider_entry();
        if !entry.exists() {
            return Err(format!("no oidc-provider at {}: run `make test-tools`", entry.display()));
        }
        let issuer = format!("http://{addr}");
        std::fs::create_dir_all(run_dir.join("logs")).map_err(|e| e.to_string())?;
        let log_path = run_dir.join("logs/oidc-provider.log");
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let log_err = log.try_clone().map_err(|e| e.to_string())?;
        let child = tokio::process::Command::new("node")
            .arg(paths::workspace_root().join("tests/oidc/provider.mjs"))
            .env("OIDC_PROVIDER_ENTRY", &entry)
            .env("OIDC_ISSUER", &issuer)
            .env("OIDC_PORT", addr.port().to_string())
            .env("OIDC_CLIENT_ID", CLIENT_ID)
            .env("OIDC_AUDIENCE", GATEWAY_AUDIENCE)
            .env("OIDC_GROUPS", json!(opts.groups).to_string())
            .env("OIDC_ACCESS_TOKEN_TTL", opts.access_token_ttl.to_string())
            .env("OIDC_DEVICE_CODE_TTL", opts.device_code_ttl.to_string())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start node: {e}"))?;
        let mut provider = OidcProvider { child: Some(child), issuer, addr, log_path };
        provider.wait_ready().await?;
        Ok(provider)
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let url = format!("{}/.well-known/openid-configuration", self.issuer);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!("oidc-provider exited ({status}):\n{}", tail(&self.log_path, 30)));
            }
            if let Ok(r) = client.get(&url).timeout(Duration::from_secs(1)).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(format!("oidc-provider not ready:\n{}", tail(&self.log_path, 30)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Revokes a token at the provider's revocation endpoint (RFC 7009), as an administrator
    /// or the provider's own session management would.
    pub async fn revoke(&self, token: &str) -> Result<(), String> {
        let resp = reqwest::Client::new()
            .post(format!("{}/token/revocation", self.issuer))
            .form(&[("token", token), ("client_id", CLIENT_ID)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("revocation answered {}: {}", resp.status(), resp.text().await.unwrap_or_default()))
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Stops the provider (a provider that is down).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

/// A gateway stack whose filter trusts the test provider: the stack's identity-provider port
/// is handed to `oidc-provider` (the Envoy JWKS cluster points there), tokens must carry
/// [`GATEWAY_AUDIENCE`], and no clock leeway, so an expired token is refused at once.
pub async fn start_stack(name: &'static str, opts: &OidcOptions) -> Result<(Stack, OidcProvider), String> {
    let stack = Stack::start(StackOptions {
        name,
        idp_up: false,
        filter_config: Some(Box::new(|mut c: Value| {
            c["issuers"][0]["audiences"] = json!([GATEWAY_AUDIENCE]);
            c["leeway_seconds"] = json!(0);
            c
        })),
        ..Default::default()
    })
    .await?;
    let provider = OidcProvider::start(stack.idp_addr, &stack.run_dir, opts).await?;
    Ok((stack, provider))
}

/// What the scripted browser ended on.
#[derive(Debug)]
pub struct Page {
    pub url: String,
    pub status: u16,
    pub body: String,
}

/// A browser reduced to what sign-in pages need: cookies, redirects, and submitting the one
/// form on a page (hidden fields as given, `login`/`password` filled in).
pub struct Browser {
    client: reqwest::Client,
    cookies: BTreeMap<String, String>,
    pub login: String,
}

impl Browser {
    pub fn new(login: &str) -> Browser {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("http client");
        Browser { client, cookies: BTreeMap::new(), login: login.into() }
    }

    /// Opens `url` and goes through the provider's pages until one has no form, or a redirect
    /// leaves the provider (`provider_origin`): that redirect is followed once (the loopback
    /// callback) and its answer returned.
    pub async fn sign_in(&mut self, url: &str, provider_origin: &str) -> Result<Page, String> {
        let mut next: (String, Option<Vec<(String, String)>>) = (url.to_string(), None);
        for _ in 0..30 {
            let (url, form) = next.clone();
            let leaving = !url.starts_with(provider_origin);
            let mut req = match &form {
                None => self.client.get(&url),
                Some(fields) => self.client.post(&url).form(fields),
            };
            if !leaving && !self.cookies.is_empty() {
                let header = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
                req = req.header("cookie", header);
            }
            let resp = req.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status().as_u16();
            for value in resp.headers().get_all("set-cookie") {
                self.set_cookie(&String::from_utf8_lossy(value.as_bytes()));
            }
            let location = resp.headers().get("location").map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned());
            let body = resp.text().await.unwrap_or_default();
            if leaving {
                return Ok(Page { url, status, body });
            }
            if (300..400).contains(&status) {
                let location = location.ok_or_else(|| format!("{url}: redirect without location"))?;
                let target = reqwest::Url::parse(&url).and_then(|u| u.join(&location)).map_err(|e| e.to_string())?;
                next = (target.to_string(), None);
                continue;
            }
            match find_form(&body) {
                Some((action, fields)) => {
                    let action = reqwest::Url::parse(&url).and_then(|u| u.join(&action)).map_err(|e| e.to_string())?;
                    let fields = fields
                        .into_iter()
                        .map(|(name, value)| match name.as_str() {
                            "login" => (name, self.login.clone()),
                            "password" => (name, "synthetic-password".into()),
                            _ => (name, value),
                        })
                        .collect();
                    next = (action.to_string(), Some(fields));
                }
                None => return Ok(Page { url, status, body }),
            }
        }
        Err("sign-in did not finish within 30 pages".into())
    }

    fn set_cookie(&mut self, header: &str) {
        let pair = header.split(';').next().unwrap_or_default();
        if let Some((name, value)) = pair.split_once('=') {
            let expired = header.to_ascii_lowercase().contains("expires=thu, 01 jan 1970");
            if value.is_empty() || expired {
                self.cookies.remove(name.trim());
            } else {
                self.cookies.insert(name.trim().to_string(), value.to_string());
            }
        }
    }
}

/// The first `<form method="post">` of a page: its action and its inputs' names and values.
fn find_form(html: &str) -> Option<(String, Vec<(String, String)>)> {
    let start = html.find("<form")?;
    let end = html[start..].find("</form>").map(|e| start + e)?;
    let form = &html[start..end];
    let tag_end = form.find('>')?;
    let action = attr(&form[..tag_end], "action")?;
    let mut fields = vec![];
    let mut rest = form;
    while let Some(i) = rest.find("<input") {
        let tag_close = rest[i..].find('>').map(|e| i + e)?;
        let tag = &rest[i..tag_close];
        if let Some(name) = attr(tag, "name") {
            fields.push((name, attr(tag, "value").unwrap_or_default()));
        }
        rest = &rest[tag_close..];
    }
    Some((html_unescape(&action), fields))
}

/// The value of `key="…"` in an HTML tag.
fn attr(tag: &str, key: &str) -> Option<String> {
    let needle = format!("{key}=\"");
    let mut from = 0;
    while let Some(i) = tag[from..].find(&needle) {
        let at = from + i;
        if at > 0 && tag.as_bytes()[at - 1].is_ascii_whitespace() {
            let value_start = at + needle.len();
            let value_end = tag[value_start..].find('"')? + value_start;
            return Some(html_unescape(&tag[value_start..value_end]));
        }
        from = at + needle.len();
    }
    None
}

fn html_unescape(s: &str) -> String {
    s.replace("&amp;", "&").replace("&quot;", "\"").replace("&#39;", "'").replace("&lt;", "<").replace("&gt;", ">")
}

/// The `scrim` binary, built now (`cargo build` is quick when it is up to date), so a test
/// never runs a stale copy.
pub fn scrim_binary() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("SCRIM_CLIENT") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).ok_or("no target directory")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = std::process::Command::new(cargo)
        .args(["build", "--locked", "-q", "-p", "scrim-client", "--bin", "scrim"])
        .current_dir(paths::workspace_root())
        .status()
        .map_err(|e| format!("cannot build scrim: {e}"))?;
    if !status.success() {
        return Err("building scrim failed".into());
    }
    Ok(profile_dir.join("scrim"))
}

/// A developer's machine for `scrim`: its own home (state and Claude Code settings inside).
pub struct Developer {
    pub home: PathBuf,
    pub scrim: PathBuf,
}

impl Developer {
    pub fn new(home: PathBuf) -> Result<Developer, String> {
        Ok(Developer { home, scrim: scrim_binary()? })
    }

    /// `scrim <args>` with only this developer's environment (no display: no browser).
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(&self.scrim);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &self.home)
            .current_dir(&self.home)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `scrim <args>` to the end: (success, stdout, stderr).
    pub async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = tokio::time::timeout(Duration::from_secs(120), self.command(args).output())
            .await
            .expect("scrim finishes")
            .expect("scrim runs");
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The session file `scrim login` writes.
    pub fn session_path(&self) -> PathBuf {
        self.home.join(".local/state/scrim/session.json")
    }

    pub fn session(&self) -> Option<Value> {
        serde_json::from_slice(&std::fs::read(self.session_path()).ok()?).ok()
    }
}
