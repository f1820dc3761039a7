//! Streaming masking of one text stream (one content block): text arrives in pieces, masked
//! text leaves as soon as nothing still to come can change it. Guarantee: for every way the
//! text is split, the concatenated output equals [`RuleSet::mask`] of the whole text.
//!
//! How: each push re-plans the held text with the same planning step as the one-shot masker
//! ([`crate::mask`]); what the plan calls final is emitted, the rest is held. Text is held
//! only while it could still belong to a secret: a partial keyword at the end (and, for rules
//! whose secret comes before their keyword, the run of bytes that could be that secret: in
//! prose, the current word), or a keyword whose rule window is still open (a single-line
//! rule's window closes at the line end or `max_len` bytes after the keyword) *and* whose
//! rule could still match there.
//!
//! That last condition is what keeps prose flowing: generic keywords (`secret`, `token`,
//! `password`) are common words, and holding their window to the line end stalled a stream
//! for hundreds of bytes. Instead the rule's regex runs as a lazy DFA, anchored at each
//! position where the occurrence's candidate could start, over the text so far
//! ([`may_start`]); once every such run is dead, no text still to come can give the
//! occurrence a candidate, so the one-shot masker over the whole text finds none either, and
//! the window is released. In prose that happens within a word or two ("secrets here": at the
//! `h`). A window that saw a match or is still alive is held as before, so the equality with
//! one-shot masking does not depend on the DFA beyond "dead means dead".
//!
//! Limit and choice for private-key blocks: a multi-line rule's window stays open until its
//! `end_marker` (`-----END`) or its `max_len` (16 KiB for PEM/OpenSSH, 32000 bytes for PGP),
//! so a key block is held whole and released masked as soon as it closes. There is no
//! separate cap that flushes early: flushing an open block would either leak the key or
//! break the equality with the one-shot result. The bound is instead the rule set's
//! [`RuleSet::max_hold_back`] (every window is at most [`crate::rules::MAX_WINDOW`]), which
//! [`StreamMasker::held`] never exceeds; a block longer than its window is masked up to the
//! window's end (the same in one-shot masking).

use crate::mask::{floor_char, Scratch};
use crate::rules::RuleSet;
use crate::rules::{OpenWindowDfa, Rule};
use regex_automata::hybrid::dfa::Cache;
use regex_automata::hybrid::LazyStateID;
use regex_automata::{Anchored, Input};
use std::sync::Arc;

/// False only if no match of `rule` can start at any position in `from..=to` of `hay` followed
/// by any bytes at all: `hay` is the text so far and the rule's window has not ended inside
/// it. Then a keyword occurrence whose candidate would have to start there has no candidate
/// in the whole window either, and its window need not be held.
///
/// Why that is exact: a match starting at `p` is a run of the rule's regex anchored at `p`
/// (with `hay[p - 1]` as look-behind, as the regex sees it). Its DFA walks `hay[p..]`; a dead
/// state means no continuation, end of text included, completes a match, and having seen no
/// match state before it means none ended inside `hay`. Anything else (a match seen, still
/// alive, a DFA that cannot be built) answers true, which only keeps holding the window.
///
/// `walk` carries a walk from one call to the next for a window with one start (`from ==
/// to`): the next call walks only the bytes added since, unless the DFA's cache was cleared
/// in between (its states are then gone, and the walk starts over).
pub(crate) fn may_start(rule: &Rule, hay: &[u8], from: usize, to: usize, walk: &mut Option<Walk>) -> bool {
    let Some(OpenWindowDfa { dfa, cache: shared }) = rule.open_window_dfa() else { return true };
    let mut cache = match shared.lock() {
        Ok(cache) => cache,
        Err(poisoned) => {
            // A walk panicked halfway (natively; wasm aborts): go on with a clean cache.
            let mut cache = poisoned.into_inner();
            cache.reset(dfa);
            shared.clear_poison();
            cache
        }
    };
    let start = |cache: &mut Cache, p: usize| {
        let input = Input::new(hay).span(p..hay.len()).anchored(Anchored::Yes);
        dfa.start_state_forward(cache, &input).ok()
    };
    // A run from `p` over `hay[at..]` in state `sid`: dead (false), or a match seen or still
    // alive (true, and where it stands).
    let run = |cache: &mut Cache, at: usize, mut sid: LazyStateID| -> (bool, Option<Walk>) {
        for &b in &hay[at..] {
            let Ok(next) = dfa.next_state(cache, sid, b) else { return (true, None) };
            sid = next;
            if sid.is_tagged() {
                if sid.is_dead() {
                    return (false, None);
                }
                if sid.is_match() || sid.is_quit() {
                    return (true, Some(Walk::Matched));
                }
            }
        }
        (true, Some(Walk::Alive { to: hay.len(), state: sid, clears: cache.clear_count() }))
    };
    let to = to.min(hay.len());
    if from != to {
        return (from..=to).any(|p| start(&mut cache, p).is_none_or(|sid| run(&mut cache, p, sid).0));
    }
    let resumed = match *walk {
        Some(Walk::Matched) => return true,
        Some(Walk::Alive { to, state, clears }) if clears == cache.clear_count() && to <= hay.len() => Some((to, state)),
        _ => start(&mut cache, from).map(|sid| (from, sid)),
    };
    let Some((at, sid)) = resumed else { return true };
    let (alive, next) = run(&mut cache, at, sid);
    *walk = next;
    alive
}

/// Where a [`may_start`] walk over an open window stands.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Walk {
    /// The DFA is in `state` after the bytes before `to`; `clears` is its cache's clear count
    /// then.
    Alive { to: usize, state: LazyStateID, clears: usize },
    /// A match was seen: the answer stays true.
    Matched,
}

impl Walk {
    pub(crate) fn rebase(&mut self, drained: usize) {
        if let Walk::Alive { to, .. } = self {
            *to -= drained;
        }
    }
}

/// Masks one stream of text pushed in pieces.
#[derive(Debug)]
pub struct StreamMasker {
    rules: Arc<RuleSet>,
    /// Held text; `buf[..seg]` was already emitted and is kept only as context.
    buf: String,
    seg: usize,
    /// Keyword occurrences before this offset in `buf` are fully decided.
    scan_from: usize,
    /// Secrets masked so far, by rule index.
    hits: Vec<usize>,
    /// Reused by every plan.
    scratch: Scratch,
}

impl StreamMasker {
    pub fn new(rules: Arc<RuleSet>) -> StreamMasker {
        let n = rules.len();
        StreamMasker { rules, buf: String::new(), seg: 0, scan_from: 0, hits: vec![0; n], scratch: Scratch::default() }
    }

    /// Adds `chunk`; returns the masked text that is final now (possibly empty).
    pub fn push(&mut self, chunk: &str) -> String {
        let mut out = String::new();
        self.push_into(chunk, &mut out);
        out
    }

    /// [`Self::push`], appending the final text to `out`.
    pub fn push_into(&mut self, chunk: &str, out: &mut String) {
        self.buf.push_str(chunk);
        self.step_into(false, out);
    }

    /// Ends the stream: returns everything still held, masked. The masker is then empty and
    /// may be reused for a new stream (hit counts keep accumulating).
    pub fn finish(&mut self) -> String {
        let out = self.step(true);
        self.buf.clear();
        self.seg = 0;
        self.scan_from = 0;
        self.scratch.forget();
        out
    }

    /// Bytes of not-yet-emitted text currently held back.
    pub fn held(&self) -> usize {
        self.buf.len() - self.seg
    }

    /// Secrets masked so far, by rule id (rule order, only rules with hits).
    pub fn hits(&self) -> Vec<(String, usize)> {
        self.rules
            .ids()
            .zip(&self.hits)
            .filter(|(_, &c)| c > 0)
            .map(|(id, &c)| (id.to_string(), c))
            .collect()
    }

    fn step(&mut self, finished: bool) -> String {
        let mut out = String::new();
        self.step_into(finished, &mut out);
        out
    }

    fn step_into(&mut self, finished: bool, out: &mut String) {
        let plan = self.rules.plan(&self.buf, self.scan_from, self.seg, finished, &mut self.scratch);
        self.rules.render(&self.buf, self.seg, plan.cut, &self.scratch.spans, out);
        for s in &self.scratch.spans {
            self.hits[s.rule as usize] += 1;
        }
        // Keep what the next plan reads: occurrences from `rescan_from`, each window reaching
        // `before` bytes back, plus one byte of look-behind for `\b`.
        let keep = plan.rescan_from.saturating_sub(self.rules.max_before + 1);
        let keep = floor_char(&self.buf, keep);
        self.buf.drain(..keep);
        // A key block held once must not keep its size for the rest of the stream.
        if self.buf.capacity() > 4 * self.buf.len().max(1024) {
            self.buf.shrink_to(2 * self.buf.len().max(512));
        }
        self.scratch.rebase(keep, plan.rescan_from, self.buf.len());
        self.seg = plan.cut - keep;
        self.scan_from = plan.rescan_from - keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{compile_rules, expand_example, RawRule};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    fn builtin() -> Arc<RuleSet> {
        static SET: OnceLock<Arc<RuleSet>> = OnceLock::new();
        SET.get_or_init(|| Arc::new(RuleSet::builtin().unwrap())).clone()
    }

    /// Named cases: each is masked whole and through every buffering mode below. The shared
    /// ones (crate::testkit, also run compiled to wasm by tests/wasm.rs), then native-only ones.
    fn cases() -> Vec<(&'static str, String)> {
        let mut cases = crate::testkit::stream_mask::cases();
        cases.extend([
            ("prose_about_secrets", PROSE_ABOUT_SECRETS.to_string()),
        ]);
        cases
    }

    /// Claude-style prose, one long line, full of the keywords of the generic rules and none
    /// of their values: what must stream with almost no hold-back.
    const PROSE_ABOUT_SECRETS: &str = "There are no secrets here. The tokenizer reads tokens; \
        a password, a secret key or an API key never appears in this text. Keys and tokens \
        expire, passwords rotate, secret-sharing is discouraged. Token: see the docs. The \
        password is stored elsewhere, the access_key too, and the private_key as well; ask \
        for a new token, then skip the old secret. Credentials? Not here either.\n";

    fn stream(chunks: &[&str]) -> String {
        crate::testkit::stream_mask::stream(&builtin(), chunks)
    }

    use crate::testkit::stream_mask::char_splits;

    #[test]
    fn cases_mask_something_where_expected() {
        for (name, text) in cases() {
            let masked = builtin().mask(&text).text.into_owned();
            let expect_change = !matches!(
                name,
                "empty" | "prose" | "non_ascii_prose" | "placeholder_left_alone"
                    | "keyword_at_end_without_value" | "placeholders_are_stable" | "adjacent_keywords"
                    | "prose_about_secrets"
            );
            assert_eq!(masked != text, expect_change, "case {name}: {masked:?}");
        }
    }

    #[test]
    fn whole_text_in_one_push_equals_one_shot() {
        crate::testkit::stream_mask::check_whole_text_in_one_push(&builtin(), &cases());
    }

    #[test]
    fn every_two_way_split_equals_one_shot() {
        crate::testkit::stream_mask::check_every_two_way_split(&builtin(), &cases());
    }

    #[test]
    fn one_character_chunks_equal_one_shot() {
        crate::testkit::stream_mask::check_one_character_chunks(&builtin(), &cases());
    }

    #[test]
    fn hits_are_counted_once_per_secret_in_a_stream() {
        let text = expand_example("ghp_{{fake:alnum:36}} and ghp_{{fake:alnum:36}}\n");
        let mut m = StreamMasker::new(builtin());
        for ch in text.as_bytes().chunks(5) {
            m.push(std::str::from_utf8(ch).unwrap());
        }
        m.finish();
        assert_eq!(m.hits(), vec![("github-pat".to_string(), 2)]);
    }

    #[test]
    fn prose_without_keywords_is_not_held_back() {
        let mut m = StreamMasker::new(builtin());
        let out = m.push("The quick brown fox jumps over the lazy dog ");
        assert_eq!(out, "The quick brown fox jumps over the lazy dog ");
        assert_eq!(m.held(), 0);
    }

    #[test]
    fn prose_about_secrets_is_held_back_at_most_a_few_bytes_past_the_current_word() {
        // Before: everything after a keyword up to the line end or 256 bytes. Now: a window
        // is released as soon as its rule can no longer match there, which in prose is the
        // next word; and the trailing word itself may still be the start of a secret whose
        // keyword follows it (rules with `before`).
        let text = PROSE_ABOUT_SECRETS;
        let mut m = StreamMasker::new(builtin());
        let mut out = String::new();
        let mut max_held = 0;
        for (i, ch) in text.char_indices() {
            out += &m.push(&text[i..i + ch.len_utf8()]);
            let seen = &text[..i + ch.len_utf8()];
            let held = &seen[seen.len() - m.held()..];
            let word = seen.trim_end().rsplit(char::is_whitespace).next().unwrap_or("");
            assert!(
                m.held() <= word.len() + 8,
                "after {seen:?}: held {held:?}, more than the word {word:?} and 8 bytes"
            );
            max_held = max_held.max(m.held());
        }
        out += &m.finish();
        assert_eq!(out, text);
        assert!(max_held <= 16, "held back up to {max_held} bytes");
    }

    #[test]
    fn window_after_a_keyword_in_prose_is_released_at_the_next_word() {
        let mut m = StreamMasker::new(builtin());
        assert_eq!(m.push("no secrets here"), "no secrets ");
        assert_eq!(m.push(". Plain prose, "), "here. Plain prose, ");
    }

    #[test]
    fn window_that_can_still_become_a_secret_stays_held() {
        let mut m = StreamMasker::new(builtin());
        assert_eq!(m.push("the api_token = Zx9Qw3Er7Ty1"), "the api_");
        let out = m.push("Ui5Op2As and more") + &m.finish();
        assert_eq!(out, "token = [REDACTED:generic-token] and more");
    }

    #[test]
    fn partial_keyword_at_the_end_is_held_until_it_resolves() {
        let mut m = StreamMasker::new(builtin());
        assert_eq!(m.push("key: gh"), "key: ");
        let rest = expand_example("p_{{fake:alnum:36}} ok");
        let out = m.push(&rest) + &m.finish();
        assert_eq!(out, "[REDACTED:github-pat] ok");
    }

    #[test]
    fn secret_split_in_five_pieces_is_masked() {
        let key = expand_example("AKIA{{fake:upperb32:16}}");
        let mut m = StreamMasker::new(builtin());
        let mut out = m.push("id: ");
        for piece in [&key[..3], &key[3..7], &key[7..12], &key[12..18], &key[18..]] {
            out += &m.push(piece);
        }
        out += &m.push(" next\n");
        assert_eq!(out, "id: [REDACTED:aws-access-key-id] next\n");
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn pem_block_is_released_when_it_closes() {
        let block = expand_example("-----BEGIN PRIVATE KEY-----\nMIIE{{fake:b64:60}}\n{{fake:b64:64}}\n-----END PRIVATE KEY-----\n");
        let mut m = StreamMasker::new(builtin());
        let mut out = String::new();
        for line in block.split_inclusive('\n') {
            out += &m.push(line);
        }
        out += &m.push("after");
        assert!(out.contains("[REDACTED:pem-private-key]-----END PRIVATE KEY-----"), "{out:?}");
        assert!(!out.contains("MIIE"));
    }

    #[test]
    fn custom_rule_with_before_masks_across_any_split() {
        let r: RawRule = serde_json::from_value(serde_json::json!({
            "id": "suffixed", "regex": "([0-9]{6})-zz", "keywords": ["-zz"], "before": 6, "before_class": "[0-9]"
        }))
        .unwrap();
        let set = Arc::new(compile_rules(&[], &[r], &[]).unwrap());
        let text = "a 123456-zz b 98-zz 654321-zz";
        let want = set.mask(text).text.into_owned();
        assert_eq!(want, "a [REDACTED:suffixed]-zz b 98-zz [REDACTED:suffixed]-zz");
        for i in 0..=text.len() {
            let mut m = StreamMasker::new(set.clone());
            let out = m.push(&text[..i]) + &m.push(&text[i..]) + &m.finish();
            assert_eq!(out, want, "split at {i}");
        }
    }

    // Regression: inputs that made masking superlinear (a run of one character holding a
    // keyword at every byte; keywords repeated inside their own rule's match) still stream
    // exactly like one-shot masking, and a secret after them is still found.
    #[test]
    fn adversarial_floods_stream_like_one_shot() {
        let secret = expand_example(" ghp_{{fake:alnum:36}}\n");
        let floods = [
            "A".repeat(2000),
            "sessiontoken=".repeat(200),
            "fm2_=".repeat(300),
            "glpat-".repeat(300),
            "-us".repeat(600),
            "-----BEGIN PRIVATE KEY-----\n".repeat(80),
            "password=".repeat(200),
        ];
        for flood in floods {
            let text = format!("{flood}{secret}{flood}");
            let want = builtin().mask(&text).text.into_owned();
            assert!(want.contains("[REDACTED:github-pat]"), "{:?}", &flood[..20]);
            for chunk in [5, 64, 4096] {
                let bounds = char_splits(&text);
                let points: Vec<usize> = bounds.iter().copied().step_by(chunk).chain([text.len()]).collect();
                let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
                assert_eq!(stream(&chunks), want, "{:?} in {chunk}-character chunks", &flood[..20]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn random_splits_equal_one_shot(case in 0usize..19, cuts in proptest::collection::vec(0usize..10_000, 0..12)) {
            let cases = cases();
            let (name, text) = &cases[case % cases.len()];
            let bounds = char_splits(text);
            let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(stream(&chunks), builtin().mask(text).text.into_owned(), "case {}", name);
        }

        #[test]
        fn random_prose_around_keywords_streams_like_one_shot(
            parts in proptest::collection::vec(0usize..16, 1..32),
            cuts in proptest::collection::vec(0usize..10_000, 0..16),
        ) {
            // Keywords followed by text that keeps their windows alive for a while and then
            // kills them, or turns them into secrets: where a window is released early.
            const FRAGMENTS: [&str; 16] = [
                "secret", "token", "password", "api_key", "s", " ", "here", ".", ": ", "=", "\"",
                "Zx9Qw3Er7Ty1Ui5Op2As", "-", "\n", "izer", "é",
            ];
            let text: String = parts.iter().map(|&p| FRAGMENTS[p]).collect::<Vec<_>>().concat();
            let text = format!("{text}{PROSE_ABOUT_SECRETS}");
            let bounds = char_splits(&text);
            let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(stream(&chunks), builtin().mask(&text).text.into_owned());
        }

        #[test]
        fn random_text_from_secret_fragments_streams_like_one_shot(
            parts in proptest::collection::vec(0usize..12, 1..24),
            cuts in proptest::collection::vec(0usize..10_000, 0..16),
        ) {
            const FRAGMENTS: [&str; 12] = [
                "token", " = ", "ghp_", "AKIA", "sk-ant-api03-", "\n", "password: ",
                "-----BEGIN PRIVATE KEY-----\n", "-----END", "Zx9Qw3Er7Ty1Ui5Op2As", "é", "://u:",
            ];
            let text: String = parts.iter().map(|&p| FRAGMENTS[p]).collect::<Vec<_>>().concat();
            let text = format!("{text}{}", expand_example("{{fake:b64url:40}}@h"));
            let bounds = char_splits(&text);
            let mut points: Vec<usize> = cuts.iter().map(|c| bounds[c % bounds.len()]).collect();
            points.push(0);
            points.push(text.len());
            points.sort_unstable();
            points.dedup();
            let chunks: Vec<&str> = points.windows(2).map(|w| &text[w[0]..w[1]]).collect();
            prop_assert_eq!(stream(&chunks), builtin().mask(&text).text.into_owned());
        }
    }
}
