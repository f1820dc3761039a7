//! `scrim-recorder`: the recorder's command line (serve, sessions, replay, usage, verify,
//! export, purge).

mod approvals_cli;
mod audit_cli;

use clap::{Args, Parser, Subcommand};
use scrim_recorder::chain_keys::ChainKeys;
use scrim_recorder::ingest::{self, Ingest, IngestConfig};
use scrim_recorder::store::{self, Exchange, SessionQuery, Store, StoreError};
use scrim_recorder::time::format_ms;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

const EXAMPLES: &str = "\
Examples:
  # Receive Envoy's access log on 127.0.0.1:9904 into ./audit.db; Envoy presents the token
  # in the file (its grpc_service initial_metadata `authorization: Bearer ...`)
  scrim-recorder --db audit.db --chain-key-file /run/secrets/scrim-chain-keys \
      serve --ingest-token-file /run/secrets/scrim-ingest-token

  # Recent sessions of one user, as text and as JSON
  scrim-recorder --db audit.db sessions list --user alice
  scrim-recorder --db audit.db sessions list --json

  # Every exchange of one session
  scrim-recorder --db audit.db sessions show 3f2c9a4e-session-id

  # Check the hash chain and its seals; exit status 1 if anything was altered, inserted or
  # deleted, with the first bad record named
  scrim-recorder --db audit.db --chain-key-file /run/secrets/scrim-chain-keys verify

  # Everything as JSON Lines
  scrim-recorder --db audit.db export > audit.jsonl

  # Drop request and response content older than 90 days (metadata and hashes stay; the
  # purge itself becomes a sealed chain event)
  scrim-recorder --db audit.db --chain-key-file /run/secrets/scrim-chain-keys purge --older-than 90

  # Also answer auditors over HTTP (tokens checked as the gateway does; group `auditors` sees all)
  scrim-recorder --db audit.db serve --http-listen 127.0.0.1:9902 \
      --auth-config recorder-auth.json --auditor-group auditors

  # A session as the developer saw it, masked secrets highlighted
  scrim-recorder --db audit.db replay 3f2c9a4e-session-id

  # Requests, tokens, masked secrets and refusals per user in March 2025
  scrim-recorder --db audit.db usage --from 2025-03-01 --to 2025-04-01

  # Approvers: pending reviews, then a decision (token of a member of the approver group)
  SCRIM_TOKEN=$APPROVER_TOKEN scrim-recorder reviews list --status pending
  SCRIM_TOKEN=$APPROVER_TOKEN scrim-recorder reviews approve rv-1a2b3c4d5e6f7a8b --reason 'known host'

  # A contractor asks for two hours of access; an approver grants it, later revokes it
  SCRIM_TOKEN=$MY_TOKEN scrim-recorder grants request --duration 2h --reason 'incident 42'
  SCRIM_TOKEN=$APPROVER_TOKEN scrim-recorder grants approve gr-0a1b2c3d4e5f6a7b --reason 'on call'
  SCRIM_TOKEN=$APPROVER_TOKEN scrim-recorder grants revoke gr-0a1b2c3d4e5f6a7b --reason 'done'

  # Several recorders sharing one PostgreSQL database, each beside its own Envoy on loopback
  scrim-recorder --db postgres://scrim@db.internal/audit \
      --chain-key-file /run/secrets/scrim-chain-keys \
      serve --ingest-token-file /run/secrets/scrim-ingest-token";

/// Scrim recorder: stores the audit record of every exchange Envoy logs, hash-chained.
#[derive(Parser)]
#[command(version, after_help = EXAMPLES)]
struct Cli {
    /// SQLite database file (created if absent), or a `postgres://user@host:port/db` URL to
    /// store in PostgreSQL (tables created if absent; several recorders may share it).
    #[arg(
        long,
        env = "SCRIM_RECORDER_DB",
        global = true,
        default_value = "scrim-recorder.db"
    )]
    db: String,
    /// Chain key file (`<key-id> <secret>` per line, the last one seals new records; see
    /// README, Auditing). Needed by `serve` and `purge`; `verify` checks seals only with it.
    #[arg(long, env = "SCRIM_RECORDER_CHAIN_KEY_FILE", global = true)]
    chain_key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    target: approvals_cli::ApiTarget,
}

#[derive(Subcommand)]
enum Command {
    /// Receive Envoy's gRPC access log (AccessLogService) and store each exchange.
    Serve(ServeArgs),
    /// List or show sessions.
    #[command(subcommand)]
    Sessions(SessionsCommand),
    /// Reviews of requests held by approval rules (through the HTTP API, with your token).
    #[command(subcommand)]
    Reviews(approvals_cli::ReviewsCommand),
    /// Just-in-time grants (through the HTTP API, with your token).
    #[command(subcommand)]
    Grants(approvals_cli::GrantsCommand),
    /// Walk the hash chain and report altered, inserted or deleted records.
    Verify {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write every exchange as JSON Lines, in chain order.
    Export {
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A session as the developer saw it: their messages and the replies in order, with
    /// timestamps; masked secrets highlighted.
    Replay {
        session: String,
        #[arg(long)]
        json: bool,
        /// Highlight masked spans with reverse video (else they are wrapped in »«).
        #[arg(long, value_enum, default_value = "auto")]
        color: audit_cli::Color,
    },
    /// Requests, tokens (input, output, cache), masked secrets and refusals per user.
    Usage {
        /// Start of the period: epoch ms, `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SSZ` (UTC).
        #[arg(long)]
        from: Option<String>,
        /// End of the period (exclusive), same forms.
        #[arg(long)]
        to: Option<String>,
        /// Only this subject.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Remove request and response content of exchanges older than DAYS. Identity, decision,
    /// counts, usage, timings and hashes stay, so `verify` still passes.
    Purge {
        /// Retention period: exchanges that started more than this many days ago lose their
        /// content.
        #[arg(long, value_name = "DAYS")]
        older_than: u32,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address for Envoy's access-log gRPC stream (port 0 picks a free port, printed on start).
    /// Keep it on loopback or a private interface beside Envoy: the token is sent in clear.
    #[arg(long, default_value = "127.0.0.1:9904")]
    grpc_listen: String,
    /// File holding the token Envoy presents on the access-log stream (`authorization: Bearer
    /// <token>` in the gRPC service's initial_metadata); at least 32 characters. Streams
    /// without it are refused, counted and logged; none of their entries is stored.
    #[arg(long, env = "SCRIM_RECORDER_INGEST_TOKEN_FILE")]
    ingest_token_file: PathBuf,
    /// Largest audit record accepted; larger ones are counted and dropped.
    #[arg(long, default_value_t = IngestConfig::default().max_record_bytes)]
    max_record_bytes: usize,
    /// Also serve the auditors' HTTP/JSON query API on this address (needs --auth-config).
    #[arg(long, requires = "auth_config")]
    http_listen: Option<String>,
    /// The query API's token check, in the gateway filter's configuration format (issuers
    /// with inline `jwks` or an http(s) `jwks_uri`; `allowed_groups` may query at all).
    #[arg(long)]
    auth_config: Option<PathBuf>,
    /// PEM certificates to trust for https `jwks_uri`s besides the system's roots (an
    /// identity provider behind a private CA).
    #[arg(long, requires = "auth_config")]
    jwks_ca_file: Option<PathBuf>,
    /// Members of this group see every user's sessions; others only their own.
    #[arg(long, default_value = "auditors")]
    auditor_group: String,
    /// Members of this group approve or reject reviews and grants (never their own).
    #[arg(long, default_value = "approvers")]
    approver_group: String,
    /// File holding the token the gateway's filter presents to ask about reviews and grants
    /// (at least 32 characters; Envoy has it as SCRIM_RECORDER_SERVICE_TOKEN). Without it
    /// the filter's routes are off.
    #[arg(long, env = "SCRIM_RECORDER_SERVICE_TOKEN_FILE", requires = "auth_config")]
    service_token_file: Option<PathBuf>,
    /// Longest just-in-time grant a user may ask for, in seconds.
    #[arg(long, default_value_t = 8 * 3600)]
    max_grant_seconds: u64,
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// Sessions, most recent first.
    List {
        /// Only sessions of this subject (the token's `sub`).
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// The exchanges of one session, in order.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

/// Why a command failed; printed once by `main`.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("gRPC server: {0}")]
    Server(#[from] tonic::transport::Error),
    #[error("session {0} not found")]
    NoSuchSession(String),
    #[error("--auth-config {path}: {message}")]
    AuthConfig { path: String, message: String },
    #[error("--jwks-ca-file {path}: {message}")]
    JwksCa { path: String, message: String },
    #[error("--ingest-token-file {0}")]
    IngestToken(scrim_recorder::secret_file::SecretError),
    #[error("--chain-key-file {0}")]
    ChainKeys(scrim_recorder::secret_file::SecretError),
    #[error("{0} needs --chain-key-file: records and purge events are sealed with it")]
    NoChainKeys(&'static str),
    #[error("--service-token-file {path}: {message}")]
    ServiceToken { path: String, message: String },
    #[error("{0}")]
    Approvals(#[from] approvals_cli::ApprovalsError),
    #[error("{flag} {value}: not epoch ms, YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ")]
    BadTime { flag: &'static str, value: String },
}

fn main() -> ExitCode {
    log::set_logger(&StderrLogger).ok();
    log::set_max_level(log::LevelFilter::Info);
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("scrim-recorder: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.command {
        Command::Reviews(command) => {
            approvals_cli::reviews(&cli.target, command)?;
            return Ok(ExitCode::SUCCESS);
        }
        Command::Grants(command) => {
            approvals_cli::grants(&cli.target, command)?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let keys = match &cli.chain_key_file {
        Some(path) => Some(Arc::new(ChainKeys::load(path).map_err(CliError::ChainKeys)?)),
        None => None,
    };
    match (&cli.command, &keys) {
        (Command::Serve(_), None) => return Err(CliError::NoChainKeys("serve")),
        (Command::Purge { .. }, None) => return Err(CliError::NoChainKeys("purge")),
        _ => {}
    }
    let mut store = store::open_keyed(&cli.db, keys.clone())?;
    let mut out = std::io::stdout().lock();
    match cli.command {
        Command::Serve(args) => {
            drop(out);
            serve(store, args, cli.db, keys)?;
        }
        Command::Sessions(SessionsCommand::List { user, limit, json }) => {
            let sessions = store.sessions(&SessionQuery {
                subject: user,
                limit: Some(limit),
            })?;
            if json {
                serde_json::to_writer_pretty(&mut out, &sessions).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{:<38} {:<20} {:>5} {:>5} {:<24} {:>9} {:>9}  models",
                    "session", "user", "exch", "refus", "last", "in tok", "out tok"
                )?;
                for s in sessions {
                    writeln!(
                        out,
                        "{:<38} {:<20} {:>5} {:>5} {:<24} {:>9} {:>9}  {}",
                        s.session_id,
                        s.subjects.join(","),
                        s.exchanges,
                        s.refused,
                        s.last_ms.map(format_ms).unwrap_or_default(),
                        s.input_tokens,
                        s.output_tokens,
                        s.models.join(",")
                    )?;
                }
            }
        }
        Command::Sessions(SessionsCommand::Show { id, json }) => {
            let exchanges = store.session(&id)?;
            if exchanges.is_empty() {
                return Err(CliError::NoSuchSession(id));
            }
            if json {
                serde_json::to_writer_pretty(&mut out, &exchanges).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                for ex in &exchanges {
                    print_exchange(&mut out, ex)?;
                }
            }
        }
        Command::Verify { json } => {
            let records = store.usage()?.records;
            let report = audit_cli::with_elapsed("verify", records, || store.verify())?;
            if json {
                serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "{} records, {} content pieces",
                    report.records, report.content_pieces
                )?;
                if let Some((seq, hash)) = &report.head {
                    writeln!(out, "head: record {seq} {hash}")?;
                }
                if let Some(t) = report.purged_before_ms {
                    writeln!(out, "content purged before {} (retention, per the chain's purge events)", format_ms(t))?;
                }
                if report.seals_checked {
                    for (key_id, n) in &report.sealed_by {
                        writeln!(out, "sealed with key {key_id}: {n} records")?;
                    }
                } else {
                    writeln!(out, "seals not checked (no --chain-key-file): plain hashes can be recomputed by anyone")?;
                }
                for p in &report.problems {
                    writeln!(out, "PROBLEM: {p}")?;
                }
                if let Some(seq) = report.first_bad_seq {
                    writeln!(out, "first bad record: {seq}")?;
                }
                if report.problems.is_empty() {
                    writeln!(out, "chain intact")?;
                }
            }
            if !report.problems.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        Command::Replay {
            session,
            json,
            color,
        } => audit_cli::replay(&*store, &session, json, color, &mut out)?,
        Command::Usage {
            from,
            to,
            user,
            json,
        } => {
            let args = audit_cli::UsageArgs {
                from,
                to,
                user,
                json,
            };
            audit_cli::usage(&*store, args, &mut out)?
        }
        Command::Reviews(_) | Command::Grants(_) => unreachable!("answered before the store is opened"),
        Command::Purge { older_than, json } => {
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let report = store.purge(&store::PurgeRequest {
                before_ms: store::retention_cutoff_ms(now_ms, older_than),
                now_ms,
                command: format!("purge --older-than {older_than}"),
            })?;
            if json {
                serde_json::to_writer_pretty(&mut out, &report).map_err(std::io::Error::from)?;
                writeln!(out)?;
            } else {
                writeln!(
                    out,
                    "content purged before {}: {} pieces, {} bytes removed; {} records keep their metadata",
                    format_ms(report.purged_before_ms),
                    report.pieces_removed,
                    report.bytes_removed,
                    report.records_before
                )?;
            }
        }
        Command::Export { out: path } => {
            let mut sink: Box<dyn Write> = match path {
                Some(p) => Box::new(std::io::BufWriter::new(std::fs::File::create(p)?)),
                None => Box::new(std::io::BufWriter::new(out)),
            };
            let mut io_error = None;
            let mut progress = audit_cli::Progress::new("export", store.usage()?.records);
            store.for_each(&mut |ex| {
                progress.tick();
                let line = serde_json::to_string(&ex).expect("exchange serialises");
                if let Err(e) = writeln!(sink, "{line}") {
                    io_error.get_or_insert(e);
                }
                Ok(())
            })?;
            progress.finish();
            if let Some(e) = io_error {
                return Err(e.into());
            }
            sink.flush()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn serve(
    store: Box<dyn Store>,
    args: ServeArgs,
    db: String,
    keys: Option<Arc<ChainKeys>>,
) -> Result<(), CliError> {
    let ingest_token = scrim_recorder::secret_file::read_secret(&args.ingest_token_file)
        .map_err(CliError::IngestToken)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.grpc_listen).await?;
        let ingest = Ingest::new(
            Arc::new(Mutex::new(store)),
            IngestConfig {
                max_record_bytes: args.max_record_bytes,
                ..IngestConfig::default()
            },
        )
        .with_token(&ingest_token);
        let stats = ingest.stats();
        log::info!(
            "listening for Envoy access logs on {}",
            listener.local_addr()?
        );
        let api = match (&args.http_listen, &args.auth_config) {
            (Some(listen), Some(auth)) => Some(
                audit_cli::ApiServer::start(
                    listen,
                    audit_cli::api_config(
                        auth,
                        &args.auditor_group,
                        args.jwks_ca_file.as_deref(),
                        &args.approver_group,
                        args.service_token_file.as_deref(),
                        args.max_grant_seconds,
                    )?,
                    db,
                    keys,
                )
                .await?,
            ),
            _ => None,
        };
        let shutdown = async {
            tokio::signal::ctrl_c().await.ok();
        };
        ingest::serve(listener, ingest, shutdown).await?;
        if let Some(api) = api {
            api.stop().await?;
        }
        log::info!("stopped; {:?}", stats.snapshot());
        Ok(())
    })
}

fn print_exchange(out: &mut impl Write, ex: &Exchange) -> std::io::Result<()> {
    let r = &ex.stored.record;
    let e = &ex.stored.envoy;
    writeln!(
        out,
        "#{} {} {} {} {} -> {} {}{}",
        ex.seq,
        e.start_time_ms.map(format_ms).unwrap_or_else(|| "-".into()),
        r.exchange_id,
        r.method,
        r.endpoint,
        e.response_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into()),
        r.decision.as_str(),
        r.reason
            .as_deref()
            .map(|x| format!(" ({x})"))
            .unwrap_or_default(),
    )?;
    if let Some(u) = &r.user {
        writeln!(
            out,
            "   user {} <{}> groups {}",
            u.subject,
            u.email.as_deref().unwrap_or(""),
            u.groups.join(",")
        )?;
    }
    if let Some(m) = &r.model {
        let usage = r.usage.unwrap_or_default();
        writeln!(
            out,
            "   model {m}  tokens in {} out {} cache read {} write {}",
            usage.input_tokens,
            usage.output_tokens,
            usage.cache_read_input_tokens,
            usage.cache_creation_input_tokens
        )?;
    }
    for m in &r.masked {
        writeln!(
            out,
            "   masked {} x{} in {:?}",
            m.rule, m.count, m.direction
        )?;
    }
    let flags = [
        (r.stream, "stream"),
        (r.client_disconnected, "client disconnected"),
        (r.truncated, "truncated"),
    ];
    let flags: Vec<&str> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
    if !flags.is_empty() || !e.response_flags.is_empty() {
        writeln!(
            out,
            "   flags {} {}",
            flags.join(", "),
            e.response_flags.join(",")
        )?;
    }
    if let Some(resp) = &r.response {
        for b in &resp.blocks {
            let text: String = b.text.chars().take(200).collect();
            let more = if b.text.chars().count() > 200 {
                "…"
            } else {
                ""
            };
            writeln!(
                out,
                "   [{}{}] {}{more}",
                b.kind,
                b.name
                    .as_deref()
                    .map(|n| format!(" {n}"))
                    .unwrap_or_default(),
                text.replace('\n', " ")
            )?;
        }
    }
    writeln!(out, "   hash {}", ex.hash)
}

/// Plain `level: message` lines on standard error; enough for a service under a supervisor.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) && r.target().starts_with("scrim") {
            eprintln!("{}: {}", r.level().as_str().to_lowercase(), r.args());
        }
    }
    fn flush(&self) {}
}
