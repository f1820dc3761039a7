//! Turns one Envoy `HTTPAccessLogEntry` into a [`StoredRecord`]: finds the filter's record in
//! filter state, checks its size and shape, and merges Envoy's own fields. Pure; no I/O.

use crate::record::{EnvoyFields, StoredRecord};
use envoy_types::pb::envoy::config::core::v3::{address, socket_address, Address};
use envoy_types::pb::envoy::data::accesslog::v3::{HttpAccessLogEntry, ResponseFlags};
use envoy_types::pb::google::protobuf::{BytesValue, Duration, Timestamp};
use prost::Message;
use scrim_core::audit::{AuditRecord, FILTER_STATE_KEY};

/// Why an entry was not stored. Each variant is a counter in [`crate::ingest::IngestStats`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reject {
    /// The entry has no `wasm.scrim_audit` filter state (filter not in the chain, or the
    /// access logger does not list it in `filter_state_objects_to_log`).
    #[error("entry carries no {FILTER_STATE_KEY} filter state")]
    MissingRecord,
    /// The record exceeds the configured cap (`--max-record-bytes`).
    #[error("audit record of {bytes} bytes exceeds the cap of {max} bytes")]
    Oversized { bytes: usize, max: usize },
    /// Wrong protobuf type, undecodable wrapper, or JSON that is not an audit record.
    #[error("malformed audit record: {0}")]
    Malformed(String),
}

/// Extracts and merges one entry. `max_record_bytes` caps the record JSON.
pub fn extract(
    entry: &HttpAccessLogEntry,
    max_record_bytes: usize,
) -> Result<StoredRecord, Reject> {
    let common = entry.common_properties.as_ref();
    let any = common
        .and_then(|c| c.filter_state_objects.get(FILTER_STATE_KEY))
        .ok_or(Reject::MissingRecord)?;
    // Envoy serialises wasm filter state as BytesValue; StringValue has the same wire shape
    // (field 1, length-delimited), so accept both rather than depend on the host's choice.
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    if type_name != "google.protobuf.BytesValue" && type_name != "google.protobuf.StringValue" {
        return Err(Reject::Malformed(format!(
            "unexpected filter state type {:?}",
            any.type_url
        )));
    }
    // Check the outer size before decoding so an oversized value is not copied again.
    if any.value.len() > max_record_bytes + 16 {
        return Err(Reject::Oversized {
            bytes: any.value.len(),
            max: max_record_bytes,
        });
    }
    let bytes = BytesValue::decode(any.value.as_slice())
        .map_err(|e| Reject::Malformed(format!("filter state is not a BytesValue: {e}")))?
        .value;
    if bytes.len() > max_record_bytes {
        return Err(Reject::Oversized {
            bytes: bytes.len(),
            max: max_record_bytes,
        });
    }
    let record = AuditRecord::from_bytes(&bytes).map_err(|e| Reject::Malformed(e.to_string()))?;
    Ok(StoredRecord {
        record,
        envoy: envoy_fields(entry),
    })
}

/// Envoy's own fields of the entry.
pub fn envoy_fields(entry: &HttpAccessLogEntry) -> EnvoyFields {
    let mut f = EnvoyFields::default();
    if let Some(c) = entry.common_properties.as_ref() {
        f.response_flags = c
            .response_flags
            .as_ref()
            .map(flag_codes)
            .unwrap_or_default();
        f.upstream_host = c.upstream_remote_address.as_ref().and_then(address_string);
        f.upstream_cluster = non_empty(&c.upstream_cluster);
        f.downstream_address = c
            .downstream_remote_address
            .as_ref()
            .and_then(address_string);
        f.start_time_ms = c.start_time.as_ref().map(timestamp_ms);
        f.duration_ms = c
            .time_to_last_downstream_tx_byte
            .as_ref()
            .or(c.duration.as_ref())
            .map(duration_ms);
        f.upstream_first_byte_ms = c.time_to_first_upstream_rx_byte.as_ref().map(duration_ms);
    }
    if let Some(r) = entry.request.as_ref() {
        f.bytes_received = r.request_headers_bytes + r.request_body_bytes;
        f.request_id = non_empty(&r.request_id);
    }
    if let Some(r) = entry.response.as_ref() {
        f.response_code = r.response_code.map(|c| c.value);
        f.bytes_sent = r.response_headers_bytes + r.response_body_bytes;
    }
    f
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

fn timestamp_ms(t: &Timestamp) -> i64 {
    t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
}

fn duration_ms(d: &Duration) -> u64 {
    (d.seconds * 1000 + i64::from(d.nanos) / 1_000_000).max(0) as u64
}

fn address_string(a: &Address) -> Option<String> {
    match a.address.as_ref()? {
        address::Address::SocketAddress(s) => {
            let port = match s.port_specifier.as_ref() {
                Some(socket_address::PortSpecifier::PortValue(p)) => p.to_string(),
                Some(socket_address::PortSpecifier::NamedPort(n)) => n.clone(),
                None => return Some(s.address.clone()),
            };
            if s.address.contains(':') {
                Some(format!("[{}]:{port}", s.address))
            } else {
                Some(format!("{}:{port}", s.address))
            }
        }
        address::Address::Pipe(p) => Some(p.path.clone()),
        address::Address::EnvoyInternalAddress(_) => Some("envoy-internal".to_owned()),
    }
}

/// Envoy's documented short codes (`%RESPONSE_FLAGS%`), in Envoy's order.
fn flag_codes(f: &ResponseFlags) -> Vec<String> {
    let table = [
        (f.failed_local_healthcheck, "LH"),
        (f.no_healthy_upstream, "UH"),
        (f.upstream_request_timeout, "UT"),
        (f.local_reset, "LR"),
        (f.upstream_remote_reset, "UR"),
        (f.upstream_connection_failure, "UF"),
        (f.upstream_connection_termination, "UC"),
        (f.upstream_overflow, "UO"),
        (f.no_route_found, "NR"),
        (f.delay_injected, "DI"),
        (f.fault_injected, "FI"),
        (f.rate_limited, "RL"),
        (f.unauthorized_details.is_some(), "UAEX"),
        (f.rate_limit_service_error, "RLSE"),
        (f.downstream_connection_termination, "DC"),
        (f.upstream_retry_limit_exceeded, "URX"),
        (f.stream_idle_timeout, "SI"),
        (f.invalid_envoy_request_headers, "IH"),
        (f.downstream_protocol_error, "DPE"),
        (f.upstream_max_stream_duration_reached, "UMSDR"),
        (f.response_from_cache_filter, "RFCF"),
        (f.no_filter_config_found, "NFCF"),
        (f.duration_timeout, "DT"),
        (f.upstream_protocol_error, "UPE"),
        (f.no_cluster_found, "NC"),
        (f.overload_manager, "OM"),
        (f.dns_resolution_failure, "DF"),
        (f.downstream_remote_reset, "DR"),
    ];
    table
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, code)| (*code).to_owned())
        .collect()
}

/// Wraps record bytes the way Envoy logs the filter state (used by tests and tools).
pub fn filter_state_any(record_json: &[u8]) -> envoy_types::pb::google::protobuf::Any {
    envoy_types::pb::google::protobuf::Any {
        type_url: "type.googleapis.com/google.protobuf.BytesValue".to_owned(),
        value: BytesValue {
            value: record_json.to_vec(),
        }
        .encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::SocketAddress;
    use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, HttpResponseProperties};
    use envoy_types::pb::google::protobuf::{Any, UInt32Value};
    use scrim_core::audit::Decision;

    fn entry_with(any: Option<Any>) -> HttpAccessLogEntry {
        let mut common = AccessLogCommon {
            downstream_remote_address: Some(Address {
                address: Some(address::Address::SocketAddress(SocketAddress {
                    address: "::1".into(),
                    port_specifier: Some(socket_address::PortSpecifier::PortValue(5555)),
                    ..Default::default()
                })),
            }),
            start_time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000,
            }),
            time_to_last_downstream_tx_byte: Some(Duration {
                seconds: 1,
                nanos: 500_000_000,
            }),
            response_flags: Some(ResponseFlags {
                downstream_connection_termination: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        if let Some(any) = any {
            common
                .filter_state_objects
                .insert(FILTER_STATE_KEY.into(), any);
        }
        HttpAccessLogEntry {
            common_properties: Some(common),
            response: Some(HttpResponseProperties {
                response_code: Some(UInt32Value { value: 200 }),
                response_headers_bytes: 100,
                response_body_bytes: 900,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn record_bytes() -> Vec<u8> {
        AuditRecord::new("r1", "s1", "POST", "/v1/messages", Decision::Allowed).to_bytes()
    }

    #[test]
    fn record_is_merged_with_envoy_fields() {
        let stored = extract(
            &entry_with(Some(filter_state_any(&record_bytes()))),
            1 << 20,
        )
        .unwrap();
        assert_eq!(stored.record.exchange_id, "r1");
        let e = stored.envoy;
        assert_eq!(e.response_code, Some(200));
        assert_eq!(e.bytes_sent, 1000);
        assert_eq!(e.downstream_address.as_deref(), Some("[::1]:5555"));
        assert_eq!(e.start_time_ms, Some(1_700_000_000_250));
        assert_eq!(e.duration_ms, Some(1500));
        assert_eq!(e.response_flags, vec!["DC"]);
    }

    #[test]
    fn entry_without_filter_state_is_missing_record() {
        assert_eq!(
            extract(&entry_with(None), 1 << 20),
            Err(Reject::MissingRecord)
        );
    }

    #[test]
    fn record_over_the_cap_is_oversized() {
        let bytes = record_bytes();
        let err =
            extract(&entry_with(Some(filter_state_any(&bytes))), bytes.len() - 1).unwrap_err();
        assert!(matches!(err, Reject::Oversized { .. }), "{err:?}");
    }

    #[test]
    fn wrong_type_and_bad_json_are_malformed() {
        let mut any = filter_state_any(&record_bytes());
        any.type_url = "type.googleapis.com/google.protobuf.Struct".into();
        assert!(matches!(
            extract(&entry_with(Some(any)), 1 << 20),
            Err(Reject::Malformed(_))
        ));
        let any = filter_state_any(b"{not json");
        assert!(matches!(
            extract(&entry_with(Some(any)), 1 << 20),
            Err(Reject::Malformed(_))
        ));
    }
}
