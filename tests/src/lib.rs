//! Test and development servers for Scrim.
//!
//! - [`keys`]: signing keys that mint JWTs and publish their JWKs.
//! - [`idp`]: [`idp::DevIdp`], a minimal OIDC provider serving discovery and a JWKS built
//!   from those keys, and [`idp::DevIdentity`], a persistent key pair for `make run`.
//! - [`stand_in`]: [`stand_in::ClaudeStandIn`], a local Anthropic Messages API that records
//!   every request and can hold a stream open mid-response.
//! - [`envoy`]: renders `envoy/dev.yaml.tmpl` and runs a real Envoy with the filter.
//! - [`recorder`]: the recorder service in-process on loopback, with queries for tests.
//! - [`fake`]: synthetic secrets generated at test time.
//! - [`stack`]: all of the above started together on loopback, for tests and `make run`.
//! - [`paths`]: where the tools and build outputs are.
//! - [`tls_front`]: an https upstream with a test CA, for the upstream TLS tests.
//! - [`oidc_provider`]: the certified `oidc-provider` (npm) as a real OpenID provider, a
//!   scripted browser that signs in on its pages, and the `scrim` command for login tests.

pub mod idp;
pub mod keys;
mod server;
pub mod stand_in;
pub mod envoy;
pub mod paths;
pub mod stack;
pub mod tls_front;
pub mod recorder;
pub mod fake;
pub mod oidc_provider;
