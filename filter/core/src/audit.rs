//! The audit record: one per exchange, written by the filter into filter state and read by the
//! recorder from Envoy's access-log stream. Schema only (serde); it decides nothing.
//!
//! [`AuditRecord`] is the whole record; [`AuditUser`], [`MaskCount`], [`AuditResponse`],
//! [`Usage`] and [`Timings`] are its parts, [`Decision`] and [`ContentMode`] its enums.
//! [`AuditRecord::to_bytes`] and [`AuditRecord::from_bytes`] are the only wire encoding (JSON),
//! so the filter and the recorder cannot drift. Envoy's own facts about the exchange (status,
//! bytes, addresses, start time) are not here: the recorder merges them from the log entry.
//!
//! The record never carries the service key or an unmasked secret: `request` and `response`
//! hold what went upstream and what the client saw, both after masking.

use serde::{Deserialize, Serialize};

/// Schema version written by this build. The recorder refuses records from a newer major
/// version rather than guess what their fields mean.
pub const RECORD_VERSION: u32 = 1;

/// Property path the filter passes to `set_property`; Envoy stores it as filter state
/// [`FILTER_STATE_KEY`].
pub const PROPERTY_NAME: &str = "scrim_audit";

/// Filter-state name as Envoy logs it: list it in the access logger's
/// `filter_state_objects_to_log`; it arrives as a `google.protobuf.BytesValue`.
pub const FILTER_STATE_KEY: &str = "wasm.scrim_audit";

/// What a deployment records about each exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentMode {
    /// Identity, decision, counts, usage and timings; no request or response content.
    Metadata,
    /// Metadata plus the masked request and the response as the client saw it.
    #[default]
    Full,
}

/// What the gateway did with the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Forwarded upstream.
    Allowed,
    /// No valid token.
    Unauthenticated,
    /// Valid caller without permission.
    Forbidden,
    /// The gateway could not decide (identity provider keys or recorder unavailable).
    Unavailable,
    /// Refused by policy (for example a blocked secret in the request).
    Denied,
    /// Held until a reviewer approves it.
    PendingApproval,
}

impl Decision {
    /// The snake_case name used on the wire and in store indexes.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::Unavailable => "unavailable",
            Decision::Denied => "denied",
            Decision::PendingApproval => "pending_approval",
        }
    }
}

/// Which way the masked bytes were travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Request,
    Response,
}

/// The verified caller (absent when the exchange was refused before identity was known).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditUser {
    pub subject: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub issuer: String,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// How many secrets one rule replaced in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskCount {
    pub rule: String,
    pub direction: Direction,
    pub count: u32,
}

/// One content block of the response as the client saw it (after masking).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseBlock {
    /// Anthropic block type: `text`, `thinking`, `tool_use`, or whatever the API adds later.
    #[serde(rename = "type")]
    pub kind: String,
    /// Final text: the text, the thinking, or for tool use the input JSON as text.
    #[serde(default)]
    pub text: String,
    /// Tool name (tool use blocks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool use id (tool use blocks only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// The response as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AuditResponse {
    #[serde(default)]
    pub blocks: Vec<ResponseBlock>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_reason: Option<String>,
}

/// Token usage reported by the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_creation_input_tokens: u64,
}

/// Timings the filter measured (Envoy's own durations are merged by the recorder).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// From the request's arrival to the first response byte from upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_ms: Option<u64>,
    /// From the request's arrival to the last response byte sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_ms: Option<u64>,
}

/// One exchange, as the filter saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// [`RECORD_VERSION`] of the writer.
    pub version: u32,
    /// `x-request-id` of the exchange.
    pub exchange_id: String,
    /// `x-claude-code-session-id`, else one derived from the user and idle time.
    pub session_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<AuditUser>,
    pub method: String,
    /// Request path without the query string.
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    pub decision: Decision,
    /// Why the decision was taken (stable short reason, never a secret or token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default)]
    pub content_mode: ContentMode,
    #[serde(default)]
    pub masked: Vec<MaskCount>,
    /// The request body as sent upstream (masked); absent in metadata mode or when refused
    /// before the body was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AuditResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(default)]
    pub timings: Timings,
    #[serde(default)]
    pub stream: bool,
    /// The client went away before the response ended.
    #[serde(default)]
    pub client_disconnected: bool,
    /// Content was cut to respect the record size cap.
    #[serde(default)]
    pub truncated: bool,
    /// Reviews whose approval let this request through (ids at the recorder).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<String>,
    /// The just-in-time grant that let a caller outside the allowed groups in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<String>,
}

/// Why bytes are not an audit record.
#[derive(Debug)]
#[non_exhaustive]
pub enum RecordError {
    /// Not JSON, or JSON missing a required field.
    Malformed(serde_json::Error),
    /// Written by a newer filter whose fields this build does not know.
    UnsupportedVersion(u32),
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RecordError::Malformed(e) => write!(f, "malformed audit record: {e}"),
            RecordError::UnsupportedVersion(v) => {
                write!(f, "audit record version {v} is newer than {RECORD_VERSION}")
            }
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            RecordError::Malformed(e) => Some(e),
            RecordError::UnsupportedVersion(_) => None,
        }
    }
}

impl AuditRecord {
    /// A record with the required fields set and everything else empty.
    pub fn new(
        exchange_id: impl Into<String>,
        session_id: impl Into<String>,
        method: impl Into<String>,
        endpoint: impl Into<String>,
        decision: Decision,
    ) -> Self {
        AuditRecord {
            version: RECORD_VERSION,
            exchange_id: exchange_id.into(),
            session_id: session_id.into(),
            user: None,
            method: method.into(),
            endpoint: endpoint.into(),
            model: None,
            decision,
            reason: None,
            content_mode: ContentMode::default(),
            masked: Vec::new(),
            request: None,
            response: None,
            usage: None,
            timings: Timings::default(),
            stream: false,
            client_disconnected: false,
            truncated: false,
            approvals: Vec::new(),
            grant: None,
        }
    }

    /// The wire encoding: compact JSON. Deterministic for equal records.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs, strings and `Value`s cannot fail.
        serde_json::to_vec(self).expect("audit record serialises")
    }

    /// The wire encoding, cut to at most `max_bytes` where content allows: first the request
    /// body is dropped, then the response text; `truncated` says so. Metadata is never cut, so
    /// a record of metadata alone may still exceed a cap smaller than itself.
    pub fn to_bytes_capped(&self, max_bytes: usize) -> Vec<u8> {
        let bytes = self.to_bytes();
        if bytes.len() <= max_bytes {
            return bytes;
        }
        let mut cut = self.clone();
        cut.truncated = true;
        cut.request = None;
        let bytes = cut.to_bytes();
        if bytes.len() <= max_bytes {
            return bytes;
        }
        if let Some(response) = cut.response.as_mut() {
            for block in &mut response.blocks {
                block.text.clear();
            }
        }
        cut.to_bytes()
    }

    /// Parses the wire encoding; unknown fields from a same-version writer are ignored.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        let record: AuditRecord = serde_json::from_slice(bytes).map_err(RecordError::Malformed)?;
        if record.version > RECORD_VERSION {
            return Err(RecordError::UnsupportedVersion(record.version));
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn full_record() -> AuditRecord {
        let mut r = AuditRecord::new("req-1", "sess-1", "POST", "/v1/messages", Decision::Allowed);
        r.user = Some(AuditUser {
            subject: "alice".into(),
            email: Some("alice@example.com".into()),
            issuer: "https://idp.example".into(),
            groups: vec!["dev".into()],
        });
        r.model = Some("claude-sonnet-4-5".into());
        r.masked = vec![MaskCount {
            rule: "aws-access-key".into(),
            direction: Direction::Request,
            count: 2,
        }];
        r.request = Some(
            json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
        );
        r.response = Some(AuditResponse {
            blocks: vec![ResponseBlock {
                kind: "text".into(),
                text: "hello".into(),
                name: None,
                id: None,
            }],
            stop_reason: Some("end_turn".into()),
        });
        r.usage = Some(Usage {
            input_tokens: 10,
            output_tokens: 5,
            cache_read_input_tokens: 1,
            cache_creation_input_tokens: 2,
        });
        r.timings = Timings {
            first_byte_ms: Some(120),
            total_ms: Some(900),
        };
        r.stream = true;
        r
    }

    #[test]
    fn record_round_trips_through_bytes() {
        let r = full_record();
        assert_eq!(AuditRecord::from_bytes(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn enums_are_snake_case_on_the_wire() {
        let mut r = full_record();
        r.decision = Decision::PendingApproval;
        r.content_mode = ContentMode::Metadata;
        let v: serde_json::Value = serde_json::from_slice(&r.to_bytes()).unwrap();
        assert_eq!(v["decision"], "pending_approval");
        assert_eq!(v["content_mode"], "metadata");
        assert_eq!(v["masked"][0]["direction"], "request");
        assert_eq!(v["response"]["blocks"][0]["type"], "text");
    }

    #[test]
    fn minimal_record_parses_with_defaults() {
        let bytes = br#"{"version":1,"exchange_id":"x","session_id":"s","method":"GET","endpoint":"/v1/models","decision":"unauthenticated"}"#;
        let r = AuditRecord::from_bytes(bytes).unwrap();
        assert_eq!(r.decision, Decision::Unauthenticated);
        assert_eq!(r.content_mode, ContentMode::Full);
        assert!(r.user.is_none() && r.masked.is_empty() && !r.truncated);
    }

    #[test]
    fn record_from_newer_writer_is_refused() {
        let bytes = br#"{"version":2,"exchange_id":"x","session_id":"s","method":"GET","endpoint":"/","decision":"allowed"}"#;
        assert!(matches!(
            AuditRecord::from_bytes(bytes),
            Err(RecordError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn unknown_decision_is_malformed() {
        let bytes = br#"{"version":1,"exchange_id":"x","session_id":"s","method":"GET","endpoint":"/","decision":"maybe"}"#;
        assert!(matches!(
            AuditRecord::from_bytes(bytes),
            Err(RecordError::Malformed(_))
        ));
    }

    #[test]
    fn capped_record_drops_request_then_response_text_and_says_so() {
        let mut r = full_record();
        r.request = Some(json!({"messages": [{"role": "user", "content": "x".repeat(10_000)}]}));
        r.response.as_mut().unwrap().blocks[0].text = "y".repeat(10_000);
        let metadata_len = {
            let mut m = r.clone();
            m.request = None;
            m.response.as_mut().unwrap().blocks[0].text.clear();
            m.truncated = true;
            m.to_bytes().len()
        };

        let only_response =
            AuditRecord::from_bytes(&r.to_bytes_capped(metadata_len + 10_100)).unwrap();
        assert!(only_response.truncated && only_response.request.is_none());
        assert_eq!(
            only_response.response.as_ref().unwrap().blocks[0]
                .text
                .len(),
            10_000
        );

        let bare = AuditRecord::from_bytes(&r.to_bytes_capped(metadata_len)).unwrap();
        assert!(bare.truncated && bare.request.is_none());
        assert!(bare.response.unwrap().blocks[0].text.is_empty());
        assert_eq!(bare.usage, r.usage);
    }

    #[test]
    fn record_within_cap_is_untouched() {
        let r = full_record();
        assert_eq!(r.to_bytes_capped(1 << 20), r.to_bytes());
    }
}
