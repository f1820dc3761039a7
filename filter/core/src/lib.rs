//! Host-independent logic of the Scrim filter.
//!
//! Nothing here imports proxy-wasm or reads the clock: every decision is a function of its
//! inputs and an injected `now` (seconds since the Unix epoch), so each one is unit-tested
//! natively and the wasm crate only moves bytes and headers.
//!
//! - [`config`]: the plugin configuration as written (`RawConfig`) and compiled (`Config`).
//! - [`auth`]: JWT verification against per-issuer key sets, the verified-token cache.
//! - [`jwks`]: parsing a JWKS document into keys usable for verification.
//! - [`keystore`]: per-VM key sets and when to fetch them again.
//! - [`credential`]: which headers to drop and which to set towards the upstream.
//! - [`exchange`]: one exchange gathered along the callbacks, turned into its audit record.
//! - [`policy`]: per-group limits (models, `max_tokens`, endpoints), deny and approval rules.
//! - [`review`]: approvals and grants as the filter sees them (fingerprint, protocol, cache).
//! - [`transcript`]: what the client saw, rebuilt from the bytes sent, for the audit record.
//! - [`lifecycle`]: one exchange as a sans-IO state machine: host events in, actions out.
//! - [`errors`]: the Anthropic error shape of a local reply.
//! - [`rules`]: secret rules as data (built-in TOML, custom rules) compiled into a `RuleSet`.
//! - [`mask`]: one-shot masking of a text with a `RuleSet`.
//! - `keywords`: the keyword automaton both maskers scan text with.
//! - [`stream_mask`]: masking a text stream pushed in pieces, equal to one-shot masking.
//! - [`sse`]: incremental server-sent-events framing that keeps each event's exact bytes.
//! - [`audit`]: the audit record schema shared with the recorder.
//! - [`json_doc`]: strict one-pass reading of a JSON body (no duplicate keys), every leaf located.
//! - [`inspect`]: closed-world handling of whole bodies: endpoint by canonical path, request
//!   facts and texts, masking every string of a request or a buffered response.
//! - [`anthropic`]: JSON string encoding and decoding shared by the body and stream maskers.
//! - [`anthropic_stream`]: masking a streamed (SSE) Messages API or OpenAI chat response,
//!   split anywhere.

pub mod auth;
pub mod config;
pub mod credential;
pub mod errors;
pub mod jwks;
pub mod keystore;
pub mod audit;
pub mod mask;
mod keywords;
pub mod rules;
pub mod stream_mask;
pub mod sse;
pub mod transcript;
pub mod exchange;
pub mod anthropic;
pub mod inspect;
pub mod json_doc;
pub mod anthropic_stream;
#[cfg(any(test, feature = "testkit"))]
#[doc(hidden)]
pub mod testkit;
pub mod policy;
pub mod review;
pub mod lifecycle;
