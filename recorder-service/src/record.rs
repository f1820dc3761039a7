//! What the recorder stores per exchange: the filter's audit record plus Envoy's own view.

use scrim_core::audit::AuditRecord;
use serde::{Deserialize, Serialize};

/// Facts Envoy knows about the exchange that the filter cannot see (or could lie about).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvoyFields {
    /// HTTP status sent to the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_code: Option<u32>,
    /// Envoy's short response flag codes (`UF`, `DC`, `UAEX`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_flags: Vec<String>,
    /// Request header and body bytes received from the client.
    #[serde(default)]
    pub bytes_received: u64,
    /// Response header and body bytes sent to the client.
    #[serde(default)]
    pub bytes_sent: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downstream_address: Option<String>,
    /// When the first request byte arrived, milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time_ms: Option<i64>,
    /// Start to last byte sent downstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Start to first byte received from upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_first_byte_ms: Option<u64>,
    /// `x-request-id` as Envoy saw it (should equal the record's exchange id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// One stored exchange.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    pub record: AuditRecord,
    pub envoy: EnvoyFields,
}
