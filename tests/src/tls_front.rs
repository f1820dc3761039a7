//! An https upstream for tests: a test CA and server certificate made with the `openssl`
//! command, and a second Envoy that terminates TLS and passes the bytes to a plain server.

use crate::envoy::{free_port, Envoy};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A running TLS front; the gateway validates it against `ca`.
pub struct TlsFront {
    pub envoy: Envoy,
    pub port: u16,
    pub ca: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .map_err(|e| format!("cannot run openssl: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("openssl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// Makes `ca.pem` and a `server.pem`/`server.key` for `dns_name` signed by it, in `dir`.
pub fn make_certificates(dir: &Path, dns_name: &str) -> Result<(), String> {
    openssl(dir, &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=Scrim Test CA"])?;
    openssl(dir, &["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "server.key", "-out", "server.csr", "-subj", &format!("/CN={dns_name}")])?;
    std::fs::write(dir.join("server.ext"), format!("subjectAltName=DNS:{dns_name}\n"))
        .map_err(|e| e.to_string())?;
    openssl(dir, &["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "1", "-extfile", "server.ext"])
}

impl TlsFront {
    /// Serves TLS with a certificate for `dns_name` on a free loopback port, forwarding to
    /// `backend`.
    pub async fn start(dir: &Path, dns_name: &str, backend: SocketAddr) -> Result<TlsFront, String> {
        make_certificates(dir, dns_name)?;
        let port = free_port();
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.display();
        let config = format!(
            r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: {admin_port} }} }}
static_resources:
  listeners:
  - address: {{ socket_address: {{ address: 127.0.0.1, port_value: {port} }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            tls_certificates:
            - certificate_chain: {{ filename: "{d}/server.pem" }}
              private_key: {{ filename: "{d}/server.key" }}
      filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tls_front
          cluster: backend
  clusters:
  - name: backend
    type: STATIC
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: {ip}, port_value: {bport} }} }} }}
"#,
            admin_port = admin.port(),
            ip = backend.ip(),
            bport = backend.port(),
        );
        let envoy = Envoy::start_config(&config, dir, "tls-front", 1, &[], admin).await?;
        Ok(TlsFront { envoy, port, ca: dir.join("ca.pem") })
    }
}
