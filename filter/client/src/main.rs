//! `scrim`: the developer's side of the Scrim gateway. `scrim login` signs in with the
//! company's identity provider, `scrim token` prints a fresh access token (Claude Code's
//! `apiKeyHelper`), `scrim setup claude-code` points Claude Code at the gateway.
//!
//! - [`settings`]: the gateway's client document and the provider's discovery document.
//! - [`login`]: the PKCE loopback flow and the device flow.
//! - [`tokens`]: checking token answers and refreshing near expiry.
//! - [`store`]: the 0600 session file and its lock.
//! - [`claude`]: merging Claude Code's settings.

mod claude;
mod error;
mod http;
mod login;
mod settings;
mod store;
mod tokens;

use error::{Error, Result};
use http::Http;
use std::time::{SystemTime, UNIX_EPOCH};
use store::{Session, Store};

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// `--name value` pairs and bare `--flag`s after the command words.
struct Args {
    words: Vec<String>,
    gateway: Option<String>,
    device: bool,
}

fn parse(args: impl Iterator<Item = String>) -> Result<Args> {
    let mut out = Args { words: vec![], gateway: None, device: false };
    let mut args = args.peekable();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--gateway" => out.gateway = Some(args.next().ok_or_else(|| Error::Usage("--gateway needs a URL".into()))?),
            s if s.starts_with("--gateway=") => out.gateway = Some(s["--gateway=".len()..].to_string()),
            "--device" => out.device = true,
            "-h" | "--help" => return Err(Error::Usage("scrim signs you in to a Scrim gateway".into())),
            s if s.starts_with('-') => return Err(Error::Usage(format!("unknown option `{s}`"))),
            _ => out.words.push(a),
        }
    }
    Ok(out)
}

fn main() {
    let result = parse(std::env::args().skip(1)).and_then(run);
    if let Err(e) = result {
        eprintln!("scrim: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<()> {
    let words: Vec<&str> = args.words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["login"] => cmd_login(args.gateway, args.device),
        ["token"] => {
            let token = tokens::current_access_token(&Store::open()?, &Http::new()?, now)?;
            println!("{token}");
            Ok(())
        }
        ["status"] => cmd_status(),
        ["logout"] => cmd_logout(),
        ["setup", "claude-code"] => cmd_setup(args.gateway),
        [] => Err(Error::Usage("no command given".into())),
        other => Err(Error::Usage(format!("unknown command `{}`", other.join(" ")))),
    }
}

/// The gateway named on the command line, else the one of the last sign-in.
fn gateway_or_stored(flag: Option<String>, store: &Store) -> Result<String> {
    match flag.or_else(|| std::env::var("SCRIM_GATEWAY").ok().filter(|g| !g.is_empty())) {
        Some(g) => settings::normalize_gateway(&g),
        None => store
            .load()?
            .map(|s| s.gateway)
            .ok_or_else(|| Error::Usage("which gateway? give --gateway https://your-gateway".into())),
    }
}

fn cmd_login(gateway: Option<String>, device: bool) -> Result<()> {
    let store = Store::open()?;
    let gateway = gateway_or_stored(gateway, &store)?;
    let http = Http::new()?;
    let settings = settings::fetch_client_settings(&http, &gateway)?;
    let provider = settings::discover(&http, &settings.issuer)?;
    let answer = if device || !login::browser_available() {
        login::with_device(&http, &settings, &provider)?
    } else {
        login::with_browser(&http, &settings, &provider)?
    };
    let mut session = Session { gateway, settings, provider, tokens: None };
    let fresh = tokens::accept(answer, &session, None, now())?;
    let who = fresh.subject.clone().unwrap_or_else(|| "(unknown subject)".into());
    let expires_in = fresh.expires_at.saturating_sub(now());
    let refresh = fresh.refresh_token.is_some();
    session.tokens = Some(fresh);
    {
        let _lock = store.lock()?;
        store.save(&session)?;
    }
    println!("Signed in to {} as {who} (issuer {}).", session.gateway, session.provider.issuer);
    println!("The access token expires in {expires_in} s; {}", if refresh {
        "`scrim token` renews it with the refresh token."
    } else {
        "the provider gave no refresh token, so you will sign in again when it expires (ask for the offline_access scope)."
    });
    Ok(())
}

fn cmd_status() -> Result<()> {
    let store = Store::open()?;
    let session = store.load()?.ok_or_else(|| Error::LoginRequired("not signed in".into()))?;
    println!("gateway:  {}", session.gateway);
    println!("issuer:   {}", session.provider.issuer);
    println!("client:   {}", session.settings.client_id);
    let Some(t) = &session.tokens else {
        return Err(Error::LoginRequired("signed out".into()));
    };
    println!("user:     {}", t.subject.as_deref().unwrap_or("(unknown)"));
    let now = now();
    if t.expires_at > now {
        println!("expires:  in {} s (at {} UTC epoch seconds)", t.expires_at - now, t.expires_at);
    } else {
        println!("expires:  {} s ago (at {})", now - t.expires_at, t.expires_at);
    }
    println!("refresh:  {}", if t.refresh_token.is_some() { "yes" } else { "no" });
    Ok(())
}

fn cmd_logout() -> Result<()> {
    let store = Store::open()?;
    let _lock = store.lock()?;
    let Some(session) = store.load()? else {
        println!("Not signed in.");
        return Ok(());
    };
    // Revoke at the provider first (RFC 7009), so a copied file is worthless too; best effort.
    if let (Some(endpoint), Some(refresh)) =
        (&session.provider.revocation_endpoint, session.tokens.as_ref().and_then(|t| t.refresh_token.as_deref()))
    {
        let form = [("token", refresh), ("token_type_hint", "refresh_token"), ("client_id", session.settings.client_id.as_str())];
        if let Err(e) = Http::new()?.post_form_ok(endpoint, &form) {
            eprintln!("scrim: warning: could not revoke the refresh token ({e}); the local copy is deleted anyway");
        }
    }
    store.remove()?;
    println!("Signed out of {}.", session.gateway);
    Ok(())
}

fn cmd_setup(gateway: Option<String>) -> Result<()> {
    let store = Store::open()?;
    let gateway = gateway_or_stored(gateway, &store)?;
    let exe = std::env::current_exe().map_err(|e| Error::Settings(format!("cannot find the scrim binary's path: {e}")))?;
    let path = claude::setup(&gateway, &exe)?;
    println!("Claude Code now uses {gateway} with `{}` ({}).", claude::helper_command(&exe), path.display());
    for var in ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"] {
        if std::env::var_os(var).is_some() {
            eprintln!("scrim: note: {var} is set in your environment; unset it so Claude Code uses the helper");
        }
    }
    Ok(())
}
