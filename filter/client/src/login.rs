//! Signing in: the authorization code flow with PKCE and a loopback redirect (RFC 7636,
//! RFC 8252) when a browser can open, the device authorization grant (RFC 8628) otherwise.
//! Either ends in a token endpoint answer; nothing is stored unless every check passed.

use crate::error::{Error, Result};
use crate::http::{FormReply, Http};
use crate::settings::{ClientSettings, Provider};
use crate::tokens::TokenResponse;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// How long scrim waits for the browser to come back.
const BROWSER_WAIT: Duration = Duration::from_secs(300);

/// 32 random bytes, base64url: a PKCE verifier (43 characters) or a state value.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The S256 challenge of a PKCE verifier.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn scope(settings: &ClientSettings) -> String {
    settings.scopes.join(" ")
}

/// Whether a browser can be opened here: `$BROWSER` names one, or macOS, or a Linux desktop
/// session (no display means SSH or a container: use the device flow).
pub fn browser_available() -> bool {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    set("BROWSER") || cfg!(target_os = "macos") || set("DISPLAY") || set("WAYLAND_DISPLAY")
}

fn open_browser(url: &str) -> bool {
    let program = std::env::var("BROWSER").ok().filter(|b| !b.is_empty()).unwrap_or_else(|| {
        if cfg!(target_os = "macos") { "open".into() } else { "xdg-open".into() }
    });
    std::process::Command::new(program)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The authorization code flow with PKCE and a redirect to a port on 127.0.0.1.
pub fn with_browser(http: &Http, settings: &ClientSettings, provider: &Provider) -> Result<TokenResponse> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::SignIn(format!("cannot listen on loopback: {e}")))?;
    let port = listener.local_addr().map_err(|e| Error::SignIn(e.to_string()))?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = random_token();
    let state = random_token();
    let mut url = reqwest::Url::parse(&provider.authorization_endpoint)
        .map_err(|e| Error::Settings(format!("bad authorization endpoint: {e}")))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code")
            .append_pair("client_id", &settings.client_id)
            .append_pair("redirect_uri", &redirect_uri)
            .append_pair("scope", &scope(settings))
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        for (k, v) in &settings.request_params {
            q.append_pair(k, v);
        }
    }
    eprintln!("Opening your browser to sign in. If it does not open, visit:\n\n  {url}\n");
    if !open_browser(url.as_str()) {
        eprintln!("(could not start a browser; open the address above yourself)");
    }
    let code = wait_for_code(&listener, &state)?;
    let form = vec![
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("client_id", settings.client_id.as_str()),
        ("code_verifier", verifier.as_str()),
    ];
    token_request(http, settings, provider, form, "authorization code exchange")
}

fn token_request<'a>(
    http: &Http,
    settings: &'a ClientSettings,
    provider: &Provider,
    mut form: Vec<(&'a str, &'a str)>,
    step: &'static str,
) -> Result<TokenResponse> {
    for (k, v) in &settings.request_params {
        form.push((k.as_str(), v.as_str()));
    }
    match http.post_form::<TokenResponse>(&provider.token_endpoint, &form)? {
        FormReply::Ok(t) => Ok(t),
        FormReply::Refused(e) => Err(Error::Refused { step, code: e.error, description: e.error_description }),
    }
}

/// Serves the loopback redirect until the browser arrives at `/callback` (other requests,
/// a favicon say, get a 404), answers it, and returns the code once `state` matched.
fn wait_for_code(listener: &TcpListener, state: &str) -> Result<String> {
    let deadline = Instant::now() + BROWSER_WAIT;
    listener.set_nonblocking(true).map_err(|e| Error::SignIn(e.to_string()))?;
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return Err(Error::SignIn("the browser did not come back within 5 minutes".into()));
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => return Err(Error::SignIn(format!("loopback listener failed: {e}"))),
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
        let Some(target) = request_target(&stream) else { continue };
        let Some(query) = target.strip_prefix("/callback") else {
            respond(stream, "404 Not Found", "Not found.");
            continue;
        };
        let params: Vec<(String, String)> = reqwest::Url::parse(&format!("http://127.0.0.1{}", if query.is_empty() { "/" } else { query }))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let outcome = if get("state").as_deref() != Some(state) {
            Err(Error::SignIn("the answer's state does not match this sign-in (a forged or stale redirect); nothing was stored".into()))
        } else if let Some(err) = get("error") {
            let desc = get("error_description").map(|d| format!(" ({d})")).unwrap_or_default();
            Err(Error::SignIn(format!("the identity provider answered `{err}`{desc}")))
        } else {
            get("code").ok_or_else(|| Error::SignIn("the redirect carried no code".into()))
        };
        match &outcome {
            Ok(_) => respond(stream, "200 OK", "Signed in. You can close this tab and return to the terminal."),
            Err(e) => respond(stream, "400 Bad Request", &format!("Sign-in failed: {e}")),
        }
        return outcome;
    }
}

/// The request target of an HTTP/1 request line (`GET /callback?… HTTP/1.1`).
fn request_target(stream: &TcpStream) -> Option<String> {
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let _method = parts.next()?;
    parts.next().map(str::to_string)
}

fn respond(mut stream: TcpStream, status: &str, text: &str) {
    let body = format!("<!doctype html><meta charset=utf-8><title>scrim</title><p>{}</p>", html_escape(text));
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    expires_in: u64,
    #[serde(default)]
    interval: Option<u64>,
}

/// The device authorization grant: show a code and an address, poll until approved.
pub fn with_device(http: &Http, settings: &ClientSettings, provider: &Provider) -> Result<TokenResponse> {
    let endpoint = provider.device_authorization_endpoint.as_deref().ok_or_else(|| {
        Error::Settings(format!("`{}` offers no device authorization endpoint: sign in on a machine with a browser", provider.issuer))
    })?;
    let scope = scope(settings);
    let mut form = vec![("client_id", settings.client_id.as_str()), ("scope", scope.as_str())];
    for (k, v) in &settings.request_params {
        form.push((k.as_str(), v.as_str()));
    }
    let auth = match http.post_form::<DeviceAuthorization>(endpoint, &form)? {
        FormReply::Ok(a) => a,
        FormReply::Refused(e) => {
            return Err(Error::Refused { step: "device authorization", code: e.error, description: e.error_description })
        }
    };
    eprintln!("To sign in, open {} and enter the code {}", auth.verification_uri, auth.user_code);
    if let Some(complete) = &auth.verification_uri_complete {
        eprintln!("or open {complete}");
    }
    eprintln!("Waiting for approval…");
    let deadline = Instant::now() + Duration::from_secs(auth.expires_in);
    // RFC 8628 §3.5: 5 seconds unless the provider says otherwise; slow_down adds 5.
    let mut interval = Duration::from_secs(auth.interval.unwrap_or(5).max(1));
    loop {
        std::thread::sleep(interval);
        let form = vec![
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", auth.device_code.as_str()),
            ("client_id", settings.client_id.as_str()),
        ];
        match token_request(http, settings, provider, form, "device code") {
            Ok(t) => return Ok(t),
            Err(Error::Refused { code, description, .. }) => match code.as_str() {
                "authorization_pending" => {}
                "slow_down" => interval += Duration::from_secs(5),
                "expired_token" => {
                    return Err(Error::SignIn("the device code expired before it was approved; run `scrim login` again".into()))
                }
                "access_denied" => return Err(Error::SignIn("the sign-in was denied".into())),
                _ => return Err(Error::Refused { step: "device code", code, description }),
            },
            Err(e) => return Err(e),
        }
        if Instant::now() > deadline {
            return Err(Error::SignIn("the device code expired before it was approved; run `scrim login` again".into()));
        }
    }
}
