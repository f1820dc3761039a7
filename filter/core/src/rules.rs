//! Secret rules: the schema as written (`RawRule`, TOML or JSON) and one compile step into a
//! [`RuleSet`] that the maskers ([`crate::mask`], [`crate::stream_mask`]) run. Compiling never
//! matches anything; it builds every regex and the keyword automaton and refuses a bad rule
//! with an error naming the rule id and the field.
//!
//! Matching model (shared by the one-shot and the streaming masker, see [`crate::mask`]):
//! a rule only runs where one of its keywords occurs, inside a *window* around that keyword
//! occurrence: from `before` bytes ahead of the keyword to the end of its line (or, for a
//! `multiline` rule, through its `end_marker`), never more than `max_len` bytes past the
//! keyword start. The window is what bounds how much text a streaming masker ever holds back.
//!
//! Regexes are byte regexes built with `unicode(false)` (`\w`, `\s`, `\b` are ASCII, as in
//! RE2): Unicode tables cost seconds and hundreds of MiB per wasm VM (ARCHITECTURE.md).

use crate::keywords::KeywordAutomaton;
use aho_corasick::AhoCorasick;
use regex::bytes::{Regex, RegexBuilder};
use serde::Deserialize;
use regex_automata::hybrid::dfa::{Cache, DFA as LazyDfa};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::meta::Regex as MetaRegex;
use regex_automata::util::syntax;
use regex_automata::PatternID;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// The built-in rules, embedded so the filter has them without any file access.
pub const BUILTIN_TOML: &str = include_str!("../../rules/builtin.toml");

/// Default replacement: `{id}` is replaced by the rule id.
pub const DEFAULT_PLACEHOLDER: &str = "[REDACTED:{id}]";

/// Default `max_len` of a single-line rule's window, in bytes from the keyword start.
pub const DEFAULT_MAX_LEN: usize = 256;

/// Largest window any rule may ask for: the streaming masker may hold back about twice this
/// much text while such a window is open, so it is the hard ceiling on per-stream memory.
pub const MAX_WINDOW: usize = 32 * 1024;

/// Lazy-DFA cache per regex: the default 2 MiB thrashes on secret rules and makes them many
/// times slower (measured, ARCHITECTURE.md); the cache grows only as far as a rule needs.
const DFA_SIZE_LIMIT: usize = 32 * 1024 * 1024;

/// Cache limit of a rule's open-window DFA ([`Rule::open_window_dfa`]; raised to the NFA's
/// minimum where that is larger): it walks only open windows, a few hundred bytes each, so
/// it needs few states; past the limit the cache is cleared, not grown.
const OPEN_WINDOW_DFA_CACHE: usize = 64 * 1024;

/// A rules file: `[[rule]]` tables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuleFile {
    #[serde(default, rename = "rule")]
    pub rules: Vec<RawRule>,
}

/// One secret rule as written by a person (built-in TOML or the plugin configuration).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Stable identifier, `[a-z0-9-]+`; appears in the placeholder and in audit counts.
    pub id: String,
    /// What the rule finds, for people.
    #[serde(default)]
    pub description: String,
    /// Byte regex (no Unicode classes). The secret is the capture group named `secret`, else
    /// group 1, else the whole match. A match must contain a keyword occurrence.
    pub regex: String,
    /// Lowercase literals, at least one; matched ASCII-case-insensitively as a cheap
    /// pre-check. Keep them specific: every occurrence costs a regex attempt.
    pub keywords: Vec<String>,
    /// Minimum Shannon entropy (bits per byte) of the secret; below it the match is ignored.
    #[serde(default)]
    pub entropy: Option<f64>,
    /// Regexes matched against the secret; any hit means "never mask this value"
    /// (placeholders such as `YOUR_API_KEY`, `${VAR}`). Anchor them as needed.
    #[serde(default)]
    pub allowlist: Vec<String>,
    /// How many bytes before the keyword a match may start (for formats whose literal comes
    /// after the secret). Default 0: the match starts at or after the keyword.
    #[serde(default)]
    pub before: usize,
    /// Required with `before`: a one-byte regex class (`[0-9a-f]`) of the bytes between the
    /// secret's start and the keyword. A streaming masker holds back a trailing run of these
    /// bytes (at most `before`), since a keyword may still follow and make them a secret.
    #[serde(default)]
    pub before_class: Option<String>,
    /// Window length from the keyword start, at most [`MAX_WINDOW`]. Default
    /// [`DEFAULT_MAX_LEN`]; a multi-line rule must set it.
    #[serde(default)]
    pub max_len: Option<usize>,
    /// The window may span lines (private-key blocks). Requires `max_len`.
    #[serde(default)]
    pub multiline: bool,
    /// For a multi-line rule: the window ends right after the first occurrence of this
    /// literal (so a streaming masker can release text as soon as a key block closes).
    #[serde(default)]
    pub end_marker: Option<String>,
    /// Samples a test checks: every positive is masked, every negative left untouched.
    /// They may use `{{…}}` expansions (see [`expand_example`]).
    #[serde(default)]
    pub examples: RawExamples,
}

/// True-positive and false-positive samples of a rule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExamples {
    #[serde(default)]
    pub positive: Vec<String>,
    #[serde(default)]
    pub negative: Vec<String>,
}

/// Why a rule set could not be built.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum RuleError {
    /// The rules file is not valid TOML or does not fit the schema.
    Parse { message: String },
    /// A field of a rule is invalid; `field` is the schema name (`regex`, `keywords`, …).
    InvalidField { rule: String, field: &'static str, reason: String },
    /// Two rules share an id (a custom rule must use a new id or disable the built-in one).
    DuplicateId { rule: String },
    /// `disabled` names an id that no built-in rule has (almost always a typo).
    UnknownDisabled { rule: String },
    /// The placeholder template is unusable.
    Placeholder { reason: String },
    /// The keyword automaton could not be built.
    Keywords { reason: String },
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleError::Parse { message } => write!(f, "rules file: {message}"),
            RuleError::InvalidField { rule, field, reason } => {
                write!(f, "rule {rule:?}: field `{field}`: {reason}")
            }
            RuleError::DuplicateId { rule } => write!(f, "rule {rule:?}: duplicate id"),
            RuleError::UnknownDisabled { rule } => {
                write!(f, "disabled rule {rule:?}: no built-in rule has this id")
            }
            RuleError::Placeholder { reason } => write!(f, "placeholder: {reason}"),
            RuleError::Keywords { reason } => write!(f, "keyword automaton: {reason}"),
        }
    }
}

impl std::error::Error for RuleError {}

/// A compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) id: String,
    /// The meta regex `regex::bytes::Regex` wraps, used directly for its anchored searches.
    pub(crate) regex: MetaRegex,
    pub(crate) pattern: String,
    /// Capture group index of the secret.
    pub(crate) group: usize,
    pub(crate) entropy: Option<f64>,
    /// The rule's own allowlist, then the shared [`Allow::Gate`] (every rule but multi-line
    /// ones, whose key blocks hold long runs by nature).
    pub(crate) allowlist: Vec<Allow>,
    pub(crate) before: usize,
    /// Bytes that may lie between the secret start and the keyword (rules with `before`).
    pub(crate) before_class: Option<Box<[bool; 256]>>,
    pub(crate) max_len: usize,
    pub(crate) multiline: bool,
    /// Finds the rule's `end_marker` (a memmem search: an open window is searched again on
    /// every push).
    pub(crate) end_finder: Option<AhoCorasick>,
    /// Built on first use by [`Rule::open_window_dfa`].
    open_window_dfa: OnceLock<Option<OpenWindowDfa>>,
}

/// A rule's regex as an anchored lazy DFA, with its cache. The cache keeps nothing between
/// walks that a walk depends on, so every stream of the VM shares it (one cache per rule and
/// VM, not per stream); the lock is never contended inside a wasm VM.
#[derive(Debug)]
pub(crate) struct OpenWindowDfa {
    pub(crate) dfa: LazyDfa,
    pub(crate) cache: Mutex<Cache>,
}

impl Rule {
    /// The DFA a streaming masker walks over an open window to learn that no match can start
    /// at a position any more, whatever follows ([`crate::stream_mask::may_start`]). Built on
    /// first use, not in [`compile_rules`]: few rules ever have an open window in a stream,
    /// and building all of them would add about a third to the rule set's compile time.
    /// `None` if it cannot be built: the window is then held until it closes.
    pub(crate) fn open_window_dfa(&self) -> Option<&OpenWindowDfa> {
        self.open_window_dfa
            .get_or_init(|| {
                let dfa = LazyDfa::builder()
                    .configure(
                        LazyDfa::config()
                            .cache_capacity(OPEN_WINDOW_DFA_CACHE)
                            .skip_cache_capacity_check(true),
                    )
                    // The same syntax as `build_rule_regex`, so the DFA has the regex's language.
                    .syntax(syntax::Config::new().unicode(false).utf8(false))
                    .thompson(
                        thompson::Config::new()
                            .utf8(false)
                            .which_captures(WhichCaptures::None)
                            .nfa_size_limit(Some(16 * 1024 * 1024)),
                    )
                    .build(&self.pattern)
                    .ok()?;
                let cache = Mutex::new(dfa.create_cache());
                Some(OpenWindowDfa { dfa, cache })
            })
            .as_ref()
    }
}

/// The compiled rules plus the keyword automaton; immutable and shared by every masker.
#[derive(Debug)]
pub struct RuleSet {
    pub(crate) rules: Vec<Rule>,
    /// One automaton over every distinct keyword (ASCII case-insensitive, overlapping),
    /// reporting the rules that list each keyword found.
    pub(crate) keywords: KeywordAutomaton,
    /// Every keyword (lowercase): a keyword may be arriving when the buffered text ends with
    /// a proper prefix of one.
    pub(crate) keyword_trie: KeywordTrie,
    /// Indices of the rules with `before > 0`.
    pub(crate) before_rules: Vec<u32>,
    /// The same rules' classes, for one walk back over the text for all of them.
    pub(crate) before_runs: Option<BeforeRuns>,
    pub(crate) max_keyword_len: usize,
    pub(crate) max_before: usize,
    /// Longest `end_marker` of a multi-line rule.
    pub(crate) max_end_marker_len: usize,
    /// Placeholder split around `{id}`.
    pub(crate) placeholder: (String, String),
}

impl RuleSet {
    /// The built-in rules, nothing disabled, default placeholder.
    pub fn builtin() -> Result<RuleSet, RuleError> {
        compile_rules(&builtin_raw_rules()?, &[], &[])
    }

    /// Replaces the placeholder template; it must contain `{id}` exactly once and must not
    /// itself be matched by a rule (checked by masking it).
    pub fn with_placeholder(mut self, template: &str) -> Result<RuleSet, RuleError> {
        let mut parts = template.split("{id}");
        let (Some(head), Some(tail), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(RuleError::Placeholder { reason: "must contain `{id}` exactly once".into() });
        };
        self.placeholder = (head.to_string(), tail.to_string());
        for rule in &self.rules {
            let p = self.placeholder_for(&rule.id);
            if let Some((id, _)) = self.mask(&p).hits.first() {
                return Err(RuleError::Placeholder {
                    reason: format!("{p:?} would itself be masked by rule {id:?}"),
                });
            }
        }
        Ok(self)
    }

    /// Number of compiled rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Rule ids in evaluation order (earlier wins a tie between equal matches).
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.id.as_str())
    }

    /// Upper bound, in bytes, of what a [`crate::stream_mask::StreamMasker`] over this rule
    /// set can hold back: a window still open (`before + max_len`), plus a chosen secret
    /// that straddles it, plus a keyword still arriving.
    pub fn max_hold_back(&self) -> usize {
        let window = self.rules.iter().map(|r| r.before + r.max_len).max().unwrap_or(0);
        2 * window + self.max_keyword_len + self.max_before + 8
    }

    pub(crate) fn placeholder_for(&self, id: &str) -> String {
        format!("{}{}{}", self.placeholder.0, id, self.placeholder.1)
    }
}

/// The rules with `before`, for the question a streaming masker asks on every push: how far
/// back from the end of the text could a secret start that precedes a keyword not seen yet?
/// One walk back answers it for all of them at once (a bit per rule); a walk per rule cost
/// each push several times the length of the word it ends in.
#[derive(Debug)]
pub(crate) struct BeforeRuns {
    /// Bit k: the byte is in the `before_class` of the k-th rule with `before`.
    classes: Box<[u64; 256]>,
    /// Bit k at offset j: the k-th rule reaches at least j + 1 bytes back (j < its `before`).
    reach: Vec<u64>,
}

impl BeforeRuns {
    /// `None` without such rules, or with more than 64 (the caller then walks per rule).
    fn new(rules: &[Rule]) -> Option<Self> {
        let with: Vec<&Rule> = rules.iter().filter(|r| r.before > 0).collect();
        if with.is_empty() || with.len() > 64 {
            return None;
        }
        let mut classes = Box::new([0u64; 256]);
        let mut reach = vec![0u64; with.iter().map(|r| r.before).max().unwrap_or(0)];
        for (k, rule) in with.iter().enumerate() {
            let class = rule.before_class.as_deref().expect("a rule with before has a class");
            for b in 0..256 {
                if class[b] {
                    classes[b] |= 1 << k;
                }
            }
            for bits in &mut reach[..rule.before] {
                *bits |= 1 << k;
            }
        }
        Some(BeforeRuns { classes, reach })
    }

    /// The earliest start, at most `i`, of a run of bytes ending at `i` that one of the rules
    /// could take for the part of its secret before a keyword at `i`.
    pub(crate) fn start(&self, bytes: &[u8], i: usize) -> usize {
        let mut alive = self.reach.first().copied().unwrap_or(0);
        let mut run = 0;
        while run < i && run < self.reach.len() {
            alive &= self.classes[bytes[i - 1 - run] as usize] & self.reach[run];
            if alive == 0 {
                break;
            }
            run += 1;
        }
        i - run
    }
}

/// The keywords as a byte trie, for the one question the streaming masker asks on every
/// push: could the last bytes of the text be the start of a keyword still arriving? A walk
/// from each of the last few positions usually stops at its first byte, where a set of
/// prefixes would hash every suffix.
#[derive(Debug)]
pub(crate) struct KeywordTrie {
    /// The node of each one-byte prefix (index + 1; 0: no keyword starts with that byte).
    root: Box<[u32; 256]>,
    /// Bit `a << 8 | b` is set when some keyword starts with the bytes `a b`: in text most
    /// positions that pass `root` fail here, without scanning a node's edges.
    pairs: Box<[u64; 1024]>,
    nodes: Vec<TrieNode>,
}

/// The node of one prefix of a keyword.
#[derive(Debug, Default)]
pub(crate) struct TrieNode {
    /// Next byte and its node, for the keywords that continue past this prefix.
    edges: Vec<(u8, u32)>,
    /// Rules with `before` having a keyword that continues past this prefix.
    pub(crate) before_rules: Vec<u32>,
}

impl TrieNode {
    /// A keyword is longer than this prefix and starts with it.
    pub(crate) fn is_proper_prefix(&self) -> bool {
        !self.edges.is_empty()
    }
}

impl KeywordTrie {
    fn new() -> Self {
        KeywordTrie { root: Box::new([0; 256]), pairs: Box::new([0; 1024]), nodes: Vec::new() }
    }

    /// Adds a lowercase keyword of rule `before_rule` (given for rules with `before` only).
    fn insert(&mut self, kw: &[u8], before_rule: Option<u32>) {
        let Some((&first, rest)) = kw.split_first() else { return };
        if let Some(&second) = rest.first() {
            let pair = (first as usize) << 8 | second as usize;
            self.pairs[pair / 64] |= 1 << (pair % 64);
        }
        if self.root[first as usize] == 0 {
            self.nodes.push(TrieNode::default());
            self.root[first as usize] = self.nodes.len() as u32;
        }
        let mut n = self.root[first as usize] as usize - 1;
        for &b in rest {
            if let Some(r) = before_rule {
                if !self.nodes[n].before_rules.contains(&r) {
                    self.nodes[n].before_rules.push(r);
                }
            }
            n = match self.nodes[n].edges.iter().find(|e| e.0 == b) {
                Some(&(_, next)) => next as usize,
                None => {
                    self.nodes.push(TrieNode::default());
                    let next = self.nodes.len() - 1;
                    self.nodes[n].edges.push((b, next as u32));
                    next
                }
            };
        }
    }

    /// The node of `text` (compared ASCII-case-insensitively) if it is a prefix of a
    /// keyword, a whole keyword included.
    pub(crate) fn walk(&self, text: &[u8]) -> Option<&TrieNode> {
        let (&first, rest) = text.split_first()?;
        let first = first.to_ascii_lowercase();
        if let Some(&second) = rest.first() {
            let pair = (first as usize) << 8 | second.to_ascii_lowercase() as usize;
            if self.pairs[pair / 64] & 1 << (pair % 64) == 0 {
                return None;
            }
        }
        let mut n = (self.root[first as usize] as usize).checked_sub(1)?;
        for &b in rest {
            let b = b.to_ascii_lowercase();
            n = self.nodes[n].edges.iter().find(|e| e.0 == b)?.1 as usize;
        }
        Some(&self.nodes[n])
    }
}

/// Parses the embedded built-in rules file.
pub fn builtin_raw_rules() -> Result<Vec<RawRule>, RuleError> {
    parse_rules_toml(BUILTIN_TOML)
}

/// Parses a rules file in the `[[rule]]` TOML schema.
pub fn parse_rules_toml(text: &str) -> Result<Vec<RawRule>, RuleError> {
    toml::from_str::<RawRuleFile>(text)
        .map(|f| f.rules)
        .map_err(|e| RuleError::Parse { message: e.to_string() })
}

/// Compiles built-in rules (minus `disabled` ids) followed by `custom` rules. Built-in rules
/// come first so a specific built-in rule wins a tie against a broader custom one.
pub fn compile_rules(
    builtin: &[RawRule],
    custom: &[RawRule],
    disabled: &[String],
) -> Result<RuleSet, RuleError> {
    let builtin_ids: HashSet<&str> = builtin.iter().map(|r| r.id.as_str()).collect();
    if let Some(d) = disabled.iter().find(|d| !builtin_ids.contains(d.as_str())) {
        return Err(RuleError::UnknownDisabled { rule: d.clone() });
    }
    let disabled: HashSet<&str> = disabled.iter().map(String::as_str).collect();
    let raws = builtin.iter().filter(|r| !disabled.contains(r.id.as_str())).chain(custom);

    let mut rules = Vec::new();
    let mut seen = HashSet::new();
    let mut keyword_ids: HashMap<String, usize> = HashMap::new();
    let mut keyword_list: Vec<String> = Vec::new();
    let mut keyword_rules: Vec<Vec<u32>> = Vec::new();
    let mut keyword_trie = KeywordTrie::new();
    let mut end_markers = Vec::new();
    for raw in raws {
        if !seen.insert(raw.id.clone()) {
            return Err(RuleError::DuplicateId { rule: raw.id.clone() });
        }
        let rule = compile_rule(raw)?;
        end_markers.extend(raw.end_marker.clone());
        let index = rules.len() as u32;
        for kw in &raw.keywords {
            let id = *keyword_ids.entry(kw.clone()).or_insert_with(|| {
                keyword_list.push(kw.clone());
                keyword_rules.push(Vec::new());
                keyword_list.len() - 1
            });
            if !keyword_rules[id].contains(&index) {
                keyword_rules[id].push(index);
            }
            keyword_trie.insert(kw.as_bytes(), (raw.before > 0).then_some(index));
        }
        rules.push(rule);
    }
    // A rule listing both `sk` and `sk-` would see each `sk-` twice at the same start: the
    // longer keyword adds nothing for that rule. Dropping it keeps every (occurrence, rule)
    // pair unique, so the maskers need not sort and deduplicate them.
    let pruned: Vec<Vec<u32>> = keyword_list
        .iter()
        .zip(&keyword_rules)
        .map(|(kw, rules)| {
            let covered = |r: &u32| {
                keyword_list
                    .iter()
                    .zip(&keyword_rules)
                    .any(|(other, others)| other.len() < kw.len() && kw.starts_with(other.as_str()) && others.contains(r))
            };
            rules.iter().copied().filter(|r| !covered(r)).collect()
        })
        .collect();
    let (scanned, scanned_rules): (Vec<String>, Vec<Vec<u32>>) =
        keyword_list.iter().cloned().zip(pruned).filter(|(_, rules)| !rules.is_empty()).unzip();
    let keywords =
        KeywordAutomaton::new(&scanned, &scanned_rules).map_err(|reason| RuleError::Keywords { reason })?;
    let max_end_marker_len = end_markers.iter().map(String::len).max().unwrap_or(0);
    Ok(RuleSet {
        max_keyword_len: keyword_list.iter().map(String::len).max().unwrap_or(0),
        max_before: rules.iter().map(|r| r.before).max().unwrap_or(0),
        max_end_marker_len,
        before_rules: (0..rules.len() as u32).filter(|&i| rules[i as usize].before > 0).collect(),
        before_runs: BeforeRuns::new(&rules),
        rules,
        keywords,
        keyword_trie,
        placeholder: split_placeholder(DEFAULT_PLACEHOLDER),
    })
}

fn split_placeholder(t: &str) -> (String, String) {
    let (a, b) = t.split_once("{id}").expect("default placeholder has {id}");
    (a.to_string(), b.to_string())
}

fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .size_limit(16 * 1024 * 1024)
        .build()
}

/// A rule's regex, configured as [`build_regex`] configures `regex::bytes::Regex`, less the
/// one-pass DFA: built eagerly for every rule, those were 6 of the rule set's 14 MiB per VM,
/// and they only speed up finding a secret's capture group, which happens once per secret.
fn build_rule_regex(pattern: &str) -> Result<MetaRegex, String> {
    MetaRegex::builder()
        .syntax(syntax::Config::new().unicode(false).utf8(false))
        .configure(
            MetaRegex::config()
                .match_kind(regex_automata::MatchKind::LeftmostFirst)
                .utf8_empty(false)
                .onepass(false)
                .hybrid_cache_capacity(DFA_SIZE_LIMIT)
                .nfa_size_limit(Some(16 * 1024 * 1024)),
        )
        .build(pattern)
        .map_err(|e| e.to_string())
}

fn compile_rule(raw: &RawRule) -> Result<Rule, RuleError> {
    let bad = |field: &'static str, reason: String| RuleError::InvalidField {
        rule: raw.id.clone(),
        field,
        reason,
    };
    if raw.id.is_empty()
        || !raw.id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("id", "must be non-empty and only use a-z, 0-9 and -".into()));
    }
    let regex = build_rule_regex(&raw.regex).map_err(|e| bad("regex", e))?;
    let groups = regex.group_info();
    let group = match groups.to_index(PatternID::ZERO, "secret") {
        Some(i) => i,
        None if groups.group_len(PatternID::ZERO) > 1 => 1,
        None => 0,
    };
    if raw.keywords.is_empty() {
        return Err(bad("keywords", "at least one keyword is required".into()));
    }
    for kw in &raw.keywords {
        if kw.is_empty() || !kw.is_ascii() || kw.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(bad("keywords", format!("{kw:?} must be non-empty lowercase ASCII")));
        }
    }
    if let Some(e) = raw.entropy {
        if !(0.0..=8.0).contains(&e) {
            return Err(bad("entropy", format!("{e} is outside 0..=8 bits per byte")));
        }
    }
    let mut allowlist = raw
        .allowlist
        .iter()
        .map(|a| build_regex(a).map(Allow::Regex).map_err(|e| bad("allowlist", e.to_string())))
        .collect::<Result<Vec<_>, _>>()?;
    if !raw.multiline {
        allowlist.push(Allow::Gate);
    }
    if raw.multiline && raw.max_len.is_none() {
        return Err(bad("max_len", "a multiline rule must bound its window".into()));
    }
    if raw.end_marker.is_some() && !raw.multiline {
        return Err(bad("end_marker", "only a multiline rule has an end marker".into()));
    }
    if raw.end_marker.as_deref() == Some("") {
        return Err(bad("end_marker", "must not be empty".into()));
    }
    let before_class = match (&raw.before_class, raw.before) {
        (None, 0) => None,
        (None, _) => return Err(bad("before_class", "required when `before` is set".into())),
        (Some(_), 0) => return Err(bad("before_class", "only meaningful with `before`".into())),
        (Some(class), _) => {
            let one = build_regex(&format!(r"\A(?:{class})\z"))
                .map_err(|e| bad("before_class", e.to_string()))?;
            let mut table = Box::new([false; 256]);
            for b in 0..=255u8 {
                table[b as usize] = one.is_match(&[b]);
            }
            Some(table)
        }
    };
    let max_len = raw.max_len.unwrap_or(DEFAULT_MAX_LEN);
    if max_len == 0 || max_len + raw.before > MAX_WINDOW {
        return Err(bad("max_len", format!("before + max_len must be 1..={MAX_WINDOW}")));
    }
    Ok(Rule {
        id: raw.id.clone(),
        regex,
        pattern: raw.regex.clone(),
        group,
        entropy: raw.entropy,
        allowlist,
        before: raw.before,
        before_class,
        max_len,
        multiline: raw.multiline,
        end_finder: raw
            .end_marker
            .as_ref()
            .map(|m| AhoCorasick::new([m]))
            .transpose()
            .map_err(|e| bad("end_marker", e.to_string()))?,
        open_window_dfa: OnceLock::new(),
    })
}

/// One reason to leave a candidate secret alone: a regex of the rule's `allowlist`, or the
/// precision gate every single-line rule shares. The maskers ask `is_match` of each for
/// every candidate that passed the regex and the entropy floor (mask.rs, step 3).
#[derive(Debug)]
pub(crate) enum Allow {
    Regex(Regex),
    Gate,
}

impl Allow {
    pub(crate) fn is_match(&self, secret: &[u8]) -> bool {
        match self {
            Allow::Regex(r) => r.is_match(secret),
            Allow::Gate => is_placeholder(secret),
        }
    }
}

/// Vendors' documented example credentials: written in their documentation and in code
/// that copied it, never valid.
const VENDOR_EXAMPLES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "sk_test_4eC39HqLyjWDarjtT1zdp7dc",
    "pk_test_TYooMQauvdEDq54NiTphI7jx",
    "ghp_16C7e42F292c6912E7710c838347Ae178B4a",
];

/// Whole-value forms that are references or templates, not literals: `$VAR`, `${VAR}`,
/// `${{ secrets.X }}`, `{{ .Values.x }}`, `$(cmd)`, `%VAR%`, `@VAR@`, `{0}`, `<your-key>`,
/// and values holding a placeholder word. Built once per VM.
fn placeholder_regex() -> &'static Regex {
    static GATE: OnceLock<Regex> = OnceLock::new();
    GATE.get_or_init(|| {
        build_regex(concat!(
            r#"\A["'`]?(?:"#,
            r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?",
            r"|\$\{[^}]*\}|\$\(.*\)|%[A-Za-z_][A-Za-z0-9_]*%|@[A-Za-z_][A-Za-z0-9_]*@|\{\d{0,2}\}",
            r"|<[^<>]*>|\[[^\[\]]*\]",
            // Paths and resource names: where a secret is kept, not the secret.
            r"|/(?:bin|etc|home|opt|tmp|usr|var|run|srv|mnt|data|app|secrets|Users)/[\w ./-]*",
            r"|arn:aws[\w-]*:[\w./:*-]*|[a-z]{2}(?:-[a-z]+)+-\d:\d{12}:[\w./:*-]*",
            r"|(?i:true|false|null|nil|none|undefined)",
            r#")["'`]?\z"#,
            r"|\{\{|\}\}|\$\{",
            r"|(?i:example|changeme|change_me|placeholder|redacted|dummy|your[_-]?(?:api|secret|token|key|password|pass|access|client|auth|own)|insert[_-]?your|xxxx)",
            r"|\*{4,}|#{4,}|\.{4,}",
        ))
        .expect("the gate's regex compiles")
    })
}

/// The shared precision gate: a value that is a template or reference, holds a placeholder
/// word (`example`, `changeme`, `xxxx`, `your_api_key`, …), is one of the vendors' documented
/// example keys, or is mostly (60 %) one repeated character (`NRAK-xxxxxxxx…`), is not a
/// secret. Real keys are random: none of these happens in one by chance at a rate that
/// matters (a given 4-byte word in a 40-byte random alphanumeric value: about 1 in 400,000).
pub fn is_placeholder(secret: &[u8]) -> bool {
    if VENDOR_EXAMPLES.iter().any(|e| e.as_bytes() == secret) {
        return true;
    }
    if secret.len() >= 8 {
        let mut counts = [0u16; 256];
        for &b in secret {
            counts[b as usize] = counts[b as usize].saturating_add(1);
        }
        // Not a run length: some formats hold fixed runs (Dropbox's ten `A`s, Twitter's 22).
        let most = *counts.iter().max().unwrap_or(&0) as usize;
        if most * 10 >= secret.len() * 6 {
            return true;
        }
    }
    placeholder_regex().is_match(secret)
}

/// Shannon entropy of `bytes` in bits per byte.
pub fn shannon_entropy(bytes: &[u8]) -> f64 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n;
            -p * p.log2()
        })
        .sum()
}

/// Expands the `{{…}}` forms used in rule examples, so that no key-shaped literal has to be
/// written into the repository (secret scanners would flag it even though it is fake):
///
/// - `{{repeat:TEXT:N}}` → TEXT repeated N times;
/// - `{{fake:CLASS:N}}` → N deterministic pseudo-random characters of CLASS, one of
///   `alnum`, `upper` (A-Z0-9), `lower` (a-z0-9), `hex`, `HEX`, `digits`, `b64`, `b64url`,
///   `alpha`, `upperb32` (A-Z2-7), `upperbech` (the bech32 alphabet, upper case).
///
/// The pseudo-random stream is seeded from the whole example text, so each example always
/// expands to the same string.
pub fn expand_example(template: &str) -> String {
    let mut seed = template.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let spec = &after[..close];
        rest = &after[close + 2..];
        let mut parts = spec.splitn(3, ':');
        let (kind, arg, n) = (parts.next(), parts.next(), parts.next());
        let n: usize = n.and_then(|n| n.parse().ok()).unwrap_or(0);
        match (kind, arg) {
            (Some("repeat"), Some(text)) => out.push_str(&text.repeat(n)),
            (Some("fake"), Some(class)) => {
                let alphabet: &[u8] = match class {
                    "upper" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
                    "lower" => b"abcdefghijklmnopqrstuvwxyz0123456789",
                    "hex" => b"0123456789abcdef",
                    "HEX" => b"0123456789ABCDEF",
                    "digits" => b"0123456789",
                    "upperb32" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567",
                    "upperbech" => b"QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L",
                    "alpha" => b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                    "b64" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/",
                    "b64url" => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                    _ => b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                };
                for _ in 0..n {
                    // xorshift64*: tiny, deterministic, good enough to look random.
                    seed ^= seed >> 12;
                    seed ^= seed << 25;
                    seed ^= seed >> 27;
                    let r = seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
                    out.push(alphabet[(r >> 33) as usize % alphabet.len()] as char);
                }
            }
            _ => {
                out.push_str("{{");
                out.push_str(spec);
                out.push_str("}}");
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str, regex: &str, keywords: &[&str]) -> RawRule {
        RawRule {
            id: id.into(),
            description: String::new(),
            regex: regex.into(),
            keywords: keywords.iter().map(|k| k.to_string()).collect(),
            entropy: None,
            allowlist: vec![],
            before: 0,
            before_class: None,
            max_len: None,
            multiline: false,
            end_marker: None,
            examples: RawExamples::default(),
        }
    }

    #[test]
    fn one_walk_back_gives_the_earliest_start_of_any_rule_with_before() {
        let set = RuleSet::builtin().unwrap();
        let runs = set.before_runs.as_ref().expect("built-in rules have rules with before");
        let per_rule = |bytes: &[u8], i: usize| {
            set.before_rules
                .iter()
                .map(|&r| {
                    let rule = &set.rules[r as usize];
                    let class = rule.before_class.as_deref().unwrap();
                    i - bytes[..i].iter().rev().take(rule.before).take_while(|&&b| class[b as usize]).count()
                })
                .min()
                .unwrap()
        };
        let long_word = "a1B2".repeat(40);
        for text in ["", "plain words here", "deadbeef0123", "12345:AA", long_word.as_str(), "x.y~z_w-v9 f0f0"] {
            let bytes = text.as_bytes();
            for i in 0..=bytes.len() {
                assert_eq!(runs.start(bytes, i), per_rule(bytes, i), "{text:?} at {i}");
            }
        }
    }

    #[test]
    fn builtin_rules_compile() {
        let set = RuleSet::builtin().unwrap();
        assert!(set.len() >= 100, "only {} rules", set.len());
    }

    #[test]
    fn bad_regex_error_names_rule_and_field() {
        let err = compile_rules(&[], &[raw("broken", "(unclosed", &["x"])], &[]).unwrap_err();
        match &err {
            RuleError::InvalidField { rule, field, .. } => {
                assert_eq!((rule.as_str(), *field), ("broken", "regex"))
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(err.to_string().contains("broken") && err.to_string().contains("regex"));
    }

    #[test]
    fn unicode_class_is_rejected_as_regex_error() {
        let err = compile_rules(&[], &[raw("uni", r"\p{Greek}+", &["x"])], &[]).unwrap_err();
        assert!(matches!(err, RuleError::InvalidField { field: "regex", .. }));
    }

    #[test]
    fn uppercase_keyword_is_rejected() {
        let err = compile_rules(&[], &[raw("up", "AB", &["AB"])], &[]).unwrap_err();
        assert!(matches!(err, RuleError::InvalidField { field: "keywords", .. }));
    }

    #[test]
    fn missing_keywords_are_rejected() {
        let err = compile_rules(&[], &[raw("none", "AB", &[])], &[]).unwrap_err();
        assert!(matches!(err, RuleError::InvalidField { field: "keywords", .. }));
    }

    #[test]
    fn multiline_rule_without_max_len_is_rejected() {
        let mut r = raw("ml", "A(?s:.*)B", &["a"]);
        r.multiline = true;
        let err = compile_rules(&[], &[r], &[]).unwrap_err();
        assert!(matches!(err, RuleError::InvalidField { field: "max_len", .. }));
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let a = raw("dup", "a", &["a"]);
        let err = compile_rules(&[a.clone()], &[a], &[]).unwrap_err();
        assert_eq!(err, RuleError::DuplicateId { rule: "dup".into() });
    }

    #[test]
    fn custom_rule_may_replace_a_disabled_builtin() {
        let a = raw("dup", "a", &["a"]);
        let set = compile_rules(&[a.clone()], &[a], &["dup".into()]).unwrap();
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn disabling_an_unknown_id_is_an_error() {
        let err = compile_rules(&[], &[], &["nope".into()]).unwrap_err();
        assert_eq!(err, RuleError::UnknownDisabled { rule: "nope".into() });
    }

    #[test]
    fn unknown_field_in_toml_is_rejected() {
        let err = parse_rules_toml("[[rule]]\nid='a'\nregex='a'\nkeywords=['a']\nsevrity=1\n");
        assert!(matches!(err, Err(RuleError::Parse { message }) if message.contains("sevrity")));
    }

    #[test]
    fn custom_rules_parse_from_json_too() {
        let r: RawRule =
            serde_json::from_str(r#"{"id":"corp","regex":"CORP-[0-9]{8}","keywords":["corp-"]}"#)
                .unwrap();
        let set = compile_rules(&[], &[r], &[]).unwrap();
        assert_eq!(set.mask("id CORP-12345678 ok").text, "id [REDACTED:corp] ok");
    }

    #[test]
    fn placeholder_without_id_is_rejected() {
        let set = compile_rules(&[], &[raw("a", "zz[0-9]+", &["zz"])], &[]).unwrap();
        assert!(matches!(set.with_placeholder("***"), Err(RuleError::Placeholder { .. })));
    }

    #[test]
    fn placeholder_that_a_rule_matches_is_rejected() {
        let set = compile_rules(&[], &[raw("a", "zz[0-9]+", &["zz"])], &[]).unwrap();
        assert!(matches!(set.with_placeholder("<{id}zz9>"), Err(RuleError::Placeholder { .. })));
        let set = compile_rules(&[], &[raw("a", "zz[0-9]+", &["zz"])], &[]).unwrap();
        assert_eq!(set.with_placeholder("<{id}>").unwrap().mask("zz12").text, "<a>");
    }

    #[test]
    fn examples_expand_deterministically() {
        let a = expand_example("k={{fake:hex:8}}/{{repeat:ab:3}}");
        assert_eq!(a, expand_example("k={{fake:hex:8}}/{{repeat:ab:3}}"));
        assert_eq!(a.len(), 2 + 8 + 1 + 6);
        assert!(a.ends_with("/ababab"));
        assert!(a[2..10].bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn entropy_of_uniform_bytes_is_their_log2() {
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-9);
    }
}
