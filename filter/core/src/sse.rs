//! Incremental SSE framing: splits a byte stream, cut anywhere, into events (LF, CRLF or CR
//! line endings, multi-line `data:`, comments); never inspects or rewrites data.
//!
//! Each [`Event`] keeps its exact original bytes (`raw`) so an event the caller leaves alone
//! is passed on byte for byte. A lone `\r` at the very end of the bytes seen so far is held
//! until the next byte shows whether a `\n` follows (so CRLF split between chunks stays one
//! line ending, inside one event's `raw`).

/// One event: the fields as the SSE specification parses them, and the bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    /// The `event:` field (last one wins), if any.
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`; `None` when there was no `data` field.
    pub data: Option<String>,
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// Comment lines (after the `:`), in order.
    pub comments: Vec<String>,
    /// The exact bytes of the event, including the blank line that ended it.
    pub raw: Vec<u8>,
    /// False only for the trailing bytes returned by [`SseFramer::finish`] when the stream
    /// ended without the blank line that ends an event.
    pub terminated: bool,
}

/// Splits bytes into SSE events incrementally.
#[derive(Debug, Default)]
pub struct SseFramer {
    /// Bytes not yet dispatched, from `event_start` on (before it: events already returned
    /// in this push, dropped once at its end rather than per event, which would move the
    /// rest of a 16 KiB chunk for every 100-byte event).
    buf: Vec<u8>,
    /// Start of the current event in `buf`.
    event_start: usize,
    /// Start of the first line in `buf` not parsed yet.
    line_start: usize,
    current: Event,
}

impl SseFramer {
    pub fn new() -> SseFramer {
        SseFramer::default()
    }

    /// Adds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        self.buf.extend_from_slice(bytes);
        let mut events = Vec::new();
        self.parse(false, &mut events);
        self.buf.drain(..self.event_start);
        self.line_start -= self.event_start;
        self.event_start = 0;
        events
    }

    /// Ends the stream: returns what is left, if anything, as an unterminated event.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        self.parse(true, &mut events);
        if self.event_start < self.buf.len() {
            // A last line without a line ending still counts as a line.
            if self.line_start < self.buf.len() {
                field(&mut self.current, &self.buf[self.line_start..]);
            }
            let mut ev = std::mem::take(&mut self.current);
            ev.raw = self.buf[self.event_start..].to_vec();
            ev.terminated = false;
            events.push(ev);
        }
        *self = SseFramer::default();
        events
    }

    fn parse(&mut self, finished: bool, events: &mut Vec<Event>) {
        loop {
            let rest = &self.buf[self.line_start..];
            let Some(eol) = memchr::memchr2(b'\n', b'\r', rest) else { return };
            let end_len = match rest[eol] {
                b'\n' => 1,
                _ if eol + 1 < rest.len() => 1 + (rest[eol + 1] == b'\n') as usize,
                // `\r` is the last byte seen: a `\n` may follow in the next chunk.
                _ if !finished => return,
                _ => 1,
            };
            let next = self.line_start + eol + end_len;
            if eol == 0 {
                let mut ev = std::mem::take(&mut self.current);
                ev.raw = self.buf[self.event_start..next].to_vec();
                ev.terminated = true;
                self.event_start = next;
                // A blank line with no field before it dispatches nothing per the
                // specification; its bytes still have to go through: an event with no fields.
                events.push(ev);
            } else {
                field(&mut self.current, &self.buf[self.line_start..self.line_start + eol]);
            }
            self.line_start = next;
        }
    }
}

/// Adds one field line (no line ending) to `current`.
fn field(current: &mut Event, line: &[u8]) {
    let line = line.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(line);
    if let Some(comment) = line.strip_prefix(b":") {
        current.comments.push(String::from_utf8_lossy(comment).into_owned());
        return;
    }
    let (name, value) = match line.iter().position(|&b| b == b':') {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    // Data is nearly always valid UTF-8: the fast check first, the lossy walk only if not.
    let value = match std::str::from_utf8(value) {
        Ok(v) => std::borrow::Cow::Borrowed(v),
        Err(_) => String::from_utf8_lossy(value),
    };
    match name {
        b"event" => current.event = Some(value.into_owned()),
        b"data" => match &mut current.data {
            Some(d) => {
                d.push('\n');
                d.push_str(&value);
            }
            None => current.data = Some(value.into_owned()),
        },
        b"id" => current.id = Some(value.into_owned()),
        _ => {} // `retry` and unknown fields: kept in `raw` only.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(chunks: &[&[u8]]) -> Vec<Event> {
        let mut f = SseFramer::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(f.push(c));
        }
        out.extend(f.finish());
        out
    }

    fn cases() -> Vec<(&'static str, &'static [u8])> {
        vec![
            ("lf", b"event: message_start\ndata: {\"a\":1}\n\nevent: ping\ndata: {}\n\n"),
            ("crlf", b"event: ping\r\ndata: {}\r\n\r\ndata: x\r\n\r\n"),
            ("cr", b"event: ping\rdata: {}\r\rdata: y\r\r"),
            ("multi_line_data", b"data: first\ndata: second\ndata\ndata:third\n\n"),
            ("comments", b": keep-alive\n\n: note\nevent: e\ndata: d\n\n"),
            ("unterminated_tail", b"data: done\n\ndata: partial"),
            ("no_space_after_colon", b"event:x\ndata:y z\nid: 7\nretry: 100\n\n"),
            ("utf8_data", "data: grüße 🎉\n\n".as_bytes()),
            ("mixed_endings", b"data: a\r\ndata: b\rdata: c\n\r\n"),
            ("blank_lines_only", b"\n\n\r\n"),
        ]
    }

    #[test]
    fn fields_are_parsed_per_the_specification() {
        let ev = frame(&[b"data: first\ndata: second\ndata\ndata:third\nevent:x\nid: 7\n\n"]);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].data.as_deref(), Some("first\nsecond\n\nthird"));
        assert_eq!(ev[0].event.as_deref(), Some("x"));
        assert_eq!(ev[0].id.as_deref(), Some("7"));
        assert!(ev[0].terminated);
    }

    #[test]
    fn cr_only_line_endings_frame_events() {
        let ev = frame(&[b"event: ping\rdata: {}\r\rdata: y\r\r"]);
        assert_eq!(ev.len(), 2);
        assert_eq!((ev[0].event.as_deref(), ev[0].data.as_deref()), (Some("ping"), Some("{}")));
        assert_eq!(ev[1].data.as_deref(), Some("y"));
    }

    #[test]
    fn comment_lines_are_reported_and_kept_in_raw() {
        let ev = frame(&[b": keep-alive\n\n"]);
        assert_eq!(ev[0].comments, vec![" keep-alive".to_string()]);
        assert_eq!(ev[0].data, None);
        assert_eq!(ev[0].raw, b": keep-alive\n\n");
    }

    #[test]
    fn trailing_bytes_without_blank_line_come_back_unterminated() {
        let ev = frame(&[b"data: done\n\ndata: partial"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[1].data.as_deref(), Some("partial"));
        assert!(!ev[1].terminated);
    }

    #[test]
    fn crlf_split_between_chunks_stays_in_one_event() {
        let ev = frame(&[b"data: a\r\n\r", b"\ndata: b\n\n"]);
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0].raw, b"data: a\r\n\r\n");
        assert_eq!(ev[1].raw, b"data: b\n\n");
    }

    #[test]
    fn raw_bytes_of_all_events_concatenate_to_the_input() {
        for (name, input) in cases() {
            let raw: Vec<u8> = frame(&[input]).into_iter().flat_map(|e| e.raw).collect();
            assert_eq!(raw, input, "case {name}");
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        for (name, input) in cases() {
            let whole = frame(&[input]);
            for i in 0..=input.len() {
                assert_eq!(frame(&[&input[..i], &input[i..]]), whole, "case {name}, split at {i}");
            }
            let bytes: Vec<&[u8]> = input.chunks(1).collect();
            assert_eq!(frame(&bytes), whole, "case {name}, 1-byte chunks");
        }
    }
}
