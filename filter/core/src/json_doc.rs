//! Strict one-pass reading of a whole JSON body: checks that it is well-formed (RFC 8259,
//! nesting at most [`MAX_DEPTH`], no object key twice), and lists every string, number and
//! literal with the container it sits in, so that callers read facts (`model`,
//! `max_tokens`), search every text and splice masked strings back without parsing again.
//! Bytes outside replaced strings are never touched (key order, whitespace and escapes stay,
//! which keeps prompt caching stable).
//!
//! Why strict: the gateway and the upstream must read the same document. A duplicate key is
//! read as its first value by some parsers and its last by others, so it is an error here;
//! so is anything serde_json would reject.

use crate::anthropic::decode_string_token;
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Deepest nesting accepted (serde_json's own limit).
pub const MAX_DEPTH: usize = 128;

/// Why a body is not a document the gateway accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonError {
    NotUtf8,
    /// Malformed JSON at a byte offset.
    Syntax { at: usize, what: &'static str },
    TooDeep,
    DuplicateKey { key: String },
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonError::NotUtf8 => write!(f, "body is not UTF-8"),
            JsonError::Syntax { at, what } => write!(f, "body is not valid json: {what} at byte {at}"),
            JsonError::TooDeep => write!(f, "body nests deeper than {MAX_DEPTH} levels"),
            JsonError::DuplicateKey { key } => {
                let shown: String = key.chars().take(64).collect();
                write!(f, "body has the key `{shown}` twice in one object")
            }
        }
    }
}

impl std::error::Error for JsonError {}

/// Where a value sits in its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// The document itself.
    Root,
    /// The value of an object member; the key's index in [`Doc::leaves`].
    Member(u32),
    Index(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafKind {
    /// An object key (its `slot` is the member it names: `Member(own index)`).
    Key,
    Str,
    Number,
    /// `true`, `false` or `null`.
    Literal,
}

/// A string, number or literal token: `text[start..end]` (strings with their quotes).
#[derive(Debug, Clone, Copy)]
pub struct Leaf {
    pub start: usize,
    pub end: usize,
    pub kind: LeafKind,
    /// The container (index in [`Doc::containers`]); `None` for a scalar document.
    pub parent: Option<u32>,
    pub slot: Slot,
}

/// An object or array.
#[derive(Debug, Clone, Copy)]
pub struct Container {
    pub is_object: bool,
    pub parent: Option<u32>,
    pub slot: Slot,
    /// For an object: the leaf holding its `"type"` member's string value, if any.
    pub type_leaf: Option<u32>,
}

/// One step of a path, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<'a> {
    Key(Cow<'a, str>),
    Index(u32),
}

#[derive(Debug)]
pub struct Doc<'a> {
    pub text: &'a str,
    pub leaves: Vec<Leaf>,
    pub containers: Vec<Container>,
}

impl<'a> Doc<'a> {
    pub fn parse(bytes: &'a [u8]) -> Result<Doc<'a>, JsonError> {
        let text = std::str::from_utf8(bytes).map_err(|_| JsonError::NotUtf8)?;
        let mut p = Parser { s: text.as_bytes(), pos: 0, leaves: Vec::new(), containers: Vec::new() };
        p.ws();
        p.value(None, Slot::Root, 0)?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(JsonError::Syntax { at: p.pos, what: "trailing characters" });
        }
        Ok(Doc { text, leaves: p.leaves, containers: p.containers })
    }

    /// The raw token of a leaf.
    pub fn raw(&self, leaf: &Leaf) -> &'a str {
        &self.text[leaf.start..leaf.end]
    }

    /// The decoded content of a string or key leaf.
    pub fn string(&self, leaf: &Leaf) -> Cow<'a, str> {
        let raw = self.raw(leaf);
        let inner = &raw[1..raw.len() - 1];
        if !inner.contains('\\') {
            return Cow::Borrowed(inner);
        }
        let mut out = String::with_capacity(inner.len());
        if decode_string_token(raw, &mut out) {
            return Cow::Owned(out);
        }
        // Surrogate pairs and the like: the scan already checked the escapes, serde decodes.
        Cow::Owned(serde_json::from_str(raw).unwrap_or_else(|_| String::from_utf8_lossy(inner.as_bytes()).into_owned()))
    }

    /// The member name a value sits under, if it is an object member.
    pub fn key_of(&self, slot: Slot) -> Option<Cow<'a, str>> {
        match slot {
            Slot::Member(k) => Some(self.string(&self.leaves[k as usize])),
            _ => None,
        }
    }

    /// The `"type"` string of a container, if it is an object that has one.
    pub fn type_of(&self, container: Option<u32>) -> Option<Cow<'a, str>> {
        let c = self.containers.get(container? as usize)?;
        c.type_leaf.map(|l| self.string(&self.leaves[l as usize]))
    }

    /// The path from the root to a value at (`parent`, `slot`).
    pub fn path(&self, mut parent: Option<u32>, slot: Slot) -> Vec<Step<'a>> {
        let mut steps = Vec::new();
        let mut slot = slot;
        loop {
            match slot {
                Slot::Root => break,
                Slot::Member(k) => steps.push(Step::Key(self.string(&self.leaves[k as usize]))),
                Slot::Index(i) => steps.push(Step::Index(i)),
            }
            let Some(c) = parent else { break };
            let c = &self.containers[c as usize];
            slot = c.slot;
            parent = c.parent;
        }
        steps.reverse();
        steps
    }

    /// Rewrites strings: `f` gets each string and key leaf (by index) and returns its new
    /// token, if it changes. `None` when nothing changed.
    pub fn rewrite(&self, mut f: impl FnMut(usize, &Leaf) -> Option<String>) -> Option<String> {
        let mut out: Option<String> = None;
        let mut copied = 0;
        for (i, leaf) in self.leaves.iter().enumerate() {
            if !matches!(leaf.kind, LeafKind::Str | LeafKind::Key) {
                continue;
            }
            if let Some(new) = f(i, leaf) {
                let o = out.get_or_insert_with(|| String::with_capacity(self.text.len()));
                o.push_str(&self.text[copied..leaf.start]);
                o.push_str(&new);
                copied = leaf.end;
            }
        }
        out.map(|mut o| {
            o.push_str(&self.text[copied..]);
            o
        })
    }
}

struct Parser<'s> {
    s: &'s [u8],
    pos: usize,
    leaves: Vec<Leaf>,
    containers: Vec<Container>,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> JsonError {
        JsonError::Syntax { at: self.pos, what }
    }

    fn ws(&mut self) {
        while self.pos < self.s.len() && matches!(self.s[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Result<u8, JsonError> {
        self.s.get(self.pos).copied().ok_or_else(|| self.err("unexpected end"))
    }

    fn push_leaf(&mut self, start: usize, kind: LeafKind, parent: Option<u32>, slot: Slot) -> u32 {
        self.leaves.push(Leaf { start, end: self.pos, kind, parent, slot });
        (self.leaves.len() - 1) as u32
    }

    fn value(&mut self, parent: Option<u32>, slot: Slot, depth: usize) -> Result<u32, JsonError> {
        let start = self.pos;
        match self.peek()? {
            b'{' => self.object(parent, slot, depth + 1),
            b'[' => self.array(parent, slot, depth + 1),
            b'"' => {
                self.string()?;
                Ok(self.push_leaf(start, LeafKind::Str, parent, slot))
            }
            b't' | b'f' | b'n' => {
                let word: &[u8] = match self.s[self.pos] {
                    b't' => b"true",
                    b'f' => b"false",
                    _ => b"null",
                };
                if !self.s[self.pos..].starts_with(word) {
                    return Err(self.err("invalid literal"));
                }
                self.pos += word.len();
                Ok(self.push_leaf(start, LeafKind::Literal, parent, slot))
            }
            b'-' | b'0'..=b'9' => {
                self.number()?;
                Ok(self.push_leaf(start, LeafKind::Number, parent, slot))
            }
            _ => Err(self.err("expected a value")),
        }
    }

    fn object(&mut self, parent: Option<u32>, slot: Slot, depth: usize) -> Result<u32, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.containers.push(Container { is_object: true, parent, slot, type_leaf: None });
        let me = (self.containers.len() - 1) as u32;
        self.pos += 1;
        self.ws();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Ok(me);
        }
        let mut seen: HashSet<Cow<str>> = HashSet::new();
        loop {
            self.ws();
            if self.peek()? != b'"' {
                return Err(self.err("expected a key"));
            }
            let kstart = self.pos;
            self.string()?;
            let key_index = self.leaves.len() as u32;
            let key_leaf = Leaf { start: kstart, end: self.pos, kind: LeafKind::Key, parent: Some(me), slot: Slot::Member(key_index) };
            self.leaves.push(key_leaf);
            let raw = &self.s[kstart + 1..self.pos - 1];
            let name: Cow<str> = if raw.contains(&b'\\') {
                let token = std::str::from_utf8(&self.s[kstart..self.pos]).map_err(|_| JsonError::NotUtf8)?;
                Cow::Owned(serde_json::from_str::<String>(token).map_err(|_| self.err("invalid escape in key"))?)
            } else {
                Cow::Owned(String::from_utf8_lossy(raw).into_owned())
            };
            let is_type = name == "type";
            if !seen.insert(name.clone()) {
                return Err(JsonError::DuplicateKey { key: name.into_owned() });
            }
            self.ws();
            if self.peek()? != b':' {
                return Err(self.err("expected ':'"));
            }
            self.pos += 1;
            self.ws();
            let v = self.value(Some(me), Slot::Member(key_index), depth)?;
            if is_type && self.leaves.last().is_some_and(|l| l.kind == LeafKind::Str && l.slot == Slot::Member(key_index)) {
                self.containers[me as usize].type_leaf = Some(v);
            }
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Ok(me);
                }
                _ => return Err(self.err("expected ',' or '}'")),
            }
        }
    }

    fn array(&mut self, parent: Option<u32>, slot: Slot, depth: usize) -> Result<u32, JsonError> {
        if depth > MAX_DEPTH {
            return Err(JsonError::TooDeep);
        }
        self.containers.push(Container { is_object: false, parent, slot, type_leaf: None });
        let me = (self.containers.len() - 1) as u32;
        self.pos += 1;
        self.ws();
        if self.peek()? == b']' {
            self.pos += 1;
            return Ok(me);
        }
        let mut i = 0u32;
        loop {
            self.ws();
            self.value(Some(me), Slot::Index(i), depth)?;
            i += 1;
            self.ws();
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Ok(me);
                }
                _ => return Err(self.err("expected ',' or ']'")),
            }
        }
    }

    /// A string token from its opening quote; checks escapes and control characters.
    fn string(&mut self) -> Result<(), JsonError> {
        self.pos += 1;
        loop {
            // Runs of ordinary bytes are skipped in one go (most of a body).
            let rest = &self.s[self.pos..];
            let run = rest.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20);
            let Some(n) = run else {
                self.pos = self.s.len();
                return Err(self.err("unterminated string"));
            };
            self.pos += n;
            match self.s[self.pos] {
                b'"' => {
                    self.pos += 1;
                    return Ok(());
                }
                b'\\' => {
                    let e = *self.s.get(self.pos + 1).ok_or_else(|| self.err("unterminated string"))?;
                    match e {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.pos += 2,
                        b'u' => {
                            let hex = self.s.get(self.pos + 2..self.pos + 6).ok_or_else(|| self.err("short \\u escape"))?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return Err(self.err("invalid \\u escape"));
                            }
                            let unit = u16::from_str_radix(std::str::from_utf8(hex).unwrap_or("0"), 16).unwrap_or(0);
                            self.pos += 6;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate must be followed by a low one.
                                let low = self.s.get(self.pos..self.pos + 6);
                                let ok = low.is_some_and(|l| {
                                    l[0] == b'\\'
                                        && l[1] == b'u'
                                        && l[2..].iter().all(u8::is_ascii_hexdigit)
                                        && std::str::from_utf8(&l[2..])
                                            .ok()
                                            .and_then(|h| u16::from_str_radix(h, 16).ok())
                                            .is_some_and(|u| (0xDC00..0xE000).contains(&u))
                                });
                                if !ok {
                                    return Err(self.err("lone surrogate in \\u escape"));
                                }
                                self.pos += 6;
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(self.err("lone surrogate in \\u escape"));
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ => return Err(self.err("control character in string")),
            }
        }
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.pos < p.s.len() && p.s[p.pos].is_ascii_digit() {
                p.pos += 1;
            }
            p.pos - from
        };
        if self.s[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.s.get(self.pos) {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.s.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            if digits(self) == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.s.get(self.pos), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.s.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(s: &str) -> bool {
        Doc::parse(s.as_bytes()).is_ok()
    }

    #[test]
    fn agrees_with_serde_json_on_well_formed_and_malformed_documents() {
        let cases = [
            r#"{"a":1,"b":[true,false,null,-0.5e+3,"x\u00e9\ud83d\ude00"]}"#,
            r#"  [ ]  "#,
            r#""just a string""#,
            "0",
            r#"{"a":01}"#,
            r#"{"a":1,}"#,
            r#"[1,]"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00x"}"#,
            "{\"a\":\"tab\there\"}",
            r#"{"a":1} x"#,
            r#"{"a":-}"#,
            r#"{"a":1.}"#,
            r#"{"a":1e}"#,
            "",
            r#"{"a":"unterminated}"#,
        ];
        for c in cases {
            let serde_ok = serde_json::from_str::<serde_json::Value>(c).is_ok();
            assert_eq!(parses(c), serde_ok, "{c:?}");
        }
    }

    #[test]
    fn a_key_twice_in_one_object_is_refused_also_when_escaped_differently() {
        assert!(matches!(Doc::parse(br#"{"model":"a","model":"b"}"#), Err(JsonError::DuplicateKey { key }) if key == "model"));
        assert!(matches!(Doc::parse(br#"{"model":"a","\u006dodel":"b"}"#), Err(JsonError::DuplicateKey { .. })));
        assert!(matches!(Doc::parse(br#"{"m":[{"x":1,"x":2}]}"#), Err(JsonError::DuplicateKey { .. })));
        // The same key in sibling objects is fine.
        assert!(parses(r#"[{"x":1},{"x":2}]"#));
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        assert!(parses(&ok));
        let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
        assert_eq!(Doc::parse(deep.as_bytes()).unwrap_err(), JsonError::TooDeep);
        // Far deeper input is refused without exhausting the stack.
        let abyss = "[".repeat(1_000_000);
        assert_eq!(Doc::parse(abyss.as_bytes()).unwrap_err(), JsonError::TooDeep);
    }

    #[test]
    fn paths_and_types_are_known_for_every_leaf() {
        let doc = Doc::parse(br#"{"requests":[{"params":{"model":"m","x":{"type":"text","text":"hi"}}}]}"#).unwrap();
        let model = doc.leaves.iter().find(|l| l.kind == LeafKind::Str && doc.raw(l) == "\"m\"").unwrap();
        let path: Vec<String> = doc
            .path(model.parent, model.slot)
            .into_iter()
            .map(|s| match s {
                Step::Key(k) => k.into_owned(),
                Step::Index(i) => i.to_string(),
            })
            .collect();
        assert_eq!(path, ["requests", "0", "params", "model"]);
        let hi = doc.leaves.iter().find(|l| doc.raw(l) == "\"hi\"").unwrap();
        assert_eq!(doc.type_of(hi.parent).as_deref(), Some("text"));
        assert_eq!(doc.key_of(hi.slot).as_deref(), Some("text"));
    }

    #[test]
    fn rewrite_changes_only_the_strings_it_is_told_to() {
        let text = "{ \"a\" : \"x\",\n \"b\":[\"y\", 2 ] }";
        let doc = Doc::parse(text.as_bytes()).unwrap();
        let out = doc.rewrite(|_, l| (doc.raw(l) == "\"y\"").then(|| "\"Z\"".to_string())).unwrap();
        assert_eq!(out, "{ \"a\" : \"x\",\n \"b\":[\"Z\", 2 ] }");
        assert!(doc.rewrite(|_, _| None).is_none());
    }
}
