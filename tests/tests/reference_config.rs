//! The reference deployment configuration in envoy/envoy.yaml is loadable by the pinned Envoy
//! and its embedded filter configuration is valid.

use scrim_devstack::paths;
use scrim_devstack::stack::scratch_dir;
use scrim_devstack::tls_front::make_certificates;
use std::process::Command;

fn reference() -> String {
    std::fs::read_to_string(paths::envoy_dir().join("envoy.yaml")).unwrap()
}

#[test]
fn reference_envoy_yaml_passes_envoy_validation() {
    let dir = scratch_dir("reference");
    make_certificates(&dir, "gateway.example").unwrap();
    let yaml = reference()
        .replace("/etc/scrim/tls/tls.crt", &dir.join("server.pem").to_string_lossy())
        .replace("/etc/scrim/tls/tls.key", &dir.join("server.key").to_string_lossy())
        .replace("/etc/scrim/scrim_filter.wasm", &paths::filter_wasm().to_string_lossy());
    let path = dir.join("envoy.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(paths::envoy_binary())
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .env("ANTHROPIC_API_KEY", "sk-ant-api03-validation-only")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{log}");
}

#[test]
fn filter_configuration_in_the_reference_yaml_compiles() {
    let yaml = reference();
    let start = yaml.find("value: |").expect("inline filter configuration") + "value: |".len();
    let json: String = yaml[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.trim_start().starts_with(['{', '}', '"', '[', ']']) || l.trim().is_empty())
        .collect::<Vec<_>>()
        .join("\n");
    scrim_core::config::Config::from_json(json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"));
}
