//! The auditor side of the `scrim-recorder` binary: `replay`, `usage`, starting the HTTP query
//! API inside `serve`, and progress lines for long walks. Printing only; the logic lives in
//! the library ([`scrim_recorder::replay`], [`scrim_recorder::api`], the store).

use crate::CliError;
use scrim_recorder::api::{self, Api, ApiConfig};
use scrim_recorder::replay::{self, Speaker};
use scrim_recorder::store::{self, ExchangeFilter, Store};
use scrim_recorder::time::{format_ms, parse_ms};
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `--color` of `replay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    /// Highlight when standard output is a terminal and `NO_COLOR` is unset.
    Auto,
    Always,
    Never,
}

/// Prints the session as the developer saw it; masked spans highlighted (reverse video) or,
/// without colour, wrapped in `»…«`.
pub fn replay(
    store: &dyn Store,
    session: &str,
    json: bool,
    color: Color,
    out: &mut impl Write,
) -> Result<(), CliError> {
    let exchanges = store.session(session)?;
    if exchanges.is_empty() {
        return Err(CliError::NoSuchSession(session.to_owned()));
    }
    let turns = replay::turns(&exchanges);
    if json {
        serde_json::to_writer_pretty(&mut *out, &turns).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    let colored = match color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    };
    let (open, close) = if colored {
        ("\x1b[7m", "\x1b[0m")
    } else {
        ("»", "«")
    };
    let mut current = None;
    for t in &turns {
        if current != Some(t.seq) {
            current = Some(t.seq);
            let ex = exchanges
                .iter()
                .find(|e| e.seq == t.seq)
                .expect("turn of an exchange");
            let r = &ex.stored.record;
            writeln!(
                out,
                "── {}  exchange {}{}",
                t.at_ms.map(format_ms).unwrap_or_else(|| "-".into()),
                t.exchange_id,
                r.model
                    .as_deref()
                    .map(|m| format!("  {m}"))
                    .unwrap_or_default()
            )?;
            let masked: Vec<String> = r
                .masked
                .iter()
                .map(|m| format!("{} x{} in {:?}", m.rule, m.count, m.direction).to_lowercase())
                .collect();
            if !masked.is_empty() {
                writeln!(out, "   masked: {}", masked.join(", "))?;
            }
        }
        let who = match t.speaker {
            Speaker::User => "user",
            Speaker::Assistant => "assistant",
            Speaker::Gateway => "gateway",
        };
        let label = match (&t.kind[..], &t.name) {
            ("text", _) => who.to_owned(),
            (kind, Some(name)) => format!("{who} [{kind} {name}]"),
            (kind, None) => format!("{who} [{kind}]"),
        };
        let text = replay::mark(&t.text, &t.masked, open, close);
        writeln!(out, "{label}: {}", text.trim_end().replace('\n', "\n    "))?;
    }
    Ok(())
}

/// Arguments of `usage`.
pub struct UsageArgs {
    pub from: Option<String>,
    pub to: Option<String>,
    pub user: Option<String>,
    pub json: bool,
}

fn time_arg(flag: &'static str, value: Option<String>) -> Result<Option<i64>, CliError> {
    value
        .map(|v| parse_ms(&v).ok_or(CliError::BadTime { flag, value: v }))
        .transpose()
}

/// Per-user requests, tokens, masked secrets and refusals over a period.
pub fn usage(store: &dyn Store, args: UsageArgs, out: &mut impl Write) -> Result<(), CliError> {
    let filter = ExchangeFilter {
        subject: args.user,
        from_ms: time_arg("--from", args.from)?,
        to_ms: time_arg("--to", args.to)?,
        ..ExchangeFilter::default()
    };
    let rows = store.usage_by_user(&filter)?;
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &rows).map_err(std::io::Error::from)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<24} {:>8} {:>12} {:>12} {:>12} {:>12} {:>7} {:>7}",
        "user", "requests", "in tok", "out tok", "cache read", "cache write", "masked", "refused"
    )?;
    for u in rows {
        writeln!(
            out,
            "{:<24} {:>8} {:>12} {:>12} {:>12} {:>12} {:>7} {:>7}",
            u.subject.as_deref().unwrap_or("(no identity)"),
            u.requests,
            u.input_tokens,
            u.output_tokens,
            u.cache_read_input_tokens,
            u.cache_creation_input_tokens,
            u.masked,
            u.refused
        )?;
    }
    Ok(())
}

/// The HTTP query API running beside ingest.
pub struct ApiServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl ApiServer {
    /// Binds `listen` and starts serving (inside a runtime).
    pub async fn start(
        listen: &str,
        config: ApiConfig,
        db: String,
        keys: Option<Arc<scrim_recorder::chain_keys::ChainKeys>>,
    ) -> Result<ApiServer, CliError> {
        // Review and grant decisions append sealed events, like ingest.
        let open: api::OpenStore = Arc::new(move || store::open_keyed(&db, keys.clone()));
        let api = Api::start(config, open).await;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        log::info!("auditor API on http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(api::serve(listener, api::router(api), async {
            stopped.await.ok();
        }));
        Ok(ApiServer { stop, task })
    }

    pub async fn stop(self) -> Result<(), CliError> {
        self.stop.send(()).ok();
        self.task.await.map_err(std::io::Error::other)??;
        Ok(())
    }
}

/// Below this many records a walk prints no progress.
const PROGRESS_FROM: u64 = 10_000;

/// `what: n/total (p%)` on standard error, each whole percent on a terminal, each tenth
/// otherwise; silent for small stores.
pub struct Progress {
    what: &'static str,
    total: u64,
    done: u64,
    shown: u64,
    terminal: bool,
}

impl Progress {
    pub fn new(what: &'static str, total: u64) -> Progress {
        Progress {
            what,
            total,
            done: 0,
            shown: 0,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn tick(&mut self) {
        self.done += 1;
        if self.total < PROGRESS_FROM {
            return;
        }
        let step = if self.terminal { 100 } else { 10 };
        let level = self.done * step / self.total.max(1);
        if level > self.shown {
            self.shown = level;
            let (lead, end) = if self.terminal {
                ("\r", "")
            } else {
                ("", "\n")
            };
            eprint!(
                "{lead}{}: {}/{} records ({}%){end}",
                self.what,
                self.done,
                self.total,
                self.done * 100 / self.total.max(1)
            );
        }
    }

    pub fn finish(self) {
        if self.total >= PROGRESS_FROM && self.terminal {
            eprintln!();
        }
    }
}

/// Runs `f` (one store call with no progress hook, such as `verify`) while printing the
/// elapsed time every two seconds for stores of at least [`PROGRESS_FROM`] records.
pub fn with_elapsed<T>(what: &str, total: u64, f: impl FnOnce() -> T) -> T {
    if total < PROGRESS_FROM {
        return f();
    }
    let started = Instant::now();
    let (done, ticker_stop) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                ticker_stop.recv_timeout(Duration::from_secs(2))
            {
                eprintln!(
                    "{what}: {total} records, {} s so far",
                    started.elapsed().as_secs()
                );
            }
        });
        let result = f();
        drop(done);
        eprintln!(
            "{what}: {total} records in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        result
    })
}

/// The API's configuration from `serve`'s flags: the token check in the filter's format, the
/// CA file for https JWKS, the service token file.
pub fn api_config(
    auth_config: &Path,
    auditor_group: &str,
    jwks_ca: Option<&Path>,
    approver_group: &str,
    service_token_file: Option<&Path>,
    max_grant_seconds: u64,
) -> Result<ApiConfig, CliError> {
    let bytes = std::fs::read(auth_config).map_err(|e| CliError::AuthConfig {
        path: auth_config.display().to_string(),
        message: e.to_string(),
    })?;
    let auth = scrim_core::config::Config::from_json(&bytes).map_err(|e| CliError::AuthConfig {
        path: auth_config.display().to_string(),
        message: e.to_string(),
    })?;
    let mut config = ApiConfig::auditing(auth, auditor_group);
    if let Some(path) = jwks_ca {
        let bad = |message: String| CliError::JwksCa { path: path.display().to_string(), message };
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        config.jwks_roots = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
        if config.jwks_roots.is_empty() {
            return Err(bad("no PEM certificate in the file".into()));
        }
    }
    if let Some(path) = service_token_file {
        let bad = |message: String| CliError::ServiceToken { path: path.display().to_string(), message };
        let token = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let token = token.trim();
        if token.len() < 32 {
            return Err(bad("the token must be at least 32 characters".into()));
        }
        config.service_token = Some(token.to_string());
    }
    config.approver_group = approver_group.to_string();
    config.max_grant_seconds = max_grant_seconds;
    Ok(config)
}
