//! The lifecycle as tables of event sequences and the actions they must produce, plus a
//! property over random sequences: nothing leaves before its body was read and accepted,
//! and no unmasked secret is in anything emitted.

use super::*;
use base64::Engine;
use crate::config::Config;
use crate::rules::expand_example;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use std::cell::RefCell;

const NOW_MS: u64 = 1_800_000_000_000;
/// A throwaway Ed25519 key generated for these tests only.
/// (PKCS#8 DER, base64)
const TEST_KEY: &str = "MC4CAQAwBQYDK2VwBCIEIJ61kRaqT2EzxCr2QCihvn/ScveeWgJKnuWDhI8wTChD";
const TEST_KEY_X: &str = "1QgiGrxfwaRPGQTO4V93hHpbluJSGGFQ1dAmGDS9Ffk";

fn jwks() -> Value {
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": TEST_KEY_X, "alg": "EdDSA", "use": "sig"}]})
}

fn config(extra: Value) -> Config {
    let mut c = json!({
        "issuers": [
            {"issuer": "https://inline", "audiences": ["scrim"], "jwks": jwks()},
            {"issuer": "https://remote", "audiences": ["scrim"], "jwks_uri": "http://idp/jwks", "jwks_cluster": "idp"}
        ],
        "allowed_groups": ["eng"],
        "policy": {"deny": [{"id": "prod-hosts", "message": "no prod hosts", "regex": "[a-z0-9]+\\.prod\\.example\\.com"}]}
    });
    if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    Config::from_json(c.to_string().as_bytes()).expect("test config compiles")
}

fn gateway(extra: Value) -> Gateway {
    let key = ServiceKey::new("sk-ant-api03-service-key-for-tests").unwrap();
    let mut gw = Gateway::new(config(extra), key, Some("t".repeat(40)));
    gw.keys.fetch_finished(0, true, Some(KeySet::parse(jwks().to_string().as_bytes()).unwrap()), NOW_MS / 1000);
    gw
}

fn token(issuer: &str, groups: &[&str]) -> String {
    let now = NOW_MS / 1000;
    let claims = json!({"iss": issuer, "aud": "scrim", "sub": "alice", "groups": groups, "iat": now, "exp": now + 600});
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some("k1".into());
    encode(&header, &claims, &EncodingKey::from_ed_der(&base64::engine::general_purpose::STANDARD.decode(TEST_KEY).unwrap())).unwrap()
}

fn aws() -> String {
    expand_example("AKIA{{fake:upperb32:16}}")
}

/// Envoy's buffers as the test fills them.
#[derive(Default)]
struct Fake {
    request: RefCell<Vec<u8>>,
    response: RefCell<Vec<u8>>,
}

impl Buffers for Fake {
    fn request_body(&self, max: usize) -> Vec<u8> {
        let b = self.request.borrow();
        b[..b.len().min(max)].to_vec()
    }
    fn response_body(&self, max: usize) -> Vec<u8> {
        let b = self.response.borrow();
        b[..b.len().min(max)].to_vec()
    }
}

/// One exchange driven through the machine, with everything it emitted.
struct Run {
    gw: Gateway,
    m: Lifecycle,
    bufs: Fake,
    actions: Vec<Action>,
    flows: Vec<Flow>,
}

impl Run {
    fn new(gw: Gateway) -> Run {
        Run { gw, m: Lifecycle::new(), bufs: Fake::default(), actions: Vec::new(), flows: Vec::new() }
    }

    fn ev(&mut self, e: Event) -> Flow {
        let step = self.m.handle(&mut self.gw, NOW_MS, e, &self.bufs);
        let flow = step.flow();
        self.actions.extend(step.actions);
        self.flows.push(flow);
        flow
    }

    fn headers(&mut self, path: &str, token: Option<&str>, end: bool) -> Flow {
        let head = RequestHead {
            method: "POST".into(),
            path: path.into(),
            authorization: token.map(|t| format!("Bearer {t}")),
            request_id: "r1".into(),
            end_of_stream: end,
            ..Default::default()
        };
        self.ev(Event::RequestHeaders(&head))
    }

    /// Appends a chunk to the buffered body and tells the machine.
    fn chunk(&mut self, bytes: &[u8], end: bool) -> Flow {
        self.bufs.request.borrow_mut().extend_from_slice(bytes);
        let size = self.bufs.request.borrow().len();
        self.ev(Event::RequestBody { size, end_of_stream: end })
    }

    fn answer(&mut self, status: &str, body: &[u8]) -> Flow {
        self.ev(Event::Answer(Answer { status, body }))
    }

    fn reply(&self) -> Option<&Reply> {
        self.actions.iter().find_map(|a| match a {
            Action::Reply(r) => Some(r),
            _ => None,
        })
    }

    fn calls(&self) -> Vec<&Call> {
        self.actions.iter().filter_map(|a| if let Action::Call(c) = a { Some(c) } else { None }).collect()
    }

    fn sent_body(&self) -> Vec<u8> {
        let replaced = self.actions.iter().rev().find_map(|a| match a {
            Action::ReplaceRequestBody(b) => Some(b.clone()),
            _ => None,
        });
        replaced.unwrap_or_else(|| self.bufs.request.borrow().clone())
    }

    fn header_set(&self, name: &str) -> Option<Option<String>> {
        self.actions.iter().rev().find_map(|a| match a {
            Action::SetRequestHeader(n, v) if n == name => Some(v.clone()),
            _ => None,
        })
    }

    fn released(&self) -> bool {
        self.flows.contains(&Flow::Release)
    }
}

fn messages(text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": "claude-sonnet-4-5", "max_tokens": 10, "messages": [{"role": "user", "content": text}]})).unwrap()
}

#[test]
fn a_request_without_a_token_is_refused_and_never_released() {
    let mut r = Run::new(gateway(json!({})));
    assert_eq!(r.headers("/v1/messages", None, false), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 401);
    assert_eq!(r.chunk(b"{}", true), Flow::Hold);
    assert!(!r.released());
}

#[test]
fn a_body_in_many_chunks_is_released_once_whole_masked_and_with_the_key_swapped() {
    let key = aws();
    let body = messages(&format!("my key {key}"));
    let mut r = Run::new(gateway(json!({})));
    assert_eq!(r.headers("/v1/messages?beta=true", Some(&token("https://inline", &["eng"])), false), Flow::Hold);
    assert_eq!(r.header_set("x-api-key"), None, "nothing about the credential before release");
    for piece in body.chunks(7).take(body.len() / 7) {
        assert_eq!(r.chunk(piece, false), Flow::Hold);
    }
    assert_eq!(r.chunk(&body[(body.len() / 7) * 7..], true), Flow::Release);
    let sent = String::from_utf8(r.sent_body()).unwrap();
    assert!(!sent.contains(&key) && sent.contains("[REDACTED:"), "{sent}");
    assert_eq!(r.header_set("x-api-key"), Some(Some("sk-ant-api03-service-key-for-tests".into())));
    assert_eq!(r.header_set("authorization"), Some(None));
    assert_eq!(r.header_set("content-length"), Some(Some(sent.len().to_string())));
}

// Regression: with HTTP/2 trailers the body never saw end of stream, and the request went
// upstream uninspected with the service key on it.
#[test]
fn trailers_end_the_body_and_it_is_inspected_like_any_other() {
    let key = aws();
    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://inline", &["eng"])), false);
    assert_eq!(r.chunk(&messages(&key), false), Flow::Hold);
    assert_eq!(r.ev(Event::RequestTrailers), Flow::Release);
    assert!(r.actions.contains(&Action::ClearRequestTrailers));
    assert!(!String::from_utf8(r.sent_body()).unwrap().contains(&key));

    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://inline", &["eng"])), false);
    r.chunk(&messages("ssh db1.prod.example.com"), false);
    assert_eq!(r.ev(Event::RequestTrailers), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 403);
    assert!(!r.released());
}

#[test]
fn refusals_of_bodies_paths_and_sizes() {
    let t = token("https://inline", &["eng"]);
    let cases: Vec<(&str, &str, Vec<u8>, u32)> = vec![
        ("duplicate key", "/v1/messages", br#"{"model":"a","messages":[],"model":"b"}"#.to_vec(), 400),
        ("not json", "/v1/messages", b"model=a".to_vec(), 400),
        ("deny rule in a tool description", "/v1/messages", serde_json::to_vec(&json!({"model": "m", "messages": [], "tools": [{"name": "x", "description": "db1.prod.example.com"}]})).unwrap(), 403),
        ("deny rule in a batch request", "/v1/messages/batches", serde_json::to_vec(&json!({"requests": [{"custom_id": "a", "params": {"model": "m", "messages": [{"role": "user", "content": "db1.prod.example.com"}]}}]})).unwrap(), 403),
        ("double slash", "/v1//messages", messages("hi"), 400),
        ("percent-encoded", "/v1/%6Dessages", messages("hi"), 400),
        ("trailing slash", "/v1/messages/", messages("hi"), 400),
    ];
    for (name, path, body, status) in cases {
        let mut r = Run::new(gateway(json!({})));
        r.headers(path, Some(&t), false);
        r.chunk(&body, true);
        assert_eq!(r.reply().map(|r| r.status), Some(status), "{name}");
        assert!(!r.released(), "{name}");
    }
    let mut r = Run::new(gateway(json!({"masking": {"max_request_bytes": 1024}})));
    r.headers("/v1/messages", Some(&t), false);
    r.chunk(&vec![b' '; 1025], false);
    assert_eq!(r.reply().unwrap().status, 413);
}

#[test]
fn a_body_that_arrives_while_keys_are_fetched_is_inspected_when_they_come() {
    let key = aws();
    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://remote", &["eng"])), false);
    assert_eq!(r.calls().len(), 1, "one JWKS fetch");
    assert_eq!(r.calls()[0].cluster, "idp");
    assert_eq!(r.chunk(&messages(&key), true), Flow::Hold, "body complete, identity not yet");
    assert_eq!(r.answer("200", jwks().to_string().as_bytes()), Flow::Release);
    assert!(!String::from_utf8(r.sent_body()).unwrap().contains(&key));

    // The fetch fails: 503, nothing released.
    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://remote", &["eng"])), false);
    r.chunk(&messages("hi"), true);
    assert_eq!(r.answer("", b""), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 503);
}

#[test]
fn with_audit_required_each_exchange_asks_the_recorder_first() {
    let t = token("https://inline", &["eng"]);
    let required = json!({"audit": {"required": true}});
    let mut r = Run::new(gateway(required.clone()));
    r.headers("/v1/messages", Some(&t), false);
    assert_eq!(r.reply().unwrap().status, 503, "known to be down");

    let mut gw = gateway(required.clone());
    gw.recorder_up = true;
    let mut r = Run::new(gw);
    r.headers("/v1/messages", Some(&t), false);
    assert_eq!(r.calls()[0].headers.iter().find(|(k, _)| k == ":path").unwrap().1, "/healthz");
    r.chunk(&messages("hi"), true);
    assert_eq!(r.answer("503", b""), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 503);
    assert!(!r.gw.recorder_up);

    let mut gw = gateway(required);
    gw.recorder_up = true;
    let mut r = Run::new(gw);
    r.headers("/v1/messages", Some(&t), false);
    r.ev(Event::RequestTrailers);
    assert_eq!(r.answer("200", b"ok"), Flow::Hold, "empty body is refused");
    assert_eq!(r.reply().unwrap().status, 400);
}

#[test]
fn approvals_ask_one_review_per_rule_and_release_only_when_all_are_approved() {
    let policy = json!({"policy": {"approval": [{"id": "cust", "message": "customer data", "regex": "CUST-[0-9]{6}"}]}});
    let t = token("https://inline", &["eng"]);
    let review = |status: &str| json!({"id": "rv-1", "status": status, "decisions": []}).to_string();

    let mut r = Run::new(gateway(policy.clone()));
    r.headers("/v1/messages", Some(&t), false);
    assert_eq!(r.chunk(&messages("CUST-000001 and CUST-000002"), true), Flow::Hold);
    let call = r.calls()[0].clone();
    let sent: Value = serde_json::from_slice(call.body.as_deref().unwrap()).unwrap();
    assert_eq!(sent["rule"], "cust");
    assert_eq!(r.answer("200", review("pending").as_bytes()), Flow::Hold);
    let reply = r.reply().unwrap();
    assert_eq!(reply.status, 403);
    assert!(reply.body.contains("rv-1"));

    let mut r = Run::new(gateway(policy.clone()));
    r.headers("/v1/messages", Some(&t), false);
    r.chunk(&messages("CUST-000001"), true);
    assert_eq!(r.answer("200", review("approved").as_bytes()), Flow::Release);

    // The recorder cannot answer: 503, not a pass.
    let mut r = Run::new(gateway(policy));
    r.headers("/v1/messages", Some(&t), false);
    r.chunk(&messages("CUST-000001"), true);
    assert_eq!(r.answer("", b""), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 503);
}

#[test]
fn a_request_without_a_body_is_released_after_identity_and_policy() {
    let mut r = Run::new(gateway(json!({})));
    assert_eq!(r.headers("/v1/models", Some(&token("https://inline", &["eng"])), true), Flow::Release);
    let mut r = Run::new(gateway(json!({})));
    assert_eq!(r.headers("/v1/models", Some(&token("https://inline", &["sales"])), true), Flow::Hold);
    assert_eq!(r.reply().unwrap().status, 403);
}

fn released_run() -> Run {
    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://inline", &["eng"])), true);
    assert!(r.released());
    r
}

fn response_body(r: &Run) -> Vec<u8> {
    r.actions
        .iter()
        .rev()
        .find_map(|a| if let Action::ReplaceResponseBody(b) = a { Some(b.clone()) } else { None })
        .unwrap_or_else(|| r.bufs.response.borrow().clone())
}

#[test]
fn buffered_responses_of_any_shape_are_masked_and_unreadable_ones_refused() {
    let key = aws();
    let json_head = ResponseHead { content_type: Some("application/json".into()), ..Default::default() };
    let bodies = [
        json!({"choices": [{"message": {"role": "assistant", "content": key}}]}).to_string(),
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": format!("echo {key}")}}).to_string(),
    ];
    for body in bodies {
        let mut r = released_run();
        assert_eq!(r.ev(Event::ResponseHeaders(&json_head)), Flow::Hold);
        *r.bufs.response.borrow_mut() = body.into_bytes();
        let size = r.bufs.response.borrow().len();
        assert_eq!(r.ev(Event::ResponseBody { size, end_of_stream: true }), Flow::Continue);
        assert!(!String::from_utf8(response_body(&r)).unwrap().contains(&key));
    }
    // A held body that ends in trailers is masked all the same.
    let mut r = released_run();
    r.ev(Event::ResponseHeaders(&json_head));
    *r.bufs.response.borrow_mut() = json!({"content": [{"type": "text", "text": key}]}).to_string().into_bytes();
    let size = r.bufs.response.borrow().len();
    r.ev(Event::ResponseBody { size, end_of_stream: false });
    r.ev(Event::ResponseTrailers);
    assert!(!String::from_utf8(response_body(&r)).unwrap().contains(&key));
    // Compressed: 502, the body never passes.
    let mut r = released_run();
    r.ev(Event::ResponseHeaders(&ResponseHead { content_encoding: Some("gzip".into()), ..json_head.clone() }));
    assert!(r.actions.contains(&Action::SetResponseHeader(":status".into(), Some("502".into()))));
    *r.bufs.response.borrow_mut() = b"\x1f\x8b secret".to_vec();
    r.ev(Event::ResponseBody { size: 9, end_of_stream: true });
    assert!(String::from_utf8(response_body(&r)).unwrap().contains("api_error"));
}

#[test]
fn streamed_events_beyond_text_are_masked_too() {
    let key = aws();
    let mut r = released_run();
    r.ev(Event::ResponseHeaders(&ResponseHead { content_type: Some("text/event-stream".into()), ..Default::default() }));
    let events = [
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "web_search_tool_result", "tool_use_id": "s", "content": [{"type": "web_search_result", "title": key, "url": "u", "encrypted_content": "e"}]}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "citations_delta", "citation": {"type": "web_search_result_location", "cited_text": key, "url": "u", "title": "t", "encrypted_index": "e"}}}),
        json!({"type": "error", "error": {"type": "overloaded_error", "message": format!("echo {key}")}}),
    ];
    let stream: String = events.iter().map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap())).collect();
    *r.bufs.response.borrow_mut() = stream.into_bytes();
    let size = r.bufs.response.borrow().len();
    r.ev(Event::ResponseBody { size, end_of_stream: true });
    let out = String::from_utf8(response_body(&r)).unwrap();
    assert!(!out.contains(&key), "{out}");
    assert_eq!(out.matches("[REDACTED:").count(), 3, "{out}");
}

#[test]
fn the_log_event_writes_one_record_naming_the_refusal() {
    let mut r = Run::new(gateway(json!({})));
    r.headers("/v1/messages", Some(&token("https://inline", &["eng"])), false);
    r.chunk(&messages("db1.prod.example.com"), true);
    r.ev(Event::Log);
    let record = r.actions.iter().find_map(|a| if let Action::WriteAudit(b) = a { Some(b.clone()) } else { None }).unwrap();
    let v: Value = serde_json::from_slice(&record).unwrap();
    assert_eq!(v["decision"], "denied");
    assert_eq!(v["reason"], "prod-hosts");
}

mod property {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Ending {
        EndOfStream,
        Trailers,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        // Random chunking, end by end of stream or trailers, the token from the cache or via
        // a key fetch answered before, during or after the body, and random secret places.
        #[test]
        fn nothing_leaves_before_the_whole_body_is_accepted_and_no_secret_leaves(
            cuts in proptest::collection::vec(0usize..4000, 0..8),
            ending in prop_oneof![Just(Ending::EndOfStream), Just(Ending::Trailers)],
            remote in any::<bool>(),
            answer_after in 0usize..9,
            field in 0usize..4,
        ) {
            let key = aws();
            let body = match field {
                0 => messages(&format!("k {key}")),
                1 => serde_json::to_vec(&json!({"model": "m", "messages": [], "tools": [{"name": "t", "description": key}]})).unwrap(),
                2 => serde_json::to_vec(&json!({"model": "m", "messages": [], "metadata": {"user_id": key}, "stop_sequences": [key]})).unwrap(),
                _ => serde_json::to_vec(&json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": key}}]}]})).unwrap(),
            };
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            points.sort();
            points.dedup();
            let mut r = Run::new(gateway(json!({})));
            let issuer = if remote { "https://remote" } else { "https://inline" };
            r.headers("/v1/messages", Some(&token(issuer, &["eng"])), false);
            let mut answered = !remote;
            let mut from = 0;
            let pieces: Vec<(usize, usize)> = points.iter().chain(std::iter::once(&body.len())).map(|&to| { let p = (from, to); from = to; p }).collect();
            for (i, (a, b)) in pieces.iter().enumerate() {
                if !answered && i == answer_after {
                    r.answer("200", jwks().to_string().as_bytes());
                    answered = true;
                }
                let last = i + 1 == pieces.len();
                let end = last && matches!(ending, Ending::EndOfStream);
                let flow = r.chunk(&body[*a..*b], end);
                if !last || !end {
                    prop_assert_ne!(flow, Flow::Release, "released before the body was complete");
                }
            }
            if matches!(ending, Ending::Trailers) {
                r.ev(Event::RequestTrailers);
            }
            if !answered {
                r.answer("200", jwks().to_string().as_bytes());
            }
            prop_assert!(r.released());
            prop_assert_eq!(r.flows.iter().filter(|f| **f == Flow::Release).count(), 1);
            let sent = String::from_utf8(r.sent_body()).unwrap();
            prop_assert!(!sent.contains(&key), "{}", sent);
            for a in &r.actions {
                if let Action::Call(c) = a {
                    prop_assert!(!String::from_utf8_lossy(c.body.as_deref().unwrap_or_default()).contains(&key));
                }
            }
        }
    }
}
