//! gitleaks' own true- and false-positive cases (filter/rules/testdata/gitleaks_cases.toml,
//! ported by filter/rules/port_gitleaks.py) run against our built-in rules, through the map
//! of gitleaks rule ids to ours in filter/rules/README.md: every true positive is masked by
//! its mapped rule, and no false positive is touched by it. Runs natively and, under
//! `make test-wasm`, in wasm32.

use scrim_core::rules::RuleSet;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::OnceLock;

#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

const CASES: &str = include_str!("../../rules/testdata/gitleaks_cases.toml");
const MAP: &str = include_str!("../../rules/README.md");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    rule: String,
    positive: Vec<String>,
    negative: Vec<String>,
}

fn rules() -> &'static RuleSet {
    static SET: OnceLock<RuleSet> = OnceLock::new();
    SET.get_or_init(|| RuleSet::builtin().expect("built-in rules compile"))
}

fn cases() -> Vec<Case> {
    toml::from_str::<CaseFile>(CASES).expect("cases parse").case
}

/// gitleaks id → (our rule ids, whether negatives are checked), from the README's table
/// rows `| gitleaks-id | our-id[, our-id] | note |`.
fn map() -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    let mut inside = false;
    for line in MAP.lines() {
        if line.starts_with("## ") {
            inside = line.contains("gitleaks");
            continue;
        }
        if !inside || !line.starts_with("| `") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let ours = cells[2]
            .split(',')
            .map(|c| c.trim().trim_matches('`').to_string())
            .filter(|c| !c.is_empty() && c != "–")
            .collect();
        out.insert(cells[1].trim_matches('`').to_string(), ours);
    }
    out
}

fn hit_ids(text: &str) -> Vec<String> {
    rules().mask(text).hits.into_iter().map(|(id, _)| id).collect()
}

#[test]
fn every_gitleaks_rule_id_is_mapped_to_existing_rules() {
    let ours: Vec<&str> = rules().ids().collect();
    let map = map();
    let gitleaks_ids: Vec<&str> = GITLEAKS_IDS.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let mut missing = Vec::new();
    for id in &gitleaks_ids {
        match map.get(*id) {
            None => missing.push(format!("{id}: not in the table")),
            Some(targets) => {
                for t in targets {
                    if !ours.contains(&t.as_str()) {
                        missing.push(format!("{id}: maps to unknown rule {t}"));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "{} problems:\n{}", missing.len(), missing.join("\n"));
}

#[test]
#[ignore = "not met yet: 70 non-XML true positives and the single-line XML samples are missed (see the report); run with --ignored"]
fn gitleaks_true_positives_are_masked_by_the_mapped_rule() {
    let map = map();
    let (mut pass, mut fail) = (0, Vec::new());
    for case in cases() {
        let Some(targets) = map.get(&case.rule) else { continue };
        if targets.is_empty() {
            continue;
        }
        for tp in &case.positive {
            let hits = hit_ids(tp);
            if hits.iter().any(|h| targets.contains(h)) {
                pass += 1;
            } else {
                fail.push(format!("{} -> {:?}: {tp:?} (hits {hits:?})", case.rule, targets));
            }
        }
    }
    println!("gitleaks true positives masked: {pass} of {}", pass + fail.len());
    assert!(fail.is_empty(), "{} of {} not masked:\n{}", fail.len(), pass + fail.len(), fail.join("\n"));
}

#[test]
#[ignore = "not met yet: 29 of 269 gitleaks false positives are masked (see the report); run with --ignored"]
fn gitleaks_false_positives_are_left_alone_by_the_mapped_rule() {
    let map = map();
    let (mut pass, mut fail) = (0, Vec::new());
    for case in cases() {
        let Some(targets) = map.get(&case.rule) else { continue };
        for fp in &case.negative {
            let hits = hit_ids(fp);
            if hits.iter().any(|h| targets.contains(h)) {
                fail.push(format!("{} -> {:?}: {fp:?} (hits {hits:?})", case.rule, targets));
            } else {
                pass += 1;
            }
        }
    }
    println!("gitleaks false positives left alone: {pass} of {}", pass + fail.len());
    assert!(fail.is_empty(), "{} of {} masked:\n{}", fail.len(), pass + fail.len(), fail.join("\n"));
}

/// Every rule id of gitleaks' default configuration at the ported commit.
const GITLEAKS_IDS: &str = include_str!("../../rules/testdata/gitleaks_ids.txt");

/// Not a check: prints, per gitleaks id, how many of its cases each of our rules masks
/// (`cargo test -p scrim-core --test rules_gitleaks -- --ignored --nocapture`), the
/// evidence behind the README's map.
#[test]
#[ignore]
fn print_which_rules_catch_each_gitleaks_rule() {
    for case in cases() {
        let mut by_rule: HashMap<String, usize> = HashMap::new();
        for tp in &case.positive {
            for h in hit_ids(tp) {
                *by_rule.entry(h).or_default() += 1;
            }
        }
        let mut fp_hits: HashMap<String, usize> = HashMap::new();
        for fp in &case.negative {
            for h in hit_ids(fp) {
                *fp_hits.entry(h).or_default() += 1;
            }
        }
        // Which cases a rule of that id masks itself, and which negatives no rule touches:
        // the candidates for the rule's own examples in builtin.toml.
        for (i, tp) in case.positive.iter().enumerate() {
            if hit_ids(tp).contains(&case.rule) {
                println!("SELF\t{}\t{i}", case.rule);
            }
        }
        for (i, fp) in case.negative.iter().enumerate() {
            if hit_ids(fp).is_empty() {
                println!("CLEAN\t{}\t{i}", case.rule);
            }
        }
        let mut v: Vec<_> = by_rule.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1));
        println!("DIAG\t{}\t{}\t{:?}\t{}\t{:?}", case.rule, case.positive.len(), v, case.negative.len(), fp_hits);
    }
}
