//! Incremental SSE framing: splits a byte stream, cut anywhere, into events (LF, CRLF or CR
//! line endings, multi-line `data:`, comments); never inspects or rewrites data.
//!
//! Each [`Event`] keeps its exact original bytes (`raw`) so an event the caller leaves alone
//! is passed on byte for byte. A lone `\r` at the very end of the bytes seen so far is held
//! until the next byte shows whether a `\n` follows (so CRLF split between chunks stays one
//! line ending, inside one event's `raw`).

use std::borrow::Cow;
use std::convert::Infallible;

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

/// An [`Event`] borrowed from the framer's buffer (comments left out): what
/// [`SseFramer::push_each`] hands over, so that a stream of small events costs no
/// allocation per event unless a field needs one (several `data:` lines, invalid UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef<'a> {
    pub event: Option<Cow<'a, str>>,
    pub data: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    pub raw: &'a [u8],
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
    /// Start of the first line in `buf` not looked at yet.
    line_start: usize,
}

impl SseFramer {
    pub fn new() -> SseFramer {
        SseFramer::default()
    }

    /// Adds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        let done: Result<(), Infallible> = self.push_each_with_comments(bytes, |ev, comments| {
            events.push(owned(ev, comments));
            Ok(())
        });
        let Ok(()) = done;
        events
    }

    /// Adds bytes; calls `f` with each event they completed, in order, until it fails.
    pub fn push_each<E>(&mut self, bytes: &[u8], mut f: impl FnMut(EventRef<'_>) -> Result<(), E>) -> Result<(), E> {
        self.push_each_with_comments(bytes, |ev, _| f(ev))
    }

    fn push_each_with_comments<E>(
        &mut self,
        bytes: &[u8],
        mut f: impl FnMut(EventRef<'_>, Vec<String>) -> Result<(), E>,
    ) -> Result<(), E> {
        self.buf.extend_from_slice(bytes);
        let done = self.dispatch(false, &mut f);
        self.buf.drain(..self.event_start);
        self.line_start -= self.event_start;
        self.event_start = 0;
        // What stays between chunks is an event's start, not the chunk: give back the rest
        // (a stream would otherwise keep a network chunk's worth of memory for its lifetime).
        if self.buf.capacity() > 4 * self.buf.len().max(1024) {
            self.buf.shrink_to(2 * self.buf.len().max(512));
        }
        done
    }

    /// Hands each complete event in `buf` to `f`; with `finished`, a `\r` ending the bytes
    /// ends a line.
    fn dispatch<E>(
        &mut self,
        finished: bool,
        f: &mut impl FnMut(EventRef<'_>, Vec<String>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = Ok(());
        while let Some(next) = self.next_line(finished) {
            // A blank line ends the event.
            let blank = matches!(self.buf[self.line_start], b'\n' | b'\r');
            self.line_start = next;
            if blank {
                let mut comments = Vec::new();
                let ev = parse(&self.buf[self.event_start..next], true, &mut comments);
                self.event_start = next;
                // A blank line with no field before it dispatches nothing per the
                // specification; its bytes still have to go through: an event with no fields.
                done = f(ev, comments);
                if done.is_err() {
                    break;
                }
            }
        }
        done
    }

    /// Ends the stream: returns what is left, if anything, as an unterminated event.
    pub fn finish(&mut self) -> Vec<Event> {
        let mut events = Vec::new();
        let done: Result<(), Infallible> = self.dispatch(true, &mut |ev, comments| {
            events.push(owned(ev, comments));
            Ok(())
        });
        let Ok(()) = done;
        if self.event_start < self.buf.len() {
            let mut comments = Vec::new();
            // A last line without a line ending still counts as a line.
            let ev = parse(&self.buf[self.event_start..], false, &mut comments);
            events.push(owned(ev, comments));
        }
        *self = SseFramer::default();
        events
    }

    /// The end (line ending included) of the line at `line_start`, once it is known.
    fn next_line(&self, finished: bool) -> Option<usize> {
        let rest = &self.buf[self.line_start..];
        let eol = memchr::memchr2(b'\n', b'\r', rest)?;
        let end_len = match rest[eol] {
            b'\n' => 1,
            _ if eol + 1 < rest.len() => 1 + (rest[eol + 1] == b'\n') as usize,
            // `\r` is the last byte seen: a `\n` may follow in the next chunk.
            _ if !finished => return None,
            _ => 1,
        };
        Some(self.line_start + eol + end_len)
    }
}

fn owned(ev: EventRef<'_>, comments: Vec<String>) -> Event {
    Event {
        event: ev.event.map(Cow::into_owned),
        data: ev.data.map(Cow::into_owned),
        id: ev.id.map(Cow::into_owned),
        comments,
        raw: ev.raw.to_vec(),
        terminated: ev.terminated,
    }
}

/// The fields of one event's bytes: every line up to the blank line that ends it (or, for
/// the unterminated rest of a stream, to its end).
fn parse<'a>(raw: &'a [u8], terminated: bool, comments: &mut Vec<String>) -> EventRef<'a> {
    let mut ev = EventRef { event: None, data: None, id: None, raw, terminated };
    let mut at = 0;
    while at < raw.len() {
        let (end, next) = match memchr::memchr2(b'\n', b'\r', &raw[at..]) {
            Some(i) => {
                let end = at + i;
                let crlf = raw[end] == b'\r' && raw.get(end + 1) == Some(&b'\n');
                (end, end + 1 + crlf as usize)
            }
            None => (raw.len(), raw.len()),
        };
        if end == at {
            break;
        }
        field(&mut ev, &raw[at..end], comments);
        at = next;
    }
    ev
}

/// Adds one field line (no line ending) to `ev`.
fn field<'a>(ev: &mut EventRef<'a>, line: &'a [u8], comments: &mut Vec<String>) {
    let line = line.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(line);
    if let Some(comment) = line.strip_prefix(b":") {
        comments.push(String::from_utf8_lossy(comment).into_owned());
        return;
    }
    let (name, value) = match memchr::memchr(b':', line) {
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
        None => (line, &b""[..]),
    };
    // Data is nearly always valid UTF-8: the fast check first, the lossy walk only if not.
    let value = match std::str::from_utf8(value) {
        Ok(v) => Cow::Borrowed(v),
        Err(_) => String::from_utf8_lossy(value),
    };
    match name {
        b"event" => ev.event = Some(value),
        b"data" => match &mut ev.data {
            Some(d) => {
                let d = d.to_mut();
                d.push('\n');
                d.push_str(&value);
            }
            None => ev.data = Some(value),
        },
        b"id" => ev.id = Some(value),
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
    fn borrowed_events_carry_the_same_fields_as_owned_ones() {
        for (name, input) in cases() {
            for i in 0..=input.len() {
                let mut f = SseFramer::new();
                let mut borrowed = Vec::new();
                for part in [&input[..i], &input[i..]] {
                    let done: Result<(), ()> = f.push_each(part, |ev| {
                        borrowed.push(Event { comments: Vec::new(), ..owned(ev, Vec::new()) });
                        Ok(())
                    });
                    done.unwrap();
                }
                borrowed.extend(f.finish().into_iter().map(|e| Event { comments: Vec::new(), ..e }));
                let whole: Vec<Event> = frame(&[input]).into_iter().map(|e| Event { comments: Vec::new(), ..e }).collect();
                assert_eq!(borrowed, whole, "case {name}, split at {i}");
            }
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
