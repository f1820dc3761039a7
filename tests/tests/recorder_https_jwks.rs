//! The recorder's auditor API verifies tokens with keys it fetches from an identity provider
//! served over https: trusted through `--jwks-ca-file` roots, refused (503, fail closed) when
//! the certificate cannot be validated.

use scrim_devstack::idp::DevIdp;
use scrim_devstack::keys::SigningKey;
use scrim_devstack::stack::{dev_filter_config, now, scratch_dir, DEV_AUDIENCE};
use scrim_devstack::tls_front::TlsFront;
use scrim_recorder::api::{self, Api, ApiConfig, OpenStore};
use scrim_recorder::store;
use serde_json::json;
use std::sync::Arc;

/// The auditor API over an empty store on a loopback port; returns its address.
async fn serve_api(issuer: &str, jwks_uri: &str, roots: Vec<reqwest::Certificate>, db: String) -> std::net::SocketAddr {
    let auth = scrim_core::config::Config::from_json(dev_filter_config(issuer, jwks_uri).to_string().as_bytes())
        .expect("dev configuration parses");
    let open: OpenStore = Arc::new(move || store::open(&db));
    let api = Api::start(ApiConfig { jwks_roots: roots, ..ApiConfig::auditing(auth, "auditors") }, open).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(api::serve(listener, api::router(api), std::future::pending()));
    addr
}

#[tokio::test]
async fn https_jwks_is_trusted_through_the_configured_ca_and_refused_without_it() {
    let dir = scratch_dir("recorder-https-jwks");
    let key = SigningKey::generate(jsonwebtoken::Algorithm::ES256, "k1").unwrap();
    let idp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let idp_addr = idp_listener.local_addr().unwrap();
    let issuer = format!("http://{idp_addr}");
    let idp = DevIdp::start(idp_listener, issuer.clone(), vec![key.clone()]).unwrap();
    let front = TlsFront::start(&dir, "localhost", idp.addr()).await.unwrap();
    let jwks_uri = format!("https://localhost:{}/jwks", front.port);
    let ca = std::fs::read(&front.ca).unwrap();
    let token = key.mint(&json!({
        "iss": issuer, "aud": DEV_AUDIENCE, "sub": "carol", "groups": ["auditors"],
        "iat": now(), "exp": now() + 600
    }));
    let db = dir.join("audit.db").display().to_string();

    let trusted = serve_api(&issuer, &jwks_uri, reqwest::Certificate::from_pem_bundle(&ca).unwrap(), db.clone()).await;
    let untrusted = serve_api(&issuer, &jwks_uri, Vec::new(), db).await;
    let fetched_by_trusted = idp.jwks_requests();
    assert!(fetched_by_trusted >= 1, "the trusted API fetched the keys through TLS");

    let http = reqwest::Client::new();
    let ask = |addr: std::net::SocketAddr| http.get(format!("http://{addr}/v1/sessions")).bearer_auth(&token).send();
    let ok = ask(trusted).await.unwrap();
    assert_eq!(ok.status().as_u16(), 200, "{}", ok.text().await.unwrap());
    let refused = ask(untrusted).await.unwrap();
    assert_eq!(refused.status().as_u16(), 503, "keys from an unvalidated certificate are never used");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["type"], "error");
    assert_eq!(idp.jwks_requests(), fetched_by_trusted, "no key material crossed the failed handshakes");
}
