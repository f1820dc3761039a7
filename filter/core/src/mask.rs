//! One-shot masking: replaces every secret a [`RuleSet`] finds in a text with the rule's
//! placeholder. The streaming masker ([`crate::stream_mask`]) runs the very same planning
//! step on a moving buffer, which is why both give identical bytes.
//!
//! What counts as a match (the definition both maskers implement):
//! 1. every occurrence of every keyword (ASCII case-insensitive, overlapping) is found;
//! 2. for each (occurrence at `s`, rule listing that keyword), the rule's regex is searched in
//!    its window `[s - before, end)` where `end` is the first of: the line end (single-line
//!    rules), just past `end_marker` (multi-line rules), `s + max_len`, the end of the text.
//!    The window's end acts as the end of the text (`$`, `\z`); bytes before the window are
//!    visible as context (`\b`). The first match that contains `s` is the candidate;
//!    occurrences of a rule are taken in order of start, and one that starts inside the match
//!    of an earlier evaluated occurrence of the same rule (whether that match became a
//!    candidate or failed step 3) is not evaluated: that text was already read as one value;
//! 3. the candidate's secret (its capture group, widened to whole UTF-8 characters) must be
//!    non-empty, pass the entropy floor and the allowlist, and must not contain the
//!    placeholder's fixed text (so masking twice changes nothing);
//! 4. among candidates, secret spans are chosen leftmost-longest: ordered by start, then
//!    longer first, then rule order; a candidate overlapping an already chosen one is dropped.
//!
//! Limit: a secret is only found inside a window, so a value longer than its rule's
//! `max_len` is masked only as far as the rule's regex reaches inside the window.
//!
//! Cost: the skip in step 2 is what keeps masking linear. Without it a keyword repeated
//! inside its own rule's match (`sessiontoken=` repeated: every copy starts a 2000-byte match
//! that fails the entropy floor) cost a regex search over the whole match per copy
//! (0.1 MB/s). Its limit: a secret that starts with its own rule's keyword *inside* a value
//! already matched by that rule is judged only as part of that value. Keyword occurrences
//! are scanned and evaluated in chunks of [`SCAN_CHUNK`] bytes, so the memory they take is
//! bounded however dense they are (a run of `A` holds a keyword at every byte).

use crate::rules::RuleSet;
use crate::stream_mask::{may_start, Walk};
use regex_automata::{Anchored, Input};
use std::borrow::Cow;

/// Bytes of text scanned for keywords before the occurrences found in them are evaluated:
/// bounds the occurrences held at once (a keyword can occur at every byte).
const SCAN_CHUNK: usize = 16 * 1024;

/// Single-lane step while the keyword automaton is away from its start between chunks.
const RESYNC_STEP: usize = 64;

/// Result of masking a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked<'a> {
    /// The masked text; borrowed (byte for byte the input) when nothing was masked.
    pub text: Cow<'a, str>,
    /// How many secrets each rule masked, in rule order; only rules with hits.
    pub hits: Vec<(String, usize)>,
}

/// One secret to replace: byte span in the planned buffer and the rule index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) rule: u32,
}

/// What may be emitted from a buffer: everything in `[seg_start, cut)` is final, and
/// the scratch's `spans` (sorted, disjoint, inside that range) are the secrets in it. Keyword
/// occurrences from `rescan_from` on may still produce secrets at or after `cut`, so the next
/// plan must look at them again.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Plan {
    pub(crate) cut: usize,
    pub(crate) rescan_from: usize,
}

/// Working memory of [`RuleSet::plan`], kept by a streaming masker so that a push allocates
/// nothing but its output; `spans` holds the last plan's secrets.
///
/// It also remembers the keyword occurrences found so far: every occurrence in the buffer
/// that starts at or after `scanned_from` and ends at or before `scanned_to`, and the
/// keyword automaton's state after `buf[..scanned_to]`. While a window stays open (a
/// private-key block is held up to 16 KiB), each push would otherwise scan the whole held
/// text for keywords again; with this, only the new bytes are scanned.
///
/// Per occurrence it keeps what later plans would otherwise redo over the whole window on
/// every push: the candidate once the window has closed, and for a window still open how far
/// its end was looked for and how far its rule's DFA walked.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    occurrences: Vec<Occurrence>,
    scanned_from: usize,
    scanned_to: usize,
    state: u32,
    candidates: Vec<Candidate>,
    pub(crate) spans: Vec<Span>,
    /// Per rule (without `before`): the end of the last match an occurrence of it had;
    /// occurrences of the rule starting before it are not evaluated.
    skip_until: Vec<usize>,
}

impl Scratch {
    /// The buffer lost its first `drained` bytes, and occurrences before `decided` (offset
    /// before the drain) will not be looked at again.
    pub(crate) fn rebase(&mut self, drained: usize, decided: usize, len_after: usize) {
        self.occurrences.retain(|o| o.start >= decided);
        for o in &mut self.occurrences {
            o.start -= drained;
            o.searched_to -= drained;
            if let Some(Some(c)) = &mut o.decided {
                c.occurrence -= drained;
                c.start -= drained;
                c.end -= drained;
            }
            if let Some(walk) = &mut o.walk {
                walk.rebase(drained);
            }
        }
        for e in &mut self.skip_until {
            *e = e.saturating_sub(drained);
        }
        self.scanned_from = decided - drained;
        self.scanned_to = len_after;
    }

    /// The buffer starts over: nothing is known of it.
    pub(crate) fn forget(&mut self) {
        self.occurrences.clear();
        self.scanned_from = 0;
        self.scanned_to = 0;
        self.state = 0;
        self.skip_until.fill(0);
    }
}

/// A keyword occurrence of one rule, and what is known of its window so far.
#[derive(Debug, Clone, Copy)]
struct Occurrence {
    start: usize,
    rule: u32,
    /// Once the window has closed: its candidate, if any (the window's bytes cannot change).
    decided: Option<Option<Candidate>>,
    /// The window's end is not before this offset (searched up to it, nothing found).
    searched_to: usize,
    /// The rule's DFA walk over the open window, continued by the next plan.
    walk: Option<Walk>,
}

impl Occurrence {
    fn new(start: usize, rule: u32) -> Self {
        Occurrence { start, rule, decided: None, searched_to: start, walk: None }
    }
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    /// The keyword occurrence that produced it.
    occurrence: usize,
    start: usize,
    end: usize,
    rule: u32,
}

impl RuleSet {
    /// Masks `text` in one go.
    pub fn mask<'a>(&self, text: &'a str) -> Masked<'a> {
        let mut scratch = Scratch::default();
        let plan = self.plan(text, 0, 0, true, &mut scratch);
        if scratch.spans.is_empty() {
            return Masked { text: Cow::Borrowed(text), hits: Vec::new() };
        }
        let mut out = String::with_capacity(text.len());
        self.render(text, 0, plan.cut, &scratch.spans, &mut out);
        Masked { text: Cow::Owned(out), hits: self.count_hits(&scratch.spans) }
    }

    /// Appends `hay[from..cut]` to `out` with the secrets `spans` replaced.
    pub(crate) fn render(&self, hay: &str, from: usize, cut: usize, spans: &[Span], out: &mut String) {
        let mut at = from;
        for span in spans {
            out.push_str(&hay[at..span.start]);
            out.push_str(&self.placeholder.0);
            out.push_str(&self.rules[span.rule as usize].id);
            out.push_str(&self.placeholder.1);
            at = span.end;
        }
        out.push_str(&hay[at..cut]);
    }

    pub(crate) fn count_hits(&self, spans: &[Span]) -> Vec<(String, usize)> {
        let mut counts = vec![0usize; self.rules.len()];
        for s in spans {
            counts[s.rule as usize] += 1;
        }
        counts
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(i, &c)| (self.rules[i].id.clone(), c))
            .collect()
    }

    /// Plans masking of `hay[seg_start..]`; `hay[..seg_start]` is already-emitted text, and
    /// keyword occurrences before `scan_from` were fully decided by an earlier plan.
    ///
    /// With `finished`, the whole rest is final (`cut == hay.len()`). Otherwise `cut` stops
    /// before anything that text still to come could change: the window of a keyword not
    /// complete yet, or a keyword still arriving at the end of the buffer (each minus its
    /// rule's `before`), and before a chosen secret that straddles that point. Candidates
    /// whose secret starts before `seg_start` were decided by an earlier plan: ignored.
    pub(crate) fn plan(
        &self,
        hay: &str,
        scan_from: usize,
        seg_start: usize,
        finished: bool,
        scratch: &mut Scratch,
    ) -> Plan {
        let bytes = hay.as_bytes();
        let len = bytes.len();
        let mut limit = len;
        let Scratch { occurrences, scanned_from, scanned_to, state, candidates, spans, skip_until } = scratch;
        candidates.clear();
        spans.clear();
        if skip_until.len() != self.rules.len() {
            skip_until.clear();
            skip_until.resize(self.rules.len(), 0);
        }
        // Occurrences already found (see `Scratch`): only the bytes after `scanned_to` are
        // new, and the automaton goes on from its state there.
        let keywords = &self.keywords;
        if scan_from < *scanned_from || *scanned_to > len || *scanned_to < scan_from {
            occurrences.clear();
            skip_until.fill(0);
            *scanned_to = scan_from;
            *state = keywords.start();
        }
        occurrences.retain(|o| o.start >= scan_from);
        let mut pos = *scanned_to;
        (*scanned_from, *scanned_to) = (scan_from, len);

        // The keyword scan and the evaluation of occurrences go chunk by chunk, so that the
        // occurrences held at once stay within a chunk's worth (a run of one character can
        // hold a keyword at every byte), and in order of start, which the per-rule skip needs
        // (`skip_until`: an occurrence inside the match of an earlier occurrence of the same
        // rule is not evaluated; see the module doc). `occurrences[..done]` were evaluated by
        // this plan.
        let mut rescan_from = usize::MAX;
        let mut done = 0;
        loop {
            let end = if len - pos > SCAN_CHUNK { pos + SCAN_CHUNK } else { len };
            let mut found = |s: usize, rule: u32| {
                if s >= scan_from {
                    occurrences.push(Occurrence::new(s, rule));
                }
            };
            // Two lanes need the automaton at its start: get there in small single-lane steps
            // (in text it is back within a few bytes; in a run of a keyword's bytes it may
            // never be, and one lane does the whole chunk).
            while *state != keywords.start() && end - pos > 2 * RESYNC_STEP {
                *state = keywords.scan(*state, &bytes[..pos + RESYNC_STEP], pos, &mut found);
                pos += RESYNC_STEP;
            }
            *state = keywords.scan(*state, &bytes[..end], pos, &mut found);
            pos = end;
            let last = end == len;
            // Every occurrence starting before `found_before` has been found: one found later
            // ends past `end`, so it starts at most `max_keyword_len - 1` bytes before that.
            // At the end of an unfinished buffer, one found later starts where a keyword may
            // be arriving: at or after the start of the longest keyword prefix the text ends
            // with (`held_after`).
            let found_before = (end + 1).saturating_sub(self.max_keyword_len);
            let held_after = if last && !finished { len - keywords.depth(*state) } else { usize::MAX };
            // The scan reports occurrences in no particular order (two lanes, keywords of
            // several lengths), but nearly sorted: this costs little.
            occurrences[done..].sort_by_key(|o| o.start);
            let settled = if last {
                occurrences.len()
            } else {
                done + occurrences[done..].partition_point(|o| o.start < found_before)
            };
            let mut kept = done;
            for i in done..settled {
                let occ = &mut occurrences[i];
                self.evaluate(hay, occ, seg_start, finished, held_after, skip_until, candidates, &mut limit, &mut rescan_from);
                // An occurrence without a candidate is done with for good.
                if !matches!(occ.decided, Some(None)) {
                    occurrences.swap(kept, i);
                    kept += 1;
                }
            }
            occurrences.drain(kept..settled);
            done = kept;
            if last {
                break;
            }
        }

        // Longest keyword prefix the text ends with: a keyword still arriving starts no
        // earlier than that.
        let arriving_from = len - keywords.depth(*state);

        if !finished {
            // A rule whose secret precedes its keyword: the run of bytes that could be such
            // a secret, before a keyword that may be arriving (below) or not have started yet.
            let before_run = |r: u32, i: usize| {
                let rule = &self.rules[r as usize];
                let class = rule.before_class.as_deref().expect("compiled with before_class");
                i - bytes[..i].iter().rev().take(rule.before).take_while(|&&b| class[b as usize]).count()
            };
            // A keyword may be arriving: its first bytes end the buffer.
            let lo = len.saturating_sub(self.max_keyword_len.saturating_sub(1)).max(scan_from).max(arriving_from);
            let mut arriving = None;
            for i in lo..len {
                let Some(node) = self.keyword_trie.walk(&bytes[i..]) else { continue };
                if arriving.is_none() && node.is_proper_prefix() {
                    arriving = Some(i);
                }
                for &r in &node.before_rules {
                    limit = limit.min(before_run(r, i));
                }
            }
            if let Some(i) = arriving {
                limit = limit.min(i);
            }
            match &self.before_runs {
                Some(runs) => limit = limit.min(runs.start(bytes, len)),
                None => {
                    for &r in &self.before_rules {
                        limit = limit.min(before_run(r, len));
                    }
                }
            }
        }

        let limit = floor_char(hay, limit.max(seg_start));

        candidates.sort_unstable_by_key(|c| (c.start, std::cmp::Reverse(c.end), c.rule));
        let mut last_end = seg_start;
        for c in candidates.iter() {
            if c.start >= limit {
                break;
            }
            if c.start >= last_end {
                spans.push(Span { start: c.start, end: c.end, rule: c.rule });
                last_end = c.end;
            }
        }
        let mut cut = limit;
        if let Some(last) = spans.last() {
            if last.end > limit {
                // Final, but cutting inside it would split a placeholder: keep it for later.
                cut = last.start;
                spans.pop();
            }
        }
        for c in candidates.iter() {
            if c.start >= cut {
                rescan_from = rescan_from.min(c.occurrence);
            }
        }
        Plan { cut, rescan_from: rescan_from.min(cut) }
    }

    /// Evaluates one keyword occurrence (see [`Self::plan`]): a decision made earlier is
    /// taken as it stands; else the occurrence is skipped (inside the match of an earlier
    /// occurrence of its rule), held (its window is still open, or an occurrence of its rule
    /// starting earlier may still arrive: it starts after `held_after`), or decided
    /// now, adding its candidate.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        hay: &str,
        occ: &mut Occurrence,
        seg_start: usize,
        finished: bool,
        held_after: usize,
        skip_until: &mut [usize],
        candidates: &mut Vec<Candidate>,
        limit: &mut usize,
        rescan_from: &mut usize,
    ) {
        if let Some(decided) = occ.decided {
            candidates.extend(decided.filter(|c| c.start >= seg_start));
            return;
        }
        let bytes = hay.as_bytes();
        let len = bytes.len();
        let (s, r) = (occ.start, occ.rule);
        let rule = &self.rules[r as usize];
        if rule.before == 0 && s < skip_until[r as usize] {
            occ.decided = Some(None);
            return;
        }
        let win_start = s.saturating_sub(rule.before);
        let cap = s + rule.max_len;
        let scan_end = cap.min(len);
        let stop = if rule.multiline {
            // The end marker may straddle what was searched before.
            let from = occ.searched_to.saturating_sub(self.max_end_marker_len).max(s);
            rule.end_finder.as_ref().and_then(|f| f.find(&bytes[from..scan_end]).map(|m| from + m.end()))
        } else {
            memchr::memchr(b'\n', &bytes[occ.searched_to..scan_end]).map(|p| occ.searched_to + p)
        };
        let win_end = match stop {
            Some(e) => e,
            None if cap <= len => cap,
            None if finished => len,
            None => {
                occ.searched_to = scan_end;
                // The window is still growing. If its rule can no longer match at any start
                // a candidate could have (`win_start..=s`, see `candidate`), the occurrence
                // has no candidate whatever follows: decided now, as the whole window will
                // show (and having no match, it makes no later occurrence skip).
                if !may_start(rule, bytes, win_start, s, &mut occ.walk) {
                    occ.decided = Some(None);
                    return;
                }
                // Otherwise nothing from the window's start on is final yet.
                *limit = (*limit).min(win_start);
                *rescan_from = (*rescan_from).min(s);
                return;
            }
        };
        if rule.before == 0 && s > held_after {
            // A longer keyword of the same rule around this one may still be arriving; its
            // occurrence starts earlier and must be evaluated first. (`searched_to` stays:
            // the window's end found now is found again then.)
            *limit = (*limit).min(win_start);
            *rescan_from = (*rescan_from).min(s);
            return;
        }
        let (c, match_end) = self.candidate(hay, r, s, win_start, win_end);
        if rule.before == 0 {
            if let Some(e) = match_end {
                skip_until[r as usize] = skip_until[r as usize].max(e);
            }
        }
        occ.decided = Some(c);
        candidates.extend(c.filter(|c| c.start >= seg_start));
    }

    /// The candidate secret of rule `r` for the keyword occurrence at `s`, if any, and (for
    /// a rule without `before`) the end of the occurrence's match, accepted or not.
    fn candidate(&self, hay: &str, r: u32, s: usize, win_start: usize, win_end: usize) -> (Option<Candidate>, Option<usize>) {
        let m = match self.find_match(r, hay.as_bytes(), s, win_start, win_end) {
            Some(m) => m,
            None => return (None, None),
        };
        (self.accept(hay, r, s, win_end, m), Some(m.end()))
    }

    /// The match of rule `r` that gives occurrence `s` its candidate: the first in the window
    /// that contains `s`.
    fn find_match(&self, r: u32, bytes: &[u8], s: usize, win_start: usize, win_end: usize) -> Option<regex_automata::Match> {
        let rule = &self.rules[r as usize];
        let window = &bytes[..win_end];
        let from = |at: usize| Input::new(window).span(at..win_end);
        Some(if rule.before == 0 {
            // The match must contain `s` and start in `win_start..=s`, that is at `s`: one
            // anchored search, which stops where the regex cannot go on, rather than a
            // search for a match anywhere up to the window's end.
            let m = rule.regex.search(&from(s).anchored(Anchored::Yes))?;
            if m.end() <= s {
                return None;
            }
            m
        } else {
            // The first match (in find-iter order within the window) that contains `s`.
            let mut at = win_start;
            loop {
                let m = rule.regex.search(&from(at))?;
                if m.start() > s {
                    return None;
                }
                if m.end() > s {
                    break m;
                }
                at = if m.end() > at { m.end() } else { at + 1 };
                if at > s {
                    return None;
                }
            }
        })
    }

    /// The candidate of occurrence `s` from its match `m`: the rule's secret group, if it
    /// passes the rule's checks.
    fn accept(&self, hay: &str, r: u32, s: usize, win_end: usize, m: regex_automata::Match) -> Option<Candidate> {
        let rule = &self.rules[r as usize];
        let (a, b) = if rule.group == 0 {
            (m.start(), m.end())
        } else {
            let mut caps = rule.regex.create_captures();
            let input = Input::new(&hay.as_bytes()[..win_end]).span(m.start()..win_end);
            rule.regex.search_captures(&input.anchored(Anchored::Yes), &mut caps);
            let g = caps.get_group(rule.group)?;
            (g.start, g.end)
        };
        if a >= b {
            return None;
        }
        let (a, b) = (floor_char(hay, a), ceil_char(hay, b));
        let secret = &hay.as_bytes()[a..b];
        if let Some(min) = rule.entropy {
            if crate::rules::shannon_entropy(secret) < min {
                return None;
            }
        }
        if rule.allowlist.iter().any(|al| al.is_match(secret)) {
            return None;
        }
        let fixed = self.placeholder.0.as_bytes();
        if !fixed.is_empty() && find_bytes(secret, fixed).is_some() {
            return None;
        }
        Some(Candidate { occurrence: s, start: a, end: b, rule: r })
    }
}

fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

pub(crate) fn floor_char(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

pub(crate) fn ceil_char(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i.min(s.len())
}

#[cfg(test)]
mod tests {
    use crate::rules::{compile_rules, expand_example, RawRule, RuleSet};
    use std::borrow::Cow;
    use std::sync::OnceLock;

    pub(crate) fn builtin() -> &'static RuleSet {
        static SET: OnceLock<RuleSet> = OnceLock::new();
        SET.get_or_init(|| RuleSet::builtin().expect("built-in rules compile"))
    }

    fn raw(id: &str, regex: &str, keywords: &[&str]) -> RawRule {
        let mut r: RawRule = serde_json::from_value(serde_json::json!({
            "id": id, "regex": regex, "keywords": keywords,
        }))
        .unwrap();
        r.description = id.into();
        r
    }

    // Shared with the wasm tests (tests/wasm.rs): crate::testkit.
    #[test]
    fn every_builtin_positive_example_is_masked_by_its_rule() {
        crate::testkit::examples::check_positive_masked(builtin());
    }

    #[test]
    fn every_builtin_negative_example_is_left_untouched() {
        crate::testkit::examples::check_negative_untouched(builtin());
    }

    #[test]
    fn masking_is_idempotent_on_every_example() {
        let set = builtin();
        for raw in crate::rules::builtin_raw_rules().unwrap() {
            for ex in raw.examples.positive.iter().chain(&raw.examples.negative) {
                let once = set.mask(&expand_example(ex)).text.into_owned();
                let twice = set.mask(&once);
                assert_eq!(twice.text, once, "rule {}", raw.id);
                assert!(twice.hits.is_empty());
            }
        }
    }

    #[test]
    fn no_placeholder_matches_any_rule() {
        let set = builtin();
        for id in set.ids() {
            let p = set.placeholder_for(id);
            for text in [p.clone(), format!("token = {p}"), format!("password: \"{p}\""), format!("{p}{p}")] {
                let m = set.mask(&text);
                assert!(m.hits.is_empty(), "{text:?} -> {:?}", m.hits);
            }
        }
    }

    #[test]
    fn text_without_secrets_is_returned_borrowed() {
        let text = "fn main() {\n    println!(\"hello, wörld\");\n}\n";
        assert!(matches!(builtin().mask(text).text, Cow::Borrowed(t) if std::ptr::eq(t, text)));
    }

    #[test]
    fn leftmost_secret_wins_an_overlap() {
        let set = compile_rules(
            &[],
            &[raw("long", "ab(cdef)", &["ab"]), raw("short", "cd(e)", &["cd"])],
            &[],
        )
        .unwrap();
        assert_eq!(set.mask("xabcdefx").text, "xab[REDACTED:long]x");
    }

    #[test]
    fn longer_secret_wins_at_the_same_start_and_rule_order_breaks_ties() {
        let rules = [raw("first", "k=(v+)", &["k="]), raw("second", "k=(v+x)", &["k="])];
        let set = compile_rules(&[], &rules, &[]).unwrap();
        assert_eq!(set.mask("k=vvvx").text, "k=[REDACTED:second]");
        let rules = [raw("first", "k=(v+)", &["k="]), raw("second", "k=(v+)", &["k="])];
        let set = compile_rules(&[], &rules, &[]).unwrap();
        assert_eq!(set.mask("k=vv").text, "k=[REDACTED:first]");
    }

    #[test]
    fn masking_the_same_input_twice_gives_the_same_bytes() {
        let text = expand_example("a: AKIA{{fake:upper:16}} b: ghp_{{fake:alnum:36}}\n");
        let a = builtin().mask(&text).text.into_owned();
        assert_eq!(a, builtin().mask(&text).text);
        assert_ne!(a, text);
    }

    #[test]
    fn hits_count_each_masked_secret_by_rule() {
        let text = expand_example("ghp_{{fake:alnum:36}} and ghp_{{fake:alnum:36}}");
        let m = builtin().mask(&text);
        assert_eq!(m.hits, vec![("github-pat".to_string(), 2)]);
    }

    #[test]
    fn a_keyword_and_its_extension_in_one_rule_find_the_secret_once() {
        let set = compile_rules(&[], &[raw("tok", "tok-?([0-9]{4})", &["tok", "tok-"])], &[]).unwrap();
        let m = set.mask("a tok-1234 b tok5678");
        assert_eq!(m.text, "a tok-[REDACTED:tok] b tok[REDACTED:tok]");
        assert_eq!(m.hits, vec![("tok".to_string(), 2)]);
    }

    #[test]
    fn keyword_match_is_case_insensitive_but_regex_decides() {
        let set = compile_rules(&[], &[raw("tok", "TOK-[0-9]{4}", &["tok-"])], &[]).unwrap();
        assert_eq!(set.mask("a TOK-1234 b").text, "a [REDACTED:tok] b");
        assert_eq!(set.mask("a tok-1234 b").text, "a tok-1234 b");
    }

    #[test]
    fn secret_widened_to_whole_characters_keeps_utf8_valid() {
        let set = compile_rules(&[], &[raw("u", "k=([^ ]{2})", &["k="])], &[]).unwrap();
        let m = set.mask("k=é!");
        assert_eq!(m.text, "k=[REDACTED:u]!");
    }
}
