//! Synthetic, format-valid secrets made fresh at test time, so no credential-shaped literal is
//! ever written into the repository and each run looks for values no other run produced.

use crate::stack::rand_u64;

fn pick(alphabet: &[u8], n: usize) -> String {
    (0..n).map(|_| alphabet[(rand_u64() % alphabet.len() as u64) as usize] as char).collect()
}

/// An AWS access key id shape: `AKIA` and 16 base32 characters.
pub fn aws_access_key_id() -> String {
    format!("AKIA{}", pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16))
}

/// An Anthropic API key shape: `sk-ant-api03-`, 64 alphanumerics and `AA`.
pub fn anthropic_api_key() -> String {
    let alnum = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    format!("sk-ant-api03-{}AA", pick(alnum, 64))
}
