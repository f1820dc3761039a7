//! The precision gates and the generic rules on hard cases of our own
//! (filter/rules/testdata/precision.toml): placeholders, templates, references, names of
//! secrets and vendors' documented example keys are left alone; secret-named assignments in
//! every format are masked. Each case also goes through the streaming masker at every
//! two-way split, which must give the one-shot bytes. Runs natively and in wasm32.

use scrim_core::rules::{expand_example, is_placeholder, RuleSet};
use scrim_core::stream_mask::StreamMasker;
use serde::Deserialize;
use std::sync::{Arc, OnceLock};

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const DATA: &str = include_str!("../../rules/testdata/precision.toml");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    negative: Vec<Negatives>,
    positive: Vec<Positives>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Negatives {
    gate: String,
    texts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Positives {
    format: String,
    /// (text, marker): the secret is what follows the marker up to the next delimiter.
    texts: Vec<(String, String)>,
}

fn data() -> Data {
    toml::from_str(DATA).expect("precision.toml parses")
}

fn rules() -> Arc<RuleSet> {
    static SET: OnceLock<Arc<RuleSet>> = OnceLock::new();
    SET.get_or_init(|| Arc::new(RuleSet::builtin().expect("built-in rules compile"))).clone()
}

fn one_shot(text: &str) -> String {
    rules().mask(text).text.into_owned()
}

fn streamed(text: &str, at: usize) -> String {
    let mut m = StreamMasker::new(rules());
    let mut out = m.push(&text[..at]);
    out += &m.push(&text[at..]);
    out + &m.finish()
}

fn splits_agree(text: &str) -> Result<(), String> {
    let whole = one_shot(text);
    for at in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
        let s = streamed(text, at);
        if s != whole {
            return Err(format!("split at {at} of {text:?}: {s:?} != {whole:?}"));
        }
    }
    Ok(())
}

/// The secret of a positive case: after `marker`, up to a quote, blank, `;`, `,` or `}`.
fn secret_of(text: &str, marker: &str) -> String {
    let from = text.find(marker).expect("marker in text") + marker.len();
    text[from..].split(|c: char| "\"' ;,}\n\r".contains(c)).next().unwrap_or("").to_string()
}

#[test]
fn hard_negatives_are_left_untouched() {
    let mut fails = Vec::new();
    let mut n = 0;
    for group in data().negative {
        for t in &group.texts {
            n += 1;
            let text = expand_example(t);
            let m = rules().mask(&text);
            if !m.hits.is_empty() {
                fails.push(format!("[{}] {text:?} -> {:?} {:?}", group.gate, m.text, m.hits));
            }
        }
    }
    assert!(fails.is_empty(), "{} of {n} hard negatives masked:\n{}", fails.len(), fails.join("\n"));
}

#[test]
fn secret_named_assignments_in_every_format_are_masked() {
    let mut fails = Vec::new();
    for group in data().positive {
        for (t, marker) in &group.texts {
            let text = expand_example(t);
            let secret = secret_of(&text, marker);
            assert!(secret.len() >= 8, "case {t:?}: marker {marker:?} finds no secret");
            let masked = one_shot(&text);
            if masked.contains(&secret) {
                fails.push(format!("[{}] {text:?} -> {masked:?}", group.format));
            }
        }
    }
    assert!(fails.is_empty(), "{} not masked:\n{}", fails.len(), fails.join("\n"));
}

#[test]
fn streaming_at_every_split_equals_one_shot_on_the_hard_cases() {
    let d = data();
    let texts = d
        .negative
        .iter()
        .flat_map(|g| g.texts.iter().cloned())
        .chain(d.positive.iter().flat_map(|g| g.texts.iter().map(|(t, _)| t.clone())));
    let fails: Vec<String> = texts.filter_map(|t| splits_agree(&expand_example(&t)).err()).collect();
    assert!(fails.is_empty(), "{}", fails.join("\n"));
}

#[test]
fn vendor_example_keys_are_placeholders_and_random_keys_are_not() {
    for v in ["AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"] {
        assert!(is_placeholder(v.as_bytes()), "{v}");
    }
    for t in ["{{fake:alnum:40}}", "AKIA{{fake:upperb32:16}}", "{{fake:hex:32}}", "{{fake:b64:44}}"] {
        let v = expand_example(t);
        assert!(!is_placeholder(v.as_bytes()), "{v} taken for a placeholder");
    }
}

#[test]
fn a_value_mostly_of_one_character_is_a_placeholder_but_a_fixed_run_in_a_random_key_is_not() {
    assert!(is_placeholder(b"NRAK-XXXXXXXXXXXXXXXXXXXXXXXXXXX"));
    assert!(is_placeholder(b"tfp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    // Twitter bearer tokens open with 22 `A`s, Dropbox long-lived tokens hold ten.
    let bearer = expand_example("{{repeat:A:22}}{{fake:alnum:80}}");
    assert!(!is_placeholder(bearer.as_bytes()));
}

#[test]
fn templates_and_references_are_placeholders() {
    for v in ["${SECRET}", "$TOKEN", "${{ secrets.X }}", "{{ .Values.key }}", "%PASSWORD%", "<token>", "$(cat f)"] {
        assert!(is_placeholder(v.as_bytes()), "{v}");
    }
}
