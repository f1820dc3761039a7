//! Per-request context: turns Envoy's callbacks into [`Lifecycle`] events and performs the
//! actions it returns. Nothing is decided here.
//!
//! Host constraints this file works around: request headers can only be read in the headers
//! callback (so they are copied into a [`RequestHead`]); a paused request is let go from a
//! callback by returning `Continue` and from a call's answer by `resume_http_request`.

use crate::metrics::Metrics;
use crate::root::SharedRef;
use log::warn;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action as HostAction, Bytes};
use scrim_core::lifecycle::{Action, Answer, Buffers, Call, Event, Flow, Lifecycle, RequestHead, ResponseHead, AUDIT_PROPERTY};
use std::time::Duration;

pub struct ScrimHttp {
    shared: SharedRef,
    machine: Lifecycle,
    /// The call the machine waits for.
    pending_call: Option<u32>,
}

/// Bodies read on demand from Envoy's buffers.
struct HostBuffers;

impl Buffers for HostBuffers {
    fn request_body(&self, max: usize) -> Vec<u8> {
        read_buffer(proxy_wasm::types::BufferType::HttpRequestBody, max)
    }

    fn response_body(&self, max: usize) -> Vec<u8> {
        read_buffer(proxy_wasm::types::BufferType::HttpResponseBody, max)
    }
}

fn read_buffer(kind: proxy_wasm::types::BufferType, max: usize) -> Vec<u8> {
    proxy_wasm::hostcalls::get_buffer(kind, 0, max).ok().flatten().unwrap_or_default()
}

impl ScrimHttp {
    pub fn new(shared: SharedRef) -> Self {
        ScrimHttp { shared, machine: Lifecycle::new(), pending_call: None }
    }

    fn now_ms(&self) -> u64 {
        crate::root::millis(self.get_current_time())
    }

    /// Feeds one event and performs what comes back; returns the callback's flow.
    fn step(&mut self, event: Event) -> Flow {
        let now = self.now_ms();
        let step = {
            let mut s = self.shared.borrow_mut();
            self.machine.handle(&mut s.gateway, now, event, &HostBuffers)
        };
        let mut flow = step.flow();
        for action in step.actions {
            if let Some(next) = self.perform(action) {
                flow = next;
            }
        }
        flow
    }

    /// Performs one action; a call that cannot be made is answered at once (as failed).
    fn perform(&mut self, action: Action) -> Option<Flow> {
        match action {
            Action::SetRequestHeader(name, value) => self.set_http_request_header(&name, value.as_deref()),
            Action::ReplaceRequestBody(bytes) => self.set_http_request_body(0, usize::MAX, &bytes),
            Action::ClearRequestTrailers => {
                for (name, _) in self.get_http_request_trailers() {
                    self.set_http_request_trailer(&name, None);
                }
            }
            Action::Reply(r) => {
                let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                self.send_http_response(r.status, headers, Some(r.body.as_bytes()));
            }
            Action::Call(call) => match self.dispatch(&call) {
                Ok(id) => self.pending_call = Some(id),
                Err(e) => {
                    warn!("cannot call cluster `{}`: {e:?}", call.cluster);
                    return Some(self.answered(Answer { status: "", body: &[] }));
                }
            },
            Action::Count(counter) => self.shared.borrow().metrics.count(counter),
            Action::SetResponseHeader(name, value) => self.set_http_response_header(&name, value.as_deref()),
            Action::ReplaceResponseBody(bytes) => self.set_http_response_body(0, usize::MAX, &bytes),
            Action::WriteAudit(bytes) => {
                // The access logger reads this as filter state `wasm.scrim_audit`.
                if let Err(status) = proxy_wasm::hostcalls::set_property(vec![AUDIT_PROPERTY], Some(&bytes)) {
                    warn!("audit record not handed to the access log: {status:?}");
                }
            }
            Action::Log(line) => warn!("{line}"),
        }
        None
    }

    fn dispatch(&self, call: &Call) -> Result<u32, proxy_wasm::types::Status> {
        let headers: Vec<(&str, &str)> = call.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.dispatch_http_call(&call.cluster, headers, call.body.as_deref(), vec![], Duration::from_millis(call.timeout_ms))
    }

    /// A call's answer: the flow it yields, for a call made inside a callback.
    fn answered(&mut self, answer: Answer) -> Flow {
        self.pending_call = None;
        self.step(Event::Answer(answer))
    }
}

fn host_flow(flow: Flow) -> HostAction {
    match flow {
        Flow::Hold => HostAction::Pause,
        Flow::Release | Flow::Continue => HostAction::Continue,
    }
}

impl Context for ScrimHttp {
    fn on_http_call_response(&mut self, call: u32, _headers: usize, body_size: usize, _: usize) {
        if self.pending_call != Some(call) {
            return;
        }
        let status = self.get_http_call_response_header(":status").unwrap_or_default();
        let body: Bytes = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        if self.answered(Answer { status: &status, body: &body }) == Flow::Release {
            self.resume_http_request();
        }
    }
}

impl HttpContext for ScrimHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> HostAction {
        let head = RequestHead {
            method: self.get_http_request_header(":method").unwrap_or_default(),
            path: self.get_http_request_header(":path").unwrap_or_default(),
            authorization: self.get_http_request_header("authorization"),
            x_api_key: self.get_http_request_header("x-api-key"),
            content_encoding: self.get_http_request_header("content-encoding"),
            request_id: self.get_http_request_header("x-request-id").unwrap_or_default(),
            session_id: self.get_http_request_header("x-claude-code-session-id"),
            end_of_stream,
        };
        host_flow(self.step(Event::RequestHeaders(&head)))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        host_flow(self.step(Event::RequestBody { size: body_size, end_of_stream }))
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> HostAction {
        host_flow(self.step(Event::RequestTrailers))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> HostAction {
        let head = ResponseHead {
            content_type: self.get_http_response_header("content-type"),
            content_encoding: self.get_http_response_header("content-encoding"),
            end_of_stream,
        };
        host_flow(self.step(Event::ResponseHeaders(&head)))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> HostAction {
        host_flow(self.step(Event::ResponseBody { size: body_size, end_of_stream }))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> HostAction {
        host_flow(self.step(Event::ResponseTrailers))
    }

    fn on_log(&mut self) {
        self.step(Event::Log);
    }
}

impl Metrics {
    /// Counts what the lifecycle reports.
    pub fn count(&self, counter: scrim_core::lifecycle::Counter) {
        use scrim_core::lifecycle::Counter;
        match counter {
            Counter::Decision(o) => self.decision(o),
            Counter::JwtFailure(reason) => self.jwt_failure(reason),
            Counter::TokenCache { hit } => self.token_cache(hit),
            Counter::JwksRefresh { ok } => self.jwks_refresh(ok),
            Counter::Masked { request, count } => self.masked(request, count),
            Counter::Review(outcome) => self.review(outcome),
            Counter::Grant { active } => self.grant(active),
        }
    }
}
