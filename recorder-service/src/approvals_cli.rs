//! `scrim-recorder reviews ...` and `grants ...`: approvers and developers talk to a running
//! recorder's HTTP API with their own OIDC token (decisions need a verified identity, so
//! these never touch the database directly).

use clap::{Args, Subcommand};
use serde_json::{json, Value};
use std::io::Write;

#[derive(Args)]
pub struct ApiTarget {
    /// The recorder's HTTP API.
    #[arg(long, env = "SCRIM_RECORDER_API", default_value = "http://127.0.0.1:9905", global = true)]
    api: String,
    /// Your OIDC token (the same kind the gateway takes).
    #[arg(long, env = "SCRIM_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
pub enum ReviewsCommand {
    /// Reviews you may see (approvers: all), newest first.
    List {
        /// Only this status: pending, approved, rejected, expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One review.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Approve a review (approver group; never your own request).
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Reject a review (approver group; never your own request).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum GrantsCommand {
    /// Ask for access for a while (any valid token, also outside the allowed groups).
    Request {
        /// How long: seconds, or with a unit (`90m`, `2h`).
        #[arg(long)]
        duration: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Grants you may see (approvers: all), newest first.
    List {
        /// Only this status: pending, active, rejected, revoked, expired.
        #[arg(long)]
        status: Option<String>,
        #[arg(long)]
        json: bool,
    },
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Grant a pending request (approver group; never your own).
    Approve {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// End an active grant now.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ApprovalsError {
    #[error("no token: pass --token or set SCRIM_TOKEN")]
    NoToken,
    #[error("cannot reach the recorder at {api}: {message}")]
    Unreachable { api: String, message: String },
    #[error("the recorder refused ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("--duration {0}: seconds, or a number with s, m, h or d")]
    BadDuration(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// `90`, `90s`, `15m`, `2h`, `1d` as seconds.
pub fn parse_duration(s: &str) -> Option<u64> {
    let (digits, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = digits.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(factor)
}

async fn call(target: &ApiTarget, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, ApprovalsError> {
    let token = target.token.as_deref().ok_or(ApprovalsError::NoToken)?;
    let url = format!("{}{path}", target.api.trim_end_matches('/'));
    let mut request = reqwest::Client::new().request(method, &url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let unreachable = |e: reqwest::Error| ApprovalsError::Unreachable { api: target.api.clone(), message: e.to_string() };
    let response = request.send().await.map_err(unreachable)?;
    let status = response.status().as_u16();
    let value: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        let message = value["error"]["message"].as_str().unwrap_or("no message").to_string();
        return Err(ApprovalsError::Refused { status, message });
    }
    Ok(value)
}

fn print(value: &Value, json: bool, line: impl Fn(&Value) -> String) -> Result<(), ApprovalsError> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, value).map_err(std::io::Error::from)?;
        writeln!(out)?;
    } else if let Some(items) = value["data"].as_array() {
        for item in items {
            writeln!(out, "{}", line(item))?;
        }
    } else {
        writeln!(out, "{}", line(value))?;
    }
    Ok(())
}

fn review_line(r: &Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
    format!(
        "{} {:<9} rule {} user {} session {} ({} of {} approvals)\n    {}",
        s("id"),
        s("status"),
        s("rule"),
        r["user"]["subject"].as_str().unwrap_or("-"),
        s("session_id"),
        r["decisions"].as_array().map_or(0, |d| d.iter().filter(|d| d["decision"] == "approve").count()),
        r["approvals_required"],
        s("excerpt"),
    )
}

fn grant_line(g: &Value) -> String {
    let s = |k: &str| g[k].as_str().unwrap_or("-").to_string();
    let until = g["expires_at_ms"].as_i64().map(scrim_recorder::time::format_ms).unwrap_or_else(|| "-".into());
    format!(
        "{} {:<8} user {} for {} s until {}: {}",
        s("id"),
        s("status"),
        g["user"]["subject"].as_str().unwrap_or("-"),
        g["duration_seconds"],
        until,
        s("reason"),
    )
}

fn status_query(status: &Option<String>) -> String {
    status.as_ref().map(|s| format!("?status={s}")).unwrap_or_default()
}

pub fn reviews(target: &ApiTarget, command: ReviewsCommand) -> Result<(), ApprovalsError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (value, json) = match command {
            ReviewsCommand::List { status, json } => {
                (call(target, reqwest::Method::GET, &format!("/v1/reviews{}", status_query(&status)), None).await?, json)
            }
            ReviewsCommand::Show { id, json } => (call(target, reqwest::Method::GET, &format!("/v1/reviews/{id}"), None).await?, json),
            ReviewsCommand::Approve { id, reason, json } => {
                let path = format!("/v1/reviews/{id}/approve");
                (call(target, reqwest::Method::POST, &path, Some(json!({"reason": reason}))).await?, json)
            }
            ReviewsCommand::Reject { id, reason, json } => {
                let path = format!("/v1/reviews/{id}/reject");
                (call(target, reqwest::Method::POST, &path, Some(json!({"reason": reason}))).await?, json)
            }
        };
        print(&value, json, review_line)
    })
}

pub fn grants(target: &ApiTarget, command: GrantsCommand) -> Result<(), ApprovalsError> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let decide = |id: &str, word: &str| format!("/v1/grants/{id}/{word}");
        let (value, json) = match command {
            GrantsCommand::Request { duration, reason, json } => {
                let seconds = parse_duration(&duration).ok_or(ApprovalsError::BadDuration(duration))?;
                let body = json!({"duration_seconds": seconds, "reason": reason});
                (call(target, reqwest::Method::POST, "/v1/grants", Some(body)).await?, json)
            }
            GrantsCommand::List { status, json } => {
                (call(target, reqwest::Method::GET, &format!("/v1/grants{}", status_query(&status)), None).await?, json)
            }
            GrantsCommand::Show { id, json } => (call(target, reqwest::Method::GET, &format!("/v1/grants/{id}"), None).await?, json),
            GrantsCommand::Approve { id, reason, json } => {
                (call(target, reqwest::Method::POST, &decide(&id, "approve"), Some(json!({"reason": reason}))).await?, json)
            }
            GrantsCommand::Reject { id, reason, json } => {
                (call(target, reqwest::Method::POST, &decide(&id, "reject"), Some(json!({"reason": reason}))).await?, json)
            }
            GrantsCommand::Revoke { id, reason, json } => {
                (call(target, reqwest::Method::POST, &decide(&id, "revoke"), Some(json!({"reason": reason}))).await?, json)
            }
        };
        print(&value, json, grant_line)
    })
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("90"), Some(90));
        assert_eq!(parse_duration("15m"), Some(900));
        assert_eq!(parse_duration("2h"), Some(7200));
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("2 weeks"), None);
        assert_eq!(parse_duration("h"), None);
    }
}
