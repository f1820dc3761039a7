//! The keyword automaton both maskers scan text with: every occurrence of every keyword
//! (ASCII case-insensitive, overlapping), in one table look-up a byte.
//!
//! The automaton is built once by `aho-corasick` (its NFA: correct failure links and match
//! sets) and then copied into a table of our own, because the scan is the one loop that
//! touches every byte of every body and stream:
//! - states are numbered so that every state where a keyword ends comes last, so the loop
//!   asks one comparison a byte, not "special? then match?";
//! - each state knows its depth (how many of the last bytes it stands for), which tells a
//!   streaming masker in O(1) how far back a keyword may still be arriving;
//! - long texts are scanned in two halves at once: each byte's step waits for the previous
//!   step's table load, so one lane is bound by memory latency; two independent lanes
//!   overlap their loads (about 1.6x on this kind of machine, see `make bench`).
//!
//! Byte classes: a byte that is in no keyword (in either case) leads every state back to the
//! start, so all such bytes share one class; each other byte, folded to lowercase, is its own.

use aho_corasick::automaton::Automaton;
use aho_corasick::nfa::noncontiguous::NFA;
use aho_corasick::{Anchored, MatchKind};
use std::collections::HashMap;

/// Below this many bytes a text is scanned in one lane: splitting costs a few keyword
/// lengths of rescanning and is not worth it for a streaming push.
const TWO_LANE_MIN: usize = 1024;

#[derive(Debug)]
pub(crate) struct KeywordAutomaton {
    classes: [u8; 256],
    /// Number of byte classes: a state's row length.
    stride: u32,
    /// `trans[state + class]` is the next state; states are row offsets (index * stride).
    trans: Vec<u32>,
    /// States at or past this offset have keywords ending in them.
    first_match: u32,
    /// Per state index: length of the longest keyword prefix the text so far ends with.
    depth: Vec<u32>,
    /// Per match state (index - first match index): its range in `found`.
    match_ranges: Vec<(u32, u32)>,
    /// (keyword length, rule) for each rule of each keyword ending in a match state.
    found: Vec<(u32, u32)>,
    max_len: usize,
}

impl KeywordAutomaton {
    /// Builds the automaton over lowercase ASCII `keywords`; `rules[k]` are the rules listing
    /// keyword `k`.
    pub(crate) fn new(keywords: &[String], rules: &[Vec<u32>]) -> Result<Self, String> {
        let nfa = NFA::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .prefilter(false)
            .build(keywords)
            .map_err(|e| e.to_string())?;

        let mut classes = [0u8; 256];
        let mut representative = vec![0u8];
        for kw in keywords {
            for b in kw.bytes() {
                let b = b.to_ascii_lowercase();
                if classes[b as usize] == 0 {
                    representative.push(b);
                    let class = (representative.len() - 1) as u8;
                    classes[b as usize] = class;
                    classes[b.to_ascii_uppercase() as usize] = class;
                }
            }
        }
        // Representative 0 stands for the bytes in no keyword; any such byte will do.
        representative[0] = (0..=255u8).find(|&b| classes[b as usize] == 0).unwrap_or(0);
        let stride = representative.len();

        // Breadth-first from the start: the first visit of a state is along a shortest path,
        // and the shortest text reaching a state is the keyword prefix it stands for.
        let start = nfa.start_state(Anchored::No).map_err(|e| e.to_string())?;
        let mut order = vec![start];
        let mut depth_of = HashMap::from([(start, 0u32)]);
        let mut at = 0;
        while at < order.len() {
            let sid = order[at];
            let depth = depth_of[&sid];
            for &b in &representative {
                let next = nfa.next_state(Anchored::No, sid, b);
                depth_of.entry(next).or_insert_with(|| {
                    order.push(next);
                    depth + 1
                });
            }
            at += 1;
        }
        // Match states last, so "a keyword ends here" is one comparison.
        let (plain, matching): (Vec<_>, Vec<_>) = order.into_iter().partition(|&s| !nfa.is_match(s));
        let states: Vec<_> = plain.iter().chain(&matching).copied().collect();
        let index: HashMap<_, _> = states.iter().enumerate().map(|(i, &s)| (s, i as u32)).collect();
        let row = |i: u32| -> Result<u32, String> {
            i.checked_mul(stride as u32).ok_or_else(|| "too many keyword states".to_string())
        };

        let mut trans = Vec::with_capacity(states.len() * stride);
        for &sid in &states {
            for &b in &representative {
                trans.push(row(index[&nfa.next_state(Anchored::No, sid, b)])?);
            }
        }
        let mut match_ranges = Vec::with_capacity(matching.len());
        let mut found = Vec::new();
        for &sid in &matching {
            let from = found.len() as u32;
            for k in 0..nfa.match_len(sid) {
                let pattern = nfa.match_pattern(sid, k);
                let len = nfa.pattern_len(pattern) as u32;
                found.extend(rules[pattern.as_usize()].iter().map(|&r| (len, r)));
            }
            match_ranges.push((from, found.len() as u32));
        }
        Ok(KeywordAutomaton {
            classes,
            stride: stride as u32,
            trans,
            first_match: row(plain.len() as u32)?,
            depth: states.iter().map(|s| depth_of[s]).collect(),
            match_ranges,
            found,
            max_len: keywords.iter().map(String::len).max().unwrap_or(0),
        })
    }

    /// The state before any text.
    pub(crate) fn start(&self) -> u32 {
        0
    }

    /// Length of the longest keyword prefix that the text scanned into `state` ends with.
    pub(crate) fn depth(&self, state: u32) -> usize {
        self.depth[(state / self.stride) as usize] as usize
    }

    /// Scans `hay[from..]`, `state` being the state after `hay[..from]` (or the start, to
    /// look at `hay[from..]` alone); for every keyword occurrence ending in the scanned bytes,
    /// calls `found(start, rule)` once per rule listing that keyword, `start` being its offset
    /// in `hay`. Returns the state after the last byte, from which a later scan of more text
    /// continues. Occurrences come in no particular order.
    pub(crate) fn scan(&self, state: u32, hay: &[u8], from: usize, mut found: impl FnMut(usize, u32)) -> u32 {
        let mut report = |end: usize, state: u32| {
            for &(len, rule) in self.matches(state) {
                if let Some(start) = end.checked_sub(len as usize) {
                    found(start, rule);
                }
            }
        };
        let bytes = &hay[from..];
        let overlap = self.max_len.saturating_sub(1);
        if state != self.start() || bytes.len() < TWO_LANE_MIN || overlap * 4 > bytes.len() {
            return self.lane(state, bytes, from, &mut report);
        }
        // Lane A takes the first half; lane B starts `overlap` bytes before the second half,
        // so every keyword ending in the second half starts inside lane B, and lane B reports
        // only those.
        let mid = bytes.len() / 2;
        let b_from = mid - overlap;
        let (a_bytes, b_bytes) = (&bytes[..mid], &bytes[b_from..]);
        let (mut a, mut b) = (self.start(), self.start());
        for (i, (&x, &y)) in a_bytes.iter().zip(b_bytes).enumerate() {
            a = self.trans[(a + self.classes[x as usize] as u32) as usize];
            b = self.trans[(b + self.classes[y as usize] as u32) as usize];
            if a >= self.first_match {
                report(from + i + 1, a);
            }
            if b >= self.first_match && i >= overlap {
                report(from + b_from + i + 1, b);
            }
        }
        let done = a_bytes.len();
        self.lane(b, &b_bytes[done..], from + b_from + done, &mut report)
    }

    fn lane(&self, mut state: u32, bytes: &[u8], offset: usize, report: &mut impl FnMut(usize, u32)) -> u32 {
        for (i, &x) in bytes.iter().enumerate() {
            state = self.trans[(state + self.classes[x as usize] as u32) as usize];
            if state >= self.first_match {
                report(offset + i + 1, state);
            }
        }
        state
    }

    fn matches(&self, state: u32) -> &[(u32, u32)] {
        let (from, to) = self.match_ranges[((state - self.first_match) / self.stride) as usize];
        &self.found[from as usize..to as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(keywords: &[&str], text: &[u8]) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        for (k, kw) in keywords.iter().enumerate() {
            for s in 0..text.len() {
                if text[s..].len() >= kw.len() && text[s..s + kw.len()].eq_ignore_ascii_case(kw.as_bytes()) {
                    out.push((s, k as u32));
                }
            }
        }
        out.sort_unstable();
        out
    }

    fn scanned(auto: &KeywordAutomaton, text: &[u8]) -> Vec<(usize, u32)> {
        let mut out = Vec::new();
        auto.scan(auto.start(), text, 0, |s, r| out.push((s, r)));
        out.sort_unstable();
        out
    }

    fn automaton(keywords: &[&str]) -> KeywordAutomaton {
        let owned: Vec<String> = keywords.iter().map(|k| k.to_string()).collect();
        let rules: Vec<Vec<u32>> = (0..keywords.len() as u32).map(|k| vec![k]).collect();
        KeywordAutomaton::new(&owned, &rules).unwrap()
    }

    const KEYWORDS: [&str; 7] = ["sk", "sk-ant-", "key", "secret", "token", "ghp_", "-----begin"];

    #[test]
    fn finds_every_overlapping_occurrence_case_insensitively() {
        let auto = automaton(&KEYWORDS);
        let text = b"a SK-ANT-key, SecretToken ghp_x -----BEGIN keykey sk";
        assert_eq!(scanned(&auto, text), naive(&KEYWORDS, text));
    }

    #[test]
    fn two_lanes_find_what_one_lane_finds_around_the_middle() {
        let auto = automaton(&KEYWORDS);
        let unit = "filler text with a secret token and sk-ant- key in it, ghp_ too. ";
        let long: String = unit.repeat(TWO_LANE_MIN / unit.len() + 3);
        // Put a keyword across the middle at every shift.
        for shift in 0..12 {
            let mut text = long.clone().into_bytes();
            let mid = text.len() / 2 - shift;
            text[mid..mid + 10].copy_from_slice(b"-----begin");
            assert_eq!(scanned(&auto, &text), naive(&KEYWORDS, &text), "shift {shift}");
        }
    }

    #[test]
    fn depth_is_the_longest_keyword_prefix_ending_the_text() {
        let auto = automaton(&KEYWORDS);
        let depth = |t: &[u8]| auto.depth(auto.scan(auto.start(), t, 0, |_, _| {}));
        assert_eq!(depth(b"nothing here"), 0);
        assert_eq!(depth(b"the SK-AN"), 5);
        assert_eq!(depth(b"a toke"), 4);
        assert_eq!(depth(b"a token"), 5);
        assert_eq!(depth(b"--"), 2);
    }

    // Random keyword sets over a small alphabet (so keywords overlap, nest and share
    // prefixes) and texts long enough for two lanes, scanned whole and in random pieces.
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn random_keywords_and_texts_scan_as_the_naive_search_does(
            keywords in proptest::collection::vec("[abAB-]{1,6}", 1..12),
            text in "[abcAB -]{0,3000}",
            cuts in proptest::collection::vec(0usize..3000, 0..6),
        ) {
            let mut keywords: Vec<String> = keywords.iter().map(|k| k.to_ascii_lowercase()).collect();
            keywords.sort();
            keywords.dedup();
            let refs: Vec<&str> = keywords.iter().map(String::as_str).collect();
            let auto = automaton(&refs);
            let bytes = text.as_bytes();
            let want = naive(&refs, bytes);
            proptest::prop_assert_eq!(&scanned(&auto, bytes), &want);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort();
            let (mut state, mut from, mut pieces) = (auto.start(), 0, Vec::new());
            for cut in cuts.into_iter().chain([bytes.len()]) {
                state = auto.scan(state, &bytes[..cut], from.min(cut), |s, r| pieces.push((s, r)));
                from = from.max(cut);
            }
            pieces.sort_unstable();
            proptest::prop_assert_eq!(pieces, want);
        }
    }

    #[test]
    fn scanning_on_from_the_returned_state_equals_one_scan() {
        let auto = automaton(&KEYWORDS);
        let text = b"xx secret sk-ant-api key -----begin token ghp_";
        let whole = scanned(&auto, text);
        for cut in 0..text.len() {
            let mut out = Vec::new();
            let state = auto.scan(auto.start(), &text[..cut], 0, |s, r| out.push((s, r)));
            auto.scan(state, text, cut, |s, r| out.push((s, r)));
            out.sort_unstable();
            assert_eq!(out, whole, "cut {cut}");
        }
    }
}
